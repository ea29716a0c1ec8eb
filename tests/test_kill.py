"""A training run killed with SIGKILL (at several points, during a save, or with a damaged last.pt)
and resumed with --resume ends with exactly the parameters of a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.prepare import prepare
from nmt.train import train

STEPS = 30


@pytest.fixture(scope="module")
def setup(repo_root, toy_data, tmp_path_factory):
    """Prepared data, the --set flags every run uses, and the uninterrupted reference run."""
    work = tmp_path_factory.mktemp("kill")
    sets = [
        *toy_data,
        f"data.prepared_dir={work / 'prepared'}",
        f"train.max_steps={STEPS}",
        "train.valid_every=10",
        "train.save_every=4",
        "train.log_every=1",
        "train.threads=1",
        "train.valid_bleu=false",
    ]
    config = repo_root / "configs" / "smoke.yaml"
    prepare(load_config(config, sets), log=lambda m: None)
    reference = load_checkpoint(train(load_config(config, sets), work / "reference") / "last.pt")
    return config, sets, reference, work


def command(config, sets, run_dir, resume):
    cmd = [sys.executable, "-m", "nmt", "train", "--config", str(config), "--run-dir", str(run_dir)]
    return cmd + ["--resume"] * resume + [arg for s in sets for arg in ("--set", s)]


def logged_step(run_dir):
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        # last line may be partial
        return max(json.loads(line)["step"] for line in lines[:-1] or ['{"step": 0}'])
    except (OSError, ValueError):
        return 0


def kill_at(cmd, run_dir, step, cwd, env=None):
    """Start `cmd`, SIGKILL it once metrics.jsonl shows step >= `step`; return its stderr."""
    env = env or {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    deadline = time.time() + 120
    while logged_step(run_dir) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before step {step}:\n{proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    return proc.communicate(timeout=60)[1]


def assert_same_parameters(a, b):
    assert a["train_state"]["step"] == b["train_state"]["step"] == STEPS
    for key in ("epoch", "batch_in_epoch", "best_step", "bad_evals"):
        assert a["train_state"][key] == b["train_state"][key], key
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_killed_at_several_points_then_resumed(setup, tmp_path):
    config, sets, reference, _ = setup
    run_dir = tmp_path / "run"
    # before the first save (step 4)
    err = kill_at(command(config, sets, run_dir, False), run_dir, 2, tmp_path)
    assert not (run_dir / "last.pt").exists(), err
    err = kill_at(command(config, sets, run_dir, True), run_dir, 9, tmp_path)
    assert "before its first checkpoint" in err
    err = kill_at(command(config, sets, run_dir, True), run_dir, 23, tmp_path)
    assert "resuming" in err
    train(load_config(config, sets), run_dir, resume=True)
    assert_same_parameters(reference, load_checkpoint(run_dir / "last.pt"))
    steps = [
        json.loads(line)["step"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in line
    ]
    assert steps == sorted(set(steps)), "replayed steps must not be logged twice"


# Runs `nmt train`, but the second time a checkpoint's temp file is fsynced it is cut to half and
# the process waits to be killed: a crash in the middle of writing a checkpoint.
CRASH_IN_SAVE = """
import os, sys, time
from pathlib import Path
real_fsync, marker, count = os.fsync, Path(os.environ["MARKER"]), [0]
def fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if name.endswith(".tmp") and ".last.pt." in name:
        count[0] += 1
        if count[0] == 2:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            marker.write_text("in save")
            time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
from nmt.cli import main
sys.argv = ["nmt"] + sys.argv[1:]
main()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_killed_while_writing_a_checkpoint(setup, tmp_path, repo_root):
    config, sets, reference, _ = setup
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    cmd = [sys.executable, "-c", CRASH_IN_SAVE, *command(config, sets, run_dir, False)[3:]]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MARKER": str(marker),
        "PYTHONPATH": str(repo_root),
    }
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no second save"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    # the first save, intact
    assert load_checkpoint(run_dir / "last.pt")["train_state"]["step"] == 4
    assert list(run_dir.glob(".last.pt.*.tmp")), "the half-written temp file should be there"
    train(load_config(config, sets), run_dir, resume=True)
    assert not list(run_dir.glob(".*.tmp"))
    assert_same_parameters(reference, load_checkpoint(run_dir / "last.pt"))


def test_damaged_last_checkpoint_falls_back_to_an_older_one(setup, tmp_path, capsys):
    config, sets, reference, _ = setup
    run_dir = tmp_path / "run"
    # saves at 4, 8, 10, 12, 16, 20, 22
    train(load_config(config, [*sets, "train.max_steps=22"]), run_dir)
    data = bytearray((run_dir / "last.pt").read_bytes())
    # one flipped byte, in last.pt and in checkpoints/step-0000022.pt (same file)
    data[len(data) // 2] ^= 0xFF
    (run_dir / "last.pt").write_bytes(bytes(data))
    capsys.readouterr()
    train(load_config(config, sets), run_dir, resume=True)
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "resuming from" in err and "step 20" in err
    assert_same_parameters(reference, load_checkpoint(run_dir / "last.pt"))
