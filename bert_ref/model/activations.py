"""The GELU forms ports compute instead of BERT's, registered in `bert_ref.ops.ACTIVATIONS`.

`BertConfig.activation` may name them, so that a port that computes one can be judged against it
(`bert-ref compare --activation`), and `bert_ref.oracle.variants` tries them as mistakes:

- `gelu_sigmoid`: `x * sigmoid(1.702 x)` (Hugging Face `quick_gelu`);
- `gelu_approximate_f16_table`: the tanh form as ggml's CPU backend computes it (llama.cpp's BERT),
  read from a float16 table (`tests/test_ggml.py` checks the table against ggml's own).

Importing this module adds them to `bert_ref.ops.ACTIVATIONS`, the one registry of activations
(`bert_ref.model.config`, `bert_ref.model.kernels` and `bert_ref.model.precision` import it); the
learner's `bert_ref/ops.py` keeps BERT's two.
"""

from __future__ import annotations

import functools

import numpy as np

from bert_ref import ops

_SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi)


@ops.elementwise
def gelu_sigmoid(x: np.ndarray) -> np.ndarray:
    """The sigmoid approximation of GELU, `x * sigmoid(1.702 x)` (HF `quick_gelu`). [...] -> [...]"""
    with np.errstate(over="ignore"):  # exp overflows to inf for x < about -52: x / inf = -0
        return x / (1 + np.exp(x * x.dtype.type(-1.702)))


@functools.cache
def gelu_f16_table() -> np.ndarray:
    """ggml's `ggml_table_gelu_f16`: the tanh GELU of every float16 value, computed in float32 as
    ggml-cpu's compiled `ggml_gelu_f32` does (`0.5f*x*(1.0f + tanhf(SQRT_2_OVER_PI*x*(1.0f +
    GELU_COEF_A*x*x)))`, the `1 + a x x` fused into one FMA, `tanhf` correctly rounded) and rounded
    to float16. [65536] float32, indexed by the float16 bit pattern."""
    f = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)  # [65536]
    f32 = np.float32
    with np.errstate(all="ignore"):  # inf and NaN entries: never read (|x| >= 10 is handled apart)
        inner = (1 + (f32(0.044715) * f).astype(np.float64) * f).astype(f32)  # fma(a x, x, 1)
        t = np.tanh((f32(_SQRT_2_OVER_PI) * f * inner).astype(np.float64)).astype(f32)  # tanhf
        y = f32(0.5) * f * (f32(1) + t)
    return y.astype(np.float16).astype(np.float32)


@ops.elementwise
def gelu_approximate_f16_table(x: np.ndarray) -> np.ndarray:
    """The tanh GELU as ggml's CPU backend computes it for float32 (`ggml_vec_gelu_f32` with
    GGML_GELU_FP16, llama.cpp's BERT FFN): 0 for x <= -10, x for x >= 10, and otherwise `x` rounded
    to float32 and then float16 looks up `gelu_f16_table`. [...] -> [...]

    So the output is a float16 value: a step function of x with steps of one float16 ulp."""
    xf = x.astype(np.float32)
    y = gelu_f16_table()[xf.astype(np.float16).view(np.uint16)].astype(x.dtype)
    return np.where(xf <= -10, x.dtype.type(0), np.where(xf >= 10, x, y))


#: The ports' forms, by the name `BertConfig.activation` gives them.
PORTS = {"gelu_sigmoid": gelu_sigmoid, "gelu_approximate_f16_table": gelu_approximate_f16_table}
ops.ACTIVATIONS.update(PORTS)
