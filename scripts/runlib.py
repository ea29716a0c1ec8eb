"""What the experiment scripts share: running `nmt`
as a subprocess, and reading a finished run's log."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional


def nmt(*args: str, log: Optional[Path] = None) -> str:
    """Run `python -m nmt ARGS`; return its stdout. With `log`, stderr (progress bars) is appended
    there and, on failure, its last lines are printed with the command."""
    if log is None:
        return subprocess.run(
            [sys.executable, "-m", "nmt", *args], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as err:
        done = subprocess.run(
            [sys.executable, "-m", "nmt", *args], stdout=subprocess.PIPE, stderr=err, text=True
        )
    if done.returncode != 0:
        tail = (
            log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()[-5:]
        )
        sys.exit(
            f"nmt {' '.join(args)} failed (exit {done.returncode}); from {log}:\n" + "\n".join(tail)
        )
    return done.stdout


def train_stats(run_dir: Path) -> dict:
    """Steps, training minutes (validation excluded), median target
    tokens/s, and the curve of valid greedy BLEU against training minutes
    ([minutes, BLEU] at each validation) from the run's metrics.jsonl."""
    logs = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    speeds = [r["tgt_tokens_per_s"] for r in logs if "tgt_tokens_per_s" in r and r["step"] > 1]
    return {
        "steps": max(r["step"] for r in logs),
        "train_minutes": max(r.get("time", 0) for r in logs) / 60,
        "tgt_tokens_per_s": statistics.median(speeds) if speeds else None,
        "curve": [[r["time"] / 60, r["valid_bleu"]] for r in logs if "valid_bleu" in r],
    }


def parameters(checkpoint: Path) -> int:
    from nmt.models import count_parameters
    from nmt.translate import load_translator

    # as trained: bf16 decoding packs a copy of tied weights
    return count_parameters(load_translator(str(checkpoint), "cpu", "fp32").model)
