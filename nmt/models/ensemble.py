"""Decode with several models at once.

As fairseq's `--path a.pt:b.pt` and OpenNMT-py's `-model a.pt b.pt` do.

At every step each member predicts the next token from its own state, and the ensemble's
distribution is the mean of the members' probabilities: log p(y) = log((p_1(y) + ... + p_n(y)) / n).
The members must share the target vocabulary (nmt.translate checks that they share the tokenizer and
the direction); they may differ in everything else: seeds, sizes, architectures (a Transformer
beside an RNN).

The ensemble offers the same `start`/`step` interface as one model, so greedy and beam search use it
unchanged. Its state holds each member's state, and reorders each by that member's own rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from nmt.models.recording import Recording

if TYPE_CHECKING:
    from nmt.search import DecoderState


@dataclass(frozen=True)
class EnsembleState:
    """The members' states, in order (search.DecoderState)."""

    members: tuple[DecoderState, ...]
    recording: Optional[Recording] = None  # an ensemble records no attention (see start)

    def reorder(self, beams: Tensor, sentences: Optional[Tensor]) -> EnsembleState:
        return EnsembleState(tuple(s.reorder(beams, sentences) for s in self.members))


class Ensemble(nn.Module):
    """Two or more models decoding as one: the mean of their next-token probabilities."""

    # `step` gives normalised log-probabilities: search need not normalise them again
    returns_log_probs = True

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs two or more models")
        self.members = nn.ModuleList(members)

    def start(self, src: Tensor, src_pad_mask: Tensor, record: bool = False) -> EnsembleState:
        if record:  # each member attends in its own way: there is no one set of weights to show
            raise ValueError(
                "an ensemble does not record attention weights; decode with one model for that"
            )
        return EnsembleState(tuple(m.start(src, src_pad_mask) for m in self.members))

    def step(self, prev: Tensor, state: EnsembleState) -> tuple[Tensor, EnsembleState]:
        """prev (B,) -> the log of the members' mean next-token probabilities (B, V) in fp32, and
        the new state.

        The probabilities are summed in place, then one log, and search uses the result as it is:
        with 8,000 floats per row, stacking the members' log-probabilities for a logsumexp and
        normalising again moved several times as much memory, for the same outputs. A token every
        member gives under ~1e-45 gets -inf, which no search keeps."""
        outputs = [m.step(prev, s) for m, s in zip(self.members, state.members)]
        total = torch.softmax(outputs[0][0], dim=-1, dtype=torch.float32)
        for logits, _ in outputs[1:]:
            total.add_(torch.softmax(logits, dim=-1, dtype=torch.float32))
        return total.div_(len(outputs)).log_(), EnsembleState(tuple(s for _, s in outputs))
