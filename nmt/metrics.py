"""Corpus-level sacreBLEU, chrF and TER with their signatures (a building block for train and evaluate)."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.errors import NmtError


def bleu_score(hyps: list[str], refs: list[str]) -> float:
    """Cased corpus sacreBLEU (13a tokenization) of detokenized hypotheses against raw references."""
    _check(hyps, refs)
    return BLEU().corpus_score(hyps, [refs]).score


def score_all(hyps: list[str], refs: list[str], paper_style: bool = True) -> dict:
    """BLEU, chrF and TER with signatures; optionally also lowercased BLEU as papers report it."""
    _check(hyps, refs)
    metrics = {"bleu": BLEU(), "chrf": CHRF(), "ter": TER()}
    if paper_style:
        metrics["bleu_lc"] = BLEU(lowercase=True)
    out = {}
    for name, metric in metrics.items():
        res = metric.corpus_score(hyps, [refs])
        out[name] = {"score": round(res.score, 2), "signature": str(metric.get_signature()), "text": str(res)}
    return out


LENGTH_BUCKETS = (10, 15, 20, 25)  # source words: 1-10, 11-15, 16-20, 21-25, 26+


def bleu_by_length(sources: list[str], hyps: list[str], refs: list[str], edges: tuple[int, ...] = LENGTH_BUCKETS) -> list[dict]:
    """Cased sacreBLEU per bucket of source length (in words): where long-range context matters."""
    _check(hyps, refs)
    if len(sources) != len(refs):
        raise NmtError(f"{len(sources)} sources but {len(refs)} references: they must be aligned line by line")
    bounds = [(lo + 1, hi) for lo, hi in zip((0, *edges), (*edges, None))]
    out = []
    for lo, hi in bounds:
        idx = [i for i, s in enumerate(sources) if len(s.split()) >= lo and (hi is None or len(s.split()) <= hi)]
        if idx:
            score = BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
            out.append({"source_words": f"{lo}-{hi}" if hi else f"{lo}+", "sentences": len(idx), "bleu": round(score, 2)})
    return out


def _check(hyps: list[str], refs: list[str]) -> None:
    if len(hyps) != len(refs):
        raise NmtError(f"{len(hyps)} hypotheses but {len(refs)} references: they must be aligned line by line")
