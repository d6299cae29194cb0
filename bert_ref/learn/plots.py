"""Pictures of a trace: attention heatmaps and hidden-state norms (PNG, matplotlib's Agg backend).

Long texts stay cheap: each head's heatmap is at most `CELL_MAX` inches wide, whatever the length
(the image is resampled, antialiased, beyond ~1 pixel per token), and at most `LABELS_MAX` token
labels are written along each axis (every k-th token, labelled `token@position`). The norm plot
gives each token its own colour and line style up to `DISTINCT_MAX` tokens; beyond that, every token
is a thin grey line and only [CLS] and the tokens with the largest norms are drawn and named.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io import atomic
from bert_ref.learn.trace import PLOT_INSTALL, TextTrace, token_label

#: Largest heatmap of one head, in inches; most token labels along one axis.
CELL_MAX, LABELS_MAX = 4.5, 40
#: Most tokens the norm plot draws in distinct styles (8 colours x 3 line styles).
DISTINCT_MAX = 24
#: Okabe-Ito: eight colours told apart with the common colour-vision deficiencies.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
LINE_STYLES = ("-", "--", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

# ----------------------------------------------------------------------------------------------
# Pictures


def pyplot_free_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure drawn by the Agg backend (no display, no pyplot global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"--plot needs matplotlib, which is not installed: run `{PLOT_INSTALL}`") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: Path, dpi: int) -> Path:
    """Write `fig` to `path` through `bert_ref.io.atomic` (whole or not at all)."""
    with atomic.open_atomic(path) as f:
        fig.savefig(f, format="png", dpi=dpi, metadata={"Software": None})
    return path


#: The largest picture drawn (pixels; Agg holds 4 bytes per pixel while drawing): about 200 MB.
MAX_PLOT_PIXELS = 50_000_000


def _attention_layout(heads: int, s: int) -> tuple[int, int, float, tuple[float, float]]:
    """(rows, cols, inches per head, figure size in inches) of an attention picture."""
    cols = min(heads, 4)
    rows = -(-heads // cols)
    cell = min(CELL_MAX, max(2.4, 0.17 * s + 0.9))  # inches per head: room for the token labels
    return rows, cols, cell, (cols * cell + 0.8, rows * cell + 0.6)


def check_plot_size(heads: int, s: int, dpi: int = 80) -> None:
    """A `ValueError` before anything is drawn when the attention pictures of `s` tokens would be
    over `MAX_PLOT_PIXELS`. Each head is at most `CELL_MAX` inches square whatever the length, so
    only a model with hundreds of heads gets there."""
    w, h = (round(x * dpi) for x in _attention_layout(heads, s)[3])
    if w * h > MAX_PLOT_PIXELS:
        top = next((n for n in range(s, 0, -1) if math.prod(round(x * dpi) for x in _attention_layout(heads, n)[3])
                    <= MAX_PLOT_PIXELS), None)
        remedy = (f"plot a shorter text (at most {top} tokens with {heads} heads: e.g. its first sentence)" if top else
                  f"{heads} heads are too many to draw in one picture at any length")
        raise ValueError(f"--plot: {s} tokens make each layer's attention picture {w:,} x {h:,} pixels "
                         f"({w * h * 4 / 1e9:.1f} GB to draw), over the limit of {MAX_PLOT_PIXELS:,} pixels; "
                         f"{remedy}; the trace itself needs no --plot")


def tick_positions(length: int, most: int = LABELS_MAX) -> range:
    """Every k-th position of `length`, k the smallest step that gives at most `most` ticks."""
    return range(0, length, -(-length // most))


def plot_attention(probs: np.ndarray, tokens: Sequence[str], layer: int, path: Path, *, dpi: int = 80) -> Path:
    """One layer's attention as a PNG: a heatmap per head, labelled by token.

    Args:
        probs: [h, S, S] attention probabilities (query rows, key columns).
        tokens: the S token labels.
        layer: the layer number (for the title).
        path: the PNG to write (atomically).
        dpi: resolution.
    """
    heads, s = probs.shape[0], probs.shape[-1]
    check_plot_size(heads, s, dpi)
    rows, cols, cell, size = _attention_layout(heads, s)
    fig = pyplot_free_figure(size)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    ticks = tick_positions(s)
    labels = list(tokens) if len(ticks) == s else [token_label(tokens, i) for i in ticks]
    fontsize = 7 if len(ticks) <= 24 else 5
    # One cell per token while the head fits at >= 1 pixel per token; resampled (antialiased) beyond.
    interpolation = "nearest" if s <= cell * dpi else "antialiased"
    for j, ax in enumerate(axes.flat):
        if j >= heads:
            ax.set_axis_off()
            continue
        image = ax.imshow(probs[j], vmin=0.0, vmax=1.0, cmap="viridis", interpolation=interpolation)
        ax.set_title(f"head {j}", fontsize=9)
        # Every head is labelled while every token is; thinned labels go on the outer heads only.
        every = len(ticks) == s
        bottom, left = every or j + cols >= heads, every or j % cols == 0
        ax.set_xticks(ticks if bottom else [])
        ax.set_yticks(ticks if left else [])
        if bottom:
            ax.set_xticklabels(labels, rotation=90, fontsize=fontsize)
        if left:
            ax.set_yticklabels(labels, fontsize=fontsize)
        ax.tick_params(length=0 if every else 2)
    fig.suptitle(f"layer {layer} attention probabilities (rows: queries, columns: keys)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    cax = fig.add_axes((0.945, 0.15, 0.012, 0.7))
    fig.colorbar(image, cax=cax)
    return _save_png(fig, path, dpi)


def plot_hidden_norms(hidden_states: Sequence[np.ndarray], tokens: Sequence[str], path: Path, *,
                      dpi: int = 80) -> Path:
    """Each token's L2 norm per hidden state, as a PNG line plot.

    The x axis counts as the walkthrough does: "emb" (the embeddings' layer norm), then 0, 1, ...
    (the output of layer 0, 1, ...). Up to `DISTINCT_MAX` tokens each get their own style: colour
    i mod 8 of `OKABE_ITO`, line style i div 8 of `LINE_STYLES` (no two tokens share both), and a
    marker. Longer texts: every token a thin grey line, and [CLS] with the 7 tokens whose largest
    norm is largest drawn in those styles and named.

    Args:
        hidden_states: num_layers + 1 arrays [S, H] (the embeddings, then each layer's output).
        tokens: the S token labels.
        path: the PNG to write (atomically).
        dpi: resolution.
    """
    norms = np.stack([np.sqrt((np.asarray(h, np.float64) ** 2).sum(-1)) for h in hidden_states])  # [L+1, S]
    fig = pyplot_free_figure((7.5, 4.2))
    ax = fig.subplots()
    x = np.arange(norms.shape[0])
    s = len(tokens)
    if s <= DISTINCT_MAX:
        named = list(range(s))
    else:
        for i in range(s):
            ax.plot(x, norms[:, i], color="#bbbbbb", linewidth=0.5, zorder=1)
        largest = [int(i) for i in np.argsort(-norms.max(axis=0), kind="stable") if i != 0][:7]
        named = [0] + sorted(largest)
    for n, i in enumerate(named):
        ax.plot(x, norms[:, i], color=OKABE_ITO[n % 8], linestyle=LINE_STYLES[n // 8 % 3],
                marker=MARKERS[n % len(MARKERS)], markersize=3.5, linewidth=1.2, label=token_label(tokens, i), zorder=2)
    ax.set_xticks(x)
    ax.set_xticklabels(["emb"] + [str(i) for i in range(len(x) - 1)])
    ax.set_xlabel("after the embeddings (emb), then after layer 0, 1, ...")
    ax.set_ylabel("L2 norm of the token's vector")
    title = "hidden-state norm per token, layer by layer"
    ax.set_title(title if s <= DISTINCT_MAX else f"{title} ({s} tokens, grey; named: [CLS] and the largest)",
                 fontsize=11 if s <= DISTINCT_MAX else 9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(named) > 12 else 1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save_png(fig, path, dpi)


def summarise_warnings(caught: Sequence[warnings.WarningMessage], tokens: Sequence[str], pictures: int) -> list[str]:
    """matplotlib's warnings while drawing, said once each: missing glyphs as the tokens they hit,
    "Tight layout not applied" as the pictures it hit, any other warning once."""
    glyphs: dict[str, str] = {}  # character -> font
    tight = 0
    other: dict[str, None] = {}
    for w in caught:
        text = " ".join(str(w.message).split())
        m = re.match(r"Glyph (\d+) .*missing from (?:current )?font\(s\) (.+?)\.?$", text)
        if m:
            glyphs.setdefault(chr(int(m.group(1))), m.group(2))
        elif text.startswith("Tight layout not applied"):
            tight += 1
        else:
            other.setdefault(f"matplotlib: {text}", None)
    lines = []
    if glyphs:
        positions = [t for t in tokens if any(ch in glyphs for ch in t)]
        hit = list(dict.fromkeys(positions))
        fonts = ", ".join(sorted(set(glyphs.values())))
        shown = ", ".join(hit[:8]) + (", ..." if len(hit) > 8 else "")
        lines.append(f"{len(positions)} of {len(tokens)} tokens ha{'ve' if len(positions) != 1 else 's'} no glyph in "
                     f"the default font ({fonts}) and show as boxes ({shown}); to draw them, install a font that "
                     "has them (e.g. Noto Sans CJK) and name it in matplotlib's font.family")
    if tight:
        lines.append(f"the labels of {min(tight, pictures)} of {pictures} pictures did not fit their margins "
                     "(matplotlib's tight layout was not applied): some token labels may overlap or be cut")
    return lines + list(other)


def write_plots(tr: TextTrace, directory: str | os.PathLike, layers: Sequence[int] | None = None, *,
                dpi: int = 80, notes: list[str] | None = None) -> list[Path]:
    """Write `attention_layer_{i}.png` for each of `layers` and `hidden_state_norms.png`.

    Args:
        tr: `run_text`'s result.
        directory: where to write (created if missing).
        layers: the layers to draw attention for (default: all).
        dpi: resolution.
        notes: where matplotlib's warnings go, summarised once each (`summarise_warnings`); None:
            one `UserWarning` per summary line.

    Returns:
        The paths written. A missing matplotlib is an `ImportError` saying how to install it,
        raised before anything is created.
    """
    n = len(tr.attention_probs)
    layers = list(range(n)) if layers is None else list(layers)
    for i in layers:
        if not 0 <= i < n:
            raise ValueError(f"--layers: layer {i} is outside [0, {n}): the model has {n} layers")
    pyplot_free_figure((1, 1))  # fail on a missing matplotlib or a picture too large before creating anything
    if layers:
        check_plot_size(tr.attention_probs[0].shape[0], len(tr.tokens), dpi)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = [plot_attention(tr.attention_probs[i], tr.tokens, i, out / f"attention_layer_{i}.png", dpi=dpi)
                 for i in layers]
        paths.append(plot_hidden_norms(tr.hidden_states, tr.tokens, out / "hidden_state_norms.png", dpi=dpi))
    summary = summarise_warnings(caught, tr.tokens, len(paths))
    if notes is not None:
        notes.extend(summary)
    else:
        for line in summary:
            warnings.warn(line, UserWarning, stacklevel=2)
    return paths
