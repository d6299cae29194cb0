"""ggml's block-quantised formats, rounded exactly as ggml rounds them (llama.cpp's CPU backend).

The precision policies `q8_0`, `q4_0`, `q4_1`, `q5_0` and `q5_1` of `bert_ref.model.precision`
are built from these functions. Each follows the ggml source it names (llama.cpp as vendored in
`llama-cpp-python` 0.3.36, commit 0c1e570); `tests/test_ggml.py` checks every one against what
ggml's own libraries compute (`golden/ggml/`, `tools/golden/make_ggml_golden.py`).

**Blocks.** A row is cut into blocks of 32 consecutive values (`QK`); each block stores one float16
scale `d` (and, for q4_1 / q5_1, one float16 minimum `m`) and one small integer per value. A dense
kernel ([In, Out] here; ggml stores it [Out, In]) is quantised in blocks along its *input* axis,
so In must be a multiple of 32.

**Weights** (`quantize_row_*_ref` of ggml-quants.c, what `llama-quantize` runs without an
importance matrix). All arithmetic is float32, as in C; `d` is rounded to float16 only when stored,
the integers are computed with the unrounded `d`:

- q8_0: d = max|x| / 127; q = `roundf(x * (1/d))` (half away from zero), in [-127, 127]; value q d;
- q4_0: d = x_max / -8 (x_max: the value of largest magnitude, the first on ties);
  q = `min(15, (int)(x * (1/d) + 8.5))`; value (q - 8) d;
- q5_0: d = x_max / -16; q = `min(31, (int)(x * (1/d) + 16.5))`; value (q - 16) d;
- q4_1: d = (max - min) / 15, m = min; q = `min(15, (int)((x - min) * (1/d) + 0.5))`; value q d + m;
- q5_1: d = (max - min) / 31, m = min; q = `(int)((x - min) * (1/d) + 0.5)`, 5 bits kept; value q d + m.

**Activations** (`quantize_row_q8_0` / `quantize_row_q8_1` of ggml-cpu's x86 path, which the
matmul applies to its float32 input, its `vec_dot_type`: q8_1 for q4_1 and q5_1, q8_0 for the
others): `d = max|x| / 127` stored as float16, the integers `rint(x * (127 / max|x|))` — round
half to *even* here, unlike the weights' `roundf` — and, for q8_1, `s = float16(d * sum(q))` with
the unrounded `d`.

**Products** (`ggml_vec_dot_q*_q8_*`): per block, `d_w * d_x * sum(q_w q_x)` (+ `m_w * s_x` for
q4_1 / q5_1), summed over blocks in float32. `block_matmul` computes the same sum as one float32
GEMM of the de-quantised operands: every product `(q_x d_x)(q_w d_w)` is the one ggml forms; only
the order of the float32 additions differs (ggml adds per-block partial sums in 8 SIMD lanes), a
relative 1e-7 against the 4e-3 of the quantisation steps. This is the one thing not emulated bit
for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

QK = 32

#: The weight formats, and the format each one's matmul quantises its activations to.
FORMATS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
ACTIVATION_FORMAT = {"q8_0": "q8_0", "q4_0": "q8_0", "q5_0": "q8_0", "q4_1": "q8_1", "q5_1": "q8_1"}

_F32 = np.float32


def fp16(x: np.ndarray) -> np.ndarray:
    """`x` rounded to float16 (round to nearest even, as ggml's FP32_TO_FP16), returned as float32."""
    return np.asarray(x, _F32).astype(np.float16).astype(_F32)


def roundf(x: np.ndarray) -> np.ndarray:
    """C's `roundf`: to the nearest integer, halves away from zero. [...] float32 -> [...] float32"""
    t = np.trunc(x)
    return np.where(np.abs(x - t) >= _F32(0.5), t + np.sign(x), t).astype(_F32)  # x - t is exact


def _blocks(x: np.ndarray) -> np.ndarray:
    """[..., K] float32 -> [..., K/32, 32] (a view); K must be a multiple of 32."""
    x = np.asarray(x, _F32)
    if x.shape[-1] % QK:
        raise ValueError(f"ggml block formats need rows whose length is a multiple of {QK}, got {x.shape[-1]}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // QK, QK)


def _inverse(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f / d : 0.0f` in float32. [...] -> [...]"""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, _F32(1) / np.where(d != 0, d, _F32(1)), _F32(0)).astype(_F32)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A quantised array: integer codes [..., nb, 32] (as stored, unsigned for q4/q5), float16
    scales `d` and, for q4_1 / q5_1, minimums `m` [..., nb] (as float32 holding float16 values)."""

    format: str
    codes: np.ndarray
    d: np.ndarray
    m: np.ndarray | None

    def scaled(self) -> np.ndarray:
        """The signed integer times `d`, per value (float32, exact): the de-quantised value for the
        symmetric formats, and all of it but the minimum for q4_1 / q5_1. [..., nb, 32]"""
        offset = {"q8_0": 0, "q4_0": 8, "q5_0": 16, "q4_1": 0, "q5_1": 0}[self.format]
        return (self.codes.astype(_F32) - _F32(offset)) * self.d[..., None]

    def dequantize(self) -> np.ndarray:
        """ggml's `dequantize_row_*`: `q d` (+ `m`), in float32. [..., nb, 32] -> [..., nb * 32]"""
        y = self.scaled()
        if self.m is not None:
            y = y + self.m[..., None]
        return y.reshape(*y.shape[:-2], -1)


def quantize(x: np.ndarray, fmt: str) -> Blocks:
    """ggml's `quantize_row_<fmt>_ref` along the last axis of `x` (see the module docstring).
    [..., K] float32 -> Blocks of [..., K/32, 32]"""
    b = _blocks(x)
    if fmt == "q8_0":
        d = (np.max(np.abs(b), axis=-1) / _F32(127)).astype(_F32)  # [..., nb]
        q = roundf(b * _inverse(d)[..., None])
        return Blocks(fmt, q.astype(np.int8), fp16(d), None)
    if fmt in ("q4_0", "q5_0"):
        levels = 8 if fmt == "q4_0" else 16
        idx = np.argmax(np.abs(b), axis=-1)  # the first value of the largest magnitude
        top = np.take_along_axis(b, idx[..., None], axis=-1)[..., 0]
        d = (top / _F32(-levels)).astype(_F32)
        v = (b * _inverse(d)[..., None]).astype(_F32) + _F32(levels + 0.5)
        q = np.minimum(np.trunc(v), 2 * levels - 1)
        return Blocks(fmt, q.astype(np.uint8), fp16(d), None)
    if fmt in ("q4_1", "q5_1"):
        steps = 15 if fmt == "q4_1" else 31
        lo, hi = np.min(b, axis=-1), np.max(b, axis=-1)
        d = ((hi - lo) / _F32(steps)).astype(_F32)
        v = ((b - lo[..., None]) * _inverse(d)[..., None]).astype(_F32) + _F32(0.5)
        q = np.trunc(v).astype(np.int64)
        q = np.minimum(q, 15) if fmt == "q4_1" else q & 31  # q5_1 keeps 5 bits, unclamped
        return Blocks(fmt, q.astype(np.uint8), fp16(d), fp16(lo))
    raise ValueError(f"unknown ggml format {fmt!r}; expected one of {FORMATS}")


def quantize_activations(x: np.ndarray, fmt: str = "q8_0") -> tuple[np.ndarray, np.ndarray | None]:
    """ggml-cpu's `quantize_row_q8_0` / `quantize_row_q8_1` (x86) along the last axis of `x`.

    Returns the de-quantised values `q * float16(d)` ([..., K] float32, exact) and, for q8_1, the
    block sums `s = float16(d * sum(q))` ([..., K/32]; None for q8_0)."""
    b = _blocks(x)
    top = np.max(np.abs(b), axis=-1)  # [..., nb]
    d = (top / _F32(127)).astype(_F32)
    with np.errstate(divide="ignore"):
        inv = np.where(top != 0, _F32(127) / np.where(top != 0, top, _F32(1)), _F32(0)).astype(_F32)
    q = np.rint((b * inv[..., None]).astype(_F32))  # round half to even (_MM_ROUND_NEAREST)
    values = (q * fp16(d)[..., None]).reshape(np.shape(x))
    if fmt == "q8_0":
        return values, None
    if fmt == "q8_1":
        return values, fp16(d * q.sum(axis=-1, dtype=np.int64).astype(_F32))
    raise ValueError(f"activations are quantised to q8_0 or q8_1, got {fmt!r}")


class BlockKernel(np.ndarray):
    """A dense kernel [In, Out] as ggml's matmul uses it: `x @ kernel` is `block_matmul(x, kernel)`
    (Python gives a subclass's reflected operator the first word), so the plain `ops.dense` computes
    ggml's product. The array is `scaled()` of the blocks (the de-quantised kernel for the symmetric
    formats; the float16 kernel for "F16"), `mins` is None or the float16 minimums [In/32, Out] of
    q4_1 / q5_1; `format` names the format."""

    format: str
    mins: np.ndarray | None

    def __array_finalize__(self, obj: object) -> None:
        self.format = getattr(obj, "format", "")
        self.mins = getattr(obj, "mins", None)

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:  # type: ignore[override]  # [N, In] @ [In, Out]
        return block_matmul(np.asarray(x), self)


def quantize_kernel(kernel: np.ndarray, fmt: str) -> BlockKernel:
    """A dense kernel [In, Out] in `fmt` (or "F16": float16), blocks along In (ggml's rows are our
    columns). [In, Out] -> [In, Out]"""
    if fmt == "F16":
        out = np.ascontiguousarray(fp16(kernel)).view(BlockKernel)
        out.format, out.mins = fmt, None
        return out
    blocks = quantize(np.ascontiguousarray(np.asarray(kernel, _F32).T), fmt)  # [Out, In/32, 32]
    scaled = blocks.scaled().reshape(kernel.shape[1], kernel.shape[0]).T  # [In, Out]
    out = np.ascontiguousarray(scaled).view(BlockKernel)
    out.format = fmt
    out.mins = None if blocks.m is None else np.ascontiguousarray(blocks.m.T)  # [In/32, Out]
    return out


def block_matmul(x: np.ndarray, kernel: BlockKernel) -> np.ndarray:
    """`x @ kernel` as ggml's CPU matmul computes it: for a block-quantised kernel, `x` quantised to
    the kernel's activation format (q8_0 or q8_1) in blocks along In, then per block
    `d_w d_x sum(q_w q_x)` (+ `m_w s_x`), summed in float32; for an F16 kernel, `x` rounded to
    float16 (F16's `vec_dot_type`), products summed in float32. [N, In], [In, Out] -> [N, Out]"""
    if kernel.format == "F16":
        return fp16(x) @ np.asarray(kernel)
    values, sums = quantize_activations(x, ACTIVATION_FORMAT[kernel.format])
    y = values @ np.asarray(kernel)  # [N, Out]: the d_w d_x q_w q_x products
    if kernel.mins is not None:
        assert sums is not None
        y += sums @ kernel.mins  # [N, In/32] @ [In/32, Out]: the m_w s_x terms
    return y


def quantize_table(table: np.ndarray, fmt: str = "q8_0") -> np.ndarray:
    """An embedding table [V, H] as the GGUF stores it (rows quantised along H) and `get_rows`
    reads it back: de-quantised, float32. [V, H] -> [V, H]"""
    return quantize(table, fmt).dequantize()
