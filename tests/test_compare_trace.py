"""The trace's op outputs recompose to the layer outputs.

Each named intermediate of `forward(trace=True)` is recomputed here from the previous ones with
plain NumPy written out in this file (not `bert_ref.ops`), and checked against the next trace point
and against `hidden_states` / `attention_probs`. Two kinds of check:

* in the float32 policy, steps that are one elementwise float32 operation on the same operands
  (the residual sums, the embedding sum in keras' order) must be bit-identical, and trace points
  that *are* an output (the last one of a layer is `hidden_states[i + 1]`) must be identical;
* in the float64 policy, every op (dense, scaled scores, masked softmax, context, GELU, layer
  norm, pooler) is recomputed in float64; tolerance 1e-12 absolute: float64 rounding of sums of at
  most 64 terms of size <= ~10 is below 1e-13, and an error in the recomposition (a wrong head
  split, a missing bias or gamma, the wrong scale, mask or GELU) is >= 1e-6 for these weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bert_ref import BertBackbone
from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER, TRACE_POOLER
from bert_ref.model import kernels

ATOL64 = 1e-12
HEADS = 4


@pytest.fixture(scope="module")
def inputs():
    return {
        "token_ids": np.array([[2, 17, 9, 31, 3, 0, 0], [2, 5, 6, 40, 8, 9, 3]]),
        "segment_ids": np.array([[0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7]),
    }


def _model(dtype, activation="gelu_approximate"):
    rng = np.random.default_rng(7)
    base = BertBackbone(vocabulary_size=48, num_layers=2, num_heads=HEADS, hidden_dim=16, intermediate_dim=24,
                        max_sequence_length=8, activation=activation, seed=3)
    # Non-trivial layer-norm and bias parameters, so a recomposition that drops one is caught.
    weights = {}
    for name, w in base.weights.items():
        w = np.array(w)
        if name.endswith("/gamma"):
            w = 1.0 + 0.3 * rng.standard_normal(w.shape)
        elif name.endswith("/bias") or name.endswith("/beta"):
            w = 0.1 * rng.standard_normal(w.shape)
        weights[name] = w.astype(np.float32)
    return BertBackbone(**base.config.to_dict(), dtype=dtype, weights=weights)


def _ln(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _heads(x):  # [B, S, h*d] -> [B, h, S, d]
    b, s, a = x.shape
    return x.reshape(b, s, HEADS, a // HEADS).transpose(0, 2, 1, 3)


@pytest.fixture(scope="module", params=["gelu_approximate", "gelu"])
def run64(request, inputs):
    model = _model("float64", request.param)
    out = model(inputs, output_hidden_states=True, output_attentions=True, trace=True)
    w = {k: np.asarray(v, np.float64) for k, v in model.weights.items()}
    return model, out, w


def test_trace_names_are_the_documented_ones(run64):
    model, out, _ = run64
    expected = list(TRACE_EMBEDDINGS)
    for i in range(model.config.num_layers):
        expected += [f"transformer_layer_{i}/{n}" for n in TRACE_LAYER]
    expected += list(TRACE_POOLER)
    assert list(out["trace"]) == expected


def test_embeddings_recompose(run64, inputs):
    model, out, w = run64
    t = out["trace"]
    ids, seg = inputs["token_ids"], inputs["segment_ids"]
    np.testing.assert_array_equal(t["embeddings/token"], w["token_embedding/embeddings"][ids])
    np.testing.assert_array_equal(t["embeddings/segment"], w["segment_embedding/embeddings"][seg])
    np.testing.assert_array_equal(t["embeddings/position"][0], w["position_embedding/embeddings"][: ids.shape[1]])
    np.testing.assert_allclose(t["embeddings/sum"],
                               t["embeddings/token"] + t["embeddings/position"] + t["embeddings/segment"],
                               rtol=0, atol=ATOL64)
    eps = model.config.layer_norm_epsilon
    ln = _ln(t["embeddings/sum"], w["embeddings_layer_norm/gamma"], w["embeddings_layer_norm/beta"], eps)
    np.testing.assert_allclose(t["embeddings/layer_norm"], ln, rtol=0, atol=ATOL64)
    np.testing.assert_array_equal(t["embeddings/layer_norm"], out["hidden_states"][0])


@pytest.mark.parametrize("layer", [0, 1])
def test_layer_ops_recompose(run64, inputs, layer):
    model, out, w = run64
    cfg = model.config
    t = {n: out["trace"][f"transformer_layer_{layer}/{n}"] for n in TRACE_LAYER}
    p = f"transformer_layer_{layer}/"
    a = p + "self_attention_layer/"
    x = out["hidden_states"][layer]
    for proj in ("query", "key", "value"):
        np.testing.assert_allclose(t[proj], x @ w[a + f"{proj}/kernel"] + w[a + f"{proj}/bias"], rtol=0, atol=ATOL64)
    d = cfg.key_dim
    scores = _heads(t["query"]) @ _heads(t["key"]).transpose(0, 1, 3, 2) / math.sqrt(d)
    np.testing.assert_allclose(t["attention_scores"], scores, rtol=0, atol=ATOL64)
    valid_key = inputs["padding_mask"][:, None, None, :].astype(bool)
    e = np.where(valid_key, np.exp(scores - np.where(valid_key, scores, -np.inf).max(-1, keepdims=True)), 0.0)
    probs = e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(t["attention_probs"], probs, rtol=0, atol=ATOL64)
    np.testing.assert_array_equal(t["attention_probs"], out["attention_probs"][layer])
    context = (probs @ _heads(t["value"])).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    np.testing.assert_allclose(t["attention_context"], context, rtol=0, atol=ATOL64)
    np.testing.assert_allclose(t["attention_output"],
                               context @ w[a + "attention_output/kernel"] + w[a + "attention_output/bias"],
                               rtol=0, atol=ATOL64)
    np.testing.assert_allclose(t["attention_residual"], t["attention_output"] + x, rtol=0, atol=ATOL64)
    eps = cfg.layer_norm_epsilon
    y = _ln(t["attention_residual"], w[p + "self_attention_layer_norm/gamma"], w[p + "self_attention_layer_norm/beta"],
            eps)
    np.testing.assert_allclose(t["self_attention_layer_norm"], y, rtol=0, atol=ATOL64)
    inner = y @ w[p + "feedforward_intermediate_dense/kernel"] + w[p + "feedforward_intermediate_dense/bias"]
    np.testing.assert_allclose(t["feedforward_intermediate"], inner, rtol=0, atol=ATOL64)
    if cfg.activation == "gelu_approximate":
        act = 0.5 * inner * (1 + np.tanh(math.sqrt(2 / math.pi) * (inner + 0.044715 * inner**3)))
    else:
        act = 0.5 * inner * (1 + np.vectorize(math.erf)(inner / math.sqrt(2)))
    np.testing.assert_allclose(t["feedforward_activation"], act, rtol=0, atol=ATOL64)
    ffn = act @ w[p + "feedforward_output_dense/kernel"] + w[p + "feedforward_output_dense/bias"]
    np.testing.assert_allclose(t["feedforward_output"], ffn, rtol=0, atol=ATOL64)
    np.testing.assert_allclose(t["feedforward_residual"], t["feedforward_output"] + t["self_attention_layer_norm"],
                               rtol=0, atol=ATOL64)
    z = _ln(t["feedforward_residual"], w[p + "feedforward_layer_norm/gamma"], w[p + "feedforward_layer_norm/beta"], eps)
    np.testing.assert_allclose(t["feedforward_layer_norm"], z, rtol=0, atol=ATOL64)
    np.testing.assert_array_equal(t["feedforward_layer_norm"], out["hidden_states"][layer + 1])


def test_pooler_recomposes(run64):
    _, out, w = run64
    seq = out["sequence_output"]
    np.testing.assert_array_equal(seq, out["hidden_states"][-1])
    pooled = np.tanh(seq[:, 0] @ w["pooled_dense/kernel"] + w["pooled_dense/bias"])
    np.testing.assert_allclose(out["trace"]["pooled_output"], pooled, rtol=0, atol=ATOL64)
    np.testing.assert_array_equal(out["trace"]["pooled_output"], out["pooled_output"])


def test_float32_residuals_and_outputs_are_bit_exact(inputs):
    model = _model("float32")
    out = model(inputs, output_hidden_states=True, output_attentions=True, trace=True)
    t = out["trace"]
    assert all(v.dtype == np.float32 for v in t.values())
    # keras' order: (token + position) + segment, each a float32 addition.
    np.testing.assert_array_equal(t["embeddings/sum"],
                                  (t["embeddings/token"] + t["embeddings/position"]) + t["embeddings/segment"])
    np.testing.assert_array_equal(t["embeddings/layer_norm"], out["hidden_states"][0])
    for i in range(model.config.num_layers):
        p = f"transformer_layer_{i}/"
        np.testing.assert_array_equal(t[p + "attention_residual"], t[p + "attention_output"] + out["hidden_states"][i])
        np.testing.assert_array_equal(t[p + "feedforward_residual"],
                                      t[p + "feedforward_output"] + t[p + "self_attention_layer_norm"])
        np.testing.assert_array_equal(t[p + "feedforward_layer_norm"], out["hidden_states"][i + 1])
        np.testing.assert_array_equal(t[p + "attention_probs"], out["attention_probs"][i])
    np.testing.assert_array_equal(t["pooled_output"], out["pooled_output"])


def test_trace_does_not_change_the_outputs(inputs, monkeypatch):
    # An untraced forward runs the fast paths of bert_ref.model.kernels, a traced one the plain steps. They
    # are bit-identical except the attention over right-padded rows, which sums over the n valid
    # keys only (kernels._attention_valid_keys, bounded in tests/test_kernels.py). With that path
    # off, tracing must change no bit; with it on, nothing beyond a few ulps.
    model = _model("float32")
    assert kernels._prefix_lengths(inputs["padding_mask"].astype(bool)) is not None  # right-padded
    traced = model(inputs, output_hidden_states=True, trace=True)
    monkeypatch.setattr(kernels, "VALID_KEYS", False)
    plain = model(inputs, output_hidden_states=True)
    for a, b in zip(plain["hidden_states"], traced["hidden_states"], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain["pooled_output"], traced["pooled_output"])
    monkeypatch.setattr(kernels, "VALID_KEYS", True)
    fast = model(inputs, output_hidden_states=True)
    for a, b in zip(fast["hidden_states"], traced["hidden_states"], strict=True):
        # Measured: bit-identical on these inputs (0 of 224 elements differ in any layer); bound: the
        # 2-layer bound of tests/test_kernels.py, 4 ulps of the largest value.
        assert np.abs(a - b).max() <= 4 * np.spacing(np.abs(b).max())


def test_trace_callback_sees_every_point_in_order(inputs):
    model = _model("float32")
    seen = []
    model(inputs, trace=lambda name, x: seen.append((name, x.shape)))
    names = [n for n, _ in seen]
    assert names == list(model(inputs, trace=True)["trace"])
    shapes = dict(seen)
    assert shapes["transformer_layer_1/attention_scores"] == (2, HEADS, 7, 7)
    assert shapes["transformer_layer_0/feedforward_intermediate"] == (2, 7, 24)
