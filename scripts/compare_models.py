"""Train several recipes for the same wall-clock budget
on the same prepared data, then compare them on test.

    # the four Multi30k en->de recipes
    python scripts/compare_models.py --minutes 20 --threads 2
    # re-print the table from finished runs
    python scripts/compare_models.py --minutes 20 --only-table

Each recipe trains in runs/compare/<name> with `train.max_minutes` (validation
time excluded), is scored with beam search on test_2016_flickr, and gets one
row: BLEU (cased sacreBLEU), chrF, parameters, steps, target tokens/s, and
BLEU by source-sentence length bucket. A finished run is not trained again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runlib import nmt, parameters, train_stats

RECIPES = (
    ("seq2seq, no attention", "configs/multi30k_en_de_rnn_noattn.yaml"),
    ("biLSTM + dot attention", "configs/multi30k_en_de_rnn_dot.yaml"),
    ("biLSTM + additive attention", "configs/multi30k_en_de_rnn_additive.yaml"),
    ("Transformer", "configs/multi30k_en_de.yaml"),
)


# what `nmt evaluate --beam 5 --alpha 0.6` writes beside best.pt
SCORED = "test.best.beam5.alpha0.6.json"


def train_and_score(
    config: str, run_dir: Path, minutes: float, threads: int, valid_every: int
) -> dict:
    scored = run_dir / SCORED
    if not scored.exists():
        if not (run_dir / "best.pt").exists():
            nmt(
                "train",
                "--config",
                config,
                "--run-dir",
                str(run_dir),
                "--set",
                f"train.max_minutes={minutes}",
                "--set",
                f"train.threads={threads}",
                "--set",
                f"train.valid_every={valid_every}",
            )
        nmt(
            "evaluate",
            "--checkpoint",
            str(run_dir / "best.pt"),
            "--split",
            "test",
            "--beam",
            "5",
            "--alpha",
            "0.6",
        )
    return json.loads(scored.read_text())


def row(name: str, run_dir: Path, result: dict) -> dict:
    m = result["metrics"]
    return {
        "model": name,
        "run_dir": str(run_dir),
        "parameters": parameters(run_dir / "best.pt"),
        **train_stats(run_dir),
        "bleu": m["bleu"]["score"],
        "bleu_signature": m["bleu"]["signature"],
        "chrf": m["chrf"]["score"],
        "bleu_by_source_length": result["bleu_by_source_length"],
    }


def markdown(rows: list[dict]) -> str:
    buckets = [b["source_words"] for b in rows[0]["bleu_by_source_length"]]
    counts = [str(b["sentences"]) for b in rows[0]["bleu_by_source_length"]]
    head = ["model", "parameters", "steps", "target tokens/s", "BLEU", "chrF"] + [
        f"BLEU {b} words ({n})" for b, n in zip(buckets, counts)
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["model"],
            f"{r['parameters'] / 1e6:.2f}M",
            str(r["steps"]),
            f"{r['tgt_tokens_per_s']:,.0f}" if r["tgt_tokens_per_s"] else "-",
            f"{r['bleu']:.2f}",
            f"{r['chrf']:.2f}",
        ]
        cells += [f"{b['bleu']:.2f}" for b in r["bleu_by_source_length"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--minutes",
        type=float,
        default=20.0,
        help="training budget per recipe (validation excluded)",
    )
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: torch's default)")
    ap.add_argument("--valid-every", type=int, default=200)
    ap.add_argument("--runs", default="runs/compare", help="parent folder of the run dirs")
    ap.add_argument(
        "--only-table",
        action="store_true",
        help="do not train or decode; print the table of finished runs",
    )
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()

    rows = []
    for name, config in RECIPES:
        run_dir = Path(args.runs) / Path(config).stem
        if args.only_table:
            if not (run_dir / SCORED).exists():
                continue
            result = json.loads((run_dir / SCORED).read_text())
        else:
            result = train_and_score(config, run_dir, args.minutes, args.threads, args.valid_every)
        rows.append(row(name, run_dir, result))
    if not rows:
        sys.exit("no finished runs to compare")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
