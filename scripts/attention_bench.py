#!/usr/bin/env python3
"""Training-time attention on a CPU: SDPA's kernels against the written-out path, forward +
backward, per call.

    python scripts/attention_bench.py [--threads 2] [--d-model 128 --heads 4]

Times one `nmt.models.transformer.Attention` call and its backward (projections included) on shapes
of Multi30k token-budget batches (4096 tokens: batch x length), under bf16 autocast and in fp32,
without and with attention dropout, once through F.scaled_dot_product_attention and once written out
(`Attention._explicit` forced each way), and prints the best of --repeat calls in ms. What
`_explicit` picks on a CPU follows from these figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt.models.transformer import Attention  # noqa: E402


def call_ms(attn: Attention, b: int, t: int, bf16: bool, causal: bool, repeat: int) -> float:
    d = attn.q.in_features
    x = torch.randn(b, t, d, requires_grad=True)
    mask = None if causal else torch.ones(b, 1, 1, t, dtype=torch.bool)
    best = float("inf")
    for i in range(repeat + 2):  # two untimed calls: kernel choice, allocator
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            k, v = attn.project_kv(x)
            y = attn(x, k, v, mask=mask, causal=causal)
        y.float().sum().backward()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} threads, d_model {args.d_model}, {args.heads} "
        "heads; ms per call, fwd + bwd"
    )
    print(
        "| batch x length | dtype | attention dropout | causal "
        "| SDPA | written out | SDPA / written out |"
    )
    print("|---|---|---|---|---|---|---|")
    for b, t in ((315, 13), (178, 21), (128, 32)):
        for bf16 in (True, False):
            for p in (0.0, 0.1):
                attn = Attention(args.d_model, args.heads, p).train()
                for causal in (False, True):
                    ms = {}
                    for explicit in (False, True):
                        Attention._explicit = lambda self, q, e=explicit: e  # this process only
                        ms[explicit] = call_ms(attn, b, t, bf16, causal, args.repeat)
                    print(
                        f"| {b} x {t} | {'bf16' if bf16 else 'fp32'} | {p} | {causal} | "
                        f"{ms[False]:.1f} | {ms[True]:.1f} "
                        f"| {ms[False] / ms[True]:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
