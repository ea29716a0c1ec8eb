"""Ctrl-C / SIGTERM during training: the step finishes, last.pt is written, the message says how to resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.prepare import prepare


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_last_checkpoint_and_says_how_to_resume(repo_root, multi30k_dir, tmp_path, sig):
    sets = [f"data.source={multi30k_dir}", f"data.prepared_dir={tmp_path / 'prepared'}", "train.max_steps=100000",
            "train.valid_every=100000", "train.log_every=1", "train.threads=1"]
    config = repo_root / "configs" / "smoke.yaml"
    prepare(load_config(config, sets), log=lambda m: None)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "nmt", "train", "--config", str(config), "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {sig.name}") and "--resume" in last_line
    state = load_checkpoint(run_dir / "last.pt")["train_state"]
    assert state["step"] >= 3
    assert not (run_dir / "best.pt").exists()  # no validation happened: nothing is called best
