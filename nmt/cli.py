"""Command line: parses flags, loads the config, calls one stage function. No logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from nmt.errors import NmtError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train, run and evaluate neural machine translation models.",
)

CONFIG = typer.Option(..., "--config", "-c", help="YAML config (see configs/base.yaml for every key).")
SETS = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable).")


@app.command()
def prepare(
    config: Path = CONFIG,
    source: Optional[str] = typer.Option(None, help="Local folder holding {split}.{lang}[.gz] (overrides data.source)."),
    set_: list[str] = SETS,
) -> None:
    """Check and clean the corpus, train SentencePiece, write the prepared directory."""
    from nmt.config import load_config

    # --source stands in for data.source, also where the config leaves it null (corpus 'files' needs one)
    cfg = load_config(config, [*set_, f"data.source={json.dumps(source)}"] if source else set_)
    from nmt.prepare import prepare as run  # heavy imports after the config is known to be good

    run(cfg, source=source, log=lambda m: print(m, file=sys.stderr))


@app.command()
def train(
    config: Path = CONFIG,
    run_dir: Optional[Path] = typer.Option(None, help="Where checkpoints and logs go (default runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its newest intact checkpoint."),
    init: Optional[str] = typer.Option(None, help="Fine-tune: start from this checkpoint's weights (same tokenizer and model config)."),
    set_: list[str] = SETS,
) -> None:
    """Train a model on a prepared directory."""
    from nmt.config import load_config

    cfg = load_config(config, set_)
    from nmt.train import train as run  # heavy imports after the config is known to be good

    run(cfg, run_dir, resume, init)


@app.command()
def translate(
    checkpoint: str = typer.Option(..., help="A checkpoint file, or a run directory (uses best.pt)."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Text file to translate (default stdin)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Where to write (default stdout)."),
    beam: Optional[int] = typer.Option(None, min=1, help="Beam size; 1 is greedy (default: the checkpoint's decode.beam)."),
    alpha: Optional[float] = typer.Option(None, min=0.0, help="Length penalty exponent (default: decode.alpha)."),
    nbest: int = typer.Option(1, min=1, help="Hypotheses per sentence; >1 prints 'index ||| text ||| score'."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Translate a text file or stdin with a trained checkpoint."""
    from nmt.translate import translate as run

    run(checkpoint, input, output, beam, alpha, nbest, device)


@app.command()
def evaluate(
    hyp: Optional[str] = typer.Option(None, help="Detokenized hypotheses, one per line."),
    ref: Optional[str] = typer.Option(None, help="References, aligned with --hyp."),
    checkpoint: Optional[str] = typer.Option(None, help="Translate --split with this checkpoint and score it."),
    split: str = typer.Option("test", help="valid or test (with --checkpoint)."),
    beam: Optional[int] = typer.Option(None, min=1, help="Beam size (with --checkpoint)."),
    alpha: Optional[float] = typer.Option(None, min=0.0, help="Length penalty (with --checkpoint)."),
    prepared_dir: Optional[str] = typer.Option(None, help="Prepared dir (default: the checkpoint's)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score hypotheses with sacreBLEU, chrF and TER (signatures included)."""
    from nmt.evaluate import evaluate_checkpoint, evaluate_files, format_report

    if checkpoint and (hyp or ref):
        raise NmtError("give either --checkpoint (and --split) or --hyp and --ref, not both")
    if checkpoint:
        result = evaluate_checkpoint(checkpoint, split, beam, alpha, prepared_dir, device)
    elif hyp and ref:
        result = evaluate_files(hyp, ref)
    else:
        raise NmtError("give --hyp FILE --ref FILE, or --checkpoint P --split test")
    print(json.dumps(result, indent=2) if as_json else format_report(result))


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run directory (holds metrics.jsonl)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG to write (default RUN_DIR/curves.png)."),
) -> None:
    """Draw the learning curves of a run (loss, BLEU, learning rate against step and time) into a PNG."""
    from nmt.plot import plot_curves

    print(plot_curves(run_dir, output))


def main() -> None:
    try:
        app()
    except NmtError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
