"""load_config: strict keys, types, ranges and cross-field
rules, each error naming the key and the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nmt.config import SECTIONS, Config, DataConfig, ModelConfig, config_from_dict, load_config
from nmt.errors import NmtError

VALID = """\
name: toy
data:
  source: /some/corpus
  vocab_size: 100
model:
  layers: 2
  d_model: 64
  heads: 4
train:
  max_steps: 50
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    """The message of the NmtError that loading `path` with `overrides` raises."""
    with pytest.raises(NmtError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    return write(tmp_path, VALID)


# --- a valid file, overrides ---


def test_valid_file_loads_with_its_values_and_defaults_elsewhere(valid: Path) -> None:
    cfg = load_config(valid)
    assert cfg.name == "toy"
    assert (cfg.data.source, cfg.data.vocab_size) == ("/some/corpus", 100)
    assert (cfg.model.layers, cfg.model.d_model, cfg.model.heads) == (2, 64, 4)
    assert cfg.train.max_steps == 50
    assert cfg.model.ffn == ModelConfig().ffn  # not in the file: the default
    assert cfg.decode == Config().decode


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data:\n  source: /x\n", name="my_run.yaml"))
    assert cfg.name == "my_run"


def test_overrides_apply_with_yaml_typed_values(valid: Path) -> None:
    cfg = load_config(
        valid,
        [
            "train.max_steps=7",
            "model.norm=post",
            "train.betas=[0.8, 0.9]",
            "model.dec_layers=3",
            "data.joint_vocab=true",
            "train.lr=0.5",
        ],
    )
    assert cfg.train.max_steps == 7
    assert cfg.model.norm == "post"
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.model.dec_layers == 3
    assert cfg.train.lr == 0.5
    assert cfg.model.layers == 2  # untouched keys keep the file's values


def test_override_can_add_a_section_the_file_lacks(valid: Path) -> None:
    assert load_config(valid, ["decode.beam=3"]).decode.beam == 3


def test_override_null_resets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: /x\nmodel:\n  dec_layers: 2\n")
    assert load_config(path).model.dec_layers == 2
    assert load_config(path, ["model.dec_layers=null"]).model.dec_layers is None


def test_int_is_accepted_for_a_float_key(valid: Path) -> None:
    lr = load_config(valid, ["train.lr=1"]).train.lr
    assert lr == 1.0 and isinstance(lr, float)


def test_exponent_floats_without_a_dot_are_floats(tmp_path: Path) -> None:
    # YAML 1.1 reads `1e-3` as a string; configs are written the way ML papers write numbers.
    path = write(tmp_path, "data:\n  source: /x\ntrain:\n  lr: 1e-3\n  adam_eps: 1.0e-9\n")
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.train.adam_eps) == (1e-3, 1e-9)
    assert load_config(path, ["train.lr=5E-4"]).train.lr == 5e-4


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_steps=-5", "train.max_steps"),
        ("train.max_steps=ten", "train.max_steps"),
        ("model.dropout=-0.1", "model.dropout"),
        ("model.norm=middle", "model.norm"),
    ],
)
def test_overrides_get_the_same_validation_as_the_file(
    valid: Path, override: str, key: str
) -> None:
    msg = error(valid, (override,))
    assert key in msg and str(valid) in msg and "--set" in msg


@pytest.mark.parametrize("bad", ["train.max_steps", "max_steps=3", "a.b.c=1", ".max_steps=3"])
def test_malformed_override_is_rejected(valid: Path, bad: str) -> None:
    msg = error(valid, (bad,))
    assert bad in msg and "section.key=value" in msg


# --- unknown keys ---


def test_unknown_key_in_file_suggests_the_closest_and_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: /x\ntrain:\n  max_step: 100\n")
    msg = error(path)
    assert str(path) in msg
    assert "train.max_step" in msg
    assert "did you mean 'train.max_steps'" in msg


def test_unknown_key_in_override_suggests_the_closest(valid: Path) -> None:
    msg = error(valid, ("model.dropuot=0.2",))
    assert str(valid) in msg and "model.dropuot" in msg and "did you mean 'model.dropout'" in msg


def test_unknown_section_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: /x\ntrian:\n  max_steps: 100\n")
    msg = error(path)
    assert str(path) in msg and "trian" in msg and "did you mean 'train'" in msg


def test_unknown_section_in_override(valid: Path) -> None:
    msg = error(valid, ("modle.layers=2",))
    assert str(valid) in msg and "modle" in msg and "did you mean 'model'" in msg


def test_unknown_key_without_close_match_lists_the_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: /x\ndecode:\n  zzzzzz: 1\n")
    msg = error(path)
    assert "did you mean" not in msg
    for f in dataclasses.fields(SECTIONS["decode"]):
        assert f.name in msg


def test_a_section_must_be_a_mapping(tmp_path: Path) -> None:
    msg = error(write(tmp_path, "data:\n  source: /x\nmodel: [1, 2]\n"))
    assert "model" in msg and "mapping" in msg


def test_the_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- data\n- model\n")
    assert str(path) in error(path)


# --- types ---


@pytest.mark.parametrize(
    "line, key",
    [
        ('  max_steps: "100"', "train.max_steps"),  # string for int
        ("  max_steps: true", "train.max_steps"),  # bool for int
        ("  max_steps: 100.0", "train.max_steps"),  # float for int
        ("  max_steps: null", "train.max_steps"),  # null for a required int
        ("  lr: fast", "train.lr"),  # string for float
        ("  lr: true", "train.lr"),  # bool for float
        ("  progress: 1", "train.progress"),  # int for bool
        ("  progress: 'yes please'", "train.progress"),  # string for bool
        ("  betas: [0.9]", "train.betas"),  # wrong length
        ("  betas: [0.9, high]", "train.betas"),  # wrong element type
        ("  betas: 0.9", "train.betas"),  # not a list
        ("  device: 3", "train.device"),  # int for str
    ],
)
def test_wrong_type_is_rejected_naming_key_and_file(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path, f"data:\n  source: /x\ntrain:\n{line}\n")
    msg = error(path)
    assert key in msg and str(path) in msg and "expected" in msg


# --- ranges and choices ---


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.dropout=-0.1", "model.dropout"),
        ("model.dropout=1.0", "model.dropout"),
        ("data.vocab_size=8", "data.vocab_size"),
        ("data.character_coverage=0", "data.character_coverage"),
        ("data.max_len_ratio=0.5", "data.max_len_ratio"),
        ("train.lr=0", "train.lr"),
        ("train.accum_steps=0", "train.accum_steps"),
        ("model.dec_layers=0", "model.dec_layers"),
        ("decode.beam=0", "decode.beam"),
        ("data.corpus=europarl", "data.corpus"),
        ("data.spm_type=word", "data.spm_type"),
        ("train.device=tpu", "train.device"),
        ("train.precision=fp8", "train.precision"),
    ],
)
def test_out_of_range_or_not_a_choice_is_rejected(valid: Path, override: str, key: str) -> None:
    msg = error(valid, (override,))
    assert key in msg and str(valid) in msg


def test_choice_error_lists_the_choices(valid: Path) -> None:
    msg = error(valid, ("model.norm=middle",))
    assert "pre" in msg and "post" in msg and "middle" in msg


def test_range_bounds_are_inclusive_where_documented(valid: Path) -> None:
    cfg = load_config(
        valid,
        [
            "model.dropout=0",
            "data.vocab_size=16",
            "data.character_coverage=1.0",
            "train.warmup_steps=0",
        ],
    )
    assert (
        cfg.model.dropout,
        cfg.data.vocab_size,
        cfg.data.character_coverage,
        cfg.train.warmup_steps,
    ) == (0.0, 16, 1.0, 0)


# --- cross-field rules ---


@pytest.mark.parametrize(
    "overrides, key",
    [
        (("model.heads=3",), "model.heads"),  # 3 does not divide d_model=64
        # share_embeddings defaults to true
        (("data.joint_vocab=false",), "model.share_embeddings"),
        # sinusoidal positions need an even width
        (("model.d_model=63", "model.heads=1"), "model.d_model"),
        (("data.tgt_lang=en",), "data.tgt_lang"),  # same language on both sides
        # room for BOS/EOS
        (("model.max_positions=100", "data.max_len=100"), "model.max_positions"),
    ],
)
def test_cross_field_rules(valid: Path, overrides: tuple[str, ...], key: str) -> None:
    msg = error(valid, overrides)
    assert key in msg and str(valid) in msg


def test_heads_error_names_both_numbers(valid: Path) -> None:
    msg = error(valid, ("model.heads=3",))
    assert "3" in msg and "d_model=64" in msg


def test_separate_vocabularies_are_fine_without_shared_embeddings(valid: Path) -> None:
    cfg = load_config(valid, ["data.joint_vocab=false", "model.share_embeddings=false"])
    assert not cfg.data.joint_vocab and not cfg.model.share_embeddings


def test_files_corpus_needs_a_source(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  corpus: files\n")
    msg = error(path)
    assert "data.source" in msg and str(path) in msg


# --- reading the file ---


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: /x\nmodel:\n  layers: 2: 3\n")
    msg = error(path)
    assert str(path) in msg and "line 4" in msg and "YAML" in msg


def test_yaml_error_in_a_later_line_reports_that_line(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: /x\n\n\n\n\ntrain:\n  lr: [0.1\n  seed: 2\n")
    msg = error(path)
    assert str(path) in msg and "line 9" in msg


def test_duplicate_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: /x\ntrain:\n  lr: 0.1\n  seed: 2\n  lr: 0.2\n")
    msg = error(path)
    assert str(path) in msg and "duplicate key 'lr'" in msg and "line 6" in msg


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = error(path)
    assert str(path) in msg and "not found" in msg


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    assert str(path) in error(path)


def test_empty_file_needs_a_source_like_any_other(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert "data.source" in error(path)
    assert load_config(path, ["data.source=/x"]).model == ModelConfig()


# --- the shipped configs ---


def test_base_yaml_needs_a_source_and_says_so(repo_root: Path) -> None:
    path = repo_root / "configs" / "base.yaml"
    msg = error(path)
    assert "data.source" in msg and str(path) in msg


def test_base_yaml_documents_exactly_the_defaults(repo_root: Path) -> None:
    """base.yaml is the manual: every key, each at its default value."""
    path = repo_root / "configs" / "base.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, cls in SECTIONS.items():
        assert set(raw[section]) == {f.name for f in dataclasses.fields(cls)}, section
    cfg = load_config(path, ["data.source=/corpus"])
    assert cfg == Config(name="base", data=DataConfig(source="/corpus"))


RECIPES = sorted(
    p.name
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
    if p.name != "base.yaml"
)


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load(repo_root: Path, name: str) -> None:
    """Every recipe loads as it is: Multi30k's download their corpus, the others name a folder
    inside the repository (nothing points outside it)."""
    cfg = load_config(repo_root / "configs" / name)
    assert cfg.name == Path(name).stem
    if name.startswith(("multi30k_", "smoke")):
        assert cfg.data.corpus == "multi30k" and cfg.data.source is None
    else:
        source = Path(cfg.data.source)
        assert not source.is_absolute() and ".." not in source.parts, source


# multi30k_<src>_<tgt>_<variant>.yaml
VARIANTS = [n for n in RECIPES if n.startswith("multi30k_") and n.count("_") >= 3]


def test_every_direction_has_its_recipe_and_a_smaller_model() -> None:
    assert {f"multi30k_{pair}_tiny.yaml" for pair in ("en_de", "de_en", "en_fr", "en_cs")} <= set(
        VARIANTS
    )


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_recipes_share_their_directions_prepared_data(repo_root: Path, name: str) -> None:
    """A variant (the RNNs, the smaller Transformer) reads the
    prepared data of its direction's recipe, so `nmt prepare --config
    <recipe>` serves it, and its models build for that vocabulary."""
    from nmt.data import data_settings
    from nmt.models import build_model

    base = "_".join(name.split("_")[:3]) + ".yaml"
    variant, recipe = (
        load_config(repo_root / "configs" / name),
        load_config(repo_root / "configs" / base),
    )
    assert variant.prepared_dir == recipe.prepared_dir and data_settings(variant) == data_settings(
        recipe
    )
    assert (variant.data.src_lang, variant.data.tgt_lang) == (
        recipe.data.src_lang,
        recipe.data.tgt_lang,
    )
    assert variant.model.arch == ("rnn" if "_rnn_" in name else "transformer")
    build_model(variant.model, 8000, 8000)


def test_smoke_config_is_small(repo_root: Path) -> None:
    cfg = load_config(repo_root / "configs" / "smoke.yaml")
    assert (
        cfg.train.max_steps <= 300 and cfg.model.d_model <= 64 and cfg.data.max_train_pairs <= 1000
    )


# --- round trips ---


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
)
def test_config_from_dict_round_trips(repo_root: Path, name: str) -> None:
    cfg = load_config(repo_root / "configs" / name, ["data.source=/corpus"])
    again = config_from_dict(cfg.to_dict(), origin="round trip")
    assert again == cfg


def test_round_trip_of_non_default_values(valid: Path) -> None:
    cfg = load_config(
        valid,
        [
            "train.betas=[0.5, 0.75]",
            "model.dec_layers=1",
            "data.joint_vocab=false",
            "model.share_embeddings=false",
            "train.max_minutes=2.5",
        ],
    )
    assert config_from_dict(cfg.to_dict(), origin="round trip") == cfg


def test_yaml_dump_of_a_config_loads_back_equal(tmp_path: Path, valid: Path) -> None:
    """What train writes as <run>/config.yaml is itself a valid config that means the same thing."""
    cfg = load_config(valid, ["train.lr=3e-4"])
    path = write(tmp_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False), name="dumped.yaml")
    assert load_config(path) == cfg


def test_config_from_dict_validates_too() -> None:
    raw = Config(data=DataConfig(source="/x")).to_dict()
    raw["model"]["heads"] = 7
    with pytest.raises(NmtError, match=r"ckpt \(config\): model.heads"):
        config_from_dict(raw, origin="ckpt (config)")


def test_config_is_frozen(valid: Path) -> None:
    cfg = load_config(valid)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.max_steps = 1  # type: ignore[misc]
