"""The operations of a BERT encoder, each a short pure NumPy function.

Nothing here knows about configs, files or dtype policies: every function takes arrays and returns
arrays, computing in the dtype of its (floating) inputs. Shape comments use
B = batch, S = sequence, H = hidden_dim, A = num_heads * key_dim, F = intermediate_dim,
h = num_heads, d = key_dim, V = vocabulary_size.

Some functions write into their input (`out=` / in-place ufuncs) to avoid temporaries; each says so.
Their readable form is given in the docstring.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from . import _erf_table

# The large finite negative number given to masked attention scores before the softmax (never
# -inf, so a fully masked row stays finite): keras' -1e9, and -3e4 for float16 scores (whose
# largest finite magnitude is 65504; -1e9 would round to -inf there).
MASK_NEGATIVE = -1e9
MASK_NEGATIVE_FLOAT16 = -3e4

_SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi)
_GELU_CUBIC = 0.044715
_INV_SQRT_2 = 0.7071067811865476  # 1 / sqrt(2)

# erf tables: rows are intervals of width 1/2 from 0, columns polynomial coefficients (highest
# power first) in t = 4 * (|x| - interval midpoint). Stored transposed ([coefficient, interval]) so
# each coefficient's values are contiguous for the per-element lookup.
_ERF_TABLES = {
    np.dtype(np.float64): (np.array(_erf_table.F64, dtype=np.float64).T.copy(), 6.0),
    np.dtype(np.float32): (np.array(_erf_table.F32, dtype=np.float32).T.copy(), 4.0),
}

# Elementwise chains (erf, the GELUs) run over blocks of this many elements, so that the
# temporaries of a block stay in the CPU cache instead of streaming whole activations through
# memory once per step. The result does not depend on it.
BLOCK = 1 << 16


# NumPy runs elementwise loops on one core but releases the GIL inside them, so independent
# chunks of one array can be processed by several threads at once. Chunks are disjoint and each
# is computed exactly as a sequential loop would, so the results do not depend on THREADS.
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


def _parallel(fn, n: int, min_size: int = 1) -> None:
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
    bounds = [n * i // parts for i in range(parts + 1)]
    for future in [_POOL.submit(fn, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
        future.result()


def _in_blocks(fn, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Apply the elementwise `fn(x_block, out_block)` to consecutive blocks of `BLOCK` elements
    (spread over THREADS threads; see `_parallel`).

    `x` and `out` have the same shape; `out` must be C-contiguous (it may be `x` itself)."""
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)

    def run(first: int, last: int) -> None:
        for start in range(first * BLOCK, min(last * BLOCK, flat_x.size), BLOCK):
            fn(flat_x[start : start + BLOCK], flat_out[start : start + BLOCK])

    _parallel(run, -(-flat_x.size // BLOCK), min_size=4)
    return out


def _is_half(dtype: np.dtype) -> bool:
    """float16, or bfloat16 (from ml_dtypes, whose dtype kind is not "f")."""
    return (dtype.kind == "f" and dtype.itemsize == 2) or dtype.name == "bfloat16"


def _elementwise(block: Callable, x: Any, out: np.ndarray | None, in_place: bool = True) -> np.ndarray:
    """Apply `block(x_block, out_block)` (float32 or float64 blocks) to all of `x`, into `out`.

    `x` in float32/float64 is computed in its own dtype; half precision (float16, bfloat16) in
    float32 and rounded back; integers and bools in float64 (as NumPy's ufuncs promote them).
    `out` (default: a new array of that result dtype) may be `x` itself when `in_place` (the
    block then reads and writes the same buffer), and may have any layout and float dtype."""
    x = np.asarray(x)
    half = _is_half(x.dtype)
    work = x.dtype if x.dtype in _ERF_TABLES else np.dtype(np.float32 if half else np.float64)
    if out is None:
        out = np.empty(x.shape, x.dtype if half else work)
    if x.dtype == work and out.dtype == work and out.flags.c_contiguous and (in_place or out is not x):
        return _in_blocks(block, x, out)
    out[...] = _in_blocks(block, x.astype(work), np.empty(x.shape, work))
    return out


def _erf_block(x: np.ndarray, out: np.ndarray) -> None:
    """erf of a 1-D block into `out` (see `erf`). `x` is float32 or float64; `out` is not `x`."""
    dtype = x.dtype
    table, limit = _ERF_TABLES[dtype]  # [coefficient, interval]
    ax = np.abs(x)
    # Interval index (fmin, not minimum, so NaN maps to a valid row and then propagates via t).
    interval = np.multiply(ax, dtype.type(2))
    np.floor(interval, out=interval)
    np.fmin(interval, dtype.type(table.shape[1] - 1), out=interval)
    t = ax * dtype.type(4)
    t -= interval * dtype.type(2) + dtype.type(1)  # 4 * (|x| - midpoint), in [-1, 1]
    index = interval.astype(np.intp)
    coefficient = interval  # reused as the buffer for each looked-up coefficient
    np.take(table[0], index, out=out, mode="clip")  # mode="clip": indices are in range; no buffering
    for k in range(1, table.shape[0]):  # Horner: y = y * t + c_k
        out *= t
        np.take(table[k], index, out=coefficient, mode="clip")
        out += coefficient
    out[ax >= limit] = 1
    np.copysign(out, x, out=out)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise. [...] -> [...], in the dtype of `x` (float32 or float64).

    `erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt`. NumPy has none, so: erf is odd, and on
    |x| in [0, X) it is a polynomial per interval of width 1/2 (Chebyshev fits made in 50-digit
    arithmetic by `tools/fit_erf.py`), evaluated by Horner's rule; beyond X it is ±1 to the dtype's
    precision (X = 6 in float64, 4 in float32). Readable form:

        interval = min(floor(2 * |x|), last)               # which polynomial
        t = 4 * |x| - (2 * interval + 1)                   # in [-1, 1] on the interval
        y = c[interval, 0]
        for k in 1..degree:  y = y * t + c[interval, k]    # Horner, coefficients looked up per element
        y = 1 where |x| >= X;  erf = copysign(y, x)

    It is evaluated in cache-sized blocks (`BLOCK`), reusing one buffer for the looked-up
    coefficients; the arithmetic (and so every bit of the result) is the readable form's.

    Accuracy against `math.erf` on [-10, 10]: <= 4.5e-16 in float64, <= 2.4e-7 in float32.
    Other dtypes: see `_elementwise` (half precision in float32, integers in float64).
    """
    return _elementwise(_erf_block, x, None, in_place=False)


def _gelu_block(x: np.ndarray, out: np.ndarray) -> None:
    """Exact GELU of a 1-D block into `out` (which may be `x`); see `gelu`."""
    y = np.empty_like(x)
    _erf_block(np.multiply(x, x.dtype.type(_INV_SQRT_2)), y)  # erf(x / sqrt(2))
    y += 1
    y *= x
    np.multiply(y, x.dtype.type(0.5), out=out)


def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Exact GELU, `0.5 * x * (1 + erf(x / sqrt(2)))` (Hugging Face `hidden_act: "gelu"`).

    [...] -> [...], same dtype as `x` (see `_elementwise` for dtypes other than float32/float64).
    Evaluated in cache-sized blocks; pass `out=x` to overwrite `x`. `(x * (1 + e)) * 0.5` equals
    `(0.5 * x) * (1 + e)` bit for bit (halving is exact).
    """
    return _elementwise(_gelu_block, x, out)


def _gelu_approximate_block(x: np.ndarray, out: np.ndarray) -> None:
    """tanh-approximate GELU of a 1-D block into `out` (which may be `x`); see `gelu_approximate`."""
    c = x.dtype.type(_SQRT_2_OVER_PI)
    t = np.multiply(x, x)  # x^2
    t *= c * x.dtype.type(_GELU_CUBIC)  # c * 0.044715 * x^2
    t += c  # c * (1 + 0.044715 * x^2)
    t *= x  # c * (x + 0.044715 * x^3)
    np.tanh(t, out=t)
    t += 1
    t *= x.dtype.type(0.5)
    np.multiply(x, t, out=out)


def gelu_approximate(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """tanh-approximate GELU, keras-hub's BERT activation (HF `gelu_new` / `gelu_pytorch_tanh`).

    Readable form: `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))`.
    [...] -> [...], same dtype as `x` (see `_elementwise` for dtypes other than float32/float64).
    Computed with one temporary and in-place ufuncs, in cache-sized blocks; pass `out=x` to
    overwrite `x`. `x*x*x` is used, never `x**3` (a slow generic power on float32).
    """
    return _elementwise(_gelu_approximate_block, x, out)


ACTIVATIONS = {"gelu": gelu, "gelu_approximate": gelu_approximate}


def embedding(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row lookup. [V, H], [B, S] int -> [B, S, H]. Ids must already be range-checked."""
    return np.take(table, ids, axis=0)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """Layer normalisation over the last axis. [..., H], [H], [H] -> [...,  H].

    `(x - mean) / sqrt(var + epsilon) * gamma + beta`, with the biased variance, computed in the
    dtype of `x`, and in float32 (rounded back) when `x` is float16 or bfloat16 — layer norm always
    runs in at least float32, as keras' does (see `bert_ref.precision`).
    """
    if _is_half(x.dtype):
        return layer_norm(x.astype(np.float32), gamma, beta, epsilon).astype(x.dtype)
    rows = x.reshape(-1, x.shape[-1])  # [N, H]
    out = np.empty(rows.shape, x.dtype)

    def run(first: int, last: int) -> None:  # rows first:last (spread over THREADS; see _parallel)
        r = rows[first:last]
        centred = np.subtract(r, r.mean(axis=-1, keepdims=True), out=out[first:last])
        var = np.einsum("ij,ij->i", centred, centred)[:, None] / x.dtype.type(x.shape[-1])
        centred *= 1 / np.sqrt(var + x.dtype.type(epsilon))
        centred *= gamma
        centred += beta

    _parallel(run, rows.shape[0], min_size=64)
    return out.reshape(x.shape)


def dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Affine map. [..., In], [In, Out], [Out] -> [..., Out]: `x @ kernel + bias`.

    The leading axes are flattened so the product is one [N, In] @ [In, Out] GEMM (NumPy would
    otherwise run one smaller GEMM per leading index)."""
    y = np.matmul(x.reshape(-1, x.shape[-1]), kernel)  # [N, Out]

    def add_bias(first: int, last: int) -> None:  # rows first:last (spread over THREADS)
        y[first:last] += bias

    _parallel(add_bias, y.shape[0], min_size=64)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the last axis that gives masked keys exactly zero weight. Overwrites `scores`.

    [B, h, S, S] scores, [B, 1, 1, S] bool mask (True = may attend) -> [B, h, S, S] probabilities.

    Readable form, as keras does it: `p = softmax(where(mask, scores, -1e9)); p = p * mask`
    (-3e4 for float16 scores, where -1e9 would round to -inf). The masked value is a large finite
    negative number, never -inf, so the result stays finite even when a whole row is masked; the
    final multiply then sets masked keys to exactly 0, so a fully padded row attends to nothing
    (all zeros) instead of uniformly to the padding. The max is subtracted before `exp` for
    stability. Batch rows are spread over THREADS threads.
    """
    large = scores.dtype.type(MASK_NEGATIVE_FLOAT16 if scores.dtype == np.float16 else MASK_NEGATIVE)
    masked = ~mask  # [B, 1, 1, S]
    # Split along the batch axis, or along the heads when the batch is smaller than THREADS.
    axis = 0 if scores.shape[0] >= THREADS else 1

    def run(first: int, last: int) -> None:
        part = (slice(first, last),) if axis == 0 else (slice(None), slice(first, last))
        s, m = scores[part], mask[part[:1]]
        np.copyto(s, large, where=masked[part[:1]])  # where(mask, s, large), in place
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        s *= m

    _parallel(run, scores.shape[axis])
    return scores


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """[B, S, h*d] -> [B, h, S, d] (a strided view; no copy)."""
    b, s, a = x.shape
    return x.reshape(b, s, num_heads, a // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B, h, S, d] -> [B, S, h*d] (a contiguous copy)."""
    b, h, s, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, s, h * d)


def attention_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """[B, h, S, d], [B, h, S, d] -> [B, h, S, S]: `(q / sqrt(d)) @ k.T`.

    The scale is applied to the queries before the product, as keras does (HF scales the product;
    the two differ only in rounding)."""
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    return np.matmul(q * scale, k.transpose(0, 1, 3, 2))


def no_hook(name: str, x: np.ndarray) -> np.ndarray:
    """The default hook: observe nothing, change nothing."""
    return x


def multi_head_attention(x, query, key, value, output, num_heads, mask, hook=no_hook):
    """Masked multi-head self-attention. [B, S, H] -> [B, S, H].

    `query`, `key`, `value` are (kernel [H, A], bias [A]) pairs, `output` is (kernel [A, H],
    bias [H]). Readable form, per head j (columns j*d:(j+1)*d):
        q, k, v = x @ Wq + bq, x @ Wk + bk, x @ Wv + bv          # [B, S, A] each
        p = masked_softmax(q_j @ k_j.T / sqrt(d), mask)           # [B, S, S]
        context_j = p @ v_j                                       # [B, S, d]
        out = concat_j(context_j) @ Wo + bo                       # [B, S, H]
    The heads are strided views of q, k, v (no copies). `mask` is [B, 1, 1, S] bool over keys:
    queries at padded positions still attend to the valid keys (their outputs exist, as in
    keras-hub and HF).

    `hook(name, array) -> array` is called on each named intermediate — "query", "key", "value",
    "attention_scores" (scaled, before the mask), "attention_probs", "attention_context",
    "attention_output" — and its result is used from then on (the encoder uses it to round to a
    half-precision compute dtype, to record a trace, and to keep the attention probabilities
    [B, h, S, S] when they are asked for).
    """
    q = split_heads(hook("query", dense(x, *query)), num_heads)  # [B, h, S, d]
    k = split_heads(hook("key", dense(x, *key)), num_heads)
    v = split_heads(hook("value", dense(x, *value)), num_heads)
    scores = hook("attention_scores", attention_scores(q, k))  # [B, h, S, S]
    probs = hook("attention_probs", masked_softmax(scores, mask))  # [B, h, S, S]
    context = hook("attention_context", merge_heads(np.matmul(probs, v)))  # [B, S, A]
    del q, k, v, scores, probs  # free them before the output projection allocates
    return hook("attention_output", dense(context, *output))


def feed_forward(x, w1, b1, w2, b2, activation, hook=no_hook):
    """Position-wise feed-forward. [B, S, H] -> [B, S, H]: `act(x @ w1 + b1) @ w2 + b2`.

    Hook points: "feedforward_intermediate" (before the activation), "feedforward_activation",
    "feedforward_output"."""
    inner = hook("feedforward_intermediate", dense(x, w1, b1))  # [B, S, F]
    inner = ACTIVATIONS[activation](inner, out=inner)  # in place: `inner` is ours
    inner = hook("feedforward_activation", inner)
    return hook("feedforward_output", dense(inner, w2, b2))


def encoder_layer(x, params, num_heads, mask, activation, epsilon, hook=no_hook):
    """One post-LN transformer encoder layer (BERT's). [B, S, H] -> [B, S, H].

    Readable form:
        y = layer_norm(x + self_attention(x))
        out = layer_norm(y + feed_forward(y))
    `params` holds (kernel, bias) pairs "query", "key", "value", "output", and arrays
    "attention_norm_gamma/beta", "ffn_kernel1/bias1", "ffn_kernel2/bias2", "ffn_norm_gamma/beta".
    Extra hook points: "attention_residual", "self_attention_layer_norm", "feedforward_residual",
    "feedforward_layer_norm" (the layer's output).
    """
    p = params
    attn = multi_head_attention(x, p["query"], p["key"], p["value"], p["output"], num_heads, mask, hook)
    attn += x
    attn = hook("attention_residual", attn)
    y = hook("self_attention_layer_norm", layer_norm(attn, p["attention_norm_gamma"], p["attention_norm_beta"], epsilon))
    del attn  # free the residual before the feed-forward allocates its [B, S, F] activation
    ffn = feed_forward(y, p["ffn_kernel1"], p["ffn_bias1"], p["ffn_kernel2"], p["ffn_bias2"], activation, hook)
    ffn += y
    ffn = hook("feedforward_residual", ffn)
    return hook("feedforward_layer_norm", layer_norm(ffn, p["ffn_norm_gamma"], p["ffn_norm_beta"], epsilon))


def pooler(sequence: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """BERT pooler. [B, S, H] -> [B, H]: `tanh(sequence[:, 0] @ kernel + bias)` (the [CLS] position)."""
    return np.tanh(dense(sequence[:, 0, :], kernel, bias))
