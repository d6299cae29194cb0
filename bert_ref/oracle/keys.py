"""The output keys: one grammar for every name an output may have, where each is computed, its axes
and its valid elements.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER

LAYER_KEY = re.compile(r"^transformer_layer_(\d+)/(.+)$")
INDEXED_KEY = re.compile(r"^(hidden_states|attention_probs)\.(\d+)$")
ATTENTION_NAMES = ("attention_probs", "attention_scores")

# ----------------------------------------------------------------------------------------------
# Keys: where each output is computed, and what its axes are


def placement(key: str) -> tuple[tuple[float, float], str, int | None]:
    """(sort key, stage, layer) of an output key; ValueError for an unknown key."""
    if key.startswith("embeddings/") and key in TRACE_EMBEDDINGS:
        return (0, TRACE_EMBEDDINGS.index(key)), "embeddings", 0
    m = INDEXED_KEY.match(key)
    if m:
        kind, i = m.group(1), int(m.group(2))
        if kind == "hidden_states":
            if i == 0:
                return (0, len(TRACE_EMBEDDINGS)), "embeddings", 0
            return (i, len(TRACE_LAYER)), f"transformer_layer_{i - 1}", i
        return (i + 1, TRACE_LAYER.index("attention_probs") + 0.5), f"transformer_layer_{i}", i + 1
    m = LAYER_KEY.match(key)
    if m and m.group(2) in TRACE_LAYER:
        i = int(m.group(1))
        return (i + 1, TRACE_LAYER.index(m.group(2))), f"transformer_layer_{i}", i + 1
    if key == "sequence_output":
        return (math.inf, 0), "output", None
    if key in TRACE_POOLER:
        return (math.inf, 1), "pooler", None
    raise ValueError(
        f"unknown output key {key!r}; expected sequence_output, pooled_output, hidden_states.{{i}}, "
        f"attention_probs.{{i}}, or a trace name ({', '.join(TRACE_EMBEDDINGS)}, "
        f"transformer_layer_{{i}}/{{{', '.join(TRACE_LAYER)}}})"
    )


def axes(key: str, ndim: int) -> tuple[str, ...]:
    name = key.rsplit("/", 1)[-1].split(".")[0]
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
    name = key.rsplit("/", 1)[-1].split(".")[0]
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
#: Hugging Face / ONNX output names of single outputs.
OUTPUT_ALIASES = {"last_hidden_state": "sequence_output", "pooler_output": "pooled_output"}

_OUTPUT_KEY = re.compile(r"^(sequence_output|pooled_output|(hidden_states|attention_probs)\.(0|[1-9][0-9]*))$")
_TRACE_KEY = re.compile(
    "^(" + "|".join(map(re.escape, TRACE_EMBEDDINGS)) + "|transformer_layer_(0|[1-9][0-9]*)/("
    + "|".join(map(re.escape, TRACE_LAYER)) + "))$"
)
OUTPUT_KEYS_HELP = ("sequence_output, pooled_output, hidden_states.{i}, attention_probs.{i}, or a trace name "
                    "(embeddings/..., transformer_layer_{i}/...)")


def is_output_key(key: str) -> bool:
    """True for `sequence_output`, `pooled_output`, `hidden_states.{i}`, `attention_probs.{i}` and
    the trace names (`embeddings/sum`, `transformer_layer_{i}/query`, ...)."""
    return bool(_OUTPUT_KEY.match(key) or _TRACE_KEY.match(key))


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


def unknown_key_message(key: str) -> str:
    """"unexpected key 'X'; expected ... (closest match: 'Y')"."""
    close = difflib.get_close_matches(key, _valid_names(key), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unexpected key {key!r}; expected {OUTPUT_KEYS_HELP}, or Hugging Face's last_hidden_state, "
            f"pooler_output, hidden_states [L+1, B, S, H], attentions [L, B, heads, S, S].{hint}")
