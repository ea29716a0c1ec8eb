"""scripts/profile_steps.py runs on the smoke model and splits the time of training steps and of a
decoding pass into kinds of work that add up to the wall time."""

import re
import subprocess
import sys

from conftest import SmokeRun


def test_profile_splits_training_and_decoding_time(repo_root, smoke: SmokeRun) -> None:
    config = smoke.run / "config.yaml"  # the smoke run's own config: its prepared folder
    done = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "profile_steps.py"),
            "--config",
            str(config),
            "--checkpoint",
            str(smoke.run / "best.pt"),
            "--steps",
            "2",
            "--limit",
            "20",
            "--beam",
            "2",
            "--threads",
            "1",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    blocks = re.findall(r"^(\w[^\n]*): ([\d.]+) s\n((?:  [^\n]+\n)+)", done.stdout, re.M)
    assert [b[0].split(",")[0] for b in blocks] == ["training", "decoding 20 sentences"]
    for _, wall, rows in blocks:
        parts = [float(x) for x in re.findall(r" ([\d.]+) s ", rows)]
        shares = [float(x) for x in re.findall(r"([\d.]+)%", rows)]
        assert "matrix products" in rows and "Python and dispatch" in rows
        assert abs(sum(parts) - float(wall)) < 0.02 + 0.01 * float(wall)
        assert abs(sum(shares) - 100) < 1.5
