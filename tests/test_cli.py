"""The command line as such: end to end on configs/smoke.yaml, and what every command shares: config
and usage errors as one `error:` line with exit status 2 where it is a usage error, --help within
80 columns, outputs checked before any work, and stdout that cannot take the output (a full disk,
a reader that goes away). The tests of each command are in the file of its module
(test_translate.py, test_evaluate.py, test_sweep.py, ...); the smoke run and the `cli` fixture
they share are in tests/conftest.py, their helpers in tests/cli_helpers.py.

The end-to-end test runs the real program in subprocesses (`python -m nmt ...`) for each stage.
Further calls, and most error paths, go through `nmt.cli.main` in-process: it is the console-script
entry point itself, and it saves the ~2.5 s each subprocess spends importing torch. One error path
also runs as a subprocess to check the real exit status and stderr.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import (
    LONG,
    NBEST_LINE,
    SHORT,
    SMOKE,
    assert_one_error_line,
    nmt,
    ok,
    write,
)
from conftest import SmokeRun


def test_end_to_end(smoke: SmokeRun, cli, tmp_path: Path) -> None:
    ok(smoke.prepare)
    assert (smoke.prepared / "manifest.json").is_file() and (smoke.prepared / "spm.model").is_file()
    ok(smoke.train)
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl"):
        assert (smoke.run / name).is_file(), name
    ckpt, cwd = smoke.run / "best.pt", smoke.cwd

    # 1-best, stdin and file: one line per input line, an empty line stays an empty line
    lines = [LONG, "", SHORT]
    text = "".join(line + "\n" for line in lines)
    from_stdin = ok(nmt("translate", "--checkpoint", ckpt, cwd=cwd, stdin=text.encode())).stdout
    assert from_stdin.endswith("\n") and len(from_stdin.split("\n")[:-1]) == len(lines)
    assert from_stdin.split("\n")[1] == ""
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    out_file = tmp_path / "sub" / "out.txt"
    proc = ok(
        nmt(
            "translate",
            "--checkpoint",
            smoke.run,
            "--input",
            tmp_path / "in.txt",
            "--output",
            out_file,
            cwd=cwd,
        )
    )
    assert proc.stdout == ""
    assert out_file.read_text(encoding="utf-8") == from_stdin  # a run dir means its best.pt

    # n-best: `i ||| text ||| score`, 2 per input, grouped by input index in input order
    def nbest(order: list[str]) -> dict[str, list[float]]:
        code, out, err = cli(
            "translate",
            "--checkpoint",
            ckpt,
            "--nbest",
            2,
            "--beam",
            2,
            stdin="".join(s + "\n" for s in order).encode(),
        )
        assert code in (0, None), err
        rows = [NBEST_LINE.match(line) for line in out.splitlines()]
        assert all(rows), out
        assert [int(m.group(1)) for m in rows] == [0, 0, 1, 1]
        return {
            order[i]: [float(m.group(3)) for m in rows if int(m.group(1)) == i] for i in range(2)
        }

    forward, backward = nbest([LONG, SHORT]), nbest([SHORT, LONG])
    assert forward[LONG] != forward[SHORT]  # otherwise the comparison below proves nothing
    assert backward == forward  # each input keeps its own hypotheses whatever its position
    for scores in forward.values():
        assert scores == sorted(scores, reverse=True)

    # evaluate a checkpoint on the test split: JSON with scores and signatures, hypotheses saved
    result = json.loads(
        ok(nmt("evaluate", "--checkpoint", ckpt, "--split", "test", "--json", cwd=cwd)).stdout
    )
    refs = smoke.prepared / "test.tgt.txt"
    n_refs = len(refs.read_text(encoding="utf-8").splitlines())
    hyp = Path(result["hyp"])
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == n_refs
    for metric in ("bleu", "chrf", "ter"):
        m = result["metrics"][metric]
        assert isinstance(m["score"], float) and m["score"] >= 0
        assert "nrefs:1" in m["signature"] and "version:" in m["signature"]
    # the smoke model has learned the toy language (about 50 BLEU after its 200 steps; an untrained
    # one scores about 0): masks, search, detokenization and scoring work together
    assert 30 <= result["metrics"]["bleu"]["score"] <= 100

    assert "bleu_paper" in result["metrics"]  # the checkpoint knows its target language

    # evaluate --hyp --ref scores those same hypotheses
    # identically (given the language, also paper-style)
    code, out, err = cli("evaluate", "--hyp", hyp, "--ref", refs, "--lang", "de", "--json")
    assert code in (0, None), err
    assert json.loads(out)["metrics"] == result["metrics"]

    assert list(cwd.iterdir()) == []  # every output went where it was told to go


def test_invalid_utf8_on_stdin_subprocess(smoke: SmokeRun) -> None:
    proc = nmt(
        "translate", "--checkpoint", smoke.run / "best.pt", cwd=smoke.cwd, stdin=b"fine\nbad \xff\n"
    )
    line = assert_one_error_line(proc.returncode, proc.stderr, "<stdin>:2")
    assert "UTF-8" in line
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_missing_config_file(cli, tmp_path: Path, command: str) -> None:
    code, _, err = cli(command, "--config", tmp_path / "nope.yaml")
    assert_one_error_line(code, err, tmp_path / "nope.yaml", "not found")


def test_unknown_key(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  source: /x\ntrain:\n  max_step: 10\n")
    code, _, err = cli("train", "--config", path)
    assert_one_error_line(code, err, path, "train.max_step", "train.max_steps")


def test_bad_yaml(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  source: /x\nmodel: {layers: 2\n")
    code, _, err = cli("prepare", "--config", path)
    assert_one_error_line(code, err, path, "line ")


def test_set_with_a_bad_value(cli) -> None:
    code, _, err = cli("prepare", "--config", SMOKE, "--set", "train.max_steps=many")
    assert_one_error_line(code, err, SMOKE, "train.max_steps", "--set")


def test_set_without_equals(cli) -> None:
    code, _, err = cli("train", "--config", SMOKE, "--set", "train.max_steps")
    assert code == 2
    assert_one_error_line(code, err, "train.max_steps")


@pytest.mark.parametrize(
    "setting, names",
    [
        ("model.heads=3", ["model.heads", "3 heads do not divide model.d_model=64"]),
        ("train.lr=-1", ["train.lr", "must be > 0.0"]),
        ("train.max_steps=ten", ["train.max_steps", "expected int"]),
    ],
)
def test_train_with_a_bad_setting(
    cli, smoke: SmokeRun, tmp_path: Path, setting: str, names: list[str]
) -> None:
    code, _, err = cli(
        "train", "--config", SMOKE, "--run-dir", tmp_path / "run", *smoke.sets, "--set", setting
    )
    assert_one_error_line(code, err, *names)
    assert not (tmp_path / "run").exists()


# --- usage errors, outputs checked before the work, OS errors on the way out ---


@pytest.mark.parametrize(
    "args, names",
    [
        (["translate", "--checkpoint", "x", "--beam", "0"], ["'--beam'", "1"]),
        (["translate", "--checkpoint", "x", "--alpha", "-1"], ["'--alpha'", "0"]),
        (["translate", "--checkpoint", "x", "--workers", "0"], ["'--workers'", "1"]),
        (["translate", "--checkpoint", "x", "--buffer", "0"], ["--buffer 0", "1 or more"]),
        (["translate", "--checkpoint", "x", "--beam", "two"], ["'--beam'", "integer"]),
        (["translate", "--checkpoint", "x", "--topk", "3"], ["--topk", "--sample"]),
        (["translate", "--checkpoint", "x", "--bogus"], ["--bogus"]),
        (["train"], ["--config"]),
        (["frobnicate"], ["frobnicate"]),
        (["prepare", "--config", SMOKE, "--set", "data.src_lang=[en"], ["--set", "[en", "YAML"]),
        (["evaluate", "--hyp", "h", "--ref", "r", "--lang", "xx"], ["--lang xx", "de"]),
    ],
)
def test_usage_errors_are_one_line_with_exit_status_2(cli, args: list, names: list) -> None:
    code, _, err = cli(*args)
    assert code == 2
    assert_one_error_line(code, err, *names)


@pytest.mark.parametrize(
    "command", ["prepare", "train", "translate", "evaluate", "sweep", "export", "serve"]
)
def test_help_fits_an_80_column_terminal(command: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nmt", command, "--help"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in proc.stdout
    assert all(flag in proc.stdout for flag in ("--config" if command in ("prepare", "train")
               else "--checkpoint",))  # fmt: skip


def test_outputs_are_checked_before_any_work(cli, tmp_path: Path, monkeypatch) -> None:
    """The checkpoint does not even exist: the output is refused first."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_access = os.access  # root may write anywhere: the folder reads as read-only for all

    def access(path, mode, *args, **kwargs):
        return False if Path(path) == locked else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        for output, names in (
            (locked / "out.txt", [locked, "permission denied"]),
            (tmp_path, [tmp_path, "folder"]),
            (fifo, [fifo, "FIFO"]),
            ("/dev/full", ["/dev/full", "device"]),
            (tmp_path / "file.txt" / "below", [tmp_path / "file.txt", "not a folder"]),
        ):
            (tmp_path / "file.txt").write_text("x")
            for args in (
                ["translate", "--checkpoint", tmp_path / "none.pt", "-o", output],
                ["sweep", "--checkpoint", tmp_path / "none.pt", "-o", output],
                ["average", tmp_path / "none.pt", "-o", output],
                ["plot", tmp_path / "no_run", "-o", output],
            ):
                code, _, err = cli(*args, stdin=b"a\n")
                assert_one_error_line(code, err, *names)
        assert stat.S_ISFIFO(fifo.stat().st_mode)  # still a FIFO
    finally:
        locked.chmod(0o700)


def test_a_full_disk_behind_stdout_is_one_error_line(smoke: SmokeRun, tmp_path: Path) -> None:
    for args in (
        ["translate", "--checkpoint", smoke.run / "best.pt"],
        ["evaluate", "--hyp", smoke.prepared / "valid.tgt.txt", "--ref",
         smoke.prepared / "valid.tgt.txt", "--json"],
    ):  # fmt: skip
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [sys.executable, "-m", "nmt", *map(str, args)], input=(SHORT + "\n") * 50,
                stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=300,
            )  # fmt: skip
        assert_one_error_line(proc.returncode, proc.stderr, "stdout", "No space left on device")


def test_a_reader_that_goes_away_is_one_error_line(smoke: SmokeRun, tmp_path: Path) -> None:
    """`nmt translate ... | head -c 100`: the output was cut, so the exit status says so."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt", "translate", "--checkpoint", smoke.run / "best.pt",
         "--buffer", "20", "--beam", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    proc.stdin.write(((SHORT + "\n") * 2000).encode())
    proc.stdin.close()
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert_one_error_line(proc.returncode, err, "stdout", "pipe")


def test_a_full_disk_under_an_output_file_keeps_the_old_file(
    cli, smoke: SmokeRun, tmp_path: Path, fail_fsync
) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    fail_fsync()
    code, _, err = cli("translate", "--checkpoint", smoke.run / "best.pt", "-o", out, stdin=b"a\n")
    assert_one_error_line(code, err, out, "No space left on device")
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_dev_stdout_goes_to_stdout_and_dev_null_nowhere(cli, smoke: SmokeRun) -> None:
    ckpt = smoke.run / "best.pt"
    code, out, err = cli("translate", "--checkpoint", ckpt, "-o", "/dev/stdout", stdin=b"A dog.\n")
    assert code == 0 and len(out.splitlines()) == 1, err
    code, out, err = cli("sweep", "--checkpoint", ckpt, "--beam", "1", "--alpha", "0.6", "-o",
                         "/dev/null")  # fmt: skip
    assert code == 0 and "best on valid" in out and '"best"' not in out, err
