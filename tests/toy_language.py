"""A toy English->German language pair: what the end-to-end tests train on, so that they need no
corpus outside the repository.

Sentences look like Multi30k's ("A small dog runs on the street."): capitalised, a full stop, one
or two clauses of a noun phrase, a verb and an optional prepositional phrase. The German side
translates word for word with two rules a model has to learn with attention rather than copy
position by position: the article agrees with the gender of a noun that comes later in the source
("the" -> der / die / das), and an adjective follows its noun ("a small dog" -> "ein hund klein").
Words with umlauts and ß exercise UTF-8 and the subword model. A 1-layer Transformer with
d_model 64 (configs/smoke.yaml) learns it to a test BLEU of about 50 in 200 steps on 500 pairs;
an untrained or broken one stays near 0, so BLEU-based tests can fail for the right reasons.
"""

from __future__ import annotations

import random

NOUNS = {  # English noun: (German noun, gender)
    "man": ("mann", "m"),
    "woman": ("frau", "f"),
    "child": ("kind", "n"),
    "dog": ("hund", "m"),
    "cat": ("katze", "f"),
    "boy": ("junge", "m"),
    "girl": ("mädchen", "n"),
    "horse": ("pferd", "n"),
    "bird": ("vogel", "m"),
    "car": ("auto", "n"),
    "ball": ("ball", "m"),
    "bicycle": ("fahrrad", "n"),
    "house": ("haus", "n"),
    "tree": ("baum", "m"),
    "street": ("straße", "f"),
    "park": ("park", "m"),
    "beach": ("strand", "m"),
    "field": ("wiese", "f"),
    "river": ("fluss", "m"),
    "table": ("tisch", "m"),
    "bench": ("bank", "f"),
    "wall": ("mauer", "f"),
    "boat": ("boot", "n"),
    "bridge": ("brücke", "f"),
}
ADJECTIVES = {
    "red": "rot",
    "small": "klein",
    "big": "groß",
    "old": "alt",
    "young": "jung",
    "green": "grün",
    "white": "weiß",
    "black": "schwarz",
    "happy": "froh",
    "tall": "hoch",
    "wet": "nass",
    "blue": "blau",
}
VERBS = {
    "runs": "rennt",
    "sits": "sitzt",
    "sleeps": "schläft",
    "plays": "spielt",
    "waits": "wartet",
    "jumps": "springt",
    "stands": "steht",
    "walks": "geht",
    "sings": "singt",
    "lies": "liegt",
}
# the toy corpus of the end-to-end tests (tests/conftest.py): sentences per file, Multi30k's stems
TOY_SIZES = {"train": 1000, "val": 100, "test_2016_flickr": 100}

PREPOSITIONS = {"in": "in", "on": "auf", "near": "bei", "behind": "hinter", "under": "unter"}
ARTICLES = {"a": {"m": "ein", "f": "eine", "n": "ein"}, "the": {"m": "der", "f": "die", "n": "das"}}


def _noun_phrase(rng: random.Random) -> tuple[list[str], list[str]]:
    article, noun = rng.choice(sorted(ARTICLES)), rng.choice(sorted(NOUNS))
    adjective = rng.choice(sorted(ADJECTIVES)) if rng.random() < 0.5 else None
    german, gender = NOUNS[noun]
    src = [article, *([adjective] if adjective else []), noun]
    tgt = [ARTICLES[article][gender], german, *([ADJECTIVES[adjective]] if adjective else [])]
    return src, tgt


def _clause(rng: random.Random) -> tuple[list[str], list[str]]:
    src, tgt = _noun_phrase(rng)
    verb = rng.choice(sorted(VERBS))
    src, tgt = [*src, verb], [*tgt, VERBS[verb]]
    if rng.random() < 0.6:
        prep = rng.choice(sorted(PREPOSITIONS))
        obj_src, obj_tgt = _noun_phrase(rng)
        src, tgt = [*src, prep, *obj_src], [*tgt, PREPOSITIONS[prep], *obj_tgt]
    return src, tgt


def _sentence(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def toy_sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    """`n` aligned (English, German) sentences of 3-17 words, a pure function of the seed."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        s, t = _clause(rng)
        if rng.random() < 0.3:
            s2, t2 = _clause(rng)
            s, t = [*s, "and", *s2], [*t, "und", *t2]
        src.append(_sentence(s))
        tgt.append(_sentence(t))
    return src, tgt


def translate(english: str) -> str:
    """The German of an English sentence of the toy language (what a perfect model outputs)."""
    words = english.rstrip(".").lower().split()
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if w in ARTICLES:
            has_adjective = words[i + 1] in ADJECTIVES
            noun = words[i + 2] if has_adjective else words[i + 1]
            german, gender = NOUNS[noun]
            out += [ARTICLES[w][gender], german]
            out += [ADJECTIVES[words[i + 1]]] if has_adjective else []
            i += 3 if has_adjective else 2
        else:
            out.append({**VERBS, **PREPOSITIONS, "and": "und"}[w])
            i += 1
    return _sentence(out)
