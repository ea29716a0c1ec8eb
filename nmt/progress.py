"""What training reports as it goes: the mean loss per target token since the last report, the
learning rate and target tokens/s (on the progress bar and in metrics.jsonl), each validation's
record, and the updates or batches it had to skip. The per-step counts stay on the device, so that
a step never waits for the GPU; they are read on reporting steps. A run whose updates keep failing
is stopped with advice.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from nmt.config import Config
from nmt.data import Batch
from nmt.distributed import Dist
from nmt.errors import NmtError
from nmt.tensorboard import Curves

MAX_NONFINITE_IN_ROW = 10
MAX_OOM_IN_ROW = 5


class DeviceCounters:
    """Per-step bookkeeping kept on the device, so that a
    step never waits for the GPU; read on logging steps."""

    def __init__(self, device: torch.device, skipped: int, in_row: int):
        def scalar(v: float) -> torch.Tensor:
            return torch.tensor(float(v), device=device)

        self.loss, self.skipped, self.in_row, self.max_in_row = (
            scalar(0),
            scalar(skipped),
            scalar(in_row),
            scalar(in_row),
        )

    def add(self, loss_sum: torch.Tensor, skipped: torch.Tensor) -> None:
        """`skipped` is 1.0 when this step's update was skipped (non-finite gradient), else 0.0."""
        self.loss += loss_sum
        self.skipped += skipped
        self.in_row.add_(skipped).mul_(skipped)  # consecutive skipped updates
        torch.maximum(self.max_in_row, self.in_row, out=self.max_in_row)

    def read(self) -> tuple[float, int, int, int]:
        """(loss summed since the last reset, skipped updates,
        in a row now, most in a row since the last read)."""
        loss, skipped, in_row, max_in_row = torch.stack(
            [self.loss, self.skipped, self.in_row, self.max_in_row]
        ).tolist()
        self.max_in_row.copy_(self.in_row)
        return loss, int(skipped), int(in_row), int(max_in_row)


class Progress:
    """Counts and reports one run's steps; the counts it keeps in the run's TrainState (`s`)."""

    def __init__(self, cfg: Config, dist: Dist, device: torch.device, metrics_path: Path):
        self.cfg, self.dist, self.device, self.metrics_path = cfg, dist, device, metrics_path
        self.counters = DeviceCounters(device, 0, 0)
        self.loss_tokens = 0  # target tokens behind counters.loss
        self.window = [0, time.perf_counter()]  # target tokens and start of the tokens/s window
        self.curves: Optional[Curves] = None  # TensorBoard's, from start() on (train.tensorboard)

    def open_bar(self, s) -> tqdm:
        """The bar of optimizer steps from `s.step` on (shown by rank 0, with train.progress)."""
        t = self.cfg.train
        return tqdm(
            total=t.max_steps,
            initial=s.step,
            disable=not (t.progress and self.dist.main),
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def start(self, s) -> None:
        """Count on from the state `s` (a fresh run's, or a resumed one's)."""
        self.counters = DeviceCounters(self.device, s.skipped_steps, s.nonfinite_in_row)
        self.loss_tokens = 0
        self.restart_clock()
        if self.cfg.train.tensorboard and self.dist.main and self.curves is None:
            self.curves = Curves(self.metrics_path.parent, s.step + 1)

    def close(self) -> None:
        """The end of the run: TensorBoard's files complete."""
        if self.curves is not None:
            self.curves.close()
            self.curves = None

    def restart_clock(self) -> None:
        """Tokens/s from now (validation is not training time)."""
        self.window = [0, time.perf_counter()]

    def note(self, message: str) -> None:
        """A line on stderr, from rank 0 only."""
        if self.dist.main:
            tqdm.write(message, file=sys.stderr)

    def step_done(
        self, s, loss_sum: torch.Tensor, n_tgt: int, skipped: torch.Tensor, bar, lr: float
    ) -> None:
        """Count the loss and tokens of the step the state `s` has just counted (count_step), and
        report every train.log_every steps."""
        self.counters.add(loss_sum, skipped)
        self.loss_tokens += n_tgt
        self.window[0] += n_tgt
        bar.update(1)
        if s.step % self.cfg.train.log_every == 0 or s.step == 1:
            self.report(s, bar, lr)

    def oom(self, s, group: list[Batch]) -> None:
        """Log a batch skipped for lack of memory; stop
        when it keeps happening (the budget is too big)."""
        t = self.cfg.train
        s.oom_skipped += 1
        s.oom_in_row += 1
        shapes = ", ".join(
            f"{b.src.shape[0]} sentences x "
            f"{b.src.shape[1]} source / {b.tgt_in.shape[1]} target tokens"
            for b in group
        )
        tqdm.write(
            f"warning: out of memory after step {s.step} on a batch of {shapes}; batch skipped "
            f"({s.oom_skipped} so far)",
            file=sys.stderr,
        )
        self.log(
            {
                "step": s.step,
                "epoch": s.epoch,
                "oom_skipped": s.oom_skipped,
                "batch_shapes": [[*b.src.shape, b.tgt_in.shape[1]] for b in group],
            }
        )
        if s.oom_in_row >= MAX_OOM_IN_ROW:
            raise NmtError(
                f"out of memory on {s.oom_in_row} batches in a row (after step {s.step}): lower "
                "train.max_tokens "
                f"(now {t.max_tokens}) and raise train.accum_steps (now {t.accum_steps}) to keep "
                "the same batch size"
            )

    def report(self, s, bar, lr: float) -> None:
        """Log the mean training loss per target token since the last log, the lr and tokens/s."""
        # n_tgt counts every rank
        loss_sum, tokens = self.dist.sum([self.sync(s), self.loss_tokens / self.dist.world])
        loss = loss_sum / max(tokens, 1)
        self.counters.loss.zero_()
        self.loss_tokens = 0
        tps = self.window[0] / max(time.perf_counter() - self.window[1], 1e-9)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.log(
            {
                "step": s.step,
                "epoch": s.epoch,
                "train_loss": loss,
                "lr": lr,
                "tgt_tokens_per_s": tps,
                "time": s.train_seconds,
            }
        )
        self.restart_clock()

    def sync(self, s) -> float:
        """Bring the device counters into the train state (one sync); warn about skipped updates,
        and stop the run when too many came in a row (something is wrong, not noise). Returns the
        loss sum of the window."""
        t = self.cfg.train
        loss, skipped, in_row, max_in_row = self.counters.read()
        if skipped > s.skipped_steps:
            self.note(
                f"warning: {skipped - s.skipped_steps} update(s) skipped for a non-finite loss or "
                "gradient by step "
                f"{s.step} ({skipped} so far)"
            )
        s.skipped_steps, s.nonfinite_in_row = skipped, in_row
        if max_in_row >= MAX_NONFINITE_IN_ROW:
            raise NmtError(
                f"{max_in_row} updates in a row had a non-finite loss or gradient (by step "
                f"{s.step}): the learning "
                f"rate is likely too high (train.lr={t.lr:g}) or the precision too low "
                f"(train.precision={t.precision}); "
                "lower train.lr, raise train.warmup_steps or set train.precision=fp32"
            )
        return loss

    def validated(self, record: dict) -> None:
        """Log a validation's record and show it on stderr; tokens/s counts on from now."""
        self.log(record)
        self.restart_clock()  # tokens/s excludes validation
        shown = " ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
        )
        self.note(f"valid: {shown}")

    def log(self, record: dict) -> None:
        if not self.dist.main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.curves is not None:
            self.curves.add(record)
