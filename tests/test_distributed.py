"""DDP on CPU with gloo: real processes launched by torchrun, 2 ranks, on the smoke config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.prepare import prepare
from nmt.train import train

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


@pytest.fixture(scope="module")
def setup(repo_root: Path, toy_data: list[str], tmp_path_factory) -> tuple[Path, list[str]]:
    work = tmp_path_factory.mktemp("ddp")
    # dropout off: the 1-process comparison needs the same computation, not just the same data
    sets = [
        *toy_data,
        f"data.prepared_dir={work / 'prepared'}",
        "train.max_tokens=512",
        "train.valid_every=1000",
        "train.valid_bleu=false",
        "train.threads=1",
        "train.log_every=1",
        "model.dropout=0.0",
        "model.attn_dropout=0.0",
        "train.progress=false",
    ]
    config = repo_root / "configs" / "smoke.yaml"
    prepare(load_config(config, sets), log=lambda m: None)
    return config, sets


def torchrun(
    config: Path,
    run_dir: Path,
    out: Path,
    sets: list[str],
    *extra: str,
    ranks: int = 2,
    wait: bool = True,
):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        str(WORKER),
        str(config),
        str(run_dir),
        str(out),
        *extra,
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def params(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if "model" in state else state


def test_two_ranks_train_in_step_and_equal_one_process_with_twice_the_batches(
    setup, tmp_path: Path
) -> None:
    config, sets = setup
    steps = ["train.max_steps=8"]
    proc = torchrun(config, tmp_path / "ddp", tmp_path / "out", [*sets, *steps])
    # rank 0 speaks
    assert "x 2 processes" in proc.stderr
    assert proc.stderr.count("stopped: reached train.max_steps=8") == 1
    r0, r1 = params(tmp_path / "out" / "rank0.pt"), params(tmp_path / "out" / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # every rank holds the same model
    saved = params(tmp_path / "ddp" / "last.pt")
    assert all(torch.equal(r0[k], saved[k]) for k in r0)
    # one process, each step accumulating the two batches the two ranks took
    single = train(load_config(config, [*sets, *steps, "train.accum_steps=2"]), tmp_path / "single")
    one = params(single / "last.pt")
    start = params_at_start(config, sets)
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    diff = max(float((one[k] - r0[k]).abs().max()) for k in one)
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)
    logs = [
        line
        for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
        if '"train_loss"' in line
    ]
    single_logs = [
        line
        for line in (single / "metrics.jsonl").read_text().splitlines()
        if '"train_loss"' in line
    ]
    assert len(logs) == len(single_logs) == 8  # one log line per step, written once


def params_at_start(config: Path, sets: list[str]) -> dict[str, torch.Tensor]:
    from nmt.models import build_model
    from nmt.tokenizer import Tokenizer

    cfg = load_config(config, sets)
    tok = Tokenizer.load(cfg.prepared_dir)
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size).state_dict()


def test_a_killed_two_rank_run_resumes_exactly(setup, tmp_path: Path) -> None:
    config, sets = setup
    # dropout on: RNG per rank
    sets = [*[s for s in sets if "dropout" not in s], "train.max_steps=12", "train.save_every=2"]
    torchrun(config, tmp_path / "straight", tmp_path / "out_straight", sets)
    run, out = tmp_path / "killed", tmp_path / "out_killed"
    proc = torchrun(config, run, out, sets, wait=False)
    deadline = time.time() + 240
    while (
        not (run / "checkpoints" / "step-0000006.pt").exists()
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    # both ranks and torchrun, at once (torchrun starts each rank in a session of its own)
    for pid in [int((out / f"pid{r}").read_text()) for r in (0, 1)] + [proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "last.pt")["train_state"]["step"]
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert 6 <= killed_at < 12
    time.sleep(1)
    # nothing runs on: a second later, no file in the run folder was written or added
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == files
    resumed_run = torchrun(config, run, out, sets, "--resume")
    assert f"resuming {run} at step {killed_at}" in resumed_run.stderr
    straight, resumed = params(tmp_path / "straight" / "last.pt"), params(run / "last.pt")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2


def test_resume_on_another_number_of_processes_says_what_changes(
    setup, tmp_path: Path, capsys
) -> None:
    config, sets = setup
    torchrun(config, tmp_path / "run", tmp_path / "out", [*sets, "train.max_steps=4"])
    train(load_config(config, [*sets, "train.max_steps=6"]), tmp_path / "run", resume=True)
    err = capsys.readouterr().err
    assert "trained by 2 process(es), this run has 1" in err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["step"] == 6


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(setup, tmp_path: Path) -> None:
    config, sets = setup
    run, out = tmp_path / "run", tmp_path / "out"
    proc = torchrun(config, run, out, [*sets, "train.max_steps=100000"], wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if (out / "pid1").exists() and log.exists() and log.read_text().count("train_loss") >= 3:
            break
        time.sleep(0.05)
    os.kill(int((out / "pid1").read_text()), signal.SIGTERM)  # rank 1 only; rank 0 hears nothing
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    err = err.decode()
    assert "SIGTERM: finishing the current step" in err
    # rank 0 stops as interrupted too
    assert "error: a signal to another rank: stopped at step" in err and "--resume" in err
    # both ranks left the loop, after the same step
    r0, r1 = params(out / "rank0.pt"), params(out / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    saved = params(run / "last.pt")
    assert all(torch.equal(r0[k], saved[k]) for k in r0)
