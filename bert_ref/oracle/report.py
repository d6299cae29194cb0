"""The report of a comparison: per-output statistics (`Stats`), entries (`Entry`) and the `Report`
with its table, summary and JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from bert_ref.model.precision import short_name
from bert_ref.oracle.keys import parse_key


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


#: What each statistic of the verdict measures (`bert_ref.oracle.verdict`), as the report names it.
STATISTIC_LABELS = {
    "max_abs": "max abs error",
    "rms": "RMS error",
    "mean_cos": "mean cosine deficit",
    "worst_cos": "worst cosine deficit",
    "channel": "per-channel mean error",
    "recipe": "distance from our run of the int8 recipe",
}
#: Their column headings in the table (each the candidate's value over the ensemble's largest).
STATISTIC_COLUMNS = {"max_abs": "x floor", "rms": "x rms", "mean_cos": "x cos", "worst_cos": "x cos max",
                     "channel": "x chan", "recipe": "x recipe"}


@dataclasses.dataclass(frozen=True)
class Check:
    """One statistic of one output against the ensemble (`bert_ref.oracle.verdict`).

    `value` is the candidate's, `members` each ensemble member's (the floor first), `reference`
    the largest of them (for max abs: at least one rounding of the output's largest value), and the
    check passes when `value <= limit * reference` (`ratio <= limit`). `spread` is the smallest
    member over the reference: how far apart the legitimate variants themselves are."""

    statistic: str
    value: float
    members: tuple[float, ...]
    reference: float
    limit: float

    @property
    def ratio(self) -> float:
        return _over(self.value, self.reference)

    @property
    def passed(self) -> bool:
        return bool(self.ratio <= self.limit)  # NaN fails

    @property
    def spread(self) -> float:
        return min(self.members) / self.reference if self.members and self.reference > 0 else 1.0

    @property
    def label(self) -> str:
        return STATISTIC_LABELS.get(self.statistic, self.statistic)

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "value": self.value, "members": list(self.members),
                "reference": self.reference, "ratio": self.ratio, "limit": self.limit, "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class Power:
    """The detection power of an output's verdict: the smallest systematic deviation, relative to the
    output's RMS value over valid positions, that would fail it — `shift` for a per-channel offset
    that is the same at every position, `scatter` for one that varies from element to element (a
    changed operation) — each added to errors like our floor's (`bert_ref.oracle.verdict.power`)."""

    shift: float
    scatter: float

    def to_dict(self) -> dict[str, Any]:
        return {"shift": self.shift, "scatter": self.scatter}


def _over(a: float, b: float) -> float:
    """a / b, with 0 / 0 = 1 and x / 0 = inf (NaN stays NaN)."""
    if b > 0:
        return a / b
    if math.isnan(a):
        return math.nan
    return 1.0 if a == 0 else math.inf


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
        padded_floor_scale: the floor at padded positions (in floor-ratio mode): the floor runs'
            largest error there, at least one rounding of the largest padded value; `--check-padded`
            holds padded positions to K times it.
        checks: the verdict's statistics against the ensemble (`Check`; empty without one).
        power: the detection power of those checks (`Power`; None without an ensemble).
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
    padded_floor_scale: float | None = None
    checks: tuple[Check, ...] = ()
    power: Power | None = None

    @property
    def failed_checks(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def check(self, statistic: str) -> Check:
        for c in self.checks:
            if c.statistic == statistic:
                return c
        raise KeyError(f"{self.key}: no check of {statistic!r}; checked: {[c.statistic for c in self.checks]}")

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
            "padded_floor_scale": self.padded_floor_scale, "checks": [c.to_dict() for c in self.checks],
            "power": self.power.to_dict() if self.power is not None else None,
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
        return f"{short_name(self.precision or 'float32')} floor"

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
        return json_safe({
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

    @property
    def ensemble_size(self) -> int:
        """How many runs of ours each statistic was compared with (0: the plain floor ratio)."""
        return max((len(c.members) for e in self.entries for c in e.checks), default=0)

    def _rule(self) -> str:
        if self.ensemble_size:
            limits = {c.statistic: c.limit for e in self.entries for c in e.checks if c.statistic != "max_abs"}
            ks = ", ".join(f"{STATISTIC_LABELS[s]} {k:g}" for s, k in limits.items())
            return (f"max abs error <= {self.floor_ratio_limit:g} x the {self.floor_label}, the largest max abs "
                    f"error of our {self.ensemble_size} {self.precision} runs vs float64 truth, and each other "
                    f"statistic <= K x the largest of theirs: {ks}")
        if self.floor_ratio_limit is not None:
            return (f"max abs error <= {self.floor_ratio_limit:g} x the {self.floor_label}, "
                    f"the max abs error of {self.floor_name}")
        return (f"|candidate - reference| <= atol + rtol*|reference|, atol={_spec(self.atol)}, "
                f"rtol={_spec(self.rtol)}")

    def _check_sentence(self, first: Entry) -> str:
        """Which statistics fail the first failing output, by how much, and how unusual that is."""
        failed = first.failed_checks
        worst = max(failed, key=lambda c: c.ratio / c.limit if c.limit > 0 else math.inf)
        others = [c for c in failed if c is not worst]
        n = len(worst.members)
        head = f"First over tolerance: {first.key} ({_stage_phrase(first)}): "
        if math.isnan(worst.value):
            return head + f"its {worst.label} is nan (a non-finite candidate value)."
        text = (head + f"its {worst.label} {_num(worst.value, '.3e')} is {_ratio(worst.ratio)} the largest of our "
                f"{n} {self.precision} runs ({_num(worst.reference, '.3e')}")
        if n > 1:
            text += f"; they span {worst.spread:.2f}-1.00 of it"
        text += f"); the limit is {worst.limit:g}x."
        if others:
            text += " Also over: " + ", ".join(f"{c.label} {_ratio(c.ratio)} (limit {c.limit:g}x)"
                                               for c in others) + "."
        return text

    def _first_sentence(self, first: Entry) -> str:
        """One sentence about one element: the worst element of the first failing output (or, when
        only the ensemble's statistics fail it, about those)."""
        if first.valid.passed and (first.padded is None or first.padded.passed or not self.check_padded) \
                and first.failed_checks:
            return self._check_sentence(first)
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
        if self.floor_ratio_limit is not None and stats is not first.valid and first.padded_floor_scale is not None:
            times = _ratio(stats.tolerance_ratio * self.floor_ratio_limit)
            return (head + values + f" (the padded positions' largest) = {times} the {self.floor_label} at padded "
                    f"positions {_num(first.padded_floor_scale, '.3e')}; the limit is {self.floor_ratio_limit:g}x.")
        if self.floor_ratio_limit is not None:
            also = [c for c in first.failed_checks if c.statistic != "max_abs"]
            tail = (" Also over: " + ", ".join(f"{c.label} {_ratio(c.ratio)} (limit {c.limit:g}x)" for c in also)
                    + "." if also else "")
            return (head + values + f" (the output's largest) = {_ratio(first.floor_ratio)} the "
                    f"{self.floor_label} {_num(first.floor_scale, '.3e')}; the limit is {self.floor_ratio_limit:g}x."
                    + tail)
        return (head + values + f" = {stats.tolerance_ratio:.3g}x its tolerance "
                f"{_num(stats.worst_tolerance, '.3e')} (atol {first.atol:g} + rtol {first.rtol:g} * |reference|).")

    def summary(self) -> str:
        """One or two lines: the verdict, and one element where the divergence starts."""
        scope = "valid and padded positions" if self.check_padded else "valid positions"
        if self.passed:
            line = f"PASS: all {len(self.entries)} outputs within tolerance ({self._rule()}) at {scope}."
            blind = _power_sentence(self.entries)
            return line + ("\n" + blind if blind else "")
        first = self.first_failure
        assert first is not None
        return (f"FAIL: {len(self.failures)} of {len(self.entries)} outputs over tolerance ({self._rule()}) "
                f"at {scope}.\n" + self._first_sentence(first))

    def format_table(self) -> str:
        """A plain-text table, one row per output in computation order, then `summary()`."""
        has_floor = any(e.floor is not None for e in self.entries)
        has_padded = any(e.padded is not None for e in self.entries)
        checked = [s for s in STATISTIC_COLUMNS if s != "max_abs"
                   and any(c.statistic == s for e in self.entries for c in e.checks)]
        head = ["key", "stage", "max abs", "rms"] + ([] if checked else ["rel>cut"]) + ["min cos",
                                                                                      "worst element (valid)"]
        where_col = len(head) - 1
        if has_padded:
            head.append("padded max abs")
        if has_floor:
            head += [self.floor_label, "x floor"]
        head += [STATISTIC_COLUMNS[s] for s in checked]
        head.append("result")
        rows = [head]
        for e in self.entries:
            v = e.valid
            row = [e.key, e.stage, _num(v.max_abs_error), _num(v.rms_error)] + (
                [] if checked else [_num(v.rel_error_over_cut)]) + [_cos(v.min_cosine), _compact_where(e)]
            if has_padded:
                row.append(_num(e.padded.max_abs_error) if e.padded is not None else "-")
            if has_floor:
                row += [_num(e.floor_scale) if e.floor is not None else "-", _ratio(e.floor_ratio)]
            by = {c.statistic: c for c in e.checks}
            row += [_ratio(by[s].ratio) if s in by else "-" for s in checked]
            row.append("ok" if e.passed else "FAIL")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 or i == where_col else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        title = f"{self.candidate_name} vs {self.reference_name}"
        if has_floor:
            title += f"; {self.floor_label} = {self.floor_name}"
        if self.ensemble_size > 1:
            title += (f"; each x column: the candidate's statistic over the largest of our {self.ensemble_size} "
                      f"{self.precision} runs")
        notes = "".join(f"note: {n}\n" for n in self.notes)
        return notes + title + "\n" + "\n".join(lines) + "\n" + self.summary()

    def __str__(self) -> str:
        return self.format_table()


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
        return e.stage + (" output" if parse_key(e.key).name == "hidden_states" else "")
    return {"output": "final output", "pooler": "pooler"}[e.stage]


def json_safe(obj: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no spelling for them)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _power_sentence(entries: Sequence[Entry]) -> str | None:
    """The blind spot of a verdict with an ensemble: the smallest systematic deviations it catches."""
    shifts = [e.power.shift for e in entries if e.power is not None and math.isfinite(e.power.shift)]
    scatters = [e.power.scatter for e in entries if e.power is not None and math.isfinite(e.power.scatter)]
    if not shifts and not scatters:
        return None

    def span(v: list[float]) -> str:
        lo, hi = _pct(min(v)), _pct(max(v))
        return lo if lo == hi else f"{lo}-{hi}"

    parts = ([f"a per-channel shift below {span(shifts)}"] if shifts else []) + (
        [f"an element-wise change below {span(scatters)}"] if scatters else [])
    return ("Detection power: a systematic deviation smaller than this can pass unseen (relative to each "
            f"output's RMS value; per output in the JSON report): {' or '.join(parts)}.")


def _pct(x: float) -> str:
    p = 100.0 * x
    return f"{p:.2g}%" if p < 10 else f"{p:.0f}%"

