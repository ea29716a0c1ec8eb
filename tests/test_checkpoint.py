"""Checkpoint files: sealed with a checksum, written
atomically, damage detected on load, old ones pruned safely; a `--checkpoint` that names no
checkpoint (no file, a run folder without one, a file that is not one) is one `error:` line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line

from nmt.checkpoint import CorruptCheckpoint, load_checkpoint, save_checkpoint
from nmt.files import atomic_link, remove_stale_temp_files
from nmt.retention import Retention, load_for_resume, step_files


def payload(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "train_state": {"step": int(value)}}


def test_sealed_checkpoint_is_still_a_plain_torch_file(tmp_path):
    save_checkpoint(tmp_path / "a.pt", payload(3.0))
    assert torch.equal(
        torch.load(tmp_path / "a.pt", weights_only=True)["model"]["w"], torch.full((64, 64), 3.0)
    )
    assert load_checkpoint(tmp_path / "a.pt")["train_state"]["step"] == 3


def test_a_flipped_bit_is_detected(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint(path, payload(3.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0, 100, -1])
def test_a_truncated_file_is_detected(tmp_path, keep):
    path = tmp_path / "a.pt"
    save_checkpoint(path, payload(3.0))
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(CorruptCheckpoint, match=str(path)):
        load_checkpoint(path)


def test_atomic_link_replaces_the_target_and_shares_the_bytes(tmp_path):
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    atomic_link(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"new"
    assert os.path.samefile(tmp_path / "src", tmp_path / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    for name in (".last.pt.abc123.tmp", "last.pt", "notes.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


def saves(run_dir, keep_last, keep_best, scores):
    """Save steps 1..len(scores) through Retention; scores[i]
    is a valid BLEU, or None for an unvalidated save."""
    kept = Retention(run_dir, keep_last, keep_best)
    best = -1.0
    for step, bleu in enumerate(scores, start=1):
        save_checkpoint(run_dir / "last.pt", payload(float(step)))
        improved = bleu is not None and bleu > best
        best = max(best, bleu) if bleu is not None else best
        kept.record(
            step, None if bleu is None else {"valid_bleu": bleu, "valid_loss": 1.0}, improved
        )


def test_keeps_the_last_k_and_the_best_n(tmp_path):
    #        step: 1     2     3     4     5     6     7     8
    saves(tmp_path, 2, 2, [None, 10.0, None, 30.0, None, 20.0, None, 5.0])
    assert sorted(step_files(tmp_path)) == [4, 6, 7, 8]  # best two (30, 20) and last two
    assert load_checkpoint(tmp_path / "best.pt")["train_state"]["step"] == 4
    assert os.path.samefile(tmp_path / "best.pt", step_files(tmp_path)[4])
    assert os.path.samefile(tmp_path / "last.pt", step_files(tmp_path)[8])


def test_keep_nothing_still_keeps_last_and_best(tmp_path):
    saves(tmp_path, 0, 0, [10.0, 30.0, 20.0])
    assert sorted(step_files(tmp_path)) == [3]  # the one just saved, which is last.pt
    assert load_checkpoint(tmp_path / "best.pt")["train_state"]["step"] == 2


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    saves(tmp_path, 3, 0, [None, None, None])
    last = tmp_path / "last.pt"
    # last.pt and checkpoints/step-3 are one file: both damaged
    last.write_bytes(last.read_bytes()[:-10])
    messages = []
    ckpt = load_for_resume(tmp_path, warn=messages.append)
    assert ckpt["train_state"]["step"] == 2
    assert any("resuming from" in m and "step 2" in m for m in messages)
    assert (tmp_path / "last.pt.corrupt").exists() and not last.exists()
    assert sorted(step_files(tmp_path)) == [1, 2]


KILL_DURING_SAVE = """
import os, sys, time
from pathlib import Path
import torch
from nmt.checkpoint import save_checkpoint
real_fsync, marker = os.fsync, Path(sys.argv[2])
def fsync(fd):
    if ".tmp" in os.readlink(f"/proc/self/fd/{fd}"):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)  # as if the OS had written half of it
        marker.write_text("writing")
        time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
state = {"model": {"w": torch.zeros(256, 256)}, "train_state": {"step": 2}}
save_checkpoint(Path(sys.argv[1]), state)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_killed_during_a_save_the_previous_checkpoint_survives(tmp_path, repo_root):
    path, marker = tmp_path / "last.pt", tmp_path / "marker"
    save_checkpoint(path, payload(1.0))
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_DURING_SAVE, str(path), str(marker)], env=env
    )
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the writer never reached fsync"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["train_state"]["step"] == 1
    assert len(remove_stale_temp_files(tmp_path)) == 1  # the half-written temp file


def test_a_checkpoint_from_before_checksums_loads_with_a_warning(tmp_path, capsys):
    import io

    buf = io.BytesIO()
    # as nmt wrote it before the seal
    torch.save({"format": "nmt-checkpoint", "version": 1, **payload(2.0)}, buf)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    assert load_checkpoint(tmp_path / "old.pt")["train_state"]["step"] == 2
    assert "without a checksum" in capsys.readouterr().err


def test_a_current_checkpoint_without_its_seal_is_damaged(tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"format": "nmt-checkpoint", "version": 2, **payload(2.0)}, buf)
    (tmp_path / "a.pt").write_bytes(buf.getvalue())
    with pytest.raises(CorruptCheckpoint, match="checksum missing"):
        load_checkpoint(tmp_path / "a.pt")


# --- through the command line: `--checkpoint` that names no checkpoint ---


def test_missing_checkpoint(cli, tmp_path: Path) -> None:
    code, _, err = cli("translate", "--checkpoint", tmp_path / "none.pt")
    assert_one_error_line(code, err, tmp_path / "none.pt")


def test_run_dir_without_checkpoints(cli, tmp_path: Path) -> None:
    code, _, err = cli("evaluate", "--checkpoint", tmp_path, "--split", "test")
    assert_one_error_line(code, err, tmp_path)


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"PK\x03\x04 truncated zip"])
def test_file_that_is_not_a_checkpoint(cli, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.pt"
    path.write_bytes(content)
    code, _, err = cli("translate", "--checkpoint", path)
    assert_one_error_line(code, err, path)
