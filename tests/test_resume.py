"""--resume continues a run where it stopped: same parameters as a run that never stopped."""

import torch

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.prepare import prepare
from nmt.train import train


def smoke(repo_root, multi30k_dir, tmp_path, steps):
    return load_config(
        repo_root / "configs" / "smoke.yaml",
        [f"data.source={multi30k_dir}", f"data.prepared_dir={tmp_path / 'prepared'}", f"train.max_steps={steps}",
         "train.valid_every=10", "train.threads=1", "train.valid_bleu=false"],
    )


def test_resumed_run_matches_uninterrupted_run(repo_root, multi30k_dir, tmp_path):
    prepare(smoke(repo_root, multi30k_dir, tmp_path, 30), log=lambda m: None)
    straight = train(smoke(repo_root, multi30k_dir, tmp_path, 30), tmp_path / "straight")
    stopped = train(smoke(repo_root, multi30k_dir, tmp_path, 20), tmp_path / "stopped")  # 20 steps, then "killed"
    assert load_checkpoint(stopped / "last.pt")["train_state"]["step"] == 20
    train(smoke(repo_root, multi30k_dir, tmp_path, 30), stopped, resume=True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(stopped / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 30
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] and a["train_state"]["batch_in_epoch"] == b["train_state"]["batch_in_epoch"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_resuming_a_finished_run_takes_no_step(repo_root, multi30k_dir, tmp_path):
    cfg = smoke(repo_root, multi30k_dir, tmp_path, 10)
    prepare(cfg, log=lambda m: None)
    run = train(cfg, tmp_path / "run")
    before = load_checkpoint(run / "last.pt")
    train(cfg, run, resume=True)
    after = load_checkpoint(run / "last.pt")
    assert after["train_state"]["step"] == before["train_state"]["step"] == 10
    assert all(torch.equal(t, after["model"][k]) for k, t in before["model"].items())
