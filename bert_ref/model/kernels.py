"""Fast paths for the ops of `bert_ref.ops`: the same math, arranged for speed.

Every function here has the name, the signature and the result of its twin in `bert_ref.ops` —
bit for bit, since each does the same floating-point operations on the same values in the same
order (tests/test_kernels.py checks each against its twin over hypothesis-drawn shapes and
dtypes) — with one exception: the float32 exact GELU uses another formula
(`_gelu_logit_block`), more accurate than the plain op's and within a stated, tested bound of it;
and `attention`, over right-padded rows, leaves out the padded keys (`_attention_valid_keys`),
which re-associates two sums (bound stated and tested). Otherwise what differs is only the
arrangement:

- elementwise chains (erf, both GELUs) run over blocks of `BLOCK` float32 elements (1 MiB), so that a block's
  temporaries stay in the CPU cache instead of streaming whole activations through memory once
  per step;
- blocks, and the rows of layer norm, softmax and bias adds, are spread over `THREADS` threads
  (NumPy's loops release the GIL, so disjoint chunks of one array run on several cores at once);
- they work in place: `layer_norm`, `masked_softmax` and the activations *overwrite their first
  argument* (when it is a C-contiguous float32/float64 array) and return it. `encoder.forward`
  passes them only intermediates it owns; call them on a copy otherwise.

`encoder.forward` composes these exactly as it composes the plain ops (one composition, `_encode`,
over either module), unless `plain=True` or the dtype policy rounds the matmul inputs
(`Policy.rounds_matmul_inputs`). Where nothing is rounded or recorded between two steps it calls
them as one op, in both modules: `attention` (scores, softmax, context) and `dense(..., activation)`
(here: bias and activation over cache-sized blocks, one pass over memory instead of two). The batch
split over threads is `bert_ref.model.runtime.in_batch_parts`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from bert_ref import ops
from bert_ref.model import activations
from bert_ref.model.runtime import parallel, threads
from bert_ref.ops import (  # unchanged: no faster form
    attention_scores,
    embedding,
    merge_heads,
    pooler,
    split_heads,
)

__all__ = [
    "ACTIVATIONS", "BLOCK", "attention_context", "attention_scores", "dense", "embedding", "erf", "gelu",
    "gelu_approximate", "layer_norm", "masked_softmax", "merge_heads", "pooler", "split_heads",
]

# Elementwise chains run over blocks of this many float32 elements (256 Ki: 1 MiB per array);
# float64 blocks hold half as many, the same bytes. Measured in the forward: 1 MiB blocks beat
# 256 KiB ones by 2-5% with the degree-10 GELU, and tie with the degree-6 one (docs/performance.md).
# The result does not depend on it.
BLOCK = 1 << 18


def _block_elements(dtype: np.dtype) -> int:
    """Elements per block for arrays of `dtype`: BLOCK float32 elements' worth of bytes."""
    return max(1, BLOCK * 4 // dtype.itemsize)

# ----------------------------------------------------------------------------------------------
# Elementwise: erf and the GELUs


def _in_blocks(block: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Apply `block(x_block, out_block)` to consecutive 1-D blocks of `_block_elements` elements, spread
    over THREADS threads. `x` and `out` have the same shape; `out` is C-contiguous (it may be `x`)."""
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    size = _block_elements(flat_out.dtype)

    def run(first: int, last: int) -> None:
        for start in range(first * size, min(last * size, flat_x.size), size):
            block(flat_x[start : start + size], flat_out[start : start + size])

    parallel(run, -(-flat_x.size // size), min_size=4)
    return out


def _elementwise(block: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray, out: np.ndarray | None,
                 in_place: bool) -> np.ndarray:
    """Apply a float32/float64 `block` to all of `x`, with the dtype rules of `ops.elementwise`.

    With `in_place`, a C-contiguous float32/float64 `x` is overwritten when `out` is None."""
    x = np.asarray(x)
    work = ops.work_dtype(x.dtype)
    if out is None and in_place and x.dtype == work and x.flags.c_contiguous and x.flags.writeable:
        out = x
    if out is None:
        out = np.empty(x.shape, x.dtype if ops.is_half(x.dtype) else work)
    if x.dtype == work and out.dtype == work and out.flags.c_contiguous:
        return _in_blocks(block, x, out)
    out[...] = _in_blocks(block, x.astype(work), np.empty(x.shape, work))
    return out


def _erf_block(x: np.ndarray, out: np.ndarray) -> None:
    """`ops.erf` of a 1-D block into `out` (not `x`), reusing one buffer for the coefficients."""
    dtype = x.dtype
    coefficients, limit = ops.ERF_TABLES[dtype]  # [degree + 1, intervals]
    ax = np.abs(x)
    interval = np.multiply(ax, dtype.type(2))
    np.floor(interval, out=interval)
    np.fmin(interval, dtype.type(coefficients.shape[1] - 1), out=interval)
    t = ax * dtype.type(4)
    t -= interval * dtype.type(2) + dtype.type(1)  # 4 * (|x| - midpoint), in [-1, 1]
    index = interval.astype(np.intp)
    coefficient = interval  # reused as the buffer for each looked-up coefficient
    np.take(coefficients[0], index, out=out, mode="clip")  # "clip": indices are in range; no buffering
    for k in range(1, coefficients.shape[0]):  # Horner: y = y * t + c_k
        out *= t
        np.take(coefficients[k], index, out=coefficient, mode="clip")
        out += coefficient
    out[ax >= limit] = 1
    np.copysign(out, x, out=out)


def _gelu_erf_block(x: np.ndarray, out: np.ndarray) -> None:
    """`ops.gelu` of a 1-D block into `out` (which may be `x`), bit for bit: the erf table."""
    y = np.empty_like(x)
    _erf_block(np.multiply(x, x.dtype.type(ops._INV_SQRT_2)), y)  # erf(x / sqrt(2))
    y += 1
    y *= x
    np.multiply(y, x.dtype.type(0.5), out=out)


# Exact GELU in float32 without the erf table: Phi(-w) = 1 / (1 + exp(w * Q(w^2))) for w = |x|,
# where w * Q(w^2) = logit(Phi(w)) (odd in w, so Q is a polynomial in w^2). Q, of degree 6 in
# u = min(w^2, 36), is the weighted minimax fit of `tools/fit/fit_gelu_logit.py` (which regenerates
# these numbers and checks them): against mpmath's `ncdf` at 40 digits, on 1500 Chebyshev nodes of u
# in [0, 36], each node weighted by w^2 * Phi(w) * Phi(-w) / max(w, 1), the factor by which an error
# in Q reaches the GELU relative to max(|x|, 1). Beyond |x| = 6, Phi(-|x|) < 1e-9 and the clipped u
# keeps it so. Coefficients lowest power first (float32).
_GELU_LOGIT_Q = np.array([
    1.5957705974578857, 0.07266412675380707, -6.348307942971587e-05, -0.00011120787530671805,
    8.025200258998666e-06, -2.7146086267748615e-07, 3.693326311449141e-09,
], np.float32)
_GELU_LOGIT_U_MAX = np.float32(36.0)


def _gelu_logit_block(x: np.ndarray, out: np.ndarray) -> None:
    """Exact GELU of a float32 1-D block into `out` (which may be `x`), in 21 float32 passes and
    one `exp` (the erf table costs eight gathers per element).

    `gelu(x) = x * Phi(x) = max(x, 0) - |x| * Phi(-|x|)`, and `Phi(-w) = 1 / (1 + exp(w * Q(w^2)))`
    (see `_GELU_LOGIT_Q`). Not bit-identical to `ops.gelu`: measured on 400001 float32 points of
    [-10, 10] against x * Phi(x) in float64 (tests/test_kernels.py), its error is at most 3.32e-7
    (ops.gelu: 4.61e-7), at most 9.57e-8 * max(|x|, 1) (ops.gelu: 1.06e-7), and 9.33e-8 where
    |gelu(x)| < 1e-3 (ops.gelu: 1.01e-7, from the cancellation in 1 + erf); it is within
    1.5e-7 * max(|x|, 1) of ops.gelu there.
    """
    c = _GELU_LOGIT_Q
    w = np.abs(x)
    np.minimum(w, np.float32(1e19), out=w)  # finite (inf / inf would be NaN below); NaN stays NaN
    u = np.multiply(w, w)
    np.minimum(u, _GELU_LOGIT_U_MAX, out=u)
    y = np.multiply(u, c[-1])
    y += c[-2]
    for k in range(len(c) - 3, -1, -1):  # Horner: y = Q(u)
        y *= u
        y += c[k]
    y *= w  # logit(Phi(w)) >= 0
    with np.errstate(over="ignore"):  # exp(y) = inf for w > 25: Phi(-w) = w / inf = 0, as it should
        np.exp(y, out=y)
    y += 1
    np.divide(w, y, out=y)  # |x| * Phi(-|x|)
    np.maximum(x, np.float32(0), out=out)
    out -= y


def _gelu_block(x: np.ndarray, out: np.ndarray) -> None:
    """`ops.gelu` of a 1-D block into `out` (which may be `x`): `_GELU_BLOCKS` by dtype."""
    _GELU_BLOCKS[x.dtype.type](x, out)


# float32: the logit form (within the bound stated there); float64: the erf table (bit for bit).
_GELU_BLOCKS: dict[type, Callable[[np.ndarray, np.ndarray], None]] = {
    np.float32: _gelu_logit_block, np.float64: _gelu_erf_block,
}


def _gelu_approximate_block(x: np.ndarray, out: np.ndarray) -> None:
    """`ops.gelu_approximate` of a 1-D block into `out` (which may be `x`), with one temporary."""
    c = x.dtype.type(ops._SQRT_2_OVER_PI)
    t = np.multiply(x, x)  # x^2
    t *= c * x.dtype.type(ops._GELU_CUBIC)
    t += c
    t *= x  # c * (x + 0.044715 * x^3)
    np.tanh(t, out=t)
    t += 1
    t *= x.dtype.type(0.5)
    np.multiply(x, t, out=out)


def erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`ops.erf`, in cache-sized blocks over threads. [...] -> [...] (does not overwrite `x`)."""
    return _elementwise(_erf_block, x, out, in_place=False)


def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`ops.gelu`, in blocks over threads; overwrites a float32/float64 `x`. [...] -> [...]"""
    return _elementwise(_gelu_block, x, out, in_place=True)


def gelu_approximate(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`ops.gelu_approximate`, in blocks over threads; overwrites a float32/float64 `x`. [...] -> [...]"""
    return _elementwise(_gelu_approximate_block, x, out, in_place=True)


ACTIVATIONS = {**activations.PORTS, "gelu": gelu, "gelu_approximate": gelu_approximate}


# ----------------------------------------------------------------------------------------------
# Row-wise: layer norm, dense's bias, masked softmax, attention context


def _owned(x: np.ndarray) -> bool:
    return x.dtype.kind == "f" and x.dtype.itemsize >= 4 and x.flags.c_contiguous and x.flags.writeable


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """`ops.layer_norm` over row chunks on THREADS threads, into `x`. [..., H], [H], [H] -> [..., H]"""
    if not _owned(x) or np.result_type(x, gamma, beta) != x.dtype:
        return ops.layer_norm(x, gamma, beta, epsilon)
    rows = x.reshape(-1, x.shape[-1])  # [N, H], a view: written in place
    eps, n = x.dtype.type(epsilon), x.dtype.type(x.shape[-1])

    def run(first: int, last: int) -> None:
        r = rows[first:last]
        r -= r.mean(axis=-1, keepdims=True)  # centred
        var = np.einsum("ij,ij->i", r, r)[:, None] / n
        r *= 1 / np.sqrt(var + eps)
        r *= gamma
        r += beta

    parallel(run, rows.shape[0], min_size=64)
    return x


def dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, activation: str | None = None) -> np.ndarray:
    """`ops.dense`, the bias added in place over row chunks on THREADS threads; with an `activation`,
    bias and activation applied together to one cache-sized block of rows at a time (one pass over
    memory instead of two). [..., In], [In, Out], [Out] -> [..., Out]

    The result owns its memory (it is not a view), so that NumPy may add the residual into it in
    place (its temporary elision: `dense(...) + x` of a result no one else holds)."""
    out = np.empty((*x.shape[:-1], kernel.shape[-1]), np.result_type(x, kernel))
    y = np.matmul(x.reshape(-1, x.shape[-1]), kernel, out=out.reshape(-1, kernel.shape[-1]))  # [N, Out]
    if np.result_type(y, bias) != y.dtype or y.dtype.type not in _GELU_BLOCKS:
        out = (y + bias).reshape(out.shape)
        return out if activation is None else ACTIVATIONS[activation](out)
    if activation is not None:
        _bias_activation(y, bias, activation)
    else:
        def add_bias(first: int, last: int) -> None:
            y[first:last] += bias

        parallel(add_bias, y.shape[0], min_size=64)
    return out


def _bias_activation(y: np.ndarray, bias: np.ndarray, activation: str) -> np.ndarray:
    """`ACTIVATIONS[activation](y + bias)` for a float32/float64 [N, F] GEMM output, in place, one
    cache-sized block of rows at a time."""
    fn = ACTIVATIONS[activation]  # the ports' forms (bert_ref.model.activations): their plain op, in place

    def plain(x: np.ndarray, out: np.ndarray) -> None:
        fn(x, out=out)

    blocks: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
        "gelu": _gelu_block, "gelu_approximate": _gelu_approximate_block}
    block = blocks.get(activation, plain)
    rows = max(1, _block_elements(y.dtype) // y.shape[1])

    def run(first: int, last: int) -> None:
        for start in range(first * rows, min(last * rows, y.shape[0]), rows):
            part = y[start : start + rows]
            part += bias
            flat = part.reshape(-1)
            block(flat, flat)

    parallel(run, -(-y.shape[0] // rows), min_size=4)
    return y


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`ops.masked_softmax` over batch (or head) chunks on THREADS threads, into `scores`, in one
    pass fewer. [B, h, S, S], [B, 1, 1, S] bool -> [B, h, S, S]

    The plain op's final multiply by the mask is left out: at a masked key of a row with any
    valid key, `exp(-1e9 - max)` already is exactly 0 (it underflows for any score above
    -1e9 + 745), so the multiply changes nothing. A row with no valid key (max = -1e9) would get
    1/S instead: those batch rows are set to 0 explicitly, as the plain op's multiply leaves them.
    """
    if not _owned(scores) or scores.ndim != 4:
        return ops.masked_softmax(scores, mask)
    large = scores.dtype.type(ops.MASK_NEGATIVE_FLOAT16 if scores.dtype == np.float16 else ops.MASK_NEGATIVE)
    mask = np.broadcast_to(mask, (scores.shape[0], 1, 1, scores.shape[3]))
    masked = ~mask
    empty = ~np.any(mask, axis=(1, 2, 3))  # [B]: batch rows with no valid key
    axis = 0 if scores.shape[0] >= threads() else 1  # split the batch, or the heads of a small batch

    def run(first: int, last: int) -> None:
        part = (slice(first, last),) if axis == 0 else (slice(None), slice(first, last))
        s = scores[part]
        np.copyto(s, large, where=masked[part[:1]])  # where(mask, s, large), in place
        s -= np.take_along_axis(s, s.argmax(axis=-1)[..., None], axis=-1)  # the row max (argmax: up to 2.6x faster)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)

    parallel(run, scores.shape[axis])
    scores[empty] = 0
    return scores


def attention_context(probs: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`ops.attention_context`, written by the matmul straight into [B, S, h, d] (no merge copy).

    [B, h, S, S], [B, h, S, d] -> [B, S, h*d]"""
    b, h, s, d = v.shape
    out = np.empty((b, s, h, d), np.result_type(probs, v))
    np.matmul(probs, v, out=out.transpose(0, 2, 1, 3))
    return out.reshape(b, s, h * d)


# ----------------------------------------------------------------------------------------------
# Attention: over the valid keys of right-padded rows


# Attention over the valid keys only when every padding mask row is a prefix (right padding):
# see `_attention_valid_keys`. False: always the full masked softmax (bit-identical to the steps).
VALID_KEYS = True


def _prefix_lengths(mask: np.ndarray) -> np.ndarray | None:
    """Per batch row, the number of valid keys, if every row of the [B, S] mask is True then False
    (right padding) and some row is padded; else None."""
    lengths = mask.sum(axis=1)  # [B]
    if mask.all() or not np.array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None]):  # (mask.all(): B = 0 too)
        return None
    return lengths


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Softmax attention of queries [h, m, d] over n keys and values [h, n, d], the context written
    into `out` [h, m, d] (a view); returns the probabilities [h, m, n]."""
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    scores = np.matmul(q * scale, k.transpose(0, 2, 1))  # [h, m, n]
    # The row max, gathered at its argmax: the same value, and NumPy's argmax along short rows
    # is up to 2.6x faster than its max.
    scores -= np.take_along_axis(scores, scores.argmax(axis=-1)[..., None], axis=-1)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    np.matmul(scores, v, out=out)  # [h, m, d]
    return scores


def _attention_valid_keys(q: np.ndarray, k: np.ndarray, v: np.ndarray, lengths: np.ndarray,
                          want_probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Masked attention for right-padded rows, computed over each row's n valid keys only.

    [B, h, S, d] x3, [B] -> context [B, S, h*d] (and the [B, h, S, S] probabilities, 0 at the
    padded keys, when `want_probs`). The masked keys' weights are exactly 0 in the full masked
    softmax, so leaving them out changes no term of the result, only the order of the roundings:
    the row sums and the context's dot products have n terms instead of S (zeros dropped), which
    can round differently (tests/test_kernels.py bounds it). No mask fill, and the scores, softmax
    and context work on S x n instead of S x S. A row with no valid key attends to nothing (0).
    """
    b, h, s, d = q.shape
    out = np.empty((b, s, h, d), np.result_type(q, v))
    probs = np.zeros((b, h, s, s), out.dtype) if want_probs else None
    for i, n in enumerate(lengths.tolist()):
        if n == 0:
            out[i] = 0
            continue
        scores = _attend(q[i], k[i, :, :n], v[i, :, :n], out[i].transpose(1, 0, 2))  # [h, S, n]; [S, h, d]
        if probs is not None:
            probs[i, :, :, :n] = scores
    return out.reshape(b, s, h * d), probs


@dataclasses.dataclass(frozen=True)
class Packed:
    """The key mask of packed records: the valid tokens of several right-padded rows concatenated
    along the sequence axis of one batch row ([1, T], T their total length), record i at positions
    `offsets[i]:offsets[i+1]`; each token attends to the tokens of its own record only
    (`encoder.forward_valid`)."""

    offsets: np.ndarray  # [n + 1] int
    width: int  # the padded batch's sequence length

    def __getitem__(self, index: object) -> Packed:
        """The key mask of any view (`mask[:, None, None, :]`): itself."""
        return self


def _attention_packed(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Packed) -> np.ndarray:
    """Attention of packed records (`Packed`): each record's queries over its own keys, exactly as
    `_attention_valid_keys` computes the valid queries of its row in the padded batch: its queries
    are placed in `width` rows (zeros after them), because a matmul's rows round alike only for
    matrices of the same shape (OpenBLAS picks its kernels by size). [1, h, T, d] x3 -> [1, T, h*d]"""
    _, h, t, d = q.shape
    out = np.empty((1, t, h, d), np.result_type(q, v))
    rows = np.zeros((h, mask.width, d), q.dtype)  # [h, W, d] one record's queries, padded
    context = np.empty((mask.width, h, d), out.dtype)  # [W, h, d]
    bounds = mask.offsets.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            rows[:, : b - a] = q[0, :, a:b]
            _attend(rows, k[0, :, a:b], v[0, :, a:b], context.transpose(1, 0, 2))
            out[0, a:b] = context[: b - a]
            rows[:, : b - a] = 0
    return out.reshape(1, t, h * d)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | Packed,
              keep_probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """`ops.attention`: over each row's valid keys only where the [B, 1, 1, S] mask is right
    padding (`_attention_valid_keys`, within its stated bound), else on the kernels above (bit for
    bit). [B, h, S, d] x3 -> context [B, S, h*d], probabilities [B, h, S, S] (None unless `keep_probs`).
    With a `Packed` mask, [1, h, T, d] packed records, each attending within itself (no probabilities)."""
    if isinstance(mask, Packed):
        return _attention_packed(q, k, v, mask), None
    lengths = _prefix_lengths(mask.reshape(mask.shape[0], mask.shape[-1])) if VALID_KEYS else None
    if lengths is not None:
        return _attention_valid_keys(q, k, v, lengths, keep_probs)
    probs = masked_softmax(attention_scores(q, k), mask)  # [B, h, S, S]
    return attention_context(probs, v), (probs if keep_probs else None)
