"""ggml's block-quantised formats and float16 GELU table, as ggml itself computes them.

golden/ggml/ggml.npz holds what ggml's own shared libraries (llama-cpp-python 0.3.36, built from its
sdist on this x86 machine) computed for a [32, 64] float32 input (tools/golden/make_ggml_golden.py):
the de-quantised weights of `ggml_quantize_chunk` in each format, the q8_0 / q8_1 blocks of the CPU
backend's activation quantiser, and `ggml_table_gelu_f16`. Every comparison is exact: the formats
are integers times float16 scales, and the emulation follows ggml's float32 arithmetic step by step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone
from bert_ref.model import activations, ggml
from bert_ref.model.precision import POLICY_NAMES, get_policy

GOLDEN = np.load(Path(__file__).resolve().parents[1] / "golden" / "ggml" / "ggml.npz")
X = GOLDEN["x"]


@pytest.mark.parametrize("fmt", ggml.FORMATS)
def test_weight_quantisation_matches_ggml_exactly(fmt):
    ours = ggml.quantize(X, fmt).dequantize()
    np.testing.assert_array_equal(ours, GOLDEN[f"weights/{fmt}"])


@pytest.mark.parametrize("fmt", ["q8_0", "q8_1"])
def test_activation_quantisation_matches_ggml_cpu_exactly(fmt):
    values, sums = ggml.quantize_activations(X, fmt)
    d = GOLDEN[f"activations/{fmt}/d"].astype(np.float32)  # [32, 2]
    q = GOLDEN[f"activations/{fmt}/q"].astype(np.float32).reshape(32, 2, 32)
    np.testing.assert_array_equal(values, (q * d[..., None]).reshape(32, 64))
    if fmt == "q8_1":
        np.testing.assert_array_equal(sums, GOLDEN["activations/q8_1/s"].astype(np.float32))
    else:
        assert sums is None


def test_activations_round_half_to_even_and_weights_half_away_from_zero():
    # x * 127 / max|x| lands on 2.5 for x = 2.5 in a block whose max is 127: rint gives 2, roundf 3.
    x = np.zeros(32, np.float32)
    x[0], x[1] = 127.0, 2.5
    values, _ = ggml.quantize_activations(x)
    assert values[1] == 2.0
    assert ggml.quantize(x, "q8_0").dequantize()[1] == 3.0


def test_gelu_f16_table_is_ggmls_for_every_float16_input():
    f = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    ours = activations.gelu_f16_table().astype(np.float16).view(np.uint16)
    used = np.abs(f) < 10  # ggml reads the table only for -10 < x < 10 (0 below, x above)
    assert used.sum() > 30000  # 37376 of the 65536 bit patterns
    np.testing.assert_array_equal(ours[used], GOLDEN["gelu_f16_table"][used])


def test_gelu_f16_table_op_reads_the_table_between_minus_10_and_10():
    x = np.float32([-11, -10, -1.5, 0.3, 9.99, 10, 12.5])
    y = activations.gelu_approximate_f16_table(x)
    table = GOLDEN["gelu_f16_table"].view(np.float16).astype(np.float32)
    expected = [0, 0, table[np.float16(-1.5).view(np.uint16)], table[np.float16(0.3).view(np.uint16)],
                table[np.float16(9.99).view(np.uint16)], 10, 12.5]
    np.testing.assert_array_equal(y, np.float32(expected))


def test_block_matmul_adds_the_minimum_terms_with_ggmls_rounded_block_sums():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    w = rng.standard_normal((64, 3)).astype(np.float32)
    for fmt in ("q4_1", "q5_1"):
        k = ggml.quantize_kernel(w, fmt)
        values, sums = ggml.quantize_activations(x, "q8_1")
        full = ggml.quantize(np.ascontiguousarray(w.T), fmt).dequantize().T  # q d + m per value
        exact = values.astype(np.float64) @ full.astype(np.float64)  # the min term with unrounded sums
        got = ggml.block_matmul(x, k)
        # ggml's min term uses s = float16(d * sum(q)) per block: the results differ from the exact
        # product by at most m * |s - d16 * sum(q)| summed over the 2 blocks (float16 rounding of s).
        assert not np.array_equal(got, exact.astype(np.float32))
        np.testing.assert_allclose(got, exact, rtol=0, atol=2 * 2 ** -11 * np.abs(x).sum(axis=1).max()
                                   * np.abs(w).max())


def test_block_formats_need_rows_of_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        ggml.quantize(np.zeros((2, 40), np.float32), "q8_0")


@pytest.mark.parametrize("fmt", ggml.FORMATS)
def test_ggml_policies_are_policies(fmt):
    assert fmt in POLICY_NAMES
    policy = get_policy(fmt)
    assert policy.compute_dtype == np.float32 and policy.rounds_matmul_inputs
    assert policy.activation("gelu_approximate") == "gelu_approximate_f16_table"
    assert policy.activation("gelu") == "gelu"


def test_ggml_policy_quantises_kernels_of_whole_blocks_and_falls_back_to_f16_otherwise():
    model = BertBackbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=64, intermediate_dim=96,
                         max_sequence_length=8, seed=0)
    policy = get_policy("q4_0")
    k = policy.kernel(model.weights["transformer_layer_0/feedforward_intermediate_dense/kernel"])  # [64, 96]
    assert isinstance(k, ggml.BlockKernel) and k.format == "q4_0"
    # 4 bits per weight in blocks of 32: at most 16 distinct values per block column.
    assert max(len(np.unique(k[:32, j])) for j in range(96)) <= 16
    odd = np.ones((40, 8), np.float32) / 3
    np.testing.assert_array_equal(policy.kernel(odd), ggml.fp16(odd))  # llama-quantize's F16 fallback
    table = policy.embedding_table("token_embedding/embeddings", model.weights["token_embedding/embeddings"])
    np.testing.assert_array_equal(table, ggml.quantize(model.weights["token_embedding/embeddings"], "q8_0")
                                  .dequantize())


@pytest.mark.parametrize("precision", ["q8_0", "q4_1", "ggml_f16"])
def test_ggml_ensemble_sums_the_same_quantised_products_exactly(precision):
    from bert_ref.encoder import forward
    from bert_ref.oracle.ensemble import members

    model = BertBackbone(vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128,
                         max_sequence_length=16, seed=0)
    ours, wide = members(precision)
    assert (ours.name, wide.name) == (precision, f"{precision}~wide")
    w = model.weights["transformer_layer_0/feedforward_intermediate_dense/kernel"]
    k, k_wide = ours.policy.kernel(w), wide.policy.kernel(w)
    assert k_wide.dtype == np.float64 and k_wide.format == k.format
    np.testing.assert_array_equal(k_wide, k)  # the same quantised weights, held in float64
    ids = np.random.default_rng(1).integers(0, 40, (2, 16))
    inputs = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones(ids.shape, bool)}
    a = forward(model.weights, model.config, inputs, dtype=ours.policy)["sequence_output"]
    b = forward(model.weights, model.config, inputs, dtype=wide.policy)["sequence_output"]
    truth = forward(model.weights, model.config, inputs, dtype="float64")["sequence_output"]
    assert b.dtype == np.float32 and not np.array_equal(a, b)  # another order of the sums
    # Only the order of the float32 sums differs (a q8_0 rounding of a next input could flip), far
    # below the quantisation's own error: measured 0.003-0.6% of its RMS on this model (0.6%: ggml_f16).
    rms = lambda e: float(np.sqrt(np.mean(np.square(e, dtype=np.float64))))  # noqa: E731
    assert rms(a - b) < 0.01 * rms(a - truth)
