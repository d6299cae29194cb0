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
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bert_ref.model import runtime
from bert_ref.model.precision import UNIT_ROUNDOFF
from bert_ref.oracle import verdict
from bert_ref.oracle.blocked import Workspace, as_flat, summaries
from bert_ref.oracle.candidates import check_output_dtype
from bert_ref.oracle.keys import axes, placement, valid_mask
from bert_ref.oracle.report import Check, Entry, Report, Stats
from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL, parse_tolerance, tolerance_for

__all__ = ["FloorSide", "compare", "floor_side", "floor_sides", "judge"]


@dataclasses.dataclass(frozen=True)
class FloorSide:
    """What one output's verdict needs of the floor and of the ensemble, none of it of the
    candidate (`floor_side`). It depends only on the model, the inputs and the precision, so the
    oracle cache keeps it (`bert_ref.oracle.run.ensemble_sides`): a compare of another candidate on
    the same inputs reads these few numbers instead of the ensemble's runs.

    Attributes:
        floor: `Stats` of the floor vs the reference at valid positions (`Entry.floor`), or None.
        scale: `Entry.floor_scale`: the floor's (and every member's) largest max abs error, at least
            one rounding of the output's largest valid value; None without a floor.
        padded_scale: the floor at padded positions before K (`Entry.padded_floor_scale`), or None.
        members: `verdict.statistics` of each ensemble member (the floor first); empty without one.
        recipe: `verdict.recipe_distance` of each exact variant of an int8 recipe from the floor run
            (at the outputs `verdict.RECIPE_LAYERS` covers); empty elsewhere.
        rows: what the detection power needs of the reference's rows (`verdict.truth_rows`), or
            None (no ensemble).
    """

    floor: Stats | None
    scale: float | None
    padded_scale: float | None
    members: tuple[dict[str, float], ...] = ()
    recipe: tuple[float, ...] = ()
    rows: tuple[int, int, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats as JSON's NaN / Infinity, which `json` reads back)."""
        return {"floor": self.floor.to_dict() if self.floor is not None else None, "scale": self.scale,
                "padded_scale": self.padded_scale, "members": [dict(m) for m in self.members],
                "recipe": list(self.recipe), "rows": None if self.rows is None else list(self.rows)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FloorSide:
        """The inverse of `to_dict` (KeyError / TypeError / ValueError on anything else)."""
        f = d["floor"]
        floor = None if f is None else Stats(**{**f, **{k: None if f[k] is None else tuple(int(i) for i in f[k])
                                                         for k in ("worst_index", "min_cosine_index")}})
        rows = d["rows"]
        return cls(floor, _float_or_none(d["scale"]), _float_or_none(d["padded_scale"]),
                   tuple({str(k): float(v) for k, v in m.items()} for m in d["members"]),
                   tuple(float(x) for x in d["recipe"]),
                   None if rows is None else (int(rows[0]), int(rows[1]), float(rows[2]), float(rows[3])))


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def floor_side(key: str, ref: np.ndarray, floor: Any, floor_reference: Any, members: Mapping[str, Any],
               valid: np.ndarray | None, *, precision: str | None, padded: bool,
               recipe_members: Sequence[str] = (), floor_name: str = "floor", reference_name: str = "reference",
               ws: Workspace | None = None) -> FloorSide:
    """The `FloorSide` of one output: `ref` the reference's array, `floor` and `floor_reference`
    the floor's and what it is measured against (None: no floor), `members` each ensemble member's
    array (name -> array, the floor run first; empty: no ensemble), `valid` the output's
    `valid_mask`. `padded`: also measure the floor at padded positions (the floor-ratio mode).
    `recipe_members`: the members whose recipe distance from the first member is kept."""
    u = UNIT_ROUNDOFF[precision or "float32"]
    f_stats = f_scale = p_scale = None
    if floor is not None and floor_reference is not None:
        f, fr = np.asarray(floor), np.asarray(floor_reference)
        if f.shape != ref.shape or fr.shape != ref.shape:
            raise ValueError(f"{key}: {floor_name} outputs have shapes {f.shape} and {fr.shape}, "
                             f"{reference_name} has shape {ref.shape}")
        f_stats, fp_stats, biggest = summaries(fr, f, 0.0, 0.0, valid, padded, ws or Workspace())
        if f_stats is not None:
            f_scale = max(f_stats.max_abs_error, u * biggest)
        if fp_stats is not None and valid is not None:  # the floor at padded positions: its own size
            p_scale = max(fp_stats.max_abs_error, u * _largest(fr, ~np.broadcast_to(valid, fr.shape)))
    # The ensemble's statistics (each member against the reference, at valid positions).
    theirs: list[dict[str, float]] = []
    recipe: tuple[float, ...] = ()
    rows = None
    if members:
        t_rows = verdict.rows(ref, key, valid)
        rows = verdict.truth_rows(t_rows)
        sel = r_padded = None
        if valid is not None and p_scale is not None:  # the padded elements, once for every member
            sel = np.flatnonzero(~np.broadcast_to(valid, ref.shape))
            r_padded = ref.reshape(-1)[sel].astype(np.float64)
        for name, m in members.items():
            if m is None or np.shape(m) != ref.shape:
                raise ValueError(f"{key}: ensemble member {name} has no output of shape {ref.shape}")
            theirs.append(verdict.statistics(verdict.rows(m, key, valid), t_rows))
            if sel is not None and r_padded is not None and p_scale is not None:
                m_padded = np.asarray(m).reshape(-1)[sel].astype(np.float64)
                p_scale = max(p_scale, float(np.max(np.abs(m_padded - r_padded), initial=0.0)))
        if f_scale is not None:
            f_scale = max([f_scale, *(t["max_abs"] for t in theirs)])
        if recipe_members:
            f0 = verdict.rows(next(iter(members.values())), key, valid)
            recipe = tuple(verdict.recipe_distance(verdict.rows(members[n], key, valid), f0, t_rows)
                           for n in recipe_members)
    return FloorSide(f_stats, f_scale, p_scale, tuple(theirs), recipe, rows)


def floor_sides(reference: Mapping[str, Any], ensemble: Mapping[str, Mapping[str, Any]], keys: Sequence[str], *,
                padding_mask: Any = None, precision: str | None = None,
                recipe_members: Sequence[str] = ()) -> dict[str, FloorSide]:
    """`floor_side` of each of `keys` in the floor-ratio mode, the floor being the ensemble's first
    run (name -> outputs) against `reference`, on the cores' threads. `recipe_members` (names of
    the exact variants of an int8 recipe): their recipe distances at the outputs
    `verdict.RECIPE_LAYERS` covers."""
    ref = as_flat(reference, "reference")
    ens = {name: as_flat(m, f"ensemble member {name}") for name, m in ensemble.items()}
    if not ens:
        raise ValueError("floor_sides needs an ensemble of at least one run (the floor)")
    first = next(iter(ens.values()))
    mask = None if padding_mask is None else np.asarray(padding_mask).astype(bool)
    local = threading.local()

    def one(key: str) -> FloorSide:
        ws = getattr(local, "ws", None)
        if ws is None:
            ws = local.ws = Workspace()
        if key not in ref:
            raise ValueError(f"the reference has no {key} to measure the ensemble against (it has: {', '.join(ref)})")
        r = np.asarray(ref[key])
        layer = placement(key)[2]
        recipe = recipe_members if layer is not None and layer <= verdict.RECIPE_LAYERS else ()
        return floor_side(key, r, first.get(key), r, {n: m.get(key) for n, m in ens.items()},
                          valid_mask(key, r.shape, mask), precision=precision, padded=True, recipe_members=recipe,
                          ws=ws)

    keys = list(keys)
    return dict(zip(keys, runtime.map_concurrent(one, keys), strict=True))


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
    ensemble: Mapping[str, Mapping[str, Any]] | None = None,
    limits: Mapping[str, float] | None = None,
    recipe_variants: Sequence[str] = (),
    sides: Mapping[str, FloorSide] | None = None,
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
            "float64"): labels the floor column and sets the smallest floor (its unit roundoff in
            `bert_ref.model.precision.TABLE`).
        reference_name, candidate_name, floor_name: labels for the printed report.
        notes: lines printed above the table (how the candidate file was read, ...).
        ensemble: in the floor-ratio mode, runs of legitimate variants of the floor's precision
            (name -> outputs; `bert_ref.oracle.ensemble`), the floor among them (the first, when
            `floor` is not given): each output is then also judged by the statistics of
            `bert_ref.oracle.verdict`, each against the largest the ensemble reaches, and its
            max-abs floor (`Entry.floor_scale`) is the ensemble's largest max abs error.
        limits: K per statistic (default `verdict.LIMITS`; `floor_ratio` is max_abs's K).
        recipe_variants: names of ensemble members that compute the floor's int8 recipe exactly
            (other float arithmetic): the `recipe` statistic, the candidate's distance from the
            floor run, is then checked against theirs (`verdict.recipe_check`) at the outputs of the
            embeddings and the first layer (`verdict.RECIPE_LAYERS`).
        sides: instead of `ensemble`, what the verdict needs of it, computed before (`floor_sides`,
            one `FloorSide` per output key; the oracle cache keeps them): the floor-ratio mode then
            runs without the ensemble's outputs. With `recipe_variants`, `floor` still gives the
            floor run's outputs at the first layers (the candidate's distance from it).

    Returns:
        A `Report`, entries in computation order.

    Raises:
        ValueError: a key of `candidate` unknown or absent from `reference`, mismatched shapes,
            negative tolerances, a `floor_ratio` without a floor, or a `padding_mask` that does not fit.
    """
    atol_spec, rtol_spec = parse_tolerance(atol, "atol"), parse_tolerance(rtol, "rtol")
    ens = {name: as_flat(m, f"ensemble member {name}") for name, m in (ensemble or {}).items()}
    if ens and sides is not None:
        raise ValueError("give the ensemble's runs or their sides (floor_sides), not both")
    if ens and floor is None:
        floor = next(iter(ens.values()))
    judged = bool(ens) or sides is not None
    if floor_ratio is not None and ((floor is None and sides is None) or not floor_ratio > 0):
        raise ValueError(f"floor_ratio={floor_ratio}: the floor-ratio mode needs a floor and K > 0")
    if precision is not None and precision not in UNIT_ROUNDOFF:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(UNIT_ROUNDOFF)}")
    ref = as_flat(reference, "reference")
    cand = as_flat(candidate, "candidate")
    if judged and floor_ratio is None:
        raise ValueError("an ensemble is the floor of the floor-ratio mode: give floor_ratio (K) with it")
    k_of = {**verdict.default_limits(), **(limits or {})}
    if floor_ratio is not None:
        k_of["max_abs"] = floor_ratio
    flo = as_flat(floor, "floor") if floor is not None else {}
    flo_ref = as_flat(floor_reference, "floor_reference") if floor_reference is not None else ref
    if not cand:
        raise ValueError("candidate holds no outputs to compare")
    mask = None
    if padding_mask is not None:
        mask = np.asarray(padding_mask)
        if mask.ndim != 2:
            raise ValueError(f"padding_mask must be 2-D (batch, sequence), got shape {mask.shape}")
        mask = mask.astype(bool)
    placed = sorted(((placement(k), k) for k in cand), key=lambda t: t[0][0])
    missing = [k for _, k in placed if k not in ref]
    if missing:
        raise ValueError(f"{reference_name} has no {', '.join(missing)} to compare with (it has: {', '.join(ref)})")
    if sides is not None:
        absent = [k for _, k in placed if k not in sides]
        if absent:
            raise ValueError(f"the ensemble's sides have no {', '.join(absent)} (they have: {', '.join(sides)})")
    elif floor_ratio is not None:
        absent = [k for _, k in placed if k not in flo or k not in flo_ref]
        if absent:
            raise ValueError(f"the floor-ratio mode needs a floor for every output; {floor_name} has no "
                             f"{', '.join(absent)}")
    local = threading.local()  # one `Workspace` per thread, for this call only

    def _workspace() -> Workspace:
        ws = getattr(local, "ws", None)
        if ws is None:
            ws = local.ws = Workspace()
        return ws

    def entry(placement: tuple[tuple[tuple[float, float], str, int | None], str]) -> Entry:
        (_, stage, layer), key = placement
        r, c = np.asarray(ref[key]), np.asarray(cand[key])
        if r.shape != c.shape:
            raise ValueError(f"{key}: {candidate_name} has shape {c.shape}, {reference_name} has shape {r.shape}")
        check_output_dtype(c.dtype, candidate_name, key)
        valid = valid_mask(key, r.shape, mask)
        recipe = bool(recipe_variants) and "recipe" in k_of and layer is not None and layer <= verdict.RECIPE_LAYERS
        if sides is not None:
            side = sides[key]
        else:
            side = floor_side(key, r, flo.get(key), flo_ref.get(key), {n: m.get(key) for n, m in ens.items()},
                              valid, precision=precision, padded=floor_ratio is not None,
                              recipe_members=recipe_variants if recipe else (), floor_name=floor_name,
                              reference_name=reference_name, ws=_workspace())
        f_stats, f_scale, p_scale = side.floor, side.scale, side.padded_scale
        f_ratio = rms_ratio = None
        if floor_ratio is not None:
            k_atol, k_rtol = (floor_ratio * f_scale if f_scale is not None else 0.0), 0.0
        else:
            k_atol = tolerance_for(atol_spec, key, DEFAULT_ATOL)
            k_rtol = tolerance_for(rtol_spec, key, DEFAULT_RTOL)
        v_stats, p_stats, _ = summaries(r, c, k_atol, k_rtol, valid, True, _workspace())
        if v_stats is None:  # no valid element (a fully padded batch): nothing can fail there
            v_stats = Stats(0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, 0, True)
        if floor_ratio is not None and p_stats is not None and p_scale is not None:
            # Padded positions are held to K times the floor *there* (the floor at valid positions
            # says nothing about them), so the report's numbers agree with the verdict.
            p_atol = floor_ratio * p_scale
            p_ratio = p_stats.max_abs_error / p_atol if p_atol > 0 else (0.0 if p_stats.max_abs_error == 0
                                                                         else math.inf)
            p_stats = dataclasses.replace(p_stats, tolerance_ratio=p_ratio, passed=bool(p_ratio <= 1.0),
                                          worst_tolerance=p_atol)
        checks: tuple[Check, ...] = ()
        power = None
        if side.members and f_scale is not None:
            t_rows = verdict.rows(r, key, valid)
            c_rows = verdict.rows(c, key, valid)
            mine = verdict.statistics(c_rows, t_rows)
            checks = verdict.make_checks(mine, side.members, floor_scale=f_scale, limits=k_of)
            if recipe:
                f0 = next(iter(ens.values())).get(key) if ens else flo.get(key)  # the floor run
                if f0 is None:
                    raise ValueError(f"{key}: the recipe check needs the floor run's {key} (floor=)")
                checks += (verdict.recipe_check_of(
                    verdict.recipe_distance(c_rows, verdict.rows(f0, key, valid), t_rows),
                    side.recipe, k_of["recipe"]),)
            power = verdict.power_of(*(side.rows or verdict.truth_rows(t_rows)), side.members[0], checks)
        # A NaN or inf in the candidate fails the output wherever it is, padded positions included.
        passed = (v_stats.passed and (not check_padded or p_stats is None or p_stats.passed)
                  and (p_stats is None or p_stats.nonfinite == 0) and all(k.passed for k in checks))
        if f_stats is not None and f_scale is not None:
            a, b = v_stats.max_abs_error, f_scale
            f_ratio = (a / b) if b > 0 else (1.0 if a == 0 else (math.nan if math.isnan(a) else math.inf))
            a, b = v_stats.rms_error, f_stats.rms_error
            rms_ratio = (a / b) if b > 0 else (1.0 if a == 0 else (math.nan if math.isnan(a) else math.inf))
        return Entry(key, stage, layer, tuple(r.shape), axes(key, r.ndim), v_stats, p_stats, passed,
                     f_stats, f_ratio, f_scale, rms_ratio, k_atol, k_rtol, p_scale if floor_ratio is not None
                     else None, checks, power)

    # Outputs are independent, and NumPy releases the GIL in the array passes: summarise them on
    # the cores' threads (each entry is computed exactly as in a loop; order is kept).
    workers = min(len(placed), runtime.THREADS)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bert_ref.compare") as pool:
            entries = list(pool.map(entry, placed))
    else:
        entries = [entry(p) for p in placed]
    return Report(tuple(entries), atol_spec, rtol_spec, bool(check_padded), reference_name, candidate_name,
                  floor_name if floor is not None or sides is not None else None, floor_ratio, precision,
                  tuple(notes))


def _largest(x: np.ndarray, where: np.ndarray) -> float:
    """The largest |x| where `where` (0 where nothing is selected)."""
    return float(np.max(np.abs(x), where=where, initial=0.0))


def judge(
    truth: Mapping[str, Any],
    candidate: Mapping[str, Any],
    ensemble: Mapping[str, Mapping[str, Any]],
    *,
    precision: str,
    padding_mask: Any = None,
    check_padded: bool = False,
    limits: Mapping[str, float] | None = None,
    candidate_name: str = "candidate",
    floor_name: str | None = None,
    notes: Sequence[str] = (),
) -> Report:
    """The verdict of a port in `precision`: `candidate` against the float64 `truth`, each output's
    statistics against the largest the `ensemble` reaches (name -> outputs, the floor first; see
    `bert_ref.oracle.ensemble` and `bert_ref.oracle.verdict`). Needs no model: the caller ran the
    truth and the ensemble (`bert_ref.oracle.run.compare_to_truth` does, for a model and inputs).

    Args:
        truth, candidate: output key -> array (our names; `flatten_outputs` shapes).
        ensemble: the runs of our legitimate variants in `precision`; the first is the floor.
        precision: "float16", "bfloat16", "tf32", "int8", "float32" or "float64".
        padding_mask: [B, S] (1 = real token), or None.
        check_padded: padded positions fail too (against the ensemble's error there).
        limits: K per statistic (default `verdict.LIMITS`).

    Returns:
        A `Report` whose entries carry `checks` (one `Check` per statistic) and `power`.
    """
    if not ensemble:
        raise ValueError("judge needs an ensemble of at least one run (the floor)")
    k = {**verdict.default_limits(), **(limits or {})}
    first = next(iter(ensemble))
    return compare(truth, candidate, padding_mask=padding_mask, check_padded=check_padded, ensemble=ensemble,
                   floor_ratio=k["max_abs"], limits=k, precision=precision, reference_name="float64 truth",
                   candidate_name=candidate_name, floor_name=floor_name or f"our {first} vs float64 truth",
                   notes=notes)

