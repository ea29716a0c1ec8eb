"""Search: hand-written probability tables where the right answer can be worked out on paper."""

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import pytest
import torch

from nmt.data import bucket_batches
from nmt.models.transformer import Transformer
from nmt.search import (
    SearchSettings,
    Workspace,
    beam_search,
    block_repeats,
    decode_corpus,
    greedy_search,
    length_penalty,
    next_log_probs,
    top_continuations,
)
from nmt.tokenizer import BOS, EOS, PAD

A, B = 4, 5
V = 6

CPU = torch.device("cpu")


@dataclass(frozen=True)
class PrefixState:
    """The scripted model's decoder state: the tokens each row has emitted."""

    prefix: torch.Tensor  # (rows, t)
    recording = None

    def reorder(self, beams, sentences):
        return PrefixState(self.prefix[beams])


class ScriptedModel:
    """Next-token probabilities looked up from a table keyed by the prefix generated so far."""

    returns_log_probs = False

    def __init__(
        self, table: dict[tuple, dict[int, float]], default: Optional[dict[int, float]] = None
    ):
        self.table, self.default = table, default if default is not None else {EOS: 1.0}

    def start(self, src, src_pad_mask, record=False):
        return PrefixState(torch.empty((src.size(0), 0), dtype=torch.long))

    def step(self, prev, state):
        prefix = state.prefix
        if not (prev == BOS).all():
            prefix = torch.cat([state.prefix, prev[:, None]], dim=1)
        logits = torch.full((prev.size(0), V), math.log(1e-9))
        for row, p in enumerate(prefix.tolist()):
            for tok, prob in self.table.get(tuple(p), self.default).items():
                logits[row, tok] = math.log(prob)
        return logits, PrefixState(prefix)


def run(model, beam, alpha=0.0, nbest=1, max_len=10, n=1, early_exit=False):
    src = torch.full((n, 3), A)
    mask = src == PAD
    lens = torch.full((n,), max_len)
    if beam == 0:
        return greedy_search(model, src, mask, lens)
    return beam_search(
        model,
        src,
        mask,
        lens,
        SearchSettings(beam=beam, alpha=alpha, nbest=nbest, early_exit=early_exit),
    )


# Greedy takes A (0.6) then EOS: p = 0.6 * 0.4 = 0.24. Beam 2 also keeps B (0.4), whose EOS has
# p = 0.4 * 0.9 = 0.36 > 0.24: beam search must find [B], greedy must return [A].
TRAP = {(): {A: 0.6, B: 0.4}, (A,): {EOS: 0.4, A: 0.3, B: 0.3}, (B,): {EOS: 0.9, A: 0.05, B: 0.05}}


def test_beam_finds_the_sequence_greedy_misses():
    model = ScriptedModel(TRAP)
    greedy = run(model, beam=0)[0]
    assert greedy.tokens == [A]
    assert math.isclose(greedy.log_prob, math.log(0.24), rel_tol=1e-4)
    best = run(model, beam=2)[0][0]
    assert best.tokens == [B]
    assert math.isclose(best.log_prob, math.log(0.36), rel_tol=1e-4)


def test_nbest_is_sorted_and_complete():
    hyps = run(ScriptedModel(TRAP), beam=2, nbest=2)[0]
    assert [h.tokens for h in hyps] == [[B], [A]]
    assert hyps[0].score >= hyps[1].score


def test_length_penalty_values():
    assert length_penalty(7, 0.0) == 1.0
    assert math.isclose(length_penalty(1, 1.0), 1.0)
    assert math.isclose(length_penalty(7, 0.6), 2.0**0.6)


def test_length_penalty_can_prefer_the_longer_hypothesis():
    # Empty output: p = 0.55 (length 1 with EOS). [A]: p = 0.45 * 0.9 = 0.405 (length 2).
    # alpha 0: -0.598 beats -0.904. alpha 3: -0.904 / (7/6)**3 = -0.569 beats -0.598.
    model = ScriptedModel({(): {EOS: 0.55, A: 0.45}, (A,): {EOS: 0.9, B: 0.1}})
    assert run(model, beam=2, alpha=0.0)[0][0].tokens == []
    assert run(model, beam=2, alpha=3.0)[0][0].tokens == [A]


def test_early_exit_ends_a_sentence_once_its_best_continuation_ends_it():
    # The table above: at the first step the best continuation is EOS (p = 0.55). OpenNMT-py's rule
    # (early exit) ends the search there, with the empty output, though [A] wins at alpha 3;
    # fairseq's rule (the default) goes on until `beam` hypotheses are finished and finds [A]. With
    # nbest 2, early exit goes on too.
    model = ScriptedModel({(): {EOS: 0.55, A: 0.45}, (A,): {EOS: 0.9, B: 0.1}})
    steps = []
    step = model.step
    model.step = lambda prev, state: steps.append(prev.size(0)) or step(prev, state)
    assert run(model, beam=2, alpha=3.0)[0][0].tokens == [A] and len(steps) == 2
    steps.clear()
    assert run(model, beam=2, alpha=3.0, early_exit=True)[0][0].tokens == [] and len(steps) == 1
    assert [h.tokens for h in run(model, beam=2, alpha=3.0, nbest=2, early_exit=True)[0]] == [
        [A],
        [],
    ]


def test_max_length_forces_eos():
    # EOS is (nearly) impossible, so only the length limit can end these: 4 tokens + forced EOS = 5.
    # (EOS is also less likely than every other token: tied with them, it could be among a first
    # step's beams by the tie's order.)
    loop = ScriptedModel({}, default={A: 0.999, B: 0.001, EOS: 1e-12})
    assert run(loop, beam=0, max_len=5)[0].tokens == [A] * 4
    assert run(loop, beam=3, max_len=5)[0][0].tokens == [A] * 4


def test_the_first_step_decodes_one_row_per_sentence_then_beam_rows(monkeypatch):
    """The k beams of a sentence would start identical: the first step runs one row per sentence,
    and its best continuations become the k beams (here 2 sentences, beam 3). A step looks at 2k
    continuations: where one row has fewer (a tiny vocabulary), the missing ones score -inf."""
    model = ScriptedModel({(): {A: 0.5, B: 0.3, EOS: 0.2}, (A,): {EOS: 1.0}, (B,): {EOS: 1.0}})
    rows = []
    step = model.step
    monkeypatch.setattr(
        model, "step", lambda prev, state: (rows.append(prev.size(0)), step(prev, state))[1]
    )
    hyps = run(model, beam=3, nbest=3, n=2)
    assert rows[:2] == [2, 6]
    assert [[h.tokens for h in sent] for sent in hyps] == [[[A], [B], []]] * 2
    s, tok, parent = top_continuations(
        torch.zeros(1, 1), torch.log(torch.tensor([[0.5, 0.3, 0.2]])), 5
    )
    assert (
        tok[0, :3].tolist() == [0, 1, 2]
        and parent.tolist() == [[0] * 5]
        and s[0, 3:].tolist() == [-float("inf")] * 2
    )


def test_top_continuations_picks_scores_tokens_parents():
    scores = torch.tensor([[0.0, -1.0]])
    log_probs = torch.log(torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0]]) + 1e-12)
    s, tok, parent = top_continuations(scores, log_probs, 3)
    # beam 0 + token 1: log .9 = -0.11; beam 1 + token 0
    # or 1: -1 + log .5 = -1.69; beam 0 + token 0: -2.30
    assert tok.tolist() in ([[1, 0, 1]], [[1, 1, 0]])  # a tie
    assert parent.tolist() == [[0, 1, 1]]
    expected = torch.tensor([[math.log(0.9), -1.0 + math.log(0.5), -1.0 + math.log(0.5)]])
    assert torch.allclose(s, expected, atol=1e-5)


def test_top_continuations_by_blocks_equal_the_topk_over_every_beam_and_token():
    """Vocabularies cut into blocks of 64, 64 and 50, one with no block divisor from 16 to 64, one
    too short for blocks; with ties and -inf (ruled-out tokens, beams that may not expand yet): the
    plain topk's candidates."""
    g = torch.Generator().manual_seed(1)
    for v in (8000, 2048, 10000, 997, 7):
        for k, m in ((1, 1), (4, 8), (5, 10)):
            for lp in (
                torch.randn(3 * k, v, generator=g),
                torch.randint(0, 4, (3 * k, v), generator=g).float(),
            ):  # ties
                lp[:, ::3] = -float("inf")
                scores = torch.randn(3, k, generator=g)
                scores[0, 1:] = -float("inf")  # a first step: only beam 0 expands
                m = min(m, k * v)
                cand, tok, parent = top_continuations(scores, lp, m)
                flat = (scores[:, :, None] + lp.view(3, k, v)).view(3, k * v)
                assert torch.equal(cand, flat.topk(m, dim=1).values)
                # each candidate is its beam's token
                assert torch.equal(flat.gather(1, parent * v + tok), cand)
                # none twice (finite rows)
                assert all(len(set(r)) == len(r) for r in (parent * v + tok)[1:].tolist())


def test_next_log_probs_are_the_models_log_probs_of_the_allowed_tokens():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3000, generator=g) * 4
    logits[:, BOS] = (
        50.0  # the likeliest token, but BOS: never emitted, still part of the normaliser
    )
    force = torch.tensor([False, False, True, False])
    for dtype in (torch.float32, torch.bfloat16):
        given = logits.to(dtype)
        lp = next_log_probs(given, force_eos=force)
        # the model's logits are left alone
        assert lp.dtype == torch.float32 and torch.equal(given, logits.to(dtype))
        ref = given.float().log_softmax(-1)
        ref[:, [PAD, BOS]] = -float("inf")
        ref[2, :EOS] = ref[2, EOS + 1 :] = -float("inf")  # a forced row may only end
        torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)


def test_next_log_probs_in_a_workspace_equal_a_new_tensor_and_reuse_its_memory():
    g = torch.Generator().manual_seed(3)
    ws = Workspace()
    big = (torch.randn(6, 640, generator=g) * 3).bfloat16()
    force = torch.zeros(6, dtype=torch.bool)
    first = next_log_probs(big, force_eos=force, workspace=ws)
    assert torch.equal(first, next_log_probs(big, force_eos=force))
    ptr = ws.buffer.data_ptr()
    small = big[2:5]  # fewer rows (sentences left the batch): the same memory, no new tensor
    lp = next_log_probs(small, force_eos=force[:3], workspace=ws)
    assert lp.data_ptr() == ptr and torch.equal(lp, next_log_probs(small, force_eos=force[:3]))
    more = torch.cat([big, big]).contiguous()  # more rows than it holds: it grows
    assert torch.equal(
        next_log_probs(more, force_eos=torch.cat([force, force]), workspace=ws),
        next_log_probs(more, force_eos=torch.cat([force, force])),
    )
    assert ws.buffer.size(0) == 12


def test_best_tokens_by_blocks_equal_argmax_ties_included():
    """Vocabularies cut into blocks (8,000 and 2,048 by 64, 10,000 by 50), one without a block
    divisor and one too short for blocks; random rows, rows of ties, rows ruled out but for one
    token (the length limit's EOS): torch.argmax's column, the first of equals."""
    from nmt.search import best_tokens

    g = torch.Generator().manual_seed(2)
    for v in (8000, 2048, 10000, 997, 7):
        for x in (
            torch.randn(6, v, generator=g),
            torch.randint(0, 3, (6, v), generator=g).float(),  # ties, in several blocks
        ):
            x[:, ::3] = -float("inf")
            x[0] = -float("inf")
            x[0, 2] = 0.0  # only one token left
            x[1] = -float("inf")  # none left: the first column, as argmax
            x[2, v // 2 :] = float("nan")  # NaN counts as the largest, as argmax has it
            assert torch.equal(best_tokens(x), x.argmax(dim=1))


def test_beam_search_with_blocked_top_tokens_equals_the_plain_topk(monkeypatch):
    """A vocabulary long enough for top_continuations to use blocks (64 of 64) at beam 4: search
    gives what it gives with torch.topk over every beam's whole row."""
    torch.manual_seed(4)
    model = Transformer(
        4096, 4096, layers=1, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64
    ).eval()
    g = torch.Generator().manual_seed(6)
    src = [
        torch.randint(4, 4096, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(8)
    ]
    kw = SearchSettings(max_tokens=1000, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)
    fast = {beam: decode_corpus(model, src, replace(kw, beam=beam), CPU) for beam in (1, 4)}
    monkeypatch.setattr("nmt.search.block_size", lambda v: None)
    for beam in (1, 4):
        plain = decode_corpus(model, src, replace(kw, beam=beam), CPU)
        assert [h[0].tokens for h in fast[beam]] == [h[0].tokens for h in plain]
        assert [h[0].score for h in fast[beam]] == pytest.approx(
            [h[0].score for h in plain], abs=1e-5
        )


def random_transformer():
    torch.manual_seed(3)
    return Transformer(
        30, 30, layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64
    ).eval()


def sources(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(4, 30, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


def test_beam_one_equals_greedy_on_a_real_model():
    model, src = random_transformer(), sources()
    kw = SearchSettings(max_tokens=1000, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)
    greedy = decode_corpus(model, src, replace(kw, beam=1), CPU)
    beam1 = [beam_search_one(model, s) for s in src]
    assert [g[0].tokens for g in greedy] == [b.tokens for b in beam1]
    assert any(len(g[0].tokens) > 0 for g in greedy)


def beam_search_one(model, s, beam=1):
    src = torch.tensor([s + [EOS]])
    mask = src == PAD
    lens = torch.clamp((torch.tensor([len(s) + 1]) * 1.5).long() + 5, max=63)
    return beam_search(model, src, mask, lens, SearchSettings(beam=beam, alpha=0.6))[0][0]


def test_batched_decoding_equals_one_sentence_at_a_time():
    """Finished sentences leave the batch and beams
    are reordered: none of it may change a result."""
    model, src = random_transformer(), sources(9, seed=5)
    kw = SearchSettings(alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)
    for beam in (1, 4):
        together = decode_corpus(model, src, replace(kw, max_tokens=10_000, beam=beam), CPU)
        alone = [
            decode_corpus(model, [s], replace(kw, max_tokens=10_000, beam=beam), CPU)[0]
            for s in src
        ]
        assert [h[0].tokens for h in together] == [h[0].tokens for h in alone]
        for a, b in zip(together, alone):
            assert math.isclose(a[0].score, b[0].score, rel_tol=1e-4, abs_tol=1e-4)


def test_batches_decoded_in_threads_equal_those_decoded_in_turn():
    """Workers take batches longest first, in threads sharing the intra-op threads: each input still
    gets its own translation, in input order, and torch's thread count is what it was."""
    model, src = random_transformer(), sources(40, seed=7)
    kw = SearchSettings(max_tokens=60, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)
    threads = torch.get_num_threads()
    for beam in (1, 3):
        in_turn = decode_corpus(model, src, replace(kw, beam=beam), CPU)
        for workers in (2, 3):
            side_by_side = decode_corpus(model, src, replace(kw, beam=beam), CPU, workers=workers)
            assert [h[0].tokens for h in side_by_side] == [h[0].tokens for h in in_turn]
            assert [h[0].score for h in side_by_side] == pytest.approx(
                [h[0].score for h in in_turn], abs=1e-5
            )
            assert torch.get_num_threads() == threads


def test_an_error_in_a_worker_reaches_the_caller_and_stops_the_rest():
    model, src = random_transformer(), sources(40, seed=7)
    started = []

    class Failing:
        returns_log_probs = False

        def start(self, src, src_pad_mask, record=False):
            started.append(src.size(0))
            if len(started) == 2:
                raise ValueError("bad batch")
            return model.start(src, src_pad_mask)

        def step(self, prev, state):
            return model.step(prev, state)

    kw = SearchSettings(max_tokens=60, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)
    with pytest.raises(ValueError, match="bad batch"):
        decode_corpus(Failing(), src, replace(kw, beam=2), CPU, workers=2)
    n_batches = len(bucket_batches(np.array([len(s) for s in src]), None, 60 // 2))
    assert 2 <= len(started) < n_batches  # batches still queued behind the failure were dropped


def test_empty_input_gives_empty_output():
    out = decode_corpus(
        random_transformer(),
        [[], [5, 6], []],
        SearchSettings(max_tokens=100, beam=2, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63),
        CPU,
    )
    assert out[0][0].tokens == [] and out[2][0].tokens == []


# --- n-gram repeat blocking ---


def repeated_ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return sorted({g for g in grams if grams.count(g) > 1})


def test_block_repeats_bans_exactly_the_tokens_that_would_repeat_an_ngram():
    prefix = torch.tensor([[A, B, A], [A, B, A], [B, B, B]])
    lp = torch.zeros(3, V)
    # bigrams so far: AB, BA; the suffix A would repeat AB with B
    block_repeats(lp[:1], prefix[:1], 2)
    assert torch.isinf(lp[0]).nonzero().flatten().tolist() == [B]
    block_repeats(lp[1:2], prefix[1:2], 1)  # unigrams: no token twice
    assert torch.isinf(lp[1]).nonzero().flatten().tolist() == [A, B]
    block_repeats(lp[2:], prefix[2:], 3)  # BBB seen; suffix BB: B would repeat it
    assert torch.isinf(lp[2]).nonzero().flatten().tolist() == [B]
    untouched = torch.zeros(3, V)
    block_repeats(untouched, prefix, 4)  # no 4-gram yet
    block_repeats(untouched, prefix, 0)  # off
    assert not torch.isinf(untouched).any()


def test_a_looping_model_is_stopped_from_repeating_bigrams():
    """The model always prefers A, then B, then EOS. Worked out by hand with bigrams blocked:
    A, A (AA is new), B (AA would repeat), A (BA is new), then both AA and AB would repeat: EOS."""
    loop = ScriptedModel({}, default={A: 0.5, B: 0.3, EOS: 0.2})
    assert run(loop, beam=0)[0].tokens == [A] * 9  # unblocked: A until the length limit forces EOS
    src, mask, lens = (
        torch.full((1, 3), A),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.full((1,), 10),
    )
    one = beam_search(loop, src, mask, lens, SearchSettings(beam=1, alpha=0.0, no_repeat_ngram=2))[
        0
    ][0]
    assert one.tokens == [A, A, B, A]
    for hyp in beam_search(
        loop, src, mask, lens, SearchSettings(beam=3, alpha=0.0, nbest=3, no_repeat_ngram=2)
    )[0]:
        assert repeated_ngrams(hyp.tokens, 2) == []


def test_no_repeat_ngram_on_a_real_model():
    model, src = random_transformer(), sources(12, seed=1)
    kw = SearchSettings(max_tokens=1000, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)
    free = decode_corpus(model, src, replace(kw, beam=4), CPU)
    # a random model repeats itself: the test can fail
    assert any(repeated_ngrams(h[0].tokens, 2) for h in free)
    for beam in (1, 4):
        blocked = decode_corpus(model, src, replace(kw, beam=beam, no_repeat_ngram=2), CPU)
        assert all(repeated_ngrams(h[0].tokens, 2) == [] for h in blocked)
    # greedy through beam search (one beam) is the same search as the greedy loop
    assert [
        h[0].tokens for h in decode_corpus(model, src, replace(kw, beam=1, no_repeat_ngram=0), CPU)
    ] == [
        h[0].tokens for h in decode_corpus(model, src, replace(kw, beam=1, no_repeat_ngram=99), CPU)
    ]
