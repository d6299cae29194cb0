"""Solutions to docs/exercises.md (the functions of bert_ref/learn/workbook.py, filled in).

    python -m bert_ref.learn.exercises all --solutions

Read these after trying: each is a few lines of NumPy and `bert_ref.ops`.
"""

from __future__ import annotations

import math

import numpy as np

from bert_ref import ops


def self_attention(x: np.ndarray, p: dict, num_heads: int, mask: np.ndarray) -> np.ndarray:
    """Multi-head self-attention with its output projection, from `ops`. [B, S, H] -> [B, S, H]"""
    q, k, v = (ops.split_heads(ops.dense(x, *p[n]), num_heads) for n in ("query", "key", "value"))  # [B, h, S, d]
    return ops.dense(ops.attention(q, k, v, mask, keep_probs=False)[0], *p["output"])


def feed_forward(x: np.ndarray, p: dict, activation: str) -> np.ndarray:
    """The position-wise feed-forward, `act(x @ w1 + b1) @ w2 + b2`. [B, S, H] -> [B, S, F] -> [B, S, H]"""
    return ops.dense(ops.dense(x, p["ffn_kernel1"], p["ffn_bias1"], activation), p["ffn_kernel2"], p["ffn_bias2"])

# ---- 1. The 1/sqrt(d) scale and attention entropy


def attention_probs(q: np.ndarray, k: np.ndarray, mask: np.ndarray, scaled: bool = True) -> np.ndarray:
    scores = q @ k.transpose(0, 1, 3, 2)  # [B, h, S, d] @ [B, h, d, S] -> [B, h, S, S]
    if scaled:
        scores = scores / np.sqrt(q.shape[-1])
    return ops.masked_softmax(scores, mask)


def attention_entropy(probs: np.ndarray) -> np.ndarray:
    logs = np.log(np.where(probs > 0, probs, 1.0))  # 0 log 0 = 0: log 1 where p = 0
    return -(probs * logs).sum(axis=-1)


# ---- 2. Post-LN and pre-LN


def post_ln_layer(x: np.ndarray, p: dict, num_heads: int, mask: np.ndarray, activation: str,
                  epsilon: float) -> np.ndarray:
    attention = self_attention(x, p, num_heads, mask)
    y = ops.layer_norm(x + attention, p["attention_norm_gamma"], p["attention_norm_beta"], epsilon)
    ffn = feed_forward(y, p, activation)
    return ops.layer_norm(y + ffn, p["ffn_norm_gamma"], p["ffn_norm_beta"], epsilon)


def pre_ln_layer(x: np.ndarray, p: dict, num_heads: int, mask: np.ndarray, activation: str,
                 epsilon: float) -> np.ndarray:
    h = ops.layer_norm(x, p["attention_norm_gamma"], p["attention_norm_beta"], epsilon)
    y = x + self_attention(h, p, num_heads, mask)
    h = ops.layer_norm(y, p["ffn_norm_gamma"], p["ffn_norm_beta"], epsilon)
    return y + feed_forward(h, p, activation)


# ---- 3. Positional heads


def positional_score(probs: np.ndarray, offset: int) -> np.ndarray:
    s = probs.shape[-1]
    queries = np.arange(max(0, -offset), min(s, s - offset))  # the i with 0 <= i + offset < S
    return probs[:, queries, queries + offset].mean(axis=-1)


NEXT_TOKEN_HEAD: tuple[int, int] | None = (1, 8)


# ---- 4. Mean pooling


def mean_pool(sequence_output: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
    m = padding_mask[..., None].astype(sequence_output.dtype)  # [B, S, 1]
    mean = (sequence_output * m).sum(axis=1) / m.sum(axis=1)  # [B, H]
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


# ---- 5. Breaking the padding mask


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = np.where(mask, scores, -1e9)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True) * mask


def unmasked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- 6. Exact and tanh GELU


def gelu_exact(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


# ---- 7. The attention sink


def cls_self_weight(attention_probs: list[np.ndarray]) -> np.ndarray:
    return np.stack([p[:, 0, 0] for p in attention_probs])
