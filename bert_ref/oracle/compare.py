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
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bert_ref.model import runtime
from bert_ref.model.precision import UNIT_ROUNDOFF
from bert_ref.oracle.blocked import Workspace, as_flat, summaries
from bert_ref.oracle.candidates import check_output_dtype
from bert_ref.oracle.keys import axes, placement, valid_mask
from bert_ref.oracle.report import Entry, Report, Stats
from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL, parse_tolerance, tolerance_for

__all__ = ["compare"]

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
            "float64"): labels the floor column and sets the smallest floor (its unit roundoff in
            `bert_ref.model.precision.TABLE`).
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
    ref = as_flat(reference, "reference")
    cand = as_flat(candidate, "candidate")
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
    if floor_ratio is not None:
        absent = [k for _, k in placed if k not in flo or k not in flo_ref]
        if absent:
            raise ValueError(f"the floor-ratio mode needs a floor for every output; {floor_name} has no "
                             f"{', '.join(absent)}")
    u = UNIT_ROUNDOFF[precision or "float32"]
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
        f_stats = f_ratio = f_scale = rms_ratio = None
        if key in flo and key in flo_ref:
            f, fr = np.asarray(flo[key]), np.asarray(flo_ref[key])
            if f.shape != r.shape or fr.shape != r.shape:
                raise ValueError(f"{key}: {floor_name} outputs have shapes {f.shape} and {fr.shape}, "
                                 f"{reference_name} has shape {r.shape}")
            f_stats, _, biggest = summaries(fr, f, 0.0, 0.0, valid, False, _workspace())
            if f_stats is not None:
                f_scale = max(f_stats.max_abs_error, u * biggest)
        if floor_ratio is not None:
            k_atol, k_rtol = (floor_ratio * f_scale if f_scale is not None else 0.0), 0.0
        else:
            k_atol = tolerance_for(atol_spec, key, DEFAULT_ATOL)
            k_rtol = tolerance_for(rtol_spec, key, DEFAULT_RTOL)
        v_stats, p_stats, _ = summaries(r, c, k_atol, k_rtol, valid, True, _workspace())
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
        return Entry(key, stage, layer, tuple(r.shape), axes(key, r.ndim), v_stats, p_stats, passed,
                             f_stats, f_ratio, f_scale, rms_ratio, k_atol, k_rtol)

    # Outputs are independent, and NumPy releases the GIL in the array passes: summarise them on
    # the cores' threads (each entry is computed exactly as in a loop; order is kept).
    workers = min(len(placed), runtime.THREADS)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bert_ref.compare") as pool:
            entries = list(pool.map(entry, placed))
    else:
        entries = [entry(p) for p in placed]
    return Report(tuple(entries), atol_spec, rtol_spec, bool(check_padded), reference_name, candidate_name,
                  floor_name if floor is not None else None, floor_ratio, precision, tuple(notes))
