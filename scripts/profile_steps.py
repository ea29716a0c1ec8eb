#!/usr/bin/env python3
"""Where the time goes: training steps and a decoding pass under torch's profiler, the time split
into kinds of work.

    python scripts/profile_steps.py --config configs/multi30k_en_de.yaml \
        --checkpoint runs/multi30k_en_de/best.pt [--steps 5] [--limit 300] [--beam 1 5] \
        [--threads 1] [--no-train] [--json FILE]

Each operator's own time (without the operators it calls) is put in one kind: matrix products
(mm, bmm, linear, oneDNN's), attention kernels (scaled_dot_product_attention's), softmax and norms,
data movement (copies, index_select, cat, gather), top-k and reductions, elementwise work,
optimizer updates, views and allocation, and the rest. "Python and dispatch" is the wall time no
operator accounts for: the interpreter between operators, torch's dispatcher, and the profiler
itself (so the share is an upper bound). Decoding runs with one worker thread, so that the
operators' time is on the profiled thread; with `--threads 1` each figure is one core's time, to
compare with an engine timed on one thread (scripts/benchmark.py --threads 1 --workers 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt.config import load_config  # noqa: E402
from nmt.data import epoch_batches, read_lines, split_batch  # noqa: E402
from nmt.precision import describe  # noqa: E402
from nmt.tokenizer import Tokenizer  # noqa: E402
from nmt.train import RunData, Trainer, pick_device  # noqa: E402
from nmt.translate import load_translator, translate_lines  # noqa: E402

KINDS = [
    ("matrix products", ("mm", "bmm", "addmm", "baddbmm", "linear", "matmul", "mkldnn", "_linear")),
    ("attention kernel", ("scaled_dot_product", "_flash_attention", "_efficient_attention")),
    ("softmax and norms", ("softmax", "log_softmax", "layer_norm", "native_layer_norm")),
    ("data movement", ("copy_", "index_select", "cat", "gather", "take", "index", "clone", "pad",
                       "contiguous", "to", "to_copy", "stack", "repeat_interleave", "scatter")),
    ("top-k and reductions", ("topk", "amax", "max", "sum", "nonzero", "any", "all", "sort")),
    ("elementwise", ("add", "mul", "div", "sub", "relu", "masked_fill", "fill_", "where", "eq",
                     "ne", "lt", "le", "gt", "ge", "exp", "log", "neg", "random_", "bitwise",
                     "clamp", "zero_", "add_", "mul_", "div_", "addcmul_", "addcdiv_", "sqrt",
                     "lerp_", "threshold_backward")),
    ("optimizer update", ("fused_adamw_", "linalg_vector_norm", "foreach_")),
    ("views and allocation", ("view", "t", "as_strided", "transpose", "slice", "select", "empty",
                              "empty_strided", "reshape", "expand", "unsqueeze", "squeeze",
                              "permute", "unbind", "split", "chunk", "full", "arange", "zeros",
                              "ones", "resolve_conj", "detach", "alias", "unfold", "narrow")),
]  # fmt: skip


def kind_of(name: str) -> str:
    op = name.split("::")[-1].lstrip("_")
    for kind, ops in KINDS:
        if op in ops or any(op.startswith(o) for o in ops if len(o) > 3):
            return kind
    return "other operators"


def split_time(prof, wall: float) -> dict[str, float]:
    """Seconds of each kind, and the wall time no operator accounts for."""
    out = {kind: 0.0 for kind, _ in KINDS} | {"other operators": 0.0}
    for e in prof.key_averages():
        if e.key.startswith("aten::") or e.key.startswith("mkldnn::"):
            out[kind_of(e.key)] += e.self_cpu_time_total / 1e6
    out["Python and dispatch"] = max(wall - sum(out.values()), 0.0)
    return out


def show(title: str, parts: dict[str, float], wall: float) -> None:
    print(f"{title}: {wall:.2f} s")
    for kind, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<22} {seconds:7.3f} s  {seconds / wall:6.1%}")


def profile_training(cfg, steps: int) -> dict:
    device = pick_device(cfg.train.device)
    tok = Tokenizer.load(cfg.prepared_dir)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), device, tok, RunData.load(cfg))
        split, t = trainer.train_split, cfg.train
        groups = epoch_batches(split, [len(split)], [1.0], t.max_tokens, t.seed, 0)
        batches = [split_batch(split, ix) for ix in groups[: steps + 2]]
        if len(batches) < 3:
            sys.exit(f"profile_steps.py: the training split has {len(batches)} batches, 3 needed")
        for b in batches[:2]:  # warm-up
            trainer.train_step([b], b.n_tgt)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for b in batches[2:]:
                trainer.train_step([b], b.n_tgt)
            wall = time.perf_counter() - start
    parts, n, how = split_time(prof, wall), len(batches) - 2, describe(device, t.precision)
    show(f"training, {n} steps of {t.max_tokens} tokens, {how}", parts, wall)
    return {
        "steps": n,
        "max_tokens": t.max_tokens,
        "precision": how,
        "wall_s": wall,
        "split_s": parts,
    }


def profile_decoding(tr, lines: list[str], beam: int) -> dict:
    settings = replace(tr.settings(), beam=beam)
    translate_lines(tr, lines[:32], settings)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        translate_lines(tr, lines, settings)
        wall = time.perf_counter() - start
    parts = split_time(prof, wall)
    show(f"decoding {len(lines)} sentences, beam {beam}, {tr.precision}, 1 worker", parts, wall)
    return {"sentences": len(lines), "precision": tr.precision, "wall_s": wall, "split_s": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--set", action="append", default=[], dest="sets", help="config override section.key=value"
    )
    ap.add_argument("--checkpoint", help="also profile decoding the test split with it")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--limit", type=int, default=300, help="test sentences to decode")
    ap.add_argument("--beam", type=int, nargs="+", default=[5], help="beam sizes to decode with")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    ap.add_argument("--no-train", action="store_true", help="profile decoding only")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    if args.no_train and not args.checkpoint:
        ap.error("--no-train needs --checkpoint: there is nothing else to profile")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(Path(args.config), args.sets)
    out: dict = {"threads": torch.get_num_threads(), "training": None, "decoding": {}}
    if not args.no_train:
        out["training"] = profile_training(cfg, args.steps)
    if args.checkpoint:
        lines = read_lines(cfg.prepared_dir / "test.src.txt")[: args.limit]
        tr = load_translator(args.checkpoint, None, "auto", workers=1)
        for beam in args.beam:
            out["decoding"][f"beam{beam}"] = profile_decoding(tr, lines, beam)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
