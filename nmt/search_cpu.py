"""What makes search fast on a CPU, each beside its plain version in search.py, which the tests
check it against: top-k and argmax by blocks (plain: torch.topk or torch.argmax over every beam's
whole row), a log-probability buffer reused from step to step (plain: a new tensor each step), and
batches decoded side by side in threads (plain: one after the other)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Optional

import torch
from torch import Tensor


def block_size(v: int) -> Optional[int]:
    """Columns per block for `top_continuations` over rows of `v`: the largest divisor of v from 64
    down to 16, or None."""
    return next((b for b in range(64, 15, -1) if v % b == 0), None)


def blocked_top_continuations(
    scores: Tensor, log_probs: Tensor, m: int, blk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """search.top_continuations by blocks of `blk` columns: topk over K * V columns is slow on a CPU
    (reductions that return positions run many times slower than amax there), so each row is cut
    into blocks: the m blocks with the largest maxima plus their beam's score hold the m best
    continuations (a value outside them is beaten by the maxima of m other blocks), and topk runs on
    their m * blk columns. Ties may come back in another order than torch.topk's."""
    n, k = scores.shape
    v = log_probs.size(1)
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


def blocked_argmax(x: Tensor, blk: int) -> Tensor:
    """x.argmax(dim=1) of x (R, V) by blocks of `blk` columns (argmax over 8,000 columns takes
    about 17x amax's time on a CPU): the first block holding a row's maximum, then the first
    maximum within it, so ties resolve to the first column, as torch.argmax does."""
    r, v = x.shape
    block = x.view(r, v // blk, blk).amax(dim=2).argmax(dim=1)  # (R,) over V / blk columns
    cols = block[:, None] * blk + torch.arange(blk, device=x.device)
    return block * blk + x.gather(1, cols).argmax(dim=1)


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
