"""Training curves in TensorBoard as training goes (`train.tensorboard: true`, the [tensorboard]
extra): every number metrics.jsonl records, as a scalar of the run folder's `tensorboard/` logs,
through torch's SummaryWriter. A resumed run hides what the killed one logged after its checkpoint
(TensorBoard's purge_step), as metrics.jsonl drops those lines, so no step shows twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from nmt.errors import NmtError

FOLDER = "tensorboard"  # in the run folder
NOT_SCALARS = ("step", "epoch", "time")  # the x axes, not curves


def check_installed() -> None:
    """One error line, before training starts, when TensorBoard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise NmtError(
            "train.tensorboard: true needs TensorBoard: pip install 'nmt[tensorboard]' "
            "(or pip install tensorboard)"
        ) from None


def tag(key: str) -> str:
    """metrics.jsonl's key -> the scalar's name: valid_bleu -> valid/bleu, train_loss -> train/loss,
    lr -> train/lr."""
    group, _, rest = key.partition("_")
    return f"{group}/{rest}" if group in ("train", "valid") and rest else f"train/{key}"


class Curves:
    """Writes records to TensorBoard, from `first_step` on (later steps of a killed run hidden)."""

    def __init__(self, run_dir: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer: Optional[Any] = SummaryWriter(str(run_dir / FOLDER), purge_step=first_step)

    def add(self, record: dict) -> None:
        """Every number of a metrics.jsonl record, at its step; validations are flushed at once."""
        if self.writer is None:
            return
        for key, value in record.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key not in NOT_SCALARS and number:
                self.writer.add_scalar(tag(key), value, record["step"])
        if any(k.startswith("valid_") for k in record):
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
