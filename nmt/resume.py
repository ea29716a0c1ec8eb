"""What a training checkpoint holds and how a run continues from one: the payload a save writes
(config, tokenizer, weights, optimizer, loss scaler, the loop's TrainState and every rank's random
state), the check that a checkpoint fits this run's tokenizer and config before it is resumed or
fine-tuned from, and putting it all back so that a resumed run takes the steps an uninterrupted one
would have taken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import nn

from nmt.config import Config, config_from_dict
from nmt.data import data_settings, settings_diff
from nmt.errors import NmtError
from nmt.rundir import set_rng_state
from nmt.tokenizer import Tokenizer


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # index of the next batch of this epoch
    best_bleu: float = -1.0
    best_loss: float = float("inf")  # valid loss at the best step: breaks BLEU ties
    best_step: int = 0
    bad_evals: int = 0  # validations since the best one (early stopping)
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    nonfinite_in_row: int = 0  # consecutive skipped updates; MAX_NONFINITE_IN_ROW stops the run
    oom_skipped: int = 0  # batches skipped for running out of GPU memory (no step taken)
    oom_in_row: int = 0  # consecutive ones; MAX_OOM_IN_ROW stops the run
    train_tokens: int = 0
    train_seconds: float = 0.0

    def count_step(self, n_tgt: int, seconds: float) -> None:
        """One optimizer step taken, on `n_tgt` target tokens in `seconds`."""
        self.step += 1
        self.oom_in_row = 0
        self.train_tokens += n_tgt
        self.train_seconds += seconds

    def count_validation(self, bleu: float, loss: float) -> bool:
        """Count a validation of this step toward best/early stopping; True if it is the best so far
        (higher BLEU; on a tie, lower loss)."""
        improved = bleu > self.best_bleu or (bleu == self.best_bleu and loss < self.best_loss)
        if improved:
            self.best_bleu, self.best_loss, self.best_step, self.bad_evals = (
                bleu,
                loss,
                self.step,
                0,
            )
        else:
            self.bad_evals += 1
        return improved


def payload(
    cfg: Config,
    tok: Tokenizer,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    rngs: list[dict],
) -> dict[str, Any]:
    """Everything a resumed run needs; `rngs`: the random states of every rank, in rank order."""
    return {
        "config": cfg.to_dict(),
        "tokenizer": tok.to_state(),
        "tokenizer_sha256": tok.sha256,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "train_state": asdict(state),
        "rng": rngs[0],
        "rng_ranks": rngs,
        "world_size": len(rngs),
    }


def check_compatible(
    ckpt: dict[str, Any], cfg: Config, tok: Tokenizer, what: str, sections: tuple[str, ...]
) -> None:
    """Refuse a checkpoint trained with another tokenizer or other settings in `sections`."""
    if ckpt["tokenizer_sha256"] != tok.sha256:
        raise NmtError(
            f"{ckpt['path']}: trained with a different tokenizer (sha256 "
            f"{ckpt['tokenizer_sha256'][:12]}) than the one in "
            f"{cfg.prepared_dir} ({tok.sha256[:12]}); refusing to {what}"
        )
    for section in sections:
        # a key added after the checkpoint was written counts as its default
        old = {**Config().to_dict()[section], **ckpt["config"][section]}
        new = cfg.to_dict()[section]
        changed = sorted(k for k in new if old.get(k) != new[k])
        if section == "data":  # what shapes the data; the tokenizer's hash was checked above
            was = config_from_dict(ckpt["config"], f"{ckpt['path']} (config)")
            changed = settings_diff(data_settings(was), data_settings(cfg))
            weights = [[c.weight for c in x.data.corpora] for x in (was, cfg)]
            if weights[0] != weights[1]:  # the epochs would differ
                changed.append("train")
        if changed:
            raise NmtError(
                f"{ckpt['path']}: cannot {what} with a changed {section} config "
                f"({', '.join(f'{section}.{k}' for k in changed)})"
            )


def init_from(ckpt: dict[str, Any], cfg: Config, tok: Tokenizer, model: nn.Module) -> None:
    """Fine-tuning: load a checkpoint's weights into `model`; optimizer, schedule and state start
    fresh."""
    check_compatible(ckpt, cfg, tok, "fine-tune from it", ("model",))
    model.load_state_dict(ckpt["model"])


def restore(
    ckpt: dict[str, Any],
    cfg: Config,
    tok: Tokenizer,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
) -> TrainState:
    """Resume: put back the weights, optimizer, loss scale and rank `rank`'s random state (rank 0's
    for a rank the checkpoint did not have); return the loop's state."""
    check_compatible(ckpt, cfg, tok, "resume", ("model", "data"))
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    state = TrainState(**ckpt["train_state"])
    rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return state


def world_change(ckpt: dict[str, Any], accum_steps: int, world: int) -> Optional[str]:
    """What changes when a run resumes with another number of processes (None if it does not)."""
    was = ckpt.get("world_size", 1)
    if was == world:
        return None
    return (
        f"note: {ckpt['path']} was trained by {was} process(es), this run has "
        f"{world}: weights, optimizer and "
        f"data position carry over; a step now takes {accum_steps} x "
        f"{world} batches instead of "
        f"{accum_steps} x {was}, and the random streams differ from an "
        "uninterrupted run"
    )
