"""scripts/gpu_session.sh, the one command a GPU machine runs, works end to end (here on the CPU,
with the smoke model, the toy corpus and a few seconds of training), in two calls as a time limit
splits it (STEPS), and leaves its figures in the 11 files it names."""

import json
import os
import subprocess

from toy_language import TOY_SIZES


def test_gpu_session_script_prepares_trains_scores_then_benchmarks(repo_root, toy_corpus, tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    env = {
        **os.environ,
        "OUT": str(out),
        "RUN": str(run),
        "DATA": str(toy_corpus),
        "SETS": f"--set data.corpus=files --set data.source={toy_corpus}",
        "CONFIG": "configs/smoke.yaml",
        "MINUTES": "0.05",
        "TRAIN_STEPS": "2",
        "WARMUP": "1",
        "LIMIT": "30",
        "INT8_SHAPES": "8x32x48",
        "REPEAT": "1",
    }
    script = ["bash", str(repo_root / "scripts" / "gpu_session.sh")]
    first = subprocess.run(
        script,
        env={**env, "STEPS": "prepare train test"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "log.txt",
        "metrics.jsonl",
        "test.hyp.txt",
        "test.json",
    ]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the curve of BLEU against training time
    assert any("valid_bleu" in v and v["time"] > 0 for v in logged)
    scored = json.loads((out / "test.json").read_text())
    assert (
        scored["split"] == "test"
        and "bleu_paper" in scored["metrics"]
        and "chrf" in scored["metrics"]
    )
    # the translation, as scored
    assert len((out / "test.hyp.txt").read_text().splitlines()) == TOY_SIZES["test_2016_flickr"]

    # the second call finds the first one's checkpoint in RUN, as a warm machine keeps it
    second = subprocess.run(
        script,
        env={**env, "STEPS": "decode bench int8 cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "bench_cpu.json",
        "bench_decode.json",
        "bench_train.json",
        "int8_matmul.json",
        "log.txt",
        "metrics.jsonl",
        "profile_cpu.json",
        "test.hyp.txt",
        "test.json",
    ]
    train = json.loads((out / "bench_train.json").read_text())["train"]
    assert train["steps"] == 2 and train["tgt_tokens_per_s"] > 0 and 0 < train["mfu"] < 1
    decode = json.loads((out / "bench_decode.json").read_text())["decode"]
    assert {"nmt_beam1", "nmt_beam5"} <= set(decode) and all(
        d["sentences"] == 30 for d in decode.values()
    )
    products = json.loads((out / "int8_matmul.json").read_text())
    assert products["threads"] == 2 and list(products["shapes"]) == ["8x32x48"]
    on_cpu = json.loads((out / "bench_cpu.json").read_text())
    assert on_cpu["train"]["device"] == "cpu" and on_cpu["train"]["steps"] == 20
    assert 0 < on_cpu["train"]["mfu"] < 1
    # REPEAT rounds of every engine, on the CPU
    assert all(
        d["sentences"] == 30 and len(d["seconds_rounds"]) == 1 for d in on_cpu["decode"].values()
    )
    profiled = json.loads((out / "profile_cpu.json").read_text())
    assert profiled["threads"] == 1 and profiled["training"]["steps"] == 5
    decoded = {k: v["sentences"] for k, v in profiled["decoding"].items()}
    assert decoded == {"beam1": 30, "beam5": 30}
    log = (out / "log.txt").read_text()
    assert (
        "MFU" in log
        and "BLEU = " in log
        and "done (prepare train test)" in log
        and "done (decode bench int8 cpu)" in log
        and "this CPU alone: " in log
        and "bf16/int8 instructions: " in log
    )
    # in the order STEPS names them
    assert log.index("decoding benchmark") < log.index("training benchmark")

    bad = subprocess.run(
        script, env={**env, "STEPS": "decode trian"}, capture_output=True, text=True, timeout=600
    )
    assert (
        bad.returncode == 2
        and "unknown step 'trian'" in bad.stdout
        and "decoding benchmark" not in bad.stdout
    )
