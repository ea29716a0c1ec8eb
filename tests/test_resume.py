"""--resume continues a run where it stopped: same parameters as a run that never stopped; through
`nmt train --resume`, a resume that does not fit the run (nothing to resume, another model config
or tokenizer) is one `error:` line and leaves the run as it was."""

from pathlib import Path

import pytest
import torch
from cli_helpers import SMOKE, assert_one_error_line, snapshot
from conftest import SmokeRun

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.prepare import prepare
from nmt.train import train


def smoke_cfg(repo_root, toy_data, tmp_path, steps, *more):
    """configs/smoke.yaml on the toy corpus, `steps` long (not the `smoke` run of conftest.py)."""
    return load_config(
        repo_root / "configs" / "smoke.yaml",
        [
            *toy_data,
            *more,
            f"data.prepared_dir={tmp_path / 'prepared'}",
            f"train.max_steps={steps}",
            "train.valid_every=10",
            "train.threads=1",
            "train.valid_bleu=false",
        ],
    )


@pytest.mark.parametrize("more", [[], ["data.train=[{stem: train, weight: 0.3}]"]])
def test_resumed_run_matches_uninterrupted_run(repo_root, toy_data, tmp_path, more):
    """Also with a weighted corpus (a new 30% of it each epoch): the steps cross epochs."""
    prepare(smoke_cfg(repo_root, toy_data, tmp_path, 30, *more), log=lambda m: None)
    straight = train(smoke_cfg(repo_root, toy_data, tmp_path, 30, *more), tmp_path / "straight")
    # 20 steps, then "killed"
    stopped = train(smoke_cfg(repo_root, toy_data, tmp_path, 20, *more), tmp_path / "stopped")
    assert load_checkpoint(stopped / "last.pt")["train_state"]["step"] == 20
    train(smoke_cfg(repo_root, toy_data, tmp_path, 30, *more), stopped, resume=True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(stopped / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 30
    if more:
        assert a["train_state"]["epoch"] >= 2  # resampled more than once
    assert (
        a["train_state"]["epoch"] == b["train_state"]["epoch"]
        and a["train_state"]["batch_in_epoch"] == b["train_state"]["batch_in_epoch"]
    )
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_resuming_a_finished_run_takes_no_step(repo_root, toy_data, tmp_path):
    cfg = smoke_cfg(repo_root, toy_data, tmp_path, 10)
    prepare(cfg, log=lambda m: None)
    run = train(cfg, tmp_path / "run")
    before = load_checkpoint(run / "last.pt")
    train(cfg, run, resume=True)
    after = load_checkpoint(run / "last.pt")
    assert after["train_state"]["step"] == before["train_state"]["step"] == 10
    assert all(torch.equal(t, after["model"][k]) for k, t in before["model"].items())


def test_fp16_run_keeps_its_loss_scaler_across_resume(repo_root, toy_data, tmp_path):
    def cfg(steps):
        return load_config(
            repo_root / "configs" / "smoke.yaml",
            [
                *toy_data,
                f"data.prepared_dir={tmp_path / 'prepared'}",
                f"train.max_steps={steps}",
                "train.valid_every=10",
                "train.threads=1",
                "train.valid_bleu=false",
                "train.precision=fp16",
            ],
        )

    prepare(cfg(20), log=lambda m: None)
    straight = load_checkpoint(train(cfg(20), tmp_path / "straight") / "last.pt")
    run = train(cfg(10), tmp_path / "run")
    # ten steps without overflow
    assert load_checkpoint(run / "last.pt")["scaler"]["_growth_tracker"] == 10
    train(cfg(20), run, resume=True)
    resumed = load_checkpoint(run / "last.pt")
    assert resumed["scaler"] == straight["scaler"] and resumed["scaler"]["_growth_tracker"] == 20
    assert all(torch.equal(t, resumed["model"][k]) for k, t in straight["model"].items())


def test_same_config_and_seed_give_the_same_model_and_the_run_records_its_environment(
    repo_root, toy_data, tmp_path
):
    import json
    import platform
    import subprocess

    cfg = smoke_cfg(repo_root, toy_data, tmp_path, 12)
    prepare(cfg, log=lambda m: None)
    a, b = train(cfg, tmp_path / "a"), train(cfg, tmp_path / "b")
    ma, mb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(t, mb[k]) for k, t in ma.items())
    train(smoke_cfg(repo_root, toy_data, tmp_path, 15), a, resume=True)
    sessions = json.loads((a / "env.json").read_text())["sessions"]
    assert [s["start_step"] for s in sessions] == [0, 12]  # one record per invocation
    env = sessions[-1]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True
    ).stdout.strip()
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["sentencepiece"] and env["sacrebleu"] and env["git_commit"] == (head or None)
    assert isinstance(env["command"], list) and env["command"]


# --- through the command line: `nmt train --resume` on the smoke run of tests/conftest.py ---


def test_resume_with_nothing_to_resume(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    code, _, err = cli(
        "train", "--config", SMOKE, "--run-dir", tmp_path / "fresh", "--resume", *smoke.sets
    )
    assert_one_error_line(code, err, tmp_path / "fresh" / "last.pt")


def test_resume_with_a_changed_model_config_is_refused(
    cli, smoke: SmokeRun, run_copy: Path
) -> None:
    before = snapshot(run_copy)
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        run_copy,
        "--resume",
        *smoke.sets,
        "--set",
        "model.d_model=32",
        "--set",
        "model.ffn=128",
    )
    assert_one_error_line(code, err, run_copy / "last.pt", "model.d_model", "model.ffn")
    assert snapshot(run_copy) == before


def test_resume_with_another_tokenizer_is_refused(
    cli, smoke: SmokeRun, run_copy: Path, other_prepared: Path
) -> None:
    before = snapshot(run_copy)
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        run_copy,
        "--resume",
        *smoke.sets,
        "--set",
        f"data.prepared_dir={other_prepared}",
        "--set",
        "data.vocab_size=100",
    )
    assert_one_error_line(code, err, "different tokenizer", other_prepared, "resume")
    assert snapshot(run_copy) == before


def test_resume_from_a_checkpoint_written_before_newer_data_keys(
    cli, smoke: SmokeRun, run_copy: Path
) -> None:
    """A checkpoint whose config lacks keys added since (they count as their defaults) resumes."""
    from nmt.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run_copy / "last.pt")
    for key in ("spm_sample", "workers", "tokenizer"):
        del ckpt["config"]["data"][key]
    for name in ("last.pt", "best.pt"):
        save_checkpoint(run_copy / name, {k: v for k, v in ckpt.items() if k not in ("path",
                        "format", "version")})  # fmt: skip
    step = ckpt["train_state"]["step"]
    code, _, err = cli(
        "train", "--config", SMOKE, "--run-dir", run_copy, "--resume", *smoke.sets,
        "--set", f"train.max_steps={step + 2}", "--set", "train.threads=1",
    )  # fmt: skip
    assert code == 0, err
    assert load_checkpoint(run_copy / "last.pt")["train_state"]["step"] == step + 2
