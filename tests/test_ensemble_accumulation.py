"""The ensemble's half-precision accumulation (`Accumulating.matmul`: float16 accumulation per block of
32 products, split-K with the slices' sums added in the half type) against the loop written out
with `astype`, bit for bit, on its fast path and off it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bert_ref.model.precision import get_policy
from bert_ref.oracle import ensemble

from needs import need

BF16_INSTALL = 'pip install "bert-ref[bf16]"'


def half_type(name: str) -> np.dtype:
    return np.dtype(np.float16) if name == "float16" else np.dtype(need("ml_dtypes", BF16_INSTALL).bfloat16)


def written_out(a: np.ndarray, b: np.ndarray, half: np.dtype, *, block: int = 0, slices: int = 0) -> np.ndarray:
    """The accumulation as its docstring says, one output array per step: each block's (slice's) products
    summed by one float32 matmul; the first sum rounded to the half type; each next sum (split-K: rounded
    first) added in float32 to the accumulator, which is rounded to the half type after each addition."""
    k = a.shape[-1]
    bounds = sorted({k * i // slices for i in range(slices + 1)}) if slices else [*range(0, k, block), k]

    def r(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a sum past the half type's range becomes inf, as a port's does
            return x.astype(half).astype(np.float32)

    acc = None
    for lo, hi in itertools.pairwise(bounds):
        part = np.matmul(a[..., lo:hi], b[..., lo:hi, :])
        if acc is None:
            acc = r(part)
        else:
            acc = r(acc + (r(part) if slices else part))
    assert acc is not None
    return acc


def member(half: str, **mode: int) -> ensemble.Accumulating:
    p = get_policy(half)
    return ensemble.Accumulating(f"{half}~acc", p.variable_dtype, p.compute_dtype, p.work_dtype, **mode)


def operands(shape_a: tuple[int, ...], shape_b: tuple[int, ...], half: np.dtype, scale: float,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape_a) * scale).astype(half).astype(np.float32)
    b = (rng.standard_normal(shape_b) * 0.1).astype(half).astype(np.float32)
    return a, b


SHAPES = [
    ((64, 200), (200, 48)),  # K not a multiple of 32
    ((9, 31), (31, 5)),  # K < 32: one block
    ((5, 32), (32, 7)),  # exactly one block
    ((33, 768), (768, 70)),  # a dense layer's K
    ((2, 3, 16, 64), (2, 3, 64, 16)),  # attention scores [B, h, S, d] @ [B, h, d, S]
    ((2, 3, 16, 40), (2, 3, 40, 24)),  # attention context, K = 40
    ((2, 3, 16, 40), (40, 24)),  # a batched input against one kernel (broadcast)
    ((1, 1), (1, 1)),
]


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", [{"block": 32}, {"slices": 4}], ids=["block32", "splitk4"])
@pytest.mark.parametrize(("shape_a", "shape_b"), SHAPES)
@pytest.mark.parametrize("scale", [1.0, 2.0 ** -13], ids=["unit", "subnormal-sums"])
def test_accumulation_equals_the_loop_written_out(half, mode, shape_a, shape_b, scale):
    # scale 2^-13: products near 2^-16, so most partial sums fall in float16's subnormal range,
    # where its spacing is fixed (2^-24) and the magic-constant rounding needs its floor.
    dtype = half_type(half)
    a, b = operands(shape_a, shape_b, dtype, scale, seed=sum(shape_a) + sum(shape_b))
    expected = written_out(a, b, dtype, **mode)
    got = member(half, **mode).matmul(a, b)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    k = a.shape[-1]
    bounds = sorted({k * i // mode["slices"] for i in range(mode["slices"] + 1)}) if "slices" in mode \
        else [*range(0, k, mode["block"]), k]
    assert ensemble._half_sums(a, b, bounds, dtype, "slices" in mode) is not None  # the fast path was taken


@pytest.mark.parametrize("mode", [{"block": 32}, {"slices": 4}], ids=["block32", "splitk4"])
def test_sums_that_round_to_zero_keep_their_sign(mode):
    # Products of -2^-14 * 2^-13 = -2^-27: sums below half float16's least subnormal round to -0, and a
    # -0 accumulator plus a -0 sum stays -0; astype keeps the sign, and so must the accumulation.
    dtype = np.dtype(np.float16)
    a = np.full((6, 70), -(2.0 ** -14), np.float32)
    a[1] = 2.0 ** -14  # a row of +0 outputs
    a[2, 40:] = 1.0  # a row that leaves zero later
    a[3, :5] = 0.0  # -0 * ... products
    b = np.full((70, 8), 2.0 ** -13, np.float32)
    b[:, 3] = -0.0
    b[:, 5] = 2.0 ** -24
    expected = written_out(a, b, dtype, **mode)
    assert np.signbit(expected[expected == 0]).any() and (~np.signbit(expected[expected == 0])).any()
    got = member("float16", **mode).matmul(a, b)
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("mode", [{"block": 32}, {"slices": 4}], ids=["block32", "splitk4"])
def test_sums_past_float16_overflow_to_inf_as_the_loop_does(mode):
    # Partial sums above 65504 (float16's largest value): the fast path does not apply (its magic
    # constant would round them to finite values), the plain loop makes them inf, then inf + x = inf.
    dtype = np.dtype(np.float16)
    a, b = operands((16, 96), (96, 12), dtype, 1.0, seed=3)
    a[:4], b[:, :6] = 800.0, 1.0  # these outputs' sums reach 96 * 800 = 76800
    expected = written_out(a, b, dtype, **mode)
    assert np.isinf(expected).any() and np.isfinite(expected).any()
    k = a.shape[-1]
    bounds = sorted({k * i // mode["slices"] for i in range(mode["slices"] + 1)}) if "slices" in mode \
        else [*range(0, k, mode["block"]), k]
    assert ensemble._half_sums(a, b, bounds, dtype, "slices" in mode) is None
    with np.errstate(over="ignore", invalid="ignore"):
        got = member("float16", **mode).matmul(a, b)
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_magic_constant_rounding_is_astype_over_the_whole_range(half):
    # Every exponent below the limit, random mantissas, the exact ties (the dropped bits 100...0, on an even
    # and an odd kept bit), both signs, zeros and float32 subnormals: bit for bit astype(half).astype(float32),
    # but +0 for what rounds to zero until the sign is put back.
    dtype = half_type(half)
    add, least, limit, _ = ensemble._MAGIC[dtype.name]
    drop = 13 if half == "float16" else 16
    rng = np.random.default_rng(11)
    top = int(np.array(limit, np.float32).view(np.uint32))
    exponents = np.arange(0, (top >> 23) + 1, dtype=np.uint32) << np.uint32(23)
    mantissas = np.concatenate([rng.integers(0, 1 << 23, 64, dtype=np.uint32),
                                np.array([1 << (drop - 1), 3 << (drop - 1), (1 << drop) | (1 << (drop - 1)),
                                          (1 << (drop - 1)) - 1, (1 << (drop - 1)) + 1, 0, (1 << 23) - 1], np.uint32)])
    bits = (exponents[:, None] | mantissas[None, :]).reshape(-1)
    bits = bits[bits <= top]
    y = np.concatenate([bits, bits | np.uint32(0x80000000)]).view(np.float32)
    expected = y.astype(dtype).astype(np.float32)
    out, scratch = np.empty_like(y), np.empty(y.shape, np.uint32)
    ensemble._round_magic(y, out, scratch, add, least)
    signed_zero = (expected == 0) & np.signbit(expected)
    assert signed_zero.any()
    np.testing.assert_array_equal(out.view(np.uint32)[~signed_zero], expected.view(np.uint32)[~signed_zero])
    assert (out.view(np.uint32)[signed_zero] == 0).all()
    ensemble._restore_sign(y, out, scratch)
    assert out.tobytes() == expected.tobytes()


def test_tiles_and_groups_do_not_change_the_sums(monkeypatch):
    # The rounding loop's tiles and its groups of blocks are an arrangement only.
    dtype = np.dtype(np.float16)
    a, b = operands((3, 37, 100), (100, 29), dtype, 1.0, seed=5)
    expected = written_out(a, b, dtype, block=32)
    for tile, group in [(7, 1), (64, 2), (1 << 16, 1 << 22)]:
        monkeypatch.setattr(ensemble, "_TILE", tile)
        monkeypatch.setattr(ensemble, "_GROUP", group * a.shape[0] * a.shape[1] * b.shape[1])
        assert member("float16", block=32).matmul(a, b).tobytes() == expected.tobytes(), (tile, group)


def test_slices_too_long_for_the_float32_error_bound_take_the_plain_loop():
    # The fast path's overflow bound allows float32's own error for blocks of up to 2^14 products;
    # a split-K slice longer than that is summed by the plain loop, to the same bits.
    dtype = np.dtype(np.float16)
    a, b = operands((3, 4 * 5000), (4 * 5000, 2), dtype, 1.0, seed=5)
    bounds = [0, 5000, 10000, 15000, 20000]
    assert ensemble._half_sums(a, b, bounds, dtype, True) is not None  # 5000 products a slice: the fast path
    longer = [0, 20000]  # one slice of 20000 > 2^14 products (and a first block of it)
    assert ensemble._half_sums(a, b, longer, dtype, True) is None
    got = member("float16", slices=1).matmul(a, b)
    assert got.tobytes() == written_out(a, b, dtype, slices=1).tobytes()
