"""Corpus-level sacreBLEU, chrF and TER with their
signatures (a building block for train and evaluate)."""

from __future__ import annotations

import sys
from typing import Optional

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.errors import NmtError


def bleu_score(hyps: list[str], refs: list[str]) -> float:
    """Cased corpus sacreBLEU (13a tokenization) of
    detokenized hypotheses against raw references."""
    _check(hyps, refs)
    return BLEU().corpus_score(hyps, [refs]).score


def score_all(hyps: list[str], refs: list[str], lang: Optional[str] = None) -> dict:
    """BLEU, chrF and TER with signatures, and lowercased BLEU; with the
    target language `lang`, also BLEU the way papers on Multi30k report
    it: lowercased, on Moses-tokenized text (multi-bleu.perl style)."""
    _check(hyps, refs)
    metrics = {"bleu": BLEU(), "chrf": CHRF(), "ter": TER(), "bleu_lc": BLEU(lowercase=True)}
    out = {}
    for name, metric in metrics.items():
        res = metric.corpus_score(hyps, [refs])
        out[name] = {
            "score": round(res.score, 2),
            "signature": str(metric.get_signature()),
            "text": str(res),
        }
    if lang:
        try:
            out["bleu_paper"] = paper_bleu(hyps, refs, lang)
        except NmtError as e:  # sacremoses missing: the other scores still stand
            print(f"warning: {e}; reporting the other scores", file=sys.stderr)
    return out


def moses_languages() -> list[str]:
    """The language codes the Moses tokenizer has rules (non-breaking prefixes) for."""
    try:
        from sacremoses.corpus import NonbreakingPrefixes
    except ImportError:
        raise NmtError("paper-style BLEU needs sacremoses: pip install sacremoses") from None
    return sorted(k for k in NonbreakingPrefixes().available_langs if len(k) <= 3)


def paper_bleu(hyps: list[str], refs: list[str], lang: str) -> dict:
    """Lowercased BLEU on Moses-tokenized hypotheses and references
    (sacremoses, no escaping), no smoothing: what `tokenizer.perl -l LANG |
    multi-bleu.perl -lc` gives, the number most Multi30k papers print."""
    try:
        import sacremoses
    except ImportError:
        raise NmtError("paper-style BLEU needs sacremoses: pip install sacremoses") from None
    known = moses_languages()
    if lang not in known:
        raise NmtError(
            f"--lang {lang}: the Moses tokenizer has no rules for it (it knows {' '.join(known)})"
        )
    tok = sacremoses.MosesTokenizer(lang=lang)

    def split(lines: list[str]) -> list[str]:
        return [tok.tokenize(line, escape=False, return_str=True) for line in lines]

    # force: the text is tokenized on purpose
    metric = BLEU(lowercase=True, tokenize="none", smooth_method="none", force=True)
    res = metric.corpus_score(split(hyps), [split(refs)])
    return {
        "score": round(res.score, 2),
        "signature": str(metric.get_signature()),
        "text": str(res),
        "tokenizer": f"sacremoses {sacremoses.__version__} "
        f"MosesTokenizer(lang={lang!r}).tokenize(escape=False)",
    }


LENGTH_BUCKETS = (10, 15, 20, 25)  # source words: 1-10, 11-15, 16-20, 21-25, 26+


def bleu_by_length(
    sources: list[str], hyps: list[str], refs: list[str], edges: tuple[int, ...] = LENGTH_BUCKETS
) -> list[dict]:
    """Cased sacreBLEU per bucket of source length (in words): where long-range context matters."""
    _check(hyps, refs)
    if len(sources) != len(refs):
        raise NmtError(
            f"{len(sources)} sources but {len(refs)} references: they must be aligned line by line"
        )
    bounds = [(lo + 1, hi) for lo, hi in zip((0, *edges), (*edges, None))]
    out = []
    for lo, hi in bounds:
        idx = [
            i
            for i, s in enumerate(sources)
            if len(s.split()) >= lo and (hi is None or len(s.split()) <= hi)
        ]
        if idx:
            score = BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
            out.append(
                {
                    "source_words": f"{lo}-{hi}" if hi else f"{lo}+",
                    "sentences": len(idx),
                    "bleu": round(score, 2),
                }
            )
    return out


def _check(hyps: list[str], refs: list[str]) -> None:
    if len(hyps) != len(refs):
        raise NmtError(
            f"{len(hyps)} hypotheses but {len(refs)} references: they must be aligned line by line"
        )
