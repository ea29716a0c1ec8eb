"""Sampling on a scripted model whose probabilities are known: the draws follow them, top-k and
top-p cut them as defined, temperature 0 is greedy, and a line's sample depends only on the seed
and its line number."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from test_search import EOS, A, B, ScriptedModel, V

from nmt.errors import NmtError
from nmt.sampling import Sampling, draw
from nmt.search import SearchSettings, decode_corpus

# first token: A 0.5, B 0.3, EOS 0.2; then EOS
FIRST = {(): {A: 0.5, B: 0.3, EOS: 0.2}}
N = 4000

CPU = torch.device("cpu")
# one beam, at most 1 x source length + 3 tokens
ONE = SearchSettings(beam=1, alpha=0.0, max_len_a=1.0, max_len_b=3, max_len=63, max_tokens=1000)


def first_tokens(sampling: Sampling, n: int = N, max_tokens: int = 100_000) -> list[int]:
    hyps = decode_corpus(
        ScriptedModel(FIRST),
        [[A, A]] * n,
        replace(ONE, max_tokens=max_tokens, sampling=sampling),
        CPU,
    )
    return [h[0].tokens[0] if h[0].tokens else EOS for h in hyps]


def shares(tokens: list[int]) -> dict[int, float]:
    return {t: c / len(tokens) for t, c in Counter(tokens).items()}


def test_draws_follow_the_model_probabilities() -> None:
    got = shares(first_tokens(Sampling(seed=1)))
    for token, p in FIRST[()].items():
        assert abs(got[token] - p) < 0.03, (token, got)


def test_topk_never_draws_outside_the_k_most_probable() -> None:
    got = shares(first_tokens(Sampling(topk=2, seed=2)))
    assert set(got) == {A, B}
    assert abs(got[A] - 0.5 / 0.8) < 0.03
    assert set(first_tokens(Sampling(topk=1, seed=3), n=200)) == {A}


def test_topp_keeps_the_fewest_tokens_holding_p() -> None:
    # A holds 0.5, A and B 0.8: p up to 0.5 keeps A alone, above 0.5 up to 0.8 keeps A and B
    assert set(first_tokens(Sampling(topp=0.5, seed=4), n=300)) == {A}
    assert set(first_tokens(Sampling(topp=0.6, seed=5), n=300)) == {A, B}
    assert set(first_tokens(Sampling(topp=0.85, seed=6), n=300)) == {A, B, EOS}


def test_temperature_sharpens_and_zero_is_greedy() -> None:
    assert shares(first_tokens(Sampling(temperature=0.25, seed=7)))[A] > 0.85
    greedy = decode_corpus(
        ScriptedModel(FIRST),
        [[A]] * 5,
        ONE,
        CPU,
    )
    cold = decode_corpus(
        ScriptedModel(FIRST),
        [[A]] * 5,
        replace(ONE, sampling=Sampling(temperature=0.0)),
        CPU,
    )
    assert [h[0].tokens for h in cold] == [h[0].tokens for h in greedy] == [[A]] * 5


def test_a_lines_sample_depends_on_seed_and_line_not_on_batching() -> None:
    one_batch = first_tokens(Sampling(seed=8), n=300)
    many_batches = first_tokens(Sampling(seed=8), n=300, max_tokens=16)  # 8 lines a batch
    assert one_batch == many_batches
    assert first_tokens(Sampling(seed=9), n=300) != one_batch


def test_the_score_is_the_model_log_probability_of_the_drawn_tokens() -> None:
    hyps = decode_corpus(
        ScriptedModel(FIRST),
        [[A]] * 50,
        replace(ONE, sampling=Sampling(seed=10, temperature=2.0)),
        CPU,
    )
    for h in (h[0] for h in hyps):
        expected = math.log(FIRST[()][h.tokens[0]]) if h.tokens else math.log(0.2)
        assert math.isclose(h.log_prob, expected, abs_tol=1e-4)  # then EOS with probability 1


def test_draw_never_picks_an_impossible_token() -> None:
    lp = torch.full((1000, V), -float("inf"))
    lp[:, B] = 0.0
    u = torch.linspace(0, 1, 1000).clamp(max=1 - 1e-7)
    u[0] = 0.0
    assert (draw(lp, u, Sampling()) == B).all()


@pytest.mark.parametrize(
    "kwargs, flag", [({"topk": -1}, "--topk"), ({"topp": 0.0}, "--topp"), ({"topp": 1.5}, "--topp"),
                     ({"temperature": -1.0}, "--temperature")],
)  # fmt: skip
def test_settings_out_of_range_are_one_error(kwargs: dict, flag: str) -> None:
    with pytest.raises(NmtError, match=flag):
        Sampling(**kwargs)
