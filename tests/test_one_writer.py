"""Never lose work: one writer per run folder and per prepared folder (an OS lock that dies with its
process), a prepared folder that is always wholly the old one or wholly the new one whatever stops
`prepare`, and a prepared folder changed afterwards refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nmt.config import load_config
from nmt.data import load_split, read_manifest
from nmt.errors import NmtError
from nmt.lock import lock_path
from nmt.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


def sets_for(toy_data: list[str], prepared: Path, *more: str) -> list[str]:
    pairs = [*toy_data, f"data.prepared_dir={prepared}", *more]
    return [x for s in pairs for x in ("--set", s)]


def start(*args: object, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nmt", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_error_line(proc: subprocess.CompletedProcess | subprocess.Popen, err: str) -> str:
    assert proc.returncode not in (0, None) and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def prepared(toy_data: list[str], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_writer") / "prepared"
    cfg = load_config(SMOKE, [*toy_data, f"data.prepared_dir={out}"])
    prepare(cfg, log=lambda m: None)
    return out


def test_a_second_train_into_a_run_folder_in_use_is_refused(
    toy_data: list[str], prepared: Path, tmp_path: Path
) -> None:
    """Two real processes: the second (fresh or --resume) is refused naming the folder and the
    first; once the first is killed, its lock is gone with it."""
    run = tmp_path / "run"
    sets = sets_for(toy_data, prepared, "train.max_steps=100000", "train.valid_every=100000")
    first = start("train", "--config", SMOKE, "--run-dir", run, *sets, cwd=tmp_path)
    try:
        wait_for(lambda: (run / "config.yaml").exists() or first.poll() is not None)
        assert first.poll() is None, first.communicate()[1]
        for extra in ([], ["--resume"]):
            second = start(
                "train", "--config", SMOKE, "--run-dir", run, *sets, *extra, cwd=tmp_path
            )
            _, err = second.communicate(timeout=120)
            line = one_error_line(second, err)
            assert str(run) in line and f"process {first.pid} (nmt train)" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # no stale lock: the run goes on
    resumed = start(
        "train", "--config", SMOKE, "--run-dir", run, "--resume",
        *sets_for(toy_data, prepared, "train.max_steps=2"), cwd=tmp_path,
    )  # fmt: skip
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err


def test_a_prepare_into_a_folder_in_use_is_refused(toy_data: list[str], tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom nmt.lock import hold\n"
         "with hold(sys.argv[1], 'nmt prepare'):\n    print('held', flush=True)\n"
         "    time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        proc = subprocess.run(
            [sys.executable, "-m", "nmt", "prepare", "--config", SMOKE, *sets_for(toy_data, out)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        line = one_error_line(proc, proc.stderr)
        assert str(out) in line and f"process {holder.pid} (nmt prepare)" in line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


# --- all or nothing: a real `prepare`, stopped at several points ---

# a line of Python run before `nmt prepare` in the child: it makes the named function stop the
# process (SIGKILL, or SIGINT as Ctrl-C does) the first time it is called
STOP_AT = {
    "scanning": "nmt.encode.Reservoir.offer",
    "encoding": "nmt.encode._npy_from_raw",
    "writing valid and test": "nmt.prepare.write_split",
    "hashing inputs and outputs": "nmt.prepare.sha256_file",
    "swapping the folders": "nmt.files._exchange",
}
CHILD = """
import importlib, os, signal, sys
where, _, name = sys.argv[1].rpartition(".")
try:
    owner = importlib.import_module(where)
except ModuleNotFoundError:  # a class's method
    module, _, cls = where.rpartition(".")
    owner = getattr(importlib.import_module(module), cls)
how = getattr(signal, sys.argv[2])
def stop(*args, **kwargs):
    os.kill(os.getpid(), how)
    raise SystemExit("not stopped")
setattr(owner, name, stop)
sys.argv = ["nmt", *sys.argv[3:]]
from nmt.cli import main
main()
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_stopped_prepare_leaves_the_old_folder_whole(
    toy_data: list[str], make_corpus, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "prepared"
    prepare(load_config(SMOKE, [*toy_data, f"data.prepared_dir={out}"]), log=lambda m: None)
    old = snapshot(out)
    other = make_corpus("other")  # new data, same settings: every file would change
    new_sets = sets_for(["data.corpus=files", f"data.source={other}", "data.vocab_size=60"], out)
    for point, function in STOP_AT.items():
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, function, how, "prepare", "--config", SMOKE, *new_sets],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode != 0 and "not stopped" not in proc.stderr, (point, proc.stderr)
        assert "Traceback" not in proc.stderr, (point, proc.stderr)
        assert snapshot(out) == old, point
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared."))
    assert how == "SIGKILL" or leftovers == [".prepared.lock"]  # Ctrl-C cleans up after itself
    # the next prepare clears what a killed one left, and replaces the folder whole
    cfg = load_config(SMOKE, [f"data.prepared_dir={out}", "data.corpus=files"] + [
        f"data.source={other}", "data.vocab_size=60"
    ])  # fmt: skip
    prepare(cfg, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared.")) == [
        ".prepared.lock"
    ]
    assert read_manifest(out, cfg)["inputs"]["train"][0]["src"]["path"] == str(other / "train.en")


def test_a_prepared_folder_changed_afterwards_is_refused(
    toy_data: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "prepared"
    cfg = load_config(SMOKE, [*toy_data, f"data.prepared_dir={out}"])
    manifest = prepare(cfg, log=lambda m: None)
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {"manifest.json"}
    ids = out / "train.src.npy"
    data = ids.read_bytes()
    ids.write_bytes(data[:-8])  # cut short
    with pytest.raises(NmtError, match=f"{ids}: {len(data) - 8} bytes, not the {len(data)}"):
        read_manifest(out, cfg)
    ids.write_bytes(data)
    read_manifest(out, cfg)
    # same size, offsets that do not fit the ids: caught when the split is opened
    off = out / "train.src.off.npy"
    offsets = np.load(off)
    offsets[1:] += 1
    np.save(off, offsets)
    with pytest.raises(NmtError, match="train.src.off.npy: offsets do not fit"):
        load_split(out, "train")
    (out / "valid.tgt.txt").unlink()
    with pytest.raises(NmtError, match="valid.tgt.txt: missing"):
        read_manifest(out, cfg)
    assert lock_path(out) == tmp_path / ".prepared.lock"


@pytest.mark.parametrize("role, stem", [("valid", "val"), ("test", "test_2016_flickr")])
def test_an_empty_valid_or_test_split_is_an_error(
    make_corpus, tmp_path: Path, role: str, stem: str
) -> None:
    folder = make_corpus()
    for lang in ("en", "de"):
        (folder / f"{stem}.{lang}").write_text("")
    cfg = load_config(
        SMOKE, ["data.corpus=files", f"data.source={folder}", f"data.prepared_dir={tmp_path / 'o'}"]
    )
    with pytest.raises(NmtError, match=f"{folder / stem}.en: the {role} split is empty"):
        prepare(cfg, log=lambda m: None)


def test_a_full_disk_during_prepare_leaves_the_old_folder(
    toy_data: list[str], make_corpus, tmp_path: Path, fail_fsync
) -> None:
    out = tmp_path / "prepared"
    prepare(load_config(SMOKE, [*toy_data, f"data.prepared_dir={out}"]), log=lambda m: None)
    old = snapshot(out)
    other = make_corpus("other")
    fail_fsync()
    cfg = load_config(SMOKE, ["data.corpus=files", f"data.source={other}", "data.vocab_size=60"]
                      + [f"data.prepared_dir={out}"])  # fmt: skip
    with pytest.raises(NmtError, match=f"No space left on device; {out} is as it was before"):
        prepare(cfg, log=lambda m: None)
    assert snapshot(out) == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared")) == [
        ".prepared.lock"
    ]


def test_folders_that_cannot_be_used_are_one_error(
    toy_data: list[str], prepared: Path, tmp_path: Path, monkeypatch
) -> None:
    """A --run-dir that is a file; a folder whose lock cannot be created (read-only parent)."""
    import errno

    import nmt.lock
    from nmt.train import train

    cfg = load_config(SMOKE, [*toy_data, f"data.prepared_dir={prepared}", "train.max_steps=1"])
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NmtError, match=f"{tmp_path / 'a_file'}: exists and is not a folder"):
        train(cfg, tmp_path / "a_file")
    real = nmt.lock.os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(nmt.lock.os, "open", read_only)
    (tmp_path / "ro").mkdir()
    for call in (
        lambda: train(cfg, tmp_path / "ro" / "run"),
        lambda: prepare(
            load_config(SMOKE, [*toy_data, f"data.prepared_dir={tmp_path / 'ro' / 'p'}"]),
            log=lambda m: None,
        ),
    ):
        with pytest.raises(NmtError, match="cannot create .* beside it: Permission denied"):
            call()


def test_prepare_refuses_a_folder_that_holds_other_files(
    toy_data: list[str], make_corpus, tmp_path: Path
) -> None:
    """prepare replaces its folder whole, so a folder that is not prepared data (the corpus itself,
    or a parent of other folders) is refused, and nothing in it is touched."""
    corpus = make_corpus("corpus")
    before = snapshot(corpus)
    for out in (corpus, tmp_path):
        cfg = load_config(
            SMOKE, ["data.corpus=files", f"data.source={corpus}", f"data.prepared_dir={out}"]
        )
        with pytest.raises(NmtError, match=f"{out}: holds files that are not prepared data"):
            prepare(cfg, log=lambda m: None)
    assert snapshot(corpus) == before


def test_a_symlinked_prepared_folder_keeps_its_link(toy_data: list[str], tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    cfg = load_config(SMOKE, [*toy_data, f"data.prepared_dir={link}"])
    for _ in range(2):  # into the empty folder, then over the first
        prepare(cfg, log=lambda m: None)
        assert link.is_symlink() and (real / "manifest.json").is_file()
    read_manifest(link, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real.lock", "link", "real"]


def test_the_folder_swap_without_renameat2_and_its_recovery(tmp_path: Path, monkeypatch) -> None:
    """Where the OS cannot swap two folders, two renames; a build killed between them leaves the
    old folder aside, and the next build puts it back before anything else."""
    import nmt.files

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a").write_text("old")
    monkeypatch.setattr(nmt.files, "_exchange", lambda a, b: False)
    with nmt.files.atomic_folder(folder) as new:
        (new / "a").write_text("new")
    assert (folder / "a").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["f"]
    os.rename(folder, tmp_path / ".f.old-123")  # killed between the renames
    with pytest.raises(RuntimeError), nmt.files.atomic_folder(folder):
        assert (folder / "a").read_text() == "new"  # put back first
        raise RuntimeError("stopped")
    assert (folder / "a").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["f"]
