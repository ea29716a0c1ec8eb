"""Incremental decoding (models/incremental.py) against the plain version it speeds up: the trained
smoke model, searched with caches, translates the same tokens with the same scores as when every
step runs `Transformer.decode` over the whole prefix again."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import pytest
import torch
from conftest import SmokeRun
from torch import Tensor

from nmt.data import read_lines
from nmt.models.transformer import Transformer
from nmt.search import decode_corpus
from nmt.translate import encode_lines, load_translator


@dataclass(frozen=True)
class PrefixState:
    memory: Tensor  # (B, S, D), one row per sentence
    src_pad_mask: Tensor  # (B, S)
    prefix: Tensor  # (rows, t): BOS and the tokens so far
    recording = None

    def reorder(self, beams: Tensor, sentences: Optional[Tensor]) -> PrefixState:
        memory, mask = self.memory, self.src_pad_mask
        if sentences is not None:
            memory, mask = memory[sentences], mask[sentences]
        return PrefixState(memory, mask, self.prefix[beams])


class Recompute:
    """The plain decoder: each step decodes the whole prefix under teacher forcing (the Annotated
    Transformer's greedy decoding), keeping nothing but the encoder's memory."""

    returns_log_probs = False

    def __init__(self, model: Transformer):
        self.model = model

    def start(self, src: Tensor, src_pad_mask: Tensor) -> PrefixState:
        prefix = src.new_empty(src.size(0), 0)
        return PrefixState(self.model.encode(src, src_pad_mask), src_pad_mask, prefix)

    def step(self, prev: Tensor, state: PrefixState) -> tuple[Tensor, PrefixState]:
        prefix = torch.cat([state.prefix, prev[:, None]], dim=1)
        rows = torch.arange(prefix.size(0)) // (prefix.size(0) // state.memory.size(0))
        logits = self.model.decode(prefix, state.memory[rows], state.src_pad_mask[rows])
        return logits[:, -1], PrefixState(state.memory, state.src_pad_mask, prefix)


@pytest.mark.parametrize("beam", [1, 4])
def test_the_smoke_model_translates_the_same_with_caches_as_without(
    smoke: SmokeRun, beam: int
) -> None:
    tr = load_translator(smoke.run / "best.pt", "cpu", "fp32", workers=1)
    src = encode_lines(tr, read_lines(smoke.prepared / "valid.src.txt")[:60])
    settings = replace(tr.settings(), beam=beam, nbest=beam)
    cached = decode_corpus(tr.model, src, settings, tr.device)
    plain = decode_corpus(Recompute(tr.model), src, settings, tr.device)
    assert [[h.tokens for h in hs] for hs in cached] == [[h.tokens for h in hs] for hs in plain]
    for a, b in zip(cached, plain):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    # the sentences end at different lengths: the batch shrinks and beams are reordered on the way
    assert len({len(hs[0].tokens) for hs in cached}) > 3
