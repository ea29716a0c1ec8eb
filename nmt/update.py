"""One optimizer step of training: forward and backward over the step's micro-batches (gradients
exchanged between ranks once, on the last), clipping, and a fused AdamW update that skips itself on
a non-finite gradient without waiting for the device; a step that runs out of GPU memory is dropped.
The loss is summed over real target tokens and divided by their total over all ranks, so
accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import nn

from nmt.config import TrainConfig
from nmt.data import Batch
from nmt.distributed import Dist
from nmt.loss import Objective
from nmt.precision import autocast_for

FP16_INIT_SCALE = 2.0**7  # fairseq's starting loss scale: few overflows while the scale settles


class Updater:
    """The optimizer, the fp16 loss scaler and the objective as training differentiates it."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        t: TrainConfig,
        device: torch.device,
        dist: Dist,
    ):
        self.model, self.device, self.dist = model, device, dist
        self.precision, self.clip_norm = t.precision, t.clip_norm
        # DDP and the compiled module wrap model + loss and share the parameters; checkpoints and
        # decoding use the plain model. With one process `wrapped` is the objective itself.
        self.wrapped = dist.wrap(objective, device)
        # the loss as training computes it: through DDP, compiled with train.compile
        self.train_loss = torch.compile(self.wrapped, dynamic=True) if t.compile else self.wrapped
        # fused: one kernel for all parameters (CPU and CUDA),
        # and it can skip an update without a host sync
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=t.lr,
            betas=t.betas,
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
            fused=True,
        )
        # loss scaling only for fp16 (bf16 has fp32's range);
        # disabled, the scaler passes everything through
        self.scaler = torch.amp.GradScaler(
            device.type, init_scale=FP16_INIT_SCALE, enabled=t.precision == "fp16"
        )

    @property
    def lr(self) -> float:
        """The learning rate of the last update."""
        return self.optimizer.param_groups[0]["lr"]

    def step(
        self, batches: list[Batch], n_tgt: int, lr: float
    ) -> Optional[tuple[torch.Tensor, int, torch.Tensor]]:
        """Forward/backward over the micro-batches, then one update at `lr`. Returns (summed loss,
        target tokens, 1.0 if the update was skipped for a non-finite gradient else 0.0) with the
        tensors left on the device; or None when the device ran out of memory (the gradients are
        dropped and memory freed). `batches` are this rank's, `n_tgt` the target tokens of the whole
        step over all ranks. With more than one process an OOM stops the run: the other ranks would
        wait for this one's gradients."""
        self.model.train()
        if self.dist.enabled:
            return self._step(batches, n_tgt, lr)
        try:
            return self._step(batches, n_tgt, lr)
        except torch.cuda.OutOfMemoryError:
            pass  # free outside the except block: the traceback holds the activations
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return None

    def _step(
        self, batches: list[Batch], n_tgt: int, lr: float
    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        total = self._backward(batches, n_tgt)
        return total, n_tgt, self._update(lr)

    def _backward(self, batches: list[Batch], n_tgt: int) -> torch.Tensor:
        """Accumulate the step's gradients; return its loss summed over this rank's tokens."""
        total = torch.zeros((), device=self.device)
        # DDP averages the ranks' gradients: this makes it a sum over all tokens / n_tgt
        scale = self.dist.world / n_tgt
        for i, b in enumerate(batches):
            b = b.to(self.device)
            # accumulation: gradients are exchanged between ranks only on the last micro-batch
            sync = (
                nullcontext()
                if i == len(batches) - 1 or not self.dist.enabled
                else self.wrapped.no_sync()
            )
            with sync:
                with autocast_for(self.device, self.precision):
                    loss, _ = self.train_loss(b.src, b.src_pad_mask, b.tgt_in, b.tgt_out)
                self.scaler.scale(loss * scale).backward()
            total += loss.detach()
        return total

    def _update(self, lr: float) -> torch.Tensor:
        """Clip and apply the gradients at `lr`; return 1.0 if the update was skipped, else 0.0."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.unscale_(self.optimizer)
        clip = self.clip_norm if self.clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        skipped = (~torch.isfinite(norm)).float()
        if self.scaler.is_enabled():  # fp16: the scaler skips on overflow and halves the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        # the fused optimizer skips the update itself when found_inf is 1, without a host sync
        else:
            self.optimizer.grad_scale, self.optimizer.found_inf = None, skipped
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.grad_scale, self.optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)
        return skipped
