"""Dropout on the CPU, faster than torch's: the plain version is nn.Dropout (on a GPU this one
calls torch's fused kernel); tests/test_transformer.py checks the share it drops, the mean it
keeps and the gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dropout(nn.Module):
    """nn.Dropout, but on the CPU the mask comes from uniform 15-bit integers compared
    with a threshold and is applied by a multiplication: several times faster than the
    bernoulli kernel torch uses there, which made dropout a large share of a CPU
    training step. The 15-bit draws are cut from 64-bit ones (a quarter of the
    generator calls). p is rounded to a multiple of 1/32768 and the scale uses the
    rounded value, so the expectation is exact. On CUDA: torch's fused kernel."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 32768)
        self.scale = 32768 / (32768 - self.threshold) if p < 1 else 0.0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        # 0 .. 2**63 - 1: four 16-bit pieces each
        draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_()
        bits = draws.view(torch.int16)[:n].view(x.shape).bitwise_and_(0x7FFF)  # uniform 0..32767
        # backward: grad x the same mask
        return x * (bits >= self.threshold).to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"
