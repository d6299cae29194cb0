"""The operations of a BERT encoder: plain NumPy math, in the order a learner meets them.

Each op is a short pure function of arrays — no configs, files, dtype policies, threads or in-place
tricks — that computes in the dtype of its floating inputs, with a shape comment. Shapes:
B = batch, S = sequence, H = hidden_dim, A = num_heads * key_dim, F = intermediate_dim,
h = num_heads, d = key_dim, V = vocabulary_size.

`bert_ref.encoder.forward` composes these ops into the model, step by named step; with
`plain=True` it runs them, and only them. `bert_ref.model.kernels` holds faster twins of the same
names (over threads, in cache-sized blocks, in place), each tested against the op here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from bert_ref import _erf_table

# The large finite negative number given to masked attention scores before the softmax (never
# -inf, so a fully masked row stays finite): keras' -1e9, and -3e4 for float16 scores (whose
# largest finite magnitude is 65504; -1e9 would round to -inf there).
MASK_NEGATIVE = -1e9
MASK_NEGATIVE_FLOAT16 = -3e4

_SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi)
_GELU_CUBIC = 0.044715
_INV_SQRT_2 = 0.7071067811865476  # 1 / sqrt(2)

# erf: per dtype, the polynomial coefficients [coefficient (highest power first), interval] of
# intervals of width 1/2 from 0, and the |x| from which erf(x) is ±1 to the dtype's precision.
ERF_TABLES: dict[np.dtype, tuple[np.ndarray, float]] = {
    np.dtype(np.float64): (np.array(_erf_table.F64, dtype=np.float64).T.copy(), 6.0),
    np.dtype(np.float32): (np.array(_erf_table.F32, dtype=np.float32).T.copy(), 4.0),
}


def embedding(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row lookup. [V, H], [B, S] int -> [B, S, H]. Ids must already be range-checked."""
    return np.take(table, ids, axis=0)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """Layer normalisation over the last axis. [..., H], [H], [H] -> [..., H]

    `(x - mean) / sqrt(var + epsilon) * gamma + beta`, with the biased variance, in the dtype of
    `x`; float16 and bfloat16 in float32 (rounded back): layer norm always runs in at least
    float32, as keras' does (see `bert_ref.model.precision`).
    """
    if is_half(x.dtype):
        return layer_norm(x.astype(np.float32), gamma, beta, epsilon).astype(x.dtype)
    centred = x - x.mean(axis=-1, keepdims=True)  # [..., H]
    var = np.einsum("...i,...i->...", centred, centred)[..., None] / x.shape[-1]  # [..., 1]
    return centred * (1 / np.sqrt(var + x.dtype.type(epsilon))) * gamma + beta


def dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, activation: str | None = None) -> np.ndarray:
    """Affine map, `x @ kernel + bias`, then `ACTIVATIONS[activation]` if one is named (as keras'
    `Dense(activation=...)`). [..., In], [In, Out], [Out] -> [..., Out]

    The leading axes are flattened so that the product is one [N, In] @ [In, Out] GEMM (NumPy
    would otherwise run one small GEMM per leading index, several times slower)."""
    y = (x.reshape(-1, x.shape[-1]) @ kernel + bias).reshape(*x.shape[:-1], kernel.shape[-1])  # [..., Out]
    return y if activation is None else ACTIVATIONS[activation](y)


def is_half(dtype: np.dtype) -> bool:
    """float16, or bfloat16 (from ml_dtypes, whose dtype kind is not "f")."""
    return (dtype.kind == "f" and dtype.itemsize == 2) or dtype.name == "bfloat16"


def work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an elementwise op computes in: float32/float64 as they are, half precision in
    float32 (rounded back afterwards), integers and bools in float64 (as NumPy's ufuncs do)."""
    return dtype if dtype in ERF_TABLES else np.dtype(np.float32 if is_half(dtype) else np.float64)


def elementwise(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """Make `fn` (written for float32/float64 arrays) accept any dtype and an optional `out=`.

    Half precision (float16, bfloat16) is computed in float32 and rounded back; integers and bools
    are computed in float64. `out` may have any layout and floating dtype; it is returned."""

    @functools.wraps(fn)
    def op(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x)
        y = fn(x.astype(work_dtype(x.dtype), copy=False))
        if is_half(x.dtype):
            y = y.astype(x.dtype)
        if out is None:
            return y
        out[...] = y
        return out

    return op


@elementwise
def erf(x: np.ndarray) -> np.ndarray:
    """The error function, `2/sqrt(pi) * integral_0^x exp(-t^2) dt`. [...] -> [...]

    NumPy has none, so: erf is odd, and on |x| in [0, X) it is a polynomial per interval of width
    1/2 (Chebyshev fits made in 50-digit arithmetic by `tools/fit/fit_erf.py`), evaluated by Horner's
    rule; beyond X it is ±1 to the dtype's precision (X = 6 in float64, 4 in float32).

    Accuracy against `math.erf` on [-10, 10]: <= 4.5e-16 in float64, <= 2.4e-7 in float32.
    """
    coefficients, limit = ERF_TABLES[x.dtype]  # [degree + 1, intervals]
    ax = np.abs(x)
    interval = np.fmin(np.floor(ax * 2), coefficients.shape[1] - 1)  # fmin: NaN gets a valid row
    t = ax * 4 - (interval * 2 + 1)  # 4 * (|x| - interval midpoint), in [-1, 1]
    index = interval.astype(np.intp)
    y = coefficients[0][index]
    for c in coefficients[1:]:  # Horner's rule, the coefficients looked up per element
        y = y * t + c[index]
    return np.copysign(np.where(ax >= limit, 1, y), x)


@elementwise
def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, `x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))` (HF `hidden_act: "gelu"`).

    [...] -> [...]. Halving last is exact, so this equals the textbook order bit for bit.
    """
    return x * (1 + erf(x * _INV_SQRT_2)) * 0.5


@elementwise
def gelu_approximate(x: np.ndarray) -> np.ndarray:
    """tanh-approximate GELU, keras-hub's BERT activation (HF `gelu_new` / `gelu_pytorch_tanh`).

    `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))`. [...] -> [...]
    The cubic is factored as `x * (c + c * 0.044715 * x * x)` (`x**3` is a slow generic power).
    """
    c = x.dtype.type(_SQRT_2_OVER_PI)
    inner = x * (x * x * (c * x.dtype.type(_GELU_CUBIC)) + c)  # sqrt(2/pi) * (x + 0.044715 x^3)
    return x * ((1 + np.tanh(inner)) * 0.5)


ACTIVATIONS = {"gelu": gelu, "gelu_approximate": gelu_approximate}


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the keys that gives masked keys exactly zero weight, as keras does.

    [B, h, S, S] scores, [B, 1, 1, S] bool mask (True = may attend) -> [B, h, S, S] probabilities.

    Masked scores become a large finite negative number (-1e9; -3e4 for float16 scores), never
    -inf, so a fully masked row stays finite; the final multiply by the mask then sets masked keys
    to exactly 0, so a fully padded row attends to nothing instead of uniformly to the padding.
    The row max is subtracted before `exp` for stability.
    """
    large = MASK_NEGATIVE_FLOAT16 if scores.dtype == np.float16 else MASK_NEGATIVE
    s = np.where(mask, scores, scores.dtype.type(large))  # [B, h, S, S]
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True) * mask


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """[B, S, h*d] -> [B, h, S, d] (a strided view; no copy)."""
    b, s, a = x.shape
    return x.reshape(b, s, num_heads, a // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B, h, S, d] -> [B, S, h*d] (a contiguous copy)."""
    b, h, s, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, s, h * d)


def attention_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """`(q / sqrt(d)) @ k.T`. [B, h, S, d], [B, h, S, d] -> [B, h, S, S]

    The scale is applied to the queries before the product, as keras does (HF scales the product;
    the two differ only in rounding)."""
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    return (q * scale) @ k.transpose(0, 1, 3, 2)


def attention_context(probs: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Each head's probability-weighted sum of values, heads merged. [B, h, S, S], [B, h, S, d] -> [B, S, h*d]"""
    return merge_heads(probs @ v)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray,
              keep_probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Masked scaled dot-product attention: the scores, their masked softmax, the context.

    [B, h, S, d] q, k, v, [B, 1, 1, S] bool mask -> (context [B, S, h*d], probabilities [B, h, S, S],
    or None unless `keep_probs`). Queries at padded positions still attend to the valid keys (their
    outputs exist, as in keras-hub and HF)."""
    probs = masked_softmax(attention_scores(q, k), mask)  # [B, h, S, S]
    return attention_context(probs, v), (probs if keep_probs else None)


def pooler(sequence: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """BERT pooler: `tanh(sequence[:, 0] @ kernel + bias)` (the [CLS] position). [B, S, H] -> [B, H]"""
    return np.tanh(dense(sequence[:, 0], kernel, bias))
