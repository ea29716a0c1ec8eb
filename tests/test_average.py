"""Checkpoint averaging: the mean of the weights, refused where a mean would be meaningless; and
`nmt average` on the smoke run of tests/conftest.py: its last checkpoints averaged and evaluated,
bad requests as one `error:` line, training files never overwritten through a symlink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line
from conftest import SmokeRun

from nmt.average import average, select
from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.config import load_config
from nmt.errors import NmtError
from nmt.models import build_model
from nmt.retention import step_name

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def write(
    path: Path, seed: int, step: int, overrides: tuple[str, ...] = (), tokenizer: str = "tok-a"
) -> Path:
    cfg = load_config(SMOKE, overrides)
    torch.manual_seed(seed)
    model = build_model(cfg.model, 50, 50)
    save_checkpoint(
        path,
        {
            "config": cfg.to_dict(),
            "tokenizer": {"stub": tokenizer},
            "tokenizer_sha256": tokenizer,
            "model": model.state_dict(),
            "train_state": {"step": step},
        },
    )
    return path


def test_two_identical_checkpoints_average_to_the_same_weights(tmp_path: Path) -> None:
    a = write(tmp_path / "a.pt", seed=1, step=10)
    average([a, a], tmp_path / "avg.pt")
    before, after = load_checkpoint(a)["model"], load_checkpoint(tmp_path / "avg.pt")["model"]
    assert before.keys() == after.keys()
    assert all(
        torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before
    )


def test_average_is_the_mean_of_the_parameters(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"{i}.pt", seed=i, step=10 * i) for i in (1, 2, 3)]
    result = average(paths, tmp_path / "avg.pt")
    assert [s["step"] for s in result["averaged_from"]] == [10, 20, 30]
    states = [load_checkpoint(p)["model"] for p in paths]
    avg = load_checkpoint(tmp_path / "avg.pt")
    assert avg["averaged_from"] == result["averaged_from"] and "optimizer" not in avg
    # the inputs really differ
    assert not torch.equal(states[0]["src_embed.weight"], states[1]["src_embed.weight"])
    for k, v in avg["model"].items():
        if v.is_floating_point():
            assert torch.allclose(v, (states[0][k] + states[1][k] + states[2][k]) / 3, atol=1e-6), k


def test_checkpoints_of_different_models_or_tokenizers_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path / "a.pt", seed=1, step=10)
    wide = write(tmp_path / "wide.pt", seed=1, step=10, overrides=("model.ffn=128",))
    with pytest.raises(NmtError, match=r"model config differs .*model\.ffn"):
        average([a, wide], tmp_path / "avg.pt")
    other = write(tmp_path / "other.pt", seed=1, step=10, tokenizer="tok-b")
    with pytest.raises(NmtError, match="different tokenizer"):
        average([a, other], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()


def test_the_average_never_overwrites_a_training_file_or_an_input(tmp_path: Path) -> None:
    a = write(tmp_path / "a.pt", seed=1, step=10)
    for name in ("last.pt", "best.pt"):
        with pytest.raises(NmtError, match="belongs to training"):
            average([a], tmp_path / name)
    with pytest.raises(NmtError, match="is one of the checkpoints"):
        average([a, a], a)


def test_select_by_age_or_by_validation_score(tmp_path: Path) -> None:
    run = tmp_path / "run"
    scores = {10: 5.0, 20: 9.0, 30: 7.0, 40: 6.0}
    for step in scores:
        write(run / "checkpoints" / step_name(step), seed=step, step=step)
    index = {
        step_name(s): {"step": s, "valid_bleu": b, "valid_loss": 1.0} for s, b in scores.items()
    }
    (run / "checkpoints" / "index.json").write_text(json.dumps(index))
    assert [p.name for p in select(run, last=2, best=None)] == [step_name(30), step_name(40)]
    # BLEU 9 and 7, oldest first
    assert [p.name for p in select(run, last=None, best=2)] == [step_name(20), step_name(30)]
    with pytest.raises(NmtError, match="kept 4.*train.keep_last"):
        select(run, last=5, best=None)
    with pytest.raises(NmtError, match="one of --last N or --best N"):
        select(run, last=2, best=2)


# --- through the command line: `nmt average` on the smoke run of tests/conftest.py ---


def test_average_the_last_checkpoints_of_a_run_and_evaluate_it(
    cli, smoke: SmokeRun, run_copy: Path
) -> None:
    code, out, err = cli("average", "--run-dir", run_copy, "--last", "2")
    assert code in (0, None), err
    assert "averaged 2 checkpoints (steps 100, 200)" in out
    averaged = run_copy / "average-last-2.pt"
    code, out, err = cli(
        "evaluate", "--checkpoint", averaged, "--split", "valid", "--beam", "1", "--json"
    )
    assert code in (0, None), err
    assert json.loads(out)["decode"]["no_repeat_ngram"] == 0


@pytest.mark.parametrize(
    "args,names",
    [
        ([], ["--run-dir"]),
        (["{run}/best.pt"], ["--output"]),
        (["--run-dir", "{run}", "--last", "9"], ["kept", "train.keep_last"]),
        (["--run-dir", "{run}"], ["--last N", "--best N"]),
    ],
)
def test_average_bad_requests(cli, smoke: SmokeRun, args: list[str], names: list[str]) -> None:
    code, _, err = cli("average", *[a.format(run=smoke.run) for a in args])
    assert_one_error_line(code, err, *names)


def test_average_refuses_a_symlink_onto_training_files(
    cli, smoke: SmokeRun, run_copy: Path, tmp_path: Path
) -> None:
    link = tmp_path / "avg.pt"
    link.symlink_to(run_copy / "last.pt")
    before = (run_copy / "last.pt").read_bytes()
    code, _, err = cli("average", run_copy / "best.pt", run_copy / "last.pt", "-o", link)
    assert_one_error_line(code, err, link, "last.pt belongs to training")
    assert (run_copy / "last.pt").read_bytes() == before
