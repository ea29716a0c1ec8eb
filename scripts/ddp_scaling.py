r"""Training throughput with 1 and N processes (torchrun, DDP) on this machine, for one config.

    python scripts/ddp_scaling.py --config configs/multi30k_en_de.yaml --steps 40 \
        --procs 1 2 --threads 2

Each run trains `--steps` optimizer steps in a temporary run dir (no validation) and reports the
median target tokens/s over the whole job (all ranks) after the first `--skip` logged steps. With N
processes each gets `--threads` / N threads (at least 1), so the runs share the same cores. Prints a
table; `--json` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(config: str, procs: int, threads: int, steps: int, skip: int, extra: list[str]) -> dict:
    per = max(threads // procs, 1)
    with tempfile.TemporaryDirectory() as tmp:
        sets = [
            f"train.max_steps={steps}",
            "train.valid_every=100000",
            "train.valid_bleu=false",
            "train.log_every=1",
            f"train.threads={per}",
            "train.progress=false",
            *extra,
        ]
        args = [
            "-m",
            "nmt",
            "train",
            "--config",
            config,
            "--run-dir",
            f"{tmp}/run",
            *[x for s in sets for x in ("--set", s)],
        ]
        if procs > 1:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(procs),
                *args,
            ]
        else:
            cmd = [sys.executable, *args]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(per)})
        logs = [
            json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()
        ]
    speeds = [r["tgt_tokens_per_s"] for r in logs if "tgt_tokens_per_s" in r and r["step"] > skip]
    return {
        "processes": procs,
        "threads_each": per,
        "steps": steps,
        "tgt_tokens_per_s": statistics.median(speeds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="configs/multi30k_en_de.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument(
        "--skip", type=int, default=5, help="logged steps left out of the median (warm-up)"
    )
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads in all, shared by the processes",
    )
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra config overrides"
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [run(args.config, p, args.threads, args.steps, args.skip, args.sets) for p in args.procs]
    base = rows[0]["tgt_tokens_per_s"]
    print(
        "| processes | threads each | target tokens/s (all ranks) | vs first |\n|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['processes']} | {r['threads_each']} | {r['tgt_tokens_per_s']:,.0f} | "
            f"{r['tgt_tokens_per_s'] / base:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
