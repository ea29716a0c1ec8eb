"""scripts/int8_matmul_bench.py times each int8 product torch offers on this CPU against fp32, and
each computes the product it stands for (small error against fp32), or is reported missing."""

import json
import subprocess
import sys


def run_bench(repo_root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "int8_matmul_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_each_int8_product_is_timed_and_computes_the_product(repo_root, tmp_path) -> None:
    out = tmp_path / "int8.json"
    done = run_bench(
        repo_root, "--shapes", "8x32x48", "3x64x16", "--calls", "3", "--repeat", "2",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["threads"] == 1 and set(figures["shapes"]) == {"8x32x48", "3x64x16"}
    for shape, row in figures["shapes"].items():
        assert list(row) == ["fp32", "bf16", "dynamic", "int_mm", "weight-only", "onednn"]
        assert row["fp32"]["error"] == 0.0 and row["fp32"]["ms"] > 0
        ran = {kind: r for kind, r in row.items() if r is not None}
        assert {"fp32", "bf16", "dynamic"} <= set(ran)  # in every CPU build of torch
        for kind, r in ran.items():
            # 8-bit weights and activations (bf16: 8-bit mantissas): within a few percent
            assert r["ms"] > 0 and r["error"] < 0.05, (shape, kind, r)
        # the printed table has the shape's row, a figure or n/a per kind
        line = next(x for x in done.stdout.splitlines() if x.startswith(shape))
        assert len(line.split()) == 1 + len(ran) * 2 + (6 - len(ran))


def test_a_shape_that_is_not_three_numbers_is_one_error(repo_root) -> None:
    done = run_bench(repo_root, "--shapes", "80x256")
    assert done.returncode == 2
    assert "--shapes 80x256: expected MxKxN" in done.stderr and "Traceback" not in done.stderr
