r"""Run by torchrun in tests/test_distributed.py: `nmt
train` in each rank, then save that rank's parameters.

    torchrun --nproc_per_node 2 tests/ddp_worker.py CONFIG RUN_DIR OUT_DIR [--resume] \
        [section.key=value ...]

The parameters every rank ends with are what the tests compare; nmt itself saves only rank 0's.
"""

import os
import sys
from pathlib import Path

import torch

import nmt.train as training
from nmt.cli import main as cli_main  # noqa: F401  (the same imports as the real entry point)
from nmt.config import load_config
from nmt.errors import NmtError


def main() -> None:
    config, run_dir, out_dir, *rest = sys.argv[1:]
    resume = "--resume" in rest
    sets = [a for a in rest if a != "--resume"]
    run = training.Trainer.run

    def run_and_save(self):
        result = run(self)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), Path(out_dir) / f"rank{self.dist.rank}.pt")
        return result

    training.Trainer.run = run_and_save
    rank = os.environ.get("RANK", "0")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # for the test that signals one rank
    (Path(out_dir) / f"pid{rank}").write_text(str(os.getpid()))
    try:
        training.train(load_config(config, sets), Path(run_dir), resume=resume)
    except NmtError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
