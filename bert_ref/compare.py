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
positions pass. Non-finite values pass only where both sides hold the same one.

**Valid and padded positions.** With `padding_mask` ([B, S], 1 = real token), the elements of
padded positions are reported separately and do not fail the check unless `check_padded=True`:
for [B, S, ...] arrays the position axis is 1; for attention probabilities and scores
[B, heads, S, S] it is the *query* axis (a valid query's weights on padded keys are valid
elements: they must be 0, and a candidate that attends to padding fails); `pooled_output` [B, H]
is valid when position 0 of its row is.

**Per output**, for valid and padded elements separately: the max absolute error, the max relative
error `|c - r| / |r|` (0/0 = 0, x/0 = inf), the max error in float32 ulps `|c - r| /
spacing(float32(|r|))` (large near zero by nature: it is a measure for values of ordinary size,
which is why the check uses atol), the RMS error, and the worst element — the one furthest over
its tolerance `atol + rtol * |r|` — with its index, named by axis (batch, position, channel;
or batch, head, query, key) and both values.

**Order.** Entries are ordered as the network computes them: embeddings (`hidden_states.0`), then
each `transformer_layer_{i}` (its trace points, `attention_probs.{i}`, then `hidden_states.{i+1}`,
its output), then `sequence_output` and `pooled_output`. So `report.first_failure` is where the
divergence starts.

**The float32 floor.** `floor=` takes a third set of outputs of the same inputs (e.g. our float32
run when the reference is our float64 run); each entry then also reports the floor's own max
error against the reference and `floor_ratio` = candidate's max abs error / floor's — "your error
is 1.3x the float32 floor". `compare_to_truth` does all of this for a model and inputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER, forward
from .files import flatten_outputs
from .precision import get_policy

__all__ = ["compare", "compare_to_truth", "oracle_outputs", "Report", "Entry", "Stats", "DEFAULT_ATOL", "DEFAULT_RTOL"]

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
    or None when the set is empty."""

    count: int
    max_abs_error: float
    max_rel_error: float
    max_ulp_error: float
    rms_error: float
    tolerance_ratio: float
    worst_index: tuple[int, ...] | None
    worst_reference: float | None
    worst_candidate: float | None
    mismatched_nonfinite: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["worst_index"] = list(self.worst_index) if self.worst_index is not None else None
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
        floor_ratio: `valid.max_abs_error / floor.max_abs_error` (None without a floor; inf
            when the floor is exact and the candidate is not; 1.0 when both are exact).
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

    def where(self, index: Sequence[int] | None = None) -> str:
        """An index spelled with axis names: "batch 0, position 5, channel 17"."""
        index = self.valid.worst_index if index is None else index
        if index is None:
            return "-"
        return ", ".join(f"{a} {i}" for a, i in zip(self.axes, index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "stage": self.stage, "layer": self.layer, "shape": list(self.shape),
            "axes": list(self.axes), "passed": self.passed, "valid": self.valid.to_dict(),
            "padded": self.padded.to_dict() if self.padded is not None else None,
            "floor": self.floor.to_dict() if self.floor is not None else None,
            "floor_ratio": self.floor_ratio,
        }


@dataclasses.dataclass(frozen=True)
class Report:
    """Entries in the order the network computes them, and the verdict.

    `report["hidden_states.2"]` is that key's `Entry`; iterating yields the entries."""

    entries: tuple[Entry, ...]
    atol: float
    rtol: float
    check_padded: bool
    reference_name: str = "reference"
    candidate_name: str = "candidate"
    floor_name: str | None = None

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
            "atol": self.atol, "rtol": self.rtol, "check_padded": self.check_padded,
            "reference": self.reference_name, "candidate": self.candidate_name, "floor": self.floor_name,
            "compared": len(self.entries), "failed": len(self.failures),
            "first_failure": None if first is None else {
                "key": first.key, "stage": first.stage, "layer": first.layer,
                "index": list(first.valid.worst_index) if first.valid.worst_index is not None else None,
                "where": first.where(),
            },
            "entries": [e.to_dict() for e in self.entries],
        })

    def summary(self) -> str:
        """One or two lines: the verdict, and where the divergence starts."""
        rule = f"|candidate - reference| <= atol + rtol*|reference|, atol={self.atol:g}, rtol={self.rtol:g}"
        scope = "valid and padded positions" if self.check_padded else "valid positions"
        if self.passed:
            return f"PASS: all {len(self.entries)} outputs within tolerance ({rule}) at {scope}."
        first = self.first_failure
        stats = first.valid if not first.valid.passed else first.padded
        which = "" if stats is first.valid else "padded "
        at = first.where(stats.worst_index)
        return (
            f"FAIL: {len(self.failures)} of {len(self.entries)} outputs over tolerance ({rule}) at {scope}.\n"
            f"First over tolerance: {first.key} ({_stage_phrase(first)}): max abs error "
            f"{stats.max_abs_error:.3e} ({stats.tolerance_ratio:.3g}x its tolerance) at {which}{at} "
            f"(reference {_num(stats.worst_reference, '.7g')}, candidate {_num(stats.worst_candidate, '.7g')})."
        )

    def format_table(self) -> str:
        """A plain-text table, one row per output in computation order, then `summary()`."""
        has_floor = any(e.floor is not None for e in self.entries)
        has_padded = any(e.padded is not None for e in self.entries)
        head = ["key", "stage", "max abs", "max rel", "max ulp", "worst element (valid)"]
        if has_padded:
            head.append("padded max abs")
        if has_floor:
            head += ["f32 floor", "x floor"]
        head.append("result")
        rows = [head]
        for e in self.entries:
            v = e.valid
            row = [e.key, e.stage, _num(v.max_abs_error), _num(v.max_rel_error), _num(v.max_ulp_error, ".3g"),
                   _compact_where(e)]
            if has_padded:
                row.append(_num(e.padded.max_abs_error) if e.padded is not None else "-")
            if has_floor:
                row += [_num(e.floor.max_abs_error) if e.floor is not None else "-",
                        _ratio(e.floor_ratio)]
            row.append("ok" if e.passed else "FAIL")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 or i == 5 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        title = f"{self.candidate_name} vs {self.reference_name}"
        if has_floor:
            title += f"; f32 floor = {self.floor_name}"
        return title + "\n" + "\n".join(lines) + "\n" + self.summary()

    def __str__(self) -> str:
        return self.format_table()


def _num(x: float | None, fmt: str = ".2e") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
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
    if idx is None or e.valid.tolerance_ratio == 0:
        return "-"
    return "(" + ", ".join(str(i) for i in idx) + ")"


def _stage_phrase(e: Entry) -> str:
    if e.stage == "embeddings":
        return "embeddings" + (" output" if e.key == "hidden_states.0" else "")
    if e.stage.startswith("transformer_layer_"):
        return e.stage + (" output" if e.key.startswith("hidden_states.") else "")
    return {"output": "final output", "pooler": "pooler"}[e.stage]


def _json_safe(obj: Any) -> Any:
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
    err: np.ndarray  # |c - r|; 0 for equal non-finite pairs (both NaN, the same infinity), else inf
    ratio: np.ndarray  # err / (atol + rtol * |r|): <= 1 passes
    rel: np.ndarray  # err / |r| (0/0 = 0, x/0 = inf)
    ulp: np.ndarray  # err / spacing(float32(|r|))
    mismatched: np.ndarray  # bool: a non-finite value the other side does not hold


def _elementwise(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> _Elementwise:
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(c - r)
    finite = np.isfinite(r) & np.isfinite(c)
    if finite.all():
        mismatched = np.zeros(err.shape, bool)
    else:
        same = (np.isnan(r) & np.isnan(c)) | (~np.isnan(r) & (r == c))
        err = np.where(finite, err, np.where(same, 0.0, np.inf))
        mismatched = ~finite & ~same
    a = np.abs(r)
    tol = atol + rtol * a
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1.0), np.where(err > 0, np.inf, 0.0))
        rel = np.where(a > 0, err / np.where(a > 0, a, 1.0), np.where(err > 0, np.inf, 0.0))
        spacing = np.spacing(np.minimum(a, np.finfo(np.float32).max).astype(np.float32)).astype(np.float64)
        ulp = np.where(err > 0, err / spacing, 0.0)
    return _Elementwise(ref, cand, err, ratio, rel, ulp, mismatched)


def _stats(e: _Elementwise, select: np.ndarray | None) -> Stats | None:
    """The `Stats` of the elements where `select` (broadcast to the output's shape) is True; None
    when it selects nothing. `select=None` selects every element."""
    err, ratio = e.err, e.ratio
    if select is None:
        select = np.ones(err.shape, bool)
    else:
        select = np.broadcast_to(select, err.shape)
        if not select.any():
            return None
    sel_err, sel_ratio = err[select], ratio[select]
    # Worst element: furthest over tolerance; among infinite ratios, the largest error.
    key = np.where(select, ratio, -1.0)
    top = key.max()
    if math.isinf(top):
        flat = int(np.argmax(np.where(select & np.isinf(ratio), err, -1.0)))
    else:
        flat = int(np.argmax(key))
    index = tuple(int(i) for i in np.unravel_index(flat, err.shape))
    with np.errstate(over="ignore", invalid="ignore"):
        rms = float(np.sqrt(np.mean(np.square(sel_err)))) if sel_err.size else 0.0
    return Stats(
        count=int(select.sum()),
        max_abs_error=float(sel_err.max()),
        max_rel_error=float(e.rel[select].max()),
        max_ulp_error=float(e.ulp[select].max()),
        rms_error=rms,
        tolerance_ratio=float(sel_ratio.max()),
        worst_index=index,
        worst_reference=float(e.ref[index]),
        worst_candidate=float(e.cand[index]),
        mismatched_nonfinite=int(e.mismatched[select].sum()),
        passed=bool(sel_ratio.max() <= 1.0),
    )


def _as_flat(outputs: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"{what} must be a mapping of output keys to arrays (or forward's result), got {type(outputs).__name__}")
    return flatten_outputs(outputs)


def compare(
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    padding_mask: Any = None,
    check_padded: bool = False,
    floor: Mapping[str, Any] | None = None,
    floor_reference: Mapping[str, Any] | None = None,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    floor_name: str = "floor",
) -> Report:
    """Compare every output of `candidate` with `reference`'s; see the module docstring.

    Args:
        reference, candidate: mappings of output keys to arrays, or `forward`'s results.
        atol, rtol: an element passes when `|c - r| <= atol + rtol * |r|`.
        padding_mask: [B, S] (1/True = real token). None: every position is valid.
        check_padded: also fail on padded positions.
        floor: optional third outputs compared with `reference` at valid positions, reported next
            to the candidate's error (see `Entry.floor_ratio`).
        floor_reference: compare `floor` with these instead of `reference` (e.g. reference = our
            float32, floor = our float32, floor_reference = our float64: the candidate's distance
            from our float32 is then shown next to float32's own distance from the truth).
        reference_name, candidate_name, floor_name: labels for the printed report.

    Returns:
        A `Report`, entries in computation order.

    Raises:
        ValueError: a key of `candidate` unknown or absent from `reference`, mismatched shapes,
            negative tolerances, or a `padding_mask` that does not fit.
    """
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
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
    entries = []
    for (_, stage, layer), key in placed:
        r, c = np.asarray(ref[key]), np.asarray(cand[key])
        if r.shape != c.shape:
            raise ValueError(f"{key}: {candidate_name} has shape {c.shape}, {reference_name} has shape {r.shape}")
        if c.dtype.kind not in "fiub" and c.dtype.name != "bfloat16":
            raise ValueError(f"{key}: {candidate_name} has dtype {c.dtype}; expected numbers")
        valid = _valid_mask(key, r.shape, mask)
        elementwise = _elementwise(r, c, atol, rtol)
        v_stats = _stats(elementwise, valid)
        p_stats = None if valid is None else _stats(elementwise, ~valid)
        if v_stats is None:  # no valid element (a fully padded batch): nothing can fail there
            v_stats = Stats(0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, 0, True)
        passed = v_stats.passed and (not check_padded or p_stats is None or p_stats.passed)
        f_stats = f_ratio = None
        if key in flo and key in flo_ref:
            f, fr = np.asarray(flo[key]), np.asarray(flo_ref[key])
            if f.shape != r.shape or fr.shape != r.shape:
                raise ValueError(f"{key}: {floor_name} outputs have shapes {f.shape} and {fr.shape}, "
                                 f"{reference_name} has shape {r.shape}")
            f_stats = _stats(_elementwise(fr, f, atol, rtol), valid)
            if f_stats is not None:
                a, b = v_stats.max_abs_error, f_stats.max_abs_error
                f_ratio = (a / b) if b > 0 else (1.0 if a == 0 else math.inf)
        entries.append(Entry(key, stage, layer, tuple(r.shape), _axes(key, r.ndim), v_stats, p_stats, passed,
                             f_stats, f_ratio))
    return Report(tuple(entries), float(atol), float(rtol), bool(check_padded), reference_name, candidate_name,
                  floor_name if floor is not None else None)


# ----------------------------------------------------------------------------------------------
# Running the oracle


def oracle_outputs(model: Any, inputs: Mapping[str, Any], keys: Any = None, *, dtype: Any = None) -> dict[str, np.ndarray]:
    """Our outputs for `inputs` under policy `dtype` (default: the model's), flattened to output keys.

    `model` is a `BertBackbone`. `keys` (an iterable of output keys) limits what is computed and
    returned: hidden states, attention probabilities and the trace are only computed when asked
    for; None returns `sequence_output` and `pooled_output`."""
    keys = None if keys is None else list(keys)
    want_hidden = keys is not None and any(k.startswith("hidden_states.") for k in keys)
    want_att = keys is not None and any(k.startswith("attention_probs.") for k in keys)
    want_trace = keys is not None and any("/" in k for k in keys)
    policy = model.dtype_policy if dtype is None else get_policy(dtype)
    options = dict(output_hidden_states=want_hidden, output_attentions=want_att, trace=True if want_trace else None)
    if policy == model.dtype_policy:  # the model's own cast weights, prepared once
        out = model(inputs, **options)
    else:
        out = forward(model.weights, model.config, inputs, dtype=policy, **options)
    flat = flatten_outputs(out)
    if keys is None:
        return flat
    return {k: flat[k] for k in keys if k in flat}


def compare_to_truth(
    model: Any,
    inputs: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    check_padded: bool = False,
    candidate_name: str = "candidate",
) -> Report:
    """Compare `candidate` with the float64 truth, next to the float32 floor.

    The truth is our float64 policy on `model`'s weights; the floor is our float32 policy on the
    same weights — the error float32 evaluation has by nature. Each entry's `floor_ratio` says how
    many times the floor the candidate's error is. `padding_mask` is taken from `inputs`."""
    flat = _as_flat(candidate, "candidate")
    for k in flat:
        _placement(k)  # unknown keys are an error before any work is done
    truth = oracle_outputs(model, inputs, flat, dtype="float64")
    floor = oracle_outputs(model, inputs, flat, dtype="float32")
    return compare(truth, flat, atol=atol, rtol=rtol, padding_mask=inputs.get("padding_mask"),
                   check_padded=check_padded, floor=floor, reference_name="float64 truth",
                   candidate_name=candidate_name, floor_name="our float32 vs float64 truth")
