"""Several training corpora with weights: each checked, filtered and counted on its own, stored one
after the other in the training split, and resampled every epoch by its weight."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMOKE, assert_one_error_line
from conftest import toy_pairs

from nmt.config import Config, config_from_dict
from nmt.data import bucket_batches, corpus_sizes, epoch_batches, load_split, read_manifest
from nmt.errors import NmtError
from nmt.prepare import prepare
from nmt.tokenizer import Tokenizer


def two_corpora_cfg(main: Path, extra: Path, out: Path, weights=(1.0, 1.0)) -> Config:
    train = [{"stem": "train", "weight": weights[0]}]
    train.append({"stem": "bt", "source": str(extra), "weight": weights[1]})
    data = {"corpus": "files", "source": str(main), "prepared_dir": str(out), "vocab_size": 80}
    return config_from_dict({"data": {**data, "train": train}}, origin="test config")


@pytest.fixture
def corpora(make_corpus, tmp_path: Path) -> tuple[Path, Path, list, list]:
    """The default toy corpus (120 training pairs, all kept) and, in a folder of its own, a second
    one `bt` of 60 pairs plus one with an empty side and one repeated pair."""
    main = make_corpus("main")
    src, tgt = toy_pairs(60, seed=7)
    bt_src, bt_tgt = [*src, "", src[0]], [*tgt, "etwas", tgt[0]]
    extra = make_corpus("extra", splits={"bt": (bt_src, bt_tgt)})
    return main, extra, list(zip(*toy_pairs(120, seed=1))), list(zip(src, tgt)) + [(src[0], tgt[0])]


def decoded_pairs(out: Path) -> list[tuple[str, str]]:
    tok, split = Tokenizer.load(out), load_split(out, "train")
    src = tok.src.decode([split.src(i).tolist() for i in range(len(split))])
    return list(zip(src, tok.decode_tgt([split.tgt(i).tolist() for i in range(len(split))])))


def test_each_corpus_is_checked_filtered_and_counted_apart(corpora, tmp_path: Path) -> None:
    main, extra, main_pairs, bt_pairs = corpora
    out = tmp_path / "out"
    cfg = two_corpora_cfg(main, extra, out, weights=(1.0, 0.5))
    manifest = prepare(cfg, log=lambda m: None)
    first, second = manifest["counts"]["train"]["corpora"]
    assert first["corpus"] == "train" and second["corpus"] == f"{extra}/bt"
    assert (first["read"], first["kept"], first["duplicates"]) == (120, 120, 0)
    assert (second["read"], second["kept"], second["duplicates"]) == (62, 61, 1)
    assert second["dropped"] == {"empty": 1, "too_long": 0, "ratio": 0}
    total = manifest["counts"]["train"]
    assert (total["read"], total["kept"]) == (182, 181) and total["dropped"]["empty"] == 1
    inputs = manifest["inputs"]["train"]
    assert [i["src"]["path"] for i in inputs] == [str(main / "train.en"), str(extra / "bt.en")]
    assert [i["tgt"]["lines"] for i in inputs] == [120, 62]
    # the split holds the first corpus's kept pairs, then the second's
    assert decoded_pairs(out) == main_pairs + bt_pairs
    assert corpus_sizes(manifest, cfg) == [120, 61]
    # the weights act in training: another weight needs no new prepare, other corpora do
    read_manifest(out, two_corpora_cfg(main, extra, out, weights=(3.0, 0.25)))
    swapped = config_from_dict(
        {"data": {**cfg.to_dict()["data"], "train": ["train"]}}, origin="test config"
    )
    with pytest.raises(NmtError, match="data.train"):
        read_manifest(out, swapped)


def counts(batches: list[np.ndarray]) -> Counter:
    return Counter(int(i) for b in batches for i in b)


def test_a_corpus_of_weight_two_is_seen_twice_as_often(corpora, tmp_path: Path) -> None:
    main, extra, _, _ = corpora
    out = tmp_path / "out"
    prepare(two_corpora_cfg(main, extra, out), log=lambda m: None)
    split, sizes = load_split(out, "train"), [120, 61]
    for epoch in (0, 1):
        seen = counts(epoch_batches(split, sizes, [2.0, 1.0], 200, seed=1, epoch=epoch))
        assert [seen[i] for i in range(181)] == [2] * 120 + [1] * 61
    # weight 1 everywhere: each pair once, the batches of a single corpus
    plain = epoch_batches(split, sizes, [1.0, 1.0], 200, seed=1, epoch=0)
    expected = bucket_batches(split.src_lens, split.tgt_lens, 200, 1, 0)
    assert [b.tolist() for b in plain] == [b.tolist() for b in expected]


def test_a_fractional_weight_draws_a_new_share_each_epoch(corpora, tmp_path: Path) -> None:
    main, extra, _, _ = corpora
    out = tmp_path / "out"
    prepare(two_corpora_cfg(main, extra, out), log=lambda m: None)
    split, sizes = load_split(out, "train"), [120, 61]
    shares = []
    for epoch in (0, 1, 2):
        batches = epoch_batches(split, sizes, [1.0, 1.5], 200, seed=1, epoch=epoch)
        again = epoch_batches(split, sizes, [1.0, 1.5], 200, seed=1, epoch=epoch)
        assert [b.tolist() for b in batches] == [b.tolist() for b in again]  # (seed, epoch) only
        seen = counts(batches)
        assert all(seen[i] == 1 for i in range(120))
        bt = [seen[i] for i in range(120, 181)]
        assert set(bt) == {1, 2} and sum(bt) in (91, 92)  # 61 x 1.5 = 91.5, rounded at random
        shares.append({i for i in range(120, 181) if seen[i] == 2})
    assert len({frozenset(s) for s in shares}) == 3  # a new share each epoch
    other_seed = counts(epoch_batches(split, sizes, [1.0, 1.5], 200, seed=2, epoch=0))
    assert {i for i in range(120, 181) if other_seed[i] == 2} != shares[0]


def test_weights_too_small_to_draw_a_pair_still_give_an_epoch(corpora, tmp_path: Path) -> None:
    """0.001 x 120 and 0.001 x 61 pairs round to none most epochs: one pair is drawn instead, so
    a run never meets an empty epoch."""
    main, extra, _, _ = corpora
    out = tmp_path / "out"
    prepare(two_corpora_cfg(main, extra, out), log=lambda m: None)
    split = load_split(out, "train")
    for epoch in range(5):
        seen = counts(epoch_batches(split, [120, 61], [0.001, 0.001], 200, seed=1, epoch=epoch))
        assert 1 <= sum(seen.values()) <= 2 and all(i < 181 for i in seen)


@pytest.mark.parametrize(
    "train, message",
    [
        ([{"stem": "train", "weight": 0}], "data.train[0].weight: must be > 0"),
        ([{"stem": "train", "weight": -1.5}], "data.train[0].weight: must be > 0"),
        (["train", "train"], "corpus train is named twice"),
        ([{"stem": "train", "wieght": 2}], "data.train[0].wieght: unknown key"),
        ([{"weight": 2}], "data.train[0]: needs a stem"),
        ([], "expected a file stem or a list of corpora"),
    ],
)
def test_bad_corpus_lists_are_one_clear_error(train, message: str) -> None:
    with pytest.raises(NmtError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(
            {"data": {"corpus": "files", "source": "x", "train": train}}, origin="test config"
        )


def test_a_missing_corpus_of_several_is_named(corpora, tmp_path: Path) -> None:
    main, extra, _, _ = corpora
    (extra / "bt.de").unlink()
    with pytest.raises(NmtError, match=str(extra / "bt.de")):
        prepare(two_corpora_cfg(main, extra, tmp_path / "out"), log=lambda m: None)
    with pytest.raises(NmtError, match=str(tmp_path / "nowhere")):
        prepare(two_corpora_cfg(main, tmp_path / "nowhere", tmp_path / "out"), log=lambda m: None)


def test_one_corpus_as_a_list_is_the_same_data_as_its_stem() -> None:
    from nmt.data import data_settings

    def settings(train) -> dict:
        raw = {"data": {"corpus": "files", "source": "x", "train": train}}
        return data_settings(config_from_dict(raw, origin="test config"))

    assert settings("train") == settings(["train"]) == settings([{"stem": "train", "weight": 2}])
    assert settings([{"stem": "t", "source": "d/"}]) == settings([{"stem": "t", "source": "d"}])


@pytest.mark.parametrize("weight", [".nan", ".inf"])
def test_a_weight_that_is_not_a_finite_number_is_refused(weight: str) -> None:
    from nmt.config import parse_yaml

    raw = {"data": {"corpus": "files", "source": "x", "train": [{"stem": "t",
           "weight": parse_yaml(weight)}]}}  # fmt: skip
    with pytest.raises(NmtError, match=r"data.train\[0\].weight: must be a finite number"):
        config_from_dict(raw, origin="test config")


def test_spm_sample_counts_only_where_it_changes_the_sample() -> None:
    from nmt.data import data_settings, settings_diff

    def settings(spm_sample: int) -> dict:
        raw = {"data": {"corpus": "files", "source": "x", "spm_sample": spm_sample}}
        return data_settings(config_from_dict(raw, origin="test config"))

    # 29,000 pairs: both samples (joint vocabulary: 350,000 and 500,000 pairs) take them all
    assert settings_diff(settings(1_000_000), settings(700_000), read_pairs=29_000) == []
    assert settings_diff(settings(1_000_000), settings(700_000), read_pairs=4_000_000) == [
        "spm_sample"
    ]


# --- through the command line ---


def test_weighted_corpora_through_the_cli(cli, make_corpus, tmp_path: Path) -> None:
    """Two corpora, the second of weight 0.5: prepare counts each, training says what an epoch
    holds, a resume with another weight is refused, bad corpora are one error line."""
    main = make_corpus("main")
    extra = make_corpus("extra", splits={"bt": toy_pairs(40, seed=9)})
    out, run = tmp_path / "out", tmp_path / "run"

    def sets(weight: object) -> list[str]:
        train = f"data.train=[train, {{stem: bt, source: {extra}, weight: {weight}}}]"
        pairs = [train, "data.corpus=files", f"data.source={main}", f"data.prepared_dir={out}"]
        pairs += ["data.vocab_size=60", "train.max_steps=4", "train.valid_bleu=false"]
        return [x for s in pairs for x in ("--set", s)]

    code, _, err = cli("prepare", "--config", SMOKE, *sets(0.5))
    assert code in (0, None), err
    assert "train: 160 pairs read, 160 kept" in err
    assert f"  {extra}/bt: 40 pairs read, 40 kept" in err
    code, _, err = cli("train", "--config", SMOKE, "--run-dir", run, *sets(0.5))
    assert code in (0, None), err
    assert f"an epoch: 140 (train 120 x 1, {extra}/bt 40 x 0.5)" in err
    code, _, err = cli("train", "--config", SMOKE, "--run-dir", run, "--resume", *sets(1))
    assert_one_error_line(code, err, run / "last.pt", "data.train")
    code, _, err = cli("prepare", "--config", SMOKE, *sets(0))
    assert_one_error_line(code, err, "data.train[1].weight", "must be > 0")
    (extra / "bt.de").unlink()
    code, _, err = cli("prepare", "--config", SMOKE, *sets(0.5))
    assert_one_error_line(code, err, extra / "bt.de")
