"""Pictures of a run: learning curves from metrics.jsonl.

Needs the optional matplotlib (`pip install 'nmt[plot]'`, or `pip install -e ".[plot]"` in a clone).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

from nmt.errors import NmtError
from nmt.files import atomic_write_bytes, check_output

FIGSIZE, DPI = (15.0, 8.0), 100  # the PNG is 1500 x 800 pixels


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend,
    or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise NmtError(
            "plotting needs matplotlib, an optional extra: "
            "pip install 'nmt[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise NmtError(f"{path}: not found (is {run_dir} a run directory?)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise NmtError(f"{path}:{n}: not a JSON record") from None
    return records


def plot_curves(run_dir: Path, output: Optional[Path] = None) -> Path:
    """Train loss, valid loss, valid BLEU and learning rate against step, and loss and BLEU against
    training time, in one PNG (default RUN_DIR/curves.png); returns its path."""
    output = Path(output) if output else Path(run_dir) / "curves.png"
    if check_output(output) is None:
        raise NmtError(f"--output {output}: a PNG is written to a file, not to stdout")
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if "train_loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    if not train and not valid:
        raise NmtError(
            f"{run_dir / 'metrics.jsonl'}: no training or validation records to plot yet"
        )
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=FIGSIZE, dpi=DPI)

    def panel(ax, rows, x, y, title, xlabel, **style):
        rows = [r for r in rows if y in r]
        ax.plot([r[x] / (60 if x == "time" else 1) for r in rows], [r[y] for r in rows], **style)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)

    panel(axes[0, 0], train, "step", "train_loss", "train loss (label-smoothed, per token)", "step")
    panel(axes[0, 1], valid, "step", "valid_loss", "valid loss (NLL per token)", "step", marker="o")
    panel(
        axes[0, 2],
        valid,
        "step",
        "valid_bleu",
        "valid BLEU (greedy, sacreBLEU)",
        "step",
        marker="o",
    )
    panel(axes[1, 0], train, "step", "lr", "learning rate", "step")
    panel(
        axes[1, 1],
        train,
        "time",
        "train_loss",
        "train loss against training time",
        "minutes (validation excluded)",
    )
    panel(
        axes[1, 2],
        valid,
        "time",
        "valid_bleu",
        "valid BLEU against training time",
        "minutes (validation excluded)",
        marker="o",
    )
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(output, buf.getvalue())
    return output
