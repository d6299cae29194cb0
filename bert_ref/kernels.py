"""Fast paths for the ops of `bert_ref.ops`: the same math, arranged for speed.

Every function here has the name, the signature and the result of its twin in `bert_ref.ops` —
bit for bit, since each does the same floating-point operations on the same values in the same
order (tests/test_kernels.py checks each against its twin over hypothesis-drawn shapes and
dtypes). What differs is only the arrangement:

- elementwise chains (erf, both GELUs) run over blocks of `BLOCK` elements, so that a block's
  temporaries stay in the CPU cache instead of streaming whole activations through memory once
  per step;
- blocks, and the rows of layer norm, softmax and bias adds, are spread over `THREADS` threads
  (NumPy's loops release the GIL, so disjoint chunks of one array run on several cores at once);
- they work in place: `layer_norm`, `masked_softmax` and the activations *overwrite their first
  argument* (when it is a C-contiguous float32/float64 array) and return it. `encoder.forward`
  passes them only intermediates it owns; call them on a copy otherwise.

The forward uses this module instead of `ops` unless the dtype policy rounds the matmul inputs
(`Policy.rounds_matmul_inputs`), where only the plain ops apply the rounding at the right places.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import ops
from .ops import (  # unchanged: no faster form
    attention_scores,
    embedding,
    merge_heads,
    pooler,
    split_heads,
)

__all__ = [
    "ACTIVATIONS", "BLOCK", "THREADS", "attention_context", "attention_scores", "dense", "embedding", "erf", "gelu",
    "gelu_approximate", "layer_norm", "masked_softmax", "merge_heads", "pooler", "split_heads",
]

# Elementwise chains run over blocks of this many elements (64 Ki: a float32 block and its few
# temporaries fit in a 1-2 MB L2 cache). The result does not depend on it.
BLOCK = 1 << 16

# Threads for the elementwise work: the cores this process may run on. Chunks are disjoint and
# each is computed exactly as one sequential loop would, so the results do not depend on THREADS.
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist (a task submitted to it would wait
    forever): start afresh with a new pool on first use."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def parallel(fn: Callable[[int, int], None], n: int, min_size: int = 1) -> None:
    """Call `fn(start, stop)` on up to THREADS contiguous slices of `range(n)`, concurrently.

    Runs in the caller's thread when one slice would do (n < 2 * min_size or THREADS == 1)."""
    parts = min(THREADS, n // max(min_size, 1))
    if parts <= 1:
        fn(0, n)
        return
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="bert_ref")
        pool = _POOL
    bounds = [n * i // parts for i in range(parts + 1)]
    for future in [pool.submit(fn, a, b) for a, b in itertools.pairwise(bounds)]:
        future.result()


# ----------------------------------------------------------------------------------------------
# Elementwise: erf and the GELUs


def _in_blocks(block: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Apply `block(x_block, out_block)` to consecutive 1-D blocks of `BLOCK` elements, spread
    over THREADS threads. `x` and `out` have the same shape; `out` is C-contiguous (it may be `x`)."""
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)

    def run(first: int, last: int) -> None:
        for start in range(first * BLOCK, min(last * BLOCK, flat_x.size), BLOCK):
            block(flat_x[start : start + BLOCK], flat_out[start : start + BLOCK])

    parallel(run, -(-flat_x.size // BLOCK), min_size=4)
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


def _gelu_block(x: np.ndarray, out: np.ndarray) -> None:
    """`ops.gelu` of a 1-D block into `out` (which may be `x`)."""
    y = np.empty_like(x)
    _erf_block(np.multiply(x, x.dtype.type(ops._INV_SQRT_2)), y)  # erf(x / sqrt(2))
    y += 1
    y *= x
    np.multiply(y, x.dtype.type(0.5), out=out)


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


ACTIVATIONS = {"gelu": gelu, "gelu_approximate": gelu_approximate}


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


def dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """`ops.dense`, the bias added in place over row chunks on THREADS threads. [..., In] -> [..., Out]"""
    y = np.matmul(x.reshape(-1, x.shape[-1]), kernel)  # [N, Out]
    if np.result_type(y, bias) != y.dtype:
        y = y + bias
    else:
        def add_bias(first: int, last: int) -> None:
            y[first:last] += bias

        parallel(add_bias, y.shape[0], min_size=64)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`ops.masked_softmax` over batch (or head) chunks on THREADS threads, into `scores`.

    [B, h, S, S], [B, 1, 1, S] bool -> [B, h, S, S]"""
    if not _owned(scores) or scores.ndim != 4:
        return ops.masked_softmax(scores, mask)
    large = scores.dtype.type(ops.MASK_NEGATIVE_FLOAT16 if scores.dtype == np.float16 else ops.MASK_NEGATIVE)
    mask = np.broadcast_to(mask, (scores.shape[0], 1, 1, scores.shape[3]))
    masked = ~mask
    axis = 0 if scores.shape[0] >= THREADS else 1  # split the batch, or the heads of a small batch

    def run(first: int, last: int) -> None:
        part = (slice(first, last),) if axis == 0 else (slice(None), slice(first, last))
        s = scores[part]
        np.copyto(s, large, where=masked[part[:1]])  # where(mask, s, large), in place
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        s *= mask[part[:1]]

    parallel(run, scores.shape[axis])
    return scores


def attention_context(probs: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`ops.attention_context`, written by the matmul straight into [B, S, h, d] (no merge copy).

    [B, h, S, S], [B, h, S, d] -> [B, S, h*d]"""
    b, h, s, d = v.shape
    out = np.empty((b, s, h, d), np.result_type(probs, v))
    np.matmul(probs, v, out=out.transpose(0, 2, 1, 3))
    return out.reshape(b, s, h * d)
