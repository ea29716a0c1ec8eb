"""Attention heatmaps of translations: the weights
the model used when it produced each output token.

`nmt translate --attention-dir DIR` decodes with `record=True` (see search.py), so every hypothesis
carries the attention of its own beam history, and writes for input line N (numbered from 1):

- `N.json`: source and translation, the subword labels of every axis, the score, the files written;
- `N.npz`: the weights, float32: `cross` (layers, heads, target, source), `self` (layers, heads,
  target, target; zero above the diagonal) and `encoder` (layers, heads, source, source); an RNN has
  only `cross`;
- PNGs (needs matplotlib): `N.cross.layerL.png` for every layer (mean over heads),
  `N.cross.layerL.heads.png` (every head of the chosen layer), `N.encoder.layerL.png` and
  `N.self.layerL.png` (mean over heads).

Cross-attention rows are the output tokens (EOS last), columns the source pieces (EOS last).
Self-attention axes are the decoder's inputs (BOS, then the output tokens): row t is the step that
produced output t.
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from nmt.config import ModelConfig
from nmt.errors import NmtError, UsageError
from nmt.files import atomic_write_bytes, atomic_write_text
from nmt.plot import pyplot
from nmt.search import Hypothesis
from nmt.tokenizer import Tokenizer

DPI = 100
# pixels: one matrix cell, and the margins around the matrix
CELL, LEFT, BOTTOM, TOP, RIGHT = 28, 110, 110, 50, 70
HEADS_PER_ROW = 4


def panel_pixels(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of one heatmap of a rows x cols matrix."""
    return LEFT + cols * CELL + RIGHT, BOTTOM + rows * CELL + TOP


def grid_pixels(heads: int, rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of the grid of all heads, HEADS_PER_ROW panels per row."""
    w, h = panel_pixels(rows, cols)
    return min(heads, HEADS_PER_ROW) * w, math.ceil(heads / HEADS_PER_ROW) * h


def _draw(
    fig,
    box: tuple[int, int, int, int],
    weights: np.ndarray,
    ylabels: list[str],
    xlabels: list[str],
    title: str,
) -> None:
    """One heatmap in the pixel box (x0, y0 from the bottom left, width, height) of the figure."""
    x0, y0, w, h = box
    fw, fh = fig.get_size_inches() * DPI
    rows, cols = weights.shape
    ax = fig.add_axes(((x0 + LEFT) / fw, (y0 + BOTTOM) / fh, cols * CELL / fw, rows * CELL / fh))
    image = ax.imshow(
        weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    ax.set_xticks(range(cols), xlabels, rotation=90, fontsize=8)
    ax.set_yticks(range(rows), ylabels, fontsize=8)
    ax.set_title(title, fontsize=8)
    bar = fig.add_axes(
        ((x0 + LEFT + cols * CELL + 10) / fw, (y0 + BOTTOM) / fh, 10 / fw, rows * CELL / fh)
    )
    fig.colorbar(image, cax=bar).ax.tick_params(labelsize=7)


def _png(
    plt,
    size: tuple[int, int],
    panels: list[tuple[tuple[int, int, int, int], np.ndarray, list[str], list[str], str]],
) -> bytes:
    # half a pixel more than asked for: the canvas truncates width x dpi to whole pixels
    fig = plt.figure(figsize=((size[0] + 0.5) / DPI, (size[1] + 0.5) / DPI), dpi=DPI)
    for panel in panels:
        _draw(fig, *panel)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def heatmaps(
    weights: dict[str, np.ndarray], src: list[str], out: list[str], dec_in: list[str], layer: int
) -> dict[str, bytes]:
    """PNG bytes by file suffix for one sentence's weights (see the module docstring); `layer`
    counts from 1."""
    plt = pyplot()
    axes = {"cross": (out, src), "encoder": (src, src), "self": (dec_in, dec_in)}
    names = {
        "cross": "decoder cross-attention",
        "encoder": "encoder self-attention",
        "self": "decoder masked self-attention",
    }
    files = {}
    for kind, w in weights.items():
        ylabels, xlabels = axes[kind]
        layers, heads, rows, cols = w.shape
        size = panel_pixels(rows, cols)
        for n in range(layers):
            title = f"{names[kind]}\nlayer {n + 1}" + (
                f", mean of {heads} heads" if heads > 1 else ""
            )
            files[f"{kind}.layer{n + 1}.png"] = _png(
                plt, size, [((0, 0, *size), w[n].mean(0), ylabels, xlabels, title)]
            )
        if kind == "cross" and heads > 1:
            grid = grid_pixels(heads, rows, cols)
            panels = []
            for h in range(heads):
                x0, top = (h % HEADS_PER_ROW) * size[0], (h // HEADS_PER_ROW + 1) * size[1]
                panels.append(
                    (
                        (x0, grid[1] - top, *size),
                        w[layer - 1, h],
                        ylabels,
                        xlabels,
                        f"layer {layer}, head {h + 1}",
                    )
                )
            files[f"cross.layer{layer}.heads.png"] = _png(plt, grid, panels)
    return files


def write_attention(
    out_dir: Path,
    sources: list[str],
    src_ids: list[list[int]],
    hyps: list[Hypothesis],
    tok: Tokenizer,
    layer: Optional[int] = None,
) -> int:
    """Write JSON, NPZ and PNGs for every sentence with a translation; returns how many sentences
    were written. `layer`: the layer whose heads get a grid (default last)."""
    out_dir = Path(out_dir)
    translations = tok.decode_tgt([h.tokens for h in hyps])
    src_pieces, tgt_pieces = tok.src_pieces, tok.tgt_pieces
    width = max(4, len(str(len(sources))))
    written = 0
    for i, (source, hyp, text, ids) in enumerate(zip(sources, hyps, translations, src_ids), 1):
        if hyp.attention is None:  # an empty input line: nothing was decoded
            continue
        layers = next(iter(hyp.attention.values())).shape[0]
        chosen = layer or layers
        if not 1 <= chosen <= layers:
            raise UsageError(f"--attention-layer {chosen}: the model has {layers} decoder layer(s)")
        src = [*src_pieces(ids), "</s>"]
        out = [*tgt_pieces(hyp.tokens), "</s>"]
        dec_in = ["<s>", *tgt_pieces(hyp.tokens)]
        stem = f"{i:0{width}d}"
        pngs = heatmaps(hyp.attention, src, out, dec_in, chosen)
        buf = io.BytesIO()
        np.savez_compressed(buf, **hyp.attention)
        atomic_write_bytes(out_dir / f"{stem}.npz", buf.getvalue())
        for suffix, data in pngs.items():
            atomic_write_bytes(out_dir / f"{stem}.{suffix}", data)
        meta = {
            "line": i,
            "source": source,
            "translation": text,
            "score": hyp.score,
            "source_tokens": src,
            "target_tokens": out,
            "decoder_inputs": dec_in,
            "weights": {k: list(v.shape) for k, v in hyp.attention.items()},
            "files": [f"{stem}.npz", *(f"{stem}.{s}" for s in pngs)],
        }
        atomic_write_text(
            out_dir / f"{stem}.json", json.dumps(meta, ensure_ascii=False, indent=1) + "\n"
        )
        written += 1
    return written


@dataclass(frozen=True)
class AttentionPlots:
    """Where to write the attention of each translation (`--attention-dir`), and the layer whose
    heads get a grid (`--attention-layer`; None: the last)."""

    folder: str
    layer: Optional[int] = None


def check_request(plots: AttentionPlots, model: ModelConfig, n_models: int, path: str) -> None:
    """Refuse, before anything is decoded, what --attention-dir cannot show: an ensemble, a
    seq2seq model without attention, a layer the model lacks, no matplotlib, a folder it cannot
    make."""
    if n_models > 1:
        raise NmtError(
            "--attention-dir shows one model's attention: give one --checkpoint (the "
            "ensemble's members attend differently)"
        )
    if model.arch == "rnn" and model.attention == "none":
        raise NmtError(
            f"{path}: a seq2seq model without attention (model.attention: none) has no "
            "attention to plot"
        )
    out_dir, layer = plots.folder, plots.layer
    # an RNN's attention sits on its top layer
    layers = 1 if model.arch == "rnn" else (model.dec_layers or model.layers)
    if layer is not None and layer > layers:
        raise NmtError(
            f"--attention-layer {layer}: {path} has {layers} decoder layer(s) with attention"
        )
    pyplot()  # matplotlib missing: say so before decoding anything
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file of that name, no permission
        raise NmtError(
            f"--attention-dir {out_dir}: cannot create the folder: {e.strerror or e}"
        ) from None


def save(
    plots: AttentionPlots,
    sources: list[str],
    src_ids: list[list[int]],
    hyps: list[Hypothesis],
    tok: Tokenizer,
) -> None:
    """write_attention for the best hypothesis of each source line, with one line on stderr."""
    out_dir = plots.folder
    try:
        n = write_attention(Path(out_dir), sources, src_ids, hyps, tok, plots.layer)
    except OSError as e:
        raise NmtError(f"--attention-dir {out_dir}: cannot write: {e.strerror or e}") from None
    print(f"attention of {n} sentence(s) written to {out_dir}", file=sys.stderr)
