"""dtype policies: where values are stored, where they are computed, and where they are rounded.

A policy has keras' meaning: a *variable* dtype (how weights are stored) and a *compute* dtype
(how activations are held between layers).

| policy           | weights stored | activations held | math done in |
|------------------|----------------|------------------|--------------|
| float32 (None)   | float32        | float32          | float32      |
| float64          | float64        | float64          | float64      |
| float16          | float16        | float16          | float32      |
| bfloat16         | bfloat16       | bfloat16         | float32      |
| mixed_float16    | float32        | float16          | float32      |
| mixed_bfloat16   | float32        | bfloat16         | float32      |

For the half-precision policies every operation runs in float32 on values that were rounded to
the compute dtype, and its result is rounded back to the compute dtype at the points keras rounds
(the output of each keras layer): the embedding lookups and their sum, each dense layer's output
(q, k, v, attention output, FFN intermediate, FFN output, pooler), the attention scores and
probabilities, the attention context, the GELU output, each residual sum and each layer norm's
output. Weights are rounded to the compute dtype when used, except layer-norm gamma and beta,
which keras leaves in the variable dtype (so float32 under the mixed policies). Softmax and layer
norm therefore always run in at least float32 (float64 in the float64 policy); matmuls accumulate in float32, as
half-precision hardware does. Outputs are returned in the compute dtype.

bfloat16 needs the optional `ml_dtypes` package (`pip install "bert-ref[bf16]"`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

POLICY_NAMES = ("float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            'bfloat16 policies need the ml_dtypes package: pip install "bert-ref[bf16]"'
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


@dataclasses.dataclass(frozen=True)
class Policy:
    """A dtype policy. `work_dtype` is what the math runs in; `rounds` says whether activations are
    rounded to `compute_dtype` between operations (true only for the half-precision policies)."""

    name: str
    variable_dtype: np.dtype
    compute_dtype: np.dtype
    work_dtype: np.dtype

    @property
    def rounds(self) -> bool:
        return self.compute_dtype != self.work_dtype

    def round(self, x: np.ndarray) -> np.ndarray:
        """A rounding point: `x` (in `work_dtype`) rounded to `compute_dtype` and back.

        The identity (no copy) for float32 and float64."""
        if not self.rounds:
            return x
        return x.astype(self.compute_dtype).astype(self.work_dtype)

    def weight(self, w: np.ndarray) -> np.ndarray:
        """A stored weight as the math uses it: rounded to the compute dtype, held in `work_dtype`.

        No copy when the stored dtype already is the work dtype and no rounding is needed."""
        if self.rounds:
            w = np.asarray(w).astype(self.compute_dtype, copy=False)
        return np.asarray(w).astype(self.work_dtype, copy=False)

    def kernel(self, w: np.ndarray) -> np.ndarray:
        """A dense kernel ([in, out]: q/k/v, attention output, both FFN layers, pooler) as the math
        uses it. `prepare` calls it once per kernel. Default: `weight(w)`."""
        return self.weight(w)

    def dense_input(self, x: np.ndarray) -> np.ndarray:
        """The activation input of a dense layer as its GEMM uses it (the forward calls it on the
        input of q/k/v, attention output, FFN intermediate, FFN output and pooler). Default: `x`."""
        return x

    def matmul_input(self, x: np.ndarray) -> np.ndarray:
        """An operand of one of the two attention matmuls as it uses it (q and k for the scores,
        the probabilities and v for the context; q before its 1/sqrt(d) scale). Default: `x`."""
        return x

    @property
    def rounds_matmul_inputs(self) -> bool:
        """Whether `dense_input`/`matmul_input` change values. When true, the forward computes with
        the plain ops of `bert_ref.ops`: the fast paths of `bert_ref.kernels` do not apply them."""
        return False

    def norm_weight(self, w: np.ndarray) -> np.ndarray:
        """A layer-norm gamma/beta as the math uses it. keras does not autocast these: under the
        mixed policies they stay in float32 (the variable dtype); no rounding to the compute dtype."""
        return np.asarray(w).astype(self.work_dtype, copy=False)

    def output(self, x: np.ndarray) -> np.ndarray:
        """A final output, in the compute dtype."""
        return x.astype(self.compute_dtype, copy=False)


def get_policy(dtype: "str | Policy | np.dtype | type | None" = None) -> Policy:
    """Resolve a dtype argument (None, a policy name, a NumPy dtype, or a Policy) to a Policy."""
    if isinstance(dtype, Policy):
        return dtype
    if dtype is None:
        name = "float32"
    elif isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype must be None, a policy name {POLICY_NAMES} or a NumPy dtype, got {dtype!r}") from None
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown dtype policy {dtype!r}; expected one of {POLICY_NAMES} (or None for float32)")
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    if name == "float32":
        return Policy(name, f32, f32, f32)
    if name == "float64":
        return Policy(name, f64, f64, f64)
    half = _bfloat16() if name.endswith("bfloat16") else np.dtype(np.float16)
    variable = f32 if name.startswith("mixed_") else half
    return Policy(name, variable, half, f32)
