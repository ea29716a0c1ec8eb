"""Encoded splits, the Batch (the one place that builds
tgt_in / tgt_out and masks), token-budget buckets.

Conventions: the source gets EOS appended; `tgt_in` = BOS + target, `tgt_out` = target + EOS;
`*_pad_mask` is True at padding. Batches of one epoch are a pure function of (seed, epoch), so a
position in the data is just (epoch, batch index) and resuming replays nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nmt.config import Config
from nmt.errors import NmtError
from nmt.tokenizer import BOS, EOS, PAD

PREPARED_FORMAT = "nmt-prepared"
PREPARED_VERSION = 1


class Split:
    """One encoded split: token ids of each sentence as slices of a flat array."""

    def __init__(self, src: np.ndarray, src_off: np.ndarray, tgt: np.ndarray, tgt_off: np.ndarray):
        self._src, self._src_off, self._tgt, self._tgt_off = src, src_off, tgt, tgt_off
        self.src_lens = np.diff(src_off)
        self.tgt_lens = np.diff(tgt_off)

    def __len__(self) -> int:
        return len(self.src_lens)

    def src(self, i: int) -> np.ndarray:
        return self._src[self._src_off[i] : self._src_off[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self._tgt[self._tgt_off[i] : self._tgt_off[i + 1]]

    @classmethod
    def from_lists(cls, src: list[list[int]], tgt: list[list[int]]) -> Split:
        def flat(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
            off = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
            return np.array([t for s in seqs for t in s], dtype=np.int32), off

        return cls(*flat(src), *flat(tgt))


def cut_to(split: Split, src_max: int, tgt_max: int) -> tuple[Split, int]:
    """`split` with every source cut to `src_max` ids and every target to `tgt_max`, and how many
    pairs were cut (the split itself when none is longer)."""
    long = (split.src_lens > src_max) | (split.tgt_lens > tgt_max)
    if not long.any():
        return split, 0
    src = [split.src(i)[:src_max].tolist() for i in range(len(split))]
    tgt = [split.tgt(i)[:tgt_max].tolist() for i in range(len(split))]
    return Split.from_lists(src, tgt), int(long.sum())


def load_split(prepared_dir: Path, role: str) -> Split:
    """The encoded split, memory-mapped read-only: a run reads the pages it uses, the ranks of a
    torchrun job share them, and opening costs the same for any corpus size."""
    arrays = []
    for name in ("src", "src.off", "tgt", "tgt.off"):
        path = prepared_dir / f"{role}.{name}.npy"
        try:
            arrays.append(np.load(path, allow_pickle=False, mmap_mode="r"))
        except (OSError, ValueError) as e:
            raise NmtError(
                f"{path}: cannot read encoded split ({e}); run `nmt prepare` again"
            ) from None
    src, src_off, tgt, tgt_off = arrays
    for ids, off, side in ((src, src_off, "src"), (tgt, tgt_off, "tgt")):
        if (
            ids.ndim != 1
            or off.ndim != 1
            or len(off) != len(src_off)
            or not len(off)
            or off[0] != 0
            or off[-1] != len(ids)
            or (np.diff(off) < 0).any()
        ):
            raise NmtError(
                f"{prepared_dir / f'{role}.{side}.off.npy'}: offsets do not fit the encoded split; "
                "run `nmt prepare` again"
            )
    return Split(*arrays)


@dataclass
class TextFile:
    """One side of one split, read and cleaned."""

    path: str
    sha256: str
    lines: list[str]
    crlf: int = 0
    bom: int = 0


def clean_line(raw: bytes, name: str, n: int) -> str:
    """One line's bytes (without its newline) as text: BOM, CR and surrounding whitespace stripped,
    inner whitespace runs made one space; `name`:`n` named on bad UTF-8."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NmtError(f"{name}:{n}: invalid UTF-8 at byte {e.start} of the line") from None
    return " ".join(line.lstrip("\ufeff").split())


def decode_lines(data: bytes, name: str) -> TextFile:
    """Split UTF-8 bytes into lines and clean them (clean_line), counting CRs and BOMs."""
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    out = TextFile(name, hashlib.sha256(data).hexdigest(), [])
    for n, raw in enumerate(raw_lines, 1):
        out.lines.append(clean_line(raw, name, n))
        out.crlf += raw.endswith(b"\r")
        out.bom += raw.startswith(b"\xef\xbb\xbf")
    return out


def read_text(path: Path) -> TextFile:
    """Read and clean a UTF-8 text file, plain or
    gzipped; `sha256` is that of the file as stored."""
    try:
        stored = path.read_bytes()
        data = gzip.decompress(stored) if path.suffix == ".gz" else stored
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib.error: damaged .gz data
        raise NmtError(f"{path}: cannot read: {e}") from None
    text = decode_lines(data, str(path))
    text.sha256 = hashlib.sha256(stored).hexdigest()
    return text


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise NmtError(f"{path}: cannot read: {e}") from None


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) source ids + EOS, padded
    src_pad_mask: torch.Tensor  # (B, S) True at padding
    tgt_in: Optional[torch.Tensor]  # (B, T) BOS + target
    tgt_out: Optional[torch.Tensor]  # (B, T) target + EOS
    index: np.ndarray  # (B,) position of each row in its split
    n_src: int  # real (non-pad) source tokens
    n_tgt: int  # real target tokens, i.e. labels that count in the loss

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        move = lambda t: None if t is None else t.to(device, non_blocking=nb)  # noqa: E731
        return Batch(
            move(self.src),
            move(self.src_pad_mask),
            move(self.tgt_in),
            move(self.tgt_out),
            self.index,
            self.n_src,
            self.n_tgt,
        )


def _pad(seqs: list[np.ndarray], prefix: Optional[int], suffix: Optional[int]) -> torch.Tensor:
    extra = (prefix is not None) + (suffix is not None)
    out = np.full((len(seqs), max(len(s) for s in seqs) + extra), PAD, dtype=np.int64)
    for row, s in enumerate(seqs):
        start = 0
        if prefix is not None:
            out[row, 0] = prefix
            start = 1
        out[row, start : start + len(s)] = s
        if suffix is not None:
            out[row, start + len(s)] = suffix
    return torch.from_numpy(out)


def make_batch(
    src: list[np.ndarray], tgt: Optional[list[np.ndarray]], index: np.ndarray, pin: bool = False
) -> Batch:
    """Pad a list of sentences into a Batch; `tgt=None` for translation input."""
    s = _pad(src, None, EOS)
    tgt_in = tgt_out = None
    n_tgt = 0
    if tgt is not None:
        tgt_in, tgt_out = _pad(tgt, BOS, None), _pad(tgt, None, EOS)
        n_tgt = sum(len(t) + 1 for t in tgt)
    if pin:
        s, tgt_in, tgt_out = (
            t.pin_memory() if t is not None else None for t in (s, tgt_in, tgt_out)
        )
    return Batch(s, s == PAD, tgt_in, tgt_out, index, sum(len(x) + 1 for x in src), n_tgt)


def split_batch(split: Split, index: np.ndarray, pin: bool = False) -> Batch:
    return make_batch([split.src(i) for i in index], [split.tgt(i) for i in index], index, pin)


def pack(width: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Cut a sequence of sentence widths into consecutive batches [a, b), greedily: each batch is as
    long as rows x its widest row stays within `max_tokens` (at least one row). A loop over batches,
    each found with numpy in a window that holds at most max_tokens // width[a] rows: 8M sentences
    take a fraction of a second, where a loop over sentences took seconds."""
    n, start, out = len(width), 0, []
    while start < n:
        window = width[start : start + max(2, max_tokens // int(width[start]) + 1)]
        cost = np.maximum.accumulate(window) * np.arange(1, len(window) + 1)
        over = np.flatnonzero(cost[1:] > max_tokens)
        end = start + 1 + int(over[0]) if len(over) else start + len(window)
        out.append((start, end))
        start = end
    return out


def bucket_batches(
    src_lens: np.ndarray,
    tgt_lens: Optional[np.ndarray],
    max_tokens: int,
    seed: Optional[int] = None,
    epoch: int = 0,
) -> list[np.ndarray]:
    """Group sentence indices into batches of at most `max_tokens` padded tokens each.

    Sorted by length so padding stays small; with a seed, ties are broken at random and the batch
    order is shuffled, both as a pure function of (seed, epoch). Cost of a batch = rows x longest
    side (+1 for BOS/EOS). A sentence longer than the budget gets a batch of its own.
    """
    n = len(src_lens)
    if tgt_lens is None:
        tgt_lens = np.zeros_like(src_lens)
    rng = np.random.default_rng([seed, epoch]) if seed is not None else None
    order = rng.permutation(n) if rng is not None else np.arange(n)
    # by target length, then source length; stable, so ties keep their random order. One key of
    # 16 bits where the lengths allow it, which numpy sorts by radix: 5x faster than np.lexsort
    src_in, tgt_in = src_lens[order], tgt_lens[order]
    key = tgt_in.astype(np.int64) * (int(src_in.max(initial=0)) + 1) + src_in
    if len(key) and key.max() < 2**16:
        key = key.astype(np.uint16)
    order = order[np.argsort(key, kind="stable")]
    width = np.maximum(src_lens, tgt_lens)[order] + 1
    batches = [order[a:b] for a, b in pack(width, max_tokens)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def epoch_sample(
    sizes: list[int], weights: list[float], seed: int, epoch: int
) -> Optional[np.ndarray]:
    """The training pairs of one epoch when the corpora are weighted; None when every weight is 1
    (each pair once). Corpus k is the next sizes[k] pairs of the split and comes weights[k] times:
    int(w) copies of all its pairs, plus frac(w) x its size of them drawn without replacement (the
    count rounded at random, so that it is right on average) as a pure function of (seed, epoch);
    at least one pair in all."""
    if all(w == 1.0 for w in weights):
        return None
    rng = np.random.default_rng(
        [seed, epoch, 1]
    )  # its own stream: bucket_batches uses [seed, epoch]
    parts, start = [], 0
    for n, w in zip(sizes, weights):
        whole, part = int(w), (w - int(w)) * n
        parts += [np.arange(start, start + n)] * whole
        drawn = int(part) + int(rng.random() < part - int(part))
        if drawn:
            parts.append(start + np.sort(rng.choice(n, drawn, replace=False)))
        start += n
    if not parts:  # weights so small that nothing was drawn: one pair, from the largest share
        k = int(np.argmax([w * n for n, w in zip(sizes, weights)]))
        parts.append(np.array([sum(sizes[:k]) + int(rng.integers(sizes[k]))]))
    return np.concatenate(parts)


def epoch_batches(
    split: Split, sizes: list[int], weights: list[float], max_tokens: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """The training batches (positions in `split`) of `epoch`, the corpus weights applied
    (epoch_sample); a pure function of (seed, epoch), so a position is still (epoch, batch)."""
    pairs = epoch_sample(sizes, weights, seed, epoch)
    if pairs is None:
        return bucket_batches(split.src_lens, split.tgt_lens, max_tokens, seed, epoch)
    lens = split.src_lens[pairs], split.tgt_lens[pairs]
    return [pairs[b] for b in bucket_batches(*lens, max_tokens, seed, epoch)]


def corpus_sizes(manifest: dict, cfg: Config) -> list[int]:
    """Kept training pairs of each corpus of data.train, in order (as the split holds them)."""
    corpora = manifest["counts"]["train"].get("corpora")
    if corpora is None:  # prepared before several corpora existed: one
        return [manifest["counts"]["train"]["kept"]]
    if [c["corpus"] for c in corpora] != [c.name for c in cfg.data.corpora]:
        raise NmtError(
            f"{cfg.prepared_dir}: prepared from other corpora than data.train names; run `nmt "
            "prepare` again"
        )
    return [c["kept"] for c in corpora]


# --- the prepared directory's manifest (written by `nmt prepare`, read by every later stage) ---


def data_settings(cfg: Config) -> dict:
    """The data settings that determine a prepared dir's contents (where it came from, how many
    processes made it and the corpus weights excluded)."""
    d = asdict(cfg.data)
    for key in ("source", "prepared_dir", "workers"):
        d.pop(key)
    corpora = cfg.data.corpora
    if len(corpora) > 1 or corpora[0].source:  # the corpora, in order; weights act in training
        d["train"] = [c.name for c in corpora]
    else:
        d["train"] = corpora[0].stem
    return d


def settings_diff(have: dict, wanted: dict, read_pairs: Optional[int] = None) -> list[str]:
    """The data settings that differ. A setting added after `have` was recorded counts as its
    default, as the code then behaved. data.spm_sample counts only where it changes the sample:
    not when both samples hold all `read_pairs` training pairs (None: never compared)."""
    have = {**data_settings(Config()), **have}
    diff = sorted(k for k in have.keys() | wanted.keys() if have.get(k) != wanted.get(k))
    if "spm_sample" in diff and "joint_vocab" not in diff:
        pairs = min(have["spm_sample"], wanted["spm_sample"]) // (2 if have["joint_vocab"] else 1)
        if read_pairs is None or read_pairs <= pairs:
            diff.remove("spm_sample")
    return diff


def read_manifest(prepared_dir: Path, cfg: Optional[Config] = None) -> dict:
    """Read and check a prepared dir's manifest (format
    version; settings match `cfg` when given)."""
    path = prepared_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NmtError(f"{path}: not found; run `nmt prepare --config C` first") from None
    except (OSError, ValueError) as e:
        raise NmtError(f"{path}: unreadable manifest: {e}") from None
    if manifest.get("format") != PREPARED_FORMAT or manifest.get("version") != PREPARED_VERSION:
        raise NmtError(
            f"{path}: prepared-data format {manifest.get('format')} v{manifest.get('version')} "
            f"is not {PREPARED_FORMAT} v{PREPARED_VERSION}; run `nmt prepare` again"
        )
    for name, entry in manifest.get("files", {}).items():  # folders prepared before: no entries
        file = prepared_dir / name
        size = file.stat().st_size if file.is_file() else None
        if size != entry["bytes"]:
            found = "missing" if size is None else f"{size} bytes, not the {entry['bytes']} written"
            raise NmtError(
                f"{file}: {found}; the prepared folder changed after `nmt prepare`: run it again"
            )
    wanted = data_settings(cfg) if cfg is not None else manifest["data"]
    diff = settings_diff(manifest["data"], wanted, manifest["counts"]["train"]["read"])
    if diff:
        raise NmtError(
            f"{prepared_dir}: prepared with different data settings "
            f"({', '.join('data.' + k for k in diff)}); run `nmt prepare` again"
        )
    return manifest
