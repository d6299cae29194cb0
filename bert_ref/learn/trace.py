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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bert_ref.backbone import BertBackbone
from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER
from bert_ref.text.tokenizer import BertTokenizer

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


def token_label(tokens: Sequence[str], i: int) -> str:
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
            where = f"  {token_label(tokens, j)} ({norms[j]:.3g})"
        lines.append(f"{name:<{width}}  {shape:<14} {stats}{where}")
        if per_position and per_token:
            lines.append(" " * (width + 2) + "  ".join(f"{t} {n:.3g}" for t, n in zip(tokens, norms, strict=True)))
        if name.endswith("/attention_probs"):
            top = x[:, 0, :].argmax(axis=-1)  # [h]: the key each head's [CLS] query weighs most
            lines.append(" " * (width + 2) + f"{tokens[0]} attends most to: " + ", ".join(
                f"h{j} {tokens[k]} {x[j, 0, k]:.2f}" for j, k in enumerate(top)))
    return lines
