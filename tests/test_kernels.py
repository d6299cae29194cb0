"""The fast paths of bert_ref.model.kernels against the plain ops of bert_ref.ops.

Every kernel but one does the same floating-point operations as its plain op, in the same order,
on the same values (only the blocking, the threads and the buffers differ), so those checks are
bit-identical: no tolerance. The exception is the float32 exact GELU (`kernels._gelu_logit_block`),
a different formula: it is checked against an exact reference and against the plain op within
stated bounds, and the bit-identical checks run with the erf-table block in its place
(`_erf_table_gelu`). Shapes and block sizes are drawn so that arrays span several blocks and
several threads' chunks.
"""

from __future__ import annotations

import math
import multiprocessing
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bert_ref import BertBackbone, encoder, ops
from bert_ref.encoder import forward
from bert_ref.model import kernels, runtime

FLOATS = st.sampled_from([np.float32, np.float64])


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b, strict=True)
    assert a.tobytes() == b.tobytes()  # also -0.0 vs 0.0 and NaN payloads


@pytest.fixture
def _erf_table_gelu(monkeypatch):
    """float32 exact GELU through the erf table, the plain op's arithmetic (bit for bit)."""
    monkeypatch.setitem(kernels._GELU_BLOCKS, np.float32, kernels._gelu_erf_block)


@pytest.fixture
def _all_keys(monkeypatch):
    """Attention over all keys with the masked softmax (the steps' arithmetic, bit for bit)."""
    monkeypatch.setattr(kernels, "VALID_KEYS", False)


class _Block:
    """Run with a different `kernels.BLOCK` (small blocks: many blocks and threads on small arrays)."""

    def __init__(self, block: int):
        self.block = block

    def __enter__(self) -> None:
        self.saved, kernels.BLOCK = kernels.BLOCK, self.block

    def __exit__(self, *exc: object) -> None:
        kernels.BLOCK = self.saved


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int64]),
    block=st.sampled_from([1, 7, 64, 1 << 16]),
)
def test_erf_and_gelus_are_bit_identical_to_the_plain_ops(data, dtype, block):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=40))
    if np.dtype(dtype).kind == "i":
        elements = st.integers(-6, 6)
    else:
        elements = st.floats(-12, 12, width=16 if dtype == np.float16 else 32)
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    saved = kernels._GELU_BLOCKS[np.float32]
    kernels._GELU_BLOCKS[np.float32] = kernels._gelu_erf_block  # (a fixture would not reset per example)
    try:
        with _Block(block):
            for name in ("erf", "gelu", "gelu_approximate"):
                expected = getattr(ops, name)(x)
                _same(getattr(kernels, name)(x.copy()), expected)
    finally:
        kernels._GELU_BLOCKS[np.float32] = saved
    if np.dtype(dtype).itemsize == 8:  # float64 and integers: the erf table, whatever the float32 block
        _same(kernels.gelu(x.copy()), ops.gelu(x))


# The float32 exact GELU: on 400001 float32 points of [-10, 10] against x * Phi(x) in float64
# (Phi(x) = erfc(-x / sqrt(2)) / 2 from math.erfc, no cancellation in either tail).
_GELU_GRID = np.linspace(-10, 10, 400_001).astype(np.float32)


def _gelu_errors(y: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, max abs error / max(|x|, 1), max abs error where |gelu(x)| < 1e-3) on the grid."""
    x = _GELU_GRID.astype(np.float64)
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.tolist()])
    err = np.abs(y.astype(np.float64) - ref)
    return float(err.max()), float((err / np.maximum(np.abs(x), 1)).max()), float(err[np.abs(ref) < 1e-3].max())


def test_float32_gelu_is_at_least_as_accurate_as_the_plain_op():
    new = _gelu_errors(kernels.gelu(_GELU_GRID.copy()))
    plain = _gelu_errors(ops.gelu(_GELU_GRID))
    # Measured: (3.32e-7, 9.57e-8, 9.33e-8) against the plain op's (4.61e-7, 1.06e-7, 1.01e-7)
    # (tools/fit/fit_gelu_logit.py prints both). The first is half a float32 ulp at |x| ~ 4 (4.8e-7 / 2)
    # plus the fit error; the second, the error of Phi itself, is one float32 rounding of a value
    # near 1 (6e-8) plus the degree-6 fit's weighted minimax error (2.2e-8) and the rounding of the
    # Horner steps; the third, in the tails, is the fit's error there (the plain op's 1 + erf
    # cancels there). Each must stay at or below the plain op's.
    assert new[0] <= 3.33e-7, new
    assert new[1] <= 9.6e-8, new
    assert new[2] <= 9.4e-8, new
    assert all(n <= p for n, p in zip(new, plain, strict=True)), (new, plain)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), block=st.sampled_from([1, 7, 64, 1 << 16]))
def test_float32_gelu_is_within_its_bound_of_the_plain_op(data, block):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=40))
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-1e4, 1e4, width=32)))
    with _Block(block):
        y = kernels.gelu(x.copy())
    assert y.dtype == np.float32
    # Both are within their measured error of x * Phi(x) on [-10, 10] (9.57e-8 and 1.06e-7 times
    # max(|x|, 1), the test above), so within their sum, 2.02e-7 * max(|x|, 1), of each other
    # (measured on the grid: 1.38e-7); beyond |x| = 10 both give x or 0 to within float32 rounding.
    diff = np.abs(y.astype(np.float64) - ops.gelu(x).astype(np.float64))
    assert np.all(diff <= 2.02e-7 * np.maximum(np.abs(x.astype(np.float64)), 1)), diff.max()


def test_float32_gelu_special_values():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 3e38, -3e38, np.inf, -np.inf, np.nan], np.float32)
    with np.errstate(over="raise", invalid="raise"):  # no overflow warnings from the forward's GELU
        y = kernels.gelu(x[:-1].copy())
    expected = np.array([0, 0, 5e-31, -5e-31, 30, 0, 3e38, 0, np.inf, 0], np.float32)  # gelu(-inf) -> 0 (the limit)
    np.testing.assert_array_equal(y, expected)
    assert np.isnan(kernels.gelu(x[-1:].copy())).all()


@settings(max_examples=25, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 5000), elements=st.floats(-8, 8, width=32)))
def test_gelus_overwrite_their_input_and_honour_out(x):
    for name in ("gelu", "gelu_approximate"):
        expected = getattr(kernels, name)(x.copy())
        work = x.copy()
        assert getattr(kernels, name)(work) is work  # in place: the forward hands over its buffer
        _same(work, expected)
        out = np.zeros((2, x.size), np.float64)[:, ::1].T[:, 0]  # strided, float64
        assert getattr(kernels, name)(x, out=out) is out
        _same(out, expected.astype(np.float64))
    y = x.copy()
    kernels.erf(y)
    _same(y, x)  # erf leaves its input alone


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=FLOATS, rows=st.integers(1, 300), width=st.integers(1, 70))
def test_layer_norm_is_bit_identical_to_the_plain_op(data, dtype, rows, width):
    elements = st.floats(-50, 50, width=32)
    x = data.draw(hnp.arrays(dtype, (rows, width), elements=elements))
    gamma = data.draw(hnp.arrays(dtype, width, elements=elements))
    beta = data.draw(hnp.arrays(dtype, width, elements=elements))
    eps = data.draw(st.sampled_from([1e-12, 1e-5, 1e-3]))
    expected = ops.layer_norm(x.reshape(1, rows, width), gamma, beta, eps)
    work = x.reshape(1, rows, width).copy()
    assert kernels.layer_norm(work, gamma, beta, eps) is work
    _same(work, expected)


def test_layer_norm_of_half_precision_or_views_falls_back_to_the_plain_op():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 8)).astype(np.float16)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    _same(kernels.layer_norm(x, g, b, 1e-5), ops.layer_norm(x, g, b, 1e-5))
    view = rng.standard_normal((4, 6, 8)).transpose(0, 2, 1)  # [4, 8, 6], not C-contiguous: left alone
    before = view.copy()
    expected = ops.layer_norm(view, np.ones(6), np.zeros(6), 1e-5)
    _same(kernels.layer_norm(view, np.ones(6), np.zeros(6), 1e-5), expected)
    _same(view, before)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), dtype=FLOATS, lead=st.tuples(st.integers(0, 5), st.integers(1, 60)),
       n_in=st.integers(1, 20), n_out=st.integers(1, 20))
def test_dense_is_bit_identical_to_the_plain_op(data, dtype, lead, n_in, n_out):
    elements = st.floats(-4, 4, width=32)
    x = data.draw(hnp.arrays(dtype, (*lead, n_in), elements=elements))
    kernel = data.draw(hnp.arrays(dtype, (n_in, n_out), elements=elements))
    bias = data.draw(hnp.arrays(dtype, n_out, elements=elements))
    _same(kernels.dense(x, kernel, bias), ops.dense(x, kernel, bias))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64, np.float16]),
       batch=st.integers(1, 5), heads=st.integers(1, 4), seq=st.integers(1, 20))
def test_masked_softmax_is_bit_identical_to_the_plain_op(data, dtype, batch, heads, seq):
    scores = data.draw(hnp.arrays(dtype, (batch, heads, seq, seq), elements=st.floats(-30, 30, width=16)))
    mask = data.draw(hnp.arrays(bool, (batch, 1, 1, seq)))  # all-masked rows included
    expected = ops.masked_softmax(scores, mask)
    work = scores.copy()
    result = kernels.masked_softmax(work, mask)
    _same(result, expected)
    if dtype != np.float16:
        assert result is work  # in place


@settings(max_examples=30, deadline=None)
@given(data=st.data(), dtype=FLOATS, batch=st.integers(1, 4), heads=st.integers(1, 4),
       seq=st.integers(1, 12), d=st.integers(1, 8))
def test_attention_context_is_bit_identical_to_the_plain_op(data, dtype, batch, heads, seq, d):
    elements = st.floats(-4, 4, width=32)
    probs = data.draw(hnp.arrays(dtype, (batch, heads, seq, seq), elements=elements))
    v = data.draw(hnp.arrays(dtype, (batch, seq, heads * d), elements=elements))
    v_heads = ops.split_heads(v, heads)  # the strided view the forward passes
    _same(kernels.attention_context(probs, v_heads), ops.attention_context(probs, v_heads))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=FLOATS, batch=st.integers(1, 4), heads=st.integers(1, 3), seq=st.integers(1, 40),
       d=st.integers(1, 9))
def test_attention_over_valid_keys_is_within_its_bound_of_the_masked_softmax(data, dtype, batch, heads, seq, d):
    elements = st.floats(-4, 4, width=32)
    q, k, v = (data.draw(hnp.arrays(dtype, (batch, heads, seq, d), elements=elements)) for _ in range(3))
    lengths = np.array(data.draw(st.lists(st.integers(0, seq), min_size=batch, max_size=batch)))
    mask = np.arange(seq) < lengths[:, None]  # [B, S], right padding (rows of no valid key included)
    expected_probs = ops.masked_softmax(ops.attention_scores(q, k), mask[:, None, None, :])
    expected = ops.attention_context(expected_probs, v)
    context, probs = kernels._attention_valid_keys(q, k, v, lengths, want_probs=True)
    assert probs is not None and context.dtype == probs.dtype == dtype
    # Only the association of the n-term row sums and context dot products differs (the masked
    # terms are exact zeros): each side's n-term sum is within (n - 1) u of the exact one
    # (u = unit roundoff), so the probabilities differ by at most 2 n u relative (sums and divisions),
    # and the contexts by at most 4 n u * sum_j |p_j| |v_j|.
    u = np.finfo(dtype).eps / 2
    n = np.maximum(lengths, 1)[:, None, None, None].astype(np.float64)
    np.testing.assert_array_equal(probs[~np.broadcast_to(mask[:, None, None, :], probs.shape)], 0)
    assert np.all(np.abs(probs - expected_probs) <= 2 * n * u * expected_probs)
    scale = ops.attention_context(np.abs(expected_probs), np.abs(v)).astype(np.float64)  # [B, S, A]
    n_ctx = np.maximum(lengths, 1)[:, None, None].astype(np.float64)
    assert np.all(np.abs(context.astype(np.float64) - expected) <= 4 * n_ctx * u * scale)


def test_valid_keys_apply_only_to_right_padding():
    for mask, lengths in (([[1, 1, 0], [1, 0, 0]], [2, 1]), ([[1, 1, 0], [0, 0, 0]], [2, 0])):
        found = kernels._prefix_lengths(np.array(mask, bool))
        assert found is not None and found.tolist() == lengths
    assert kernels._prefix_lengths(np.ones((2, 3), bool)) is None  # nothing padded: the full path
    assert kernels._prefix_lengths(np.ones((0, 3), bool)) is None  # an empty batch
    assert kernels._prefix_lengths(np.array([[0, 1, 1], [1, 1, 1]], bool)) is None  # left padding
    assert kernels._prefix_lengths(np.array([[1, 0, 1]], bool)) is None  # a hole


def _random_inputs(rng: np.random.Generator, vocabulary: int, mask: np.ndarray) -> dict:
    """Random token and segment ids for the [B, S] padding `mask`."""
    return {"token_ids": rng.integers(0, vocabulary, mask.shape), "segment_ids": rng.integers(0, 2, mask.shape),
            "padding_mask": mask}


@pytest.mark.parametrize("dtype", ["float32", "float64", "mixed_float16"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate"])
def test_forward_on_kernels_is_bit_identical_to_forward_on_plain_ops(dtype, activation, _erf_table_gelu):
    # Step by step (traced): kernels against plain=True, every trace point.
    model = BertBackbone(vocabulary_size=50, num_layers=2, num_heads=3, hidden_dim=24, intermediate_dim=40,
                         max_sequence_length=70, activation=activation, seed=5, dtype=dtype)
    mask = np.ones((5, 70), bool)
    mask[1, 30:] = False
    mask[3, :] = False  # a fully padded row
    inputs = _random_inputs(np.random.default_rng(1), 50, mask)
    with _Block(64):  # many blocks and threads even at this size
        fast = forward(dict(model.weights), model.config, inputs, dtype=dtype, output_attentions=True, trace=True)
    slow = forward(dict(model.weights), model.config, inputs, dtype=dtype, output_attentions=True, trace=True,
                   plain=True)
    assert list(fast["trace"]) == list(slow["trace"])
    for name in fast["trace"]:
        _same(fast["trace"][name], slow["trace"][name])
    for a, b in zip(fast["attention_probs"], slow["attention_probs"], strict=True):
        _same(a, b)
    _same(fast["sequence_output"], slow["sequence_output"])
    _same(fast["pooled_output"], slow["pooled_output"])


def test_one_thread_gives_the_same_results_and_starts_no_pool(monkeypatch):
    x = np.linspace(-5, 5, 9 * 64, dtype=np.float32)
    expected = kernels.gelu(x.copy())
    monkeypatch.setattr(runtime, "THREADS", 1)
    monkeypatch.setattr(runtime, "POOL", None)
    with _Block(64):
        _same(kernels.gelu(x.copy()), expected)
    assert runtime.POOL is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_threaded_kernels_work_in_a_forked_child():
    # The parent's worker threads do not exist in a fork; the child must not wait on them forever.
    x = np.linspace(-3, 3, 8 * kernels.BLOCK)  # enough blocks to use every thread
    expected = kernels.gelu(x.copy())  # starts the parent's pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put(kernels.gelu(x.copy()).tobytes() == expected.tobytes()))
    child.start()
    child.join(60)  # the gelu takes milliseconds; 60 s means it hung
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and queue.get(timeout=5) is True


def _split_model(dtype, activation):
    # Large enough that the batch split applies (each part >= runtime.MIN_PART activations) and
    # that OpenBLAS uses its regular GEMM kernels.
    model = BertBackbone(vocabulary_size=300, num_layers=2, num_heads=4, hidden_dim=128, intermediate_dim=200,
                         max_sequence_length=128, activation=activation, seed=11, dtype=dtype)
    mask = np.ones((5, 128), bool)
    mask[0, 70:] = False
    mask[2, :] = False  # a fully padded row
    mask[4, 1:] = False
    inputs = _random_inputs(np.random.default_rng(3), 300, mask)
    return model, inputs


@pytest.mark.parametrize("threads", [1, 2, 3, 16])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate"])
def test_fused_forward_is_bit_identical_to_the_steps(monkeypatch, threads, dtype, activation, _all_keys):
    # The untraced forward (attention as one op, the batch split over `threads` parts) against the
    # step-by-step forward (a trace callable forces the steps): every output, hidden state and probability.
    # The half-precision policies round after every step: the split alone (each part rounds its rows).
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    monkeypatch.setattr(runtime, "THREADS", threads)  # 16: one part per sequence
    model, inputs = _split_model(dtype, activation)
    if runtime.blas() is not None:
        assert runtime.batch_parts(5, 128, 128) == min(threads, 5)
    fast = model(inputs, output_hidden_states=True, output_attentions=True)
    steps = model(inputs, output_hidden_states=True, output_attentions=True, trace=lambda name, value: None)
    for key in ("sequence_output", "pooled_output"):
        _same(fast[key], steps[key])
    for key in ("hidden_states", "attention_probs"):
        assert len(fast[key]) == len(steps[key])
        for a, b in zip(fast[key], steps[key], strict=True):
            _same(a, b)
    assert not np.isnan(fast["sequence_output"]).any()
    np.testing.assert_array_equal(fast["attention_probs"][0][2], 0)  # the fully padded row attends to nothing


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_forward_over_valid_keys_is_close_to_the_steps(dtype):
    # Right-padded rows (70 valid keys, 0, 1): attention over the valid keys only. Measured: 7.2e-7
    # in float32 and 1.3e-15 in float64, i.e. 3 ulps of the largest output (|y| = 3.9994, just below
    # 4) in both, from the re-associated sums (see the test above) carried through two layers; bound: 4 ulps.
    model, inputs = _split_model(dtype, "gelu_approximate")
    assert kernels._prefix_lengths(inputs["padding_mask"]) is not None
    fast = model(inputs, output_attentions=True)
    steps = model(inputs, output_attentions=True, trace=lambda name, value: None)
    y = steps["sequence_output"]
    assert np.abs(fast["sequence_output"] - y).max() <= 4 * np.spacing(np.abs(y).max())
    for a, b in zip(fast["attention_probs"], steps["attention_probs"], strict=True):
        np.testing.assert_array_equal(a == 0, b == 0)  # the same keys masked, the same rows empty


def test_batch_split_restores_openblas_threads_and_reraises_errors(monkeypatch):
    blas = runtime.blas()
    if blas is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose thread count can be set: no batch split")
    monkeypatch.setattr(runtime, "THREADS", 2)
    model, inputs = _split_model("float32", "gelu")
    before = blas[1]()
    model(inputs)
    assert blas[1]() == before
    # an error in a part's thread reaches the caller, and the thread count is restored all the same
    bad = dict(model.prepared_weights())
    bad["layers"] = [dict(bad["layers"][0], ffn_kernel1=np.zeros((3, 3), np.float32))]
    with pytest.raises(ValueError):
        forward(encoder.PreparedWeights(bad, model.dtype_policy, model.config), model.config, inputs)
    assert blas[1]() == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_batch_split_works_in_a_forked_child(monkeypatch):
    monkeypatch.setattr(runtime, "THREADS", 2)
    model, inputs = _split_model("float32", "gelu_approximate")
    expected = model(inputs)["sequence_output"]  # runs the split in the parent first
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put(model(inputs)["sequence_output"].tobytes() == expected.tobytes()))
    child.start()
    child.join(120)  # the forward takes well under a second; 120 s means it hung
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and queue.get(timeout=5) is True


def test_one_core_runs_no_threads(monkeypatch):
    monkeypatch.setattr(runtime, "THREADS", 1)
    assert runtime.batch_parts(8, 128, 768) == 1
    started = []
    monkeypatch.setattr(runtime.threading.Thread, "start", lambda self: started.append(self))
    model, inputs = _split_model("float32", "gelu")
    model(inputs)
    assert started == []


def test_astype_over_threads_is_the_plain_cast(monkeypatch):
    monkeypatch.setattr(runtime, "THREADS", 3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1500, 1000)).astype(np.float32)  # large enough to be cut into row chunks
    for dtype in (np.float64, np.float16):
        _same(runtime.astype(x, dtype), x.astype(dtype))
    assert runtime.astype(x, np.float32) is x  # no copy when nothing is cast
    _same(runtime.astype(x.T, np.float64), x.T.astype(np.float64))  # not C-contiguous: the plain cast


@pytest.mark.parametrize("work", [np.float32, np.float64])
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_round_through_is_the_plain_round_trip(monkeypatch, work, half):
    # Bit for bit x.astype(half).astype(work): random bit patterns (every exponent, zeros, subnormals,
    # inf, NaN), values of activations' size, exact ties at every mantissa bit that decides one, and
    # the edges of the half type's normal range and overflow.
    if half == "bfloat16":
        half = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    monkeypatch.setattr(runtime, "THREADS", 3)
    uint = np.uint32 if work == np.float32 else np.uint64
    rng = np.random.default_rng(6)
    bits = rng.integers(0, np.iinfo(uint).max, 300_000, dtype=uint, endpoint=True)
    drop = {(np.float32, "float16"): 13, (np.float32, "bfloat16"): 16, (np.float64, "float16"): 42,
            (np.float64, "bfloat16"): 45}[work, np.dtype(half).name]
    ties = (bits & uint(~((1 << drop) - 1) & np.iinfo(uint).max)) | uint(1 << (drop - 1))  # exactly half way
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, -65520, 65536, 2.0 ** -14,
                      2.0 ** -14 * (1 - 2.0 ** -12), 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -126,
                      3.3e38, -3.4e38, 1e-40, 1.0, 1 + 2.0 ** -11, 1 + 2.0 ** -8, -1.5, 2.0, 1e-3, -1e-5, 7.0, 9.5,
                      0.1, -0.25], work)  # 30 edges
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.concatenate([bits.view(work), ties.view(work), edges, (rng.standard_normal(300_000)
                            * 10.0 ** rng.uniform(-9, 6, 300_000)).astype(work)]).reshape(-1, 10)
        got, expected = runtime.round_through(x, half), x.astype(half).astype(work)
    assert got.dtype == work and got.shape == x.shape
    same = (got.view(uint) == expected.view(uint)) | (np.isnan(got) & np.isnan(expected))
    assert same.all(), (x[~same][:5], got[~same][:5], expected[~same][:5])
    inplace = x.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        assert runtime.round_through(inplace, half, out=inplace) is inplace  # into `out`, which may be `x`
    assert ((inplace.view(uint) == expected.view(uint)) | (np.isnan(inplace) & np.isnan(expected))).all()
    _same(runtime.round_through(x[:0], half), x[:0])  # empty


def test_map_concurrent_keeps_order_and_raises_the_first_error(monkeypatch):
    monkeypatch.setattr(runtime, "THREADS", 4)
    assert runtime.map_concurrent(lambda i: i * i, range(20)) == [i * i for i in range(20)]
    seen = []

    def fn(i):
        seen.append(i)
        if i in (3, 7):
            raise ValueError(f"item {i}")
        # a `parallel` inside a call runs in the calling thread instead of waiting on the busy pool
        runtime.parallel(lambda a, b: None, 100)
        return i

    with pytest.raises(ValueError, match="item 3"):
        runtime.map_concurrent(fn, range(10))
    assert sorted(seen) == list(range(10))  # every call ran before the error was raised


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate"])
@pytest.mark.parametrize("hidden", [64, 256])
def test_forward_valid_is_forward_at_the_valid_positions_bit_for_bit(dtype, activation, hidden):
    # The dataset engine's forward packs the valid tokens of right-padded rows and runs every
    # per-token step on them alone; each valid position's value must be `forward`'s, bit for bit
    # (the same operations on the same rows; attention on queries padded to the batch's width).
    model = BertBackbone(vocabulary_size=200, num_layers=2, num_heads=4, hidden_dim=hidden,
                         intermediate_dim=2 * hidden, max_sequence_length=64, seed=0, dtype=dtype,
                         activation=activation)
    rng = np.random.default_rng(hidden)
    for batch, width in ((24, 48), (9, 20), (1, 12)):
        lengths = rng.integers(1, width + 1, batch)
        lengths[0] = width - 1 if batch > 1 else width - 2  # padded, some rows of nearly full length
        mask = np.arange(width) < lengths[:, None]
        inputs = {"token_ids": rng.integers(1, 200, (batch, width)) * mask,
                  "segment_ids": rng.integers(0, 2, (batch, width)) * mask, "padding_mask": mask}
        full = model(inputs, output_hidden_states=True)
        valid = encoder.forward_valid(model.prepared_weights(), model.config, inputs, dtype=model.dtype_policy,
                                      output_hidden_states=True)
        np.testing.assert_array_equal(valid["offsets"], np.concatenate([[0], np.cumsum(lengths)]))
        np.testing.assert_array_equal(valid["sequence_output"], full["sequence_output"][mask])
        np.testing.assert_array_equal(valid["pooled_output"], full["pooled_output"])
        for a, b in zip(valid["hidden_states"], full["hidden_states"], strict=True):
            np.testing.assert_array_equal(a, b[mask])
    # Rows that are not right-padded (or not padded at all) take `forward` itself.
    mask = np.ones((3, 8), bool)
    mask[1, 0] = False
    inputs = {"token_ids": rng.integers(1, 200, (3, 8)), "padding_mask": mask}
    valid = encoder.forward_valid(model.prepared_weights(), model.config, inputs, dtype=model.dtype_policy)
    np.testing.assert_array_equal(valid["sequence_output"], model(inputs)["sequence_output"][mask])


def test_work_on_the_cores_threads_follows_the_callers_numpy_error_handling(monkeypatch):
    # np.errstate is per thread: the workers of `parallel` / `map_concurrent` take the caller's.
    import warnings

    monkeypatch.setattr(runtime, "THREADS", 3)
    x = np.full((6, 1 << 16), 1e6, np.float32)  # overflows float16: the cast to inf warns by default
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from any thread would fail the test
        with np.errstate(over="ignore"):
            assert np.isinf(runtime.round_through(x, np.float16)).all()
            assert np.isinf(runtime.map_concurrent(lambda a: a.astype(np.float16), [x, x])[1]).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        runtime.round_through(x, np.float16)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        runtime.map_concurrent(lambda a: a.astype(np.float16), [x, x])


def test_work_on_the_cores_threads_calls_the_callers_error_callback(monkeypatch):
    # np.errstate(over="call") with np.seterrcall's function: the workers call the caller's function.
    monkeypatch.setattr(runtime, "THREADS", 3)
    x = np.full((6, 1 << 16), 1e6, np.float32)
    seen = []
    with np.errstate(over="call", call=lambda kind, flag: seen.append(kind)):
        runtime.round_through(x, np.float16)
        runtime.map_concurrent(lambda a: a.astype(np.float16), [x, x])
    assert seen and set(seen) == {"overflow"}
