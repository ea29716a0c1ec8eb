"""Average the weights of several checkpoints of one run into a new checkpoint (as fairseq's
average_checkpoints.py): usually worth a little BLEU over the single best checkpoint.

The result holds config, tokenizer and the mean weights, and the list of what was averaged; it has
no optimizer or training state, so it translates, evaluates and starts fine-tuning (`--init`), but
is not a point to resume from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.errors import NmtError
from nmt.files import check_output
from nmt.retention import Retention, best_first, step_files

TRAINING_FILES = ("last.pt", "best.pt")


def select(run_dir: Path, last: Optional[int], best: Optional[int]) -> list[Path]:
    """The run's `last` newest step checkpoints, or its
    `best` best by valid BLEU (then loss), oldest first."""
    if (last is None) == (best is None):
        raise NmtError("give one of --last N or --best N with --run-dir")
    files = step_files(run_dir)
    if not files:
        raise NmtError(f"{run_dir}: no checkpoints/step-*.pt files to average")
    want = last if last is not None else best
    if last is not None:
        steps = sorted(files)[-last:]
        why = "train.keep_last"
    else:
        index = Retention(run_dir, 0, 0).read_index().values()
        steps = sorted(
            r["step"] for r in best_first(r for r in index if r.get("step") in files)[:best]
        )
        why = "train.keep_best"
    if len(steps) < want:
        raise NmtError(
            f"{run_dir}: asked for {want} checkpoints but the run kept {len(steps)} "
            f"(raise {why} before training to keep more)"
        )
    return [files[s] for s in steps]


def average(paths: list[Path], output: Path) -> dict:
    """Write the mean of the checkpoints' weights to
    `output`; all must share tokenizer and model config."""
    if len(paths) < 1:
        raise NmtError("nothing to average")
    output = Path(output)
    target = check_output(output)  # the file written: a symlink's target
    if target is None:
        raise NmtError(f"--output {output}: a checkpoint is written to a file, not to stdout")
    if target.name in TRAINING_FILES:
        raise NmtError(
            f"{output}: {target.name} belongs to training; write the average to another name"
        )
    if any(target == Path(p).resolve() for p in paths):
        raise NmtError(
            f"{output}: is one of the checkpoints being averaged; write the average to another name"
        )
    total: dict[str, torch.Tensor] = {}
    first: dict = {}
    sources = []
    for path in paths:
        ckpt = load_checkpoint(path)
        state = ckpt["model"]
        if not first:
            first = ckpt
            total = {
                k: v.double() if v.is_floating_point() else v.clone() for k, v in state.items()
            }
        else:
            _check_same(first, ckpt)
            for k, v in state.items():
                if v.is_floating_point():
                    total[k] += v.double()
                elif not torch.equal(total[k], v):
                    raise NmtError(
                        f"{ckpt['path']}: {k} differs from {first['path']} and cannot be averaged"
                    )
        sources.append({"path": ckpt["path"], "step": ckpt.get("train_state", {}).get("step")})
    dtypes = {k: v.dtype for k, v in first["model"].items()}
    mean = {
        k: (v / len(paths)).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()
    }
    payload = {
        "config": first["config"],
        "tokenizer": first["tokenizer"],
        "tokenizer_sha256": first["tokenizer_sha256"],
        "model": mean,
        "averaged_from": sources,
    }
    try:
        save_checkpoint(output, payload)
    except OSError as e:  # a directory, no permission, a full disk
        raise NmtError(f"{output}: cannot write: {e.strerror or e}") from None
    return {"output": str(output), "averaged_from": sources}


def _check_same(a: dict, b: dict) -> None:
    if a["tokenizer_sha256"] != b["tokenizer_sha256"]:
        raise NmtError(
            f"{b['path']}: trained with a different tokenizer than {a['path']}; cannot average them"
        )
    if a["config"]["model"] != b["config"]["model"]:
        changed = sorted(
            k for k, v in a["config"]["model"].items() if b["config"]["model"].get(k) != v
        )
        raise NmtError(
            f"{b['path']}: model config differs from {a['path']} "
            f"({', '.join('model.' + k for k in changed)}); cannot average them"
        )
    if a["model"].keys() != b["model"].keys() or any(
        a["model"][k].shape != b["model"][k].shape for k in a["model"]
    ):
        raise NmtError(
            f"{b['path']}: its weights do not have the shapes of {a['path']}; cannot average them"
        )
