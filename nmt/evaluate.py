"""Stage 4: sacreBLEU, chrF and TER (with signatures)
for a hypothesis file or a checkpoint on a split."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from nmt.config import DecodeConfig, DecodeOptions
from nmt.data import read_lines, read_manifest, read_text
from nmt.errors import NmtError, UsageError
from nmt.files import atomic_write_text, check_output
from nmt.metrics import bleu_by_length, score_all
from nmt.precision import decode_precision
from nmt.tokenizer import Tokenizer
from nmt.translate import (
    Runtime,
    Translator,
    format_output,
    load_translator,
    members,
    translate_lines,
)

SPLITS = ("valid", "test")


def evaluate_files(hyp: str, ref: str, lang: Optional[str] = None) -> dict:
    """Score a detokenized hypothesis file against a reference file (both cleaned the same way);
    with the target language `lang`, also paper-style (lowercased, Moses-tokenized) BLEU."""
    hyps, refs = read_text(Path(hyp)).lines, read_text(Path(ref)).lines
    if len(hyps) != len(refs):
        raise NmtError(f"{hyp} has {len(hyps)} lines but {ref} has {len(refs)}")
    if not refs:
        raise NmtError(f"{ref}: empty, nothing to score")
    return {"hyp": hyp, "ref": ref, "metrics": score_all(hyps, refs, lang)}


def load_split(
    tr: Translator, split: str, prepared_dir: Optional[str]
) -> tuple[Path, list[str], list[str]]:
    """(prepared dir, source lines, references) of `split`,
    refusing a prepared dir with another tokenizer."""
    if split not in SPLITS:
        raise UsageError(f"--split {split}: must be one of {', '.join(SPLITS)}")
    pdir = Path(prepared_dir) if prepared_dir else tr.cfg.prepared_dir
    read_manifest(pdir)  # a folder changed since `nmt prepare` is refused
    if Tokenizer.load(pdir).sha256 != tr.tok.sha256:
        raise NmtError(f"{tr.path} was trained with a different tokenizer than the one in {pdir}")
    return pdir, read_lines(pdir / f"{split}.src.txt"), read_lines(pdir / f"{split}.tgt.txt")


def evaluate_checkpoint(
    checkpoint: str | Sequence[str],
    split: str,
    prepared_dir: Optional[str] = None,
    given: Optional[DecodeOptions] = None,
    runtime: Optional[Runtime] = None,
) -> dict:
    """Translate `split` of the checkpoint's prepared dir, score it, save hypotheses and JSON beside
    the checkpoint (several checkpoints: their ensemble, see load_translator; the results go beside
    the first). `given`: the decode options given (the checkpoint's decode config has the
    others)."""
    runtime = runtime or Runtime()
    tr = load_translator(checkpoint, runtime.device, runtime.precision, runtime.workers)
    pdir, src, refs = load_split(tr, split, prepared_dir)
    d = replace(given or DecodeOptions(), nbest=1).apply(tr.cfg.decode)
    out_dir = Path(tr.path).parent
    settings = settings_tag(d, tr.cfg.decode, tr.precision, decode_precision(tr.device, "auto"))
    stem = f"{split}.{checkpoint_tag(tr)}.{settings}"
    for name in (f"{stem}.hyp.txt", f"{stem}.json"):  # before decoding: beside the checkpoint
        check_output(out_dir / name, "the results")
    text = format_output(tr, translate_lines(tr, src, tr.settings(d)), 1)
    result = {
        "checkpoint": tr.path,
        **members(tr),
        "split": split,
        "prepared_dir": str(pdir),
        "beam": d.beam,
        "alpha": d.alpha,
        "precision": tr.precision,
        "decode": asdict(d),
        "hyp": str(out_dir / f"{stem}.hyp.txt"),
        "metrics": score_all(text.splitlines(), refs, tr.cfg.data.tgt_lang),
        "bleu_by_source_length": bleu_by_length(src, text.splitlines(), refs),
    }
    try:
        atomic_write_text(out_dir / f"{stem}.hyp.txt", text)
        atomic_write_text(out_dir / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    except OSError as e:  # e.g. a read-only folder holding the checkpoint
        raise NmtError(
            f"{out_dir}: cannot write {stem}.hyp.txt and {stem}.json beside the checkpoint: "
            f"{e.strerror or e}"
        ) from None
    return result


def checkpoint_tag(tr: Translator) -> str:
    """The checkpoint's part of an output file name: its stem; for an ensemble (whose results go
    beside its first checkpoint) the number of members and a hash of their paths, so that no two
    ensembles share a name."""
    if len(tr.paths) < 2:
        return Path(tr.path).stem
    digest = hashlib.sha256(
        "\n".join(str(Path(p).resolve()) for p in tr.paths).encode()
    ).hexdigest()[:8]
    return f"ensemble{len(tr.paths)}-{digest}"


def settings_tag(
    d: DecodeConfig, own: DecodeConfig, precision: str = "fp32", default_precision: str = "fp32"
) -> str:
    """The part of an output file name that tells decode settings apart, so that scoring one
    checkpoint with another beam, length penalty, n-gram block, stopping rule, length limit or
    number format never overwrites an earlier result. `own`: the checkpoint's decode config; a
    length limit other than its own is named too, and so is a `precision` other than the device's
    default one (`auto`)."""
    tag = f"beam{d.beam}.alpha{d.alpha:g}"
    if d.no_repeat_ngram:
        tag += f".norepeat{d.no_repeat_ngram}"
    if d.early_exit and d.beam > 1:
        tag += ".early"
    if (d.max_len_a, d.max_len_b) != (own.max_len_a, own.max_len_b):
        tag += f".len{d.max_len_a:g}x+{d.max_len_b}"
    return tag + (f".{precision}" if precision != default_precision else "")


def format_report(result: dict) -> str:
    m = result["metrics"]
    lines = [m["bleu"]["text"] + f"  [{m['bleu']['signature']}]"]
    if "split" in result:
        lines.insert(
            0,
            f"{result['split']} translated with beam {result['beam']}, alpha {result['alpha']:g}; "
            f"output: {result['hyp']}",
        )
    lines.append(f"lowercased BLEU: {m['bleu_lc']['score']:.2f}  [{m['bleu_lc']['signature']}]")
    if "bleu_paper" in m:
        p = m["bleu_paper"]
        lines.append(
            f"paper-style BLEU (lowercased, Moses-tokenized): {p['score']:.2f}  [{p['signature']}; "
            f"{p['tokenizer']}]"
        )
    lines.append(m["chrf"]["text"] + f"  [{m['chrf']['signature']}]")
    lines.append(m["ter"]["text"] + f"  [{m['ter']['signature']}]")
    if result.get("bleu_by_source_length"):
        lines.append(
            "BLEU by source length (words): "
            + ", ".join(
                f"{b['source_words']}: {b['bleu']:.2f} ({b['sentences']})"
                for b in result["bleu_by_source_length"]
            )
        )
    return "\n".join(lines)
