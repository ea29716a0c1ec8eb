"""Stage 3: load a checkpoint, read text, translate in length-sorted batches, write in input order."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from nmt.checkpoint import atomic_write_text, load_checkpoint
from nmt.config import Config, config_from_dict
from nmt.data import decode_lines, read_text
from nmt.errors import NmtError
from nmt.models import build_model
from nmt.search import Hypothesis, decode_corpus
from nmt.tokenizer import BOS, EOS, Tokenizer


@dataclass
class Translator:
    model: nn.Module
    tok: Tokenizer
    cfg: Config
    device: torch.device
    path: str


def load_translator(checkpoint: str | Path, device: Optional[str] = None) -> Translator:
    """Everything needed to translate comes from the checkpoint: config, tokenizer, weights."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], origin=f"{ckpt['path']} (config)")
    tok = Tokenizer.from_state(ckpt["tokenizer"], what=ckpt["path"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    model.load_state_dict(ckpt["model"])
    model.to(dev).eval()
    if dev.type == "cuda":
        model.to(torch.bfloat16)
    return Translator(model, tok, cfg, dev, ckpt["path"])


def translate_lines(
    tr: Translator, lines: list[str], beam: int, alpha: float, nbest: int = 1,
    max_len_a: Optional[float] = None, max_len_b: Optional[int] = None, max_tokens: Optional[int] = None,
) -> list[list[Hypothesis]]:
    """Translate cleaned source lines; returns the n-best hypotheses (token ids) per line, input order."""
    d, limit = tr.cfg.decode, tr.cfg.model.max_positions - 1  # one position is the source EOS
    src_ids = tr.tok.encode_src(lines)
    long = [i for i, s in enumerate(src_ids) if len(s) > limit]
    if long:
        print(f"warning: {len(long)} input line(s) longer than the model's {limit} subwords were truncated "
              f"(first: line {long[0] + 1})", file=sys.stderr)
        src_ids = [s[:limit] for s in src_ids]
    return decode_corpus(
        tr.model, src_ids, tr.device, max_tokens or d.max_tokens, beam, alpha,
        d.max_len_a if max_len_a is None else max_len_a, d.max_len_b if max_len_b is None else max_len_b,
        tr.cfg.model.max_positions, BOS, EOS, nbest=nbest,
    )


def format_output(tr: Translator, hyps: list[list[Hypothesis]], nbest: int) -> str:
    """One line per input, or with n-best, Moses-style `index ||| text ||| score` lines."""
    if nbest == 1:
        return "".join(t + "\n" for t in tr.tok.decode_tgt([h[0].tokens for h in hyps]))
    out = []
    for i, hs in enumerate(hyps):
        for h, text in zip(hs, tr.tok.decode_tgt([h.tokens for h in hs])):
            out.append(f"{i} ||| {text} ||| {h.score:.4f}\n")
    return "".join(out)


def translate(
    checkpoint: str, input: Optional[str], output: Optional[str], beam: Optional[int], alpha: Optional[float],
    nbest: int, device: Optional[str] = None,
) -> None:
    """Run stage 3: a file or stdin in, a file (written atomically) or stdout out."""
    tr = load_translator(checkpoint, device)
    beam = beam or tr.cfg.decode.beam
    if nbest > beam:
        raise NmtError(f"--nbest {nbest} is larger than --beam {beam}")
    text = read_text(Path(input)) if input else decode_lines(sys.stdin.buffer.read(), "<stdin>")
    hyps = translate_lines(tr, text.lines, beam, tr.cfg.decode.alpha if alpha is None else alpha, nbest)
    result = format_output(tr, hyps, nbest)
    if output:
        try:
            atomic_write_text(Path(output), result)
        except OSError as e:  # a directory, a missing parent we may not create, no permission
            raise NmtError(f"{output}: cannot write: {e.strerror or e}") from None
    else:
        sys.stdout.write(result)
        sys.stdout.flush()
