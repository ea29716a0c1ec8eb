"""Command line: parses flags, loads the config, calls one stage function. No logic lives here.

Longer than most modules because each command spells out its flags with their help text (the manual
`nmt COMMAND --help` prints); options several commands share are defined once, in groups.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer

from nmt.config import DecodeOptions
from nmt.errors import NmtError, UsageError, drop_stdout

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wraps at the terminal's width, cuts nothing
    help="Train, run and evaluate neural machine translation models.",
)

CONFIG = typer.Option(
    ..., "--config", "-c", help="YAML config (see configs/base.yaml for every key).", metavar="FILE"
)
SETS = typer.Option(
    [], "--set", help="Override a config key: section.key=value (repeatable).", metavar="KEY=VALUE"
)


@app.command()
def prepare(
    config: Path = CONFIG,
    source: Optional[str] = typer.Option(
        None,
        help="Local folder holding {split}.{lang}[.gz] (overrides data.source).",
        metavar="DIR",
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
        None, help="Where checkpoints and logs go (default runs/<config name>).", metavar="DIR"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir from its newest intact checkpoint."
    ),
    init: Optional[str] = typer.Option(
        None,
        help="Fine-tune: start from this checkpoint's weights (same tokenizer and model config).",
        metavar="CKPT",
    ),
    set_: list[str] = SETS,
) -> None:
    """Train a model on a prepared directory."""
    from nmt.config import load_config

    cfg = load_config(config, set_)
    from nmt.train import train as run  # heavy imports after the config is known to be good

    run(cfg, run_dir, resume, init)


# Options several commands share, each defined once; `takes` adds a group to a command and hands
# the command the group's values as one dict.
DECODE_OPTIONS = {
    "beam": (
        Optional[int],
        typer.Option(
            None,
            min=1,
            help="Beam size; 1 is greedy (default: the checkpoint's decode.beam).",
            metavar="N",
        ),
    ),
    "alpha": (
        Optional[float],
        typer.Option(
            None,
            min=0.0,
            help="GNMT length penalty exponent; 0 ranks by log-probability (default: "
            "decode.alpha).",
            metavar="A",
        ),
    ),
    "max_len_a": (
        Optional[float],
        typer.Option(
            None,
            min=0.0,
            help="Output length limit: A x source length + B subwords (default: decode.max_len_a).",
            metavar="A",
        ),
    ),
    "max_len_b": (
        Optional[int],
        typer.Option(None, min=1, help="See --max-len-a (default: decode.max_len_b).", metavar="B"),
    ),
    "no_repeat_ngram": (
        Optional[int],
        typer.Option(
            None,
            min=0,
            help="Block any repeated n-gram of this size; 0 is off (default: "
            "decode.no_repeat_ngram).",
            metavar="N",
        ),
    ),
    "early_exit": (
        Optional[bool],
        typer.Option(
            None,
            "--early-exit/--no-early-exit",
            help="Beam search: end a sentence once its best continuation ends it (OpenNMT-py's "
            "rule: faster, a little less search), or once it has --beam finished hypotheses "
            "(fairseq's and CTranslate2's; default: decode.early_exit).",
        ),
    ),
}
RUNTIME_OPTIONS = {
    "device": (
        Optional[str],
        typer.Option(None, help="cpu or cuda (default: cuda when available).", metavar="DEVICE"),
    ),
    "precision": (
        str,
        typer.Option(
            "auto",
            help="Weights for decoding: auto (bf16 on a GPU or a CPU with bf16 instructions, else "
            "fp32), fp32 or bf16. bf16 on a CPU with bf16 instructions decodes faster than fp32 at "
            "about the same BLEU (docs/speed.md); for int8 weights, nmt export to CTranslate2.",
            metavar="P",
        ),
    ),
    "workers": (
        Optional[int],
        typer.Option(
            None,
            min=1,
            help="Batches decoded side by side, in threads that share the CPU threads (default: 2 "
            "on a CPU with two or more threads, 1 on a GPU).",
            metavar="N",
        ),
    ),
}


def takes(
    group: str, options: dict[str, tuple[Any, Any]], build: Callable[..., Any] = dict
) -> Callable[[Callable], Callable]:
    """A command decorator for options several commands share: the command's parameter `group`
    stands for `options` (name -> (type, typer.Option)), which the command line shows in its
    place; the command receives them as one value, `build(**values)`."""

    def add(command: Callable) -> Callable:
        params = []
        for p in inspect.signature(command, eval_str=True).parameters.values():
            if p.name != group:
                params.append(p)
                continue
            for name, (kind, opt) in options.items():
                params.append(inspect.Parameter(name, p.kind, default=opt, annotation=kind))

        @functools.wraps(command)
        def with_group(**values: Any) -> Any:
            given = build(**{name: values.pop(name) for name in options})
            return command(**values, **{group: given})

        with_group.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        with_group.__annotations__ = {p.name: p.annotation for p in params}
        del with_group.__wrapped__  # typer reads the signature above, not the command's own
        return with_group

    return add


def _runtime(values: dict[str, Any], buffer: int = 10_000) -> Any:
    from nmt.translate import Runtime

    return Runtime(values["device"], values["precision"], values["workers"], buffer)


@app.command()
@takes("runtime", RUNTIME_OPTIONS)
@takes("decode", DECODE_OPTIONS, DecodeOptions)
def translate(
    checkpoint: list[str] = typer.Option(
        ...,
        help="A checkpoint file, or a run directory (uses best.pt). Repeat it to decode with "
        "the ensemble of several (same tokenizer and direction): their probabilities are averaged.",
        metavar="CKPT",
    ),
    input: Optional[str] = typer.Option(
        None, "--input", "-i", help="Text file to translate (default stdin).", metavar="FILE"
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Where to write (default stdout).", metavar="FILE"
    ),
    decode: Any = None,  # DECODE_OPTIONS here (see takes)
    nbest: Optional[int] = typer.Option(
        None,
        min=1,
        help="Hypotheses per sentence; >1 prints 'index ||| text ||| score'.",
        metavar="N",
    ),
    attention_dir: Optional[str] = typer.Option(
        None,
        help="Also write each sentence's attention weights (JSON, NPZ) and heatmaps (PNG) here; "
        "for a few sentences.",
        metavar="DIR",
    ),
    attention_layer: Optional[int] = typer.Option(
        None,
        min=1,
        help="With --attention-dir: the layer whose heads get a grid (default: the last).",
        metavar="L",
    ),
    runtime: Any = None,  # RUNTIME_OPTIONS here (see takes)
    buffer: int = typer.Option(
        10_000,
        help="Lines read and translated at a time (fewer when no more input is waiting); each "
        "chunk's translations are written as soon as they are done.",
        metavar="N",
    ),
    sample: bool = typer.Option(
        False, "--sample", help="Draw each output token from the model instead of searching."
    ),
    topk: Optional[int] = typer.Option(
        None,
        help="With --sample: draw among the K most probable tokens (0: all; default 0).",
        metavar="K",
    ),
    topp: Optional[float] = typer.Option(
        None,
        help="With --sample: among the fewest tokens holding probability P (default 1).",
        metavar="P",
    ),
    temperature: Optional[float] = typer.Option(
        None,
        help="With --sample: divide the log-probabilities by T (0: greedy; default 1).",
        metavar="T",
    ),
    seed: Optional[int] = typer.Option(
        None,
        help="With --sample: the seed; each line's draws depend on it and its line number.",
        metavar="S",
    ),
) -> None:
    """Translate a text file or stdin with a trained checkpoint."""
    from nmt.attention import AttentionPlots
    from nmt.sampling import Sampling
    from nmt.translate import translate as run

    knobs = {"topk": topk, "topp": topp, "temperature": temperature, "seed": seed}
    given = {k: v for k, v in knobs.items() if v is not None}
    if given and not sample:
        raise UsageError(f"--{next(iter(given))} is a sampling option: add --sample")
    sampling = Sampling(**given) if sample else None
    plots = AttentionPlots(attention_dir, attention_layer) if attention_dir else None
    run(
        checkpoint,
        input,
        output,
        replace(decode, nbest=nbest),
        _runtime(runtime, buffer),
        sampling,
        plots,
    )


@app.command()
@takes("runtime", RUNTIME_OPTIONS)
@takes("decode", DECODE_OPTIONS, DecodeOptions)
def evaluate(
    hyp: Optional[str] = typer.Option(
        None, help="Detokenized hypotheses, one per line.", metavar="FILE"
    ),
    ref: Optional[str] = typer.Option(None, help="References, aligned with --hyp.", metavar="FILE"),
    checkpoint: Optional[list[str]] = typer.Option(
        None,
        help="Translate --split with this checkpoint and score it; repeat it for an "
        "ensemble (see translate).",
        metavar="CKPT",
    ),
    split: str = typer.Option("test", help="valid or test (with --checkpoint).", metavar="SPLIT"),
    decode: Any = None,  # DECODE_OPTIONS here (see takes)
    lang: Optional[str] = typer.Option(
        None,
        help="With --hyp/--ref: the target language; adds paper-style BLEU (Moses-tokenized).",
        metavar="LANG",
    ),
    prepared_dir: Optional[str] = typer.Option(
        None, help="Prepared dir (default: the checkpoint's).", metavar="DIR"
    ),
    runtime: Any = None,  # RUNTIME_OPTIONS here (see takes)
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score hypotheses with sacreBLEU, chrF and TER (signatures included)."""
    from nmt.evaluate import evaluate_checkpoint, evaluate_files, format_report

    if checkpoint and (hyp or ref):
        raise UsageError("give either --checkpoint (and --split) or --hyp and --ref, not both")
    if checkpoint:
        result = evaluate_checkpoint(checkpoint, split, prepared_dir, decode, _runtime(runtime))
    elif hyp and ref:
        if lang:
            from nmt.metrics import moses_languages

            if lang not in moses_languages():
                raise UsageError(
                    f"--lang {lang}: the Moses tokenizer has no rules for it; one of "
                    f"{' '.join(moses_languages())}"
                )
        result = evaluate_files(hyp, ref, lang)
    else:
        raise UsageError("give --hyp FILE --ref FILE, or --checkpoint P --split test")
    say(json.dumps(result, indent=2) if as_json else format_report(result))


def _numbers(text: str, kind: type, what: str, least: int) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"{what} {text!r}: expected comma-separated numbers, e.g. "
            f"{'1,4,8' if kind is int else '0.6,1.0'}"
        ) from None
    if not values or min(values) < least:
        raise UsageError(f"{what} {text!r}: give one or more values, each at least {least}")
    return values


def _switches(text: str, what: str) -> list[bool]:
    words = {"no": False, "yes": True, "false": False, "true": True, "off": False, "on": True}
    values = [words.get(v.strip().lower()) for v in text.split(",") if v.strip()]
    if not values or None in values:
        raise UsageError(f"{what} {text!r}: expected no, yes or no,yes")
    return values


@app.command()
@takes("runtime", RUNTIME_OPTIONS)
def sweep(
    checkpoint: list[str] = typer.Option(
        ...,
        help="A checkpoint file, or a run directory (uses best.pt); repeat it for an ensemble "
        "(see translate).",
        metavar="CKPT",
    ),
    beam: str = typer.Option("1,4,5,8", help="Beam sizes to try, comma-separated.", metavar="LIST"),
    alpha: str = typer.Option(
        "0.0,0.6,1.0", help="Length penalties to try, comma-separated.", metavar="LIST"
    ),
    no_repeat_ngram: str = typer.Option(
        "0", help="n-gram blocking sizes to try (0 is off), comma-separated.", metavar="LIST"
    ),
    early_exit: str = typer.Option(
        "no",
        "--early-exit",
        help="Beam search stopping rules to try: no (fairseq's), yes (OpenNMT-py's "
        "early exit), or no,yes (see translate --early-exit).",
        metavar="LIST",
    ),
    prepared_dir: Optional[str] = typer.Option(
        None, help="Prepared dir (default: the checkpoint's).", metavar="DIR"
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Also write every score as JSON here.", metavar="FILE"
    ),
    runtime: Any = None,  # RUNTIME_OPTIONS here (see takes)
) -> None:
    """Score a grid of decoding settings on the valid split (never test) and print the best one."""
    from nmt.sweep import Grid
    from nmt.sweep import sweep as run

    grid = Grid(
        _numbers(beam, int, "--beam", 1),
        _numbers(alpha, float, "--alpha", 0),
        _numbers(no_repeat_ngram, int, "--no-repeat-ngram", 0),
        _switches(early_exit, "--early-exit"),
    )
    result = run(checkpoint, grid, prepared_dir, output, _runtime(runtime))
    b = result["best"]
    say(
        f"best on valid: --beam {b['beam']} --alpha {b['alpha']} --no-repeat-ngram "
        f"{b['no_repeat_ngram']} "
        f"--{'' if b['early_exit'] else 'no-'}early-exit  BLEU {b['bleu']:.2f}  "
        f"[{result['signature']}]"
    )


@app.command()
def export(
    checkpoint: list[str] = typer.Option(
        ..., help="The checkpoint (or a run directory: its best.pt) to convert.", metavar="CKPT"
    ),
    fmt: str = typer.Option(
        "ctranslate2", "--format", help="What to convert to: ctranslate2.", metavar="FORMAT"
    ),
    output: str = typer.Option(
        ..., "--output", "-o", help="The model folder to write (replaced whole).", metavar="DIR"
    ),
    quantization: Optional[str] = typer.Option(
        None,
        help="Store the weights quantized: int8, int8_float32, int8_float16, int8_bfloat16, "
        "float16 or bfloat16 (default: float32, as trained).",
        metavar="Q",
    ),
) -> None:
    """Convert a trained Transformer for CTranslate2 (fast CPU and GPU inference)."""
    from nmt.export import export as run

    say(f"exported {checkpoint[0]} to {run(checkpoint, fmt, output, quantization)}")


@app.command()
@takes("runtime", RUNTIME_OPTIONS)
def serve(
    checkpoint: list[str] = typer.Option(
        ...,
        help="A checkpoint file, or a run directory (uses best.pt); repeat it for an ensemble.",
        metavar="CKPT",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on.", metavar="HOST"),
    port: int = typer.Option(8080, min=0, help="Port to listen on (0: a free one).", metavar="N"),
    max_sentences: int = typer.Option(64, min=1, help="Sentences a request may hold.", metavar="N"),
    max_chars: int = typer.Option(1000, min=1, help="Characters a sentence may hold.", metavar="N"),
    batch_wait_ms: float = typer.Option(
        5.0,
        min=0.0,
        help="How long the decoder waits for more requests to translate together.",
        metavar="MS",
    ),
    runtime: Any = None,  # RUNTIME_OPTIONS here (see takes)
) -> None:
    """Serve translations over HTTP: POST /translate {"sentences": [...]}, GET /health."""
    from nmt.serve import Limits
    from nmt.serve import serve as run

    limits = Limits(max_sentences=max_sentences, max_chars=max_chars, wait_ms=batch_wait_ms)
    run(checkpoint, host, port, _runtime(runtime), limits)


@app.command()
def average(
    checkpoints: Optional[list[Path]] = typer.Argument(
        None, help="Checkpoint files to average (or --run-dir with --last/--best)."
    ),
    run_dir: Optional[Path] = typer.Option(
        None, help="Take the checkpoints from this run's checkpoints/ folder.", metavar="DIR"
    ),
    last: Optional[int] = typer.Option(
        None, min=1, help="With --run-dir: the N newest saves.", metavar="N"
    ),
    best: Optional[int] = typer.Option(
        None, min=1, help="With --run-dir: the N best by valid BLEU.", metavar="N"
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Where to write (default RUN_DIR/average-last-N.pt or -best-N.pt).",
        metavar="FILE",
    ),
) -> None:
    """Average the weights of several checkpoints into a new checkpoint."""
    from nmt.average import average as run
    from nmt.average import select

    if run_dir is not None:
        if checkpoints:
            raise UsageError("give checkpoint files or --run-dir, not both")
        checkpoints = select(run_dir, last, best)
        output = output or run_dir / (
            f"average-last-{last}.pt" if last else f"average-best-{best}.pt"
        )
    elif not checkpoints:
        raise UsageError(
            "give checkpoint files to average, or --run-dir RUN --last N (or --best N)"
        )
    elif output is None:
        raise UsageError("give --output FILE for the averaged checkpoint")
    result = run(list(checkpoints), output)
    steps = ", ".join(str(s["step"]) for s in result["averaged_from"])
    say(
        f"averaged {len(result['averaged_from'])} checkpoints (steps {steps}) into "
        f"{result['output']}"
    )


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run directory (holds metrics.jsonl)."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="PNG to write (default RUN_DIR/curves.png).", metavar="FILE"
    ),
) -> None:
    """Draw a run's learning curves (loss, BLEU, learning rate by step and time) into a PNG."""
    from nmt.plot import plot_curves

    say(str(plot_curves(run_dir, output)))


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error, no-arguments-help and abort exceptions: typer's own copy of click
    (newer typer) and click's (older typer)."""
    found: tuple[list, list, list] = ([], [], [])
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for kinds, attr in zip(found, ("UsageError", "NoArgsIsHelpError", "Abort")):
            if hasattr(module, attr):
                kinds.append(getattr(module, attr))
    usage, no_args, abort = found
    abort.append(typer.Abort)  # typer's own (end of input at a prompt)
    return tuple(usage), tuple(no_args), tuple(abort)


def say(text: str) -> None:
    """A result on stdout: a failure to write it (a full disk, a closed pipe) is one error line."""
    try:
        print(text, flush=True)
    except OSError as e:
        drop_stdout()
        reason = "the pipe was closed" if isinstance(e, BrokenPipeError) else e.strerror or e
        raise NmtError(f"stdout: cannot write: {reason}") from None


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:  # a full disk behind a redirection
        drop_stdout()
        raise NmtError(f"stdout: cannot write: {e.strerror or e}") from None


def main() -> None:
    """The entry point: every error a user can cause is one `error:` line and a non-zero exit
    (2 for a wrong command line), never a traceback."""
    usage, no_args, abort = _click_errors()
    try:
        code = app(standalone_mode=False)
        _flush_stdout()  # here, where a failure is one line, not at exit
    except usage as e:
        if isinstance(e, no_args):
            print(e.format_message(), file=sys.stderr)  # `nmt` alone: the help
            sys.exit(2)
        print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
        sys.exit(2)
    except NmtError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)
    except (KeyboardInterrupt, *abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # the reader went away (`| head`): say so once, without writing to the closed pipe again
        drop_stdout()
        print("error: stdout: the pipe was closed before the output ended", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a full disk, a permission, a path that is not what it should be
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer turns Ctrl-C into 130
