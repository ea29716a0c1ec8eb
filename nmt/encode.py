"""The training split of `nmt prepare`, streamed, so that memory does not grow with the corpus.

A first pass reads both files in step: it checks that they are aligned and valid UTF-8, counts CRs
and byte-order marks, and keeps a seeded sample of the pairs for SentencePiece (reservoir sampling:
a pure function of the seed and the files). A second pass sends chunks of raw lines to worker
processes, which clean, encode and filter them and hash the kept pairs (duplicates are counted from
the hashes, never from the text); the ids are appended to the output as the chunks come back, in
input order, so the result is the same bytes for any number of workers.
"""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import os
import random
import shutil
import sys
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice, zip_longest
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from nmt.data import clean_line
from nmt.errors import NmtError
from nmt.files import atomic_writer
from nmt.tokenizer import Tokenizer

CHUNK = 10_000  # pairs a worker encodes at a time


@dataclass
class TrainFilter:
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"empty": 0, "too_long": 0, "ratio": 0})
    duplicates: int = 0

    def add(self, other: TrainFilter) -> None:
        self.read, self.kept = self.read + other.read, self.kept + other.kept
        for reason, n in other.dropped.items():
            self.dropped[reason] += n


def filter_train(
    src_ids: list[list[int]], tgt_ids: list[list[int]], max_len: int, max_ratio: float
) -> tuple[list[int], TrainFilter]:
    """Indices of training pairs to keep, and how many were dropped for each reason."""
    stats = TrainFilter(read=len(src_ids))
    keep = []
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not s or not t:
            stats.dropped["empty"] += 1
        elif len(s) > max_len or len(t) > max_len:
            stats.dropped["too_long"] += 1
        elif max(len(s), len(t)) / min(len(s), len(t)) > max_ratio:
            stats.dropped["ratio"] += 1
        else:
            keep.append(i)
    stats.kept = len(keep)
    return keep, stats


def raw_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file, plain or gzipped, as bytes without their newline."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            for line in f:
                yield line[:-1] if line.endswith(b"\n") else line
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise NmtError(f"{path}: cannot read: {e}") from None


def sha256_file(path: Path) -> str:
    """The sha256 of a file as stored, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class Scan:
    """What the first pass over one corpus's training files found."""

    lines: tuple[int, int]  # lines in the source and the target file
    crlf: tuple[int, int]
    bom: tuple[int, int]


class Reservoir:
    """A seeded uniform sample of at most `size` pairs from all the pairs offered to it (reservoir
    sampling): a pure function of the seed and the pairs, in file order while they all fit."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen, self.rng = size, 0, random.Random(seed)
        self.sample: list[tuple[str, str]] = []

    def offer(self, pair: tuple[str, str]) -> None:
        if self.seen < self.size:
            self.sample.append(pair)
        elif (j := self.rng.randrange(self.seen + 1)) < self.size:
            self.sample[j] = pair
        self.seen += 1


def scan(src_path: Path, tgt_path: Path, limit: int, reservoir: Reservoir) -> Scan:
    """Read both files once: alignment, UTF-8 (name:line), CR/BOM counts; the non-empty pairs
    among the first `limit` (0: all) are offered to the SentencePiece sample."""
    n_src = n_tgt = 0
    crlf, bom = [0, 0], [0, 0]
    for raw_s, raw_t in zip_longest(raw_lines(src_path), raw_lines(tgt_path)):
        texts = []
        for side, (raw, path) in enumerate(((raw_s, src_path), (raw_t, tgt_path))):
            if raw is None:
                continue
            n = (n_src, n_tgt)[side] + 1
            texts.append(clean_line(raw, str(path), n))
            crlf[side] += raw.endswith(b"\r")
            bom[side] += raw.startswith(b"\xef\xbb\xbf")
        n_src, n_tgt = n_src + (raw_s is not None), n_tgt + (raw_t is not None)
        if len(texts) < 2 or (limit and n_src > limit) or not (texts[0] and texts[1]):
            continue
        reservoir.offer((texts[0], texts[1]))
    if n_src != n_tgt:
        raise NmtError(
            f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}: parallel files must be "
            "aligned line by line"
        )
    return Scan((n_src, n_tgt), (crlf[0], crlf[1]), (bom[0], bom[1]))


# --- the second pass: encoding in worker processes ---

_TOKENIZER: Optional[Tokenizer] = None


def _init_worker(src_proto: bytes, tgt_proto: Optional[bytes]) -> None:
    global _TOKENIZER
    _TOKENIZER = Tokenizer(src_proto, tgt_proto)


def _pair_hash(src: str, tgt: str) -> int:
    digest = hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _encode_chunk(job: tuple[int, list[bytes], list[bytes], int, float]) -> tuple:
    """Raw line pairs of corpus k -> k, kept ids (flat int32 and lengths, per side), filter counts,
    pair hashes."""
    k, raw_src, raw_tgt, max_len, max_ratio = job
    src = [clean_line(r, "", 0) for r in raw_src]  # valid UTF-8: the scan checked every line
    tgt = [clean_line(r, "", 0) for r in raw_tgt]
    tok = _TOKENIZER
    # one thread: the worker processes are the parallelism
    src_ids, tgt_ids = tok.encode_src(src, threads=1), tok.encode_tgt(tgt, threads=1)
    keep, stats = filter_train(src_ids, tgt_ids, max_len, max_ratio)
    hashes = np.array([_pair_hash(src[i], tgt[i]) for i in keep], dtype=np.uint64)
    out = []
    for ids in (src_ids, tgt_ids):
        lens = np.array([len(ids[i]) for i in keep], dtype=np.int64)
        tokens = chain.from_iterable(ids[i] for i in keep)
        flat = np.fromiter(tokens, dtype=np.int32, count=int(lens.sum()))
        out += [flat, lens]
    return (k, *out, stats, hashes)


def _jobs(corpora: list[tuple[Path, Path]], limit: int, max_len: int, max_ratio: float) -> Iterator:
    for k, (src_path, tgt_path) in enumerate(corpora):
        pairs = zip(raw_lines(src_path), raw_lines(tgt_path))
        if limit:
            pairs = islice(pairs, limit)
        while chunk := list(islice(pairs, CHUNK)):
            yield k, [s for s, _ in chunk], [t for _, t in chunk], max_len, max_ratio


def _results(jobs: Iterator, tok: Tokenizer, workers: int) -> Iterator[tuple]:
    """_encode_chunk of every job, in order; with workers > 1 in that many processes, at most two
    chunks each in flight (so reading never runs ahead of encoding)."""
    if workers <= 1:
        _init_worker(tok.src_proto, tok.tgt_proto)
        yield from map(_encode_chunk, jobs)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers, _init_worker, (tok.src_proto, tok.tgt_proto)) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_encode_chunk, (job,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def encode_train(
    corpora: list[tuple[Path, Path]],
    limit: int,
    tok: Tokenizer,
    max_len: int,
    max_ratio: float,
    workers: int,
    out: Path,
) -> tuple[list[TrainFilter], int]:
    """Encode and filter the first `limit` (0: all) pairs of each corpus, one after the other,
    into out/train.{src,tgt}.npy and .off.npy, streamed, with a progress bar on a terminal. Returns
    each corpus's counts (duplicates within it included) and the number of kept pairs that repeat
    an earlier one of any corpus."""
    stats = [TrainFilter() for _ in corpora]
    hashes: list[list[np.ndarray]] = [[] for _ in corpora]
    lens: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    raw = {side: out / f".train.{side}.ids.tmp" for side in ("src", "tgt")}
    bar = tqdm(unit=" pairs", disable=not sys.stderr.isatty(), desc="encoding")
    try:
        with open(raw["src"], "wb") as fs, open(raw["tgt"], "wb") as ft, bar:
            jobs = _jobs(corpora, limit, max_len, max_ratio)
            for k, s_flat, s_lens, t_flat, t_lens, part, part_hashes in _results(
                jobs, tok, workers
            ):
                fs.write(s_flat.tobytes())
                ft.write(t_flat.tobytes())
                lens["src"].append(s_lens)
                lens["tgt"].append(t_lens)
                stats[k].add(part)
                hashes[k].append(part_hashes)
                bar.update(part.read)
        each = [np.concatenate(h) if h else np.zeros(0, np.uint64) for h in hashes]
        for corpus_stats, h in zip(stats, each):
            corpus_stats.duplicates = int(len(h) - len(np.unique(h)))
        every = np.concatenate(each)
        duplicates = int(len(every) - len(np.unique(every)))
        for side in ("src", "tgt"):
            side_lens = np.concatenate(lens[side]) if lens[side] else np.zeros(0, np.int64)
            offsets = np.concatenate([[0], np.cumsum(side_lens)]).astype(np.int64)
            _npy_from_raw(out / f"train.{side}.npy", raw[side], np.int32, int(offsets[-1]))
            with atomic_writer(out / f"train.{side}.off.npy") as f:
                np.save(f, offsets, allow_pickle=False)
    finally:
        for path in raw.values():
            path.unlink(missing_ok=True)
    return stats, duplicates


def _npy_from_raw(path: Path, raw: Path, dtype: type, count: int) -> None:
    """An .npy file of `count` values of `dtype` whose bytes are in `raw`: what np.save would
    write, without loading them."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    with atomic_writer(path) as f, open(raw, "rb") as r:
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (count,)})
        shutil.copyfileobj(r, f, 1 << 20)
