"""`bert-ref trace`: follow one text (or text pair) through every named step of the forward.

    bert-ref trace PRESET "text" ["text pair"] [--dtype D] [--per-token] [--plot DIR] [--layers L,...]
                   [--html FILE]

Prints the tokens, then one line per named step of the forward (the names of `forward(trace=True)`:
`embeddings/...`, `transformer_layer_{i}/...`, `pooled_output`) with its shape and statistics, and
the token whose vector is largest; `--per-token` adds each token's L2 norm under every step. For
each layer's attention probabilities it says, per head, which token [CLS] attends to most.

`--plot DIR` writes PNG pictures (needs matplotlib: `pip install "bert-ref[plot]"`):
`attention_layer_{i}.png` (one heatmap per head, queries down, keys across, labelled by token) and
`hidden_state_norms.png` (each token's L2 norm after the embeddings and after every layer).
`--html FILE` writes one self-contained interactive page (`bert_ref.learn.html`).

Memory: `run_text` keeps every layer's attention probabilities ([h, S, S] float32 each, what the
pictures and the page show) and hidden states ([S, H]); every other named step is summarised (its
statistics and per-token norms) as the forward computes it and then dropped. So a trace holds
O(layers x heads x S^2) of attention plus one layer's activations at a time: at 512 tokens, MiniLM's
6 x 12 heads are 75 MB.

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


@dataclass(frozen=True)
class StepSummary:
    """What the trace keeps of one named step: its shape and statistics (in float64, from the
    step's values in the compute dtype), and each token's L2 norm when the step holds one vector
    per token.

    Attributes:
        shape: the step's shape without the batch axis.
        mean, std, min, max: over all its values.
        norms: [S] per-token L2 norms for a step of shape [S, ...] with 2 axes, else None.
    """

    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    norms: np.ndarray | None

    @classmethod
    def of(cls, x: np.ndarray, length: int) -> StepSummary:
        """Summarise `x`, one step without its batch axis, for a text of `length` tokens."""
        x = np.asarray(x).astype(np.float64)
        per_position = x.ndim == 2 and x.shape[0] == length  # [S, ...]: one vector per token
        norms = np.sqrt((x * x).sum(axis=-1)) if per_position else None  # [S]
        return cls(tuple(x.shape), float(x.mean()), float(x.std()), float(x.min()), float(x.max()), norms)


@dataclass
class TextTrace:
    """One text (pair) run through a backbone, with everything the trace shows.

    Attributes:
        tokens: the S word pieces, [CLS] and [SEP] included.
        segment_ids: [S] ints, 0 for the first text, 1 for the pair.
        steps: every named step of the forward (`step_names`), summarised as it was computed.
        hidden_states: num_layers + 1 arrays [S, H]: the embeddings, then each layer's output.
        attention_probs: num_layers arrays [h, S, S].
        truncated: True when the text did not fit in `max_sequence_length` positions.
    """

    model: BertBackbone
    tokens: list[str]
    segment_ids: np.ndarray
    steps: dict[str, StepSummary]
    hidden_states: list[np.ndarray]
    attention_probs: list[np.ndarray]
    truncated: bool

    def hidden_norms(self) -> np.ndarray:
        """Each token's L2 norm in each hidden state, in float64. [num_layers + 1, S]"""
        return np.stack([np.sqrt((np.asarray(h, np.float64) ** 2).sum(-1)) for h in self.hidden_states])


def run_text(model: BertBackbone, tokenizer: BertTokenizer, text: str, pair: str | None = None) -> TextTrace:
    """Tokenize `text` (and `pair`), pack it without padding and run `model` with tracing on.

    Each named step is summarised (`StepSummary`) as the forward hands it over and not kept; the
    attention probabilities and hidden states are (see the module docstring on memory).

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
    s = min(length, limit)
    inputs = tokenizer(text, pair, sequence_length=s)
    steps: dict[str, StepSummary] = {}

    def summarise(name: str, value: np.ndarray) -> None:  # value: [1, ...], a copy the forward made for us
        steps[name] = StepSummary.of(value[0], s)

    out = model(inputs, output_hidden_states=True, output_attentions=True, trace=summarise)
    ids = inputs["token_ids"][0]  # [S]
    return TextTrace(
        model=model,
        tokens=[tokenizer.id_to_token(int(i)) for i in ids],
        segment_ids=np.asarray(inputs["segment_ids"][0]),
        steps=steps,
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
    width = max(len(n) for n in tr.steps)
    lines.append("")
    columns = f"{'shape':<14} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}"
    lines.append(f"{'step':<{width}}  {columns}  largest token (L2)")
    for name in step_names(tr.model.config.num_layers):
        st = tr.steps[name]
        stats = f"{st.mean:>+10.4f} {st.std:>10.4f} {st.min:>+10.4f} {st.max:>+10.4f}"
        where = ""
        if st.norms is not None:
            j = int(st.norms.argmax())
            where = f"  {token_label(tokens, j)} ({st.norms[j]:.3g})"
        lines.append(f"{name:<{width}}  {str(st.shape):<14} {stats}{where}")
        if st.norms is not None and per_token:
            lines.append(" " * (width + 2) + "  ".join(f"{t} {n:.3g}" for t, n in zip(tokens, st.norms, strict=True)))
        if name.endswith("/attention_probs"):
            layer = int(name.split("/")[0].rsplit("_", 1)[1])
            x = tr.attention_probs[layer]  # [h, S, S]
            top = x[:, 0, :].argmax(axis=-1)  # [h]: the key each head's [CLS] query weighs most
            lines.append(" " * (width + 2) + f"{tokens[0]} attends most to: " + ", ".join(
                f"h{j} {tokens[k]} {x[j, 0, k]:.2f}" for j, k in enumerate(top)))
    return lines
