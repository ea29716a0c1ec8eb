"""Faults during training: a non-finite loss or an out-of-memory batch is skipped (counted, logged);
many in a row stop the run with a message naming the cause and the setting to change."""

import pytest
import torch

import nmt.loss
import nmt.train as train_mod
from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.errors import NmtError
from nmt.prepare import prepare


def smoke(repo_root, toy_data, tmp_path, steps):
    cfg = load_config(
        repo_root / "configs" / "smoke.yaml",
        [
            *toy_data,
            f"data.prepared_dir={tmp_path / 'prepared'}",
            f"train.max_steps={steps}",
            "train.valid_every=1000",
            "train.threads=1",
            "train.valid_bleu=false",
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
