"""`train.tensorboard: true`: the numbers of metrics.jsonl as TensorBoard scalars, read back with
TensorBoard's own reader; a resumed run shows each step once, with the values it kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from nmt.config import load_config
from nmt.errors import NmtError
from nmt.prepare import prepare
from nmt.tensorboard import tag
from nmt.train import train


def cfg(repo_root: Path, toy_data: list[str], tmp_path: Path, steps: int, *more: str):
    return load_config(
        repo_root / "configs" / "smoke.yaml",
        [
            *toy_data,
            f"data.prepared_dir={tmp_path / 'prepared'}",
            f"train.max_steps={steps}",
            "train.valid_every=4",
            "train.log_every=1",
            "train.threads=1",
            "train.valid_bleu=false",
            "train.tensorboard=true",
            *more,
        ],
    )


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for the run: tag -> [(step, value)]."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {
        name: [(e.step, e.value) for e in events.Scalars(name)] for name in events.Tags()["scalars"]
    }


def logged(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers the same way."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                out.setdefault(tag(key), []).append((record["step"], float(value)))
    return out


def test_the_scalars_are_metrics_jsonl_and_a_resume_shows_each_step_once(
    repo_root: Path, toy_data: list[str], tmp_path: Path
) -> None:
    prepare(cfg(repo_root, toy_data, tmp_path, 8), log=lambda m: None)
    run = train(cfg(repo_root, toy_data, tmp_path, 8), tmp_path / "run")
    first = scalars(run)
    assert {"train/loss", "train/lr", "train/tgt_tokens_per_s", "valid/loss", "valid/ppl"} <= set(
        first
    )
    assert [step for step, _ in first["train/loss"]] == list(range(1, 9))
    assert [step for step, _ in first["valid/loss"]] == [4, 8]
    # a run killed after its step-8 checkpoint had logged steps 9 to 11 (here: made up) ...
    with SummaryWriter(str(run / "tensorboard")) as killed:
        for step in (9, 10, 11):
            killed.add_scalar("train/loss", 99.0, step)
    with open(run / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps({"step": s, "train_loss": 99.0}) + "\n" for s in (9, 10, 11))
    # ... and resumes from it: steps 9 to 11 are logged again, and shown once, with the new values
    train(cfg(repo_root, toy_data, tmp_path, 12), run, resume=True)
    shown = scalars(run)
    assert [step for step, _ in shown["train/loss"]] == list(range(1, 13))
    assert all(value != 99.0 for _, value in shown["train/loss"])
    kept = logged(run)
    for name, points in kept.items():
        assert [s for s, _ in shown[name]] == [s for s, _ in points], name
        assert [v for _, v in shown[name]] == pytest.approx([v for _, v in points], rel=1e-6)


def test_without_tensorboard_installed_training_refuses_before_it_starts(
    repo_root: Path, toy_data: list[str], tmp_path: Path, monkeypatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(NmtError, match=r"pip install 'nmt\[tensorboard\]'"):
        train(cfg(repo_root, toy_data, tmp_path, 8), tmp_path / "run")
    assert not (tmp_path / "run").exists()
