"""Your workbook for docs/exercises.md: fill in each function, then check it.

    python -m bert_ref.learn.exercises --new bert_workbook.py   # a copy of this file to edit
    python -m bert_ref.learn.exercises 1                        # checks exercise 1 in ./bert_workbook.py
    python -m bert_ref.learn.exercises all

Each check runs the real all-MiniLM-L6-v2 weights (float64 policy) on the walkthrough's sentence
pair and compares what your function returns against the encoder's own trace (or against
sentence-transformers' recorded vectors), then prints what the change does to the model. Use NumPy
and `bert_ref.ops`; the shapes are in each docstring (B batch, S sequence, H hidden, h heads,
d head size, L layers). The solutions are in bert_ref/learn/solutions.py: try first.
"""

from __future__ import annotations

import numpy as np

from bert_ref import ops  # noqa: F401  (the ops you will want: ops.dense, ops.layer_norm, ...)

# ---- 1. The 1/sqrt(d) scale and attention entropy


def attention_probs(q: np.ndarray, k: np.ndarray, mask: np.ndarray, scaled: bool = True) -> np.ndarray:
    """Attention probabilities from queries and keys. [B, h, S, d], [B, h, S, d], [B, 1, 1, S] bool -> [B, h, S, S]

    `softmax(q @ k^T / sqrt(d))` over the keys, where `mask` is True (`ops.masked_softmax` does
    the masking); with `scaled=False`, leave out the `1 / sqrt(d)`.
    """
    raise NotImplementedError("exercise 1: write attention_probs")


def attention_entropy(probs: np.ndarray) -> np.ndarray:
    """Each query row's entropy in nats, `-sum_j p_j log p_j` (0 log 0 = 0). [..., S] -> [...]"""
    raise NotImplementedError("exercise 1: write attention_entropy")


# ---- 2. Post-LN and pre-LN


def post_ln_layer(x: np.ndarray, p: dict, num_heads: int, mask: np.ndarray, activation: str,
                  epsilon: float) -> np.ndarray:
    """BERT's encoder layer, post-LN: normalise after each residual sum. [B, S, H] -> [B, S, H]

    `p` is one layer of `model.prepared_weights()["layers"]`: (kernel, bias) pairs "query", "key",
    "value", "output", and "attention_norm_gamma/beta", "ffn_kernel1/bias1", "ffn_kernel2/bias2",
    "ffn_norm_gamma/beta". Attention is `ops.split_heads`, `ops.dense` and `ops.attention`; the
    feed-forward is `ops.dense` twice, the first with the activation.
    """
    raise NotImplementedError("exercise 2: write post_ln_layer")


def pre_ln_layer(x: np.ndarray, p: dict, num_heads: int, mask: np.ndarray, activation: str,
                 epsilon: float) -> np.ndarray:
    """The same weights arranged pre-LN: normalise each sublayer's input, add its output to the
    un-normalised stream. [B, S, H] -> [B, S, H]  (attention norm first, then the feed-forward's)"""
    raise NotImplementedError("exercise 2: write pre_ln_layer")


# ---- 3. Positional heads


def positional_score(probs: np.ndarray, offset: int) -> np.ndarray:
    """How much each head attends `offset` positions away: the mean, over the queries i whose key
    i + offset exists, of probs[:, i, i + offset]. [h, S, S] -> [h]"""
    raise NotImplementedError("exercise 3: write positional_score")


#: The (layer, head) that attends most to the NEXT token (offset +1). Layer 0 head 2 is the
#: previous-token head (offset -1); find the next-token one with positional_score.
NEXT_TOKEN_HEAD: tuple[int, int] | None = None


# ---- 4. Mean pooling


def mean_pool(sequence_output: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence vectors: each row's mean over its real (unpadded) positions,
    scaled to unit L2 length. [B, S, H], [B, S] bool -> [B, H]"""
    raise NotImplementedError("exercise 4: write mean_pool")


# ---- 5. Breaking the padding mask


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the keys that gives masked keys exactly zero weight.
    [B, h, S, S], [B, 1, 1, S] bool (True = may attend) -> [B, h, S, S]"""
    raise NotImplementedError("exercise 5: write masked_softmax")


def unmasked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The broken one: a plain softmax over every key, `mask` ignored. [B, h, S, S], [B, 1, 1, S] -> [B, h, S, S]"""
    raise NotImplementedError("exercise 5: write unmasked_softmax")


# ---- 6. Exact and tanh GELU


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """`x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))`. [...] -> [...]  (`math.erf` is one number at a time)"""
    raise NotImplementedError("exercise 6: write gelu_exact")


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """`0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))`. [...] -> [...]"""
    raise NotImplementedError("exercise 6: write gelu_tanh")


# ---- 7. The attention sink


def cls_self_weight(attention_probs: list[np.ndarray]) -> np.ndarray:
    """The weight [CLS] (query 0) puts on itself (key 0), per layer and head. L arrays [h, S, S] -> [L, h]"""
    raise NotImplementedError("exercise 7: write cls_self_weight")
