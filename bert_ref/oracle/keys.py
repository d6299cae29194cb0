"""The output keys: one grammar for every name an output may have, where each is computed, its axes
and its valid elements.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER

ATTENTION_NAMES = ("attention_probs", "attention_scores")

# ----------------------------------------------------------------------------------------------
# The grammar: every output key, parsed in one place

#: Hugging Face / ONNX output names of single outputs.
OUTPUT_ALIASES = {"last_hidden_state": "sequence_output", "pooler_output": "pooled_output"}

_INDEX = "0|[1-9][0-9]*"  # a layer or an index: no sign, no leading zero
_KEY = re.compile(
    "(?P<output>sequence_output|pooled_output)"
    f"|(?P<indexed>hidden_states|attention_probs)\\.(?P<i>{_INDEX})"
    "|(?P<embedding>" + "|".join(map(re.escape, TRACE_EMBEDDINGS)) + ")"
    f"|transformer_layer_(?P<layer>{_INDEX})/(?P<step>" + "|".join(map(re.escape, TRACE_LAYER)) + ")"
)
_ATTENTIONS_ALIAS = re.compile(f"attentions\\.({_INDEX})")  # Hugging Face's attentions.{i}
OUTPUT_KEYS_HELP = ("sequence_output, pooled_output, hidden_states.{i}, attention_probs.{i}, or a trace name "
                    "(embeddings/..., transformer_layer_{i}/...)")


@dataclasses.dataclass(frozen=True)
class OutputKey:
    """An output key, parsed (`parse_key`).

    `name` is the key without its layer or index (`sequence_output`, `hidden_states`,
    `attention_probs`, `embeddings/sum`, `query`, ...); `index` is the i of `hidden_states.{i}`,
    `attention_probs.{i}` and `transformer_layer_{i}/...` (None for the others); `trace` says
    whether it is a trace name (`embeddings/...`, `transformer_layer_{i}/...`)."""

    key: str
    name: str
    index: int | None
    trace: bool

    @property
    def layers_needed(self) -> int:
        """The fewest encoder layers a model has that computes this output."""
        if self.index is None:
            return 0
        return self.index if self.name == "hidden_states" else self.index + 1

    @property
    def placement(self) -> tuple[tuple[float, float], str, int | None]:
        """(sort key in computation order, stage, layer): see `placement`."""
        i = self.index
        if self.name in TRACE_EMBEDDINGS or (self.name == "hidden_states" and i == 0):
            first = TRACE_EMBEDDINGS.index(self.name) if self.name in TRACE_EMBEDDINGS else len(TRACE_EMBEDDINGS)
            return (0, first), "embeddings", 0
        if i is not None:
            if self.name == "hidden_states":  # the output of layer i - 1
                return (i, len(TRACE_LAYER)), f"transformer_layer_{i - 1}", i
            step = TRACE_LAYER.index(self.name) + (0 if self.trace else 0.5)  # attention_probs.{i}: after the trace's
            return (i + 1, step), f"transformer_layer_{i}", i + 1
        if self.name == "sequence_output":
            return (math.inf, 0), "output", None
        return (math.inf, 1), "pooler", None


def try_parse_key(key: str) -> OutputKey | None:
    """`parse_key(key)`, or None where `key` is not an output key."""
    m = _KEY.fullmatch(key)
    if m is None:
        return None
    trace = m.group("embedding") or m.group("step")
    name = m.group("output") or m.group("indexed") or trace
    index = m.group("i") or m.group("layer")
    return OutputKey(key, name, None if index is None else int(index), trace=trace is not None)


def parse_key(key: str) -> OutputKey:
    """The one parser of output keys: `sequence_output`, `pooled_output`, `hidden_states.{i}`,
    `attention_probs.{i}` and the trace names (`embeddings/sum`, `transformer_layer_{i}/query`, ...;
    see `bert_ref.encoder.TRACE_*`). ValueError for anything else."""
    parsed = try_parse_key(key)
    if parsed is None:
        raise ValueError(
            f"unknown output key {key!r}; expected sequence_output, pooled_output, hidden_states.{{i}}, "
            f"attention_probs.{{i}}, or a trace name ({', '.join(TRACE_EMBEDDINGS)}, "
            f"transformer_layer_{{i}}/{{{', '.join(TRACE_LAYER)}}})"
        )
    return parsed


def is_output_key(key: str) -> bool:
    """True for `sequence_output`, `pooled_output`, `hidden_states.{i}`, `attention_probs.{i}` and
    the trace names (`embeddings/sum`, `transformer_layer_{i}/query`, ...)."""
    return try_parse_key(key) is not None


def canonical_key(key: str) -> str | None:
    """Our output key for `key`: itself, or the output a Hugging Face / ONNX name stands for
    (`last_hidden_state`, `pooler_output`, `attentions.{i}`); None for anything else."""
    if is_output_key(key):
        return key
    if key in OUTPUT_ALIASES:
        return OUTPUT_ALIASES[key]
    m = _ATTENTIONS_ALIAS.fullmatch(key)
    return f"attention_probs.{m.group(1)}" if m else None


# ----------------------------------------------------------------------------------------------
# Keys: where each output is computed, and what its axes are


def placement(key: str) -> tuple[tuple[float, float], str, int | None]:
    """(sort key, stage, layer) of an output key; ValueError for an unknown key."""
    return parse_key(key).placement


def axes(key: str, ndim: int) -> tuple[str, ...]:
    name = parse_key(key).name
    names: tuple[str, ...]
    if name in ATTENTION_NAMES:
        names = ("batch", "head", "query", "key")
    elif key in TRACE_POOLER:
        names = ("batch", "channel")
    else:
        names = ("batch", "position", "channel")
    if len(names) != ndim:
        names = tuple(f"axis{i}" for i in range(ndim))
    return names


def valid_mask(key: str, shape: tuple[int, ...], padding_mask: np.ndarray | None) -> np.ndarray | None:
    """A bool array broadcastable to `shape`: True at valid elements (None: all valid)."""
    if padding_mask is None:
        return None
    b, s = padding_mask.shape
    name = parse_key(key).name
    expected: tuple[int | str, ...]
    if key in TRACE_POOLER:
        expected, valid = (b,), padding_mask[:, 0].reshape(b, *([1] * (len(shape) - 1)))
        ok = len(shape) >= 1 and shape[0] == b
    elif name in ATTENTION_NAMES:
        ok = len(shape) == 4 and shape[0] == b and shape[2] == s and shape[3] == s
        expected, valid = (b, "heads", s, s), padding_mask[:, None, :, None]
    else:
        ok = len(shape) >= 2 and shape[:2] == (b, s)
        expected, valid = (b, s, "..."), padding_mask.reshape(b, s, *([1] * (len(shape) - 2)))
    if not ok:
        raise ValueError(f"{key} has shape {shape}, which does not fit padding_mask of shape {padding_mask.shape} "
                         f"(expected {tuple(expected)})")
    return valid
def flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`forward`'s result as a flat mapping: lists `hidden_states` / `attention_probs` become
    `hidden_states.{i}` / `attention_probs.{i}`; a `trace` dict contributes its names (its
    `pooled_output` is the output of the same name and appears once)."""
    flat: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        if key in ("hidden_states", "attention_probs") and not isinstance(value, np.ndarray):
            for i, v in enumerate(value):
                flat[f"{key}.{i}"] = np.asarray(v)
        elif key == "trace":
            for name, v in value.items():
                flat.setdefault(name, np.asarray(v))
        else:
            flat[key] = np.asarray(value)
    return flat



def _valid_names(key: str) -> list[str]:
    """Names a misspelt `key` may have meant: ours, the aliases, and indexed names with its index."""
    digits = re.findall(r"\d+", key)
    i = digits[0] if digits else "0"
    names = ["sequence_output", "pooled_output", f"hidden_states.{i}", f"attention_probs.{i}", "hidden_states",
             "attentions", f"attentions.{i}", *OUTPUT_ALIASES, *TRACE_EMBEDDINGS]
    names += [f"transformer_layer_{i}/{t}" for t in TRACE_LAYER]
    return names


#: Names other libraries give encoder outputs, and what each is in our terms: suggested before any
#: spelling match, since a name that *means* another output is no typo of a similar-looking one.
KNOWN_NAMES = {
    "token_embeddings": "sentence-transformers' name for the last layer's output: store it as sequence_output "
                        "(or last_hidden_state)",
    "sentence_embedding": "sentence-transformers' pooled (and maybe normalised) sentence vector, not an encoder "
                          "output: store token_embeddings as sequence_output, or check sentence vectors with "
                          "`bert-ref embed`",
    "sentence_embeddings": "sentence vectors, not an encoder output: store the last layer's output as "
                           "sequence_output, or check sentence vectors with `bert-ref embed`",
    "pooled": "pooled_output (Hugging Face: pooler_output)",
    "pooler": "pooled_output (Hugging Face: pooler_output)",
    "cls": "the [CLS] row of sequence_output, or pooled_output after the pooler: store the whole array",
    "encoder_output": "sequence_output (or last_hidden_state)",
    "encoder_outputs": "sequence_output (or last_hidden_state)",
    "embedding_output": "hidden_states.0 (the embeddings' layer-norm output)",
    "embeddings": "hidden_states.0 (the embeddings' layer-norm output)",
    "logits": "a head's output, not the encoder's: compare sequence_output / pooled_output",
}


def unknown_key_message(key: str) -> str:
    """"unexpected key 'X'; expected ... Did you mean 'Y'?": a known name of another library first
    (`KNOWN_NAMES`), else the closest spelling."""
    known = KNOWN_NAMES.get(key.lower().strip())
    close = difflib.get_close_matches(key, _valid_names(key), n=1, cutoff=0.5)
    if known is not None:
        hint = f" {key!r} is {known}."
    else:
        hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unexpected key {key!r}; expected {OUTPUT_KEYS_HELP}, or Hugging Face's last_hidden_state, "
            f"pooler_output, hidden_states [L+1, B, S, H], attentions [L, B, heads, S, S].{hint}")
