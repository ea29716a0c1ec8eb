"""Shared fixtures: the repository, the toy corpus every end-to-end test trains on, tiny aligned
corpora for the data checks, real Multi30k for the few tests that need real language, and the
smoke run (`nmt prepare` and `nmt train` on configs/smoke.yaml) with the in-process entry point
that the tests of each command share (their helpers: tests/cli_helpers.py)."""

from __future__ import annotations

import gzip
import io
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from toy_language import TOY_SIZES, toy_sentences

# the asserts of the command-line helpers (ok, assert_one_error_line) report as a test's own do
pytest.register_assert_rewrite("cli_helpers")
from cli_helpers import SMOKE, nmt, ok  # noqa: E402

# Test models are tiny: threads only add overhead, and on a 2-core machine shared with other work,
# oversubscription made one test 10x slower. Subprocesses (CLI tests) set their own threads.
torch.set_num_threads(1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one worker per core this process may use, at most 4. Every
    worker imports torch (about 0.3 GB), and most of the suite's time is a few long tests (training
    runs, subprocesses), which more workers would not shorten."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


REPO_ROOT = Path(__file__).resolve().parents[1]
# where the few tests that need real language look for Multi30k, in this order
MULTI30K_ENV = "NMT_MULTI30K"
MULTI30K_PLACES = (
    REPO_ROOT / "data" / "multi30k",
    REPO_ROOT.parent / "shared" / "data" / "multi30k",
)
MULTI30K_FILES = [
    f"{s}.{lang}.gz" for s in ("train", "val", "test_2016_flickr") for lang in ("en", "de")
]

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
    """Real Multi30k (en, de), for the few tests that need real language: $NMT_MULTI30K, else
    data/multi30k (where `nmt prepare` downloads it), else ../shared/data/multi30k; skip, saying
    where it looked, when none holds the files."""
    env = os.environ.get(MULTI30K_ENV)
    places = [Path(env)] if env else list(MULTI30K_PLACES)
    for place in places:
        if all((place / name).is_file() for name in MULTI30K_FILES):
            return place
    looked = ", ".join(str(p) for p in places)
    pytest.skip(
        f"needs the real Multi30k files ({', '.join(MULTI30K_FILES)}); not found in {looked}: "
        f"set {MULTI30K_ENV}=DIR or run `nmt prepare --config configs/smoke.yaml` once to download"
    )


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """A toy en->de corpus in Multi30k's layout (train/val/test_2016_flickr .en.gz/.de.gz), made
    once per test process: the data of every end-to-end test (tests/toy_language.py)."""
    folder = tmp_path_factory.mktemp("toy_corpus")
    for seed, (stem, n) in enumerate(TOY_SIZES.items(), start=1):
        src, tgt = toy_sentences(n, seed)
        write_lines(folder / f"{stem}.en.gz", src, gz=True)
        write_lines(folder / f"{stem}.de.gz", tgt, gz=True)
    return folder


@pytest.fixture(scope="session")
def toy_data(toy_corpus: Path) -> list[str]:
    """The config overrides that point configs/smoke.yaml (or any recipe) at the toy corpus."""
    return ["data.corpus=files", f"data.source={toy_corpus}"]


CorpusFactory = Callable[..., Path]


@pytest.fixture
def make_corpus(tmp_path: Path) -> CorpusFactory:
    """Factory writing an aligned corpus folder
    `{stem}.{lang}[.gz]` under tmp_path; returns the folder.

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


@pytest.fixture
def fail_fsync(monkeypatch) -> Callable[..., None]:
    """install(name="", nth=1, code=ENOSPC): the nth fsync of a temporary file nmt writes (whose
    name starts with `.{name}`) raises OSError(code), as a full disk or a folder turned read-only
    would; every other fsync runs. monkeypatch.undo() puts fsync back."""
    import errno

    real = os.fsync

    def install(name: str = "", nth: int = 1, code: int = errno.ENOSPC) -> None:
        calls = [0]

        def fsync(fd: int) -> None:
            base = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if base.startswith(f".{name}") and base.endswith(".tmp"):
                calls[0] += 1
                if calls[0] == nth:
                    raise OSError(code, os.strerror(code))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    return install


# --- the command line: the smoke run and the in-process entry point ---


@dataclass
class SmokeRun:
    cwd: Path  # an empty directory every command runs in: nothing may appear there
    prepared: Path
    run: Path
    sets: list[str]  # the --set flags that go with every config-taking command
    prepare: subprocess.CompletedProcess
    train: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, toy_corpus: Path) -> SmokeRun:
    """`nmt prepare` then `nmt train` on configs/smoke.yaml
    and the toy corpus, everything under a tmp dir: once per test process (pytest-xdist worker),
    for the tests of every command."""
    work = tmp_path_factory.mktemp("cli")
    cwd, prepared, run = work / "cwd", work / "prepared", work / "run"
    cwd.mkdir()
    sets = ["--set", f"data.prepared_dir={prepared}", "--set", "data.corpus=files"]
    sets += ["--set", f"data.source={toy_corpus}"]
    prep = nmt("prepare", "--config", SMOKE, *sets, cwd=cwd)
    train = nmt(
        "train", "--config", SMOKE, "--run-dir", run, *sets, "--set", "train.threads=1", cwd=cwd
    )
    return SmokeRun(cwd, prepared, run, sets, prep, train)


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path: Path):
    """Call `nmt.cli.main` with argv (and stdin bytes); returns (exit code, stdout, stderr)."""
    from nmt.cli import main  # here, not at the top: only the tests that use it import the CLI

    monkeypatch.chdir(tmp_path)

    def call(*args: object, stdin: bytes = b"") -> tuple[object, str, str]:
        monkeypatch.setattr(sys, "argv", ["nmt", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        threads = torch.get_num_threads()  # `nmt train` sets it from the config: put it back
        torch.set_num_threads(1)  # see nmt(): one thread is the fast choice here
        try:
            with pytest.raises(SystemExit) as info:
                main()
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return info.value.code, out, err

    return call


@pytest.fixture
def run_copy(smoke: SmokeRun, tmp_path: Path) -> Path:
    """A copy of the smoke run, free to be resumed or damaged."""
    import shutil

    return Path(shutil.copytree(smoke.run, tmp_path / "run_copy"))


@pytest.fixture(scope="session")
def other_prepared(smoke: SmokeRun, toy_corpus: Path) -> Path:
    """The smoke data prepared with another vocabulary size: another tokenizer."""
    other = smoke.prepared.parent / "prepared_100"
    ok(
        nmt(
            "prepare",
            "--config",
            SMOKE,
            "--source",
            toy_corpus,
            *smoke.sets,
            "--set",
            f"data.prepared_dir={other}",
            "--set",
            "data.vocab_size=100",
            cwd=smoke.cwd,
        )
    )
    return other
