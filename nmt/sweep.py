"""Choose decoding settings on the valid split: score a grid of beam sizes, length penalties, n-gram
blocking and beam search stopping rules.

Only the valid split: choosing settings on test and then reporting test would overstate the result.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from sacrebleu.metrics import BLEU

from nmt.config import DecodeOptions
from nmt.errors import NmtError
from nmt.evaluate import load_split
from nmt.files import atomic_write_text, check_output
from nmt.translate import Runtime, load_translator, members, translate_lines


@dataclass(frozen=True)
class Grid:
    """The values to try of each decode setting."""

    beams: Sequence[int]
    alphas: Sequence[float]
    ngrams: Sequence[int]  # no_repeat_ngram sizes (0: off)
    early_exits: Sequence[bool] = (False,)

    def settings(self) -> list[tuple[int, float, int, bool]]:
        """Every (beam, alpha, no_repeat_ngram, early_exit); the length penalty and the stopping
        rule only matter to beam search, so beam 1 gets the first alpha and the first rule only."""
        out = []
        product = itertools.product(self.beams, self.alphas, self.ngrams, self.early_exits)
        for beam, alpha, n, early in product:
            if beam == 1 and (alpha != self.alphas[0] or early != self.early_exits[0]):
                continue
            out.append((beam, alpha, n, early))
        return out


def sweep(
    checkpoint: str | Sequence[str],
    grid: Grid,
    prepared_dir: Optional[str] = None,
    output: Optional[str] = None,
    runtime: Optional[Runtime] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Decode the valid split once per setting; return every score and the best setting (ties: the
    earlier one). Several checkpoints: their ensemble (see translate.load_translator)."""
    if not all((grid.beams, grid.alphas, grid.ngrams, grid.early_exits)):
        raise NmtError(
            "give at least one value each for --beam, --alpha, --no-repeat-ngram and --early-exit"
        )
    target = check_output(output) if output else None  # before any decoding
    runtime = runtime or Runtime()
    tr = load_translator(checkpoint, runtime.device, runtime.precision, runtime.workers)
    _, src, refs = load_split(tr, "valid", prepared_dir)
    rows, metric = [], BLEU()
    for beam, alpha, n, early in grid.settings():
        given = DecodeOptions(beam, alpha, no_repeat_ngram=n, early_exit=early, nbest=1)
        d = given.apply(tr.cfg.decode)
        start = time.perf_counter()
        hyps = tr.tok.decode_tgt([h[0].tokens for h in translate_lines(tr, src, tr.settings(d))])
        seconds = time.perf_counter() - start
        bleu = metric.corpus_score(hyps, [refs])
        rows.append(
            {
                "beam": beam,
                "alpha": alpha,
                "no_repeat_ngram": n,
                "early_exit": early,
                "bleu": round(bleu.score, 2),
                "length_ratio": round(bleu.sys_len / max(bleu.ref_len, 1), 3),
                "seconds": round(seconds, 2),
            }
        )
        rule = "  early exit" if early and beam > 1 else ""
        log(
            f"beam {beam:>2}  alpha {alpha:<4}  no_repeat_ngram {n}{rule}  BLEU {bleu.score:6.2f}  "
            f"length ratio {rows[-1]['length_ratio']:.3f}  {seconds:.1f} s"
        )
    best = max(rows, key=lambda r: r["bleu"])  # max keeps the first of equal scores
    result = {
        "checkpoint": tr.path,
        **members(tr),
        "split": "valid",
        "precision": tr.precision,
        "signature": str(metric.get_signature()),
        "rows": rows,
        "best": best,
    }
    if output and target is None:  # /dev/stdout or /dev/null
        if str(output) != "/dev/null":
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif target:
        try:
            atomic_write_text(target, json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise NmtError(f"{output}: cannot write: {e.strerror or e}") from None
    return result
