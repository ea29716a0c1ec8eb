"""Stage 3 as a stream: chunks of any size give the same output, a pipe gets each translation
before it is closed, and a file is replaced only when the whole input has been translated."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from toy_language import toy_sentences

from nmt.cli import main
from nmt.config import load_config
from nmt.prepare import prepare
from nmt.train import train


@pytest.fixture(scope="module")
def checkpoint(repo_root: Path, toy_data: list[str], tmp_path_factory) -> Path:
    """configs/smoke.yaml trained on the toy language (100 steps: it translates, imperfectly)."""
    work = tmp_path_factory.mktemp("translate")
    sets = [*toy_data, f"data.prepared_dir={work / 'prepared'}", "train.max_steps=100"]
    cfg = load_config(repo_root / "configs" / "smoke.yaml", sets)
    prepare(cfg, log=lambda m: None)
    return train(cfg, work / "run") / "best.pt"


def run_cli(monkeypatch, capsys, *args: object, stdin: bytes = b"") -> tuple[object, str, str]:
    """`nmt ARGS` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["nmt", *map(str, args)])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def lines_in(n: int) -> bytes:
    src, _ = toy_sentences(n, seed=7)
    src[3] = ""  # an empty line stays an empty line
    return "".join(s + "\n" for s in src).encode()


def test_any_chunk_size_gives_the_same_lines_in_input_order(checkpoint, monkeypatch, capsys):
    text = lines_in(23)
    outputs = {}
    for buffer in (1, 7, 100_000):
        code, out, err = run_cli(
            monkeypatch, capsys, "translate", "--checkpoint", checkpoint, "--buffer", buffer,
            stdin=text,
        )  # fmt: skip
        assert code in (0, None), err
        outputs[buffer] = out
    assert len(outputs[1].splitlines()) == 23 and outputs[1].splitlines()[3] == ""
    assert outputs[1] == outputs[7] == outputs[100_000]
    assert len(set(outputs[1].splitlines())) > 15  # not one line repeated


def test_nbest_indices_count_across_chunks(checkpoint, monkeypatch, capsys):
    text = "".join(s + "\n" for s in toy_sentences(9, seed=8)[0]).encode()
    args = ["translate", "--checkpoint", checkpoint, "--beam", 2, "--nbest", 2]
    _, chunked, _ = run_cli(monkeypatch, capsys, *args, "--buffer", 2, stdin=text)
    _, whole, _ = run_cli(monkeypatch, capsys, *args, stdin=text)
    assert chunked == whole
    assert [int(line.split(" ||| ")[0]) for line in chunked.splitlines()] == [
        i for i in range(9) for _ in range(2)
    ]


def test_a_pipe_gets_each_translation_before_stdin_is_closed(checkpoint: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt", "translate", "--checkpoint", str(checkpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in (b"A small dog runs.\n", b"The woman sits on the bench.\n"):
            proc.stdin.write(line)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no translation while stdin is still open"
            assert proc.stdout.readline().strip()
        proc.stdin.close()
        assert proc.stdout.read() == b"" and proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_an_output_file_is_replaced_only_by_a_complete_translation(
    checkpoint, monkeypatch, capsys, tmp_path: Path
):
    """Bad UTF-8 at line 9, with chunks of 3: the error names the line, the old output file is
    untouched and no temporary file is left; with good input the file holds every line."""
    src = tmp_path / "in.txt"
    src.write_bytes(lines_in(8) + b"bad \xff\n")
    out = tmp_path / "out.txt"
    out.write_text("an earlier translation\n", encoding="utf-8")
    args = ["translate", "--checkpoint", checkpoint, "--buffer", 3, "-i", src, "-o", out]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and err.strip() == f"error: {src}:9: invalid UTF-8 at byte 4 of the line"
    assert out.read_text(encoding="utf-8") == "an earlier translation\n" and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]
    src.write_bytes(lines_in(8))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8


def test_buffer_below_one_is_one_error_line(checkpoint, monkeypatch, capsys):
    code, _, err = run_cli(
        monkeypatch, capsys, "translate", "--checkpoint", checkpoint, "--buffer", 0, stdin=b"a\n"
    )
    assert code == 2 and err.strip() == "error: --buffer 0: expected 1 or more"


def test_sampling_is_reproducible_for_a_seed_whatever_the_chunks(checkpoint, monkeypatch, capsys):
    text = lines_in(30)
    args = ["translate", "--checkpoint", checkpoint, "--sample", "--topk", 10]

    def sample(*more: object) -> str:
        code, out, err = run_cli(monkeypatch, capsys, *args, *more, stdin=text)
        assert code in (0, None), err
        return out

    first = sample("--seed", 3)
    assert sample("--seed", 3, "--buffer", 4) == first
    assert sample("--seed", 4) != first
    _, greedy, _ = run_cli(
        monkeypatch, capsys, "translate", "--checkpoint", checkpoint, "--beam", 1, stdin=text
    )
    assert first != greedy and len(first.splitlines()) == 30


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--topk", 5], "--topk is a sampling option: add --sample"),
        (["--sample", "--beam", 4], "--sample draws one translation per line: --beam"),
        (["--sample", "--topp", 0], "--topp 0.0: expected a probability in (0, 1]"),
    ],
)
def test_sampling_flags_that_do_not_fit_are_one_error(
    checkpoint, monkeypatch, capsys, flags, message
):
    code, _, err = run_cli(
        monkeypatch, capsys, "translate", "--checkpoint", checkpoint, *flags, stdin=b"a\n"
    )
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
