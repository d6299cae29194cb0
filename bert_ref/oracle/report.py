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
