"""Faults during training: a non-finite loss or an out-of-memory batch is skipped (counted, logged);
many in a row stop the run with a message naming the cause and the setting to change."""

import pytest
import torch

import nmt.loss
import nmt.train as train_mod
from nmt.checkpoint import load_checkpoint
from nmt.config import DecodeOptions, load_config
from nmt.errors import NmtError
from nmt.evaluate import evaluate_checkpoint
from nmt.prepare import prepare
from nmt.validation import Validation


def smoke(repo_root, toy_data, tmp_path, steps, *more):
    cfg = load_config(
        repo_root / "configs" / "smoke.yaml",
        [
            *toy_data,
            f"data.prepared_dir={tmp_path / 'prepared'}",
            f"train.max_steps={steps}",
            "train.valid_every=1000",
            "train.threads=1",
            "train.valid_bleu=false",
            *more,
        ],
    )
    prepare(cfg, log=lambda m: None)
    return cfg


def poison(monkeypatch, bad_calls):
    """Make the training loss NaN on the given calls (1-based) of the fused loss."""
    real, calls = nmt.loss.projected_loss, [0]

    def projected_loss(hidden, weight, target, smoothing):
        calls[0] += 1
        loss, nll = real(hidden, weight, target, smoothing)
        return (loss * float("nan"), nll) if calls[0] in bad_calls else (loss, nll)

    monkeypatch.setattr(nmt.loss, "projected_loss", projected_loss)


def test_one_bad_step_is_skipped_and_counted(repo_root, toy_data, tmp_path, monkeypatch):
    cfg = smoke(repo_root, toy_data, tmp_path, 6)
    poison(monkeypatch, {3})
    run = train_mod.train(cfg, tmp_path / "run")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["step"] == 6 and ckpt["train_state"]["skipped_steps"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_many_bad_steps_in_a_row_stop_with_advice(repo_root, toy_data, tmp_path, monkeypatch):
    cfg = smoke(repo_root, toy_data, tmp_path, 100)
    poison(monkeypatch, set(range(1, 1000)))
    with pytest.raises(NmtError, match=r"10 updates in a row .* train\.lr"):
        train_mod.train(cfg, tmp_path / "run")


def out_of_memory(monkeypatch, bad_calls):
    """Make the given calls (1-based) of the fused
    loss raise the out-of-memory error CUDA raises."""
    real, calls = nmt.loss.projected_loss, [0]

    def projected_loss(hidden, weight, target, smoothing):
        calls[0] += 1
        if calls[0] in bad_calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(hidden, weight, target, smoothing)

    monkeypatch.setattr(nmt.loss, "projected_loss", projected_loss)


def test_an_out_of_memory_batch_is_skipped_and_logged(
    repo_root, toy_data, tmp_path, monkeypatch, capsys
):
    cfg = smoke(repo_root, toy_data, tmp_path, 6)
    out_of_memory(monkeypatch, {3})
    run = train_mod.train(cfg, tmp_path / "run")
    state = load_checkpoint(run / "last.pt")["train_state"]
    assert state["step"] == 6 and state["oom_skipped"] == 1
    # six steps and the skipped batch: no batch is trained twice
    assert state["batch_in_epoch"] == 7
    err = capsys.readouterr().err
    assert (
        "out of memory after step 2" in err
        and "sentences x" in err
        and "batch skipped (1 so far)" in err
    )


def test_repeated_out_of_memory_stops_with_advice(repo_root, toy_data, tmp_path, monkeypatch):
    cfg = smoke(repo_root, toy_data, tmp_path, 100)
    out_of_memory(monkeypatch, {2, 3, 4, 5, 6})
    with pytest.raises(
        NmtError,
        match=r"out of memory on 5 batches in a row .* lower train\.max_tokens \(now 1024\)",
    ):
        train_mod.train(cfg, tmp_path / "run")


def test_valid_lines_longer_than_the_model_are_cut_with_a_warning(
    repo_root, toy_corpus, tmp_path, capsys
):
    """One 400-word line in val and in test: validation runs, a checkpoint is written, and
    `nmt evaluate` scores test (the line cut as translate cuts it)."""
    import gzip
    import shutil

    folder = tmp_path / "corpus"
    shutil.copytree(toy_corpus, folder)
    for stem in ("val", "test_2016_flickr"):
        for lang, word in (("en", "dog"), ("de", "hund")):
            path = folder / f"{stem}.{lang}.gz"
            lines = gzip.decompress(path.read_bytes()).decode().splitlines()
            lines[3] = " ".join([word] * 400)
            path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    data = ["data.corpus=files", f"data.source={folder}"]
    cfg = smoke(repo_root, data, tmp_path, 4, "train.valid_every=2", "train.valid_bleu=true")
    run = train_mod.train(cfg, tmp_path / "run")
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 4
    assert (
        "warning: 1 valid pair(s) longer than the model's 127 subwords" in capsys.readouterr().err
    )
    result = evaluate_checkpoint(str(run / "last.pt"), "test", given=DecodeOptions(beam=1))
    assert result["metrics"]["bleu"]["score"] >= 0
    assert "1 input line(s) longer than the model's 127 subwords" in capsys.readouterr().err


def test_a_failing_validation_saves_the_steps_first(repo_root, toy_data, tmp_path, monkeypatch):
    cfg = smoke(repo_root, toy_data, tmp_path, 100, "train.valid_every=3")

    def broken(self):
        raise RuntimeError("something inside validation broke\nwith a second line")

    monkeypatch.setattr(Validation, "run", broken)
    run = tmp_path / "run"
    with pytest.raises(NmtError) as info:
        train_mod.train(cfg, run)
    message = str(info.value)
    assert (
        "validation failed at step 3 (RuntimeError: something inside validation broke)" in message
    )
    assert f"{run / 'last.pt'} saved" in message and "--resume" in message
    assert "\n" not in message
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 3


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES"])
def test_a_save_that_fails_keeps_the_last_good_checkpoint(
    repo_root, toy_data, tmp_path, monkeypatch, fail_fsync, errno_name
):
    """The disk fills (or the folder turns read-only) at the second save: one error naming the
    file and the reason, the first save intact, no temporary file left, --resume goes on."""
    import errno
    import os

    cfg = smoke(repo_root, toy_data, tmp_path, 6, "train.valid_every=2")
    fail_fsync("last.pt.", nth=2, code=getattr(errno, errno_name))
    run = tmp_path / "run"
    with pytest.raises(NmtError) as info:
        train_mod.train(cfg, run)
    message = str(info.value)
    reason = os.strerror(getattr(errno, errno_name))
    assert f"cannot save step 4: {reason}" in message and "--resume" in message
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 2
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    train_mod.train(cfg, run, resume=True)
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 6
