#!/usr/bin/env python3
"""int8 matrix products on this CPU, against fp32, at the shapes a decoding step multiplies.

    python scripts/int8_matmul_bench.py [--threads 1] [--shapes 80x256x1024 ...] [--json F]

For each shape M x K @ K x N (M rows of activations, an N x K Linear weight) it times, in
milliseconds per call (median of --repeat timings of --calls calls, fewer for a kernel so slow that
they would take more than half a second):

- fp32: F.linear, the plain product;
- bf16: nmt's bf16 Linear for decoding on a CPU (precision.PackedLinear where torch packs bf16
  weights for oneDNN, else F.linear), bf16 activations: the int8 products' rival on a CPU with bf16
  instructions, where bf16 is nmt's fastest;
- dynamic: torch's dynamic quantization (torch.ao, deprecated in torch 2.13; fbgemm's kernels), the
  int8 path nmt had;
- int_mm: torch._int_mm, the op torchao's int8 products build on, with the activations quantized
  per row at each call (symmetric int8) and the int32 result scaled back;
- weight-only: torch._weight_int8pack_mm, int8 weights and fp32 activations;
- onednn: torch.ops.onednn.qlinear_pointwise, oneDNN's int8 Linear (what torch's compiler emits for
  x86 int8 inference), activations quantized per tensor at each call (unsigned 8 bits with VNNI,
  7 without, where AVX2's u8 x s8 products would saturate).

The quantization at each call is timed with the product: a decoding step would pay for it. `error`
is the largest absolute difference from fp32's output, over the largest fp32 output: a kernel that
is fast but wrong shows there. An op this torch build lacks prints `n/a`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt.precision import ROW_MULTIPLE, PackedLinear, can_pack  # noqa: E402

# decoding's shapes for the reference model (d_model 256, FFN 1024, 8,000 subwords) at 80 rows
# (16 sentences x beam 5), and the smaller model's (d_model 128, FFN 256) at 40
SHAPES = ["80x256x256", "80x256x1024", "80x1024x256", "80x256x8000", "40x128x256", "40x128x8000"]
KINDS = ["fp32", "bf16", "dynamic", "int_mm", "weight-only", "onednn"]


def per_row_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (M, K) fp32 -> int8 values and per-row scales (M, 1): x ~ values * scales."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return torch.round(x / scale).to(torch.int8), scale


def candidates(x: Tensor, lin: nn.Linear) -> dict[str, Callable[[], Tensor]]:
    """kind -> a call computing lin(x) that way (kinds this torch build cannot run are left out)."""
    w, b = lin.weight.detach(), lin.bias.detach()
    w_scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # per output channel
    w_int8 = torch.round(w / w_scale[:, None]).to(torch.int8)
    calls: dict[str, Callable[[], Tensor]] = {"fp32": lambda: F.linear(x, w, b)}
    x16, w16, b16 = x.bfloat16(), w.bfloat16(), b.bfloat16()
    packed16 = PackedLinear(w16, b16, ROW_MULTIPLE) if can_pack() else None
    calls["bf16"] = partial(packed16, x16) if packed16 else lambda: F.linear(x16, w16, b16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8
        )
    calls["dynamic"] = lambda: quantized(x)
    w_int8_t = w_int8.t().contiguous()

    def int_mm() -> Tensor:
        xq, x_scale = per_row_int8(x)
        return torch._int_mm(xq, w_int8_t) * x_scale * w_scale + b

    calls["int_mm"] = int_mm
    calls["weight-only"] = lambda: torch._weight_int8pack_mm(x, w_int8, w_scale) + b
    try:
        levels = 255 if torch.cpu._is_vnni_supported() else 127
        packed = torch.ops.onednn.qlinear_prepack(w_int8, None)
    except (RuntimeError, NotImplementedError, AttributeError):
        return calls  # no oneDNN int8 in this build: reported n/a
    zeros = torch.zeros(w.size(0), dtype=torch.int32)

    def onednn() -> Tensor:
        lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
        scale = ((hi - lo) / levels).clamp(min=1e-12)
        zero = torch.round(-lo / scale).to(torch.int32)
        xq = torch.clamp(torch.round(x / scale) + zero, 0, levels).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise.tensor(
            xq, scale, zero, packed, w_scale, zeros, b, 1.0, 0, torch.float32, "none", [], ""
        )

    calls["onednn"] = onednn
    return calls


def time_call(fn: Callable[[], Tensor], calls: int, repeat: int, budget: float = 0.5) -> float:
    """Milliseconds per call: the median of `repeat` timings of `calls` calls, after a warm-up;
    fewer calls a timing where `calls` would take more than `budget` seconds (a slow kernel)."""
    start = time.perf_counter()
    fn()
    fn()
    once = (time.perf_counter() - start) / 2
    calls = max(1, min(calls, int(budget / max(once, 1e-9))))
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(rounds)


def measure(shape: str, calls: int, repeat: int) -> dict[str, Optional[dict[str, float]]]:
    """{kind: {"ms": .., "error": ..} or None where this build cannot run it} for one shape."""
    m, k, n = (int(v) for v in shape.split("x"))
    torch.manual_seed(0)
    lin = nn.Linear(k, n)
    x = torch.randn(m, k)
    out: dict[str, Optional[dict[str, float]]] = {}
    with torch.inference_mode():
        ref = lin(x)
        for kind, fn in candidates(x, lin).items():
            try:
                err = float((fn() - ref).abs().max() / ref.abs().max())
            except (RuntimeError, NotImplementedError, AttributeError):
                out[kind] = None
                continue
            out[kind] = {"ms": time_call(fn, calls, repeat), "error": err}
    for kind in KINDS:
        out.setdefault(kind, None)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch's threads (a decoding worker's)")
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="MxKxN, e.g. 80x256x1024")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    for s in args.shapes:
        parts = s.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            ap.error(f"--shapes {s}: expected MxKxN, three positive integers")
    torch.set_num_threads(args.threads)
    cpu = torch.backends.cpu.get_cpu_capability()
    vnni, amx = torch.cpu._is_vnni_supported(), torch.cpu._is_amx_tile_supported()
    print(f"torch {torch.__version__}, CPU capability {cpu}, VNNI {vnni}, AMX {amx}, ", end="")
    print(f"{args.threads} thread(s); ms per call (error: max |difference| / max |fp32 output|)")
    print(f"{'M x K @ K x N':<18}" + "".join(f"{k:>22}" for k in KINDS))
    results = {}
    for shape in args.shapes:
        row = measure(shape, args.calls, args.repeat)
        results[shape] = row
        cells = [
            "n/a" if r is None else f"{r['ms']:.3f} ({r['error']:.1e})"
            for r in (row[k] for k in KINDS)
        ]
        print(f"{shape:<18}" + "".join(f"{c:>22}" for c in cells))
    if args.json:
        info = {"torch": torch.__version__, "cpu": cpu, "vnni": vnni, "amx": amx}
        with open(args.json, "w") as f:
            json.dump({**info, "threads": args.threads, "shapes": results}, f, indent=1)


if __name__ == "__main__":
    main()
