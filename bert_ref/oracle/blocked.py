"""The same statistics as `bert_ref.oracle.stats`, in cache-sized blocks of rows (fewer passes over
memory); checked field by field against the plain ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bert_ref.oracle.keys import flatten_outputs
from bert_ref.oracle.report import Stats
from bert_ref.oracle.stats import Elementwise, elementwise, error_stats

# ----------------------------------------------------------------------------------------------
# The same arithmetic in cache-sized blocks of rows
#
# `elementwise` + `error_stats` above are the definition. For the outputs `compare` meets (an array of
# at least 2 axes whose valid mask is constant along the last axis) `summaries` computes the same
# `Stats`, bit for bit: it runs over blocks of rows (the last axis) that stay in the cores' caches,
# computes each per-element value by the same float64 operations (one fused set of passes per block,
# instead of a dozen whole-array float64 temporaries), keeps per-row maxima, first positions and dot
# products, and combines the rows of each set (valid, padded). Maxima and first positions do not
# depend on the grouping; the two sums whose rounding does (the RMS error and the magnitude cut)
# are taken by the very same masked `np.mean` over the whole squared array as in `error_stats`.
# tests/test_compare.py checks the two against each other.

#: Elements per block of `summaries` (256 KiB per float64 temporary: the set fits a core's L2).
SUMMARY_BLOCK = 1 << 15

_F32_MAX = np.finfo(np.float32).max
_TINY = math.ulp(0.0)  # the smallest positive float64: `a >= _TINY` is `a > 0` for a >= 0


class Workspace:
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
    """Whether `summaries` can run blockwise: >= 2 axes, a non-empty last axis, and a valid mask
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


def _cast(x: np.ndarray, ws: Workspace, name: str) -> np.ndarray:
    """`x.astype(np.float64)`, into a reused buffer (or `x` itself when it already is)."""
    if x.dtype == np.float64:
        return x
    out = ws.get(name, x.size).reshape(x.shape)
    np.copyto(out, x, casting="unsafe")
    return out


def _plain_rows(out: _Rows, sl: slice, e: Elementwise, thr: np.ndarray, sq_err: np.ndarray) -> None:
    """Fill rows `sl` of `out` from the plain `elementwise` of those rows (blocks holding a non-finite
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
                thr: np.ndarray, abs_max: np.ndarray, sq_err: np.ndarray, ws: Workspace) -> None:
    """Rows `sl` ([m, n] blocks `ref`, `cand`) of `out`: the values of `elementwise`, reduced per row.
    Each value is the one `elementwise` computes, by the same float64 operations, written into
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
        _plain_rows(out, sl, elementwise(ref, cand, atol, rtol), thr, sq_err)
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
            if rtol == 0.0:  # (the floor-ratio mode) tol = |r| * 0 + atol is atol itself: |r| is finite here
                tol = np.full((m, 1), atol)
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


def _magnitudes(ref: np.ndarray, sq_mag: np.ndarray, ws: Workspace) -> np.ndarray:
    """Fill `sq_mag` ([rows, n]) with `elementwise`'s magnitude squared (|r|, 0 where r is not
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
    """`error_stats`'s `np.mean(x, where=select)`, `count` being the number of selected elements: the
    same masked sum NumPy's mean takes (hence the same rounding), divided by the count in float64
    as it does — without its extra pass that counts the mask."""
    where = np.ones(x.shape, bool) if select is None else np.broadcast_to(select, x.shape)
    return float(np.add.reduce(x, axis=None, where=where)) / count


def summaries(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float, valid: np.ndarray | None,
               padded: bool, ws: Workspace | None = None) -> tuple[Stats | None, Stats | None, float]:
    """`(error_stats(e, valid), error_stats(e, ~valid) if padded and valid is not None else None, biggest)` of
    `e = elementwise(ref, cand, atol, rtol)`, where `biggest` is the largest |ref| at valid elements
    (0 where none) — computed blockwise when `_fits_blocks`, bit-identical to the plain functions."""
    shape = ref.shape
    # C-contiguous sides only: `elementwise`'s float64 copies keep their side's memory order, and
    # the cosines' dot products (einsum) round differently over rows that are not contiguous.
    if not (_fits_blocks(shape, valid) and ref.flags.c_contiguous and cand.flags.c_contiguous):
        e = elementwise(ref, cand, atol, rtol)
        v = error_stats(e, valid)
        p = error_stats(e, ~valid) if padded and valid is not None else None
        r64 = np.abs(ref.astype(np.float64))
        biggest = float(np.broadcast_to(valid, shape).choose(0.0, r64).max()) if valid is not None else float(r64.max())
        return v, p, biggest
    ws = ws or Workspace()
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
    """`error_stats` of the rows `rsel` (None: all) from the per-row results."""
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
    one = elementwise(ref.reshape(rows, n)[row:row + 1], cand.reshape(rows, n)[row:row + 1], atol, rtol)
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


def as_flat(outputs: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"{what} must be a mapping of output keys to arrays (or forward's result), "
                        f"got {type(outputs).__name__}")
    return flatten_outputs(outputs)
