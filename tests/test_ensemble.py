"""Ensembles (nmt.models.ensemble): the mean of the
members' probabilities, decoded by the same search."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from nmt.models.ensemble import Ensemble
from nmt.models.rnn import RNNSeq2Seq
from nmt.models.transformer import Transformer
from nmt.search import SearchSettings, decode_corpus
from nmt.tokenizer import BOS, EOS, PAD

KW = SearchSettings(max_tokens=10_000, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)

CPU = torch.device("cpu")


def transformer(seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(
        30, 30, layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64
    ).eval()


def rnn(seed: int) -> RNNSeq2Seq:
    torch.manual_seed(seed)
    return RNNSeq2Seq(
        30, 30, cell="gru", layers=2, emb=16, hidden=32, attention="additive", dropout=0.0
    ).eval()


def sources(n: int = 9, seed: int = 5) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(4, 30, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


@pytest.mark.parametrize("beam", [1, 4])
def test_a_model_twice_decodes_like_the_model(beam: int) -> None:
    model, src = transformer(3), sources()
    alone = decode_corpus(model, src, replace(KW, beam=beam), CPU)
    twice = decode_corpus(Ensemble([model, model]), src, replace(KW, beam=beam), CPU)
    assert [h[0].tokens for h in twice] == [h[0].tokens for h in alone]
    assert any(h[0].tokens for h in alone)
    for a, b in zip(twice, alone):
        assert math.isclose(a[0].score, b[0].score, rel_tol=1e-4, abs_tol=1e-4)


def test_each_step_is_the_log_of_the_members_mean_probability() -> None:
    """Stepping the ensemble along a target prefix gives, at every position, log((p_1 + p_2) / 2) of
    the members' teacher-forced distributions."""
    members = [transformer(3), rnn(4)]
    src = torch.tensor([[5, 9, 12, 7, EOS], [6, 8, EOS, PAD, PAD]])
    mask = src == PAD
    tgt_in = torch.tensor([[BOS, 11, 4, 20, 9], [BOS, 17, 17, 5, 6]])
    with torch.inference_mode():
        probs = torch.stack(
            [torch.softmax(m(src, mask, tgt_in).float(), dim=-1) for m in members]
        ).mean(0)
        ens = Ensemble(members)
        state = ens.start(src, mask)
        for t in range(tgt_in.size(1)):
            lp, state = ens.step(tgt_in[:, t], state)
            torch.testing.assert_close(lp, probs[:, t].log(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2))


@pytest.mark.parametrize("beam", [1, 4])
def test_batched_decoding_equals_one_sentence_at_a_time(beam: int) -> None:
    """A Transformer beside an RNN: beams reorder and finished sentences leave the batch in each
    member's state by its own rules (the Transformer keeps one encoder row per sentence and reorders
    its cache lazily); no result changes."""
    ens, src = Ensemble([transformer(3), rnn(4)]), sources()
    together = decode_corpus(ens, src, replace(KW, beam=beam), CPU)
    alone = [decode_corpus(ens, [s], replace(KW, beam=beam), CPU)[0] for s in src]
    assert [h[0].tokens for h in together] == [h[0].tokens for h in alone]
    # sentences end at different steps: the batch shrinks
    assert len({len(h[0].tokens) for h in together}) > 1
    for a, b in zip(together, alone):
        assert math.isclose(a[0].score, b[0].score, rel_tol=1e-4, abs_tol=1e-4)


def test_members_keep_one_encoder_row_per_sentence_under_beam_search() -> None:
    """The ensemble's state is reordered member by member: the Transformer's encoder keys/values
    stay one row per sentence, shared by its beams, as when it decodes alone (reordering the list
    whole would copy them per beam)."""
    member, seen = transformer(3), []
    step = member.step

    def spy(prev, state):
        seen.append((prev.size(0), state.mem_bias.size(0)))
        return step(prev, state)

    member.step = spy
    decode_corpus(Ensemble([member, rnn(4)]), sources(), replace(KW, beam=4), CPU)
    assert seen[0][0] == seen[0][1]  # the first step decodes one row per sentence
    assert all(rows == 4 * sentences for rows, sentences in seen[1:]) and len(seen) > 2


@pytest.mark.parametrize("beam", [1, 4])
def test_search_uses_the_ensembles_log_probabilities_as_they_are(beam: int, monkeypatch) -> None:
    """`returns_log_probs`: search skips normalising the ensemble's output again; normalising it
    anyway changes nothing."""
    ens, src = Ensemble([transformer(3), rnn(4)]), sources()
    fast = decode_corpus(ens, src, replace(KW, beam=beam), CPU)
    monkeypatch.setattr(Ensemble, "returns_log_probs", False)
    plain = decode_corpus(ens, src, replace(KW, beam=beam), CPU)
    assert [h[0].tokens for h in fast] == [h[0].tokens for h in plain]
    for a, b in zip(fast, plain):
        assert math.isclose(a[0].score, b[0].score, rel_tol=1e-5, abs_tol=1e-5)


def test_the_ensemble_differs_from_each_member() -> None:
    """Not a member in disguise: on these random models,
    the ensemble's beam output is neither member's."""
    a, b, src = transformer(3), transformer(4), sources(12)
    outs = [
        [h[0].tokens for h in decode_corpus(m, src, replace(KW, beam=4), CPU)]
        for m in (a, b, Ensemble([a, b]))
    ]
    assert outs[2] != outs[0] and outs[2] != outs[1]


def test_an_ensemble_needs_two_models_and_records_no_attention() -> None:
    with pytest.raises(ValueError, match="two or more"):
        Ensemble([transformer(3)])
    with pytest.raises(ValueError, match="one model"):
        decode_corpus(
            Ensemble([transformer(3), transformer(4)]),
            sources(2),
            replace(KW, beam=2),
            CPU,
            record=True,
        )
