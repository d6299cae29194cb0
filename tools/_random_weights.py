"""The distribution every golden tool draws its random weights from, by kind of weight.

Every tensor is random — layer-norm parameters and biases too — so a mis-mapped tensor cannot
hide in a golden, and the scales keep activations O(1) so GELU and tanh are exercised away from 0:

    gamma ~ 1 + 0.1 N    beta, bias ~ 0.1 N    embeddings ~ 0.5 N    kernel ~ N / sqrt(shape[0])
"""

from __future__ import annotations

import numpy as np


def random_weight(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float32 array of `shape` for a weight whose name ends in `kind`."""
    if kind == "gamma":
        value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif kind in ("beta", "bias"):
        value = 0.1 * rng.standard_normal(shape)
    elif kind == "embeddings":
        value = 0.5 * rng.standard_normal(shape)
    elif kind == "kernel":  # scaled by fan-in (the first axis) so activations stay O(1)
        value = rng.standard_normal(shape) / np.sqrt(shape[0])
    else:  # a new weight kind must be given a distribution on purpose
        raise ValueError(f"no distribution for a weight of kind {kind!r}")
    return value.astype(np.float32)
