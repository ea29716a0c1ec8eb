"""Command line: parses flags, loads the config, calls one stage function. No logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from nmt.errors import NmtError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, run and evaluate neural machine translation models.",
)

CONFIG = typer.Option(
    ..., "--config", "-c", help="YAML config (see configs/base.yaml for every key)."
)
SETS = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable).")


@app.command()
def prepare(
    config: Path = CONFIG,
    source: Optional[str] = typer.Option(
        None, help="Local folder holding {split}.{lang}[.gz] (overrides data.source)."
    ),
    set_: list[str] = SETS,
) -> None:
    """Check and clean the corpus, train SentencePiece, write the prepared directory."""
    from nmt.config import load_config

    # --source stands in for data.source, also where the
    # config leaves it null (corpus 'files' needs one)
    cfg = load_config(config, [*set_, f"data.source={json.dumps(source)}"] if source else set_)
    from nmt.prepare import prepare as run  # heavy imports after the config is known to be good

    run(cfg, source=source, log=lambda m: print(m, file=sys.stderr))


@app.command()
def train(
    config: Path = CONFIG,
    run_dir: Optional[Path] = typer.Option(
        None, help="Where checkpoints and logs go (default runs/<config name>)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir from its newest intact checkpoint."
    ),
    init: Optional[str] = typer.Option(
        None,
        help="Fine-tune: start from this checkpoint's weights (same tokenizer and model config).",
    ),
    set_: list[str] = SETS,
) -> None:
    """Train a model on a prepared directory."""
    from nmt.config import load_config

    cfg = load_config(config, set_)
    from nmt.train import train as run  # heavy imports after the config is known to be good

    run(cfg, run_dir, resume, init)


BEAM = typer.Option(
    None, min=1, help="Beam size; 1 is greedy (default: the checkpoint's decode.beam)."
)
ALPHA = typer.Option(
    None,
    min=0.0,
    help="GNMT length penalty exponent; 0 ranks by log-probability (default: decode.alpha).",
)
MAX_LEN_A = typer.Option(
    None,
    min=0.0,
    help="Output length limit: A x source length + B subwords (default: decode.max_len_a).",
)
MAX_LEN_B = typer.Option(None, min=1, help="See --max-len-a (default: decode.max_len_b).")
NO_REPEAT = typer.Option(
    None,
    min=0,
    help="Block any repeated n-gram of this size; 0 is off (default: decode.no_repeat_ngram).",
)
EARLY_EXIT = typer.Option(
    None,
    "--early-exit/--no-early-exit",
    help="Beam search: end a sentence once its best continuation ends it "
    "(OpenNMT-py's rule: faster, a little less search), or once it has --beam finished hypotheses "
    "(fairseq's and "
    "CTranslate2's; default: decode.early_exit).",
)
DEVICE = typer.Option(None, help="cpu or cuda (default: cuda when available).")
PRECISION = typer.Option(
    "auto",
    help="Weights for decoding: auto (bf16 on a GPU or a CPU with bf16 instructions, else fp32), "
    "fp32, bf16, or int8 (CPU only: every Linear layer quantized). int8, and bf16 on a CPU with "
    "bf16 instructions, decode faster than fp32 at about the same BLEU (docs/speed.md).",
)
WORKERS = typer.Option(
    None,
    min=1,
    help="Batches decoded side by side, in threads that share the CPU threads (default: 2 on a CPU "
    "with two or more threads, 1 on a GPU).",
)


@app.command()
def translate(
    checkpoint: list[str] = typer.Option(
        ...,
        help="A checkpoint file, or a run directory (uses best.pt). Repeat it to decode with "
        "the ensemble of several (same tokenizer and direction): their probabilities are averaged.",
    ),
    input: Optional[str] = typer.Option(
        None, "--input", "-i", help="Text file to translate (default stdin)."
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Where to write (default stdout)."
    ),
    beam: Optional[int] = BEAM,
    alpha: Optional[float] = ALPHA,
    max_len_a: Optional[float] = MAX_LEN_A,
    max_len_b: Optional[int] = MAX_LEN_B,
    no_repeat_ngram: Optional[int] = NO_REPEAT,
    early_exit: Optional[bool] = EARLY_EXIT,
    nbest: Optional[int] = typer.Option(
        None, min=1, help="Hypotheses per sentence; >1 prints 'index ||| text ||| score'."
    ),
    attention_dir: Optional[str] = typer.Option(
        None,
        help="Also write each sentence's attention weights (JSON, NPZ) and heatmaps (PNG) here; "
        "for a few sentences.",
    ),
    attention_layer: Optional[int] = typer.Option(
        None,
        min=1,
        help="With --attention-dir: the layer whose heads get a grid (default: the last).",
    ),
    device: Optional[str] = DEVICE,
    precision: str = PRECISION,
    workers: Optional[int] = WORKERS,
    buffer: int = typer.Option(
        10_000,
        help="Lines read and translated at a time (fewer when no more input is waiting); each "
        "chunk's translations are written as soon as they are done.",
    ),
    sample: bool = typer.Option(
        False, "--sample", help="Draw each output token from the model instead of searching."
    ),
    topk: Optional[int] = typer.Option(
        None, help="With --sample: draw among the K most probable tokens (0: all; default 0)."
    ),
    topp: Optional[float] = typer.Option(
        None, help="With --sample: among the fewest tokens holding probability P (default 1)."
    ),
    temperature: Optional[float] = typer.Option(
        None, help="With --sample: divide the log-probabilities by T (0: greedy; default 1)."
    ),
    seed: Optional[int] = typer.Option(
        None, help="With --sample: the seed; each line's draws depend on it and its line number."
    ),
) -> None:
    """Translate a text file or stdin with a trained checkpoint."""
    from nmt.sampling import Sampling
    from nmt.translate import translate as run

    knobs = {"topk": topk, "topp": topp, "temperature": temperature, "seed": seed}
    given = {k: v for k, v in knobs.items() if v is not None}
    if given and not sample:
        raise NmtError(f"--{next(iter(given))} is a sampling option: add --sample")

    run(
        checkpoint,
        input,
        output,
        device,
        attention_dir,
        attention_layer,
        precision,
        workers,
        buffer,
        Sampling(**given) if sample else None,
        beam=beam,
        alpha=alpha,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        no_repeat_ngram=no_repeat_ngram,
        early_exit=early_exit,
        nbest=nbest,
    )


@app.command()
def evaluate(
    hyp: Optional[str] = typer.Option(None, help="Detokenized hypotheses, one per line."),
    ref: Optional[str] = typer.Option(None, help="References, aligned with --hyp."),
    checkpoint: Optional[list[str]] = typer.Option(
        None,
        help="Translate --split with this checkpoint and score it; repeat it for an "
        "ensemble (see translate).",
    ),
    split: str = typer.Option("test", help="valid or test (with --checkpoint)."),
    beam: Optional[int] = BEAM,
    alpha: Optional[float] = ALPHA,
    max_len_a: Optional[float] = MAX_LEN_A,
    max_len_b: Optional[int] = MAX_LEN_B,
    no_repeat_ngram: Optional[int] = NO_REPEAT,
    early_exit: Optional[bool] = EARLY_EXIT,
    lang: Optional[str] = typer.Option(
        None, help="With --hyp/--ref: the target language; adds paper-style BLEU (Moses-tokenized)."
    ),
    prepared_dir: Optional[str] = typer.Option(
        None, help="Prepared dir (default: the checkpoint's)."
    ),
    device: Optional[str] = DEVICE,
    precision: str = PRECISION,
    workers: Optional[int] = WORKERS,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score hypotheses with sacreBLEU, chrF and TER (signatures included)."""
    from nmt.evaluate import evaluate_checkpoint, evaluate_files, format_report

    if checkpoint and (hyp or ref):
        raise NmtError("give either --checkpoint (and --split) or --hyp and --ref, not both")
    if checkpoint:
        result = evaluate_checkpoint(
            checkpoint,
            split,
            prepared_dir,
            device,
            precision,
            workers,
            beam=beam,
            alpha=alpha,
            max_len_a=max_len_a,
            max_len_b=max_len_b,
            no_repeat_ngram=no_repeat_ngram,
            early_exit=early_exit,
        )
    elif hyp and ref:
        result = evaluate_files(hyp, ref, lang)
    else:
        raise NmtError("give --hyp FILE --ref FILE, or --checkpoint P --split test")
    print(json.dumps(result, indent=2) if as_json else format_report(result))


def _numbers(text: str, kind: type, what: str, least: int) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NmtError(
            f"{what} {text!r}: expected comma-separated numbers, e.g. "
            f"{'1,4,8' if kind is int else '0.6,1.0'}"
        ) from None
    if not values or min(values) < least:
        raise NmtError(f"{what} {text!r}: give one or more values, each at least {least}")
    return values


def _switches(text: str, what: str) -> list[bool]:
    words = {"no": False, "yes": True, "false": False, "true": True, "off": False, "on": True}
    values = [words.get(v.strip().lower()) for v in text.split(",") if v.strip()]
    if not values or None in values:
        raise NmtError(f"{what} {text!r}: expected no, yes or no,yes")
    return values


@app.command()
def sweep(
    checkpoint: list[str] = typer.Option(
        ...,
        help="A checkpoint file, or a run directory (uses best.pt); repeat it for an ensemble "
        "(see translate).",
    ),
    beam: str = typer.Option("1,4,5,8", help="Beam sizes to try, comma-separated."),
    alpha: str = typer.Option("0.0,0.6,1.0", help="Length penalties to try, comma-separated."),
    no_repeat_ngram: str = typer.Option(
        "0", help="n-gram blocking sizes to try (0 is off), comma-separated."
    ),
    early_exit: str = typer.Option(
        "no",
        "--early-exit",
        help="Beam search stopping rules to try: no (fairseq's), yes (OpenNMT-py's "
        "early exit), or no,yes (see translate --early-exit).",
    ),
    prepared_dir: Optional[str] = typer.Option(
        None, help="Prepared dir (default: the checkpoint's)."
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Also write every score as JSON here."
    ),
    device: Optional[str] = DEVICE,
    precision: str = PRECISION,
    workers: Optional[int] = WORKERS,
) -> None:
    """Score a grid of decoding settings on the valid split (never test) and print the best one."""
    from nmt.sweep import sweep as run

    result = run(
        checkpoint,
        _numbers(beam, int, "--beam", 1),
        _numbers(alpha, float, "--alpha", 0),
        _numbers(no_repeat_ngram, int, "--no-repeat-ngram", 0),
        prepared_dir,
        device,
        output,
        precision=precision,
        workers=workers,
        early_exits=_switches(early_exit, "--early-exit"),
    )
    b = result["best"]
    print(
        f"best on valid: --beam {b['beam']} --alpha {b['alpha']} --no-repeat-ngram "
        f"{b['no_repeat_ngram']} "
        f"--{'' if b['early_exit'] else 'no-'}early-exit  BLEU {b['bleu']:.2f}  "
        f"[{result['signature']}]"
    )


@app.command()
def average(
    checkpoints: Optional[list[Path]] = typer.Argument(
        None, help="Checkpoint files to average (or --run-dir with --last/--best)."
    ),
    run_dir: Optional[Path] = typer.Option(
        None, help="Take the checkpoints from this run's checkpoints/ folder."
    ),
    last: Optional[int] = typer.Option(None, min=1, help="With --run-dir: the N newest saves."),
    best: Optional[int] = typer.Option(
        None, min=1, help="With --run-dir: the N best by valid BLEU."
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Where to write (default RUN_DIR/average-last-N.pt or -best-N.pt).",
    ),
) -> None:
    """Average the weights of several checkpoints into a new checkpoint."""
    from nmt.average import average as run
    from nmt.average import select

    if run_dir is not None:
        if checkpoints:
            raise NmtError("give checkpoint files or --run-dir, not both")
        checkpoints = select(run_dir, last, best)
        output = output or run_dir / (
            f"average-last-{last}.pt" if last else f"average-best-{best}.pt"
        )
    elif not checkpoints:
        raise NmtError("give checkpoint files to average, or --run-dir RUN --last N (or --best N)")
    elif output is None:
        raise NmtError("give --output FILE for the averaged checkpoint")
    result = run(list(checkpoints), output)
    steps = ", ".join(str(s["step"]) for s in result["averaged_from"])
    print(
        f"averaged {len(result['averaged_from'])} checkpoints (steps {steps}) into "
        f"{result['output']}"
    )


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run directory (holds metrics.jsonl)."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="PNG to write (default RUN_DIR/curves.png)."
    ),
) -> None:
    """Draw a run's learning curves (loss, BLEU, learning rate by step and time) into a PNG."""
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
