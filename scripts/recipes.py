"""Train the Multi30k recipes at one budget, choose checkpoint and decoding on valid, score test
once, print the table.

    # CPU: 2 runs at a time
    python scripts/recipes.py --source data/multi30k --steps 500 --threads 1 --jobs 2
    # one GPU
    python scripts/recipes.py --minutes 5 --average 3,5 --runs runs/recipes-gpu
    # finished runs only
    python scripts/recipes.py --steps 500 --only-table

The four directions (en->de, de->en, en->fr, en->cs), or the --config files given; the first
(en->de) is trained with seeds 1..N (--seeds), or the --seed values given, for the spread. Each run
lives in RUNS/<config>-seed<S>: an existing run is resumed, a finished one is not trained again.
After training:
1. candidates: best.pt (best valid BLEU), and with --average N, the average of the last N step
   checkpoints;
2. `nmt sweep` decodes valid for each candidate over --beam x --alpha
   (valid.sweep.<candidate>.json);
3. the best (candidate, beam, alpha) on valid translates test_2016_flickr, once (test.json): cased
   sacreBLEU, paper-style BLEU (lowercased, Moses-tokenized), chrF.

With --ensemble (and two or more seeds), the first recipe's seeds are also decoded as one ensemble
(`nmt translate --checkpoint A --checkpoint B ...`), each member the checkpoint its run chose on
valid: beam and alpha are swept on valid for the ensemble
(RUNS/<config>-ensemble<N>/valid.sweep.json), then test is translated once (test.json there). Test
is never read before the choice is made.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runlib import nmt, parameters, train_stats

from nmt.config import load_config

RECIPES = (
    "configs/multi30k_en_de.yaml",
    "configs/multi30k_de_en.yaml",
    "configs/multi30k_en_fr.yaml",
    "configs/multi30k_en_cs.yaml",
)
# the test BLEU (cased sacreBLEU, test_2016_flickr) each direction's recipe aims at
TARGETS = {("en", "de"): 40.0, ("de", "en"): 43.0, ("en", "fr"): 61.0, ("en", "cs"): 33.0}


def target(config: str) -> float | None:
    """The test BLEU target for the config's direction (any model size), None for another pair."""
    data = load_config(config).data
    return TARGETS.get((data.src_lang, data.tgt_lang))


def budget_sets(args: argparse.Namespace, seed: int) -> list[str]:
    sets = [f"train.seed={seed}"]
    if args.steps:
        sets.append(f"train.max_steps={args.steps}")
    if args.minutes:
        sets.append(f"train.max_minutes={args.minutes}")
    if args.threads:
        sets.append(f"train.threads={args.threads}")
    if args.average:  # keep enough step checkpoints to average the largest N
        sets.append(f"train.keep_last={max(args.average)}")
    sets += args.set
    return [x for s in sets for x in ("--set", s)]


def candidates(run_dir: Path, averages: list[int], log: Path) -> list[Path]:
    out = [run_dir / "best.pt"]
    have = len(list((run_dir / "checkpoints").glob("step-*.pt")))
    for n in averages:
        if have >= n:
            if not (run_dir / f"average-last-{n}.pt").exists():
                nmt("average", "--run-dir", str(run_dir), "--last", str(n), log=log)
            out.append(run_dir / f"average-last-{n}.pt")
    return out


def run_one(config: str, seed: int, args: argparse.Namespace) -> dict:
    """Train (or resume), choose on valid, score test once; return the row."""
    run_dir = Path(args.runs) / f"{Path(config).stem}-seed{seed}"
    log, scored = run_dir / "log.txt", run_dir / "test.json"
    if not scored.exists():
        print(f"{run_dir}: training (log in {log})", flush=True)
        resume = ["--resume"] if (run_dir / "config.yaml").exists() else []
        nmt(
            "train",
            "--config",
            config,
            "--run-dir",
            str(run_dir),
            *resume,
            *budget_sets(args, seed),
            log=log,
        )
        best = None
        for ckpt in candidates(run_dir, args.average, log):
            out = run_dir / f"valid.sweep.{ckpt.stem}.json"
            if not out.exists():
                nmt(
                    "sweep",
                    "--checkpoint",
                    str(ckpt),
                    "--beam",
                    args.beam,
                    "--alpha",
                    args.alpha,
                    "-o",
                    str(out),
                    log=log,
                )
            choice = json.loads(out.read_text())["best"]
            if best is None or choice["bleu"] > best["valid_bleu"]:
                best = {
                    "checkpoint": ckpt.name,
                    "beam": choice["beam"],
                    "alpha": choice["alpha"],
                    "valid_bleu": choice["bleu"],
                }
        score_test(scored, ["--checkpoint", str(run_dir / best["checkpoint"])], best, log)
    return row(config, seed, run_dir, json.loads(scored.read_text()))


def score_test(scored: Path, given: list[str], best: dict, log: Path, **extra: object) -> None:
    """Translate test once with the checkpoint(s) `given` and the beam and alpha chosen on valid
    (`best`); write `scored`."""
    print(f"{scored.parent}: chosen on valid: {best}; translating test", flush=True)
    result = json.loads(
        nmt(
            "evaluate",
            *given,
            "--split",
            "test",
            "--beam",
            str(best["beam"]),
            "--alpha",
            str(best["alpha"]),
            "--json",
            log=log,
        )
    )
    scored.write_text(
        json.dumps({"chosen_on_valid": best, **extra, "test": result}, indent=2) + "\n"
    )


def ensemble_dir(config: str, seeds: int, args: argparse.Namespace) -> Path:
    return Path(args.runs) / f"{Path(config).stem}-ensemble{seeds}"


def run_ensemble(config: str, rows: list[dict], args: argparse.Namespace) -> dict:
    """Decode the seeds' runs of `config` (their `rows`) as one ensemble: choose beam and alpha on
    valid, score test once."""
    out_dir = ensemble_dir(config, len(rows), args)
    members = [str(Path(r["run_dir"]) / r["checkpoint"]) for r in rows]
    scored = out_dir / "test.json"
    if not scored.exists():
        log, swept = out_dir / "log.txt", out_dir / "valid.sweep.json"
        given = [x for m in members for x in ("--checkpoint", m)]
        if not swept.exists():
            nmt(
                "sweep",
                *given,
                "--beam",
                args.beam,
                "--alpha",
                args.alpha,
                "-o",
                str(swept),
                log=log,
            )
        choice = json.loads(swept.read_text())["best"]
        best = {
            "checkpoint": " + ".join(str(Path(m).relative_to(args.runs)) for m in members),
            "beam": choice["beam"],
            "alpha": choice["alpha"],
            "valid_bleu": choice["bleu"],
        }
        score_test(scored, given, best, log, members=members)
    return ensemble_row(config, rows, json.loads(scored.read_text()))


def ensemble_row(config: str, rows: list[dict], scored: dict) -> dict:
    """The ensemble's row: steps, training minutes and parameters are its members' sums."""
    return {
        "recipe": f"{Path(config).stem} ensemble",
        "seed": "+".join(str(r["seed"]) for r in rows),
        "members": scored["members"],
        "steps": sum(r["steps"] for r in rows),
        "train_minutes": sum(r["train_minutes"] for r in rows),
        "tgt_tokens_per_s": None,
        "curve": [],
        "parameters": sum(r["parameters"] for r in rows),
        **scores_of(config, scored),
    }


def row(config: str, seed: int, run_dir: Path, scored: dict) -> dict:
    return {
        "recipe": Path(config).stem,
        "seed": seed,
        "run_dir": str(run_dir),
        **train_stats(run_dir),
        "parameters": parameters(run_dir / scored["chosen_on_valid"]["checkpoint"]),
        **scores_of(config, scored),
    }


def scores_of(config: str, scored: dict) -> dict:
    """What a row takes from a test.json: the choice made on valid, and the test scores."""
    m = scored["test"]["metrics"]
    return {
        **scored["chosen_on_valid"],
        "bleu": m["bleu"]["score"],
        "bleu_signature": m["bleu"]["signature"],
        "bleu_paper": m.get("bleu_paper", {}).get("score"),
        "chrf": m["chrf"]["score"],
        "target": target(config),
    }


def markdown(rows: list[dict]) -> str:
    head = [
        "recipe",
        "seed",
        "steps",
        "training minutes",
        "checkpoint",
        "beam",
        "alpha",
        "valid BLEU",
        "test BLEU",
        "paper-style BLEU",
        "chrF",
        "parameters",
        "target",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["recipe"],
                    str(r["seed"]),
                    str(r["steps"]),
                    f"{r['train_minutes']:.1f}",
                    r["checkpoint"],
                    str(r["beam"]),
                    f"{r['alpha']:g}",
                    f"{r['valid_bleu']:.2f}",
                    f"{r['bleu']:.2f}",
                    f"{r['bleu_paper']:.2f}" if r["bleu_paper"] is not None else "-",
                    f"{r['chrf']:.2f}",
                    f"{r['parameters'] / 1e6:.2f}M",
                    f"{r['target']:.1f}" if r["target"] else "-",
                ]
            )
            + " |"
        )
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        if len(mine) > 1:
            lines.append("")
            lines.append(
                f"{recipe}, {len(mine)} seeds: "
                + ", ".join(
                    f"{what} mean {statistics.mean(r[key] for r in mine):.2f}, sd "
                    f"{statistics.stdev(r[key] for r in mine):.2f}, "
                    f"range {min(r[key] for r in mine):.2f}-{max(r[key] for r in mine):.2f}"
                    for what, key in (
                        ("test BLEU", "bleu"),
                        ("valid BLEU", "valid_bleu"),
                        ("chrF", "chrf"),
                    )
                )
            )
    lines.append("")
    lines.append("valid BLEU (greedy, during training) against training minutes:")
    for r in rows:
        if r["curve"]:
            lines.append(
                f"- {r['recipe']} seed {r['seed']}: "
                + ", ".join(f"{m:.1f} min {b:.2f}" for m, b in r["curve"])
            )
    lines.append("")
    lines.append(f"BLEU signature: {rows[0]['bleu_signature']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--steps", type=int, default=0, help="train.max_steps for every run (0: the recipe's)"
    )
    ap.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="train.max_minutes for every run (validation excluded)",
    )
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: torch's default)")
    ap.add_argument(
        "--seeds", type=int, default=3, help="seeds 1..N for en->de (the other directions: seed 1)"
    )
    ap.add_argument(
        "--seed",
        type=int,
        action="append",
        default=[],
        help="train en->de (the first recipe) with this seed instead of 1..N; repeatable (e.g. "
        "seed 3 beside finished seeds 1-2)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time (on a CPU, with --threads 1, two use 2 cores best)",
    )
    ap.add_argument("--beam", default="1,5", help="beam sizes to sweep on valid")
    ap.add_argument(
        "--alpha",
        default="0.6,1.0,1.4,2.0",
        help="length penalties to sweep on valid (longer-trained models often choose 1.4-2.0; "
        "docs/results.md)",
    )
    ap.add_argument(
        "--average",
        default="",
        help="also try the average of the last N step checkpoints, e.g. 3,5",
    )
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help="also decode the first recipe's seeds as one ensemble (two or more seeds)",
    )
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run's config")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="only this recipe (e.g. multi30k_en_fr); repeatable",
    )
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        help="run these configs instead of the four recipes (the seeds go to the first)",
    )
    ap.add_argument(
        "--source", help="a local Multi30k folder for `nmt prepare` (default: download)"
    )
    ap.add_argument("--runs", default="runs/recipes", help="parent folder of the run dirs")
    ap.add_argument(
        "--only-table",
        action="store_true",
        help="do not train or decode; print the table of finished runs",
    )
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    args.average = [int(n) for n in args.average.split(",") if n.strip()]
    if args.threads:  # decoding (sweep, evaluate) takes torch's thread count from the environment
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    configs = [c for c in (args.config or RECIPES) if not args.only or Path(c).stem in args.only]
    seed_list = args.seed or list(range(1, args.seeds + 1))
    args.seeds = len(seed_list)
    runs = [(c, s) for c in configs for s in (seed_list if c == configs[0] else [1])]
    if args.ensemble and args.seeds < 2:
        raise SystemExit("--ensemble needs two or more --seeds")
    if args.only_table:
        dirs = [(c, s, Path(args.runs) / f"{Path(c).stem}-seed{s}") for c, s in runs]
        rows = [
            row(c, s, d, json.loads((d / "test.json").read_text()))
            for c, s, d in dirs
            if (d / "test.json").exists()
        ]
        scored = ensemble_dir(configs[0], args.seeds, args) / "test.json"
        seeds = [r for r in rows if r["recipe"] == Path(configs[0]).stem]
        if args.ensemble and scored.exists() and len(seeds) == args.seeds:
            rows.append(ensemble_row(configs[0], seeds, json.loads(scored.read_text())))
    else:
        for config in configs:
            nmt(
                "prepare",
                "--config",
                config,
                *(["--source", args.source] if args.source else []),
                *[x for s in args.set for x in ("--set", s)],
                log=Path(args.runs) / f"prepare.{Path(config).stem}.log",
            )
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda cs: run_one(*cs, args), runs))
        if args.ensemble:
            rows.append(run_ensemble(configs[0], rows[: args.seeds], args))
    if not rows:
        raise SystemExit("no finished runs")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
