"""The statistics of a comparison, computed plainly over whole arrays: the definition that the
blocked summaries (`bert_ref.oracle.blocked`) are checked against.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from bert_ref.oracle.report import Stats

# ----------------------------------------------------------------------------------------------
# The arithmetic


@dataclasses.dataclass(frozen=True)
class Elementwise:
    """Per-element errors of one output, in float64: computed once, then summarised separately over
    the valid and the padded elements (`error_stats`)."""

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


def elementwise(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> Elementwise:
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
    return Elementwise(ref, cand, r, c, err, tol, ratio, rel, ulp, nonfinite, a)


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


def _cosines(e: Elementwise) -> np.ndarray:
    """Cosine similarity of candidate and reference along the last axis: [..., n] -> [...].
    Two zero vectors have cosine 1, one zero vector 0; a non-finite candidate value gives NaN."""
    dot = np.einsum("...i,...i->...", e.c, e.r)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        nc, nr = np.sqrt(np.einsum("...i,...i->...", e.c, e.c)), np.sqrt(np.einsum("...i,...i->...", e.r, e.r))
        cos = np.where((nc > 0) & (nr > 0), dot / np.where((nc > 0) & (nr > 0), nc * nr, 1.0),
                       np.where((nc == 0) & (nr == 0), 1.0, 0.0))
    bad = e.nonfinite.any(axis=-1) if e.nonfinite.ndim else e.nonfinite
    return np.where(bad, np.nan, np.clip(cos, -1.0, 1.0))


def error_stats(e: Elementwise, select: np.ndarray | None) -> Stats | None:
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
