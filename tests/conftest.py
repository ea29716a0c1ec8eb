"""Shared fixtures: where the repository and the local Multi30k copy are, and tiny aligned
corpora."""

from __future__ import annotations

import gzip
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

# Test models are tiny: threads only add overhead, and on a 2-core machine shared with other work,
# oversubscription made one test 10x slower. Subprocesses (CLI tests) set their own threads.
torch.set_num_threads(1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one worker per core this process may use, at most 4. Every
    worker imports torch (about 0.3 GB), and most of the suite's time is a few long tests (training
    runs, subprocesses), which more workers would not shorten."""
    return max(
        1,
        min(
            4,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1,
        ),
    )


REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI30K_DIR = REPO_ROOT.parent / "shared" / "data" / "multi30k"

# A toy English->German dictionary: sentences are word-for-word translations, so every pair has
# the same number of words on both sides (no pair trips the length-ratio filter by accident).
_WORDS = {
    "a": "ein",
    "the": "der",
    "man": "mann",
    "woman": "frau",
    "dog": "hund",
    "cat": "katze",
    "runs": "rennt",
    "sits": "sitzt",
    "sees": "sieht",
    "eats": "isst",
    "red": "rot",
    "small": "klein",
    "big": "gross",
    "house": "haus",
    "ball": "ball",
    "in": "im",
    "on": "auf",
    "park": "park",
    "street": "strasse",
    "and": "und",
}


def toy_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` aligned (English, German) sentences of 3-8 words, a pure function of the seed."""
    rng = random.Random(seed)
    words = sorted(_WORDS)
    src, tgt = [], []
    for _ in range(n):
        sent = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        src.append(" ".join(sent))
        tgt.append(" ".join(_WORDS[w] for w in sent))
    return src, tgt


def write_lines(path: Path, lines: Sequence[str], gz: bool = False) -> Path:
    """Write `lines` as UTF-8, one per line ('\\n' after each), gzipped when `gz`."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The local Multi30k copy (../shared/data/multi30k from the repo root); skip when absent."""
    needed = [
        f"{s}.{lang}.gz" for s in ("train", "val", "test_2016_flickr") for lang in ("en", "de")
    ]
    missing = [n for n in needed if not (MULTI30K_DIR / n).is_file()]
    if missing:
        pytest.skip(f"local Multi30k copy not found: {MULTI30K_DIR / missing[0]} is missing")
    return MULTI30K_DIR


CorpusFactory = Callable[..., Path]


@pytest.fixture
def make_corpus(tmp_path: Path) -> CorpusFactory:
    """Factory writing an aligned corpus folder `{stem}.{lang}[.gz]` under tmp_path; returns the
    folder.

    splits maps a file stem to (src_lines, tgt_lines); by default train/val/test_2016_flickr
    (the config's default stems) hold 120/12/12 toy pairs.
    """

    def make(
        name: str = "corpus",
        splits: Optional[dict[str, tuple[Sequence[str], Sequence[str]]]] = None,
        langs: tuple[str, str] = ("en", "de"),
        gz: bool = False,
    ) -> Path:
        if splits is None:
            splits = {
                "train": toy_pairs(120, seed=1),
                "val": toy_pairs(12, seed=2),
                "test_2016_flickr": toy_pairs(12, seed=3),
            }
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".gz" if gz else ""
        for stem, (src, tgt) in splits.items():
            write_lines(folder / f"{stem}.{langs[0]}{suffix}", src, gz)
            write_lines(folder / f"{stem}.{langs[1]}{suffix}", tgt, gz)
        return folder

    return make


@pytest.fixture
def tiny_corpus(make_corpus: CorpusFactory) -> Path:
    """A folder with the default toy corpus (plain text, en/de)."""
    return make_corpus()
