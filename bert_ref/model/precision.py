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

Two more policies emulate what accelerators do to the *inputs of matrix products*, everything
else staying float32:

* **tf32** — the A100/H100 tensor-core mode PyTorch uses for float32 matmuls when
  `torch.backends.cuda.matmul.allow_tf32` is on: both operands of every matrix product (the dense
  kernels, the activations entering each dense layer, and q, k, probabilities and v in the two
  attention products) are rounded to TF32 — float32 with a 10-bit mantissa, round-to-nearest-even
  on the float32 bit pattern — and products accumulate in float32 (`round_to_tf32`).
* **int8** — dynamic quantisation as `torch.ao.quantization.quantize_dynamic` does to each
  `Linear`: kernels are quantised symmetrically per tensor (scale = max|w| / 127, integers in
  [-127, 127]); the input of each dense layer is quantised per call with scale = max|x| / 127 over
  the whole [B, S, H] tensor (padded positions included, as torch does); the attention products,
  softmax, layer norm and GELU stay float32 (`quantize_symmetric`). The values are de-quantised
  and multiplied in float32 ("fake quantisation"): float32 accumulation of products of int8
  values differs from int32 accumulation only by float32 rounding (relative 6e-8 per addition),
  far below the int8 step (relative 4e-3). One difference from torch:
  torch quantises activations *asymmetrically* to uint8 with `reduce_range` on x86 (7 bits: 128
  levels over [min(x, 0), max(x, 0)], step (max - min) / 127), where we use 255 symmetric levels
  (step max|x| / 127). For activations spread over both signs torch's step is up to twice ours;
  for one-sided ones (the FFN output's input, after GELU, is nearly so) the two are about equal.
  The int8 floor is therefore of the size of torch's error, up to a factor 2, not equal to it
  (measured on all-MiniLM-L6-v2: torch's port is 1.2-1.7x our floor).

Six more emulate llama.cpp's CPU backend (ggml) running a GGUF in a **block-quantised format**,
`q8_0`, `q4_0`, `q4_1`, `q5_0` or `q5_1` (`bert_ref.model.ggml` has the formats and the ggml
source each rounding follows; `GGMLPolicy`), and `ggml_f16` one in F16 (`convert_hf_to_gguf.py
--outtype f16` or `llama-quantize ... F16`: every kernel and the token table stored float16, and
every dense input rounded to float16 before the product, ggml's `vec_dot_type` for F16, with
float32 accumulation), everything else float32:

* every dense kernel is stored in the format, in blocks of 32 along its input axis with float16
  scales (and minimums for q4_1 / q5_1), as `llama-quantize` writes it (a kernel whose input
  width is not a multiple of 32 is stored F16 instead, as llama-quantize falls back, and its
  product rounds the input to float16, as ggml's F16 matmul does; the same for the token table);
* every dense layer quantises its input to q8_0 (q8_1 for q4_1 / q5_1) blocks before the product,
  as ggml's matmul does (`vec_dot_type`), and forms the products per block as ggml does;
* the token embeddings are stored q8_0 and read back by `get_rows` (what `llama-quantize` keeps for
  a hidden size that is not a multiple of 256, such as MiniLM's 384; for 768 it picks q6_K, which
  is not emulated); position and segment embeddings, biases and layer norms stay float32;
* the tanh GELU (`gelu_approximate`) comes from ggml's float16 table
  (`bert_ref.model.activations.gelu_approximate_f16_table`); the exact GELU is float32, as ggml's
  `gelu_erf`;
* layer norm, softmax and the two attention products are float32, as in llama.cpp's attention
  without flash attention (K and V are not cached for an encoder).

Not emulated: the order of ggml's float32 additions (relative 1e-7, against 4e-3 for a q8_0 step);
llama.cpp's flash attention (its default "auto" on the CPU casts K and V to float16 and, for few
queries, accumulates in float16: run llama.cpp with flash attention off to compare); the embedding
sum's order (llama.cpp adds the first token-type row to the token embedding, then the position:
float32 rounding only); importance-matrix quantisation; and the K-quants (q6_K and the others).

bfloat16 needs the optional `ml_dtypes` package (`pip install "bert-ref[bf16]"`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bert_ref.model import (
    activations,  # noqa: F401 - registers the ports' GELU forms in ops.ACTIVATIONS
    ggml,
)


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
        """A rounding point: `x` (in `work_dtype`) rounded to `compute_dtype` and back (bit for bit
        `x.astype(compute_dtype).astype(work_dtype)`, faster: `runtime.round_through`).

        The identity (no copy) for float32 and float64."""
        if not self.rounds:
            return x
        from bert_ref.model.runtime import round_through

        x = np.asarray(x)
        if x.dtype != self.work_dtype:
            return x.astype(self.compute_dtype).astype(self.work_dtype)
        return round_through(x, self.compute_dtype)

    def round_at(self, name: str, x: np.ndarray) -> np.ndarray:
        """The rounding point of the named step `name` (`encoder.forward`'s step names, plus
        "embeddings/token+position"). The same `round` at every step here; the legitimate variants
        of a precision that `bert_ref.oracle.ensemble` runs round differently at some steps."""
        return self.round(x)

    def ops(self, f: Any) -> Any:
        """The ops the forward composes, given `f` (`bert_ref.ops` or `bert_ref.model.kernels`): `f`
        itself here; the ensemble's accumulation variants (`bert_ref.oracle.ensemble`) wrap it to sum
        their matrix products otherwise, and the diagnosis' variants (`bert_ref.oracle.variants`)
        replace some ops with a port's mistake."""
        return f

    def embedding_table(self, name: str, w: np.ndarray) -> np.ndarray:
        """The embedding table `name` (its weight path: "token_embedding/embeddings",
        "position_embedding/embeddings" or "segment_embedding/embeddings") as the lookups use it: a
        weight like the rest here; the int8 recipes that quantise the lookups (`bert_ref.oracle.int8`)
        round every table, the ggml policies the token table (a GGUF stores it quantised)."""
        return self.weight(w)

    def weight(self, w: np.ndarray) -> np.ndarray:
        """A stored weight as the math uses it: rounded to the compute dtype, held in `work_dtype`.

        No copy when the stored dtype already is the work dtype and no rounding is needed."""
        from bert_ref.model.runtime import astype, round_through  # the same casts, over threads

        if self.rounds:
            w = np.asarray(w)
            w = round_through(w, self.compute_dtype) if w.dtype in (np.float32, np.float64) \
                else astype(w, self.compute_dtype)
        return astype(w, self.work_dtype)

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
        the plain ops of `bert_ref.ops`: the fast paths of `bert_ref.model.kernels` do not apply them."""
        return False

    def activation(self, name: str) -> str:
        """The activation the policy computes for the config's `name` (a key of `ops.ACTIVATIONS`,
        which `bert_ref.model.activations` extends with the ports' forms). Default: `name`."""
        return name

    def norm_weight(self, w: np.ndarray) -> np.ndarray:
        """A layer-norm gamma/beta as the math uses it. keras does not autocast these: under the
        mixed policies they stay in float32 (the variable dtype); no rounding to the compute dtype."""
        return np.asarray(w).astype(self.work_dtype, copy=False)

    def output(self, x: np.ndarray) -> np.ndarray:
        """A final output, in the compute dtype."""
        return x.astype(self.compute_dtype, copy=False)


def round_to_tf32(x: np.ndarray) -> np.ndarray:
    """`x` rounded to TF32 (1 sign, 8 exponent, 10 mantissa bits), returned as float32.

    Round-to-nearest-even on the float32 bit pattern: the 13 low mantissa bits are dropped after
    adding 0xFFF plus the lowest kept bit. Infinities and NaN pass unchanged; a value within half a
    TF32 step of float32's maximum rounds to infinity, as the hardware does.

    >>> round_to_tf32(np.float32([1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -10]))
    array([1.       , 1.0019531, 1.0009766], dtype=float32)
    """
    x = np.asarray(x, dtype=np.float32)  # [...] -> [...]
    bits = x.view(np.uint32)
    lsb = (bits >> np.uint32(13)) & np.uint32(1)
    rounded = (bits + np.uint32(0xFFF) + lsb) & np.uint32(0xFFFFE000)
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    return np.where(finite, rounded, bits).view(np.float32)


def quantize_symmetric(x: np.ndarray) -> np.ndarray:
    """Symmetric per-tensor int8 fake quantisation: scale = max|x| / 127, values round(x / scale)
    in [-127, 127], returned de-quantised (times scale) in float32. All zeros stay zeros.

    >>> quantize_symmetric(np.float32([0.5, -1.0, 0.3]))
    array([ 0.503937 , -1.       ,  0.2992126], dtype=float32)
    """
    x = np.asarray(x, dtype=np.float32)  # [...] -> [...]
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if top == 0.0 or not np.isfinite(top):
        return x
    scale = np.float32(top / 127.0)
    return (np.clip(np.rint(x / scale), -127, 127) * scale).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TF32Policy(Policy):
    """float32 everywhere, with every matrix product's operands rounded to TF32 (see the module
    docstring): dense kernels at `prepare`, dense inputs and attention operands per call."""

    def kernel(self, w: np.ndarray) -> np.ndarray:
        return round_to_tf32(self.weight(w))

    def dense_input(self, x: np.ndarray) -> np.ndarray:
        return round_to_tf32(x)

    def matmul_input(self, x: np.ndarray) -> np.ndarray:
        return round_to_tf32(x)

    @property
    def rounds_matmul_inputs(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class Int8Policy(Policy):
    """float32 everywhere, with dense kernels and dense inputs quantised to int8 symmetrically per
    tensor (see the module docstring); the attention products stay float32."""

    def kernel(self, w: np.ndarray) -> np.ndarray:
        return quantize_symmetric(self.weight(w))

    def dense_input(self, x: np.ndarray) -> np.ndarray:
        return quantize_symmetric(x)

    @property
    def rounds_matmul_inputs(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class GGMLPolicy(Policy):
    """llama.cpp's CPU backend on a GGUF quantised to the block format `name` (see the module
    docstring and `bert_ref.model.ggml`): dense kernels in the format, dense inputs quantised to
    q8_0 / q8_1 blocks per product, token embeddings q8_0, the tanh GELU from ggml's float16 table,
    the rest float32. `block_format`: the format (default: the policy's name; a variant of the
    policy, such as the ensemble's, names its own)."""

    block_format: str = ""

    @property
    def format(self) -> str:
        return self.block_format or self.name

    def kernel(self, w: np.ndarray) -> np.ndarray:
        """A `ggml.BlockKernel`: `x @ kernel` is then ggml's product (see `ggml.block_matmul`). F16
        for ggml_f16, and where llama-quantize falls back to it (an input width not a multiple of 32)."""
        f16 = self.format == "ggml_f16" or w.shape[0] % ggml.QK
        return ggml.quantize_kernel(self.weight(w), "F16" if f16 else self.format)

    def embedding_table(self, name: str, w: np.ndarray) -> np.ndarray:
        if name != "token_embedding/embeddings":
            return self.weight(w)
        if self.format == "ggml_f16" or w.shape[1] % ggml.QK:
            return ggml.fp16(self.weight(w))
        return ggml.quantize_table(self.weight(w), "q8_0")

    def activation(self, name: str) -> str:
        return "gelu_approximate_f16_table" if name == "gelu_approximate" else name

    @property
    def rounds_matmul_inputs(self) -> bool:
        return True


# ----------------------------------------------------------------------------------------------
# The precision table: every dtype policy, and the precision a port computed that way is declared in


@dataclasses.dataclass(frozen=True)
class PrecisionRow:
    """One row of `TABLE`.

    `policy` is the dtype policy's name (`dtype=`, `--dtype`); `variable` and `compute` are the
    dtypes weights are stored in and activations held in (`Policy`); `precision` is what a
    candidate computed this way is declared as (`--precision`), and our run of the policy of that
    name measures its floor; `short` labels it in reports; `unit_roundoff` is half the spacing of
    1.0 in the dtype the outputs are stored in (the compute dtype): one rounding of an output's
    largest value, the smallest floor it can have. `kind` is the `Policy` class."""

    policy: str
    variable: str
    compute: str
    precision: str
    short: str
    unit_roundoff: float
    kind: type[Policy] = Policy


#: The one precision table (policies; candidate precisions; report labels; unit roundoffs).
TABLE: tuple[PrecisionRow, ...] = (
    # policy          weights     activations  precision   short    unit roundoff
    PrecisionRow("float32", "float32", "float32", "float32", "f32", 2.0 ** -24),
    PrecisionRow("float64", "float64", "float64", "float64", "f64", 2.0 ** -53),
    PrecisionRow("float16", "float16", "float16", "float16", "f16", 2.0 ** -11),
    PrecisionRow("bfloat16", "bfloat16", "bfloat16", "bfloat16", "bf16", 2.0 ** -8),
    PrecisionRow("mixed_float16", "float32", "float16", "float16", "f16", 2.0 ** -11),
    PrecisionRow("mixed_bfloat16", "float32", "bfloat16", "bfloat16", "bf16", 2.0 ** -8),
    PrecisionRow("tf32", "float32", "float32", "tf32", "tf32", 2.0 ** -24, TF32Policy),
    PrecisionRow("int8", "float32", "float32", "int8", "int8", 2.0 ** -24, Int8Policy),
    PrecisionRow("ggml_f16", "float32", "float32", "ggml_f16", "ggml_f16", 2.0 ** -24, GGMLPolicy),
    *(PrecisionRow(fmt, "float32", "float32", fmt, fmt, 2.0 ** -24, GGMLPolicy) for fmt in ggml.FORMATS),
)

#: Policy name -> its row.
POLICIES: dict[str, PrecisionRow] = {row.policy: row for row in TABLE}
#: The dtype policies' names (`dtype=`, `--dtype`).
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)
#: Precision name -> the row of the policy of that name, which measures its floor.
PRECISIONS: dict[str, PrecisionRow] = {row.precision: POLICIES[row.precision] for row in TABLE}
#: Precision name -> its unit roundoff.
UNIT_ROUNDOFF: dict[str, float] = {name: row.unit_roundoff for name, row in PRECISIONS.items()}
#: The precisions whose outputs are stored in a half-precision dtype (float16, bfloat16).
HALF_PRECISIONS: tuple[str, ...] = tuple(name for name, row in PRECISIONS.items() if row.unit_roundoff > 2.0 ** -24)


def short_name(precision: str) -> str:
    """The report's label of a precision ("f16", "bf16", ...); an unknown name as it is."""
    row = PRECISIONS.get(precision)
    return row.short if row is not None else precision


def _dtype(name: str) -> np.dtype:
    return _bfloat16() if name == "bfloat16" else np.dtype(name)


def get_policy(dtype: str | Policy | np.dtype | type | None = None) -> Policy:
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
            raise TypeError(
                f"dtype must be None, a policy name {POLICY_NAMES} or a NumPy dtype, got {dtype!r}"
            ) from None
    row = POLICIES.get(name)
    if row is None:
        raise ValueError(f"unknown dtype policy {dtype!r}; expected one of {POLICY_NAMES} (or None for float32)")
    variable, compute = _dtype(row.variable), _dtype(row.compute)
    work = compute if compute in (np.float32, np.float64) else np.dtype(np.float32)  # half precision: math in float32
    return row.kind(name, variable, compute, work)
