"""`nmt evaluate`: a checkpoint scored on a split, or hypotheses against references; the results of
each setting (search, length limits, precision) saved apart beside the checkpoint, and its error
paths as one `error:` line. Through `nmt.cli.main` on the smoke run of tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, write
from conftest import SmokeRun


def test_evaluate_that_cannot_write_beside_the_checkpoint(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((smoke.run / "best.pt").read_bytes())
    (run / "valid.best.beam1.alpha0.6.hyp.txt").mkdir()  # where the hypotheses would go
    code, _, err = cli(
        "evaluate",
        "--checkpoint",
        run / "best.pt",
        "--split",
        "valid",
        "--beam",
        "1",
        "--alpha",
        "0.6",
    )
    assert_one_error_line(code, err, run, "valid.best.beam1.alpha0.6.hyp.txt")


def test_evaluate_keeps_the_results_of_each_setting_apart(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((smoke.run / "best.pt").read_bytes())
    settings = (
        ["--beam", "2", "--alpha", "0"],
        ["--beam", "2", "--alpha", "1"],
        ["--beam", "2", "--alpha", "1", "--no-repeat-ngram", "2"],
        ["--beam", "2", "--alpha", "1", "--max-len-a", "0.5", "--max-len-b", "2"],
    )
    for args in settings:
        code, out, err = cli(
            "evaluate", "--checkpoint", run / "best.pt", "--split", "valid", *args, "--json"
        )
        assert code == 0, err
    saved = {p.name: json.loads(p.read_text()) for p in run.glob("valid.*.json")}
    assert sorted(saved) == [
        "valid.best.beam2.alpha0.json",
        "valid.best.beam2.alpha1.json",
        "valid.best.beam2.alpha1.len0.5x+2.json",
        "valid.best.beam2.alpha1.norepeat2.json",
    ]
    assert [
        saved["valid.best.beam2.alpha0.json"]["alpha"],
        saved["valid.best.beam2.alpha1.json"]["alpha"],
    ] == [0.0, 1.0]
    assert saved["valid.best.beam2.alpha1.norepeat2.json"]["decode"]["no_repeat_ngram"] == 2
    assert saved["valid.best.beam2.alpha1.len0.5x+2.json"]["decode"]["max_len_b"] == 2
    for name, result in saved.items():  # each JSON names its own hypotheses, which exist
        assert (
            Path(result["hyp"]).name == name.replace(".json", ".hyp.txt")
            and Path(result["hyp"]).exists()
        )


def test_evaluate_mismatched_line_counts(cli, tmp_path: Path) -> None:
    hyp = write(tmp_path / "hyp.txt", "a\nb\nc\n")
    ref = write(tmp_path / "ref.txt", "a\nb\n")
    code, _, err = cli("evaluate", "--hyp", hyp, "--ref", ref)
    assert_one_error_line(code, err, hyp, ref)


def test_evaluate_identical_files_score_perfectly(cli, tmp_path: Path) -> None:
    ref = write(tmp_path / "ref.txt", "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n")
    code, out, err = cli("evaluate", "--hyp", ref, "--ref", ref, "--json")
    assert code in (0, None), err
    m = json.loads(out)["metrics"]
    assert (m["bleu"]["score"], m["chrf"]["score"], m["ter"]["score"]) == (100.0, 100.0, 0.0)


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate"],  # neither --hyp/--ref nor --checkpoint
        ["evaluate", "--hyp", "h.txt"],  # --hyp without --ref
        # both ways at once
        ["evaluate", "--checkpoint", "c.pt", "--hyp", "h.txt", "--ref", "r.txt"],
    ],
)
def test_evaluate_needs_exactly_one_way_in(cli, args: list[str]) -> None:
    code, _, err = cli(*args)
    assert_one_error_line(code, err, "--hyp")


def test_evaluate_unknown_split(cli, smoke: SmokeRun) -> None:
    code, _, err = cli("evaluate", "--checkpoint", smoke.run / "best.pt", "--split", "train")
    assert code == 2
    assert_one_error_line(code, err, "--split train")


def test_evaluate_with_a_prepared_dir_of_another_tokenizer(
    cli, smoke: SmokeRun, other_prepared: Path
) -> None:
    code, _, err = cli(
        "evaluate", "--checkpoint", smoke.run / "best.pt", "--prepared-dir", other_prepared
    )
    assert_one_error_line(code, err, "different tokenizer", other_prepared)


def test_evaluate_empty_files(cli, tmp_path: Path) -> None:
    hyp, ref = write(tmp_path / "hyp.txt", ""), write(tmp_path / "ref.txt", "")
    code, _, err = cli("evaluate", "--hyp", hyp, "--ref", ref)
    assert_one_error_line(code, err, ref, "empty")


def test_evaluate_keeps_the_results_of_each_precision_apart(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    import torch

    from nmt.precision import decode_precision

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((smoke.run / "best.pt").read_bytes())
    # bf16 on a CPU with bf16 instructions, else fp32
    default = decode_precision(torch.device("cpu"), "auto")
    for precision in ("auto", "fp32", "bf16"):
        code, out, err = cli(
            "evaluate",
            "--checkpoint",
            run / "best.pt",
            "--split",
            "valid",
            "--beam",
            "1",
            "--alpha",
            "0.6",
            "--device",
            "cpu",
            "--precision",
            precision,
            "--json",
        )
        assert code in (0, None), err
        assert json.loads(out)["precision"] == (default if precision == "auto" else precision)
    other = "fp32" if default == "bf16" else "bf16"  # the default is not named; the others are
    assert sorted(p.name for p in run.glob("valid.*.json")) == sorted(
        [
            "valid.best.beam1.alpha0.6.json",
            f"valid.best.beam1.alpha0.6.{other}.json",
        ]
    )
