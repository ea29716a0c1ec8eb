"""Greedy and beam search over a small model interface, shared by every architecture.

A model offers `start(src, src_pad_mask) -> state` and `step(prev (rows,), state) -> (scores (rows,
V), state)`, and says whether the scores are log-probabilities already (`Decodable`). The state is
the model's own typed object (`DecoderState`): search never looks inside it, it only asks it to
`reorder` itself when beams are re-ranked and when finished sentences leave the batch. Rows are
sentence-major: beam j of sentence i is row i * beam + j. A state may keep the parts that depend
on the sentence alone (the encoder's outputs) one row per sentence, shared by its beams, moved only
when the batch shrinks, and may reorder a growing cache lazily, in the copy that extends it.

How to search is one frozen value, `SearchSettings`: beam, length penalty, n-best, length limits,
n-gram blocking, the stopping rule, sampling. With `record=True` a model keeps the attention weights
in its state (`state.recording`, see models/recording.py), so a finished hypothesis carries the
weights its own tokens were produced with.

About 400 lines: the seam, the settings and both searches in one file, so that what a search does
reads in one place (its CPU speed-ups are in search_cpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.data import bucket_batches, make_batch
from nmt.models.recording import Recording
from nmt.sampling import Sampler, Sampling
from nmt.search_cpu import (
    Workspace,
    block_size,
    blocked_argmax,
    blocked_top_continuations,
    in_threads,
)
from nmt.tokenizer import BOS, EOS, PAD


class DecoderState(Protocol):
    """What a model carries from one decoding step to the next."""

    recording: Optional[Recording]  # the attention weights so far, with start(..., record=True)

    def reorder(self, beams: Tensor, sentences: Optional[Tensor]) -> DecoderState:
        """The state of the new rows: row r continues row beams[r]. `sentences`: the live
        sentences that stay when some leave the batch (None: all stay)."""
        ...


class Decodable(Protocol):
    """What search needs from a model (the Transformer, the RNN and the Ensemble offer it)."""

    # step() returns log-probabilities already (an ensemble's mean), not logits to normalise
    returns_log_probs: bool

    def start(self, src: Tensor, src_pad_mask: Tensor, record: bool = False) -> DecoderState:
        """The decoder state after encoding src (B, S)."""
        ...

    def step(self, prev: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Scores (rows, V) of the next token after `prev` (rows,), in a tensor of their own
        (search changes them in place), and the new state."""
        ...


@dataclass(frozen=True)
class SearchSettings:
    """How to pick the outputs. `beam` 1 with `nbest` 1 and no n-gram blocking is greedy search;
    `sampling` set: one drawn output per line instead (beam, nbest and no_repeat_ngram unused)."""

    beam: int = 5
    alpha: float = 0.6  # GNMT length penalty exponent (beam search ranks by score / penalty)
    nbest: int = 1
    max_len_a: float = 1.5  # at most a * source length + b output tokens, EOS included,
    max_len_b: int = 10
    max_len: int = 1023  # and never more than this (what the model's positions allow)
    no_repeat_ngram: int = 0  # n > 0: no hypothesis holds the same n-gram twice
    early_exit: bool = False  # beam search's stopping rule, see beam_search
    max_tokens: int = 8000  # source tokens (x beam) per batch
    sampling: Optional[Sampling] = None
    # hypotheses carry their log-probabilities; without, greedy search takes the best token of the
    # logits and skips the softmax over the vocabulary (as CTranslate2's does without return_scores)
    scores: bool = True

    def __post_init__(self) -> None:
        if self.nbest > self.beam or (self.sampling is not None and self.beam != 1):
            raise ValueError(f"search settings that do not fit together: {self}")

    @staticmethod
    def of(
        d: DecodeConfig, max_positions: int, sampling: Optional[Sampling] = None
    ) -> SearchSettings:
        """The settings a decode config asks for, for a model with `max_positions` positions; with
        scores where they are shown: n-best lists (and beam search, which ranks by them)."""
        return SearchSettings(
            beam=1 if sampling else d.beam,
            alpha=d.alpha,
            nbest=1 if sampling else d.nbest,
            max_len_a=d.max_len_a,
            max_len_b=d.max_len_b,
            max_len=max_positions - 1,
            no_repeat_ngram=0 if sampling else d.no_repeat_ngram,
            early_exit=d.early_exit,
            max_tokens=d.max_tokens,
            sampling=sampling,
            scores=d.nbest > 1,
        )

    @property
    def greedy(self) -> bool:
        """Whether greedy search's loop (or sampling's) decodes with these settings."""
        return self.sampling is not None or (
            self.beam == 1 and self.nbest == 1 and not self.no_repeat_ngram
        )


@dataclass
class Hypothesis:
    """One translation search found, as token ids, with its scores."""

    tokens: list[int]  # without BOS, without EOS
    # length-normalised log-probability (beam) or plain sum (greedy; None without settings.scores)
    score: Optional[float]
    log_prob: Optional[float]  # sum of token log-probabilities, EOS included (as score)
    attention: Optional[dict[str, np.ndarray]] = None  # with record=True: see Recording.of_row


def restrict(lp: Tensor, force_eos: Tensor) -> Tensor:
    """Never emit PAD or BOS; rows where `force_eos` (...,)
    is True may only emit EOS. lp (..., V), in place."""
    lp[..., PAD] = -float("inf")
    lp[..., BOS] = -float("inf")
    # only at the length limit; masked writes cost even when they write nothing
    if bool(force_eos.any()):
        lp[force_eos, ..., :EOS] = -float("inf")
        lp[force_eos, ..., EOS + 1 :] = -float("inf")
    return lp


def block_repeats(lp: Tensor, prefix: Tensor, n: int) -> Tensor:
    """No n-gram twice (fairseq's --no-repeat-ngram-size): a token that would complete an n-gram
    already in a row's prefix gets -inf. lp (R, V) in place, prefix (R, t) the tokens emitted so far
    (no BOS, no EOS)."""
    t = prefix.size(1)
    if n <= 0 or t < n:
        return lp
    grams = prefix.unfold(1, n, 1)  # (R, t-n+1, n): every n-gram so far
    # its first n-1 tokens are the current suffix
    seen = (grams[:, :, :-1] == prefix[:, None, t - n + 1 :]).all(-1)
    hits = torch.zeros_like(lp).scatter_add_(1, grams[:, :, -1], seen.to(lp.dtype))
    return lp.masked_fill_(hits > 0, -float("inf"))


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty (Wu et al. 2016): ((5 + length) / 6) ** alpha; 1 when alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_pad_mask: Tensor, a: float, b: int, cap: int) -> Tensor:
    """(B,) maximum output length per sentence: a *
    source length + b, at most `cap` (EOS included)."""
    src_len = (~src_pad_mask).sum(1)
    return torch.clamp((src_len.float() * a).long() + b, max=cap)


def next_log_probs(
    logits: Tensor,
    force_eos: Tensor,
    prefix: Optional[Tensor] = None,
    no_repeat_ngram: int = 0,
    normalised: bool = False,
    workspace: Optional[Workspace] = None,
) -> Tensor:
    """(R, V) fp32 log-probabilities of the next token: the model's (normalised over the whole
    vocabulary, in fp32 also for bf16 weights), then `restrict` and `block_repeats` rule tokens out
    (-inf). `normalised`: the model's `step` already gave fp32 log-probabilities in a tensor of its
    own (an ensemble's, `returns_log_probs`), used as they are. `workspace`: where the fp32 copy of
    bf16 logits on a CPU goes (valid until the next call with it)."""
    if normalised:
        lp = logits
    elif logits.dtype == torch.float32 or logits.device.type != "cpu":
        # a new tensor: the model's logits stay as they are
        lp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    # the fp32 copy is ours: normalised in place, one pass less (torch's CPU kernel reads a row
    # whole before writing it)
    else:
        lp = logits.float() if workspace is None else workspace.take(*logits.shape).copy_(logits)
        torch.log_softmax(lp, dim=-1, out=lp)
    if prefix is not None:
        lp = block_repeats(lp, prefix, no_repeat_ngram)
    return restrict(lp, force_eos)


@torch.inference_mode()
def greedy_search(
    model: Decodable,
    src: Tensor,
    src_pad_mask: Tensor,
    max_len: Tensor,
    record: bool = False,
    sample: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    scores: bool = True,
) -> list[Hypothesis]:
    """Pick the most probable token at each step until EOS or `max_len` (B,) tokens; with `sample`
    (log-probs (R, V) and the rows' places in the batch (R,) -> tokens (R,); see sampling.py),
    draw it instead. A hypothesis's score is the model's log-probability of its tokens; without
    `scores` it is None, and the most probable token is the largest logit (no softmax)."""
    state = model.start(src, src_pad_mask, record)
    normalised = model.returns_log_probs
    b = src.size(0)
    src_len = (~src_pad_mask).sum(1).tolist()
    attention: list[Optional[dict]] = [None] * b
    alive = torch.arange(b, device=src.device)  # original row of each live row
    prev = torch.full((b,), BOS, dtype=torch.long, device=src.device)
    tokens: list[Tensor] = []
    owners: list[Tensor] = []
    log_prob = torch.zeros(b, device=src.device)
    max_len = max_len.to(src.device)
    workspace = Workspace()
    for t in range(int(max_len.max())):
        logits, state = model.step(prev, state)
        force = max_len[alive] <= t + 1
        if sample is None and not scores:
            # a softmax keeps the order of a row: its largest logit is its best token
            prev = best_tokens(restrict(logits, force))
        else:
            lp = next_log_probs(logits, force, normalised=normalised, workspace=workspace)
            prev = best_tokens(lp) if sample is None else sample(lp, alive)
            best = lp.gather(1, prev[:, None]).squeeze(1)
            log_prob.index_add_(0, alive, best)
        tokens.append(prev)
        owners.append(alive)
        done = prev == EOS
        if bool(done.any()):
            if state.recording is not None:
                for j in done.nonzero().flatten().tolist():
                    attention[int(alive[j])] = state.recording.of_row(j, src_len[int(alive[j])])
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, prev, state = alive[keep], prev[keep], state.reorder(keep, keep)
    out: list[list[int]] = [[] for _ in range(b)]
    for tok, own in zip(tokens, owners):
        for row, token in zip(own.tolist(), tok.tolist()):
            if token != EOS:
                out[row].append(token)
    total = log_prob.tolist() if scores or sample is not None else [None] * b
    return [Hypothesis(out[i], total[i], total[i], attention[i]) for i in range(b)]


def best_tokens(scores: Tensor) -> Tensor:
    """(R,) the column of each row's largest score in `scores` (R, V), the first of equals; on a
    CPU, over many columns, by blocks (search_cpu.blocked_argmax: the same result)."""
    blk = block_size(scores.size(1))
    if scores.device.type == "cpu" and blk is not None and scores.size(1) >= 16 * blk:
        return blocked_argmax(scores, blk)
    return scores.argmax(dim=1)


def top_continuations(scores: Tensor, log_probs: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """The m best continuations of each sentence over all its beams: scores (N, K) the beams'
    cumulative log-probs, log_probs (N * K, V) their next-token log-probs (beam j of sentence i is
    row i * K + j). Returns (candidate scores, tokens, parent beams), each (N, m), best first. On a
    CPU, over many columns, by blocks (search_cpu.blocked_top_continuations: the same result)."""
    n, k = scores.shape
    v = log_probs.size(1)
    # fewer continuations than asked (one beam over a tiny vocabulary): the missing ones score -inf
    if k * v < m:
        cand, tok, parent = top_continuations(scores, log_probs, k * v)
        return (
            F.pad(cand, (0, m - k * v), value=-float("inf")),
            F.pad(tok, (0, m - k * v)),
            F.pad(parent, (0, m - k * v)),
        )
    blk = block_size(v)
    if log_probs.device.type == "cpu" and blk is not None and k * (v // blk) > 4 * m:
        return blocked_top_continuations(scores, log_probs, m, blk)
    cand, idx = (scores[:, :, None] + log_probs.view(n, k, v)).view(n, k * v).topk(m, dim=1)
    return cand, idx % v, idx // v


@torch.inference_mode()
def beam_search(
    model: Decodable,
    src: Tensor,
    src_pad_mask: Tensor,
    max_len: Tensor,
    settings: SearchSettings,
    record: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search batched over sentences x beams, until `max_len` (B,) tokens. A sentence leaves
    the batch once it has `beam` finished hypotheses (fairseq's rule, and CTranslate2's), or with
    `early_exit` once the best continuation of a step over all its beams ends the sentence and it
    has `nbest` finished (OpenNMT-py's rule: on trained models fewer steps, less search). Returns
    the `nbest` best per sentence by length-normalised score. `record`: hypotheses carry their
    attention."""
    dev, n, k = src.device, src.size(0), settings.beam
    # beams (rows) per live sentence: the k beams would start identical, so the first step decodes
    # one row
    width = 1
    state = model.start(src, src_pad_mask, record)
    normalised = model.returns_log_probs
    src_len = (~src_pad_mask).sum(1).tolist()
    sent = torch.arange(n, device=dev)  # original sentence of each live sentence
    max_len = max_len.to(dev)
    scores = torch.zeros((n, width), device=dev)
    count = torch.zeros(n, dtype=torch.long, device=dev)  # finished hypotheses of each
    prefix = torch.empty((n, 0), dtype=torch.long, device=dev)
    prev = torch.full((n,), BOS, dtype=torch.long, device=dev)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    workspace = Workspace()
    for t in range(int(max_len.max())):
        logits, state = model.step(prev, state)
        force = max_len[sent] <= t + 1  # last allowed position: must be EOS
        lp = next_log_probs(
            logits, force.repeat_interleave(width), prefix, settings.no_repeat_ngram,
            normalised, workspace,
        )  # fmt: skip
        # at most k of them end in EOS: k continue
        cand, tok, parent = top_continuations(scores, lp, 2 * k)
        is_eos = tok == EOS
        # finished: EOS among the top k candidates (beyond rank k they would not have been kept)
        ended = is_eos[:, :k] & (cand[:, :k] > -float("inf"))
        fin = ended.nonzero().tolist()
        if fin:
            cand_c, parent_c = cand.tolist(), parent.tolist()
            for i, r in fin:
                row = i * width + parent_c[i][r]
                hyp = prefix[row].tolist()
                score = cand_c[i][r] / length_penalty(len(hyp) + 1, settings.alpha)
                rec = state.recording
                attn = rec.of_row(row, src_len[int(sent[i])], width) if rec is not None else None
                finished[int(sent[i])].append(Hypothesis(hyp, score, cand_c[i][r], attn))
        # the k best non-EOS candidates continue (at most k EOS among 2k, so k remain)
        new_scores, pos = cand.masked_fill(is_eos, -float("inf")).topk(k, dim=1)
        new_tok, new_parent = tok.gather(1, pos), parent.gather(1, pos)
        count += ended.sum(1)
        early = is_eos[:, 0] & (count >= settings.nbest)
        done = (early if settings.early_exit else count >= k) | force
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        # parent row of each kept beam
        src_rows = (keep[:, None] * width + new_parent[keep]).view(-1)
        state = state.reorder(src_rows, keep if len(keep) < len(sent) else None)
        width = k
        prefix = torch.cat([prefix[src_rows], new_tok[keep].view(-1, 1)], dim=1)
        prev = new_tok[keep].view(-1)
        scores, sent, count = new_scores[keep], sent[keep], count[keep]
    return [sorted(f, key=lambda h: -h.score)[: settings.nbest] for f in finished]


def decode_corpus(
    model: Decodable,
    src_ids: list[list[int]],
    settings: SearchSettings,
    device: torch.device,
    record: bool = False,
    workers: int = 1,
    first_line: int = 1,
) -> list[list[Hypothesis]]:
    """Translate id sequences in length-sorted batches of about `settings.max_tokens` source tokens
    (x beam); return the `nbest` hypotheses of each, in input order. Empty inputs get an empty
    output. Greedy search is beam search with one beam; the separate greedy loop is the faster path
    for it. `workers` > 1: that many threads decode batches side by side (see in_threads).
    `first_line`, the input line number of src_ids[0], seeds each line's draws when sampling."""
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in src_ids]
    todo = np.array([i for i, s in enumerate(src_ids) if s], dtype=np.int64)
    if len(todo) == 0:
        return results
    lens = np.array([len(src_ids[i]) for i in todo])
    s = settings

    def decode(batch_pos: np.ndarray) -> None:
        index = todo[batch_pos]
        batch = make_batch([np.asarray(src_ids[i]) for i in index], None, index).to(device)
        max_len = max_lengths(batch.src_pad_mask, s.max_len_a, s.max_len_b, s.max_len)
        if s.greedy:
            sample = (
                None if s.sampling is None else Sampler(s.sampling, (index + first_line).tolist())
            )
            found = greedy_search(
                model, batch.src, batch.src_pad_mask, max_len, record, sample, s.scores
            )
            hyps = [[h] for h in found]
        else:
            hyps = beam_search(model, batch.src, batch.src_pad_mask, max_len, s, record)
        for i, h in zip(index.tolist(), hyps):
            results[i] = h

    batches = bucket_batches(lens, None, max(s.max_tokens // s.beam, 8))
    if workers > 1 and len(batches) > 1:
        # longest first: short ones fill the end
        in_threads(decode, sorted(batches, key=lambda b: -int(lens[b].max())), workers)
    else:
        for batch_pos in batches:
            decode(batch_pos)
    return results
