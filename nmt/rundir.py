"""The run folder's bookkeeping, apart from the training loop: checking and clearing the folder
before a run (prepare_run_dir), what each invocation starts with (record_start: config.yaml, the
tokenizer, env.json), metrics a resumed run will log again (trim_log), and the random number
generators' state that a checkpoint carries so that a resumed run draws what an uninterrupted one
would (rng_state, set_rng_state).
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import sacrebleu
import sentencepiece
import torch
import yaml
from tqdm import tqdm

from nmt.config import Config
from nmt.errors import NmtError
from nmt.files import atomic_write_text, remove_stale_temp_files
from nmt.retention import STEP_DIR, has_checkpoint
from nmt.tokenizer import Tokenizer

METRICS = "metrics.jsonl"  # one JSON record a line: training reports, validations, skipped batches


def rng_state() -> dict:
    """Every random number generator training could touch: python, numpy, torch CPU and CUDA."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    rng = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "python" in rng:
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in rng:
        np_state = dict(rng["numpy"], state=dict(rng["numpy"]["state"]))
        np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
        np.random.set_state(np_state)


def environment() -> dict:
    """Versions, git commit and command line: recorded in the run directory for reproducibility."""
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        commit = r.stdout.strip() if r.returncode == 0 else ""
        r = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = bool(r.stdout.strip()) if commit and r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentencepiece": sentencepiece.__version__,
        "sacrebleu": sacrebleu.__version__,
        "git_commit": commit or None,
        # uncommitted changes to tracked files: the commit alone does not describe the code
        "git_dirty": dirty,
        "command": sys.argv,
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def prepare_run_dir(run_dir: Path, resume: bool) -> bool:
    """Check the run directory and clear what a killed
    run left half-written; return whether to resume."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NmtError(f"{run_dir}: exists and is not a folder (--run-dir)")
    if not resume and has_checkpoint(run_dir):
        raise NmtError(
            f"{run_dir} already holds a run (last.pt); pass --resume to continue it or --run-dir "
            "to start another"
        )
    if resume and not has_checkpoint(run_dir):
        if not (run_dir / "config.yaml").exists():
            raise NmtError(f"{run_dir / 'last.pt'}: nothing to resume")
        tqdm.write(
            f"warning: {run_dir} stopped before its first checkpoint; "
            "starting it again from step 0",
            file=sys.stderr,
        )
        resume = False
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temp_files(run_dir) + remove_stale_temp_files(run_dir / STEP_DIR)
    if stale:
        tqdm.write(
            f"removed {len(stale)} partly written file(s) a killed run left in {run_dir}",
            file=sys.stderr,
        )
    return resume


def record_session(run_dir: Path, step: int, init: Optional[str], world: int = 1) -> None:
    """Append this invocation (versions, git commit, command line, starting step) to env.json."""
    path = run_dir / "env.json"
    try:
        sessions = json.loads(path.read_text(encoding="utf-8"))["sessions"] if step > 0 else []
    except (OSError, ValueError, KeyError, TypeError):
        sessions = []
    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_step": step,
        "processes": world,
        **environment(),
    }
    if init:
        session["init_from"] = init
    atomic_write_text(path, json.dumps({"sessions": [*sessions, session]}, indent=2) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Drop metrics recorded after `step`: a resumed run
    writes them again, so the curves have no repeats."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] > step:
                continue
        except (ValueError, KeyError, TypeError):  # a line half-written when the run was killed
            continue
        kept.append(line)
    if kept != lines:
        atomic_write_text(path, "".join(kept))


def record_start(
    run_dir: Path, cfg: Config, tok: Tokenizer, step: int, init: Optional[str], world: int
) -> None:
    """Once the checkpoint to start from is accepted: write config.yaml and the tokenizer, drop the
    metrics logged after `step` (a fresh start, too, drops what a dead attempt logged) and append
    this invocation to env.json."""
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tok.save(run_dir)
    trim_log(run_dir / METRICS, step)
    record_session(run_dir, step, init, world)
