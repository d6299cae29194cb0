"""How far is a candidate BERT's output from ours, and where does the divergence start?

    >>> from bert_ref import BertBackbone, compare
    >>> model = BertBackbone.from_preset("bert_tiny_en_uncased", load_weights=False)
    >>> inputs = {"token_ids": [[101, 7592, 102, 0]], "padding_mask": [[1, 1, 1, 0]]}
    >>> ours = model(inputs, output_hidden_states=True)
    >>> report = compare(ours, their_outputs, atol=1e-5, rtol=1e-4, padding_mask=inputs["padding_mask"])
    >>> report.passed, report.first_failure                                      # doctest: +SKIP
    (False, Entry(key='hidden_states.2', stage='transformer_layer_1', ...))
    >>> print(report)                                                            # doctest: +SKIP

Both sides are mappings of output keys to arrays — `sequence_output`, `pooled_output`,
`hidden_states.{i}`, `attention_probs.{i}` and, optionally, trace names (`embeddings/sum`,
`transformer_layer_0/query`, ...) — or `forward`'s own result (lists `hidden_states` and
`attention_probs`, dict `trace`). Every key of the candidate is compared with the reference's.

**The check.** An element passes when `|candidate - reference| <= atol + rtol * |reference|`
(NumPy's `allclose` rule, computed in float64); an output passes when all its elements at *valid*
positions pass. `atol` and `rtol` may differ per kind of output (`parse_tolerance`:
`"1e-5,hidden_states=1e-2,attention_probs=1e-3"`). A NaN or infinity in the candidate fails its
output wherever it is, padded positions included; its error is NaN (printed `nan`). (A reference's
own non-finite value — never ours — is matched only by the same value.)

**The floor-ratio check.** With `floor=` and `floor_ratio=K`, an output passes when its max abs
error is at most K times the floor's (`Entry.floor_scale`): "your error is at most K times what
this precision costs our own evaluation". `compare_to_truth(..., precision=...)` runs the float64
truth and the floor in the candidate's precision (float16, bfloat16, tf32, int8, float32) and uses
this check by default (K = `DEFAULT_FLOOR_RATIO`, chosen from real ports: docs/conformance.md).

**Valid and padded positions.** With `padding_mask` ([B, S], 1 = real token), the elements of
padded positions are reported separately and do not fail the check unless `check_padded=True`:
for [B, S, ...] arrays the position axis is 1; for attention probabilities and scores
[B, heads, S, S] it is the *query* axis (a valid query's weights on padded keys are valid
elements: they must be 0, and a candidate that attends to padding fails); `pooled_output` [B, H]
is valid when position 0 of its row is.

**Per output**, for valid and padded elements separately: the max absolute error, the RMS error
(max abs alone is dominated by single outliers at half precision), the max relative error
`|c - r| / |r|` (0/0 = 0, x/0 = inf) and the worst relative error over the elements with `|r|` at
least 10% of the output's RMS value (without the near-zero values that make the plain maximum
meaningless), the max error in float32 ulps `|c - r| / spacing(float32(|r|))`, the worst cosine
similarity of candidate and reference vectors per position, and the worst element — the one
furthest over its tolerance `atol + rtol * |r|` — with its index, named by axis (batch, position,
channel; or batch, head, query, key), both values and its own error. The report's sentence about
the first failing output describes that one element.

**Order.** Entries are ordered as the network computes them: embeddings (`hidden_states.0`), then
each `transformer_layer_{i}` (its trace points, `attention_probs.{i}`, then `hidden_states.{i+1}`,
its output), then `sequence_output` and `pooled_output`. So `report.first_failure` is where the
divergence starts.

**The floor.** `floor=` takes a third set of outputs of the same inputs (e.g. our float32 run when
the reference is our float64 run); each entry then also reports the floor's own error against the
reference and `floor_ratio` = candidate's max abs error / `floor_scale` — "your error is 1.3x the
float32 floor". `compare_to_truth` does all of this for a model and inputs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import functools
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import kernels
from .encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER, forward
from .files import flatten_outputs
from .precision import get_policy

__all__ = ["compare", "compare_to_truth", "oracle_outputs", "check_candidate", "detect_precision", "parse_tolerance",
           "Report", "Entry", "Stats", "DEFAULT_ATOL", "DEFAULT_RTOL", "DEFAULT_FLOOR_RATIO", "PRECISIONS"]

#: Defaults of `bert-ref compare`: a float32 candidate against our float32 output.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4

_LAYER_KEY = re.compile(r"^transformer_layer_(\d+)/(.+)$")
_INDEXED_KEY = re.compile(r"^(hidden_states|attention_probs)\.(\d+)$")
_ATTENTION_NAMES = ("attention_probs", "attention_scores")


@dataclasses.dataclass(frozen=True)
class Stats:
    """Errors of one output over one set of elements (the valid or the padded ones).

    All errors are computed in float64. `worst_index` is the full index of the element furthest
    over its tolerance (`tolerance_ratio` = its `|c - r| / (atol + rtol * |r|)`; <= 1 passes),
    or None when the set is empty; `worst_error` and `worst_tolerance` are that one element's
    `|c - r|` and `atol + rtol * |r|`.

    `rel_error_over_cut` is the worst `|c - r| / |r|` over the elements with `|r| >= magnitude_cut`
    (10% of the reference's RMS value over the set): the relative error of values of ordinary
    size, which near-zero values cannot inflate. `min_cosine` is the worst cosine similarity of
    candidate and reference vectors along the last axis (channels; keys for attention), at
    `min_cosine_index` (the index without the last axis).

    A NaN or infinity in the candidate makes the element's error NaN: `max_abs_error`,
    `rms_error` and `tolerance_ratio` are then NaN, `nonfinite` counts them and the set fails."""

    count: int
    max_abs_error: float
    max_rel_error: float
    max_ulp_error: float
    rms_error: float
    tolerance_ratio: float
    worst_index: tuple[int, ...] | None
    worst_reference: float | None
    worst_candidate: float | None
    nonfinite: int
    passed: bool
    worst_error: float | None = None
    worst_tolerance: float | None = None
    rel_error_over_cut: float = 0.0
    magnitude_cut: float = 0.0
    min_cosine: float = 1.0
    min_cosine_index: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["worst_index"] = list(self.worst_index) if self.worst_index is not None else None
        d["min_cosine_index"] = list(self.min_cosine_index) if self.min_cosine_index is not None else None
        return d


@dataclasses.dataclass(frozen=True)
class Entry:
    """The comparison of one output.

    Attributes:
        key: the output's key (`hidden_states.2`, `transformer_layer_0/query`, ...).
        stage: where the network computes it: `embeddings`, `transformer_layer_{i}`, `output`
            (`sequence_output`) or `pooler`.
        layer: the stage as an index into `hidden_states` — 0 for the embeddings, i + 1 for
            `transformer_layer_{i}` — or None for `output` and `pooler`.
        shape, axes: the array's shape and the names of its axes.
        valid, padded: `Stats` of the valid and the padded elements (`padded` is None without
            padded elements).
        passed: valid elements within tolerance (and padded ones, with `check_padded`).
        floor: `Stats` of the floor outputs vs the reference at valid elements, or None.
        floor_scale: the floor's size: `floor.max_abs_error`, but at least one rounding of the
            largest reference value in the dtype the precision stores outputs in
            (`UNIT_ROUNDOFF[precision] * max|r|`), so that an output the floor computes exactly
            (an embedding lookup in float32) still has a scale.
        floor_ratio: `valid.max_abs_error / floor_scale` (None without a floor; 1.0 when both
            are 0, inf when only the floor is).
        rms_floor_ratio: `valid.rms_error / floor.rms_error`, the same for the RMS error.
        atol, rtol: the tolerance this output was checked with (in floor-ratio mode,
            atol = K * floor_scale and rtol = 0).
    """

    key: str
    stage: str
    layer: int | None
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    valid: Stats
    padded: Stats | None
    passed: bool
    floor: Stats | None = None
    floor_ratio: float | None = None
    floor_scale: float | None = None
    rms_floor_ratio: float | None = None
    atol: float = 0.0
    rtol: float = 0.0

    def where(self, index: Sequence[int] | None = None) -> str:
        """An index spelled with axis names: "batch 0, position 5, channel 17"."""
        index = self.valid.worst_index if index is None else index
        if index is None:
            return "-"
        return ", ".join(f"{a} {i}" for a, i in zip(self.axes, index, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "stage": self.stage, "layer": self.layer, "shape": list(self.shape),
            "axes": list(self.axes), "passed": self.passed, "valid": self.valid.to_dict(),
            "padded": self.padded.to_dict() if self.padded is not None else None,
            "floor": self.floor.to_dict() if self.floor is not None else None,
            "floor_ratio": self.floor_ratio, "floor_scale": self.floor_scale,
            "rms_floor_ratio": self.rms_floor_ratio, "atol": self.atol, "rtol": self.rtol,
        }


@dataclasses.dataclass(frozen=True)
class Report:
    """Entries in the order the network computes them, and the verdict.

    `report["hidden_states.2"]` is that key's `Entry`; iterating yields the entries. `atol` and
    `rtol` are numbers, or per-kind mappings (see `parse_tolerance`); with `floor_ratio_limit`
    (K) the check was the floor-ratio mode: an output passes when its max abs error is at most
    K times the floor's (`Entry.floor_scale`). `precision` names the precision the floor was
    measured in."""

    entries: tuple[Entry, ...]
    atol: Any
    rtol: Any
    check_padded: bool
    reference_name: str = "reference"
    candidate_name: str = "candidate"
    floor_name: str | None = None
    floor_ratio_limit: float | None = None
    precision: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries)

    @property
    def failures(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if not e.passed)

    @property
    def first_failure(self) -> Entry | None:
        """The earliest output (in computation order) over tolerance, or None."""
        return next((e for e in self.entries if not e.passed), None)

    @property
    def floor_label(self) -> str:
        """The floor column's heading: "<precision> floor"."""
        return f"{_short(self.precision or 'float32')} floor"

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: str) -> Entry:
        for e in self.entries:
            if e.key == key:
                return e
        raise KeyError(f"{key!r} was not compared; compared: {[e.key for e in self.entries]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. Non-finite floats become the strings "inf", "-inf", "nan"."""
        first = self.first_failure
        return _json_safe({
            "passed": self.passed,
            "atol": _plain(self.atol), "rtol": _plain(self.rtol), "check_padded": self.check_padded,
            "floor_ratio_limit": self.floor_ratio_limit, "precision": self.precision,
            "reference": self.reference_name, "candidate": self.candidate_name, "floor": self.floor_name,
            "notes": list(self.notes),
            "compared": len(self.entries), "failed": len(self.failures),
            "first_failure": None if first is None else {
                "key": first.key, "stage": first.stage, "layer": first.layer,
                "index": list(first.valid.worst_index) if first.valid.worst_index is not None else None,
                "where": first.where(), "sentence": self._first_sentence(first),
            },
            "entries": [e.to_dict() for e in self.entries],
        })

    def _rule(self) -> str:
        if self.floor_ratio_limit is not None:
            return (f"max abs error <= {self.floor_ratio_limit:g} x the {self.floor_label}, "
                    f"the max abs error of {self.floor_name}")
        return (f"|candidate - reference| <= atol + rtol*|reference|, atol={_spec(self.atol)}, "
                f"rtol={_spec(self.rtol)}")

    def _first_sentence(self, first: Entry) -> str:
        """One sentence about one element: the worst element of the first failing output."""
        stats = first.valid if not first.valid.passed or first.padded is None else first.padded
        which = "" if stats is first.valid else "padded "
        at = first.where(stats.worst_index)
        head = f"First over tolerance: {first.key} ({_stage_phrase(first)}): "
        if stats.nonfinite:
            return (head + f"{stats.nonfinite} non-finite candidate value(s) at {which}positions; the first at "
                    f"{at} (reference {_num(stats.worst_reference, '.7g')}, candidate "
                    f"{_num(stats.worst_candidate, '.7g')}), error nan.")
        values = (f"at {which}{at} the reference is {_num(stats.worst_reference, '.7g')} and the candidate "
                  f"{_num(stats.worst_candidate, '.7g')}: error {_num(stats.worst_error, '.3e')}")
        if self.floor_ratio_limit is not None:
            return (head + values + f" (the output's largest) = {_ratio(first.floor_ratio)} the "
                    f"{self.floor_label} {_num(first.floor_scale, '.3e')}; the limit is {self.floor_ratio_limit:g}x.")
        return (head + values + f" = {stats.tolerance_ratio:.3g}x its tolerance "
                f"{_num(stats.worst_tolerance, '.3e')} (atol {first.atol:g} + rtol {first.rtol:g} * |reference|).")

    def summary(self) -> str:
        """One or two lines: the verdict, and one element where the divergence starts."""
        scope = "valid and padded positions" if self.check_padded else "valid positions"
        if self.passed:
            return f"PASS: all {len(self.entries)} outputs within tolerance ({self._rule()}) at {scope}."
        first = self.first_failure
        assert first is not None
        return (f"FAIL: {len(self.failures)} of {len(self.entries)} outputs over tolerance ({self._rule()}) "
                f"at {scope}.\n" + self._first_sentence(first))

    def format_table(self) -> str:
        """A plain-text table, one row per output in computation order, then `summary()`."""
        has_floor = any(e.floor is not None for e in self.entries)
        has_padded = any(e.padded is not None for e in self.entries)
        head = ["key", "stage", "max abs", "rms", "rel>cut", "min cos", "worst element (valid)"]
        if has_padded:
            head.append("padded max abs")
        if has_floor:
            head += [self.floor_label, "x floor"]
        head.append("result")
        rows = [head]
        for e in self.entries:
            v = e.valid
            row = [e.key, e.stage, _num(v.max_abs_error), _num(v.rms_error), _num(v.rel_error_over_cut),
                   _cos(v.min_cosine), _compact_where(e)]
            if has_padded:
                row.append(_num(e.padded.max_abs_error) if e.padded is not None else "-")
            if has_floor:
                row += [_num(e.floor_scale) if e.floor is not None else "-", _ratio(e.floor_ratio)]
            row.append("ok" if e.passed else "FAIL")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 or i == 6 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        title = f"{self.candidate_name} vs {self.reference_name}"
        if has_floor:
            title += f"; {self.floor_label} = {self.floor_name}"
        notes = "".join(f"note: {n}\n" for n in self.notes)
        return notes + title + "\n" + "\n".join(lines) + "\n" + self.summary()

    def __str__(self) -> str:
        return self.format_table()


_SHORT = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "tf32": "tf32", "int8": "int8"}


def _short(precision: str) -> str:
    return _SHORT.get(precision, precision)


def _plain(spec: Any) -> Any:
    return dict(spec) if isinstance(spec, Mapping) else spec


def _spec(spec: Any) -> str:
    if isinstance(spec, Mapping):
        return ",".join(f"{v:g}" if k == "default" else f"{k}={v:g}" for k, v in spec.items())
    return f"{spec:g}"


def _cos(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return "1" if x == 1.0 else f"{x:.6f}"


def _num(x: float | None, fmt: str = ".2e") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # "nan", "inf", "-inf"
    if x == 0:
        return "0"
    return format(x, fmt)


def _ratio(x: float | None) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def _compact_where(e: Entry) -> str:
    idx = e.valid.worst_index
    if idx is None or e.valid.max_abs_error == 0:
        return "-"
    return "(" + ", ".join(str(i) for i in idx) + ")"


def _stage_phrase(e: Entry) -> str:
    if e.stage == "embeddings":
        return "embeddings" + (" output" if e.key == "hidden_states.0" else "")
    if e.stage.startswith("transformer_layer_"):
        return e.stage + (" output" if e.key.startswith("hidden_states.") else "")
    return {"output": "final output", "pooler": "pooler"}[e.stage]


def _json_safe(obj: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no spelling for them)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


# ----------------------------------------------------------------------------------------------
# Keys: where each output is computed, and what its axes are


def _placement(key: str) -> tuple[tuple[float, float], str, int | None]:
    """(sort key, stage, layer) of an output key; ValueError for an unknown key."""
    if key.startswith("embeddings/") and key in TRACE_EMBEDDINGS:
        return (0, TRACE_EMBEDDINGS.index(key)), "embeddings", 0
    m = _INDEXED_KEY.match(key)
    if m:
        kind, i = m.group(1), int(m.group(2))
        if kind == "hidden_states":
            if i == 0:
                return (0, len(TRACE_EMBEDDINGS)), "embeddings", 0
            return (i, len(TRACE_LAYER)), f"transformer_layer_{i - 1}", i
        return (i + 1, TRACE_LAYER.index("attention_probs") + 0.5), f"transformer_layer_{i}", i + 1
    m = _LAYER_KEY.match(key)
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


def _axes(key: str, ndim: int) -> tuple[str, ...]:
    name = key.rsplit("/", 1)[-1].split(".")[0]
    names: tuple[str, ...]
    if name in _ATTENTION_NAMES:
        names = ("batch", "head", "query", "key")
    elif key in TRACE_POOLER:
        names = ("batch", "channel")
    else:
        names = ("batch", "position", "channel")
    if len(names) != ndim:
        names = tuple(f"axis{i}" for i in range(ndim))
    return names


def _valid_mask(key: str, shape: tuple[int, ...], padding_mask: np.ndarray | None) -> np.ndarray | None:
    """A bool array broadcastable to `shape`: True at valid elements (None: all valid)."""
    if padding_mask is None:
        return None
    b, s = padding_mask.shape
    name = key.rsplit("/", 1)[-1].split(".")[0]
    expected: tuple[int | str, ...]
    if key in TRACE_POOLER:
        expected, valid = (b,), padding_mask[:, 0].reshape(b, *([1] * (len(shape) - 1)))
        ok = len(shape) >= 1 and shape[0] == b
    elif name in _ATTENTION_NAMES:
        ok = len(shape) == 4 and shape[0] == b and shape[2] == s and shape[3] == s
        expected, valid = (b, "heads", s, s), padding_mask[:, None, :, None]
    else:
        ok = len(shape) >= 2 and shape[:2] == (b, s)
        expected, valid = (b, s, "..."), padding_mask.reshape(b, s, *([1] * (len(shape) - 2)))
    if not ok:
        raise ValueError(f"{key} has shape {shape}, which does not fit padding_mask of shape {padding_mask.shape} "
                         f"(expected {tuple(expected)})")
    return valid


# ----------------------------------------------------------------------------------------------
# The arithmetic


@dataclasses.dataclass(frozen=True)
class _Elementwise:
    """Per-element errors of one output, in float64: computed once, then summarised separately over
    the valid and the padded elements (`_stats`)."""

    ref: np.ndarray  # the two sides as given
    cand: np.ndarray
    r: np.ndarray  # the two sides in float64
    c: np.ndarray
    err: np.ndarray  # |c - r|; NaN where the candidate is not finite (or the reference is not and differs)
    tol: np.ndarray  # atol + rtol * |r|
    ratio: np.ndarray  # err / tol: <= 1 passes (NaN fails)
    rel: np.ndarray  # err / |r| (0/0 = 0, x/0 = inf)
    ulp: np.ndarray  # err / spacing(float32(|r|))
    nonfinite: np.ndarray  # bool: a non-finite candidate value (or a non-finite reference value it does not share)
    magnitude: np.ndarray  # |r|, 0 where the reference is not finite

    @functools.cached_property
    def cosines(self) -> np.ndarray:
        """`_cosines(self)`, computed once (the valid and the padded summaries share it)."""
        return _cosines(self)


def _elementwise(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> _Elementwise:
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(c - r)
    c_finite = np.isfinite(c)
    r_finite = np.isfinite(r)
    if c_finite.all() and r_finite.all():
        nonfinite = np.zeros(err.shape, bool)
        a = np.abs(r)
    else:
        # A NaN/inf in the candidate always fails; a reference's own inf/NaN (never ours in float32
        # or float64) is matched only by the same value.
        same = ~r_finite & ((np.isnan(r) & np.isnan(c)) | (~np.isnan(r) & (r == c)))
        nonfinite = (~c_finite & ~same) | (~r_finite & ~same)
        err = np.where(nonfinite, np.nan, np.where(same, 0.0, err))
        a = np.abs(np.where(r_finite, r, 0.0))
    tol = atol + rtol * a
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = _divide(err, tol)
        rel = _divide(err, a)
        # err / spacing: 0 stays 0 and NaN stays NaN (the spacing is never 0).
        ulp = err / np.spacing(np.minimum(a, np.finfo(np.float32).max).astype(np.float32)).astype(np.float64)
    return _Elementwise(ref, cand, r, c, err, tol, ratio, rel, ulp, nonfinite, a)


def _divide(err: np.ndarray, by: np.ndarray) -> np.ndarray:
    """`err / by` where `by > 0`; where `by` is 0: inf for a positive error, else the error (0 or
    NaN). Called under `np.errstate(divide="ignore", invalid="ignore")`."""
    if not by.any():  # a zero tolerance everywhere (the floor's own comparison)
        return np.where(err > 0, np.inf, err)
    out = err / by
    zero = by == 0
    if zero.any():
        out[zero] = np.where(err[zero] > 0, np.inf, err[zero])
    return out


def _cosines(e: _Elementwise) -> np.ndarray:
    """Cosine similarity of candidate and reference along the last axis: [..., n] -> [...].
    Two zero vectors have cosine 1, one zero vector 0; a non-finite candidate value gives NaN."""
    dot = np.einsum("...i,...i->...", e.c, e.r)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        nc, nr = np.sqrt(np.einsum("...i,...i->...", e.c, e.c)), np.sqrt(np.einsum("...i,...i->...", e.r, e.r))
        cos = np.where((nc > 0) & (nr > 0), dot / np.where((nc > 0) & (nr > 0), nc * nr, 1.0),
                       np.where((nc == 0) & (nr == 0), 1.0, 0.0))
    bad = e.nonfinite.any(axis=-1) if e.nonfinite.ndim else e.nonfinite
    return np.where(bad, np.nan, np.clip(cos, -1.0, 1.0))


def _stats(e: _Elementwise, select: np.ndarray | None) -> Stats | None:
    """The `Stats` of the elements where `select` (broadcast to the output's shape) is True; None
    when it selects nothing. `select=None` selects every element.

    Reductions read the selected elements in place (`where=`), without copying them out."""
    err, ratio = e.err, e.ratio
    if select is None:
        select = np.ones(err.shape, bool)
    else:
        select = np.broadcast_to(select, err.shape)
        if not select.any():
            return None
    nonfinite = int(np.count_nonzero(e.nonfinite & select))
    # Worst element: the first non-finite one; else furthest over tolerance, and among infinite
    # ratios (zero tolerance) the largest error.
    if nonfinite:
        flat = int(np.argmax(select & e.nonfinite))
    else:
        key = np.where(select, ratio, -1.0)
        if math.isinf(key.max()):
            flat = int(np.argmax(np.where(select & np.isinf(ratio), err, -1.0)))
        else:
            flat = int(np.argmax(key))
    index = tuple(int(i) for i in np.unravel_index(flat, err.shape))

    def largest(x: np.ndarray, where: np.ndarray = select) -> float:
        return float(np.max(x, where=where, initial=-np.inf))

    with np.errstate(over="ignore", invalid="ignore"):
        rms = float(np.sqrt(np.mean(np.square(err), where=select)))
        cut = 0.1 * float(np.sqrt(np.mean(np.square(e.magnitude), where=select)))
    big = select & (e.magnitude >= cut if cut > 0 else e.magnitude > 0)
    rel_cut = largest(e.rel, big) if big.any() else 0.0
    cos_index: tuple[int, ...] | None = None
    min_cos = 1.0
    if err.ndim >= 1 and err.shape[-1] > 0:
        cos = e.cosines
        pos_select = select[..., 0] if err.ndim > 1 else select[0]
        if err.ndim == 1:
            min_cos, cos_index = float(cos), ()
        elif pos_select.any():
            masked = np.where(pos_select, np.nan_to_num(cos, nan=-np.inf), np.inf)
            at = np.unravel_index(int(np.argmin(masked)), cos.shape)
            cos_index = tuple(int(i) for i in at)
            min_cos = float(cos[at])
    any_nan = bool(np.any(np.isnan(err), where=select))
    return Stats(
        count=int(np.count_nonzero(select)),
        max_abs_error=math.nan if any_nan else largest(err),
        max_rel_error=math.nan if any_nan else largest(e.rel),
        max_ulp_error=math.nan if any_nan else largest(e.ulp),
        rms_error=math.nan if any_nan else rms,
        tolerance_ratio=math.nan if any_nan else largest(ratio),
        worst_index=index,
        worst_reference=float(e.ref[index]),
        worst_candidate=float(e.cand[index]),
        nonfinite=nonfinite,
        passed=bool(not any_nan and largest(ratio) <= 1.0),
        worst_error=float(err[index]),
        worst_tolerance=float(e.tol[index]),
        rel_error_over_cut=math.nan if any_nan else rel_cut,
        magnitude_cut=cut,
        min_cosine=min_cos,
        min_cosine_index=cos_index,
    )


# ----------------------------------------------------------------------------------------------
# The same arithmetic in cache-sized blocks of rows
#
# `_elementwise` + `_stats` above are the definition. For the outputs `compare` meets (an array of
# at least 2 axes whose valid mask is constant along the last axis) `_summaries` computes the same
# `Stats`, bit for bit: it runs over blocks of rows (the last axis) that stay in the cores' caches,
# computes each per-element value by the same float64 operations (one fused set of passes per block,
# instead of a dozen whole-array float64 temporaries), keeps per-row maxima, first positions and dot
# products, and combines the rows of each set (valid, padded). Maxima and first positions do not
# depend on the grouping; the two sums whose rounding does (the RMS error and the magnitude cut)
# are taken by the very same masked `np.mean` over the whole squared array as in `_stats`.
# tests/test_compare.py checks the two against each other.

#: Elements per block of `_summaries` (256 KiB per float64 temporary: the set fits a core's L2).
SUMMARY_BLOCK = 1 << 15

_F32_MAX = np.finfo(np.float32).max
_TINY = math.ulp(0.0)  # the smallest positive float64: `a >= _TINY` is `a > 0` for a >= 0


class _Workspace:
    """Buffers reused from one block (and one output) to the next within one thread."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str], np.ndarray] = {}

    def get(self, name: str, size: int, dtype: Any = np.float64) -> np.ndarray:
        dtype = np.dtype(dtype)
        buf = self._buffers.get((name, dtype.str))
        if buf is None or buf.size < size:
            buf = self._buffers[(name, dtype.str)] = np.empty(size, dtype)
        return buf[:size]


def _fits_blocks(shape: tuple[int, ...], valid: np.ndarray | None) -> bool:
    """Whether `_summaries` can run blockwise: >= 2 axes, a non-empty last axis, and a valid mask
    that is constant along it (each row wholly valid or wholly padded)."""
    if len(shape) < 2 or shape[-1] == 0 or math.prod(shape) == 0:
        return False
    if valid is None:
        return True
    return valid.ndim == len(shape) and valid.shape[-1] == 1


class _Rows:
    """Per-row results of one output over all its rows ([rows, n], n = the last axis)."""

    def __init__(self, rows: int) -> None:
        def f() -> np.ndarray:
            return np.empty(rows)

        def i() -> np.ndarray:
            return np.zeros(rows, np.intp)

        self.err_max, self.rel_max, self.ulp_max, self.ratio_max, self.rel_cut_max = f(), f(), f(), f(), f()
        self.ratio_arg = i()
        self.inf_err_max = np.full(rows, -1.0)  # max of err where the ratio is inf (-1: none)
        self.inf_err_arg = i()
        self.nonfinite, self.nonfinite_first = i(), i()
        self.dot, self.cc, self.rr = f(), f(), f()


def _cast(x: np.ndarray, ws: _Workspace, name: str) -> np.ndarray:
    """`x.astype(np.float64)`, into a reused buffer (or `x` itself when it already is)."""
    if x.dtype == np.float64:
        return x
    out = ws.get(name, x.size).reshape(x.shape)
    np.copyto(out, x, casting="unsafe")
    return out


def _plain_rows(out: _Rows, sl: slice, e: _Elementwise, thr: np.ndarray, sq_err: np.ndarray) -> None:
    """Fill rows `sl` of `out` from the plain `_elementwise` of those rows (blocks holding a non-finite
    value, or an error that overflows)."""
    out.err_max[sl] = e.err.max(axis=-1)
    arg = np.argmax(e.ratio, axis=-1)
    out.ratio_arg[sl] = arg
    out.ratio_max[sl] = np.take_along_axis(e.ratio, arg[:, None], axis=-1)[:, 0]
    inf_key = np.where(np.isinf(e.ratio), e.err, -1.0)
    arg = np.argmax(inf_key, axis=-1)
    out.inf_err_arg[sl] = arg
    out.inf_err_max[sl] = np.take_along_axis(inf_key, arg[:, None], axis=-1)[:, 0]
    out.rel_max[sl] = e.rel.max(axis=-1)
    out.ulp_max[sl] = e.ulp.max(axis=-1)
    out.rel_cut_max[sl] = np.max(e.rel, axis=-1, where=e.magnitude >= thr[:, None], initial=-np.inf)
    out.nonfinite[sl] = np.count_nonzero(e.nonfinite, axis=-1)
    out.nonfinite_first[sl] = np.argmax(e.nonfinite, axis=-1)
    out.dot[sl] = np.einsum("...i,...i->...", e.c, e.r)
    out.cc[sl] = np.einsum("...i,...i->...", e.c, e.c)
    out.rr[sl] = np.einsum("...i,...i->...", e.r, e.r)
    with np.errstate(over="ignore"):
        np.square(e.err, out=sq_err)


def _row_max(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`x.max(axis=-1)` of a C-contiguous [m, n] block (NaN-propagating: argmax finds the first NaN),
    as argmax and a gather, which NumPy runs several times faster than `max` along rows."""
    return x.reshape(-1)[np.argmax(x, axis=-1) + offsets]


def _block_rows(out: _Rows, sl: slice, ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float,
                thr: np.ndarray, abs_max: np.ndarray, sq_err: np.ndarray, ws: _Workspace) -> None:
    """Rows `sl` ([m, n] blocks `ref`, `cand`) of `out`: the values of `_elementwise`, reduced per row.
    Each value is the one `_elementwise` computes, by the same float64 operations, written into
    reused buffers. `thr` is each row's magnitude cut (> 0), `abs_max` each row's max |ref|."""
    m, n = ref.shape
    size = m * n
    offsets = np.arange(0, size, n)
    r = _cast(ref, ws, "r")
    c = _cast(cand, ws, "c")
    err = ws.get("err", size).reshape(m, n)
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(c, r, out=err)
        np.abs(err, out=err)
    err_max = _row_max(err, offsets)
    if not np.isfinite(err_max).all():
        # A NaN or inf on either side (or an overflowing difference): the plain arithmetic.
        _plain_rows(out, sl, _elementwise(ref, cand, atol, rtol), thr, sq_err)
        return
    # Every value is finite here: `nonfinite` is all False and the magnitude is |r|.
    out.err_max[sl] = err_max
    a = np.abs(r, out=ws.get("a", size).reshape(m, n))
    q = ws.get("q", size).reshape(m, n)
    b = ws.get("b", size, bool).reshape(m, n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if atol == 0.0 and rtol == 0.0:
            # tol = 0 + 0 * |r| = 0 everywhere: ratio = inf where err > 0, else err (0).
            pos = err_max > 0
            out.ratio_max[sl] = np.where(pos, np.inf, 0.0)
            out.ratio_arg[sl] = np.argmax(np.greater(err, 0.0, out=b), axis=-1)
            out.inf_err_max[sl] = np.where(pos, err_max, -1.0)
            out.inf_err_arg[sl] = np.where(pos, np.argmax(err, axis=-1), 0)
        else:
            tol = np.multiply(a, rtol, out=q)
            np.add(tol, atol, out=tol)
            if not atol > 0:  # tol can be 0 (where |r| = 0): `_divide`'s rule there
                zero = np.equal(tol, 0.0, out=b)
                ratio = np.divide(err, tol, out=q)
                if zero.any():
                    ratio[zero] = np.where(err[zero] > 0, np.inf, err[zero])
            else:
                ratio = np.divide(err, tol, out=q)
            arg = np.argmax(ratio, axis=-1)
            top = ratio.reshape(-1)[arg + offsets]
            out.ratio_arg[sl], out.ratio_max[sl] = arg, top
            out.inf_err_max[sl], out.inf_err_arg[sl] = -1.0, 0
            for i in np.flatnonzero(np.isinf(top)):
                key = np.where(np.isinf(ratio[i]), err[i], -1.0)
                j = int(np.argmax(key))
                out.inf_err_arg[sl.start + i], out.inf_err_max[sl.start + i] = j, key[j]
        # ulp = err / spacing(float32(min(|r|, float32 max))), the spacing taken in float32. For a
        # float32 value with exponent field e >= 24 (|r| from 2^-103 up to 2^127) np.spacing is the
        # normal power of two 2^(e - 150), whose reciprocal 2^(150 - e) is a float32 too: the field
        # 277 - e. Multiplying by it is dividing by the spacing, exactly (both round the same number).
        s32 = ws.get("s", size, np.float32).reshape(m, n)
        if abs_max.max() <= 2.0 ** 127:  # float32(|r|) stays below float32's max: min() is a no-op
            np.copyto(s32, a, casting="unsafe")
            bits = s32.view(np.uint32)
            np.bitwise_and(bits, 0x7F800000, out=bits)  # e << 23
            if bits.min() >= 24 << 23:
                np.subtract(277 << 23, bits, out=bits)  # the float32 1 / spacing
                ulp = np.multiply(err, s32, out=q)
            else:  # |r| below 2^-103 (zeros): np.spacing's subnormal spacings there
                tiny = bits < 24 << 23
                np.subtract(bits, 23 << 23, out=bits)  # the float32 spacing 2^(e - 150)
                bits[tiny] = np.spacing(a[tiny].astype(np.float32)).view(np.uint32)
                ulp = np.divide(err, s32, out=q)
        else:
            np.copyto(s32, np.minimum(a, _F32_MAX, out=q), casting="unsafe")
            np.spacing(s32, out=s32)
            ulp = np.divide(err, s32, out=q)
        out.ulp_max[sl] = _row_max(ulp, offsets)
        # rel = err / |r|, where 0 / 0 is 0 (`_divide`); x / 0 is inf by itself.
        rel = np.divide(err, a, out=q)
        rel_max = _row_max(rel, offsets)
        if np.isnan(rel_max).any():
            np.copyto(rel, 0.0, where=np.isnan(rel, out=b))
            rel_max = _row_max(rel, offsets)
        out.rel_max[sl] = rel_max
        # The largest rel where |r| >= the row's cut, with 0 elsewhere: rel >= 0, and a row without
        # such an element gives 0, which `_row_stats` reads as "none" like -inf.
        edges = np.flatnonzero(thr[1:] != thr[:-1]) + 1  # runs of rows of one set share a cut
        for i, j in zip([0, *edges], [*edges, m], strict=True):
            np.greater_equal(a[i:j], thr[i], out=b[i:j])
        big = ws.get("q2", size).reshape(m, n)
        big.fill(0.0)
        np.copyto(big, rel, where=b)
        out.rel_cut_max[sl] = _row_max(big, offsets)
    out.nonfinite[sl], out.nonfinite_first[sl] = 0, 0
    out.dot[sl] = np.einsum("...i,...i->...", c, r)
    out.cc[sl] = np.einsum("...i,...i->...", c, c)
    out.rr[sl] = np.einsum("...i,...i->...", r, r)
    with np.errstate(over="ignore"):
        np.square(err, out=sq_err)


def _magnitudes(ref: np.ndarray, sq_mag: np.ndarray, ws: _Workspace) -> np.ndarray:
    """Fill `sq_mag` ([rows, n]) with `_elementwise`'s magnitude squared (|r|, 0 where r is not
    finite); return the per-row max of |r| itself (NaN-propagating)."""
    rows, n = ref.shape
    abs_max = np.empty(rows)
    # float16/32 values square exactly in float64: r * r is |r|^2 and the largest square marks the
    # largest |r|, straight from the stored values.
    exact = ref.dtype in (np.float16, np.float32)
    step = max(1, SUMMARY_BLOCK // n)
    for s in range(0, rows, step):
        sl = slice(s, min(s + step, rows))
        block, sq = ref[sl], sq_mag[sl]
        offsets = np.arange(0, block.size, n)
        with np.errstate(over="ignore", invalid="ignore"):
            if exact:
                np.square(block, dtype=np.float64, out=sq)
                top = np.abs(block.reshape(-1)[np.argmax(sq, axis=-1) + offsets])
                abs_max[sl] = top
                if np.isfinite(top).all():
                    continue
                a = np.abs(np.where(np.isfinite(block), block, 0).astype(np.float64))
            else:
                r = _cast(block, ws, "r")
                a = np.abs(r, out=ws.get("a", r.size).reshape(r.shape))
                abs_max[sl] = _row_max(a, offsets)
                if not np.isfinite(abs_max[sl]).all():
                    np.abs(np.where(np.isfinite(r), r, 0.0), out=a)
            np.square(a, out=sq)
    return abs_max


def _masked_mean(x: np.ndarray, select: np.ndarray | None, count: int) -> float:
    """`_stats`'s `np.mean(x, where=select)`, `count` being the number of selected elements: the
    same masked sum NumPy's mean takes (hence the same rounding), divided by the count in float64
    as it does — without its extra pass that counts the mask."""
    where = np.ones(x.shape, bool) if select is None else np.broadcast_to(select, x.shape)
    return float(np.add.reduce(x, axis=None, where=where)) / count


def _summaries(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float, valid: np.ndarray | None,
               padded: bool, ws: _Workspace | None = None) -> tuple[Stats | None, Stats | None, float]:
    """`(_stats(e, valid), _stats(e, ~valid) if padded and valid is not None else None, biggest)` of
    `e = _elementwise(ref, cand, atol, rtol)`, where `biggest` is the largest |ref| at valid elements
    (0 where none) — computed blockwise when `_fits_blocks`, bit-identical to the plain functions."""
    shape = ref.shape
    # C-contiguous sides only: `_elementwise`'s float64 copies keep their side's memory order, and
    # the cosines' dot products (einsum) round differently over rows that are not contiguous.
    if not (_fits_blocks(shape, valid) and ref.flags.c_contiguous and cand.flags.c_contiguous):
        e = _elementwise(ref, cand, atol, rtol)
        v = _stats(e, valid)
        p = _stats(e, ~valid) if padded and valid is not None else None
        r64 = np.abs(ref.astype(np.float64))
        biggest = float(np.broadcast_to(valid, shape).choose(0.0, r64).max()) if valid is not None else float(r64.max())
        return v, p, biggest
    ws = ws or _Workspace()
    n = shape[-1]
    rows = math.prod(shape) // n
    ref2, cand2 = ref.reshape(rows, n), cand.reshape(rows, n)
    row_valid = None if valid is None else np.broadcast_to(valid, shape)[..., 0].reshape(rows)
    selects: list[np.ndarray | None] = [valid]
    if padded and valid is not None:
        selects.append(~valid)
    row_selects = [None if row_valid is None else row_valid if k == 0 else ~row_valid for k in range(len(selects))]

    sq_mag, sq_err = ws.get("sq_mag", rows * n).reshape(rows, n), ws.get("sq_err", rows * n).reshape(rows, n)
    abs_max = _magnitudes(ref2, sq_mag, ws)
    cuts: list[float] = []
    thr = np.full(rows, np.inf)  # per row: its set's magnitude cut (> 0)
    with np.errstate(over="ignore", invalid="ignore"):
        for select, rsel in zip(selects, row_selects, strict=True):
            if rsel is not None and not rsel.any():
                cuts.append(0.0)
                continue
            count = n * (rows if rsel is None else int(np.count_nonzero(rsel)))
            cut = 0.1 * float(np.sqrt(_masked_mean(sq_mag.reshape(shape), select, count)))
            cuts.append(cut)
            thr[slice(None) if rsel is None else rsel] = cut if cut > 0 else _TINY

    out = _Rows(rows)
    step = max(1, SUMMARY_BLOCK // n)
    for s in range(0, rows, step):
        sl = slice(s, min(s + step, rows))
        _block_rows(out, sl, ref2[sl], cand2[sl], atol, rtol, thr[sl], abs_max[sl], sq_err[sl], ws)

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        nc, nr = np.sqrt(out.cc), np.sqrt(out.rr)
        cos = np.where((nc > 0) & (nr > 0), out.dot / np.where((nc > 0) & (nr > 0), nc * nr, 1.0),
                       np.where((nc == 0) & (nr == 0), 1.0, 0.0))
    cos = np.where(out.nonfinite > 0, np.nan, np.clip(cos, -1.0, 1.0)).reshape(shape[:-1])

    stats: list[Stats | None] = []
    for select, rsel, cut in zip(selects, row_selects, cuts, strict=True):
        if rsel is not None and not rsel.any():
            stats.append(None)
            continue
        stats.append(_row_stats(out, ref, cand, atol, rtol, shape, select, rsel, cut, sq_err, cos))
    biggest = float(abs_max.max() if row_valid is None else np.where(row_valid, abs_max, 0.0).max())
    return stats[0], (stats[1] if len(stats) > 1 else None), biggest


def _row_stats(out: _Rows, ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float, shape: tuple[int, ...],
               select: np.ndarray | None, rsel: np.ndarray | None, cut: float, sq_err: np.ndarray,
               cos: np.ndarray) -> Stats:
    """`_stats` of the rows `rsel` (None: all) from the per-row results."""
    rows, n = sq_err.shape
    where = np.ones(rows, bool) if rsel is None else rsel

    def largest(x: np.ndarray) -> float:
        return float(np.max(x, where=where, initial=-np.inf))

    count = int(np.count_nonzero(where)) * n
    nonfinite = int(out.nonfinite[where].sum())
    if nonfinite:
        row = int(np.argmax(where & (out.nonfinite > 0)))
        col = int(out.nonfinite_first[row])
    else:
        key = np.where(where, out.ratio_max, -1.0)
        if math.isinf(key.max()):
            row = int(np.argmax(np.where(where, out.inf_err_max, -1.0)))
            col = int(out.inf_err_arg[row])
        else:
            row = int(np.argmax(key))
            col = int(out.ratio_arg[row])
    index = tuple(int(i) for i in np.unravel_index(row * n + col, shape))
    one = _elementwise(ref.reshape(rows, n)[row:row + 1], cand.reshape(rows, n)[row:row + 1], atol, rtol)
    with np.errstate(over="ignore", invalid="ignore"):
        rms = float(np.sqrt(_masked_mean(sq_err.reshape(shape), select, count)))
    rel_cut = largest(out.rel_cut_max)
    if rel_cut == -np.inf:  # no element of ordinary size (rows give -inf or 0 for none)
        rel_cut = 0.0
    pos_select = where.reshape(shape[:-1])
    masked = np.where(pos_select, np.nan_to_num(cos, nan=-np.inf), np.inf)
    at = np.unravel_index(int(np.argmin(masked)), cos.shape)
    any_nan = bool(np.isnan(out.err_max[where]).any())
    return Stats(
        count=count,
        max_abs_error=math.nan if any_nan else largest(out.err_max),
        max_rel_error=math.nan if any_nan else largest(out.rel_max),
        max_ulp_error=math.nan if any_nan else largest(out.ulp_max),
        rms_error=math.nan if any_nan else rms,
        tolerance_ratio=math.nan if any_nan else largest(out.ratio_max),
        worst_index=index,
        worst_reference=float(ref[index]),
        worst_candidate=float(cand[index]),
        nonfinite=nonfinite,
        passed=bool(not any_nan and largest(out.ratio_max) <= 1.0),
        worst_error=float(one.err[0, col]),
        worst_tolerance=float(one.tol[0, col]),
        rel_error_over_cut=math.nan if any_nan else rel_cut,
        magnitude_cut=cut,
        min_cosine=float(cos[at]),
        min_cosine_index=tuple(int(i) for i in at),
    )


def _as_flat(outputs: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"{what} must be a mapping of output keys to arrays (or forward's result), "
                        f"got {type(outputs).__name__}")
    return flatten_outputs(outputs)


# ----------------------------------------------------------------------------------------------
# Tolerances per kind of output

#: Kinds of output a per-kind tolerance can name (besides an exact key and "default").
TOLERANCE_KINDS = ("hidden_states", "attention_probs", "attention_scores", "pooled_output", "sequence_output",
                   *(t for t in TRACE_LAYER if t not in ("attention_probs", "attention_scores")), *TRACE_EMBEDDINGS)

#: The unit roundoff (half the spacing of 1.0) of the dtype each precision stores its outputs in
#: (float32 for tf32 and int8, which round only the inputs of matrix products): one rounding of an
#: output's largest value is the smallest floor it can have.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "tf32": 2.0 ** -24, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8, "int8": 2.0 ** -24}


def _kinds(key: str) -> list[str]:
    """Names a tolerance for `key` may be given under, most specific first."""
    base = key.rsplit("/", 1)[-1].split(".")[0]
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
        if k != "default" and k not in TOLERANCE_KINDS and not _is_key(k):
            close = difflib.get_close_matches(k, TOLERANCE_KINDS, n=1)
            raise ValueError(f"{what}: unknown kind {k!r}; use an output key or one of {', '.join(TOLERANCE_KINDS)}"
                             + (f" (closest: {close[0]!r})" if close else ""))
        out[k] = value
    if list(out) == ["default"]:
        return out["default"]
    return out


def _is_key(k: str) -> bool:
    try:
        _placement(k)
        return True
    except ValueError:
        return False


def _tolerance_for(spec: float | Mapping[str, float], key: str, default: float) -> float:
    if not isinstance(spec, Mapping):
        return float(spec)
    if "pooled" in spec and "pooled_output" not in spec:
        spec = {**spec, "pooled_output": spec["pooled"]}
    for name in _kinds(key):
        if name in spec:
            return float(spec[name])
    return float(spec.get("default", default))


def compare(
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    atol: float | Mapping[str, float] | str = DEFAULT_ATOL,
    rtol: float | Mapping[str, float] | str = DEFAULT_RTOL,
    padding_mask: Any = None,
    check_padded: bool = False,
    floor: Mapping[str, Any] | None = None,
    floor_reference: Mapping[str, Any] | None = None,
    floor_ratio: float | None = None,
    precision: str | None = None,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    floor_name: str = "floor",
    notes: Sequence[str] = (),
) -> Report:
    """Compare every output of `candidate` with `reference`'s; see the module docstring.

    Args:
        reference, candidate: mappings of output keys to arrays, or `forward`'s results.
        atol, rtol: an element passes when `|c - r| <= atol + rtol * |r|`. A number, or per kind
            of output: a mapping or a string like `"1e-5,hidden_states=1e-2"` (see `parse_tolerance`).
        padding_mask: [B, S] (1/True = real token). None: every position is valid.
        check_padded: also fail on padded positions.
        floor: optional third outputs compared with `reference` at valid positions, reported next
            to the candidate's error (see `Entry.floor_ratio`).
        floor_reference: compare `floor` with these instead of `reference` (e.g. reference = our
            float32, floor = our float32, floor_reference = our float64: the candidate's distance
            from our float32 is then shown next to float32's own distance from the truth).
        floor_ratio: K, the floor-ratio mode (needs `floor`): an output passes when its max abs
            error is at most K times `Entry.floor_scale`; `atol` and `rtol` are then not used.
        precision: the floor's precision ("float16", "bfloat16", "tf32", "int8", "float32",
            "float64"): labels the floor column and sets the smallest floor (`UNIT_ROUNDOFF`).
        reference_name, candidate_name, floor_name: labels for the printed report.
        notes: lines printed above the table (how the candidate file was read, ...).

    Returns:
        A `Report`, entries in computation order.

    Raises:
        ValueError: a key of `candidate` unknown or absent from `reference`, mismatched shapes,
            negative tolerances, a `floor_ratio` without a floor, or a `padding_mask` that does not fit.
    """
    atol_spec, rtol_spec = parse_tolerance(atol, "atol"), parse_tolerance(rtol, "rtol")
    if floor_ratio is not None and (floor is None or not floor_ratio > 0):
        raise ValueError(f"floor_ratio={floor_ratio}: the floor-ratio mode needs a floor and K > 0")
    if precision is not None and precision not in UNIT_ROUNDOFF:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(UNIT_ROUNDOFF)}")
    ref = _as_flat(reference, "reference")
    cand = _as_flat(candidate, "candidate")
    flo = _as_flat(floor, "floor") if floor is not None else {}
    flo_ref = _as_flat(floor_reference, "floor_reference") if floor_reference is not None else ref
    if not cand:
        raise ValueError("candidate holds no outputs to compare")
    mask = None
    if padding_mask is not None:
        mask = np.asarray(padding_mask)
        if mask.ndim != 2:
            raise ValueError(f"padding_mask must be 2-D (batch, sequence), got shape {mask.shape}")
        mask = mask.astype(bool)
    placed = sorted(((_placement(k), k) for k in cand), key=lambda t: t[0][0])
    missing = [k for _, k in placed if k not in ref]
    if missing:
        raise ValueError(f"{reference_name} has no {', '.join(missing)} to compare with (it has: {', '.join(ref)})")
    if floor_ratio is not None:
        absent = [k for _, k in placed if k not in flo or k not in flo_ref]
        if absent:
            raise ValueError(f"the floor-ratio mode needs a floor for every output; {floor_name} has no "
                             f"{', '.join(absent)}")
    u = UNIT_ROUNDOFF[precision or "float32"]
    local = threading.local()  # one `_Workspace` per thread, for this call only

    def _workspace() -> _Workspace:
        ws = getattr(local, "ws", None)
        if ws is None:
            ws = local.ws = _Workspace()
        return ws

    def entry(placement: tuple[tuple[tuple[float, float], str, int | None], str]) -> Entry:
        (_, stage, layer), key = placement
        r, c = np.asarray(ref[key]), np.asarray(cand[key])
        if r.shape != c.shape:
            raise ValueError(f"{key}: {candidate_name} has shape {c.shape}, {reference_name} has shape {r.shape}")
        if c.dtype.kind not in "fiub" and c.dtype.name != "bfloat16":
            raise ValueError(f"{key}: {candidate_name} has dtype {c.dtype}; expected numbers")
        valid = _valid_mask(key, r.shape, mask)
        f_stats = f_ratio = f_scale = rms_ratio = None
        if key in flo and key in flo_ref:
            f, fr = np.asarray(flo[key]), np.asarray(flo_ref[key])
            if f.shape != r.shape or fr.shape != r.shape:
                raise ValueError(f"{key}: {floor_name} outputs have shapes {f.shape} and {fr.shape}, "
                                 f"{reference_name} has shape {r.shape}")
            f_stats, _, biggest = _summaries(fr, f, 0.0, 0.0, valid, False, _workspace())
            if f_stats is not None:
                f_scale = max(f_stats.max_abs_error, u * biggest)
        if floor_ratio is not None:
            k_atol, k_rtol = (floor_ratio * f_scale if f_scale is not None else 0.0), 0.0
        else:
            k_atol = _tolerance_for(atol_spec, key, DEFAULT_ATOL)
            k_rtol = _tolerance_for(rtol_spec, key, DEFAULT_RTOL)
        v_stats, p_stats, _ = _summaries(r, c, k_atol, k_rtol, valid, True, _workspace())
        if v_stats is None:  # no valid element (a fully padded batch): nothing can fail there
            v_stats = Stats(0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, 0, True)
        # A NaN or inf in the candidate fails the output wherever it is, padded positions included.
        passed = (v_stats.passed and (not check_padded or p_stats is None or p_stats.passed)
                  and (p_stats is None or p_stats.nonfinite == 0))
        if f_stats is not None and f_scale is not None:
            a, b = v_stats.max_abs_error, f_scale
            f_ratio = (a / b) if b > 0 else (1.0 if a == 0 else (math.nan if math.isnan(a) else math.inf))
            a, b = v_stats.rms_error, f_stats.rms_error
            rms_ratio = (a / b) if b > 0 else (1.0 if a == 0 else (math.nan if math.isnan(a) else math.inf))
        return Entry(key, stage, layer, tuple(r.shape), _axes(key, r.ndim), v_stats, p_stats, passed,
                             f_stats, f_ratio, f_scale, rms_ratio, k_atol, k_rtol)

    # Outputs are independent, and NumPy releases the GIL in the array passes: summarise them on
    # the cores' threads (each entry is computed exactly as in a loop; order is kept).
    workers = min(len(placed), kernels.THREADS)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bert_ref.compare") as pool:
            entries = list(pool.map(entry, placed))
    else:
        entries = [entry(p) for p in placed]
    return Report(tuple(entries), atol_spec, rtol_spec, bool(check_padded), reference_name, candidate_name,
                  floor_name if floor is not None else None, floor_ratio, precision, tuple(notes))


# ----------------------------------------------------------------------------------------------
# Running the oracle


#: The precisions a candidate can be declared in, and our policy that measures each one's floor.
PRECISIONS = {"float16": "float16", "bfloat16": "bfloat16", "tf32": "tf32", "int8": "int8",
              "float32": "float32", "float64": "float64"}

#: K of the floor-ratio mode when none is given: see docs/conformance.md for the measurements.
DEFAULT_FLOOR_RATIO = 4.0


def detect_precision(candidate: Mapping[str, Any]) -> str:
    """The precision a candidate's arrays are stored in: the lowest of their dtypes ("bfloat16",
    "float16", "float32" or "float64"). A float32 file may hold a TF32, int8 or half-precision
    port's upcast outputs: only the user can say so (`precision=`)."""
    order = ["bfloat16", "float16", "float32", "float64"]
    found = set()
    for v in _as_flat(candidate, "candidate").values():
        name = np.asarray(v).dtype.name
        found.add(name if name in order else "float32")
    return min(found, key=order.index) if found else "float32"


def expected_shapes(config: Any, batch: int, seq: int, keys: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The shape each output key has for a [batch, seq] input under `config` (a `BertConfig`)."""
    h, heads, inter = config.hidden_dim, config.num_heads, config.intermediate_dim
    out: dict[str, tuple[int, ...]] = {}
    for key in keys:
        base = key.rsplit("/", 1)[-1].split(".")[0]
        if key in TRACE_POOLER:
            out[key] = (batch, h)
        elif base in _ATTENTION_NAMES:
            out[key] = (batch, heads, seq, seq)
        elif base in ("feedforward_intermediate", "feedforward_activation"):
            out[key] = (batch, seq, inter)
        else:
            out[key] = (batch, seq, h)
    return out


def check_candidate(candidate: Mapping[str, Any], config: Any, inputs: Mapping[str, Any],
                    source: str = "candidate") -> None:
    """Check a candidate's keys and shapes against the model and the inputs, before running anything.

    Raises:
        ValueError: an unknown key, a layer the model does not have, or a shape that is not the
            inputs' padded batch (the message gives the shape expected and why).
    """
    layers = config.num_layers
    flat = _as_flat(candidate, "candidate")
    for key in flat:
        _placement(key)
        kind, _, idx = key.partition(".")
        if kind in ("hidden_states", "attention_probs"):
            top = layers if kind == "hidden_states" else layers - 1
            if int(idx) > top:
                raise ValueError(f"{source}: key {key!r} but the model has {layers} layers ({kind}.0 .. {kind}.{top})")
        elif key.startswith("transformer_layer_") and int(key[len("transformer_layer_"):].split("/")[0]) >= layers:
            raise ValueError(f"{source}: key {key!r} but the model has {layers} layers "
                             f"(transformer_layer_0 .. transformer_layer_{layers - 1})")
    b, s = np.shape(inputs["token_ids"])
    for key, shape in expected_shapes(config, b, s, flat).items():
        got = tuple(np.shape(flat[key]))
        if got != shape:
            raise ValueError(
                f"{source}: {key} has shape {got}, expected {shape} for inputs of {b} x {s}: the candidate must be "
                f"run on the same padded batch as the inputs file (batch {b}, sequence length {s}, padding included)")


def oracle_outputs(model: Any, inputs: Mapping[str, Any], keys: Any = None, *, dtype: Any = None,
                   cache: bool = False) -> dict[str, np.ndarray]:
    """Our outputs for `inputs` under policy `dtype` (default: the model's), flattened to output keys.

    `model` is a `BertBackbone`. `keys` (an iterable of output keys) limits what is computed and
    returned: hidden states, attention probabilities and the trace are only computed when asked
    for; None returns `sequence_output` and `pooled_output`. With `cache=True` the run is read
    from / written to the on-disk cache (`bert_ref.oracle_cache`)."""
    keys = None if keys is None else list(keys)
    policy = model.dtype_policy if dtype is None else get_policy(dtype)
    entry = None
    if cache:
        from . import oracle_cache

        entry = oracle_cache.entry_key(model, inputs, policy.name, keys)
        hit = oracle_cache.load(entry)
        if hit is not None and (keys is None or all(k in hit for k in keys)):
            return hit
    want_hidden = keys is not None and any(k.startswith("hidden_states.") for k in keys)
    want_att = keys is not None and any(k.startswith("attention_probs.") for k in keys)
    want_trace = keys is not None and any("/" in k for k in keys)
    options: dict[str, Any] = dict(output_hidden_states=want_hidden, output_attentions=want_att,
                                   trace=True if want_trace else None)
    if policy == model.dtype_policy:  # the model's own cast weights, prepared once
        out = model(inputs, **options)
    else:
        out = forward(model.weights, model.config, inputs, dtype=policy, **options)
    flat = flatten_outputs(out)
    if keys is not None:
        flat = {k: flat[k] for k in keys if k in flat}
    if entry is not None:
        oracle_cache.store(entry, flat)
    return flat


def compare_to_truth(
    model: Any,
    inputs: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    precision: str | None = None,
    floor_ratio: float | None = None,
    atol: float | Mapping[str, float] | str | None = None,
    rtol: float | Mapping[str, float] | str | None = None,
    check_padded: bool = False,
    candidate_name: str = "candidate",
    notes: Sequence[str] = (),
    cache: bool = False,
) -> Report:
    """Compare `candidate` with the float64 truth, next to the floor of its precision.

    The truth is our float64 policy on `model`'s weights; the floor is our policy of the
    candidate's precision on the same weights (float16, bfloat16, tf32, int8, float32 — see
    `bert_ref.precision`) against the truth: the error that precision has by nature. For float64,
    whose run is the truth itself, the floor is the float32 floor times 2^-29 (the ratio of the
    two unit roundoffs).

    Args:
        precision: the candidate's precision (`PRECISIONS`); None: `detect_precision` from its dtypes.
        floor_ratio: K of the floor-ratio mode: an output passes when its max abs error is at most
            K times its floor (`Entry.floor_scale`). The default mode is floor-ratio with
            `DEFAULT_FLOOR_RATIO` when `precision` is given or the candidate is stored in float16 /
            bfloat16, unless `atol` or `rtol` is given; otherwise absolute tolerances (defaults
            `DEFAULT_ATOL`, `DEFAULT_RTOL`).
        atol, rtol: absolute-mode tolerances, numbers or per kind (see `parse_tolerance`).
        check_padded: also fail on padded positions (`padding_mask` is taken from `inputs`).
        cache: read and write our runs through the on-disk cache (`bert_ref.oracle_cache`).

    Returns:
        A `Report` against the "float64 truth", with each `Entry.floor_ratio` filled in.
    """
    flat = _as_flat(candidate, "candidate")
    for k in flat:
        _placement(k)  # unknown keys are an error before any work is done
    given = precision is not None
    if precision is None:
        precision = detect_precision(flat)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if floor_ratio is None and atol is None and rtol is None and (given or precision in ("float16", "bfloat16")):
        floor_ratio = DEFAULT_FLOOR_RATIO
    truth = oracle_outputs(model, inputs, flat, dtype="float64", cache=cache)
    floor_name = f"our {precision} vs float64 truth"
    if precision == "float64":
        # Our float64 run is the truth itself: its error cannot be measured against it. The floor is
        # modelled as the float32 floor scaled by the ratio of the unit roundoffs (2^-53 / 2^-24):
        # the same algorithm's rounding error scales with the unit roundoff.
        f32 = oracle_outputs(model, inputs, flat, dtype="float32", cache=cache)
        scale = UNIT_ROUNDOFF["float64"] / UNIT_ROUNDOFF["float32"]
        floor = {k: truth[k] + (f32[k].astype(np.float64) - truth[k]) * scale for k in f32}
        floor_name = "our float32 vs float64 truth x 2^-29"
    else:
        floor = oracle_outputs(model, inputs, flat, dtype=PRECISIONS[precision], cache=cache)
    return compare(truth, flat, atol=DEFAULT_ATOL if atol is None else atol,
                   rtol=DEFAULT_RTOL if rtol is None else rtol, padding_mask=inputs.get("padding_mask"),
                   check_padded=check_padded, floor=floor,
                   floor_ratio=floor_ratio, precision=precision, reference_name="float64 truth",
                   candidate_name=candidate_name, floor_name=floor_name, notes=notes)
