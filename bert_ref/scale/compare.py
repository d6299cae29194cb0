"""`compare --dataset`: a candidate's outputs on a whole dataset, judged as the single-batch compare
judges one batch.

Each shard is a task. The shard's records are taken batch by batch, in the length-sorted batches of
`bert-ref run` (so a reference computed on the fly has the bits of a `run` shard), and each batch
goes through the oracle's own verdict: `bert_ref.oracle.run.truth_report` against the float64
truth next to the floor of the candidate's precision, or `bert_ref.oracle.compare.compare` with
tolerances. The per-batch entries are merged into one entry per output over the dataset
(`merge_entry`; the one place that knows how each statistic combines), and the verdict is taken
there once, over the whole dataset: in the floor-ratio mode an output passes when its largest
error is at most K times the floor's largest error over the same records (`dataset_entry`).

Where the reference and the floor come from:

* the truth (`--truth`, `--precision`, `--floor-ratio`, or a half-precision candidate): our
  float64 run, computed on the fly or read from `--reference DIR` (a `bert-ref run --dtype
  float64` directory); the floor: our run at the candidate's precision and the other members of
  its ensemble (`bert_ref.oracle.ensemble`), computed on the fly or read from `--floor-from DIR`
  (a `bert-ref run --dtype P --ensemble` directory of the same job; members it lacks are computed,
  with a note; for float64, a float32 run, scaled as `bert_ref.oracle.run.float64_floor` says).
  With both directories and the whole ensemble on disk no model runs at all. int8 detects its
  recipe as the single compare does (`_detect_int8`) unless `--int8-scheme` names it;
* otherwise our run in `--dtype` (default float32), on the fly or from `--reference`, with
  `--atol` / `--rtol` (numbers, or per kind of output: `1e-5,hidden_states=1e-4`).

Every shard read from a directory is checked against its manifest's sha256 and must hold its own
records. The candidate's records may be a subset (`--records A:B`, or a candidate holding only some
records): only those are compared, and the report says how many. A candidate that carries its
input ids has them checked against the packed ids, record by record; one whose rows resemble other
records' outputs more than their own is reported as misaligned.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.oracle.keys import parse_key
from bert_ref.oracle.report import Entry, Report, Stats, json_safe
from bert_ref.scale.candidate import CandidateIndex, index_candidate, is_sequence_key, key_order, read_records
from bert_ref.scale.dataset import DatasetError, length_batches, pad_batch
from bert_ref.scale.engine import Engine, Progress
from bert_ref.scale.options import OUTPUT_CHOICES, dataset_options
from bert_ref.scale.run import job_for, prepare_job, read_manifest
from bert_ref.scale.shards import INPUT_KEYS, MANIFEST, ScaleJob, read_shard, shard_name, verify_shard

#: Fields of a run directory's job that must agree with the compare's for its shards to be used.
SAME_JOB = ("weights_sha256", "tokenizer_sha256", "dataset_sha256", "num_records", "shard_size", "batch_tokens",
            "sequence_length", "truncate")
#: Records of one shard whose alignment is checked (the rows' own reference vs the others').
MIN_ALIGNMENT_RECORDS = 4


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every shard task needs besides its records (small, picklable)."""

    keys: tuple[str, ...]
    truth: bool  # against the float64 truth, next to a floor
    precision: str | None
    floor_ratio: float | None
    atol: Any
    rtol: Any
    worst: int
    first: int  # --records: the range compared
    last: int
    reference: str | None  # run directories
    floor_from: str | None
    floor_policy: str | None  # the policy of --floor-from's run
    model: bool  # does a task run the model (a reference or floor on the fly)?
    candidate_name: str
    int8_scheme: str | None = None  # the int8 recipe of the ensemble (bert_ref.oracle.int8)
    recipe: bool = False  # the int8 recipe is known (given, or detected explaining the errors): the recipe check
    on_disk: tuple[str, ...] = ()  # the ensemble members --floor-from holds (its policy's run first)


# ----------------------------------------------------------------------------------------------
# Merging per-batch entries


def _remap(index: tuple[int, ...] | None, records: np.ndarray) -> tuple[int, ...] | None:
    return None if index is None else (int(records[index[0]]), *index[1:])


def _merge_stats(a: Stats | None, b: Stats, by_ratio: bool, records: np.ndarray | None = None) -> Stats:
    """Two sets of statistics as one (with `records`, b's batch rows are renamed to their records).
    Maxima and sums combine exactly; the worst element is the first non-finite one, else the one
    furthest over its tolerance (`by_ratio`) or with the largest error; `rel_error_over_cut` is the
    largest over the batches, each with its own magnitude cut (10% of its RMS value)."""
    if records is not None:
        b = dataclasses.replace(b, worst_index=_remap(b.worst_index, records),
                                min_cosine_index=_remap(b.min_cosine_index, records))
    if a is None:
        return b
    count = a.count + b.count
    with np.errstate(over="ignore", invalid="ignore"):
        rms = math.sqrt((a.rms_error ** 2 * a.count + b.rms_error ** 2 * b.count) / count) if count else 0.0

    def rank(s: Stats) -> tuple[int, float]:
        key = s.tolerance_ratio if by_ratio else (s.worst_error if s.worst_error is not None else s.max_abs_error)
        return (1 if s.nonfinite else 0, -math.inf if key is None or math.isnan(key) else key)

    w = a if rank(a) >= rank(b) else b
    cos = a if a.min_cosine <= b.min_cosine or math.isnan(a.min_cosine) else b

    def top(x: float, y: float) -> float:
        return math.nan if math.isnan(x) or math.isnan(y) else max(x, y)

    return Stats(count=count, max_abs_error=top(a.max_abs_error, b.max_abs_error),
                 max_rel_error=top(a.max_rel_error, b.max_rel_error),
                 max_ulp_error=top(a.max_ulp_error, b.max_ulp_error),
                 rms_error=math.nan if math.isnan(a.rms_error) or math.isnan(b.rms_error) else rms,
                 tolerance_ratio=top(a.tolerance_ratio, b.tolerance_ratio), worst_index=w.worst_index,
                 worst_reference=w.worst_reference, worst_candidate=w.worst_candidate,
                 nonfinite=a.nonfinite + b.nonfinite, passed=a.passed and b.passed, worst_error=w.worst_error,
                 worst_tolerance=w.worst_tolerance, rel_error_over_cut=top(a.rel_error_over_cut, b.rel_error_over_cut),
                 magnitude_cut=max(a.magnitude_cut, b.magnitude_cut), min_cosine=cos.min_cosine,
                 min_cosine_index=cos.min_cosine_index)


@dataclasses.dataclass
class Sums:
    """What the verdict's statistics of one run's error (`bert_ref.oracle.verdict.statistics`) need,
    summed over batches: they are computed once, over every row of the dataset, by `statistics`."""

    rows: int = 0
    elems: int = 0
    sum_sq: float = 0.0
    max_abs: float = 0.0
    sum_cos: float = 0.0
    max_cos: float = 0.0
    channel: np.ndarray | None = None  # [C] the sum over rows of each channel's error
    nonfinite: bool = False
    dist_sq: float = 0.0  # the sum of (x - floor)^2 (the recipe statistic, `distance`)

    def add(self, x: np.ndarray, truth: np.ndarray, floor: np.ndarray | None = None) -> None:
        """Rows [n, C] of a run and of the truth (`verdict.rows`); with `floor`, the floor run's rows,
        for the run's distance from it (`verdict.recipe_distance`)."""
        from bert_ref.oracle import verdict

        if floor is not None:
            d = x - floor  # [n, C]
            self.dist_sq += float(np.sum(d * d)) if d.size else 0.0
        e = x - truth  # [n, C]
        if not np.isfinite(e).all():
            self.nonfinite = True
            return
        if e.size == 0:
            return
        deficit = verdict.cosine_deficits(x, truth)  # [n]
        self.rows += e.shape[0]
        self.elems += e.size
        self.sum_sq += float(np.sum(e * e))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(e))))
        self.sum_cos += float(deficit.sum())
        self.max_cos = max(self.max_cos, float(deficit.max()))
        total = e.sum(axis=0)
        self.channel = total if self.channel is None else self.channel + total

    def merge(self, o: Sums) -> None:
        self.rows, self.elems, self.sum_sq = self.rows + o.rows, self.elems + o.elems, self.sum_sq + o.sum_sq
        self.max_abs, self.sum_cos = max(self.max_abs, o.max_abs), self.sum_cos + o.sum_cos
        self.max_cos, self.nonfinite = max(self.max_cos, o.max_cos), self.nonfinite or o.nonfinite
        self.dist_sq += o.dist_sq
        if o.channel is not None:
            self.channel = o.channel.copy() if self.channel is None else self.channel + o.channel

    def statistics(self) -> dict[str, float]:
        """`verdict.statistics` over every row added."""
        from bert_ref.oracle import verdict

        if self.nonfinite:
            return dict.fromkeys(verdict.STATISTICS, math.nan)
        if self.elems == 0:
            return dict.fromkeys(verdict.STATISTICS, 0.0)
        out = {"max_abs": self.max_abs, "rms": math.sqrt(self.sum_sq / self.elems),
               "mean_cos": self.sum_cos / self.rows, "worst_cos": self.max_cos}
        if self.rows >= verdict.CHANNEL_MIN_ROWS and self.channel is not None:
            mean = self.channel / self.rows  # [C]
            out["channel"] = float(np.sqrt(np.mean(mean * mean)))
        return out

    def distance(self, floor: Sums) -> float:
        """`verdict.recipe_distance` of this run from the floor run, over every row added (both
        added with the floor's rows)."""
        if self.nonfinite or math.isnan(self.dist_sq):
            return math.nan
        dist = math.sqrt(self.dist_sq / self.elems) if self.elems else 0.0
        own = math.sqrt(floor.sum_sq / floor.elems) if floor.elems else 0.0
        return dist / own if own > 0 else (0.0 if dist == 0 else math.inf)


def rel_frontier(mag: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The elements that are the largest relative error over |r| >= t for some cut t, from the
    magnitudes |r| > 0 and relative errors of some elements (1-D float64): by |r| descending, each
    with a larger relative error than every element of larger |r|. The largest relative error over
    |r| >= t is then the last one's with |r| >= t, for any t (`rel_over_cut`); two frontiers merge
    as the frontier of their union. An element is dropped first when a bin of larger |r| (1/16
    octave: the exponent and the first 4 mantissa bits, read from the bits of the positive float64,
    whose order as integers is their order as numbers) holds a larger error: such an element is
    never the largest for any cut."""
    if mag.size == 0:
        return mag, rel
    k = np.ascontiguousarray(mag, np.float64).view(np.int64) >> 48  # [N] bin, monotone in mag
    k -= k.min()
    top = np.full(int(k.max()) + 1, -np.inf)  # [bins] the largest error of each bin
    np.maximum.at(top, k, rel)
    above = np.append(np.maximum.accumulate(top[::-1])[::-1][1:], -np.inf)  # the largest over the bins above
    keep = rel > above[k]
    return _frontier(mag[keep], rel[keep])


def _frontier(mag: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((-rel, -mag))  # |r| descending, then the larger error first
    mag, rel = mag[order], rel[order]
    best = np.maximum.accumulate(rel)
    keep = np.ones(mag.size, bool)
    keep[1:] = rel[1:] > best[:-1]
    return mag[keep], rel[keep]


def rel_over_cut(front: tuple[np.ndarray, np.ndarray], cut: float) -> float:
    """The largest relative error over the elements with |r| >= `cut` (|r| > 0 when the cut is 0),
    as `bert_ref.oracle.stats.error_stats` defines `rel_error_over_cut`; 0 when there is none."""
    mag, rel = front
    sel = np.flatnonzero(mag >= cut if cut > 0 else mag > 0)
    return float(rel[sel[-1]]) if sel.size else 0.0


@dataclasses.dataclass
class Side:
    """What the dataset verdict needs of one side's valid rows beyond the batch `Stats`, summed over
    batches: the reference's size (`rows` x `width` elements, the sum of squares, the sum over rows
    of nonzero norm of 1 / |r_row|^2: the detection power and the magnitude cut) and the frontier of
    the relative errors (`rel_frontier`: `rel_error_over_cut` at the dataset's cut)."""

    rows: int = 0
    width: int = 0
    elems: int = 0
    sq: float = 0.0
    inv: float = 0.0
    inv_rows: int = 0
    front: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, x: np.ndarray, ref: np.ndarray, exact: bool = True) -> None:
        """Rows [n, C] of a run and of the reference (`verdict.rows`); `exact`: finite errors (a
        non-finite one makes `rel_error_over_cut` NaN, kept by the `Stats`)."""
        self.rows += ref.shape[0]
        self.width = ref.shape[1]
        self.elems += ref.size
        if not ref.size:
            return
        self.sq += float(np.sum(ref * ref))
        norms = np.einsum("ij,ij->i", ref, ref)  # [n]
        pos = norms > 0
        self.inv += float(np.sum(1.0 / norms[pos]))
        self.inv_rows += int(np.count_nonzero(pos))
        if exact:
            mag = np.abs(ref).reshape(-1)
            nz = mag > 0
            mag = mag[nz]
            rel = np.abs(x - ref).reshape(-1)[nz] / mag
            front = rel_frontier(mag, rel)
            self.merge_front(front)

    def merge_front(self, front: tuple[np.ndarray, np.ndarray] | None) -> None:
        if front is None:
            return
        if self.front is None:
            self.front = front
        else:
            self.front = _frontier(np.concatenate([self.front[0], front[0]]), np.concatenate([self.front[1], front[1]]))

    def merge(self, o: Side) -> None:
        self.rows, self.elems, self.sq = self.rows + o.rows, self.elems + o.elems, self.sq + o.sq
        self.width = max(self.width, o.width)
        self.inv, self.inv_rows = self.inv + o.inv, self.inv_rows + o.inv_rows
        self.merge_front(o.front)

    @property
    def cut(self) -> float:
        """The magnitude cut of `rel_error_over_cut`: 10% of the reference's RMS value."""
        return 0.1 * math.sqrt(self.sq / self.elems) if self.elems else 0.0

    def exact_stats(self, s: Stats) -> Stats:
        """`s` with `rel_error_over_cut` and `magnitude_cut` over every row added (NaN stays NaN)."""
        if self.front is None or math.isnan(s.rel_error_over_cut):
            return s
        cut = self.cut
        return dataclasses.replace(s, rel_error_over_cut=rel_over_cut(self.front, cut), magnitude_cut=cut)

    def power(self, floor: Mapping[str, float], checks: Sequence[Any]) -> Any:
        """`verdict.power` over every row added."""
        from bert_ref.oracle import verdict

        r = math.sqrt(self.sq / self.elems) if self.elems else 0.0
        inv = self.inv / self.inv_rows if self.inv_rows else 0.0
        return verdict.power_of(self.rows, self.width, r, inv, floor, checks)


@dataclasses.dataclass
class Merged:
    """One output's entries over many batches (see `merge_entry`), and with an ensemble the sums of
    the verdict's statistics of the candidate (`sums["candidate"]`) and of each member (the floor
    first)."""

    key: str
    stage: str
    layer: int | None
    valid: Stats | None = None
    floor: Stats | None = None
    floor_scale: float = 0.0
    atol: float = 0.0
    rtol: float = 0.0
    width: int = 0
    records: int = 0
    sums: dict[str, Sums] = dataclasses.field(default_factory=dict)
    batches: int = 0
    side: Side = dataclasses.field(default_factory=Side)  # the candidate's valid rows (`Side`)
    floor_side: Side = dataclasses.field(default_factory=Side)  # the floor's
    recipe: tuple[str, ...] = ()  # the members whose distance from the floor is the recipe check's reference


def merge_entry(m: Merged, e: Entry, records: np.ndarray, floor_mode: bool) -> Merged:
    """Add one batch's oracle `Entry` (rows = `records`) to `m`."""
    m.batches += 1
    m.valid = _merge_stats(m.valid, e.valid, not floor_mode, records)
    if e.floor is not None:
        m.floor = _merge_stats(m.floor, e.floor, False, records)
        m.floor_scale = max(m.floor_scale, e.floor_scale or 0.0)
    m.atol, m.rtol = e.atol, e.rtol
    m.width = max(m.width, e.shape[1] if len(e.shape) == 3 else 0)
    m.records += e.shape[0]
    return m


def merge_into(into: dict[str, Merged], other: Mapping[str, Merged], floor_mode: bool) -> None:
    """Merge another task's `Merged` entries (records already renamed) into `into`."""
    for key, m in other.items():
        if key not in into:
            into[key] = m
            continue
        t = into[key]
        if m.valid is not None:
            t.valid = _merge_stats(t.valid, m.valid, not floor_mode)
        if m.floor is not None:
            t.floor = _merge_stats(t.floor, m.floor, False)
        t.floor_scale = max(t.floor_scale, m.floor_scale)
        t.width, t.records = max(t.width, m.width), t.records + m.records
        t.atol, t.rtol = m.atol, m.rtol
        t.batches += m.batches
        t.side.merge(m.side)
        t.floor_side.merge(m.floor_side)
        for name, sums in m.sums.items():
            t.sums.setdefault(name, Sums()).merge(sums)


def dataset_entry(m: Merged, floor_ratio: float | None, hidden: int,
                  limits: Mapping[str, float] | None = None) -> Entry:
    """The verdict on one output over the dataset (the single-batch rule of `bert_ref.oracle.compare`,
    taken once over every record): in the floor-ratio mode the output passes when its largest error
    is at most K x the floor's largest (`floor_scale`: at least one rounding of the largest
    reference value, as in a batch, and with an ensemble the largest of its members'), and each
    statistic of `bert_ref.oracle.verdict` is within its limit times the largest the ensemble
    reaches (`verdict.make_checks` on the statistics over every record; for int8 with a known
    recipe, the recipe check at the first layers), with the detection power of those checks;
    otherwise when every element is within its tolerance. `rel_error_over_cut` is over every
    record at the dataset's magnitude cut (`Side`). A non-finite candidate value always fails.
    One batch gives its own entry's numbers."""
    from bert_ref.oracle import verdict
    from bert_ref.oracle.keys import placement

    assert m.valid is not None
    _, stage, layer = placement(m.key)
    v = m.valid if m.batches == 1 else m.side.exact_stats(m.valid)
    floor_stats = m.floor if m.floor is None or m.batches == 1 else m.floor_side.exact_stats(m.floor)
    f_ratio = rms_ratio = None
    atol, rtol = m.atol, m.rtol
    checks: tuple[Any, ...] = ()
    power = None
    if m.sums and floor_ratio is not None:
        mine = m.sums["candidate"].statistics()
        members = [(name, sums) for name, sums in m.sums.items() if name != "candidate"]
        theirs = [sums.statistics() for _, sums in members]
        m.floor_scale = max([m.floor_scale, *(t["max_abs"] for t in theirs)])
        k_of = {**verdict.default_limits(), **(limits or {}), "max_abs": floor_ratio}
        checks = verdict.make_checks(mine, theirs, floor_scale=m.floor_scale, limits=k_of)
        if m.recipe and "recipe" in k_of and layer is not None and layer <= verdict.RECIPE_LAYERS:
            floor = members[0][1]
            checks += (verdict.recipe_check_of(m.sums["candidate"].distance(floor),
                                               [m.sums[name].distance(floor) for name in m.recipe], k_of["recipe"]),)
        power = m.side.power(theirs[0], checks)
    if floor_stats is not None:
        a, b = v.max_abs_error, m.floor_scale
        f_ratio = (a / b) if b > 0 else (1.0 if a == 0 else (math.nan if math.isnan(a) else math.inf))
        a, b = v.rms_error, floor_stats.rms_error
        rms_ratio = (a / b) if b > 0 else (1.0 if a == 0 else (math.nan if math.isnan(a) else math.inf))
    if floor_ratio is not None:
        limit = floor_ratio * m.floor_scale
        atol, rtol = limit, 0.0
        ratio = v.max_abs_error / limit if limit > 0 else (0.0 if v.max_abs_error == 0 else math.inf)
        v = dataclasses.replace(v, tolerance_ratio=math.nan if math.isnan(v.max_abs_error) else ratio,
                                worst_tolerance=limit)
    valid_ok = bool(v.nonfinite == 0 and not math.isnan(v.tolerance_ratio) and v.tolerance_ratio <= 1.0)
    v = dataclasses.replace(v, passed=valid_ok)
    passed = valid_ok and all(c.passed for c in checks)
    seq = is_sequence_key(m.key)
    shape = (m.records, m.width, hidden) if seq else (m.records, hidden)
    axes = ("record", "position", "channel") if seq else ("record", "channel")
    return Entry(m.key, stage, layer, shape, axes, v, None, passed, floor_stats,
                 f_ratio, m.floor_scale if floor_stats is not None else None, rms_ratio, atol, rtol, None, checks,
                 power)


# ----------------------------------------------------------------------------------------------
# One shard


def _worst_records(ref: np.ndarray, cand: np.ndarray, mask: np.ndarray | None, atol: float,
                   rtol: float, by_ratio: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per record (row): its largest error |c - r| and (with `by_ratio`) its largest error /
    tolerance (atol + rtol * |r|, the element rule of `bert_ref.oracle.compare`), at valid
    positions, in float64; a non-finite error counts as inf. Without `by_ratio` the second array
    is the first over `atol` (the floor-ratio mode's tolerance is one number per output)."""
    r = ref.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.abs(cand.astype(np.float64) - r)
        err[~np.isfinite(err)] = np.inf
        if by_ratio:
            tol = atol + rtol * np.abs(r)
            ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1.0), np.where(err > 0, np.inf, 0.0))
    if mask is not None and err.ndim == 3:
        err *= mask[:, :, None]
        if by_ratio:
            ratio *= mask[:, :, None]
    axes = tuple(range(1, err.ndim))
    e = err.max(axis=axes)
    if by_ratio:
        return e, ratio.max(axis=axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return e, (e / atol if atol > 0 else np.where(e > 0, np.inf, 0.0))


def _vectors(key: str, arr: np.ndarray) -> np.ndarray:
    """One vector per record for the alignment check: position 0 ([CLS]) or the pooled row."""
    return np.asarray(arr[:, 0] if arr.ndim == 3 else arr, np.float64)


def _alignment(ref: np.ndarray, cand: np.ndarray, records: np.ndarray) -> dict[str, Any]:
    """How many rows of the candidate resemble their own record's reference more than any other
    record's (cosine of the vectors centred on the reference's mean), and one row that does not."""
    m = len(records)
    if m < MIN_ALIGNMENT_RECORDS:
        return {"checked": 0, "own": 0, "example": None}
    mu = ref.mean(axis=0)
    x, y = cand - mu, ref - mu
    with np.errstate(invalid="ignore", divide="ignore"):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    sim = np.nan_to_num(x @ y.T, nan=-2.0)  # [m, m]
    best = np.argmax(sim, axis=1)
    own = best == np.arange(m)
    example = None
    if not own.all():
        i = int(np.flatnonzero(~own)[0])
        example = (int(records[i]), int(records[best[i]]))
    return {"checked": m, "own": int(own.sum()), "example": example}


def _check_inputs(ins: Mapping[str, list[Any]], ours: Mapping[str, np.ndarray], lengths: np.ndarray,
                  records: np.ndarray) -> list[dict[str, Any]]:
    """Records whose candidate inputs differ from the packed ones: (record, which, position, values)."""
    bad = []
    for p, r in enumerate(records):
        n = int(lengths[p])
        for key, rows in ins.items():
            row = np.asarray(rows[p]).reshape(-1)
            want = ours[key][p, :n]
            if key == "padding_mask":
                got = (row != 0).astype(np.int64)
                if row.shape[0] < n or not got[:n].all() or got[n:].any():
                    pos = int(np.flatnonzero(got[:n] == 0)[0]) if row.shape[0] >= n and not got[:n].all() else \
                        (n if row.shape[0] >= n else row.shape[0])
                    bad.append({"record": int(r), "input": key, "position": pos, "candidate_length": int(got.sum()),
                                "length": n})
                    break
                continue
            if row.shape[0] < n:
                bad.append({"record": int(r), "input": key, "position": int(row.shape[0]), "candidate": None,
                            "packed": int(want[row.shape[0]])})
                break
            diff = np.flatnonzero(row[:n].astype(np.int64) != want.astype(np.int64))
            if diff.size:
                j = int(diff[0])
                bad.append({"record": int(r), "input": key, "position": j, "candidate": int(row[j]),
                            "packed": int(want[j])})
                break
    return bad


@dataclasses.dataclass
class ShardSource:
    """One shard's records as the compare takes them: lengths, the length-sorted batches of `run`
    (from the reference's shard when read, else computed) and the padded inputs [n, L] each."""

    lengths: np.ndarray
    batches: list[np.ndarray]
    inputs: Mapping[str, np.ndarray]
    ref: Any  # the reference's `Shard`, or None


def shard_source(job: ScaleJob, plan: Plan, shard: int, start: int, stop: int,
                 ref_entry: Mapping[str, Any] | None) -> ShardSource:
    from bert_ref.scale.shards import worker_tokenizer

    if ref_entry is not None:
        ref = _read_run_shard(plan.reference or "", ref_entry, shard, start, stop, "--reference")
        batches = [np.flatnonzero(ref.arrays["batch"] == b) for b in range(int(ref.arrays["batch"].max()) + 1)]
        return ShardSource(ref.lengths, batches, {k: ref.arrays[k] for k in INPUT_KEYS}, ref)
    records = job.dataset.read(start, stop, vocabulary_size=job.vocabulary_size, num_segments=job.num_segments,
                               max_length=job.max_length, tokenizer=lambda: worker_tokenizer(job),
                               truncate=job.truncate)
    return ShardSource(records.lengths, length_batches(records.lengths, job.batch_tokens),
                       pad_batch(records, np.arange(len(records.lengths))), None)


def candidate_batch(job: ScaleJob, cand: CandidateIndex, keys: Sequence[str], sel: np.ndarray, lengths: np.ndarray,
                    recs: np.ndarray, width: int) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    """The candidate's outputs for shard rows `sel` (records `recs`) padded to `width` ([b, width, H]
    or [b, H]), and the inputs it carries."""
    cand_out, cand_in = read_records(cand, sel)
    c_arrays = {}
    for key in keys:
        parts = cand_out[key]
        if is_sequence_key(key):
            short = [i for i, a in enumerate(parts) if a.shape[0] < int(lengths[sel[i]])]
            if short:
                i = short[0]
                r = int(recs[i])
                raise DatasetError(f"{key}: record {r} ({job.dataset.source(r)}) has {int(lengths[sel[i]])} "
                                   f"tokens but the candidate gives {parts[i].shape[0]} positions: is the "
                                   "candidate in the dataset's record order? (a candidate sorted by length must "
                                   "carry record_index)")
            arr = np.zeros((len(sel), width, parts[0].shape[-1]), parts[0].dtype)
            for i, a in enumerate(parts):
                arr[i, : min(width, a.shape[0])] = a[:width]
            c_arrays[key] = arr
        else:
            c_arrays[key] = np.stack(parts)
    return c_arrays, cand_in


def compare_shard(job: ScaleJob, shard: int, start: int, stop: int, cand: CandidateIndex, plan: Plan,
                  ref_entry: Mapping[str, Any] | None, floor_entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """The task of `compare_dataset`: one shard's merged entries, its worst records, the records
    whose inputs differ, and the alignment check. `cand` is the candidate cut to this shard."""
    from bert_ref.oracle import ensemble, verdict
    from bert_ref.oracle.compare import compare
    from bert_ref.oracle.int8 import parse_int8_scheme
    from bert_ref.oracle.keys import valid_mask
    from bert_ref.oracle.run import float64_floor, floor_name, floor_outputs, oracle_outputs, truth_report
    from bert_ref.scale.shards import member_key, set_threads, worker_model

    t0 = time.perf_counter()
    set_threads(job.threads)
    src = shard_source(job, plan, shard, start, stop, ref_entry)
    ref, lengths, padded_inputs = src.ref, src.lengths, src.inputs
    flo = None
    if floor_entry is not None:
        flo = _read_run_shard(plan.floor_from or "", floor_entry, shard, start, stop, "--floor-from")
    model = worker_model(job)[0] if plan.model else None
    if flo is not None and not (np.array_equal(flo.lengths, lengths)):
        raise DatasetError(f"--floor-from {plan.floor_from}: shard {shard} holds other record lengths than the "
                           "reference's: a run of another tokenizer or sequence length")
    with_ensemble = plan.truth and plan.floor_ratio is not None and plan.precision != "float64"
    chosen: tuple[Any, ...] = ()
    if with_ensemble:
        assert plan.precision is not None
        chosen = ensemble.members(plan.precision, parse_int8_scheme(plan.int8_scheme) if plan.int8_scheme else None)
    recipe = tuple(m.name for m in chosen[1:] if m.exact) if plan.recipe else ()
    index = np.arange(start, stop)
    wanted = (cand.rec_file >= 0) & (index >= plan.first) & (index < plan.last)
    floor_mode = plan.floor_ratio is not None
    merged: dict[str, Merged] = {}
    worst: dict[str, list[tuple[int, float, float]]] = {k: [] for k in plan.keys}
    mismatched: list[dict[str, Any]] = []
    # The alignment check looks at the last layer's output: sequence_output, else the deepest
    # hidden state, else pooled_output.
    hidden = sorted((k for k in plan.keys if parse_key(k).name == "hidden_states"), key=key_order, reverse=True)
    align_key = next((k for k in ("sequence_output", *hidden, "pooled_output") if k in plan.keys), plan.keys[0])
    align_ref: list[np.ndarray] = []
    align_cand: list[np.ndarray] = []
    align_rec: list[np.ndarray] = []
    notes: list[str] = []
    for rows in src.batches:
        sel = rows[wanted[rows]]
        if not sel.size:
            continue
        width = int(lengths[rows].max())
        recs = index[sel]
        inputs = {k: np.asarray(padded_inputs[k][sel, :width]) for k in INPUT_KEYS}
        inputs["padding_mask"] = inputs["padding_mask"].astype(bool)
        c_arrays, cand_in = candidate_batch(job, cand, plan.keys, sel, lengths, recs, width)
        if cand_in:
            mismatched += _check_inputs(cand_in, {k: np.asarray(padded_inputs[k])[sel] for k in INPUT_KEYS},
                                        lengths[sel], recs)
        # The reference (and the floor) for these rows: read, or computed on the full batch (the bits
        # of a `run` shard) and cut to the rows compared.
        full = {k: np.asarray(padded_inputs[k][rows, :width]) for k in INPUT_KEYS}
        full["padding_mask"] = full["padding_mask"].astype(bool)
        pos = np.flatnonzero(wanted[rows])  # where the compared rows are in the batch (sel keeps rows' order)
        if ref is not None:
            r_arrays = {k: ref.padded(k, sel, width) for k in plan.keys}
        else:
            assert model is not None
            dtype = "float64" if plan.truth else None
            out = oracle_outputs(model, full, plan.keys, dtype=dtype)
            r_arrays = {k: np.asarray(out[k])[pos] for k in plan.keys}
        members: dict[str, dict[str, np.ndarray]] = {}  # the ensemble's runs for these rows, the floor first
        if plan.truth:
            assert plan.precision is not None
            name = floor_name(plan.precision)
            if with_ensemble:  # as compare_to_truth: our run and its legitimate variants, read or computed
                for mem in chosen:
                    if flo is not None and mem.name in plan.on_disk:
                        own = mem.name == plan.on_disk[0]  # the run's policy: stored under the output's name
                        members[mem.name] = {k: flo.padded(k if own else member_key(k, mem.name), sel, width)
                                             for k in plan.keys}
                    else:
                        assert model is not None
                        run = oracle_outputs(model, full, plan.keys, dtype=mem.policy)
                        members[mem.name] = {k: np.asarray(run[k])[pos] for k in plan.keys}
                f_arrays = next(iter(members.values()))
            elif flo is not None:
                f_arrays = {k: flo.padded(k, sel, width) for k in plan.keys}
                if plan.precision == "float64":
                    f_arrays = float64_floor(r_arrays, f_arrays)
            else:
                assert model is not None
                truth_full = ({k: np.asarray(out[k]) for k in plan.keys} if ref is None
                              else {k: ref.padded(k, rows, width) for k in plan.keys})
                f_full, name = floor_outputs(model, full, plan.keys, plan.precision, truth_full)
                f_arrays = {k: np.asarray(f_full[k])[pos] for k in plan.keys}
            report = truth_report(r_arrays, c_arrays, f_arrays, precision=plan.precision,
                                  floor_ratio=plan.floor_ratio, atol=plan.atol, rtol=plan.rtol,
                                  padding_mask=inputs["padding_mask"], candidate_name=plan.candidate_name,
                                  floor_name=name)
        else:
            from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

            report = compare(r_arrays, c_arrays, atol=DEFAULT_ATOL if plan.atol is None else plan.atol,
                             rtol=DEFAULT_RTOL if plan.rtol is None else plan.rtol,
                             padding_mask=inputs["padding_mask"], candidate_name=plan.candidate_name)
            name = None
            f_arrays = {}
        if name and name not in notes:
            notes.append(name)
        mask = inputs["padding_mask"]
        for e in report:
            m = merge_entry(merged.setdefault(e.key, Merged(e.key, e.stage, e.layer)), e, recs, floor_mode)
            valid = valid_mask(e.key, r_arrays[e.key].shape, mask)
            t_rows = verdict.rows(r_arrays[e.key], e.key, valid)
            c_rows = verdict.rows(c_arrays[e.key], e.key, valid)
            m.side.add(c_rows, t_rows, exact=e.valid.nonfinite == 0)
            if e.floor is not None:
                m.floor_side.add(verdict.rows(f_arrays[e.key], e.key, valid), t_rows)
            if members:  # the verdict's statistics, summed over the dataset's rows (`Sums`)
                m.recipe = recipe if e.layer is not None and e.layer <= verdict.RECIPE_LAYERS else ()
                runs = {"candidate": c_rows, **{n: verdict.rows(a[e.key], e.key, valid) for n, a in members.items()}}
                f0 = runs[next(iter(members))]  # the floor's rows: the recipe statistic's origin
                for run_name, x in runs.items():
                    near = f0 if run_name == "candidate" or run_name in m.recipe else None
                    m.sums.setdefault(run_name, Sums()).add(x, t_rows, near)
            err, ratio = _worst_records(r_arrays[e.key], c_arrays[e.key], mask, e.atol, e.rtol, not floor_mode)
            score = err if floor_mode else ratio
            worst[e.key] += [(int(recs[i]), float(err[i]), float(ratio[i])) for i in np.argsort(-score, kind="stable")
                             [:plan.worst]]
        align_ref.append(_vectors(align_key, r_arrays[align_key]))
        align_cand.append(_vectors(align_key, c_arrays[align_key]))
        align_rec.append(recs)
    for items in worst.values():
        items.sort(key=lambda w: -(w[1] if floor_mode else w[2]))
        del items[plan.worst:]
    align = (_alignment(np.concatenate(align_ref), np.concatenate(align_cand), np.concatenate(align_rec))
             if align_rec else {"checked": 0, "own": 0, "example": None})
    return {"shard": shard, "merged": merged, "worst": worst, "mismatched": mismatched[:20],
            "mismatched_count": len(mismatched), "alignment": align, "compared": int(wanted.sum()),
            "floor_names": notes, "seconds": time.perf_counter() - t0}


def _read_run_shard(directory: str, entry: Mapping[str, Any], shard: int, start: int, stop: int, flag: str) -> Any:
    why = verify_shard(directory, entry)
    if why is not None:
        raise DatasetError(f"{flag} shard {shard} ({Path(directory) / shard_name(shard)}): {why}; rerun `bert-ref run` "
                           "with the same arguments to recompute it")
    return read_shard(Path(directory) / entry["file"], start, stop)


# ----------------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass
class DatasetReport:
    """A candidate against the reference over a dataset: the oracle's `Report` (one entry per
    output, over every record compared; `Entry.where` names record, position and channel), the
    worst records per output with their sources, and what was found about the candidate's inputs
    and alignment."""

    report: Report
    worst: dict[str, list[dict[str, Any]]]
    compared: int
    num_records: int
    problems: list[str]
    notes: list[str]
    worst_source: dict[str, str | None]

    @property
    def passed(self) -> bool:
        return self.report.passed and not self.problems

    @property
    def first_failure(self) -> str | None:
        e = self.report.first_failure
        return e.key if e is not None else None

    @property
    def entries(self) -> dict[str, Entry]:
        return {e.key: e for e in self.report}

    def ranking(self) -> str:
        return ("max abs error" if self.report.floor_ratio_limit is not None else "error / tolerance")

    def _worst_text(self, key: str, w: Mapping[str, Any]) -> str:
        e = self.entries[key]
        src = f" ({w['source']})" if w.get("source") else ""
        if self.report.floor_ratio_limit is not None and e.floor_scale:
            return f"record {w['record']}{src}: {w['max_abs']:.2e} ({_times(w['max_abs'] / e.floor_scale)} floor)"
        return f"record {w['record']}{src}: {_times(w['ratio'])} tol (max abs {w['max_abs']:.2e})"

    def format_table(self) -> str:
        head = (f"{self.compared:,} of {self.num_records:,} records compared, valid positions"
                if self.compared != self.num_records else f"{self.num_records:,} records, valid positions")
        lines = [head] + ["FAIL: " + p for p in self.problems] + [self.report.format_table()]
        first = self.report.first_failure
        if first is not None and self.worst_source.get(first.key):
            idx = first.valid.worst_index
            lines.append(f"(record {idx[0] if idx else '?'} is {self.worst_source[first.key]})")
        lines.append(f"Worst records per output (ranked by {self.ranking()}):")
        for key, items in self.worst.items():
            lines.append(f"  {key}: " + "; ".join(self._worst_text(key, w) for w in items))
        if self.problems and self.report.passed:
            lines.append("FAIL: the values are within the limits, but " + self.problems[0])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = self.report.to_dict()
        d.update({"passed": self.passed, "records": self.num_records, "compared": self.compared,
                  "worst_records": self.worst, "problems": self.problems})
        return json_safe(d)

    def junit_cases(self) -> list[tuple[str, str | None]]:
        """Extra JUnit cases: each worst record (failing when over the limit) and each problem."""
        cases: list[tuple[str, str | None]] = []
        limit = self.report.floor_ratio_limit
        for key, items in self.worst.items():
            e = self.entries[key]
            for w in items:
                over = (w["max_abs"] > limit * e.floor_scale if limit is not None and e.floor_scale is not None
                        else w["ratio"] > 1.0)
                cases.append((f"{key} record {w['record']}" + (f" ({w['source']})" if w.get("source") else ""),
                              f"{key}: {self._worst_text(key, w)}" if over else None))
        cases += [("inputs and alignment", p) for p in self.problems]
        return cases


# ----------------------------------------------------------------------------------------------
# compare


def parse_records(text: str | None, n: int) -> tuple[int, int]:
    """`--records A:B` as [A, B) inside [0, n) (either side may be empty)."""
    if text is None:
        return 0, n
    a, sep, b = text.partition(":")
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else n
    except ValueError:
        lo = hi = -1
    if not sep or not 0 <= lo < hi:
        raise ValueError(f"--records {text!r}: expected A:B with 0 <= A < B (records A .. B-1), e.g. 0:1000")
    if lo >= n:
        raise ValueError(f"--records {text!r}: the dataset has {n} records")
    return lo, min(hi, n)


def _run_dir(directory: str | os.PathLike, flag: str) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{flag} {directory}: no {MANIFEST}; give a `bert-ref run --dataset` directory")
    manifest = read_manifest(path)
    if not manifest.get("complete"):
        raise DatasetError(f"{flag} {directory}: the run is not complete; rerun `bert-ref run` to finish it")
    if not manifest["job"].get("outputs"):
        raise DatasetError(f"{flag} {directory}: a `bert-ref pack` directory holds no outputs; give a "
                           "`bert-ref run` directory")
    return manifest


def compare_dataset(
    preset: str,
    dataset: str | os.PathLike,
    candidate: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    reference: str | os.PathLike | None = None,
    floor_from: str | os.PathLike | None = None,
    dtype: Any = None,
    truth: bool = False,
    precision: str | None = None,
    floor_ratio: float | None = None,
    atol: Any = None,
    rtol: Any = None,
    records: str | None = None,
    worst: int = 5,
    int8_scheme: str | None = None,
    **options: Any,
) -> DatasetReport:
    """Compare a candidate's outputs on `dataset` with ours (see the module docstring).

    Args:
        candidate: a directory of `.npz` / `.safetensors` files, or files (`bert_ref.scale.candidate`).
        reference: a `run_dataset` directory to read the reference from (the float64 truth in the
            truth mode); None computes it on the fly, writing nothing.
        floor_from: a `run_dataset` directory at the candidate's precision to read the floor from.
        dtype: the reference's policy in the absolute mode (default float32).
        truth, precision, floor_ratio: the truth mode, as `bert-ref compare` (the precision is
            detected from the candidate's dtypes when not given; K defaults to 4 when a precision is
            given or detected half, unless `atol` / `rtol` are).
        atol, rtol: tolerances (numbers or per kind of output, `bert_ref.oracle.tolerances`).
        records: "A:B", compare only records A .. B-1.
        worst: how many worst records to report per output.
        int8_scheme: the int8 recipe of the ensemble (`bert_ref.oracle.int8`); None: detected
            from the candidate's errors, as `compare_to_truth` does.
        options: `bert_ref.scale.options.DatasetOptions`, as `run_dataset`'s (the sharding and
            batching taken from `reference` or `floor_from` when given).

    Returns:
        A `DatasetReport`; `report.passed` is the verdict.
    """
    from bert_ref.model.precision import HALF_PRECISIONS, PRECISIONS
    from bert_ref.oracle import ensemble
    from bert_ref.oracle.int8 import parse_int8_scheme
    from bert_ref.oracle.run import default_floor_ratio
    from bert_ref.oracle.tolerances import parse_tolerance

    if worst < 1:
        raise ValueError(f"--worst must be >= 1, got {worst}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if floor_ratio is not None and not floor_ratio > 0:
        raise ValueError(f"--floor-ratio must be > 0, got {floor_ratio}")
    if floor_ratio is not None and (atol is not None or rtol is not None):
        raise ValueError("--floor-ratio and --atol/--rtol are two different checks; give one")
    atol = parse_tolerance(atol, "atol") if atol is not None else None
    rtol = parse_tolerance(rtol, "rtol") if rtol is not None else None
    o = dataset_options(options, "compare_dataset")
    shard_size, batch_tokens, sequence_length, truncate = (o["shard_size"], o["batch_tokens"], o["sequence_length"],
                                                           o["truncate"])
    engine = Engine(o["scheduler"], o["workers"], o["threads"])
    ref_manifest = _run_dir(reference, "--reference") if reference is not None else None
    floor_manifest = _run_dir(floor_from, "--floor-from") if floor_from is not None else None
    source = ref_manifest or floor_manifest
    if source is not None:
        rj = source["job"]
        shard_size, batch_tokens = int(rj["shard_size"]), int(rj["batch_tokens"])
        sequence_length, truncate = rj["sequence_length"], rj["truncate"]
    job, fields, ckpt = prepare_job(preset, dataset, dtype="float64", sequence_length=sequence_length,
                                    truncate=truncate, outputs=OUTPUT_CHOICES, batch_tokens=batch_tokens,
                                    threads=engine.threads, out=None)
    fields["shard_size"] = shard_size
    for flag, m, d in (("--reference", ref_manifest, reference), ("--floor-from", floor_manifest, floor_from)):
        if m is None:
            continue
        for name in SAME_JOB:
            if m["job"].get(name) != fields[name]:
                raise DatasetError(f"{flag} {d}: its {name} is {m['job'].get(name)!r}, but {preset} / {dataset} "
                                   f"with these options give {fields[name]!r}")
    config = ckpt.config
    paths = [candidate] if isinstance(candidate, (str, os.PathLike)) else list(candidate)
    cand = index_candidate(paths, job.dataset.num_records, config.num_layers, config.hidden_dim)
    first, last = parse_records(records, job.dataset.num_records)
    index = np.arange(job.dataset.num_records)
    subset = cand.present & (index >= first) & (index < last)
    if not subset.any():
        raise DatasetError(f"the candidate holds none of records {first}..{last - 1}")
    # The mode, as the single-batch compare chooses it.
    detected = cand.precision
    truth_mode = truth or precision is not None or floor_ratio is not None or (
        detected in HALF_PRECISIONS and atol is None and rtol is None)
    notes = list(cand.notes)
    prec = None
    if truth_mode:
        prec = precision or detected
        if precision is None and detected != "float32":
            notes.append(f"precision {detected}, from the candidate's dtypes (--precision overrides)")
        floor_ratio = default_floor_ratio(precision is not None, prec, floor_ratio, atol, rtol)
        if ref_manifest is not None and ref_manifest["job"]["policy"] != "float64":
            raise DatasetError(f"--reference {reference}: a {ref_manifest['job']['policy']} run; a compare against "
                               "the truth needs `bert-ref run --dtype float64`")
    elif ref_manifest is not None and dtype is not None and ref_manifest["job"]["policy"] != dtype:
        raise DatasetError(f"--reference {reference}: a {ref_manifest['job']['policy']} run, not {dtype}")
    with_ensemble = truth_mode and prec not in (None, "float64") and floor_ratio is not None
    if floor_manifest is not None:
        if not truth_mode:
            raise DatasetError("--floor-from gives the floor of a compare against the truth: add --precision P "
                               "(or --truth)")
        want = "float32" if prec == "float64" else PRECISIONS[prec or "float32"].policy
        if floor_manifest["job"]["policy"] != want:
            raise DatasetError(f"--floor-from {floor_from}: a {floor_manifest['job']['policy']} run; the {prec} floor "
                               f"needs `bert-ref run --dtype {want}`")
    for flag, m, d in (("--reference", ref_manifest, reference), ("--floor-from", floor_manifest, floor_from)):
        if m is not None:
            missing = [k for k in cand.keys if parse_key(k).name not in m["job"]["outputs"]]
            if missing:
                raise DatasetError(f"{flag} {d}: the run holds no {missing[0]}; rerun it with --outputs including "
                                   f"{parse_key(missing[0]).name}")
    if ref_manifest is None:
        policy = "float64" if truth_mode else (dtype or "float32")
    elif prec == "float64":
        policy = "float32"
    else:
        policy = PRECISIONS[prec].policy if truth_mode and prec is not None else "float32"
    wanted_outputs = tuple(o for o in OUTPUT_CHOICES if any(parse_key(k).name == o for k in cand.keys))
    job = dataclasses.replace(job, policy=policy, outputs=wanted_outputs)
    name = Path(paths[0]).name if len(paths) == 1 else f"{len(cand.files)} files"
    scheme = parse_int8_scheme(int8_scheme) if int8_scheme is not None and prec == "int8" else None
    plan = Plan(tuple(cand.keys), truth_mode, prec, floor_ratio, atol, rtol, worst, first, last,
                str(Path(reference).resolve()) if reference is not None else None,
                str(Path(floor_from).resolve()) if floor_from is not None else None,
                floor_manifest["job"]["policy"] if floor_manifest is not None else None, False, name,
                scheme.spec if scheme is not None else None, scheme is not None)
    n = job.dataset.num_records
    num_shards = -(-n // shard_size)
    ref_entries = {e["shard"]: e for e in ref_manifest["shards"]} if ref_manifest else {}
    floor_entries = {e["shard"]: e for e in floor_manifest["shards"]} if floor_manifest else {}
    todo = [k for k in range(num_shards) if subset[k * shard_size:min((k + 1) * shard_size, n)].any()]
    if with_ensemble and prec == "int8" and scheme is None:
        # As the single compare: the recipe from the candidate's errors, on the first shard's largest batch.
        detection, where = _detect_int8(job, plan, cand, subset, todo[0], shard_size, ref_entries.get(todo[0]))
        scheme = detection.scheme
        plan = dataclasses.replace(plan, int8_scheme=scheme.spec, recipe=detection.explains)
        notes.append(f"{detection.note()}; detected on {where}")
    chosen = ensemble.members(prec, scheme) if with_ensemble and prec is not None else ()
    absent: list[str] = []
    if chosen and floor_manifest is not None:
        stored = [floor_manifest["job"]["policy"], *floor_manifest["job"].get("ensemble", [])]
        on_disk = tuple(stored) if chosen[0].name == stored[0] else ()
        absent = [m.name for m in chosen if m.name not in on_disk]
        plan = dataclasses.replace(plan, on_disk=on_disk)
        if not on_disk:
            notes.append(f"--floor-from {floor_from} is our {stored[0]} run, not the {chosen[0].name} recipe's: its "
                         "ensemble is computed on the fly")
        elif absent:
            notes.append(f"--floor-from {floor_from} holds {', '.join(m.name for m in chosen if m.name in on_disk)}; "
                         f"the ensemble's {', '.join(absent)} computed on the fly (`bert-ref run --dtype "
                         f"{stored[0]} --ensemble` stores them)")
    needs_model = ref_manifest is None or (truth_mode and floor_manifest is None) or bool(absent)
    plan = dataclasses.replace(plan, model=needs_model)

    def tasks() -> Any:
        for k in todo:
            a, b = k * shard_size, min((k + 1) * shard_size, n)
            yield (job_for(job, a, b), k, a, b, cand.part(a, b), plan, ref_entries.get(k) if ref_manifest else None,
                   floor_entries.get(k) if floor_manifest else None)

    results: list[dict[str, Any]] = []
    bar = Progress(int(subset.sum()), 0, o["progress"], "records compared")

    def done(i: int, result: dict[str, Any]) -> None:
        results.append(result)
        k = todo[i]
        bar.shard(k, k * shard_size, min((k + 1) * shard_size, n), result["seconds"], count=result["compared"])

    try:
        engine.run(compare_shard, tasks(), done)
    finally:
        bar.close()
    return _report(results, plan, job, config.hidden_dim, notes, int(subset.sum()), n, reference, preset, cand)


def _detect_int8(job: ScaleJob, plan: Plan, cand: CandidateIndex, subset: np.ndarray, shard: int, shard_size: int,
                 ref_entry: Mapping[str, Any] | None) -> tuple[Any, str]:
    """`bert_ref.oracle.run.detect_int8_scheme` on the batch of `shard` holding the most compared
    records (its truth read from --reference or computed): (the detection, which records)."""
    from bert_ref.oracle.run import detect_int8_scheme, oracle_outputs
    from bert_ref.scale.shards import worker_model

    n = job.dataset.num_records
    start, stop = shard * shard_size, min((shard + 1) * shard_size, n)
    src = shard_source(job, plan, shard, start, stop, ref_entry)
    wanted = subset[start:stop]
    rows = max(src.batches, key=lambda r: int(wanted[r].sum()))
    sel = rows[wanted[rows]]
    width = int(src.lengths[rows].max())
    recs = np.arange(start, stop)[sel]
    inputs = {k: np.asarray(src.inputs[k][sel, :width]) for k in INPUT_KEYS}
    c_arrays, _ = candidate_batch(job, cand, plan.keys, sel, src.lengths, recs, width)
    model = worker_model(dataclasses.replace(job, policy="float64"))[0]
    if src.ref is not None:
        truth = {k: src.ref.padded(k, sel, width) for k in plan.keys}
    else:
        truth = oracle_outputs(model, inputs, plan.keys, dtype="float64")
    detection = detect_int8_scheme(model, inputs, c_arrays, truth)
    shown = ", ".join(str(int(r)) for r in recs[:5]) + (", ..." if len(recs) > 5 else "")
    return detection, f"the {len(recs)} record(s) of shard {shard}'s largest batch ({shown})"


def _report(results: list[dict[str, Any]], plan: Plan, job: ScaleJob, hidden: int, notes: list[str], compared: int,
            n: int, reference: Any, preset: str, cand: CandidateIndex) -> DatasetReport:
    floor_mode = plan.floor_ratio is not None
    results.sort(key=lambda r: r["shard"])
    merged: dict[str, Merged] = {}
    for r in results:
        merge_into(merged, r["merged"], floor_mode)
    entries = tuple(dataset_entry(merged[k], plan.floor_ratio, hidden) for k in sorted(merged, key=key_order))
    if any(e.checks for e in entries):
        notes.append("the verdict's statistics and its detection power are taken over every compared record")
    ds = job.dataset
    worst: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(merged, key=key_order):
        items = [w for r in results for w in r["worst"][key]]
        items.sort(key=lambda w: -(w[1] if floor_mode else w[2]))
        worst[key] = [{"record": rec, "max_abs": err, "ratio": ratio, "source": ds.source(rec)}
                      for rec, err, ratio in items[:plan.worst]]
    if compared != n:
        present = int(cand.present.sum())
        why = []
        if present != n:
            why.append(f"the candidate holds {present:,}")
        if (plan.first, plan.last) != (0, n):
            why.append(f"--records {plan.first}:{plan.last}")
        notes.insert(0, f"compared {compared:,} of the dataset's {n:,} records ({'; '.join(why)}); the others are "
                        "not judged")
    floor_names = [x for r in results for x in r["floor_names"]]
    ref_name = ("float64 truth" if plan.truth else f"our {job.policy}") + (f" ({reference})" if reference else "")
    report = Report(entries, plan.atol if plan.atol is not None else _default("atol"),
                    plan.rtol if plan.rtol is not None else _default("rtol"), False, ref_name, plan.candidate_name,
                    floor_names[0] if floor_names and plan.truth else None, plan.floor_ratio, plan.precision,
                    tuple(notes))
    problems = []
    bad = [m for r in results for m in r["mismatched"]]
    count = sum(r["mismatched_count"] for r in results)
    if count:
        m = bad[0]
        rec = m["record"]
        if m["input"] == "padding_mask":
            what = f"its padding_mask has {m['candidate_length']} real tokens, the packed record {m['length']}"
        elif m.get("candidate") is None:
            what = f"its {m['input']} stops at position {m['position']}"
        else:
            what = f"{m['input']}[{m['position']}] is {m['candidate']}, the packed id {m['packed']}"
        problems.append(f"the candidate's inputs differ from the packed inputs at {count:,} record(s); the first is "
                        f"record {rec} ({ds.source(rec)}): {what}. The port was run on other inputs (another "
                        "tokenizer or text, or rows in another order): run it on `bert-ref pack` shards and write "
                        "record_index with each row")
    checked = sum(r["alignment"]["checked"] for r in results)
    own = sum(r["alignment"]["own"] for r in results)
    if checked and own / checked < 0.5 and not report.passed:
        ex = next((r["alignment"]["example"] for r in results if r["alignment"]["example"]), None)
        example = ""
        if ex is not None:
            example = (f" (e.g. the row given for record {ex[0]} ({ds.source(ex[0])}) resembles record {ex[1]} "
                       f"({ds.source(ex[1])}))")
        problems.append(f"the candidate looks misaligned: {checked - own:,} of {checked:,} rows resemble another "
                        f"record's reference more than their own{example}. Write record_index with each row (a "
                        "candidate sorted by length needs it), or keep the dataset's record order")
    worst_source = {}
    for e in report:
        idx = e.valid.worst_index
        worst_source[e.key] = ds.source(idx[0]) if idx else None
    return DatasetReport(report, worst, compared, n, problems, notes, worst_source)


def _times(x: float) -> str:
    if not math.isfinite(x):
        return f"{x}x"
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def _default(name: str) -> float:
    from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

    return DEFAULT_ATOL if name == "atol" else DEFAULT_RTOL
