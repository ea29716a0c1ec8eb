"""Stage 3: load a checkpoint (or several, as an ensemble), read text in chunks, translate each in
length-sorted batches, write its translations in input order as soon as they are done."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from nmt.attention import AttentionPlots, check_request, save
from nmt.checkpoint import load_checkpoint
from nmt.config import Config, DecodeConfig, DecodeOptions, config_from_dict
from nmt.errors import NmtError, UsageError, drop_stdout
from nmt.files import atomic_writer, check_output
from nmt.models import build_model
from nmt.models.ensemble import Ensemble
from nmt.precision import (
    DECODE_CHOICES,
    INT8_GONE,
    choose_attention_kernels,
    decode_precision,
    pack_linear_layers,
)
from nmt.sampling import Sampling
from nmt.search import Hypothesis, SearchSettings, decode_corpus
from nmt.textstream import file_chunks, stream_chunks
from nmt.tokenizer import Tokenizer


@dataclass
class Translator:
    model: nn.Module
    tok: Tokenizer
    cfg: Config
    device: torch.device
    path: str
    precision: str = "fp32"  # the weights decoding uses: fp32 or bf16
    workers: int = 1  # threads decoding batches side by side (see search_cpu.in_threads)
    # every checkpoint; more than one: `model` is their Ensemble, `path` the first
    paths: tuple[str, ...] = ()

    def settings(
        self, d: Optional[DecodeConfig] = None, sampling: Optional[Sampling] = None
    ) -> SearchSettings:
        """How to search as `d` asks (default: the checkpoint's decode config), within the
        lengths the model's positions allow; `sampling`: draw instead."""
        return SearchSettings.of(d or self.cfg.decode, self.cfg.model.max_positions, sampling)


@dataclass(frozen=True)
class Runtime:
    """Where and how decoding runs (see load_translator): `device` (None: cuda when available),
    the weights' `precision`, `workers` threads (None: the device's default), and `buffer` lines
    read, sorted by length and translated at a time."""

    device: Optional[str] = None
    precision: str = "auto"
    workers: Optional[int] = None
    buffer: int = 10_000


def load_translator(
    checkpoint: str | Path | Sequence[str | Path],
    device: Optional[str] = None,
    precision: str = "auto",
    workers: Optional[int] = None,
) -> Translator:
    """Everything needed to translate comes from the checkpoint: config, tokenizer, weights.
    `precision` (see nmt.precision): auto is bf16 where the device multiplies bf16 natively, else
    fp32 (int8 weights are CTranslate2's: INT8_GONE). `workers`: batches decoded side by side;
    default 2 on a CPU with two or more threads, each with half of them, else 1. Several
    checkpoints: decode with their ensemble (nmt.models.ensemble); they must share the tokenizer
    and the direction, and the first one's decode settings are the defaults."""
    dev = decode_device(device, precision, workers)
    precision = decode_precision(dev, precision)
    wanted = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if not wanted:
        raise NmtError("give a checkpoint (--checkpoint)")
    models, paths, positions = [], [], []
    cfg, tok = None, None
    for path in wanted:
        ckpt = load_checkpoint(path)
        own = config_from_dict(ckpt["config"], origin=f"{ckpt['path']} (config)")
        own_tok = Tokenizer.from_state(ckpt["tokenizer"], what=ckpt["path"])
        if cfg is None:
            cfg, tok = own, own_tok
        elif own_tok.sha256 != tok.sha256:
            raise NmtError(
                f"{ckpt['path']}: trained with another tokenizer than {paths[0]}; an ensemble's "
                "checkpoints must share one"
            )
        elif (own.data.src_lang, own.data.tgt_lang) != (cfg.data.src_lang, cfg.data.tgt_lang):
            raise NmtError(
                f"{ckpt['path']}: translates {own.data.src_lang}->{own.data.tgt_lang}, "
                f"but {paths[0]} {cfg.data.src_lang}->{cfg.data.tgt_lang}; "
                "an ensemble's checkpoints must translate one direction"
            )
        models.append(ready_model(ckpt, own, own_tok, dev, precision))
        paths.append(ckpt["path"])
        positions.append(own.model.max_positions)
    if len(models) > 1:
        model: nn.Module = Ensemble(models)
        # lengths every member can decode
        cfg = replace(cfg, model=replace(cfg.model, max_positions=min(positions)))
    else:
        model = models[0]
    if workers is None:
        workers = 2 if dev.type == "cpu" and torch.get_num_threads() >= 2 else 1
    return Translator(model, tok, cfg, dev, paths[0], precision, workers, tuple(paths))


def decode_device(device: Optional[str], precision: str, workers: Optional[int]) -> torch.device:
    """The device `--device` names (None: cuda when available), checked with the --precision and
    --workers asked for."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected cpu or cuda (or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here")
    if precision == "int8":
        raise UsageError(INT8_GONE)
    if precision not in DECODE_CHOICES:
        raise UsageError(f"--precision {precision}: expected one of {', '.join(DECODE_CHOICES)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: expected 1 or more")
    return dev


def members(tr: Translator) -> dict[str, list[str]]:
    """{"ensemble": [checkpoints]} for an ensemble, {} for
    one model: what evaluate's and sweep's results add."""
    return {"ensemble": list(tr.paths)} if len(tr.paths) > 1 else {}


def ready_model(
    ckpt: dict, cfg: Config, tok: Tokenizer, dev: torch.device, precision: str
) -> nn.Module:
    """The checkpoint's model on `dev`, in eval mode, with the weights `precision` asks for."""
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    model.load_state_dict(ckpt["model"])
    model.to(dev).eval()
    choose_attention_kernels(dev)
    if precision == "bf16":
        model.to(torch.bfloat16)
        if dev.type == "cpu":
            pack_linear_layers(model)
    return model


def encode_lines(tr: Translator, lines: list[str], first_line: int = 1) -> list[list[int]]:
    """Source lines -> subword ids, cut (with a warning) to what the model's positions allow.
    `first_line`: the input line number of lines[0], for the warning."""
    limit = tr.cfg.model.max_positions - 1  # one position is the source EOS
    src_ids = tr.tok.encode_src(lines)
    long = [i for i, s in enumerate(src_ids) if len(s) > limit]
    if long:
        print(
            f"warning: {len(long)} input line(s) longer than the model's {limit} subwords "
            f"were truncated (first: line {long[0] + first_line})",
            file=sys.stderr,
        )
        src_ids = [s[:limit] for s in src_ids]
    return src_ids


def translate_lines(
    tr: Translator,
    lines: list[str] | list[list[int]],
    settings: SearchSettings,
    record: bool = False,
    first_line: int = 1,
) -> list[list[Hypothesis]]:
    """Translate cleaned source lines (or their ids from `encode_lines`); returns the n-best
    hypotheses (token ids) per line, input order. `record`: each hypothesis carries the attention
    weights it was decoded with. `first_line`: the input line number of lines[0] (sampling seeds
    each line's draws with it)."""
    src_ids = lines if lines and not isinstance(lines[0], str) else encode_lines(tr, lines)
    return decode_corpus(tr.model, src_ids, settings, tr.device, record, tr.workers, first_line)


def format_output(tr: Translator, hyps: list[list[Hypothesis]], nbest: int, first: int = 0) -> str:
    """One line per input, or with n-best, Moses-style `index ||| text ||| score` lines, the
    indices counted from `first` (0-based, as Moses does)."""
    if nbest == 1:
        return "".join(t + "\n" for t in tr.tok.decode_tgt([h[0].tokens for h in hyps]))
    out = []
    for i, hs in enumerate(hyps, first):
        for h, text in zip(hs, tr.tok.decode_tgt([h.tokens for h in hs])):
            out.append(f"{i} ||| {text} ||| {h.score:.4f}\n")
    return "".join(out)


def translate(
    checkpoint: str | Sequence[str],
    input: Optional[str],
    output: Optional[str],
    given: DecodeOptions,
    runtime: Runtime = Runtime(),
    sampling: Optional[Sampling] = None,
    plots: Optional[AttentionPlots] = None,
) -> None:
    """Run stage 3: a file or stdin in, `runtime.buffer` lines at a time (fewer when no more input
    is waiting), each chunk's translations written in input order as soon as they are done: to
    stdout, or to a file written atomically. Memory is bounded by the chunk. `given`: the decode
    options given (the checkpoint's decode config has the others). `sampling`: draw one
    translation per line instead of searching (see sampling.py). `plots`: also write each
    sentence's attention weights and heatmaps (see attention.py); the input is then read as one
    chunk, for a few sentences."""
    if runtime.buffer < 1:
        raise UsageError(f"--buffer {runtime.buffer}: expected 1 or more")
    search_only = ("beam", "nbest", "no_repeat_ngram", "early_exit")
    clash = [k for k in search_only if k in given.given()]
    if sampling is not None and clash:
        flag = "--" + clash[0].replace("_", "-")
        raise UsageError(f"--sample draws one translation per line: {flag} does not apply")
    if output:
        check_output(output)  # before any work
    tr = load_translator(checkpoint, runtime.device, runtime.precision, runtime.workers)
    d = given.apply(tr.cfg.decode)
    if sampling is None and d.nbest > d.beam:
        raise UsageError(f"--nbest {d.nbest} is larger than --beam {d.beam}")
    if plots:
        check_request(plots, tr.cfg.model, len(tr.paths), tr.path)
    settings = tr.settings(d, sampling)
    if plots:  # each heatmap's JSON gives the translation's score
        settings = replace(settings, scores=True)
    size = sys.maxsize if plots else runtime.buffer
    chunks = (
        file_chunks(Path(input), size)
        if input
        else stream_chunks(sys.stdin.buffer, "<stdin>", size)
    )
    bar = tqdm(unit=" lines", disable=not (output and sys.stderr.isatty()), file=sys.stderr)
    with output_sink(output) as write, bar:
        done = 0
        for lines in chunks:
            src_ids = encode_lines(tr, lines, first_line=done + 1)
            hyps = translate_lines(tr, src_ids, settings, plots is not None, done + 1)
            write(format_output(tr, hyps, settings.nbest, first=done))
            if plots:
                best = [h[0] for h in hyps]
                save(plots, lines, src_ids, best, tr.tok)
            done += len(lines)
            bar.update(len(lines))


@contextmanager
def output_sink(output: Optional[str]) -> Iterator[Callable[[str], None]]:
    """A function that writes text where translations go: stdout, flushed at every call, or the
    file `output`, written atomically (the old file stays if anything fails on the way), or
    /dev/null or /dev/stdout, written through (see check_output)."""
    target = check_output(output) if output else None
    if output and target is None and str(output) == "/dev/null":
        yield lambda text: None
        return
    if target is None:  # stdout, also as /dev/stdout (opening that would truncate a `>>` file)

        def to_stdout(text: str) -> None:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except BrokenPipeError:  # the reader went away (`| head`): the output is cut short
                drop_stdout()
                raise NmtError("stdout: the pipe was closed before the output ended") from None
            except OSError as e:  # e.g. a full disk behind a redirection
                drop_stdout()
                raise NmtError(f"stdout: cannot write: {e.strerror or e}") from None

        yield to_stdout
        return
    try:
        with atomic_writer(target) as f:
            yield lambda text: f.write(text.encode("utf-8"))
    except OSError as e:  # a directory, a missing parent we may not create, no permission
        raise NmtError(f"{output}: cannot write: {e.strerror or e}") from None
