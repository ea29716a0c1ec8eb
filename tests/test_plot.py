"""`nmt plot`: the learning curves of a run as a PNG; a folder that is not a run, or no matplotlib,
is one `error:` line. Through `nmt.cli.main` on the smoke run of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import assert_one_error_line
from conftest import SmokeRun


def test_plot_learning_curves_of_a_run(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    from PIL import Image

    code, out, err = cli("plot", smoke.run, "--output", tmp_path / "curves.png")
    assert code in (0, None), err
    assert out.strip() == str(tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1500, 800)


def test_plot_of_a_folder_that_is_not_a_run(cli, tmp_path: Path) -> None:
    code, _, err = cli("plot", tmp_path)
    assert_one_error_line(code, err, tmp_path / "metrics.jsonl")


def test_plot_without_matplotlib_says_how_to_install_it(
    cli, smoke: SmokeRun, tmp_path: Path, monkeypatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err = cli("plot", smoke.run, "--output", tmp_path / "c.png")
    assert_one_error_line(code, err, "pip install 'nmt[plot]'")
    assert not (tmp_path / "c.png").exists()
