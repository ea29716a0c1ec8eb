"""Number formats: which one training and decoding use on a device.

`auto` means bf16 where the hardware multiplies bf16 matrices natively (CUDA GPUs; CPUs with AVX512-BF16
or AMX, where a bf16 matmul runs several times faster than fp32) and fp32 elsewhere (a CPU without them
would emulate bf16, slower than fp32). Training autocasts (weights stay fp32); decoding casts the weights.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DECODE_CHOICES = ("auto", "fp32", "bf16", "int8")


def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr: absent means no
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def autocast_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of `train.precision` on `device`; None means plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def describe(device: torch.device, precision: str) -> str:
    """How training runs, for the log line: 'bf16 autocast' or 'fp32'."""
    dtype = autocast_dtype(device, precision)
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(dtype, "fp32")


def decode_precision(device: torch.device, asked: str) -> str:
    """The weights decoding uses: fp32, bf16 or int8 (`asked` is one of DECODE_CHOICES)."""
    if asked == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return asked


class PaddedRows(nn.Module):
    """An nn.Linear whose input rows are padded up to a multiple of `multiple`, for bf16 decoding on a CPU.

    There torch hands bf16 matrix products to oneDNN, which builds a kernel for every new shape (about 2 ms for
    a 256 x 1024 layer) and keeps 1024 of them. Beam search changes the number of rows whenever a sentence
    finishes, so decoding test_2016_flickr at beam 5 built 471 layer kernels; with rows in steps of 64, 72, once
    per process (oneDNN's verbose log). The padded rows cost at most 63 rows of work per product."""

    def __init__(self, linear: nn.Linear, multiple: int = 64):
        super().__init__()
        self.linear, self.multiple = linear, multiple

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.size(-1)
        pad = -rows % self.multiple
        if pad == 0:
            return self.linear(x)
        y = self.linear(F.pad(x.reshape(rows, x.size(-1)), (0, 0, 0, pad)))
        return y[:rows].view(*x.shape[:-1], y.size(-1))


def pad_linear_rows(module: nn.Module, multiple: int = 64) -> nn.Module:
    """Wrap every nn.Linear inside `module` in PaddedRows (in place, as torch's quantize_dynamic swaps modules);
    returns `module`. For inference: the model's state dict gets the wrappers' names."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, PaddedRows(child, multiple))
        else:
            pad_linear_rows(child, multiple)
    return module
