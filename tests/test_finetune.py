"""A kept vocabulary: `data.tokenizer` makes `nmt prepare` encode new data with an existing model's
SentencePiece model, so `nmt train --init` can fine-tune on it. `--init` starts a new run from the
checkpoint's weights; it is refused on data of another tokenizer, and together with --resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import SMOKE, assert_one_error_line
from conftest import SmokeRun
from toy_language import toy_sentences

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.errors import NmtError
from nmt.prepare import prepare
from nmt.tokenizer import Tokenizer
from nmt.train import train
from nmt.translate import load_translator, translate_lines


@pytest.fixture(scope="module")
def first(repo_root: Path, toy_data: list[str], tmp_path_factory) -> dict:
    """A model trained on the toy corpus (its own SentencePiece model), and a second corpus of new
    sentences of the same language, for fine-tuning."""
    work = tmp_path_factory.mktemp("finetune")
    sets = [*toy_data, f"data.prepared_dir={work / 'prepared'}", "train.max_steps=30"]
    cfg = load_config(repo_root / "configs" / "smoke.yaml", sets)
    prepare(cfg, log=lambda m: None)
    run = train(cfg, work / "run")
    second = work / "second"
    second.mkdir()
    for stem, n, seed in (("train", 300, 11), ("val", 20, 12), ("test_2016_flickr", 20, 13)):
        for lang, lines in zip(("en", "de"), toy_sentences(n, seed)):
            (second / f"{stem}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"run": run, "prepared": work / "prepared", "second": second, "work": work}


def second_cfg(repo_root: Path, first: dict, out: str, *more: str):
    sets = ["data.corpus=files", f"data.source={first['second']}", f"data.prepared_dir={out}"]
    return load_config(repo_root / "configs" / "smoke.yaml", [*sets, *more])


def test_prepare_keeps_the_vocabulary_a_checkpoint_a_folder_or_a_model_file_names(
    repo_root: Path, first: dict
) -> None:
    original = Tokenizer.load(first["prepared"])
    run = first["run"]
    for i, kept in enumerate(
        [run / "best.pt", run, first["prepared"], first["prepared"] / "spm.model"]
    ):
        out = first["work"] / f"kept{i}"
        # vocab_size differs from the first run's: a kept vocabulary ignores it
        cfg = second_cfg(repo_root, first, str(out), f"data.tokenizer={kept}", "data.vocab_size=50")
        manifest = prepare(cfg, log=lambda m: None)
        assert manifest["tokenizer"]["sha256"] == original.sha256, kept
        assert (out / "spm.model").read_bytes() == original.src_proto
        assert manifest["data"]["tokenizer"] == str(kept)
    trained = prepare(second_cfg(repo_root, first, str(first["work"] / "own")), log=lambda m: None)
    assert trained["tokenizer"]["sha256"] != original.sha256  # what happens without it


def test_fine_tuning_on_new_data_needs_the_kept_vocabulary(repo_root: Path, first: dict) -> None:
    """Train on one corpus, prepare a second with the first run's tokenizer, fine-tune with
    --init, translate; the same second corpus with its own vocabulary is refused."""
    best = first["run"] / "best.pt"
    own = second_cfg(repo_root, first, str(first["work"] / "own2"), "train.max_steps=10")
    prepare(own, log=lambda m: None)
    with pytest.raises(NmtError, match="different tokenizer"):
        train(own, first["work"] / "refused", init=str(best))

    kept = [f"data.tokenizer={best}", "train.max_steps=10"]
    cfg = second_cfg(repo_root, first, str(first["work"] / "kept"), *kept)
    prepare(cfg, log=lambda m: None)
    tuned = train(cfg, first["work"] / "tuned", init=str(best)) / "last.pt"
    ckpt = load_checkpoint(tuned)
    assert ckpt["train_state"]["step"] == 10
    assert ckpt["tokenizer"] == load_checkpoint(best)["tokenizer"]
    tr = load_translator(tuned, "cpu")
    hyps = translate_lines(tr, ["A small dog runs."], replace(tr.settings(), beam=2, alpha=0.6))
    assert tr.tok.decode_tgt([hyps[0][0].tokens])[0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda w: w / "none.pt", "cannot read"),
        (lambda w: w / "notes.txt", "neither a checkpoint"),
        (lambda w: (w / "empty_dir").mkdir() or w / "empty_dir", "holds no spm.model"),
    ],
    ids=["missing", "not_a_model", "folder_without_one"],
)
def test_a_path_that_names_no_tokenizer_is_one_error(
    repo_root: Path, first: dict, tmp_path: Path, make, message: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a model\n", encoding="utf-8")
    path = make(tmp_path)
    cfg = second_cfg(repo_root, first, str(tmp_path / "out"), f"data.tokenizer={path}")
    with pytest.raises(NmtError, match=message) as info:
        prepare(cfg, log=lambda m: None)
    assert f"data.tokenizer: {path}" in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_joint_vocabulary_kept_for_separate_ones_is_refused(repo_root: Path, first: dict) -> None:
    cfg = second_cfg(
        repo_root,
        first,
        str(first["work"] / "separate"),
        f"data.tokenizer={first['prepared']}",
        "data.joint_vocab=false",
        "model.share_embeddings=false",
    )
    with pytest.raises(NmtError, match="one joint vocabulary; set data.joint_vocab: true"):
        prepare(cfg, log=lambda m: None)


# --- through the command line: `nmt train --init` on the smoke run of tests/conftest.py ---


def test_fine_tuning_with_another_tokenizer_is_refused(
    cli, smoke: SmokeRun, other_prepared: Path, tmp_path: Path
) -> None:
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "ft",
        "--init",
        smoke.run / "best.pt",
        *smoke.sets,
        "--set",
        f"data.prepared_dir={other_prepared}",
        "--set",
        "data.vocab_size=100",
    )
    assert_one_error_line(code, err, smoke.run / "best.pt", "different tokenizer", "fine-tune")
    assert not list((tmp_path / "ft").glob("*.pt"))


def test_fine_tuning_starts_from_the_checkpoint_weights(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    import torch

    from nmt.checkpoint import load_checkpoint

    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "ft",
        "--init",
        smoke.run / "best.pt",
        *smoke.sets,
        "--set",
        "train.max_steps=1",
        "--set",
        "train.lr=1e-12",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.valid_bleu=false",
    )
    assert code in (0, None), err
    start, tuned = (
        load_checkpoint(smoke.run / "best.pt"),
        load_checkpoint(tmp_path / "ft" / "last.pt"),
    )
    # a new run: its own step count, optimizer and schedule
    assert tuned["train_state"]["step"] == 1
    assert all(torch.allclose(t, tuned["model"][k], atol=1e-6) for k, t in start["model"].items())
    env = json.loads((tmp_path / "ft" / "env.json").read_text())["sessions"][-1]
    assert env["init_from"] == str(smoke.run / "best.pt") and env["start_step"] == 0


def test_init_and_resume_together_are_refused(cli, smoke: SmokeRun, run_copy: Path) -> None:
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        run_copy,
        "--resume",
        "--init",
        smoke.run / "best.pt",
        *smoke.sets,
    )
    assert_one_error_line(code, err, "--init", "--resume")
