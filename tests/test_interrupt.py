"""Ctrl-C / SIGTERM during training: the step finishes,
last.pt is written, the message says how to resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.prepare import prepare
from nmt.retention import step_files


def start_training(repo_root, toy_data, tmp_path, script=None):
    """Start `nmt train` (or `script` standing in for it) on the smoke config with no end in sight;
    wait for its first logged step; return the process and the run directory."""
    sets = [
        *toy_data,
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "train.max_steps=100000",
        "train.valid_every=100000",
        "train.log_every=1",
        "train.threads=1",
    ]
    config = repo_root / "configs" / "smoke.yaml"
    prepare(load_config(config, sets), log=lambda m: None)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        *(["-c", script] if script else ["-m", "nmt"]),
        "train",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
    ]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180  # a loaded machine can take a minute to import torch and start
    while (
        not (metrics.exists() and metrics.read_text().count("\n") >= 1) and time.time() < deadline
    ):
        time.sleep(0.05)
    return proc, run_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_last_checkpoint_and_says_how_to_resume(repo_root, toy_data, tmp_path, sig):
    proc, run_dir = start_training(repo_root, toy_data, tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {sig.name}") and "--resume" in last_line
    state = load_checkpoint(run_dir / "last.pt")["train_state"]
    assert state["step"] >= 1
    assert not (run_dir / "best.pt").exists()  # no validation happened: nothing is called best
    # off the save grid: last.pt only, no step file for `nmt average --last N`
    assert step_files(run_dir) == {}


# `nmt train` with every step slowed to 0.3 s, so that two signals surely arrive within one step
SLOW_STEPS = """
import sys, time
import nmt.update
real = nmt.update.Updater._step
def slow(self, *args):
    time.sleep(0.3)
    return real(self, *args)
nmt.update.Updater._step = slow
from nmt.cli import main
sys.argv = ["nmt"] + sys.argv[1:]
main()
"""


def test_second_ctrl_c_stops_at_once(repo_root, toy_data, tmp_path):
    proc, run_dir = start_training(repo_root, toy_data, tmp_path, SLOW_STEPS)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("SIGINT again: stopping at once"), err
    assert not (run_dir / "last.pt").exists()  # stopped inside the step: no checkpoint written
