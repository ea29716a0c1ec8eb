"""scripts/gpu_session.sh, the one command a lent GPU machine runs, works end to end (here on the CPU, with the smoke
model and a few seconds of training) and leaves its figures in at most 8 files, the device tool's limit."""

import json
import os
import subprocess


def test_gpu_session_script_prepares_benchmarks_trains_and_scores(repo_root, multi30k_dir, tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "OUT": str(out), "RUN": str(run), "DATA": str(multi30k_dir), "CONFIG": "configs/smoke.yaml",
           "MINUTES": "0.05", "TRAIN_STEPS": "2", "WARMUP": "1", "SKIP_DECODE": "1"}
    done = subprocess.run(["bash", str(repo_root / "scripts" / "gpu_session.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench_train.json", "log.txt", "machine.txt", "metrics.jsonl", "test.json"]
    train = json.loads((out / "bench_train.json").read_text())["train"]
    assert train["steps"] == 2 and train["tgt_tokens_per_s"] > 0 and 0 < train["mfu"] < 1
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_bleu" in v and v["time"] > 0 for v in logged)  # the curve of BLEU against training time
    scored = json.loads((out / "test.json").read_text())
    assert scored["split"] == "test" and "bleu_paper" in scored["metrics"] and "chrf" in scored["metrics"]
    log = (out / "log.txt").read_text()
    assert "MFU" in log and "BLEU = " in log and "decoding benchmark skipped" in log
