"""Which checkpoints a run keeps, and which one `--resume` continues from.

A run directory holds `last.pt` (the newest state), `best.pt` (the best by validation BLEU, ties
broken by validation loss) and `checkpoints/step-NNNNNNN.pt`: the last K saves and the best N
validated ones. Each save writes `last.pt` atomically, then hard-links it (no copy; a copy where
links are unsupported) as the step file and, when validation improved, as `best.pt`; records its
scores in `checkpoints/index.json`; and only then deletes the step files that fell out of both sets.
A stop by signal writes `last.pt` only (its step is off the grid of valid_every/save_every).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

from nmt.checkpoint import CorruptCheckpoint, load_checkpoint
from nmt.errors import NmtError
from nmt.files import atomic_link, atomic_write_text

STEP_DIR = "checkpoints"
INDEX = "index.json"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def step_name(step: int) -> str:
    return f"step-{step:07d}.pt"


def step_files(run_dir: Path) -> dict[int, Path]:
    """The step checkpoints on disk, by step."""
    folder = Path(run_dir) / STEP_DIR
    found = {}
    if folder.is_dir():
        for f in folder.iterdir():
            m = _STEP_FILE.match(f.name)
            if m:
                found[int(m.group(1))] = f
    return found


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "last.pt").exists() or bool(step_files(run_dir))


def best_first(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validated saves ranked best first: higher valid
    BLEU, then lower valid loss, then the earlier step."""
    return sorted(
        records,
        key=lambda r: (-r.get("valid_bleu", 0.0), r.get("valid_loss", float("inf")), r["step"]),
    )


class Retention:
    """Records each save and prunes old step files: keeps
    the last `keep_last` and the best `keep_best`."""

    def __init__(self, run_dir: Path, keep_last: int, keep_best: int):
        self.run_dir, self.keep_last, self.keep_best = Path(run_dir), keep_last, keep_best
        self.folder = self.run_dir / STEP_DIR

    def read_index(self) -> dict[str, dict[str, Any]]:
        try:
            index = json.loads((self.folder / INDEX).read_text(encoding="utf-8"))
            return index if isinstance(index, dict) else {}
        # missing, or damaged: scores are then unknown, files are kept by age
        except (OSError, ValueError):
            return {}

    def record(self, step: int, scores: Optional[dict[str, float]], best: bool) -> None:
        """Call after last.pt holds step `step`; `scores`
        (valid_bleu, valid_loss) when it was validated."""
        last = self.run_dir / "last.pt"
        name = step_name(step)
        atomic_link(last, self.folder / name)
        if best:
            atomic_link(last, self.run_dir / "best.pt")
        files = step_files(self.run_dir)
        index = {
            k: v
            for k, v in self.read_index().items()
            if isinstance(v, dict) and v.get("step") in files
        }
        if scores is not None:
            index[name] = {"step": step, **scores}
        atomic_write_text(self.folder / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")
        keep = set(sorted(files)[-self.keep_last :] if self.keep_last else [])
        keep |= {r["step"] for r in best_first(index.values())[: self.keep_best]}
        keep.add(step)  # the save just made, whatever the settings (it is also last.pt)
        for s, f in files.items():
            if s not in keep:
                f.unlink(missing_ok=True)


def resume_candidates(run_dir: Path) -> list[Path]:
    """Where a resumed run may start, newest first: last.pt, then the step files."""
    run_dir = Path(run_dir)
    found = [run_dir / "last.pt"] if (run_dir / "last.pt").exists() else []
    return found + [f for _, f in sorted(step_files(run_dir).items(), reverse=True)]


def load_for_resume(
    run_dir: Path, warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
) -> dict:
    """Load the newest checkpoint of the run that is intact;
    set aside (rename to *.corrupt) the damaged ones."""
    bad = []
    for path in resume_candidates(run_dir):
        try:
            ckpt = load_checkpoint(path)
        except CorruptCheckpoint as e:
            warn(f"warning: {e}; moved aside to {path.name}.corrupt")
            path.rename(path.with_name(path.name + ".corrupt"))
            bad.append(path)
            continue
        if bad:
            warn(
                f"warning: resuming from {path} (step {ckpt['train_state']['step']}), the newest "
                "intact checkpoint"
            )
        return ckpt
    if bad:
        raise NmtError(
            f"{run_dir}: every checkpoint is corrupt ({len(bad)} found); "
            "cannot resume, start a new run"
        )
    raise NmtError(f"{run_dir}: no checkpoint to resume from")
