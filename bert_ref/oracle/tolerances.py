"""Tolerances: the defaults and per-kind `--atol`/`--rtol` specs (unit roundoffs: the precision table,
`bert_ref.model.precision.TABLE`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER
from bert_ref.oracle.keys import is_output_key, parse_key

#: Defaults of `bert-ref compare`: a float32 candidate against our float32 output.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4

# ----------------------------------------------------------------------------------------------
# Tolerances per kind of output

#: Kinds of output a per-kind tolerance can name (besides an exact key and "default").
TOLERANCE_KINDS = ("hidden_states", "attention_probs", "attention_scores", "pooled_output", "sequence_output",
                   *(t for t in TRACE_LAYER if t not in ("attention_probs", "attention_scores")), *TRACE_EMBEDDINGS)

def _kinds(key: str) -> list[str]:
    """Names a tolerance for `key` may be given under, most specific first."""
    base = parse_key(key).name
    names = [key]
    if base != key:
        names.append(base)
    if key == "sequence_output" or base in ("hidden_states",):
        names.append("hidden_states")
    if key in TRACE_POOLER:
        names.append("pooled")
    return names


def parse_tolerance(text: str | float | Mapping[str, float], what: str = "atol") -> float | dict[str, float]:
    """A tolerance: a number, or `"[default,]kind=value,..."` such as
    `"1e-5,hidden_states=1e-2,attention_probs=1e-3"` (a mapping with key "default" for the rest).

    Kinds: an output key (`hidden_states.3`), or `hidden_states` (also covers `sequence_output`),
    `attention_probs`, `attention_scores`, `pooled_output` (or `pooled`), a trace name
    (`query`, `feedforward_output`, `embeddings/sum`, ...).

    Raises:
        ValueError: a value that is not a number >= 0, or an unknown kind (the message lists them).
    """
    items: list[tuple[str, Any]]
    if isinstance(text, Mapping):
        items = list(text.items())
    elif isinstance(text, (int, float)):
        items = [("default", float(text))]
    else:
        items = []
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            k, sep, v = part.partition("=")
            items.append((k.strip(), v.strip()) if sep else ("default", k))
    out: dict[str, float] = {}
    for k, v in items:
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {k}={v!r} is not a number") from None
        if not value >= 0:
            raise ValueError(f"atol and rtol must be >= 0, got {what} " + (f"{k}={v}" if k != "default" else f"{v}"))
        if k == "pooled":
            k = "pooled_output"
        if k != "default" and k not in TOLERANCE_KINDS and not is_output_key(k):
            close = difflib.get_close_matches(k, TOLERANCE_KINDS, n=1)
            raise ValueError(f"{what}: unknown kind {k!r}; use an output key or one of {', '.join(TOLERANCE_KINDS)}"
                             + (f" (closest: {close[0]!r})" if close else ""))
        out[k] = value
    if list(out) == ["default"]:
        return out["default"]
    return out


def tolerance_for(spec: float | Mapping[str, float], key: str, default: float) -> float:
    if not isinstance(spec, Mapping):
        return float(spec)
    if "pooled" in spec and "pooled_output" not in spec:
        spec = {**spec, "pooled_output": spec["pooled"]}
    for name in _kinds(key):
        if name in spec:
            return float(spec[name])
    return float(spec.get("default", default))
