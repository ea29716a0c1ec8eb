"""scripts/profile_steps.py runs on the smoke model and splits the time of training steps and of
decoding passes into kinds of work that add up to the wall time, on screen and in its JSON."""

import json
import re
import subprocess
import sys

from conftest import SmokeRun


def profile(
    repo_root, smoke: SmokeRun, *flags: str, checkpoint: bool = True
) -> subprocess.CompletedProcess:
    config = smoke.run / "config.yaml"  # the smoke run's own config: its prepared folder
    script = str(repo_root / "scripts" / "profile_steps.py")
    ckpt = ["--checkpoint", str(smoke.run / "best.pt")] if checkpoint else []
    return subprocess.run(
        [sys.executable, script, "--config", str(config), *ckpt, *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_profile_splits_training_and_decoding_time(repo_root, smoke: SmokeRun, tmp_path) -> None:
    flags = ["--steps", "2", "--limit", "20", "--beam", "1", "2", "--threads", "1"]
    done = profile(repo_root, smoke, *flags, "--json", str(tmp_path / "p.json"))
    assert done.returncode == 0, done.stderr
    blocks = re.findall(r"^(\w[^\n]*): ([\d.]+) s\n((?:  [^\n]+\n)+)", done.stdout, re.M)
    assert [re.sub(r"\d+ tokens", "N tokens", b[0]).split(",")[:2] for b in blocks] == [
        ["training", " 2 steps of N tokens"],
        ["decoding 20 sentences", " beam 1"],
        ["decoding 20 sentences", " beam 2"],
    ]
    for _, wall, rows in blocks:
        parts = [float(x) for x in re.findall(r" ([\d.]+) s ", rows)]
        shares = [float(x) for x in re.findall(r"([\d.]+)%", rows)]
        assert "matrix products" in rows and "Python and dispatch" in rows
        assert abs(sum(parts) - float(wall)) < 0.02 + 0.01 * float(wall)
        assert abs(sum(shares) - 100) < 1.5
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["threads"] == 1 and saved["training"]["steps"] == 2
    assert saved["training"]["precision"] in ("fp32", "bf16 autocast")
    assert list(saved["decoding"]) == ["beam1", "beam2"]
    # the JSON says what the screen did
    for run in [saved["training"], *saved["decoding"].values()]:
        assert abs(sum(run["split_s"].values()) - run["wall_s"]) < 0.02 + 0.01 * run["wall_s"]
        assert f"{run['wall_s']:.2f} s" in done.stdout


def test_profile_of_decoding_alone(repo_root, smoke: SmokeRun) -> None:
    done = profile(repo_root, smoke, "--no-train", "--limit", "5", "--beam", "1", "--threads", "1")
    assert done.returncode == 0, done.stderr
    titles = re.findall(r"^(\w[^\n:]*)", done.stdout, re.M)
    assert len(titles) == 1 and re.fullmatch(
        r"decoding 5 sentences, beam 1, (fp32|bf16), 1 worker", titles[0]
    )
    # nothing to profile: an error line, exit 2
    alone = profile(repo_root, smoke, "--no-train", checkpoint=False)
    assert alone.returncode == 2 and "--no-train needs --checkpoint" in alone.stderr
