"""scripts/benchmark.py runs end to end on a tiny model and reports figures that are consistent with
each other. (The speed targets themselves are measured by running the script, not here.)"""

import json
import subprocess
import sys

import numpy as np
import pytest

import nmt.train as train_mod
from nmt.config import load_config
from nmt.data import bucket_batches, load_split
from nmt.prepare import prepare


def test_benchmark_reports_training_and_decoding(repo_root, toy_data, tmp_path):
    sets = [
        *toy_data,
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "train.max_steps=10",
        "train.valid_every=1000",
        "train.threads=1",
        "train.valid_bleu=false",
    ]
    cfg = load_config(repo_root / "configs" / "smoke.yaml", sets)
    prepare(cfg, log=lambda m: None)
    run = train_mod.train(cfg, tmp_path / "run")
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "benchmark.py"),
            "--config",
            str(repo_root / "configs" / "smoke.yaml"),
            *[x for s in sets for x in ("--set", s)],
            "--checkpoint",
            str(run / "last.pt"),
            "--train-steps",
            "3",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--limit",
            "40",
            "--repeat",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())

    t = report["train"]
    assert t["steps"] == 3 and len(t["warmup_step_seconds"]) == 2 and t["steps_per_epoch"] > 0
    assert t["cudnn_attention"] is None  # a CPU run: the GPU attention choice does not apply
    assert abs(t["warmup_seconds"] - sum(t["warmup_step_seconds"])) < 1e-3
    assert t["tgt_tokens_per_s"] > 0 and t["src_tokens_per_s"] > 0
    assert 0 <= t["padding_share"] < 1
    assert 0 < t["mfu"] < 1  # a tiny model on one thread cannot beat a large matmul
    # the target tokens of the timed steps, counted from the split: the third to fifth batches of
    # the first epoch in training's order (accum_steps 1)
    split = load_split(cfg.prepared_dir, "train")
    order = bucket_batches(split.src_lens, split.tgt_lens, cfg.train.max_tokens, 1, 0)
    tokens = sum(int(split.tgt_lens[b].sum()) + len(b) for b in order[2:5])  # + EOS each
    timed = t["step_seconds_mean"] * t["steps"]
    assert abs(t["tgt_tokens_per_s"] * timed - tokens) < 1e-6 * tokens

    # beam search under both stopping rules
    assert sorted(report["decode"]) == ["nmt_beam1", "nmt_beam5", "nmt_beam5_early"]
    for name, d in report["decode"].items():
        beam = 1 if name == "nmt_beam1" else 5
        assert d["beam"] == beam and d["early_exit"] == name.endswith("_early") and d["seconds"] > 0
        # --limit 40 sentences, all decoded
        assert abs(d["sentences_per_s"] * d["seconds"] - 40) < 1e-6
        # --repeat 2: the faster round
        assert len(d["seconds_rounds"]) == 2 and d["seconds"] == min(d["seconds_rounds"])
        # the translations were compared between rounds, not written into the figures
        assert "output" not in d
        assert abs(d["tgt_tokens_per_s"] * d["seconds"] - d["tgt_tokens"]) < 1e-6
        assert 0 <= d["bleu"] <= 100
    assert "target tokens/s" in done.stdout and "MFU" in done.stdout  # the printed table


def load_benchmark(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "benchmark", repo_root / "scripts" / "benchmark.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_training_flops_agree_with_torchs_flop_counter(repo_root, toy_data, tmp_path):
    """useful_flops (the benchmark's MFU numerator) against torch's count of one training step's
    matmul FLOPs, forward and backward, on a batch without padding."""
    from torch.utils.flop_counter import FlopCounterMode

    from nmt.data import make_batch
    from nmt.loss import Objective
    from nmt.models import build_model

    bench = load_benchmark(repo_root)
    cfg = load_config(repo_root / "configs" / "smoke.yaml", ["model.layers=2"])
    model = build_model(cfg.model, 400, 400)
    rng = np.random.default_rng(0)
    src = [rng.integers(4, 400, 17) for _ in range(6)]
    tgt = [rng.integers(4, 400, 13) for _ in range(6)]
    batch = make_batch(src, tgt, np.arange(6))
    objective = Objective(model, 0.0)
    with FlopCounterMode(display=False) as counter:
        loss, _ = objective(batch.src, batch.src_pad_mask, batch.tgt_in, batch.tgt_out)
        loss.backward()
    counted = counter.get_total_flops()
    assert 0.9 < bench.useful_flops(model, batch) / counted < 1.1, (
        bench.useful_flops(model, batch),
        counted,
    )


def test_rounds_report_the_fastest_and_must_translate_alike(repo_root):
    bench = load_benchmark(repo_root)

    def one(seconds: float, out: list[str]) -> dict:
        counts = {"beam": 5, "seconds": seconds, "sentences": 10, "tgt_tokens": 120}
        speed = {"sentences_per_s": 10 / seconds, "tgt_tokens_per_s": 120 / seconds}
        return {"nmt_beam5": {**counts, **speed, "output": out}}

    decode: dict = {}
    outputs: dict = {}
    for seconds in (4.0, 2.5, 3.0):
        bench.add_round(decode, outputs, one(seconds, ["a b", "c"]))
    r = decode["nmt_beam5"]
    assert r["seconds_rounds"] == [4.0, 2.5, 3.0] and r["seconds"] == 2.5
    assert (r["sentences_per_s"], r["tgt_tokens_per_s"]) == (4.0, 48.0)
    with pytest.raises(SystemExit, match="nmt_beam5: round 4 translated differently"):
        bench.add_round(decode, outputs, one(1.0, ["a b", "d"]))
    assert r["seconds"] == 2.5  # the differing round is not counted


def test_ratios_compare_nmt_with_the_peers_under_the_same_stopping_rule(repo_root):
    bench = load_benchmark(repo_root)

    def run(beam, early, seconds, precision="float32", inter=1):
        return {
            "beam": beam, "early_exit": early, "seconds": seconds, "precision": precision,
            "inter_threads": inter,
        }  # fmt: skip

    decode = {
        "nmt_beam5": run(5, False, 4.0),
        "nmt_beam5_early": run(5, True, 3.0),
        "nmt_beam1": run(1, False, 1.0),
        "ct2_float32_beam5": run(5, False, 8.0),
        "ct2_float32_beam5_inter2": run(5, False, 6.0, inter=2),
        "ct2_int8_beam5": run(5, False, 7.0, "int8"),
        "ct2_int8_beam5_inter2": run(5, False, 5.0, "int8", 2),
        "ct2_float32_beam1": run(1, False, 1.5),
        "ct2_int8_beam1": run(1, False, 1.6, "int8"),
        "onmt_beam5": run(5, True, 9.0),
    }
    bench.add_ratios(decode)
    # CTranslate2's fastest compute type and layout, the same stopping rule
    assert decode["nmt_beam5"]["speed_vs_ct2"] == 5.0 / 4.0
    assert decode["nmt_beam5"]["fastest_ct2"] == "int8, 2 translator(s)"
    assert "speed_vs_ct2" not in decode["nmt_beam5_early"]  # CTranslate2 4.x cannot exit early
    assert decode["nmt_beam1"]["speed_vs_ct2"] == 1.5
    assert (decode["nmt_beam5"]["speed_vs_onmt"], decode["nmt_beam5_early"]["speed_vs_onmt"]) == (
        9.0 / 4.0,
        9.0 / 3.0,
    )
    assert decode["nmt_beam1"]["fastest_ct2"] == "float32, 1 translator(s)"
    assert "speed_vs_ct2" not in decode["ct2_float32_beam5"]


def test_attention_bench_times_both_paths_on_every_setting(repo_root):
    done = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "attention_bench.py"),
            "--d-model",
            "32",
            "--heads",
            "4",
            "--repeat",
            "1",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [
        line.strip("|").split("|")
        for line in done.stdout.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ]
    settings = {tuple(c.strip() for c in r[:4]) for r in rows}
    # shapes x dtypes x dropout x causal, each once
    assert len(rows) == len(settings) == 3 * 2 * 2 * 2
    for r in rows:
        sdpa, written, ratio = (float(c) for c in r[4:])
        # the times are printed to 0.1 ms, the ratio to 0.01
        rounding = ratio * (0.05 / sdpa + 0.05 / written) * 1.1 + 0.005
        assert sdpa > 0 and written > 0 and abs(ratio - sdpa / written) <= rounding


def test_a_failing_peer_is_reported_and_nmt_figures_are_kept(repo_root, capsys):
    bench = load_benchmark(repo_root)
    report: dict = {}

    def broken_build():
        raise OSError("libcublas.so.12: cannot open shared object file")

    def broken_run():
        raise RuntimeError("CUDA failed with error unknown\nsecond line")

    # building fails: a decoder that decodes nothing
    assert bench.peer("CTranslate2", report, broken_build)() == {}
    assert bench.peer("OpenNMT-py", report, lambda: broken_run)() == {}  # running fails: the same
    assert bench.peer("fine", report, lambda: lambda: {"x": 1})() == {"x": 1}
    assert report["peer_errors"] == {
        "CTranslate2": "OSError: libcublas.so.12: cannot open shared object file",
        "OpenNMT-py": "RuntimeError: CUDA failed with error unknown",
    }
    assert "CTranslate2 failed, left out: OSError" in capsys.readouterr().err


def test_benchmark_steps_follow_training_order_across_epochs(repo_root, toy_data, tmp_path):
    """Warm-up and timed steps are the batches training would take, epoch after epoch, so a warm-up
    longer than an epoch leaves the timed steps on shapes already seen."""
    bench = load_benchmark(repo_root)
    cfg = load_config(
        repo_root / "configs" / "smoke.yaml",
        [
            *toy_data,
            f"data.prepared_dir={tmp_path / 'prepared'}",
            "train.accum_steps=2",
        ],
    )
    prepare(cfg, log=lambda m: None)
    split, t = load_split(cfg.prepared_dir, "train"), cfg.train
    orders = [
        bucket_batches(split.src_lens, split.tgt_lens, t.max_tokens, t.seed, e) for e in (0, 1, 2)
    ]
    per_epoch = (len(orders[0]) + 1) // 2
    groups, reported = bench.step_groups(split, t, per_epoch + 3)
    assert reported == per_epoch and len(groups) == per_epoch + 3
    # accum_steps 2: pairs
    expected = [o[i : i + 2] for o in orders for i in range(0, len(o), 2)][: per_epoch + 3]
    assert [[list(b) for b in g] for g in groups] == [[list(b) for b in g] for g in expected]
    assert any(len(g) == 2 for g in groups)
