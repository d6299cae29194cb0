"""`bert-ref trace`: follow one text (or pair) through every named step of the forward (see
`bert_ref.learn.trace`); `--plot DIR` draws it (`bert_ref.learn.plots`), `--html FILE` writes the
interactive page (`bert_ref.learn.html`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bert_ref.backbone import BertBackbone
from bert_ref.learn.html import write_page
from bert_ref.learn.plots import check_plot_size, pyplot_free_figure, write_plots
from bert_ref.learn.trace import PLOT_INSTALL, format_trace, run_text
from bert_ref.model.precision import POLICY_NAMES
from bert_ref.text.lines import check_text
from bert_ref.text.tokenizer import BertTokenizer

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
    p.add_argument("--html", metavar="FILE", default=None,
                   help="write one self-contained interactive page (attention by layer and head, per-token "
                        "panel) to FILE; it opens from disk, nothing is fetched")


def _run_trace(args: argparse.Namespace) -> int:
    check_text(args.text, "TEXT")
    if args.pair is not None:
        check_text(args.pair, "PAIR")
    if not args.text.strip():
        raise ValueError("TEXT is empty: there is nothing to trace")
    if args.layers is not None and args.plot is None:
        raise ValueError("--layers chooses the layers to plot: it needs --plot DIR")
    if args.plot is not None:
        pyplot_free_figure((1, 1))  # a missing matplotlib is an error before the model loads
    if args.html is not None:
        page = Path(args.html)
        if page.is_dir():
            raise ValueError(f"--html {args.html}: is a directory; give the page's file name")
        if not page.resolve().parent.is_dir():
            raise ValueError(f"--html {args.html}: directory {page.resolve().parent} does not exist")
    try:
        model = BertBackbone.from_preset(args.preset, dtype=args.dtype)
        tokenizer = BertTokenizer.from_preset(args.preset)
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise ValueError(f"cannot load preset {args.preset!r}: {e}") from None
    try:
        tr = run_text(model, tokenizer, args.text, args.pair)
    except MemoryError:
        raise MemoryError(_out_of_memory(model, tokenizer, args.text, args.pair)) from None
    if args.plot is not None:  # a picture too large to draw is refused before anything is printed
        check_plot_size(model.config.num_heads, len(tr.tokens))
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    say(f"preset {args.preset}, loaded from {model.source} ({model.dtype_policy.name} policy); "
        f"{model.config.num_layers} layers, {model.config.num_heads} heads, hidden {model.config.hidden_dim}")
    for line in format_trace(tr, per_token=args.per_token):
        say(line)
    if args.plot is not None:
        notes: list[str] = []
        for path in write_plots(tr, args.plot, args.layers, notes=notes):
            print(f"wrote {path}", file=sys.stderr, flush=True)
        for line in notes:
            print(f"note: {line}", file=sys.stderr, flush=True)
    if args.html is not None:
        text = args.text if args.pair is None else f"{args.text} | {args.pair}"
        shown = text if len(text) <= 300 else text[:300] + " ..."
        preset = str(args.preset) if len(str(args.preset)) <= 60 else "..." + str(args.preset)[-57:]
        description = f"{preset} ({model.dtype_policy.name} policy), {len(tr.tokens)} tokens: {shown}"
        path = write_page(tr, args.html, title=f"bert-ref trace: {len(tr.tokens)} tokens", description=description)
        print(f"wrote {path}", file=sys.stderr, flush=True)
    return 0


def _out_of_memory(model: BertBackbone, tokenizer: BertTokenizer, text: str, pair: str | None) -> str:
    """What ran out of memory in a trace, and what to do: the trace keeps every layer's attention."""
    from bert_ref.model.limits import forward_bytes

    pieces = len(tokenizer.encode(text)) + (0 if pair is None else len(tokenizer.encode(pair)) + 1) + 2
    s = min(pieces, model.config.max_sequence_length)
    need = forward_bytes(model.config, 1, s, np.dtype(model.dtype_policy.compute_dtype).itemsize, hidden_states=True,
                         attentions=True)
    return (f"out of memory tracing {s} tokens: a trace keeps the attention probabilities and hidden states of all "
            f"{model.config.num_layers} layers, an estimated {need / 1e6:,.0f} MB for this text (the attention grows "
            "with the square of the tokens); trace a shorter text, e.g. its first sentence")


def add_commands(register: Callable[..., None]) -> None:
    register("trace", "every named step of the forward on a text, labelled by token", _configure_trace, _run_trace,
             "Run PRESET on TEXT (and PAIR) and print each named step of the forward with its shape, "
             "statistics and largest token; --plot DIR writes attention heatmaps and a hidden-state norm "
             f"plot as PNG files (needs matplotlib: {PLOT_INSTALL}); --html FILE writes one self-contained "
             "interactive page of the attention (layer and head pickers, head and matrix views, per-token panel).")
