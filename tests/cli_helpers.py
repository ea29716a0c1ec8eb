"""Helpers of the tests that run the command line (`nmt ...`): the real program in a subprocess, the
checks of its exit and of its one `error:` line, and the inputs they share. Imported by
tests/conftest.py (the smoke run) and by each test file of a command (tests/ is on sys.path, as for
`from conftest import ...`); tests/conftest.py has their asserts rewritten, as in a test file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
NBEST_LINE = re.compile(r"^(\d+) \|\|\| (.*) \|\|\| (-?\d+\.\d+)$")
SHORT = "A dog runs."
LONG = "A man in a blue shirt is standing on a ladder and cleaning the windows of a tall building."


def nmt(*args: object, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run `python -m nmt ARGS` in `cwd`; stdout/stderr as text."""
    # One thread: on a small shared machine two OpenMP threads per process can be ~40x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "nmt", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=300,
        env=env,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def assert_one_error_line(code: object, stderr: str, *names: object) -> str:
    """Non-zero exit, no traceback, exactly one non-empty
    stderr line `error: ...` naming each of `names`."""
    assert code not in (0, None)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert str(name) in lines[0]
    return lines[0]


def write(path: Path, text: str) -> Path:
    """Write `text` to `path` as UTF-8; returns `path`."""
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refused run must leave as it was."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
