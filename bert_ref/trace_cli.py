"""`bert-ref trace`: follow one text (or text pair) through every named step of the forward.

    bert-ref trace PRESET "text" ["text pair"] [--dtype D] [--per-token] [--plot DIR] [--layers L,...]

Prints the tokens, then one line per named step of the forward (the names of `forward(trace=True)`:
`embeddings/...`, `transformer_layer_{i}/...`, `pooled_output`) with its shape and statistics, and
the token whose vector is largest; `--per-token` adds each token's L2 norm under every step. For
each layer's attention probabilities it says, per head, which token [CLS] attends to most.

`--plot DIR` writes PNG pictures (needs matplotlib: `pip install "bert-ref[plot]"`):
`attention_layer_{i}.png` (one heatmap per head, queries down, keys across, labelled by token) and
`hidden_state_norms.png` (each token's L2 norm after the embeddings and after every layer).

The text is packed as `[CLS] text [SEP]` (or `[CLS] text [SEP] pair [SEP]`) with no padding, and
cut to the preset's `max_sequence_length` when longer (the output says so).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backbone import BertBackbone
from .encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER
from .precision import POLICY_NAMES
from .tokenizer import BertTokenizer

PLOT_INSTALL = 'pip install "bert-ref[plot]"'


@dataclass
class TextTrace:
    """One text (pair) run through a backbone, with everything the trace shows.

    Attributes:
        tokens: the S word pieces, [CLS] and [SEP] included.
        segment_ids: [S] ints, 0 for the first text, 1 for the pair.
        trace: every named intermediate, batch axis included (`forward(trace=True)`).
        hidden_states: num_layers + 1 arrays [S, H]: the embeddings, then each layer's output.
        attention_probs: num_layers arrays [h, S, S].
        truncated: True when the text did not fit in `max_sequence_length` positions.
    """

    model: BertBackbone
    tokens: list[str]
    segment_ids: np.ndarray
    trace: dict[str, np.ndarray]
    hidden_states: list[np.ndarray]
    attention_probs: list[np.ndarray]
    truncated: bool


def run_text(model: BertBackbone, tokenizer: BertTokenizer, text: str, pair: str | None = None) -> TextTrace:
    """Tokenize `text` (and `pair`), pack it without padding and run `model` with tracing on.

    Args:
        model: the backbone.
        tokenizer: a tokenizer with the model's vocabulary (same `vocabulary_size`).
        text: segment 0.
        pair: optional segment 1.

    Examples:
        >>> tr = run_text(model, tokenizer, "The cat sat.")              # doctest: +SKIP
        >>> tr.tokens                                                    # doctest: +SKIP
        ['[CLS]', 'the', 'cat', 'sat', '.', '[SEP]']
    """
    if tokenizer.vocabulary_size() != model.config.vocabulary_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocabulary_size()} tokens but the model's "
                         f"vocabulary_size is {model.config.vocabulary_size}")
    pieces = [tokenizer.encode(text)] + ([] if pair is None else [tokenizer.encode(pair)])
    length = sum(len(p) for p in pieces) + len(pieces) + 1  # [CLS] + one [SEP] per segment
    limit = model.config.max_sequence_length
    inputs = tokenizer(text, pair, sequence_length=min(length, limit))
    out = model(inputs, output_hidden_states=True, output_attentions=True, trace=True)
    ids = inputs["token_ids"][0]  # [S]
    return TextTrace(
        model=model,
        tokens=[tokenizer.id_to_token(int(i)) for i in ids],
        segment_ids=np.asarray(inputs["segment_ids"][0]),
        trace=out["trace"],
        hidden_states=[np.asarray(h[0]) for h in out["hidden_states"]],  # [S, H] each
        attention_probs=[np.asarray(a[0]) for a in out["attention_probs"]],  # [h, S, S] each
        truncated=length > limit,
    )


def step_names(num_layers: int) -> list[str]:
    """The trace names in the order the forward computes them."""
    names = list(TRACE_EMBEDDINGS)
    for i in range(num_layers):
        names += [f"transformer_layer_{i}/{n}" for n in TRACE_LAYER]
    return names + list(TRACE_POOLER)


def _label(tokens: Sequence[str], i: int) -> str:
    return f"{tokens[i]}@{i}"


def format_trace(tr: TextTrace, *, per_token: bool = False) -> list[str]:
    """The lines `bert-ref trace` prints (see the module docstring).

    Args:
        tr: `run_text`'s result.
        per_token: add each token's L2 norm under every per-position step.
    """
    tokens = tr.tokens
    s = len(tokens)
    lines = [f"tokens ({s}; segment in brackets):",
             "  " + "  ".join(f"{i}:{t}[{int(g)}]"
                              for i, (t, g) in enumerate(zip(tokens, tr.segment_ids, strict=True)))]
    if tr.truncated:
        lines.append(f"  (cut to max_sequence_length = {tr.model.config.max_sequence_length} positions)")
    width = max(len(n) for n in tr.trace)
    lines.append("")
    columns = f"{'shape':<14} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}"
    lines.append(f"{'step':<{width}}  {columns}  largest token (L2)")
    for name in step_names(tr.model.config.num_layers):
        x = np.asarray(tr.trace[name])[0].astype(np.float64)  # drop the batch axis of 1
        stats = f"{x.mean():>+10.4f} {x.std():>10.4f} {x.min():>+10.4f} {x.max():>+10.4f}"
        shape = str(tuple(x.shape))
        per_position = x.ndim == 2 and x.shape[0] == s  # [S, ...]: one vector per token
        where = ""
        if per_position:
            norms = np.sqrt((x * x).sum(axis=-1))  # [S]
            j = int(norms.argmax())
            where = f"  {_label(tokens, j)} ({norms[j]:.3g})"
        lines.append(f"{name:<{width}}  {shape:<14} {stats}{where}")
        if per_position and per_token:
            lines.append(" " * (width + 2) + "  ".join(f"{t} {n:.3g}" for t, n in zip(tokens, norms, strict=True)))
        if name.endswith("/attention_probs"):
            top = x[:, 0, :].argmax(axis=-1)  # [h]: the key each head's [CLS] query weighs most
            lines.append(" " * (width + 2) + f"{tokens[0]} attends most to: " + ", ".join(
                f"h{j} {tokens[k]} {x[j, 0, k]:.2f}" for j, k in enumerate(top)))
    return lines


# ----------------------------------------------------------------------------------------------
# Pictures


def _pyplot_free_figure(figsize: tuple[float, float]) -> Any:
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
    """Write `fig` to `path` atomically: a temporary name in the same directory, then a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
    cols = min(heads, 4)
    rows = -(-heads // cols)
    cell = max(2.4, 0.17 * s + 0.9)  # inches per head: room for S token labels
    fig = _pyplot_free_figure((cols * cell + 0.8, rows * cell + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    fontsize = 7 if s <= 24 else 5
    for j, ax in enumerate(axes.flat):
        if j >= heads:
            ax.set_axis_off()
            continue
        image = ax.imshow(probs[j], vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(f"head {j}", fontsize=9)
        ax.set_xticks(range(s))
        ax.set_yticks(range(s))
        ax.set_xticklabels(tokens, rotation=90, fontsize=fontsize)
        ax.set_yticklabels(tokens, fontsize=fontsize)
        ax.tick_params(length=0)
    fig.suptitle(f"layer {layer} attention probabilities (rows: queries, columns: keys)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    cax = fig.add_axes((0.945, 0.15, 0.012, 0.7))
    fig.colorbar(image, cax=cax)
    return _save_png(fig, path, dpi)


def plot_hidden_norms(hidden_states: Sequence[np.ndarray], tokens: Sequence[str], path: Path, *,
                      dpi: int = 80) -> Path:
    """Each token's L2 norm per hidden state, as a PNG line plot.

    Args:
        hidden_states: num_layers + 1 arrays [S, H] (the embeddings, then each layer's output).
        tokens: the S token labels.
        path: the PNG to write (atomically).
        dpi: resolution.
    """
    norms = np.stack([np.sqrt((np.asarray(h, np.float64) ** 2).sum(-1)) for h in hidden_states])  # [L+1, S]
    fig = _pyplot_free_figure((7.5, 4.2))
    ax = fig.subplots()
    x = np.arange(norms.shape[0])
    for i in range(len(tokens)):
        ax.plot(x, norms[:, i], marker="o", markersize=3, linewidth=1, label=_label(tokens, i))
    ax.set_xticks(x)
    ax.set_xticklabels(["emb"] + [str(i) for i in range(1, len(x))])
    ax.set_xlabel("hidden state (emb = embeddings' layer norm; i = output of layer i-1)")
    ax.set_ylabel("L2 norm of the token's vector")
    ax.set_title("hidden-state norm per token, layer by layer", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(tokens) > 12 else 1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save_png(fig, path, dpi)


def write_plots(tr: TextTrace, directory: str | os.PathLike, layers: Sequence[int] | None = None, *,
                dpi: int = 80) -> list[Path]:
    """Write `attention_layer_{i}.png` for each of `layers` and `hidden_state_norms.png`.

    Args:
        tr: `run_text`'s result.
        directory: where to write (created if missing).
        layers: the layers to draw attention for (default: all).
        dpi: resolution.

    Returns:
        The paths written. A missing matplotlib is an `ImportError` saying how to install it,
        raised before anything is created.
    """
    n = len(tr.attention_probs)
    layers = list(range(n)) if layers is None else list(layers)
    for i in layers:
        if not 0 <= i < n:
            raise ValueError(f"--layers: layer {i} is outside [0, {n}): the model has {n} layers")
    _pyplot_free_figure((1, 1))  # fail on a missing matplotlib before creating anything
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_attention(tr.attention_probs[i], tr.tokens, i, out / f"attention_layer_{i}.png", dpi=dpi)
             for i in layers]
    paths.append(plot_hidden_norms(tr.hidden_states, tr.tokens, out / "hidden_state_norms.png", dpi=dpi))
    return paths


# ----------------------------------------------------------------------------------------------
# The command


def _layers_arg(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer numbers separated by commas, got {value!r}") from None


def _configure_trace(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET",
                   help="a preset with a vocabulary (local directory, built-in name, kaggle://, hf://)")
    p.add_argument("text", metavar="TEXT", help="the text (segment 0)")
    p.add_argument("pair", metavar="PAIR", nargs="?", default=None, help="an optional second text (segment 1)")
    p.add_argument("--dtype", choices=POLICY_NAMES, default=None, help="dtype policy (default float32)")
    p.add_argument("--per-token", action="store_true", help="print each token's L2 norm under every step")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help=f"write attention heatmaps and a hidden-state norm plot (PNG) into DIR ({PLOT_INSTALL})")
    p.add_argument("--layers", type=_layers_arg, default=None, metavar="L,...",
                   help="with --plot: the layers to draw attention for (default: all)")


def _run_trace(args: argparse.Namespace) -> int:
    if not args.text.strip():
        raise ValueError("TEXT is empty: there is nothing to trace")
    if args.layers is not None and args.plot is None:
        raise ValueError("--layers chooses the layers to plot: it needs --plot DIR")
    if args.plot is not None:
        _pyplot_free_figure((1, 1))  # a missing matplotlib is an error before the model loads
    try:
        model = BertBackbone.from_preset(args.preset, dtype=args.dtype)
        tokenizer = BertTokenizer.from_preset(args.preset)
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise ValueError(f"cannot load preset {args.preset!r}: {e}") from None
    tr = run_text(model, tokenizer, args.text, args.pair)
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    say(f"preset {args.preset}, loaded from {model.source} ({model.dtype_policy.name} policy); "
        f"{model.config.num_layers} layers, {model.config.num_heads} heads, hidden {model.config.hidden_dim}")
    for line in format_trace(tr, per_token=args.per_token):
        say(line)
    if args.plot is not None:
        for path in write_plots(tr, args.plot, args.layers):
            print(f"wrote {path}", file=sys.stderr, flush=True)
    return 0


def add_commands(register: Callable[..., None]) -> None:
    register("trace", "every named step of the forward on a text, labelled by token", _configure_trace, _run_trace,
             "Run PRESET on TEXT (and PAIR) and print each named step of the forward with its shape, "
             "statistics and largest token; --plot DIR writes attention heatmaps and a hidden-state norm "
             f"plot as PNG files (needs matplotlib: {PLOT_INSTALL}).")
