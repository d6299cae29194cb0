"""The NumPy ops, against independent references (math.erf, closed forms, float64 evaluations)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bert_ref import BertBackbone, BertConfig, ops

GRID = np.linspace(-10.0, 10.0, 400_001)  # step 5e-5 over [-10, 10], the range ops.erf promises its accuracy on
REF_ERF = np.array([math.erf(v) for v in GRID])


def test_erf_float64_is_within_4_5e_16_of_math_erf():
    # The bound is ~4 float64 ulps at |erf| ~ 1 (spacing 1.1e-16): polynomial fit error < 5e-19 plus
    # Horner rounding. Measured: 1.1e-16.
    err = np.abs(ops.erf(GRID) - REF_ERF).max()
    assert err <= 4.5e-16, err


def test_erf_float32_is_within_2_4e_7_of_math_erf():
    # ~4 float32 ulps at |erf| ~ 1 (spacing 6e-8); reference is math.erf of the float32 input.
    x32 = GRID.astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in x32])
    y = ops.erf(x32)
    assert y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - ref).max()
    assert err <= 2.4e-7, err


def test_erf_special_values():
    y = ops.erf(np.array([0.0, -0.0, np.inf, -np.inf, np.nan]))
    assert y[0] == 0.0 and not np.signbit(y[0])
    assert y[1] == 0.0 and np.signbit(y[1])
    assert y[2] == 1.0 and y[3] == -1.0
    assert np.isnan(y[4])


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-1e6, 1e6, allow_subnormal=False)))
def test_erf_is_odd_bounded_and_monotone(x):
    y = ops.erf(x)
    np.testing.assert_array_equal(ops.erf(-x), -y)  # odd, exactly (sign applied last)
    assert np.all(np.abs(y) <= 1.0)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(y[order]) >= 0)


def test_erf_is_monotone_on_a_fine_grid_including_interval_edges():
    y = ops.erf(GRID)
    assert np.all(np.diff(y) >= 0)
    edges = np.arange(0.0, 6.5, 0.5)
    for e in edges:  # continuity across the piecewise intervals
        below = np.nextafter(e, 0)
        lo, hi = ops.erf(np.array([below, e]))
        # true step is at most slope (<= 2/sqrt(pi)) times the spacing, plus each side's error bound
        assert 0 <= hi - lo <= 2 * 4.5e-16 + 2 / math.sqrt(math.pi) * (e - below), e


def test_gelu_exact_matches_math_erf_formula():
    x = np.linspace(-8, 8, 20001)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    # float64: erf error (<= 4.5e-16) times 0.5*|x| (<= 4) plus rounding of the product: 2e-15.
    assert np.abs(ops.gelu(x) - ref).max() <= 2e-15
    # float32: dominated by float32 rounding of x and the product, ~|x| * 6e-8.
    err32 = np.abs(ops.gelu(x.astype(np.float32)).astype(np.float64) - np.array(
        [0.5 * float(v) * (1 + math.erf(float(v) / math.sqrt(2))) for v in x.astype(np.float32)]))
    assert err32.max() <= 1e-6


def test_gelu_approximate_matches_tanh_formula_in_float64():
    x = np.linspace(-8, 8, 20001)
    ref = np.array([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x])
    assert np.abs(ops.gelu_approximate(x) - ref).max() <= 1e-14  # operation order only


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-20, 20)))
def test_gelu_identities(x):
    # Global minima, found with `math.erf` / `math.tanh` on a 1e-6 grid over [-2, 0]: the exact GELU's
    # is -0.1699712 (at x = -0.7518), the tanh approximation's -0.1700408 (at x = -0.7525).
    for f, minimum in ((ops.gelu, -0.1699713), (ops.gelu_approximate, -0.1700408)):
        y = f(x.copy())
        # gelu(x) - gelu(-x) = x  (since Phi(x) + Phi(-x) = 1); rounding of two O(|x|) terms.
        np.testing.assert_allclose(y - f(-x), x, rtol=0, atol=4e-15 * (1 + np.abs(x)).max())
        assert np.all(y >= minimum), f"{f.__name__}: min {y.min()!r} at x = {x[np.argmin(y)]!r}"
        assert np.all(y <= np.maximum(x, 0) + 1e-15)  # x * Phi(x) <= max(x, 0)
    # the two forms agree to the approximation's known accuracy (< 1e-3 absolute)
    assert np.abs(ops.gelu(x) - ops.gelu_approximate(x.copy())).max() < 1e-3


def test_gelu_approximate_out_writes_in_place_and_keeps_float32():
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    expected = ops.gelu_approximate(x.copy())
    y = ops.gelu_approximate(x, out=x)
    assert y is x and x.dtype == np.float32
    np.testing.assert_array_equal(x, expected)


def test_layer_norm_against_float64_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 16)) * 3 + 1
    g, b = rng.standard_normal(16), rng.standard_normal(16)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    ref = (x - mean) / np.sqrt(var + 1e-5) * g + b
    np.testing.assert_allclose(ops.layer_norm(x, g, b, 1e-5), ref, rtol=0, atol=1e-14)
    y32 = ops.layer_norm(x.astype(np.float32), g.astype(np.float32), b.astype(np.float32), 1e-5)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref, rtol=0, atol=5e-6)  # float32 rounding of O(5) values


def test_layer_norm_epsilon_dominates_a_constant_row():
    x = np.full((1, 8), 3.0)
    y = ops.layer_norm(x, np.ones(8), np.full(8, 0.5), 1e-3)
    np.testing.assert_array_equal(y, np.full((1, 8), 0.5))  # variance 0: output is beta, finite


def test_masked_softmax_zeroes_masked_keys_and_rows_sum_to_one():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, 3, 4, 5)) * 10
    mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)[:, None, None, :]
    p = ops.masked_softmax(scores.copy(), mask)
    assert np.all(p[0][..., ~mask[0, 0, 0]] == 0)
    np.testing.assert_allclose(p[0].sum(-1), 1.0, rtol=0, atol=1e-15)
    # a fully masked row attends to nothing and stays finite
    assert np.all(p[1] == 0)
    # valid keys: plain softmax over the valid entries
    s = scores[0][..., mask[0, 0, 0]]
    ref = np.exp(s - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(p[0][..., mask[0, 0, 0]], ref, rtol=0, atol=1e-15)


def test_masked_softmax_is_stable_for_huge_scores():
    scores = np.array([[[[1e4, 1e4 + 1.0, -1e4]]]], dtype=np.float32)
    p = ops.masked_softmax(scores, np.ones((1, 1, 1, 3), bool))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0, 0, 0], [1 / (1 + math.e), math.e / (1 + math.e), 0.0], atol=1e-7)


@pytest.mark.parametrize("plain", [True, False])
def test_self_attention_matches_a_per_head_loop(plain):
    # The forward's attention sublayer (its trace points, float64) against a per-head loop written
    # out here; key_dim 3 with A = 9 != H = 10 (keras-hub allows it). Tolerances: float64 rounding
    # of sums of at most 10 terms of size <= ~30 (standard-normal weights) is below 1e-13.
    rng = np.random.default_rng(2)
    B, S, H, h = 2, 6, 10, 3
    d = H // h
    config = BertConfig(vocabulary_size=20, num_layers=1, num_heads=h, hidden_dim=H, intermediate_dim=8,
                        max_sequence_length=S)
    weights = {name: rng.standard_normal(shape) for name, shape in config.weight_shapes().items()}
    model = BertBackbone(**config.to_dict(), dtype="float64", weights=weights)
    mask = np.ones((B, S), bool)
    mask[1, 4:] = False
    out = model({"token_ids": rng.integers(0, 20, (B, S)), "padding_mask": mask}, trace=True, plain=plain,
                output_attentions=True)
    t, x = out["trace"], out["trace"]["embeddings/layer_norm"]
    A = "transformer_layer_0/self_attention_layer/"
    q, k, v = (x @ weights[A + n + "/kernel"] + weights[A + n + "/bias"] for n in ("query", "key", "value"))
    ctx = np.zeros((B, S, h * d))
    for b in range(B):
        for j in range(h):
            sl = slice(j * d, (j + 1) * d)
            s = q[b, :, sl] @ k[b, :, sl].T / math.sqrt(d)
            s[:, ~mask[b]] = -np.inf
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            np.testing.assert_allclose(out["attention_probs"][0][b, j], p, rtol=0, atol=1e-14)
            ctx[b, :, sl] = p @ v[b, :, sl]
    np.testing.assert_allclose(t["transformer_layer_0/attention_context"], ctx, rtol=0, atol=1e-12)
    expected = ctx @ weights[A + "attention_output/kernel"] + weights[A + "attention_output/bias"]
    np.testing.assert_allclose(t["transformer_layer_0/attention_output"], expected, rtol=0, atol=1e-12)
    # ops.attention is the three steps as one op
    heads = [ops.split_heads(t["transformer_layer_0/" + n], h) for n in ("query", "key", "value")]
    context, probs = ops.attention(*heads, mask[:, None, None, :])
    np.testing.assert_array_equal(context, t["transformer_layer_0/attention_context"])
    np.testing.assert_array_equal(probs, out["attention_probs"][0])


def test_pooler_uses_first_position_and_tanh():
    rng = np.random.default_rng(3)
    seq = rng.standard_normal((2, 4, 5))
    k, b = rng.standard_normal((5, 5)), rng.standard_normal(5)
    np.testing.assert_allclose(ops.pooler(seq, k, b), np.tanh(seq[:, 0] @ k + b), rtol=0, atol=1e-15)


def test_embedding_is_a_row_lookup():
    table = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(ops.embedding(table, np.array([[3, 0]])), [[[9, 10, 11], [0, 1, 2]]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_keep_their_input_dtype(dtype):
    # No silent promotion to float64 of float32 math (Python scalars must not upcast).
    x = np.linspace(-2, 2, 24, dtype=dtype).reshape(1, 2, 12)
    assert ops.gelu(x).dtype == dtype
    assert ops.gelu_approximate(x.copy()).dtype == dtype
    assert ops.erf(x).dtype == dtype
    g, b = np.ones(12, dtype), np.zeros(12, dtype)
    assert ops.layer_norm(x, g, b, 1e-12).dtype == dtype
    assert ops.dense(x, np.ones((12, 4), dtype), np.zeros(4, dtype)).dtype == dtype
    assert ops.masked_softmax(x.reshape(1, 1, 2, 12).copy(), np.ones((1, 1, 1, 12), bool)).dtype == dtype


def test_elementwise_ops_compute_integer_inputs_in_float64():
    # As NumPy's ufuncs do (np.tanh of ints is float64); never a result truncated back to ints.
    ints = np.array([[-3, -1, 0, 1, 2]])
    for f in (ops.erf, ops.gelu, ops.gelu_approximate):
        y = f(ints)
        assert y.dtype == np.float64, f.__name__
        np.testing.assert_array_equal(y, f(ints.astype(np.float64)))


@pytest.mark.parametrize("f", [ops.gelu, ops.gelu_approximate])
def test_gelus_write_into_any_out_array(f):
    x = np.linspace(-3, 3, 12)
    expected = f(x)
    out = np.zeros((4, 3)).T  # Fortran-ordered: not C-contiguous
    assert f(x.reshape(3, 4), out=out) is out
    np.testing.assert_array_equal(out, expected.reshape(3, 4))
    half = np.zeros(12, np.float16)
    assert f(x.astype(np.float16), out=half) is half
    np.testing.assert_array_equal(half, f(x.astype(np.float16).astype(np.float32)).astype(np.float16))


def _half_dtypes():
    dtypes = [np.dtype(np.float16)]
    try:
        import ml_dtypes
    except ImportError:  # bfloat16 is the optional [bf16] extra
        return dtypes
    return dtypes + [np.dtype(ml_dtypes.bfloat16)]


@pytest.mark.parametrize("half", _half_dtypes(), ids=str)
def test_half_precision_inputs_are_computed_in_float32_and_rounded_back(half):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 3, 8)) * 3).astype(half)
    x32 = x.astype(np.float32)
    for f in (ops.erf, ops.gelu, ops.gelu_approximate):
        y = f(x)
        assert y.dtype == half, f.__name__
        np.testing.assert_array_equal(y.astype(np.float32), f(x32).astype(half).astype(np.float32))
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    y = ops.layer_norm(x, g, b, 1e-12)
    assert y.dtype == half
    expected = ops.layer_norm(x32, g, b, 1e-12).astype(half).astype(np.float32)
    np.testing.assert_array_equal(y.astype(np.float32), expected)
    # values whose squares overflow float16 (max 65504): the variance is still finite
    wide = np.array([[300.0, -300.0, 0.0, 0.0]], half)
    np.testing.assert_allclose(ops.layer_norm(wide, np.ones(4), np.zeros(4), 1e-12).astype(np.float32),
                               [[np.sqrt(2), -np.sqrt(2), 0, 0]], rtol=4e-3)  # float16 spacing at 1.4: 9.8e-4


def test_masked_softmax_in_float16_stays_finite_for_a_fully_masked_row():
    # -1e9 is -inf in float16; keras uses -3e4 for float16 scores, and so do we.
    scores = np.array([[[[1.0, 2.0, 0.5]]], [[[1.0, 2.0, 0.5]]]], np.float16)
    mask = np.array([[1, 1, 0], [0, 0, 0]], bool)[:, None, None, :]
    p = ops.masked_softmax(scores, mask)
    assert p.dtype == np.float16 and np.isfinite(p).all()
    assert np.all(p[1] == 0)
    np.testing.assert_allclose(p[0, 0, 0].astype(np.float64), [1 / (1 + math.e), math.e / (1 + math.e), 0], atol=1e-3)
