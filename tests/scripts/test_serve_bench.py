"""scripts/serve_bench.py runs end to end on the smoke model: a server per client count, every
sentence sent and answered, the figures written. (The figures themselves come from running the
script, not from here.)"""

import json
import os
import subprocess
import sys

from conftest import SmokeRun


def test_serve_bench_reports_each_client_count(repo_root, smoke: SmokeRun, tmp_path) -> None:
    out = tmp_path / "serve.json"
    done = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "serve_bench.py"),
            "--checkpoint",
            str(smoke.run / "best.pt"),
            "--input",
            str(smoke.prepared / "valid.src.txt"),
            "--clients",
            "1",
            "3",
            "--sentences",
            "12",
            "--per-request",
            "2",
            "--serve-args",
            "--device cpu",
            "--json",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["clients"] for r in rows] == [1, 3]
    assert all(r["sentences"] == 12 and r["sentences_per_s"] > 0 for r in rows)
    assert all(r["latency_ms_p95"] >= r["latency_ms_median"] > 0 for r in rows)
    assert done.stdout.count("sentences/s") == 2
