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


def _check(hyps: list[str], refs: list[str]) -> None:
    if len(hyps) != len(refs):
        raise NmtError(f"{len(hyps)} hypotheses but {len(refs)} references: they must be aligned line by line")
