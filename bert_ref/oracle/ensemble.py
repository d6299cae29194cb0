"""The floor as a distribution: our run in a precision, and legitimate variants of it.

A port's error in a precision depends on choices that are all correct: where it rounds, in which
order it sums, whether its kernels are fused. One run of ours is one sample of that; the verdict
(`bert_ref.oracle.verdict`) compares each statistic of a candidate with the largest any member of
this ensemble reaches, so a correct port that rounds elsewhere is not mistaken for a wrong one.

- float16, bfloat16: our policy (keras' rounding points); `fused`: no rounding of the attention
  scores, the feed-forward pre-activation, the residual sums or the partial embedding sum, which
  fused kernels keep in float32; `wide`: all math in float64, rounded to the half type at the same
  steps (exact accumulation); `splitk`: the dense layers' products summed in four slices whose
  sums are added in the half type (cuBLAS's split-K with the reduced-precision reduction torch
  allows by default); float16 only, `f16acc`: float16 accumulation per block of 32 products, in
  the dense layers and the attention products (ggml's F16 dot on ARM, cuBLAS's COMPUTE_16F). See
  `Accumulating`; bfloat16 gets no half accumulation: ggml's and the tensor cores' bfloat16 dot
  products accumulate in float32.
- float32: our policy (the fast kernels); `plain`: the plain ops of `bert_ref.ops` (other summation
  orders, GELU and softmax formulas); `wide`: math in float64, rounded to float32 after each step.
- tf32: our policy; `wide`: the same TF32 operands, everything else in float64 rounded to float32
  after each step.
- int8: the scheme's run (`bert_ref.oracle.int8`); `wide`: the same quantisation with float64 math
  (integer accumulation is exact); `sr1`, `sr2`: its dense inputs rounded stochastically (two
  seeds), other realisations of the same recipe's rounding.
- q8_0, q4_0, q4_1, q5_0, q5_1, ggml_f16 (llama.cpp's CPU backend, `GGMLPolicy`): our emulation of
  ggml; `wide`: the same quantised weights and activations (the same integers and float16 scales,
  so the same products), their sums exact, in float64, rounded to float32 after each step. ggml adds
  the per-block partial products in float32 in its SIMD lanes' order, which the emulation's float32
  GEMM does not follow (`bert_ref.model.ggml`); exact accumulation brackets any such order. The
  quantisation itself is deterministic and emulated as ggml rounds, so there is no other
  realisation of it to sample (unlike int8's recipes, whose activation rounding differs between
  runtimes and is sampled stochastically).
- float64: the modelled floor only (`compare_to_truth`).

Stochastic rounding is used where it helps, for int8, whose rounding is coarse and deterministic
given the recipe: for the half types it doubles the rounding variance and, measured on the port
suite, widened the ensemble without covering any real port better than `fused` and `wide` do.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from bert_ref.model.precision import (
    PRECISIONS,
    UNIT_ROUNDOFF,
    GGMLPolicy,
    Policy,
    TF32Policy,
    get_policy,
    round_to_tf32,
)
from bert_ref.oracle.int8 import DEFAULT_SCHEME, Int8Scheme, Int8SchemePolicy, scheme_policy

#: Steps a fused kernel does not round (their result goes straight into the next operation).
FUSED_STEPS = frozenset({"attention_scores", "feedforward_intermediate", "attention_residual", "feedforward_residual",
                         "embeddings/token+position"})


@dataclasses.dataclass(frozen=True)
class SkipRounding(Policy):
    """A half-precision policy that does not round at the named steps `skip` (see `FUSED_STEPS`)."""

    skip: frozenset[str] = frozenset()

    def round_at(self, name: str, x: np.ndarray) -> np.ndarray:
        return x if name in self.skip else self.round(x)


@dataclasses.dataclass(frozen=True)
class Accumulating(Policy):
    """A half-precision policy whose matrix products round their partial sums to the half type, as
    runtimes that accumulate in it do (see `matmul`); everything else is our policy's.

    `slices` > 0 (split-K with a reduced-precision reduction): the K products of each output are cut
    into `slices` equal slices, each summed in float32 and rounded to the half type, and the slices'
    sums added in the half type (rounded after each addition). cuBLAS does this when it splits K
    and reduced-precision reductions are allowed: torch allows them by default for float16 and
    bfloat16 GEMMs on CUDA (`torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction`,
    `allow_bf16_reduced_precision_reduction`); cuBLAS picks the number of slices by shape.

    `block` > 0 (half-precision accumulation): an accumulator in the half type, to which the sum of
    each next `block` products (summed in float32) is added, rounded after each addition. ggml's F16
    dot product on CPUs with FP16 vector arithmetic (ARM) keeps 32 accumulator lanes in float16,
    each rounded at every fused multiply-add: each output sees K/32 roundings of partial sums, the
    lanes' smaller sums in 32 lanes adding up to the same rounding variance as K/32 roundings of
    one accumulator; cuBLAS's CUBLAS_COMPUTE_16F (cublasHgemm) also accumulates in float16.

    `attention`: also the two attention products (ggml's attention runs its products through the
    same dot product; torch's SDPA kernels accumulate in float32)."""

    slices: int = 0
    block: int = 0
    attention: bool = False

    def ops(self, f: Any) -> Any:
        return _AccumulatingOps(f, self)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """`a @ b` with the partial sums rounded as described (work dtype in and out).
        [..., M, K] @ [..., K, N] -> [..., M, N]

        Each block's (slice's) sum is one `np.matmul` of the block's columns of `a` and rows of `b`,
        the same call for every output (so the same float32 sum); where `_half_sums` applies (float32
        work, an operand range in which no partial sum can overflow), its roundings are done there, fast,
        else by `accumulate_plainly`: the same values, bit for bit."""
        k = a.shape[-1]
        if k == 0:
            return np.matmul(a, b)
        bounds = sorted({k * i // self.slices for i in range(self.slices + 1)}) if self.slices \
            else [*range(0, k, self.block), k]
        fast = _half_sums(a, b, bounds, self.compute_dtype, round_slices=bool(self.slices))
        return accumulate_plainly(a, b, bounds, self.compute_dtype, bool(self.slices)) if fast is None else fast


def accumulate_plainly(a: np.ndarray, b: np.ndarray, bounds: list[int], half: Any, round_slices: bool) -> np.ndarray:
    """`Accumulating.matmul`'s sums written out: the products of the columns `bounds[i]:bounds[i+1]`
    summed by one `np.matmul` (in the work dtype); the first sum rounded to `half`; each next one
    (rounded to `half` first when `round_slices`) added to the accumulator, which is rounded to `half`
    after each addition (`runtime.round_through`: `astype(half).astype(work)`, bit for bit).
    [..., M, K] @ [..., K, N] -> [..., M, N]"""
    from bert_ref.model.runtime import round_through

    acc = round_through(np.matmul(a[..., : bounds[1]], b[..., : bounds[1], :]), half)  # the first partial sum
    part = np.empty_like(acc)
    for lo, hi in itertools.pairwise(bounds[1:]):
        np.matmul(a[..., lo:hi], b[..., lo:hi, :], out=part)  # summed in the work dtype
        if round_slices:
            round_through(part, half, out=part)
        acc += part
        round_through(acc, half, out=acc)
    return acc


# ----------------------------------------------------------------------------------------------
# The accumulation in the half type, fast
#
# A float32 y is rounded to the half type by a magic constant: with e = y's exponent, `drop` the
# mantissa bits the half type lacks (13 for float16, 16 for bfloat16) and `emin` its least normal
# exponent, sigma = 1.5 * 2^(max(e, emin) + drop); then (y + sigma) - sigma is y rounded to nearest,
# ties to even, on the half type's grid around y (its spacing 2^(max(e, emin) - 23 + drop), the half
# type's subnormal spacing below emin): sigma's ulp is that spacing, y + sigma stays in sigma's binade
# and sigma is an even multiple of its ulp. Five passes (exponent bits, sigma, its floor, add, subtract) where
# `runtime.round_through` needs nine; it equals `astype(half).astype(float32)` bit for bit wherever
# |y| is below `_MAGIC`'s limit, except that a y that rounds to zero gives +0 where astype keeps y's
# sign (see `_half_sums` for where that sign is restored). tests/test_ensemble_accumulation.py checks it.

_EXPONENT, _SIGN = np.uint32(0x7F800000), np.uint32(0x80000000)
# half type -> (bits added to y's exponent bits: drop << 23 plus sigma's 0.5 mantissa bit; the least sigma;
# the limit of |y|; the unit roundoff, from the precision table). The limits: float16's largest finite value
# (above it a sum may round to inf, which the plain loop handles); for bfloat16, sigma's exponent (e + 16)
# must stay finite.
_MAGIC = {
    "float16": (np.uint32((13 << 23) | 0x400000), np.float32(1.5 * 2.0 ** (-14 + 13)), float(np.finfo(np.float16).max),
                UNIT_ROUNDOFF["float16"]),
    "bfloat16": (np.uint32((16 << 23) | 0x400000), np.float32(1.5 * 2.0 ** (-126 + 16)), 2.0 ** 111,
                 UNIT_ROUNDOFF["bfloat16"]),
}
# Output elements per tile of the rounding loop: a tile of the accumulator and its scratch arrays
# (512 KiB each) stay in the L2 cache while a group of blocks is added to it. Smaller tiles lose more
# to the batch parts' threads taking turns at the GIL at each NumPy call (docs/performance.md).
_TILE = 1 << 17
# Output elements of the float32 block sums computed ahead, a group of blocks at a time (4 MiB; at
# least one block).
_GROUP = 1 << 20


def _round_magic(y: np.ndarray, out: np.ndarray, scratch: np.ndarray, add: np.uint32, least: np.float32) -> None:
    """`out` = float32 `y` rounded to the half type of (`add`, `least`) (`_MAGIC`), but +0 where it rounds to
    zero; `scratch`: a uint32 array of y's shape. `out` may be `y`. [n] -> [n]"""
    np.bitwise_and(y.view(np.uint32), _EXPONENT, out=scratch)  # 2^e (y's exponent bits alone)
    np.add(scratch, add, out=scratch)  # 1.5 * 2^(e + drop)
    sigma = scratch.view(np.float32)
    np.maximum(sigma, least, out=sigma)  # at least 1.5 * 2^(emin + drop)
    np.add(y, sigma, out=out)  # rounded here, on sigma's grid
    np.subtract(out, sigma, out=out)  # exact


def _restore_sign(y: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """`out` (`_round_magic(y)`) given y's sign bit: only a zero changes (to -0 where y < 0 or y is -0). [n] -> [n]"""
    np.bitwise_and(y.view(np.uint32), _SIGN, out=scratch)
    np.bitwise_or(out.view(np.uint32), scratch, out=out.view(np.uint32))


def _half_sums(a: np.ndarray, b: np.ndarray, bounds: list[int], half: Any, round_slices: bool) -> np.ndarray | None:
    """`accumulate_plainly(a, b, bounds, half, round_slices)`, bit for bit, faster; None where this path
    does not apply: operands other than float32, a half type other than float16 and bfloat16, or
    operands large enough (or not finite) that a partial sum could reach `_MAGIC`'s limit.

    The block sums are the same `np.matmul` calls, a group of blocks at a time; the roundings
    (`_round_magic`) run over tiles of the output that stay in the cache for the whole group. A sum
    that rounds to zero becomes +0 there, where astype keeps its sign; that changes a later sum only
    when both of its terms are zeros (x + 0 is x otherwise), so the values are astype's and only a zero
    may differ in sign: the sign is put back at the last rounding, and where the last addition adds two
    zeros, the sums are done again with the sign put back after every rounding.
    [..., M, K] @ [..., K, N] -> [..., M, N]"""
    magic = _MAGIC.get(np.dtype(half).name)
    if magic is None or a.dtype != np.float32 or b.dtype != np.float32:
        return None
    blocks = list(itertools.pairwise(bounds))
    # Every partial sum is at most (max_i sum_k |a_ik|) (max |b|) in magnitude, grown by at most (1 + u) per
    # rounding to the half type (two per step with `round_slices`), by 2^-25 per rounding in its subnormal
    # range, and by float32's own sums' error: at most n 2^-24 of the sum of |products| for a block of n
    # products summed in any order, which the factor 1.001 covers up to n = 2^14 (the blocks here hold 32
    # products, or K / 4 for split-K); longer blocks take the plain loop.
    if max(hi - lo for lo, hi in blocks) > 1 << 14:
        return None
    with np.errstate(all="ignore"):
        largest = float(np.abs(a).sum(axis=-1, dtype=np.float64).max(initial=0.0)) \
            * float(np.abs(b).max(initial=0.0))
    if not (largest * 1.001 + len(blocks) * 2.0 ** -23) * (1 + 2 * magic[3]) ** (2 * len(blocks) + 2) < magic[2]:
        return None
    acc, unsure = _accumulate_in_tiles(a, b, blocks, magic, round_slices, signs=False)
    return _accumulate_in_tiles(a, b, blocks, magic, round_slices, signs=True)[0] if unsure else acc


def _accumulate_in_tiles(a: np.ndarray, b: np.ndarray, blocks: list[tuple[int, int]],
                         magic: tuple[np.uint32, np.float32, float, float], round_slices: bool,
                         signs: bool) -> tuple[np.ndarray, bool]:
    """`_half_sums`' loop: the sums, and whether an output's sign of zero may be wrong. `signs`: put the
    sign of zero back after every rounding; else after the last only, which is exact unless the last
    addition's terms are both zeros (one of which may have lost its sign): reported.
    [..., M, K] @ [..., K, N] -> [..., M, N]"""
    add, least = magic[0], magic[1]
    shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
    acc = np.empty(shape, np.float32)
    flat = acc.reshape(-1)  # [n]
    n = flat.size
    unsure = False
    if n == 0:
        return acc, unsure
    group = max(1, min(len(blocks), _GROUP // n))
    sums = np.empty((group, *shape), np.float32)  # a group of blocks' float32 sums
    sums_flat = sums.reshape(group, n)
    tile = min(n, _TILE)
    ys, scratches = np.empty(tile, np.float32), np.empty(tile, np.uint32)
    for first in range(0, len(blocks), group):
        chosen = blocks[first : first + group]
        for i, (lo, hi) in enumerate(chosen):
            np.matmul(a[..., lo:hi], b[..., lo:hi, :], out=sums[i])  # summed in float32: [..., M, N]
        for start in range(0, n, tile):
            stop = min(n, start + tile)
            acc_t, y, scratch = flat[start:stop], ys[: stop - start], scratches[: stop - start]
            for step in range(first, first + len(chosen)):
                part = sums_flat[step - first, start:stop]
                last = step == len(blocks) - 1
                if round_slices and step > 0:  # split-K: the slice's sum rounded before it is added
                    _round_magic(part, y, scratch, add, least)
                    if signs:
                        _restore_sign(part, y, scratch)
                    part = y
                if step == 0:
                    src = part  # the first sum
                elif signs or last:
                    src = np.add(acc_t, part, out=y)
                    if last and not signs and not src.all() and np.any((src == 0) & (acc_t == 0)):
                        unsure = True  # 0 + 0: either zero's sign may be astype's other one
                else:
                    src = np.add(acc_t, part, out=acc_t)
                _round_magic(src, acc_t, scratch, add, least)
                if signs or last:
                    _restore_sign(src, acc_t, scratch)
    return acc, unsure


class _AccumulatingOps:
    """The ops of `f` with the dense layers' (and, with `attention`, the attention's) matrix products
    computed by `policy.matmul`; every other op is `f`'s."""

    def __init__(self, f: Any, policy: Accumulating) -> None:
        self._f, self._policy = f, policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def dense(self, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, activation: str | None = None) -> np.ndarray:
        """[..., In], [In, Out], [Out] -> [..., Out]"""
        y = (self._policy.matmul(x.reshape(-1, x.shape[-1]), kernel) + bias).reshape(*x.shape[:-1], kernel.shape[-1])
        return y if activation is None else self._f.ACTIVATIONS[activation](y)

    def pooler(self, sequence: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """[B, S, H] -> [B, H]"""
        return np.tanh(self.dense(sequence[:, 0], kernel, bias))

    def attention_scores(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """[B, h, S, d] x2 -> [B, h, S, S]"""
        if not self._policy.attention:
            return self._f.attention_scores(q, k)
        return self._policy.matmul(q * q.dtype.type(1.0 / np.sqrt(q.shape[-1])), k.transpose(0, 1, 3, 2))

    def attention_context(self, probs: np.ndarray, v: np.ndarray) -> np.ndarray:
        """[B, h, S, S], [B, h, S, d] -> [B, S, h*d]"""
        if not self._policy.attention:
            return self._f.attention_context(probs, v)
        return self._f.merge_heads(self._policy.matmul(probs, v))


@dataclasses.dataclass(frozen=True)
class PlainOps(Policy):
    """float32 through the plain ops of `bert_ref.ops` instead of the fast kernels: the same math,
    summed and formulated otherwise."""

    @property
    def rounds_matmul_inputs(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class WideTF32(TF32Policy):
    """TF32 operands for every matrix product, everything else computed in float64 and rounded to
    float32 after each step."""

    def kernel(self, w: np.ndarray) -> np.ndarray:
        return round_to_tf32(np.asarray(w, dtype=np.float32)).astype(np.float64)

    def dense_input(self, x: np.ndarray) -> np.ndarray:
        return round_to_tf32(x).astype(np.float64)

    def matmul_input(self, x: np.ndarray) -> np.ndarray:
        return round_to_tf32(x).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class WideInt8(Int8SchemePolicy):
    """An int8 recipe with the same quantisation, everything else computed in float64 and rounded to
    float32 after each step: what integer accumulation (exact) with a float epilogue computes."""

    def weight(self, w: np.ndarray) -> np.ndarray:
        return np.asarray(w, dtype=np.float32).astype(np.float64)

    def kernel(self, w: np.ndarray) -> np.ndarray:
        return super().kernel(w).astype(np.float64)

    def embedding_table(self, name: str, w: np.ndarray) -> np.ndarray:
        return super().embedding_table(name, w).astype(np.float64)

    def dense_input(self, x: np.ndarray) -> np.ndarray:
        return super().dense_input(x).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class WideGGML(GGMLPolicy):
    """A ggml policy with the same quantisation, its products summed exactly (float64) and every
    step rounded to float32: the kernels' float64 copies make `ggml.block_matmul` multiply the
    same de-quantised operands in float64."""

    def kernel(self, w: np.ndarray) -> np.ndarray:
        return super().kernel(w).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of the ensemble: its `name` (also its name in the oracle cache), its `policy`, why it
    is a legitimate port of the precision, and whether it is a deterministic variant of the floor's
    computation (`exact`: the same roundings where they matter, other float arithmetic) rather than
    another realisation of its rounding (stochastic rounding). `weights_of` names an earlier member
    whose policy casts, rounds and quantises the weights exactly as this one's does (the run then
    reuses its prepared weights)."""

    name: str
    policy: Policy
    why: str
    exact: bool = True
    weights_of: str | None = None  # an earlier member whose prepared weights are this one's (the same treatment)


def members(precision: str, scheme: Int8Scheme | None = None) -> tuple[Member, ...]:
    """The ensemble of a precision (the floor first); `scheme` for int8 (default `symmetric`)."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    if precision in ("float16", "bfloat16"):
        p = get_policy(precision)
        dtypes = (p.variable_dtype, p.compute_dtype, p.work_dtype)
        f16acc = Accumulating(f"{precision}~f16acc", *dtypes, block=32, attention=True)
        half_sums = (Member(f16acc.name, f16acc, "float16 accumulation (ggml's F16 dot on ARM, cuBLAS COMPUTE_16F)",
                            weights_of=precision),) if precision == "float16" else ()
        return (
            Member(precision, p, "our policy: keras' rounding points"),
            Member(f"{precision}~fused", SkipRounding(f"{precision}~fused", *dtypes, FUSED_STEPS),
                   "fused kernels: no rounding of scores, pre-activation, residual sums", weights_of=precision),
            Member(f"{precision}~wide", Policy(f"{precision}~wide", p.variable_dtype, p.compute_dtype, f64),
                   "exact accumulation: float64 math rounded at the same steps"),
            Member(f"{precision}~splitk", Accumulating(f"{precision}~splitk", *dtypes, slices=4),
                   "split-K, the slices' sums added in the half type (cuBLAS with torch's default "
                   "reduced-precision reduction)", weights_of=precision),
            *half_sums,
        )
    if precision == "float32":
        return (
            Member("float32", get_policy("float32"), "our policy: the fast kernels"),
            Member("float32~plain", PlainOps("float32~plain", f32, f32, f32), "the plain ops: other summation orders"),
            Member("float32~wide", Policy("float32~wide", f32, f32, f64),
                   "exact accumulation: float64 math rounded to float32 after each step"),
        )
    if precision == "tf32":
        return (
            Member("tf32", get_policy("tf32"), "our policy"),
            Member("tf32~wide", WideTF32("tf32~wide", f32, f32, f64),
                   "TF32 operands, float64 math rounded to float32 after each step"),
        )
    if precision == "int8":
        scheme = scheme or DEFAULT_SCHEME
        floor = scheme_policy(scheme)
        wide = WideInt8(f"{floor.name}~wide", f32, f32, f64, scheme)
        return (Member(floor.name, floor, f"the recipe {scheme.spec}"),
                Member(wide.name, wide, "the same recipe with exact accumulation (float64 math)"),
                *(Member(pol.name, pol, "the same recipe, dense inputs rounded stochastically", exact=False)
                  for pol in (scheme_policy(scheme, seed) for seed in (1, 2))))
    if precision in PRECISIONS and PRECISIONS[precision].kind is GGMLPolicy:
        return (Member(precision, get_policy(precision), "our emulation of ggml's CPU backend"),
                Member(f"{precision}~wide", WideGGML(f"{precision}~wide", f32, f32, f64, precision),
                       "the same quantised operands, their products summed exactly (another order of ggml's sums)"))
    if precision == "float64":
        return ()
    raise ValueError(f"no ensemble for precision {precision!r}")
