"""`nmt sweep`: the grid of search settings it tries, its scores on valid (the same as
`nmt evaluate` gives for each setting), and a bad grid as one `error:` line. Through `nmt.cli.main`
on the smoke run of tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line
from conftest import SmokeRun


def test_sweep_grid_tries_the_stopping_rules_only_with_a_beam() -> None:
    from nmt.sweep import Grid

    assert Grid([1, 2], [0.6], [0], [False, True]).settings() == [
        (1, 0.6, 0, False),
        (2, 0.6, 0, False),
        (2, 0.6, 0, True),
    ]
    assert Grid([1], [0.6, 1.0], [0, 2], [True, False]).settings() == [
        (1, 0.6, 0, True),
        (1, 0.6, 2, True),
    ]


def test_sweep_scores_a_grid_on_valid_and_agrees_with_evaluate(
    cli, smoke: SmokeRun, run_copy: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "sweep.json"
    code, out, err = cli(
        "sweep",
        "--checkpoint",
        run_copy / "best.pt",
        "--beam",
        "1,2",
        "--alpha",
        "0,1.0",
        "-o",
        out_json,
    )
    assert code in (0, None), err
    rows = json.loads(out_json.read_text())["rows"]
    # beam 1: one alpha
    assert [(r["beam"], r["alpha"]) for r in rows] == [(1, 0.0), (2, 0.0), (2, 1.0)]
    best = max(rows, key=lambda r: r["bleu"])
    assert f"best on valid: --beam {best['beam']} --alpha {best['alpha']}" in out
    code, out, err = cli(
        "evaluate",
        "--checkpoint",
        run_copy / "best.pt",
        "--split",
        "valid",
        "--beam",
        "2",
        "--alpha",
        "1.0",
        "--json",
    )
    assert code in (0, None), err
    assert json.loads(out)["metrics"]["bleu"]["score"] == rows[2]["bleu"]


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--beam", "0,2"),
        ("--alpha", "0.6,x"),
        ("--no-repeat-ngram", "-1"),
        ("--early-exit", "no,maybe"),
    ],
)
def test_sweep_with_a_bad_grid(cli, smoke: SmokeRun, flag: str, value: str) -> None:
    code, _, err = cli("sweep", "--checkpoint", smoke.run / "best.pt", flag, value)
    assert code == 2
    assert_one_error_line(code, err, flag)
