"""Greedy and beam search over a small model interface, shared by every architecture.

A model offers `start(src, src_pad_mask) -> state` and `step(prev (B,), state) -> (logits (B, V),
state)`, and says whether those are log-probabilities already (`Decodable`). The state is a dict of
nests of dicts/lists/tuples whose tensors are batch-first;
`select_state` reorders it (beam parents) and shrinks it (finished sentences leave the batch) with
one `index_select` (entries named in `state["deferred"]` are left to the model, see select_beams).
Entries named in `state["static"]` (the encoder's outputs) keep one row per sentence, shared by its
beams: the rows of `prev` are sentence-major (beam j of sentence i is row i * beam + j), so a model
reads the static row of row r at r // beam, beam = rows of prev / rows of the static entries (1 at
beam search's first step, which decodes one row per sentence: its beams would all be the same). They
move only when the batch shrinks. Not copying them per beam saves the copies and their memory
traffic in cross-attention.

With `start(..., record=True)` a model also keeps the attention weights in its
state, so they follow each hypothesis through beam reordering: `attn_static`
{"encoder": (B, layers, heads, S, S)} and `attn_steps` {"cross": [(B, layers, heads,
S) per step], "self": [(B, layers, heads, t + 1) per step]}. A finished hypothesis
then carries the weights its own tokens were produced with (`attention_of`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.data import bucket_batches, make_batch
from nmt.sampling import Sampler, Sampling
from nmt.tokenizer import PAD


class Decodable(Protocol):
    """What search needs from a model (the Transformer, the RNN and the Ensemble offer it)."""

    # step() returns log-probabilities already (an ensemble's mean), not logits to normalise
    returns_log_probs: bool

    def start(self, src: Tensor, src_pad_mask: Tensor, record: bool = False) -> dict:
        """The decoder state after encoding src (B, S); see the module docstring."""
        ...

    def step(self, prev: Tensor, state: dict) -> tuple[Tensor, dict]:
        """Scores (rows, V) of the next token after `prev` (rows,), and the new state."""
        ...


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS, without EOS
    score: float  # length-normalised log-probability (beam) or plain sum (greedy)
    log_prob: float  # sum of token log-probabilities, EOS included
    attention: Optional[dict[str, np.ndarray]] = None  # with record=True: see attention_of


def attention_of(state: dict, row: int, src_len: int, beam: int = 1) -> dict[str, np.ndarray]:
    """The attention weights row `row` of a recording state was decoded with, float32, source axes
    cut to the sentence's `src_len` real positions: "encoder" (layers, heads, S, S), "cross"
    (layers, heads, T, S) and "self" (layers, heads, T, T), zero above the diagonal; T = steps so
    far (one per output token and EOS)."""
    out = {
        name: w[row // beam, ..., :src_len, :src_len].float().cpu().numpy()
        for name, w in state.get("attn_static", {}).items()
    }
    for name, steps in state.get("attn_steps", {}).items():
        rows = [w[row].float() for w in steps]  # (layers, heads, keys at that step)
        width = src_len if name == "cross" else max(r.size(-1) for r in rows)
        mat = rows[0].new_zeros(*rows[0].shape[:2], len(rows), width)
        for t, r in enumerate(rows):
            mat[:, :, t, : min(r.size(-1), width)] = r[..., :width]
        out[name] = mat.cpu().numpy()
    return out


def select_state(state: Any, index: Tensor) -> Any:
    """Pick rows `index` (dim 0) of every tensor in a nested decoder state."""
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {k: select_state(v, index) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(select_state(v, index) for v in state)
    return state


def select_beams(state: dict, rows: Tensor, sentences: Tensor, shrinking: bool) -> dict:
    """Reorder a beam-search state: `rows` are the parent rows of the new beams. Entries the state
    names in `static` (one row per sentence) move only when sentences leave the batch (`sentences`:
    the kept ones). Entries it names in `deferred` are not moved: `state["parents"]` records the
    rows they are to be read from, and the model's next step gathers them there (for a growing
    cache, in the copy that extends it). An ensemble's state {"members": [...]} is reordered member
    by member, each by its own rules."""
    if "members" in state:
        return {
            **state,
            "members": [select_beams(s, rows, sentences, shrinking) for s in state["members"]],
        }
    static, deferred = state.get("static", ()), state.get("deferred", ())
    out = {
        key: (select_state(value, sentences) if shrinking else value)
        if key in static
        else value
        if key in deferred
        else select_state(value, rows)
        for key, value in state.items()
        if key != "parents"
    }
    if deferred:
        pending = state.get("parents")
        out["parents"] = rows if pending is None else pending[rows]
    return out


def restrict(lp: Tensor, bos: int, eos: int, force_eos: Tensor) -> Tensor:
    """Never emit PAD or BOS; rows where `force_eos` (...,)
    is True may only emit EOS. lp (..., V), in place."""
    lp[..., PAD] = -float("inf")
    lp[..., bos] = -float("inf")
    # only at the length limit; masked writes cost even when they write nothing
    if bool(force_eos.any()):
        lp[force_eos, ..., :eos] = -float("inf")
        lp[force_eos, ..., eos + 1 :] = -float("inf")
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


def block_size(v: int) -> Optional[int]:
    """Columns per block for `top_continuations` over rows of `v`: the largest divisor of v from 64
    down to 16, or None."""
    return next((b for b in range(64, 15, -1) if v % b == 0), None)


class Workspace:
    """An fp32 buffer a search reuses from step to step for the (rows x vocabulary) next-token
    log-probabilities of bf16 logits on a CPU (next_log_probs), instead of a new tensor each step. A
    new one of several MB comes from the C allocator as fresh pages, which the kernel faults in and
    zeroes at first touch (glibc maps blocks that large afresh; decoding test_2016_flickr at beam 5
    faulted in about 4,800 pages a step at 615 rows). It grows to the largest row count asked for
    and is never shrunk; one per search call, so threads do not share it."""

    def __init__(self) -> None:
        self.buffer: Optional[Tensor] = None

    def take(self, rows: int, cols: int) -> Tensor:
        if self.buffer is None or self.buffer.size(0) < rows or self.buffer.size(1) != cols:
            self.buffer = torch.empty(rows, cols)
        return self.buffer[:rows]


def next_log_probs(
    logits: Tensor,
    bos: int,
    eos: int,
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
    return restrict(lp, bos, eos, force_eos)


@torch.inference_mode()
def greedy_search(
    model: Decodable,
    src: Tensor,
    src_pad_mask: Tensor,
    max_len: Tensor,
    bos: int,
    eos: int,
    record: bool = False,
    sample: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
) -> list[Hypothesis]:
    """Pick the most probable token at each step until EOS or `max_len` (B,) tokens; with `sample`
    (log-probs (R, V) and the rows' places in the batch (R,) -> tokens (R,); see sampling.py),
    draw it instead. A hypothesis's score is the model's log-probability of its tokens."""
    state = (
        model.start(src, src_pad_mask, record=True) if record else model.start(src, src_pad_mask)
    )
    normalised = model.returns_log_probs
    b = src.size(0)
    src_len = (~src_pad_mask).sum(1).tolist()
    attention: list[Optional[dict]] = [None] * b
    alive = torch.arange(b, device=src.device)  # original row of each live row
    prev = torch.full((b,), bos, dtype=torch.long, device=src.device)
    tokens: list[Tensor] = []
    owners: list[Tensor] = []
    log_prob = torch.zeros(b, device=src.device)
    ended = torch.zeros(b, dtype=torch.long, device=src.device)  # output length incl. EOS
    max_len = max_len.to(src.device)
    workspace = Workspace()
    for t in range(int(max_len.max())):
        logits, state = model.step(prev, state)
        lp = next_log_probs(
            logits, bos, eos, max_len[alive] <= t + 1, normalised=normalised, workspace=workspace
        )
        if sample is None:  # one beam per sentence
            best, prev, _ = top_continuations(lp.new_zeros(len(alive), 1), lp, 1)
            best, prev = best[:, 0], prev[:, 0]
        else:
            prev = sample(lp, alive)
            best = lp.gather(1, prev[:, None]).squeeze(1)
        log_prob.index_add_(0, alive, best)
        tokens.append(prev)
        owners.append(alive)
        done = prev == eos
        if bool(done.any()):
            ended[alive[done]] = t + 1
            if record:
                for j in done.nonzero().flatten().tolist():
                    attention[int(alive[j])] = attention_of(state, j, src_len[int(alive[j])])
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, prev, state = alive[keep], prev[keep], select_state(state, keep)
    out: list[list[int]] = [[] for _ in range(b)]
    for tok, own in zip(tokens, owners):
        for row, token in zip(own.tolist(), tok.tolist()):
            if token != eos:
                out[row].append(token)
    scores = log_prob.tolist()
    return [Hypothesis(out[i], scores[i], scores[i], attention[i]) for i in range(b)]


def top_continuations(scores: Tensor, log_probs: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """The m best continuations of each sentence over all its beams: scores (N, K) the beams'
    cumulative log-probs, log_probs (N * K, V) their next-token log-probs (beam j of sentence i is
    row i * K + j). Returns (candidate scores, tokens, parent beams), each (N, m), best first.

    On a CPU, topk over K * V columns is slow (reductions that return positions run many times
    slower than amax there), so each row is cut into blocks: the m blocks with the largest maxima
    plus their beam's score hold the m best continuations (a value outside them is beaten by the
    maxima of m other blocks), and topk runs on their m * block columns. Ties may come back in
    another order than torch.topk's."""
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
    if log_probs.device.type != "cpu" or blk is None or k * (v // blk) <= 4 * m:
        cand, idx = (scores[:, :, None] + log_probs.view(n, k, v)).view(n, k * v).topk(m, dim=1)
        return cand, idx % v, idx // v
    nb = v // blk
    block_best = log_probs.view(n, k, nb, blk).amax(dim=3).add_(scores[:, :, None]).view(n, k * nb)
    top = block_best.topk(m, dim=1).indices  # (N, m): beam * nb + block
    beam = top // nb
    # each block's start in log_probs, flat
    first = (torch.arange(n, device=top.device)[:, None] * (k * nb) + top) * blk
    cols = (first[:, :, None] + torch.arange(blk, device=top.device)).view(n, m * blk)
    values = torch.take(log_probs, cols).view(n, m, blk).add_(scores.gather(1, beam)[:, :, None])
    cand, idx = values.view(n, m * blk).topk(m, dim=1)
    return cand, cols.gather(1, idx) % v, beam.gather(1, idx // blk)


@torch.inference_mode()
def beam_search(
    model: Decodable,
    src: Tensor,
    src_pad_mask: Tensor,
    max_len: Tensor,
    bos: int,
    eos: int,
    beam: int,
    alpha: float,
    nbest: int = 1,
    no_repeat_ngram: int = 0,
    record: bool = False,
    early_exit: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search batched over sentences x beams; a sentence leaves the batch once it has `beam`
    finished hypotheses (fairseq's rule, and CTranslate2's), or with `early_exit` once the best
    continuation of a step over all its beams ends the sentence and it has `nbest` finished
    (OpenNMT-py's rule: on trained models fewer steps, less search). Returns the `nbest` best per
    sentence by length-normalised score. `no_repeat_ngram` n > 0: no hypothesis contains the same
    n-gram twice. `record`: hypotheses carry their attention."""
    dev = src.device
    n = src.size(0)
    k = beam
    # beams (rows) per live sentence: the k beams would
    # start identical, so the first step decodes one row
    width = 1
    state = (
        model.start(src, src_pad_mask, record=True) if record else model.start(src, src_pad_mask)
    )
    normalised = model.returns_log_probs
    src_len = (~src_pad_mask).sum(1).tolist()
    sent = torch.arange(n, device=dev)  # original sentence of each live sentence
    max_len = max_len.to(dev)
    scores = torch.zeros((n, width), device=dev)
    # finished hypotheses of each live sentence
    count = torch.zeros(n, dtype=torch.long, device=dev)
    prefix = torch.empty((n, 0), dtype=torch.long, device=dev)
    prev = torch.full((n,), bos, dtype=torch.long, device=dev)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    workspace = Workspace()
    for t in range(int(max_len.max())):
        logits, state = model.step(prev, state)
        force = max_len[sent] <= t + 1  # last allowed position: must be EOS
        lp = next_log_probs(
            logits,
            bos,
            eos,
            force.repeat_interleave(width),
            prefix,
            no_repeat_ngram,
            normalised,
            workspace,
        )
        # at most k of them end in EOS: k continue
        cand, tok, parent = top_continuations(scores, lp, 2 * k)
        is_eos = tok == eos
        # finished: EOS among the top k candidates (beyond rank k they would not have been kept)
        ended = is_eos[:, :k] & (cand[:, :k] > -float("inf"))
        fin = ended.nonzero().tolist()
        if fin:
            cand_c, parent_c = cand.tolist(), parent.tolist()
            for i, r in fin:
                row = i * width + parent_c[i][r]
                hyp = prefix[row].tolist()
                score = cand_c[i][r] / length_penalty(len(hyp) + 1, alpha)
                attn = attention_of(state, row, src_len[int(sent[i])], width) if record else None
                finished[int(sent[i])].append(Hypothesis(hyp, score, cand_c[i][r], attn))
        # the k best non-EOS candidates continue (at most k EOS among 2k, so k remain)
        new_scores, pos = cand.masked_fill(is_eos, -float("inf")).topk(k, dim=1)
        new_tok, new_parent = tok.gather(1, pos), parent.gather(1, pos)
        count += ended.sum(1)
        done = (is_eos[:, 0] & (count >= nbest) if early_exit else count >= k) | force
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        # parent row of each kept beam
        src_rows = (keep[:, None] * width + new_parent[keep]).view(-1)
        state = select_beams(state, src_rows, keep, shrinking=len(keep) < len(sent))
        width = k
        prefix = torch.cat([prefix[src_rows], new_tok[keep].view(-1, 1)], dim=1)
        prev = new_tok[keep].view(-1)
        scores, sent, count = new_scores[keep], sent[keep], count[keep]
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]


def decode_corpus(
    model: Decodable,
    src_ids: list[list[int]],
    device: torch.device,
    max_tokens: int,
    beam: int,
    alpha: float,
    max_len_a: float,
    max_len_b: int,
    max_positions: int,
    bos: int,
    eos: int,
    nbest: int = 1,
    no_repeat_ngram: int = 0,
    record: bool = False,
    workers: int = 1,
    early_exit: bool = False,
    sampling: Optional[Sampling] = None,
    first_line: int = 1,
) -> list[list[Hypothesis]]:
    """Translate id sequences in length-sorted batches of about `max_tokens` source
    tokens (x beam); return the `nbest` hypotheses of each, in input order. Empty
    inputs get an empty output. Greedy search is beam search with one beam; the
    separate greedy loop is the faster path for it. `workers` > 1: that many threads
    decode batches side by side (see in_threads). `early_exit`: see beam_search.
    `sampling`: draw one output per line instead of searching (beam and nbest unused);
    `first_line`, the input line number of src_ids[0], seeds each line's draws."""
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in src_ids]
    todo = np.array([i for i, s in enumerate(src_ids) if s], dtype=np.int64)
    if len(todo) == 0:
        return results
    lens = np.array([len(src_ids[i]) for i in todo])

    def decode(batch_pos: np.ndarray) -> None:
        index = todo[batch_pos]
        batch = make_batch([np.asarray(src_ids[i]) for i in index], None, index).to(device)
        max_len = max_lengths(batch.src_pad_mask, max_len_a, max_len_b, max_positions - 1)
        if sampling is not None or (beam == 1 and nbest == 1 and not no_repeat_ngram):
            sample = None if sampling is None else Sampler(sampling, (index + first_line).tolist())
            found = greedy_search(
                model, batch.src, batch.src_pad_mask, max_len, bos, eos, record, sample
            )
            hyps = [[h] for h in found]
        else:
            hyps = beam_search(
                model,
                batch.src,
                batch.src_pad_mask,
                max_len,
                bos,
                eos,
                beam,
                alpha,
                nbest,
                no_repeat_ngram,
                record,
                early_exit,
            )
        for i, h in zip(index.tolist(), hyps):
            results[i] = h

    batches = bucket_batches(lens, None, max(max_tokens // beam, 8))
    if workers > 1 and len(batches) > 1:
        # longest first: short ones fill the end
        in_threads(decode, sorted(batches, key=lambda b: -int(lens[b].max())), workers)
    else:
        for batch_pos in batches:
            decode(batch_pos)
    return results


def in_threads(fn: Callable[[Any], None], items: list, workers: int) -> None:
    """fn(item) for every item, in `workers` threads that
    share torch's intra-op threads (each gets its share).

    Decoding a batch is a long series of small operations, each too small to keep two cores busy,
    with Python running between them: two batches side by side, one core each, keep both busy (torch
    releases the GIL inside its operations). The results do not depend on which thread decodes a
    batch; each thread uses the same number of intra-op threads. On an error or an interrupt,
    batches not yet started are dropped."""
    total = torch.get_num_threads()
    share = max(total // workers, 1)
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(share,))
    try:
        for future in as_completed([pool.submit(fn, item) for item in items]):
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(total)  # the global count the workers set
