#!/usr/bin/env python3
"""How `nmt` scales with the corpus: synthetic parallel corpora of N pairs, then for each N the
wall time, peak memory and pairs/s of `nmt prepare`, and the peak memory and time to the first
step of `nmt train`; with --translate CKPT, the peak memory and lines/s of `nmt translate` (greedy)
on the first L source lines of the largest corpus, for each L of --lines.

    python scripts/scale.py --pairs 1000000 4000000 8000000 [--workers 1 2] [--json scale.json]
    python scripts/scale.py --pairs 1000000 --no-train --translate runs/smoke/best.pt \
        --lines 10000 200000 1000000

The corpus: sentences of 5 to 40 words drawn from 60,000 made-up words with Zipf frequencies; the
target side maps each word to another made-up word and swaps neighbouring words at random, so that
SentencePiece and the filters see text of a realistic shape. Each corpus is made once in --work and
reused. Peak memory is the largest sum of the proportional set sizes of the command's processes
(its workers included; shared pages counted once), sampled every 0.1 s from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORDS = 60_000


def make_words(rng: np.random.Generator, n: int) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["ei", "au", "sch", "qu"]
    lengths = rng.integers(1, 5, size=n)
    picks = rng.integers(0, len(syllables), size=int(lengths.sum()))
    words, at = [], 0
    for n_syl in lengths:
        words.append("".join(syllables[i] for i in picks[at : at + n_syl]))
        at += n_syl
    return words


def make_corpus(folder: Path, pairs: int, seed: int = 1) -> None:
    """train.{en,de} of `pairs` lines and val/test of 1,000 (plain text), unless already there."""
    done = folder / "done"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    src_words, tgt_words = make_words(rng, WORDS), make_words(rng, WORDS)
    zipf = 1.0 / np.arange(1, WORDS + 1)
    zipf /= zipf.sum()
    for stem, n in (("train", pairs), ("val", 1000), ("test", 1000)):
        with open(folder / f"{stem}.en", "w") as fs, open(folder / f"{stem}.de", "w") as ft:
            for start in range(0, n, 100_000):
                m = min(100_000, n - start)
                lens = rng.integers(5, 41, size=m)
                ids = rng.choice(WORDS, size=int(lens.sum()), p=zipf)
                swaps = rng.random(len(ids)) < 0.1
                at = 0
                for length in lens:
                    s = ids[at : at + length]
                    t = s.copy()
                    for i in np.flatnonzero(swaps[at : at + length - 1]):
                        t[i], t[i + 1] = t[i + 1], t[i]
                    fs.write(" ".join(src_words[i] for i in s).capitalize() + ".\n")
                    ft.write(" ".join(tgt_words[i] for i in t).capitalize() + ".\n")
                    at += length
    done.touch()


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def tree_rss(pid: int) -> int:
    """Memory of a process and all its descendants, in bytes: the sum of their proportional set
    sizes (pages a forked worker shares with its parent count once, split between them)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(x.split()[1]) * 1024 for x in f if x.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def measure(cmd: list[str], until: Optional[Callable[[], bool]] = None) -> dict:
    """Run `cmd`; wall seconds, peak tree RSS (MB), and its stderr. With `until`, the seconds until
    it returns True (then the command is stopped)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    peak, reached = 0, None
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if until and reached is None and until():
            reached = time.perf_counter() - start
            proc.terminate()
        time.sleep(0.1)
    reader.join()
    err = "".join(lines)
    # stopped on purpose: `nmt train` saves last.pt and exits 1 on SIGTERM
    if (proc.returncode != 0 and reached is None) or (until and reached is None):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"seconds": time.perf_counter() - start, "peak_mb": peak / 2**20, "until": reached,
            "log": err}  # fmt: skip


def run(pairs: int, workers: int, args: argparse.Namespace) -> dict:
    corpus = Path(args.work) / f"corpus{pairs}"
    make_corpus(corpus, pairs)
    prepared = Path(args.work) / f"prepared{pairs}"
    data = ["data.corpus=files", f"data.source={corpus}", "data.test=test"]
    data += [f"data.prepared_dir={prepared}", f"data.workers={workers}"]
    sets = [x for s in (*data, *args.sets) for x in ("--set", s)]
    nmt = [sys.executable, "-m", "nmt"]
    prep = measure([*nmt, "prepare", "--config", args.config, *sets])
    encoding = re.search(r"encoded (\d+) training pairs in ([\d.]+) s", prep["log"])
    row = {
        "pairs": pairs,
        "workers": workers,
        "prepare_s": prep["seconds"],
        "prepare_peak_mb": prep["peak_mb"],
        "prepare_pairs_per_s": pairs / prep["seconds"],
        "encoding_s": float(encoding.group(2)) if encoding else None,
    }
    if args.train:
        run_dir = Path(args.work) / f"run{pairs}-w{workers}"
        shutil.rmtree(run_dir, ignore_errors=True)
        train = measure(
            [*nmt, "train", "--config", args.config, *sets, "--run-dir", str(run_dir),
             "--set", "train.log_every=1", "--set", "train.progress=false"],
            until=lambda: '"step": 1,' in read_or_empty(run_dir / "metrics.jsonl"),
        )  # fmt: skip
        row["train_first_step_s"] = train["until"]
        row["train_peak_mb"] = train["peak_mb"]
    return row


def translate(lines: int, corpus: Path, args: argparse.Namespace) -> dict:
    """Greedy translation of the first `lines` source lines of `corpus` with --translate."""
    src = Path(args.work) / f"translate{lines}.en"
    if not src.exists():
        with open(corpus / "train.en") as f, open(src, "w") as out:
            for n, line in enumerate(f):
                if n == lines:
                    break
                out.write(line)
        if n + 1 < lines:
            src.unlink()
            raise SystemExit(f"--lines {lines}: {corpus / 'train.en'} has only {n + 1} lines")
    out = Path(args.work) / f"translate{lines}.out"
    cmd = [sys.executable, "-m", "nmt", "translate", "--checkpoint", args.translate,
           "--input", str(src), "--output", str(out), "--beam", "1"]  # fmt: skip
    result = measure(cmd)
    return {"lines": lines, "translate_s": result["seconds"], "translate_peak_mb":
            result["peak_mb"], "lines_per_s": lines / result["seconds"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[1_000_000, 4_000_000, 8_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="data.workers (0: cores)")
    ap.add_argument("--config", default="configs/base.yaml")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="section.key=value")
    ap.add_argument("--work", default="runs/scale", help="corpora, prepared folders and runs")
    ap.add_argument("--no-train", dest="train", action="store_false")
    ap.add_argument("--translate", metavar="CKPT", help="measure nmt translate with this model")
    ap.add_argument("--lines", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = [run(n, w, args) for n in args.pairs for w in args.workers]
    corpus = Path(args.work) / f"corpus{max(args.pairs)}"
    translated = [translate(n, corpus, args) for n in args.lines] if args.translate else []
    print("| pairs | workers | prepare | peak memory | pairs/s | encoding | train: step 1 | peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        enc = f"{r['encoding_s']:.1f} s" if r["encoding_s"] is not None else "-"
        first = f"{r['train_first_step_s']:.1f} s" if r.get("train_first_step_s") else "-"
        peak = f"{r['train_peak_mb']:.0f} MB" if r.get("train_peak_mb") else "-"
        print(
            f"| {r['pairs']:,} | {r['workers'] or 'cores'} | {r['prepare_s']:.1f} s | "
            f"{r['prepare_peak_mb']:.0f} MB | {r['prepare_pairs_per_s']:,.0f} | {enc} | {first} | "
            f"{peak} |"
        )
    if translated:
        print("\n| lines translated | time | peak memory | lines/s |\n|---|---|---|---|")
    for r in translated:
        print(
            f"| {r['lines']:,} | {r['translate_s']:.1f} s | {r['translate_peak_mb']:.0f} MB | "
            f"{r['lines_per_s']:,.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows + translated, indent=2) + "\n")


if __name__ == "__main__":
    main()
