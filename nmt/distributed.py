r"""More than one process: torch.distributed (torchrun)
with DistributedDataParallel; everything DDP lives here.

    # one machine, N GPUs (or CPU processes)
    torchrun --nproc_per_node N -m nmt train --config C
    torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT \
        -m nmt train --config C

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them (`nmt train` alone) nothing here does
anything. NCCL on GPUs, gloo on CPUs. A second gloo group carries the small per-step control
messages (stop now?) so they never wait for the GPU.

How training shares the work (see Trainer.run_epoch): every rank builds the same
token-budget batches (a pure function of seed and epoch); one optimizer step takes
`accum_steps` x world batches and rank r takes every world-th of them, so the ranks see
disjoint batches and the same number of steps. The loss is divided by the target tokens
of the whole step (all ranks), times world because DDP averages, so N ranks give the
gradient one process would get from the same batches with N x accum_steps accumulation.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from nmt.errors import NmtError


class Dist:
    """Rank, world size and the few collective operations
    training needs; a no-op for a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.control: Optional[Any] = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files, logs and shows progress."""
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group; return this rank's device (cuda:LOCAL_RANK on GPUs)."""
        if not self.enabled:
            return device
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise NmtError(
                    f"LOCAL_RANK {self.local_rank} but only "
                    f"{torch.cuda.device_count()} GPU(s) on this machine"
                )
            torch.cuda.set_device(self.local_rank)
            device = torch.device("cuda", self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30)
            )
        self.control = dist.new_group(backend="gloo")
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all ranks (one small CPU
        message): decisions every rank must take together."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([float(f) for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return [bool(v) for v in t.tolist()]

    def sum(self, values: list[float]) -> list[float]:
        """Values summed over all ranks (for logging the loss of the whole batch)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        return t.tolist()

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a checkpoint, validation results)."""
        if not self.enabled:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> Optional[list]:
        """Every rank's `obj` on rank 0, in rank order (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def my_share(group: list, dist_: Dist) -> list:
    """This rank's batches of one optimizer step's group (every world-th, starting at its rank)."""
    return group[dist_.rank :: dist_.world]
