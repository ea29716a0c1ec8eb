"""Choose decoding settings on the valid split: score a grid of beam sizes, length penalties and n-gram blocking.

Only the valid split: choosing settings on test and then reporting test would overstate the result.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from sacrebleu.metrics import BLEU

from nmt.checkpoint import atomic_write_text
from nmt.errors import NmtError
from nmt.evaluate import load_split
from nmt.translate import decode_settings, load_translator, translate_with


def grid(beams: Sequence[int], alphas: Sequence[float], ngrams: Sequence[int]) -> list[tuple[int, float, int]]:
    """Every (beam, alpha, no_repeat_ngram); the length penalty only ranks beam hypotheses, so beam 1 gets one alpha."""
    out = []
    for beam, alpha, n in itertools.product(beams, alphas, ngrams):
        if beam == 1 and alpha != alphas[0]:
            continue
        out.append((beam, alpha, n))
    return out


def sweep(
    checkpoint: str, beams: Sequence[int], alphas: Sequence[float], ngrams: Sequence[int],
    prepared_dir: Optional[str] = None, device: Optional[str] = None, output: Optional[str] = None,
    log: Callable[[str], None] = print, precision: str = "auto", workers: Optional[int] = None,
) -> dict:
    """Decode the valid split once per setting; return every score and the best setting (ties: the earlier one)."""
    if not beams or not alphas or not ngrams:
        raise NmtError("give at least one value each for --beam, --alpha and --no-repeat-ngram")
    tr = load_translator(checkpoint, device, precision, workers)
    _, src, refs = load_split(tr, "valid", prepared_dir)
    rows, metric = [], BLEU()
    for beam, alpha, n in grid(beams, alphas, ngrams):
        d = decode_settings(tr, beam=beam, alpha=alpha, no_repeat_ngram=n, nbest=1)
        hyps = tr.tok.decode_tgt([h[0].tokens for h in translate_with(tr, src, d)])
        bleu = metric.corpus_score(hyps, [refs])
        rows.append({"beam": beam, "alpha": alpha, "no_repeat_ngram": n, "bleu": round(bleu.score, 2),
                     "length_ratio": round(bleu.sys_len / max(bleu.ref_len, 1), 3)})
        log(f"beam {beam:>2}  alpha {alpha:<4}  no_repeat_ngram {n}  BLEU {bleu.score:6.2f}  length ratio {rows[-1]['length_ratio']:.3f}")
    best = max(rows, key=lambda r: r["bleu"])  # max keeps the first of equal scores
    result = {"checkpoint": tr.path, "split": "valid", "precision": tr.precision, "signature": str(metric.get_signature()), "rows": rows, "best": best}
    if output:
        try:
            atomic_write_text(Path(output), json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise NmtError(f"{output}: cannot write: {e.strerror or e}") from None
    return result
