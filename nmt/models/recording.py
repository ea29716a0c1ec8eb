"""The attention weights a decoding used, kept in its decoder state so that they follow each
hypothesis through beam search's reordering: a finished hypothesis then carries the weights its own
tokens were produced with (what `nmt translate --attention-dir` plots, see nmt/attention.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class Recording:
    """`static`: weights computed once per sentence, one row per sentence (the Transformer's
    {"encoder": (B, layers, H, S, S)}); `steps`: per name, one tensor per decoding step with one
    row per decoded row ({"cross": (rows, layers, H, S)}, and the Transformer's {"self": (rows,
    layers, H, t + 1)})."""

    static: dict[str, Tensor]
    steps: dict[str, tuple[Tensor, ...]]

    def add_step(self, weights: dict[str, Tensor]) -> Recording:
        """This step's weights (rows, layers, H, keys) per name, after the earlier steps'."""
        steps = {name: (*old, weights[name]) for name, old in self.steps.items()}
        return Recording(self.static, steps)

    def reorder(self, beams: Tensor, sentences: Optional[Tensor]) -> Recording:
        """Rows `beams` of every step; the static rows of `sentences` (None: all of them)."""
        static = self.static
        if sentences is not None:
            static = {name: w.index_select(0, sentences) for name, w in static.items()}
        steps = {
            name: tuple(w.index_select(0, beams) for w in old) for name, old in self.steps.items()
        }
        return Recording(static, steps)

    def of_row(self, row: int, src_len: int, beam: int = 1) -> dict[str, np.ndarray]:
        """The weights row `row` was decoded with, float32, source axes cut to the sentence's
        `src_len` real positions: "encoder" (layers, heads, S, S), "cross" (layers, heads, T, S) and
        "self" (layers, heads, T, T), zero above the diagonal; T = steps so far (one per output
        token and EOS). `beam`: rows per sentence (its static row is row // beam)."""
        out = {
            name: w[row // beam, ..., :src_len, :src_len].float().cpu().numpy()
            for name, w in self.static.items()
        }
        for name, steps in self.steps.items():
            rows = [w[row].float() for w in steps]  # (layers, heads, keys at that step)
            width = src_len if name == "cross" else max(r.size(-1) for r in rows)
            mat = rows[0].new_zeros(*rows[0].shape[:2], len(rows), width)
            for t, r in enumerate(rows):
                mat[:, :, t, : min(r.size(-1), width)] = r[..., :width]
            out[name] = mat.cpu().numpy()
        return out
