"""Incremental decoding (models/incremental.py) and batched search against the plain versions they
speed up: the trained smoke model, searched with caches, translates the same tokens with the same
scores as when every step runs `Transformer.decode` over the whole prefix again, and as a textbook
beam search that takes one sentence at a time."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import pytest
import torch
from conftest import SmokeRun
from test_search import random_transformer
from test_transformer import VARIANTS, batch, tiny
from torch import Tensor

from nmt.data import read_lines
from nmt.models.incremental import attend, extend
from nmt.models.transformer import Attention, Transformer
from nmt.search import decode_corpus
from nmt.tokenizer import BOS, EOS, PAD
from nmt.translate import encode_lines, load_translator


@pytest.mark.parametrize("kw", VARIANTS)
def test_incremental_decoding_equals_full_recomputation(kw):
    model = tiny(**kw)
    src, mask, tgt = batch()
    full = model(src, mask, tgt)
    state = model.start(src, mask)
    for t in range(tgt.size(1)):
        logits, state = model.step(tgt[:, t], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pad", [0, 3])
def test_a_decoding_step_where_beams_share_a_row_of_keys_attends_as_if_each_had_its_own_copy(pad):
    """Beam search keeps the encoder's keys/values once per sentence: f consecutive query rows share
    one row. The step gives what the teacher-forcing path gives with a copy per row, also when pad
    rows follow the real ones."""
    from nmt.models.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4, 0.0).eval()
    n, f, s = 3, 5, 7
    x = torch.randn(n * f + pad, 32)
    k, v = attn.project_kv(torch.randn(n, s, 32))
    mask = torch.ones(n, 1, 1, s, dtype=torch.bool)
    mask[1, ..., 4:] = False  # a shorter sentence
    bias = torch.zeros(n, 4, 1, s).masked_fill(~mask, -float("inf"))
    weights: list = []
    shared = attend(attn, x, n * f, (k, v), bias, weights)
    rows = torch.arange(n).repeat_interleave(f)
    recorded: list = []
    copied = attn(x[: n * f, None], k[rows], v[rows], mask[rows], weights=recorded)
    w_copied = recorded[0]
    assert shared.shape == (n * f + pad, 32)
    torch.testing.assert_close(shared[: n * f], copied[:, 0])
    torch.testing.assert_close(weights[0], w_copied[:, :, 0])
    assert weights[0].shape == (n * f, 4, s) and (weights[0][f : 2 * f, :, 4:] == 0).all()
    sdpa = attn(x[: n * f, None], k[rows], v[rows], mask[rows])[:, 0]  # SDPA too
    torch.testing.assert_close(sdpa, shared[: n * f])


def test_extend_reorders_and_appends_in_one_copy():

    past, new = torch.randn(4, 2, 3, 5), torch.randn(6, 2, 5)
    parents = torch.tensor([3, 3, 0, 1, 2, 0])  # a beam step: rows continue (and repeat) other rows
    torch.testing.assert_close(
        extend(past, new, parents),
        torch.cat([past[parents], new[:, :, None]], dim=2),
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        extend(past, new[:4], None), torch.cat([past, new[:4, :, None]], dim=2), rtol=0, atol=0
    )
    # appended in the cache's dtype
    assert extend(past, new[:4].bfloat16(), None).dtype == torch.float32


def test_a_bf16_decoding_step_attends_through_sdpa_as_the_written_out_products_do():
    """incremental.attend on bf16 keys on a CPU (scaled_dot_product_attention) gives what the
    written-out products give (scores, softmax, weighted sum, in fp32) within bf16 rounding: with
    padded rows, with the beams of a sentence attending together (3 queries per key row) and with
    masked keys. Asking for the weights changes nothing in the output."""
    torch.manual_seed(5)
    att = Attention(32, 4, 0.0).eval().to(torch.bfloat16)
    b, f, s = 4, 3, 7
    x = torch.randn(b * f + 4, 32).bfloat16()  # 12 real rows, 4 of padding
    k, v = torch.randn(b, 4, s, 8).bfloat16(), torch.randn(b, 4, s, 8).bfloat16()
    bias = torch.zeros(b, 4, 1, s, dtype=torch.bfloat16)
    bias[1, :, :, 4:] = -float("inf")  # sentence 1 has 4 source positions
    with torch.inference_mode():
        fast = attend(att, x, b * f, (k, v), bias)
        weights: list = []
        assert torch.equal(attend(att, x, b * f, (k, v), bias, weights), fast)
        q = att.q(x)[: b * f].float().view(b, f, 4, 8).transpose(1, 2)  # written out, in fp32
        w = (q @ k.float().transpose(-1, -2) * 8**-0.5 + bias.float()).softmax(-1)
        y = (w @ v.float()).transpose(1, 2).reshape(b * f, 32)
        plain = att.out(torch.cat([y.bfloat16(), torch.zeros(4, 32).bfloat16()]))
    assert fast.dtype == torch.bfloat16 and fast.shape == (b * f + 4, 32)
    torch.testing.assert_close(fast.float(), plain.float(), atol=0.03, rtol=0.02)
    assert torch.equal(fast[b * f :], plain[b * f :])  # pad rows: zero before the output projection
    assert weights[0].shape == (b * f, 4, s) and torch.allclose(
        weights[0].sum(-1), torch.ones(b * f, 4)
    )
    k2 = k.clone()
    k2[1, :, 4:] = 100.0  # what masked keys hold changes nothing
    with torch.inference_mode():
        assert torch.equal(attend(att, x, b * f, (k2, v), bias), fast)


def test_a_transformer_state_moves_its_sentence_rows_only_when_sentences_leave():
    """Beam search's reordering: the self-attention caches follow the parent rows (lazily: the next
    step gathers them), the encoder's keys/values stay one row per sentence until a sentence
    leaves the batch."""
    with torch.inference_mode():  # as search decodes
        model = random_transformer()
        src = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])
        state = model.start(src, src == PAD)
        _, state = model.step(torch.full((2,), BOS), state)
        beams = torch.tensor([0, 0, 1, 1])  # two beams per sentence, from each sentence's row
        kept = state.reorder(beams, None)
        assert kept.cross[0][0].size(0) == 2 and kept.parents.tolist() == [0, 0, 1, 1]
        assert kept.past[0][0].size(0) == 2  # not copied yet
        _, stepped = model.step(torch.tensor([5, 6, 7, 8]), kept)
        assert stepped.past[0][0].size(0) == 4 and stepped.parents is None
        assert torch.equal(stepped.past[0][0][1, :, 0], stepped.past[0][0][0, :, 0])  # one parent
        shrunk = stepped.reorder(torch.tensor([2, 3]), torch.tensor([1]))  # sentence 0 left
        assert shrunk.cross[0][0].size(0) == 1 and shrunk.mem_bias.size(0) == 1
        assert torch.equal(shrunk.cross[0][0][0], stepped.cross[0][0][1])
        twice = kept.reorder(
            torch.tensor([3, 2]), None
        )  # parents compose until a step applies them
        assert twice.parents.tolist() == [1, 1]


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

    def start(self, src: Tensor, src_pad_mask: Tensor, record: bool = False) -> PrefixState:
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
    settings = replace(tr.settings(), beam=beam, nbest=beam, scores=True)
    cached = decode_corpus(tr.model, src, settings, tr.device)
    plain = decode_corpus(Recompute(tr.model), src, settings, tr.device)
    assert [[h.tokens for h in hs] for hs in cached] == [[h.tokens for h in hs] for hs in plain]
    for a, b in zip(cached, plain):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    # the sentences end at different lengths: the batch shrinks and beams are reordered on the way
    assert len({len(hs[0].tokens) for hs in cached}) > 3


def textbook_beam_search(
    model: Transformer, ids: list[int], beam: int, alpha: float, max_len: int
) -> tuple[list[int], float]:
    """Beam search as fairseq describes it, written plainly: one sentence, no batching, no caches,
    every step decoding each beam's whole prefix. Each step ranks the 2k best continuations of all
    beams; an EOS among the first k finishes a hypothesis (scored by its log-probability over the
    GNMT length penalty), the k best others go on; the search ends with k finished hypotheses, or
    at `max_len` tokens (EOS included), where EOS is the only choice. Returns the best."""
    src = torch.tensor([[*ids, EOS]])
    memory = model.encode(src, src == PAD)
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for t in range(max_len):
        prefixes = torch.tensor([[BOS, *tokens] for tokens, _ in beams])
        rows = len(beams)
        logits = model.decode(prefixes, memory.expand(rows, -1, -1), (src == PAD).expand(rows, -1))
        lp = logits[:, -1].float().log_softmax(-1)
        lp[:, [PAD, BOS]] = -math.inf
        if t == max_len - 1:  # the last position: only EOS
            lp[:, :EOS] = lp[:, EOS + 1 :] = -math.inf
        total = lp + torch.tensor([score for _, score in beams])[:, None]
        values, flat = total.flatten().topk(2 * beam)
        going: list[tuple[list[int], float]] = []
        for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist())):
            parent, token = divmod(index, lp.size(1))
            tokens = beams[parent][0]
            if token == EOS:
                if rank < beam and value > -math.inf:
                    finished.append((tokens, value / ((5 + len(tokens) + 1) / 6) ** alpha))
            elif len(going) < beam:
                going.append(([*tokens, token], value))
        if len(finished) >= beam or t == max_len - 1:
            break
        beams = going
    return max(finished, key=lambda h: h[1])


@pytest.mark.parametrize("beam", [4, 5])
def test_the_smoke_model_translates_as_a_textbook_beam_search_does(
    smoke: SmokeRun, beam: int
) -> None:
    """Batched beam search with caches, sentences leaving the batch and beams reordered, gives the
    tokens and scores of the plain search above, sentence by sentence."""
    tr = load_translator(smoke.run / "best.pt", "cpu", "fp32", workers=1)
    src = encode_lines(tr, read_lines(smoke.prepared / "valid.src.txt")[:40])
    settings = replace(tr.settings(), beam=beam)
    d = tr.cfg.decode
    ours = decode_corpus(tr.model, src, settings, tr.device)
    with torch.inference_mode():
        for ids, hyps in zip(src, ours):
            limit = min(int((len(ids) + 1) * d.max_len_a) + d.max_len_b, settings.max_len)
            tokens, score = textbook_beam_search(tr.model, ids, beam, settings.alpha, limit)
            assert hyps[0].tokens == tokens
            assert hyps[0].score == pytest.approx(score, abs=1e-4)


def test_greedy_search_without_scores_takes_the_largest_logit(smoke: SmokeRun) -> None:
    """What `nmt translate` runs for one output a line: the same tokens as greedy search over the
    log-probabilities (a softmax keeps each row's order), no softmax, and no score."""
    tr = load_translator(smoke.run / "best.pt", "cpu", "fp32", workers=1)
    src = encode_lines(tr, read_lines(smoke.prepared / "valid.src.txt")[:100])
    assert tr.settings().scores is False  # one output a line: its score is never shown
    settings = replace(tr.settings(), beam=1, nbest=1)
    fast = decode_corpus(tr.model, src, settings, tr.device)
    scored = decode_corpus(tr.model, src, replace(settings, scores=True), tr.device)
    assert [h[0].tokens for h in fast] == [h[0].tokens for h in scored]
    assert {(h[0].score, h[0].log_prob) for h in fast} == {(None, None)}
    assert all(h[0].score < 0 for h in scored)
    # at the length limit the only token left is EOS
    limited = replace(settings, max_len_a=0.0, max_len_b=3)
    short = decode_corpus(tr.model, src, limited, tr.device)
    assert all(len(h[0].tokens) <= 2 for h in short) and any(len(h[0].tokens) == 2 for h in short)
    scored = decode_corpus(tr.model, src, replace(limited, scores=True), tr.device)
    assert [h[0].tokens for h in short] == [h[0].tokens for h in scored]
