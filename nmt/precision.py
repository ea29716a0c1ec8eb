"""Number formats: which one training and decoding use on a device.

`auto` means bf16 where the hardware multiplies bf16 matrices natively (CUDA GPUs; CPUs with AVX512-BF16
or AMX, where a bf16 matmul runs several times faster than fp32) and fp32 elsewhere (a CPU without them
would emulate bf16, slower than fp32). Training autocasts (weights stay fp32); decoding casts the weights.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Optional

import torch

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
