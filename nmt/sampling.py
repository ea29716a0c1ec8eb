"""Sampling instead of searching: each output token drawn from the model's distribution, as
back-translation wants (varied sources, not the one most probable).

Every sentence has a random stream of its own, seeded by (seed, its line number), so a sentence's
sample does not depend on the batch it is decoded in, the chunk size or the worker threads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.errors import UsageError


@dataclass(frozen=True)
class Sampling:
    """`topk`: draw among the k most probable tokens only (0: all); `topp`: among the fewest most
    probable tokens whose probability adds up to at least p (1: all); `temperature`: divides the
    log-probabilities (below 1: sharper; 0: always the most probable token, as greedy search)."""

    topk: int = 0
    topp: float = 1.0
    temperature: float = 1.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.topk < 0:
            raise UsageError(f"--topk {self.topk}: expected 0 (all tokens) or more")
        if not 0.0 < self.topp <= 1.0:
            raise UsageError(f"--topp {self.topp}: expected a probability in (0, 1]")
        if self.temperature < 0.0:
            raise UsageError(f"--temperature {self.temperature}: expected 0 or more")


def draw(log_probs: Tensor, u: Tensor, s: Sampling) -> Tensor:
    """Tokens (R,) drawn from log_probs (R, V) by inverse transform of the uniforms u (R,) in
    [0, 1), after temperature, top-k and top-p; tokens at -inf are never drawn."""
    if s.temperature == 0.0:
        return log_probs.argmax(dim=-1)
    x = log_probs / s.temperature
    if s.topk:
        kth = x.topk(min(s.topk, x.size(-1)), dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, -float("inf"))
    probs = torch.softmax(x, dim=-1)
    if s.topp < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # a token goes once the more probable ones already hold p
        sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p >= s.topp, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    cdf = probs.cumsum(dim=-1)
    cdf = cdf / cdf[:, -1:]
    # the first token whose cumulative probability exceeds u: a token of probability 0 never is
    return (cdf <= u[:, None].to(cdf.dtype)).sum(dim=-1).clamp(max=probs.size(-1) - 1)


class Sampler:
    """Draws the next tokens of a batch's sentences, each from its own seeded stream."""

    def __init__(self, s: Sampling, lines: list[int]):
        """`lines`: the input line number of each row of the batch."""
        self.s = s
        self.streams = [random.Random(hash((s.seed, line))) for line in lines]

    def __call__(self, log_probs: Tensor, alive: Tensor) -> Tensor:
        """log_probs (R, V) of the rows still decoding, `alive` (R,) their rows in the batch."""
        u = torch.tensor([self.streams[r].random() for r in alive.tolist()])
        return draw(log_probs, u.to(log_probs.device), self.s)
