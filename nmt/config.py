"""Frozen config dataclasses and the one strict loader
(unknown keys, types, ranges, cross-field rules).

Every key is documented in configs/base.yaml. `load_config(path, overrides)` is the only way a
config enters the program; `config_from_dict` rebuilds one from a checkpoint with the same checks.
Every key and every rule between keys is here, in one file, so that one place says what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from nmt.errors import NmtError, UsageError


def _opt(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules: min, max (inclusive), gt (exclusive), choices."""
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class Corpus:
    """One training corpus: the files {stem}.{lang}[.gz] in `source` (null: data.source, or
    Multi30k), seen `weight` times per epoch."""

    stem: str
    source: Optional[str] = None
    weight: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.source}/{self.stem}" if self.source else self.stem


def _train_corpora(origin: str, key: str, value: Any) -> str | tuple[Corpus, ...]:
    """data.train: one file stem, or a list of corpora, each a stem or a mapping with `stem` and
    optionally `source` and `weight` (> 0)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(origin, key, f"expected a file stem or a list of corpora, got {value!r}")
    corpora = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"stem": item}
        if not isinstance(item, dict):
            raise _fail(origin, where, f"expected a file stem or a mapping, got {item!r}")
        valid = [f.name for f in dataclasses.fields(Corpus)]
        for k in item:
            if k not in valid:
                raise _unknown(origin, f"{where}.{k}", valid)
        if "stem" not in item:
            raise _fail(origin, where, "needs a stem: the files' name before .{lang}")
        if not isinstance(item["stem"], str) or not item["stem"]:
            raise _fail(origin, f"{where}.stem", f"expected a file stem, got {item['stem']!r}")
        source = _check_value(origin, f"{where}.source", item.get("source"), Optional[str], {})
        source = os.path.normpath(source) if source else source  # one name for each folder
        weight = _check_value(origin, f"{where}.weight", item.get("weight", 1.0), float, {"gt": 0})
        if not math.isfinite(weight):
            raise _fail(origin, f"{where}.weight", f"must be a finite number, got {weight!r}")
        corpora.append(Corpus(item["stem"], source, weight))
    names = [c.name for c in corpora]
    for name in names:
        if names.count(name) > 1:
            raise _fail(origin, key, f"corpus {name} is named twice")
    return tuple(corpora)


@dataclass(frozen=True)
class DataConfig:
    corpus: str = _opt("files", choices=("files", "multi30k"))
    source: Optional[str] = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    train: Union[str, tuple[Corpus, ...]] = _opt("train", parse=_train_corpora)
    valid: str = "val"
    test: str = "test_2016_flickr"
    prepared_dir: Optional[str] = None
    max_train_pairs: int = _opt(0, min=0)
    spm_type: str = _opt("unigram", choices=("unigram", "bpe"))
    vocab_size: int = _opt(8000, min=16)
    joint_vocab: bool = True
    character_coverage: float = _opt(1.0, gt=0.0, max=1.0)
    max_len: int = _opt(128, min=1)
    max_len_ratio: float = _opt(3.0, min=1.0)
    seed: int = 1
    tokenizer: Optional[str] = None
    spm_sample: int = _opt(700_000, min=2)
    workers: int = _opt(0, min=0)

    @property
    def corpora(self) -> tuple[Corpus, ...]:
        """The training corpora (one, of weight 1, when data.train is a file stem)."""
        return (Corpus(self.train),) if isinstance(self.train, str) else self.train


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _opt("transformer", choices=("transformer", "rnn"))
    layers: int = _opt(6, min=1)
    dec_layers: Optional[int] = _opt(None, min=1)
    d_model: int = _opt(512, min=2)
    heads: int = _opt(8, min=1)
    ffn: int = _opt(2048, min=1)
    dropout: float = _opt(0.1, min=0.0, max=0.99)
    attn_dropout: float = _opt(0.0, min=0.0, max=0.99)
    norm: str = _opt("pre", choices=("pre", "post"))
    positions: str = _opt("sinusoidal", choices=("sinusoidal", "learned"))
    max_positions: int = _opt(512, min=8)
    share_embeddings: bool = True
    tie_output: bool = True
    cell: str = _opt("lstm", choices=("lstm", "gru"))
    hidden_size: int = _opt(512, min=2)
    bidirectional: bool = True
    attention: str = _opt("dot", choices=("none", "dot", "general", "additive"))
    input_feeding: bool = True


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1
    max_steps: int = _opt(100000, min=1)
    max_epochs: int = _opt(0, min=0)
    max_minutes: float = _opt(0.0, min=0.0)
    max_tokens: int = _opt(4096, min=8)
    accum_steps: int = _opt(1, min=1)
    lr: float = _opt(7e-4, gt=0.0)
    warmup_steps: int = _opt(4000, min=0)
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = _opt(1e-9, gt=0.0)
    weight_decay: float = _opt(0.0, min=0.0)
    clip_norm: float = _opt(1.0, min=0.0)
    label_smoothing: float = _opt(0.1, min=0.0, max=0.99)
    valid_every: int = _opt(1000, min=1)
    save_every: int = _opt(0, min=0)
    keep_last: int = _opt(3, min=0)
    keep_best: int = _opt(3, min=0)
    valid_bleu: bool = True
    patience: int = _opt(0, min=0)
    log_every: int = _opt(100, min=1)
    device: str = _opt("auto", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("auto", choices=("auto", "fp32", "bf16", "fp16"))
    threads: int = _opt(0, min=0)
    compile: bool = False
    progress: bool = True
    tensorboard: bool = False


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = _opt(5, min=1)
    alpha: float = _opt(0.6, min=0.0)
    max_len_a: float = _opt(1.5, min=0.0)
    max_len_b: int = _opt(10, min=1)
    max_tokens: int = _opt(8000, min=8)
    nbest: int = _opt(1, min=1)
    no_repeat_ngram: int = _opt(0, min=0)
    early_exit: bool = False


@dataclass(frozen=True)
class DecodeOptions:
    """Decode settings given on the command line; None leaves the checkpoint's decode config's."""

    beam: Optional[int] = None
    alpha: Optional[float] = None
    max_len_a: Optional[float] = None
    max_len_b: Optional[int] = None
    no_repeat_ngram: Optional[int] = None
    early_exit: Optional[bool] = None
    nbest: Optional[int] = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def apply(self, d: DecodeConfig) -> DecodeConfig:
        """`d` with the options given."""
        return dataclasses.replace(d, **self.given())


@dataclass(frozen=True)
class Config:
    name: str = "nmt"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    decode: DecodeConfig = DecodeConfig()

    @property
    def prepared_dir(self) -> Path:
        return Path(self.data.prepared_dir or f"data/prepared/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        if not isinstance(self.data.train, str):
            d["data"]["train"] = [dict(c) for c in d["data"]["train"]]
        return d


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "decode": DecodeConfig,
}


def _fail(origin: str, key: str, msg: str) -> NmtError:
    return NmtError(f"{origin}: {key}: {msg}")


def _unknown(origin: str, key: str, valid: list[str]) -> NmtError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1)
    hint = (
        f" (did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?)"
        if close
        else ""
    )
    return _fail(origin, key, f"unknown key{hint}; valid keys: {', '.join(valid)}")


def _check_value(origin: str, key: str, value: Any, typ: Any, rules: dict[str, Any]) -> Any:
    """Check one value against its annotated type and rules;
    return it converted (int->float, list->tuple)."""
    if "parse" in rules:
        return rules["parse"](origin, key, value)
    if typing.get_origin(typ) is typing.Union:  # Optional[X]
        if value is None:
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    if typing.get_origin(typ) is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _fail(origin, key, f"expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_check_value(origin, key, v, a, {}) for v, a in zip(value, args))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (
        typ is bool
        and not isinstance(value, bool)
        or typ is int
        and (not isinstance(value, int) or isinstance(value, bool))
    ):
        raise _fail(origin, key, f"expected {typ.__name__}, got {value!r}")
    if not isinstance(value, typ):
        raise _fail(origin, key, f"expected {typ.__name__}, got {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        raise _fail(origin, key, f"must be one of {', '.join(rules['choices'])}, got {value!r}")
    if "min" in rules and value < rules["min"]:
        raise _fail(origin, key, f"must be >= {rules['min']}, got {value!r}")
    if "max" in rules and value > rules["max"]:
        raise _fail(origin, key, f"must be <= {rules['max']}, got {value!r}")
    if "gt" in rules and value <= rules["gt"]:
        raise _fail(origin, key, f"must be > {rules['gt']}, got {value!r}")
    return value


def _build_section(origin: str, section: str, raw: Any) -> Any:
    cls = SECTIONS[section]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(origin, section, f"expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown(origin, f"{section}.{key}", list(fields))
        values[key] = _check_value(
            origin, f"{section}.{key}", value, hints[key], dict(fields[key].metadata)
        )
    return cls(**values)


def _cross_checks(origin: str, cfg: Config) -> None:
    m, d = cfg.model, cfg.data
    if m.arch == "rnn":
        if m.bidirectional and m.hidden_size % 2:
            raise _fail(
                origin,
                "model.hidden_size",
                "a bidirectional encoder splits it in two halves: must be even, got "
                f"{m.hidden_size}",
            )
        if m.tie_output and m.hidden_size != m.d_model:
            raise _fail(
                origin,
                "model.tie_output",
                f"needs model.hidden_size == model.d_model (got {m.hidden_size} and {m.d_model})",
            )
        if m.dec_layers not in (None, m.layers):
            raise _fail(
                origin,
                "model.dec_layers",
                "an RNN decoder starts from the encoder's state: "
                "it needs as many layers (leave it null)",
            )
    elif m.d_model % m.heads:
        raise _fail(
            origin, "model.heads", f"{m.heads} heads do not divide model.d_model={m.d_model}"
        )
    if m.positions == "sinusoidal" and m.d_model % 2:
        raise _fail(
            origin, "model.d_model", f"sinusoidal positions need an even d_model, got {m.d_model}"
        )
    if m.share_embeddings and not d.joint_vocab:
        raise _fail(
            origin,
            "model.share_embeddings",
            "needs data.joint_vocab: true (one vocabulary for both sides)",
        )
    if d.src_lang == d.tgt_lang:
        raise _fail(origin, "data.tgt_lang", f"source and target language are both {d.src_lang!r}")
    if d.corpus == "files" and not d.source:
        raise _fail(
            origin,
            "data.source",
            "corpus 'files' needs data.source: the folder holding {split}.{lang}[.gz]",
        )
    if d.max_len + 2 > m.max_positions:
        raise _fail(origin, "model.max_positions", f"must be >= data.max_len + 2 = {d.max_len + 2}")


def config_from_dict(raw: Any, origin: str, name: Optional[str] = None) -> Config:
    """Build and validate a Config from a plain dict (a YAML file, or a checkpoint's copy)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise NmtError(f"{origin}: expected a mapping with sections {', '.join(SECTIONS)}")
    raw = dict(raw)
    cfg_name = raw.pop("name", None) or name or "nmt"
    if not isinstance(cfg_name, str):
        raise _fail(origin, "name", f"expected str, got {cfg_name!r}")
    for key in raw:
        if key not in SECTIONS:
            raise _unknown(origin, key, ["name", *SECTIONS])
    sections = {s: _build_section(origin, s, raw.get(s)) for s in SECTIONS}
    cfg = Config(name=cfg_name, **sections)
    _cross_checks(origin, cfg)
    return cfg


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads exponent floats without a dot (1e-3) as
    YAML 1.2 does (YAML 1.1 reads them as strings)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader above (plain data only)."""
    return yaml.load(text, Loader=_Loader)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse 'section.key=value' (value in YAML syntax) into (['section', 'key'], value)."""
    if "=" not in item:
        raise UsageError(f"--set {item}: expected section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--set {item}: expected section.key=value, e.g. train.max_steps=100")
    try:
        value = parse_yaml(text) if text.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(
            f"--set {item}: the value is not valid YAML ({problem}); put a string in quotes"
        ) from None
    return parts, value


def read_yaml(path: Path) -> Any:
    """Read a YAML file; a missing file or a syntax error
    is a one-line NmtError with the line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NmtError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NmtError(f"{path}: cannot read config: {e}") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise NmtError(f"{path}:{where}: YAML syntax error: {problem}") from None


def load_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Load a YAML config, apply `section.key=value` overrides, validate everything once."""
    path = Path(path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise NmtError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    origin = str(path)
    for item in overrides:
        (section, key), value = parse_override(item)
        if section not in SECTIONS:
            raise _unknown(f"{origin} (--set)", section, list(SECTIONS))
        sec = raw.get(section) or {}
        if not isinstance(sec, dict):
            raise _fail(origin, section, "expected a mapping of keys")
        raw[section] = {**sec, key: value}
    if overrides:
        origin += " (with --set)"
    return config_from_dict(raw, origin, name=path.stem)
