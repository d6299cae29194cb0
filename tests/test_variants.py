"""The oracle's variants of our forward (a policy whose `steps` replace some ops, a hidden state
injected in place of the embeddings), and the catalogue of mistakes built on them.

The reference for each replaced step is the plain composition of `bert_ref.ops` (the teaching ops),
in float64, so the checks are exact up to float64 rounding of differently ordered sums (1e-12).
"""

from __future__ import annotations

import numpy as np
import pytest

from bert_ref import BertBackbone, ops
from bert_ref.encoder import forward
from bert_ref.oracle import variants

CFG = dict(vocabulary_size=30, num_layers=2, num_heads=4, hidden_dim=16, intermediate_dim=24, max_sequence_length=12)


@pytest.fixture(scope="module")
def model():
    return BertBackbone(**CFG, activation="gelu", seed=1)


def _inputs(padded=True):
    rng = np.random.default_rng(0)
    mask = np.ones((2, 7), bool)
    if padded:
        mask[1, 4:] = False
    seg = np.zeros((2, 7), np.int64)
    seg[0, 4:] = 1
    return {"token_ids": rng.integers(0, 30, (2, 7)), "segment_ids": seg, "padding_mask": mask}


def _run(model, steps=None, *, inputs=None, layers=None, **kw):
    """The variant run over `model`, or over the layers `layers` (a slice) renumbered from 0."""
    weights, config = dict(model.weights), model.config
    if layers is not None:
        keep = list(range(model.config.num_layers))[layers]
        weights = {k: v for k, v in weights.items() if not k.startswith("transformer_layer_")}
        for i, j in enumerate(keep or [0]):  # a layer to prepare even when none runs
            old = f"transformer_layer_{j}/"
            weights.update({f"transformer_layer_{i}/" + k[len(old):]: v for k, v in model.weights.items()
                            if k.startswith(old)})
        config = type(config)(**{**config.to_dict(), "num_layers": max(1, len(keep))})
        kw.setdefault("no_layers", not keep)
    return variants.run(weights, config, _inputs() if inputs is None else inputs, dtype="float64", steps=steps, **kw)


def _layer_params(model, i):
    w = model.weights
    p = f"transformer_layer_{i}/"
    a = p + "self_attention_layer/"
    d = {n: (w[a + n + "/kernel"].astype(np.float64), w[a + n + "/bias"].astype(np.float64))
         for n in ("query", "key", "value", "attention_output")}
    g = {k: w[p + k].astype(np.float64) for k in (
        "self_attention_layer_norm/gamma", "self_attention_layer_norm/beta", "feedforward_layer_norm/gamma",
        "feedforward_layer_norm/beta", "feedforward_intermediate_dense/kernel", "feedforward_intermediate_dense/bias",
        "feedforward_output_dense/kernel", "feedforward_output_dense/bias")}
    return d, g


def test_no_replaced_step_and_injected_segments_reproduce_the_forward(model):
    inputs = _inputs(padded=False)  # the fused path is bit-identical to the steps without padding
    plain = forward(model.weights, model.config, inputs, dtype="float64", output_hidden_states=True)
    same = _run(model, {}, inputs=inputs)
    for a, b in zip(plain["hidden_states"], same["hidden_states"], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain["pooled_output"], same["pooled_output"])
    one = _run(model, inputs=inputs, layers=slice(1, 2), inject=same["hidden_states"][1])  # layer 1 alone
    np.testing.assert_array_equal(one["hidden_states"][0], same["hidden_states"][1])
    np.testing.assert_array_equal(one["hidden_states"][1], same["hidden_states"][2])
    np.testing.assert_array_equal(one["pooled_output"], same["pooled_output"])
    emb = _run(model, inputs=inputs, no_layers=True)  # the embeddings alone
    np.testing.assert_array_equal(emb["sequence_output"], same["hidden_states"][0])
    pool = _run(model, inputs=inputs, layers=slice(2, 2), inject=same["hidden_states"][2])  # the pooler alone
    np.testing.assert_array_equal(pool["pooled_output"], same["pooled_output"])


def test_injection_does_not_write_into_the_callers_hidden_state(model):
    x = _run(model)["hidden_states"][1]
    before = x.copy()
    _run(model, {"pre_layer_norm": True}, layers=slice(1, 2), inject=x)
    np.testing.assert_array_equal(x, before)


def test_pre_layer_norm_is_the_pre_ln_composition_of_the_plain_ops(model):
    inputs = _inputs()
    x = _run(model)["hidden_states"][0]
    got = _run(model, {"pre_layer_norm": True}, layers=slice(0, 1), inject=x)["hidden_states"][1]
    d, g = _layer_params(model, 0)
    eps, mask = model.config.layer_norm_epsilon, inputs["padding_mask"][:, None, None, :]

    def attention(y):  # [B, S, H] -> [B, S, H], plain ops
        q, k, v = (ops.split_heads(ops.dense(y, *d[n]), 4) for n in ("query", "key", "value"))
        return ops.dense(ops.attention_context(ops.masked_softmax(ops.attention_scores(q, k), mask), v),
                         *d["attention_output"])

    x1 = x + attention(ops.layer_norm(x, g["self_attention_layer_norm/gamma"], g["self_attention_layer_norm/beta"],
                                      eps))
    y = ops.layer_norm(x1, g["feedforward_layer_norm/gamma"], g["feedforward_layer_norm/beta"], eps)
    inner = ops.gelu(ops.dense(y, g["feedforward_intermediate_dense/kernel"], g["feedforward_intermediate_dense/bias"]))
    x2 = x1 + ops.dense(inner, g["feedforward_output_dense/kernel"], g["feedforward_output_dense/bias"])
    np.testing.assert_allclose(got, x2, rtol=0, atol=1e-12)


def test_interleaved_heads_are_contiguous_heads_of_permuted_projections(model):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 12))  # [B, S, h*d] with h = 4, d = 3
    split = variants.split_heads_interleaved(x, 4)
    np.testing.assert_array_equal(variants.merge_heads_interleaved(split), x)
    perm = np.arange(12).reshape(3, 4).T.ravel()  # head j = columns j, j+4, j+8
    np.testing.assert_array_equal(split, ops.split_heads(x[..., perm], 4))


def test_each_replaced_step_changes_what_it_says(model):
    base = _run(model)
    same = _run(model, {"layer_norm": ops.layer_norm, "position_ids": lambda s: np.broadcast_to(np.arange(7), s.shape),
                        "query_scale": 1.0, "split_heads": ops.split_heads, "merge_heads": ops.merge_heads,
                        "softmax": lambda s, m: ops.masked_softmax(s, m[:, None, None, :])})
    np.testing.assert_allclose(same["sequence_output"], base["sequence_output"], rtol=0, atol=1e-12)
    for steps in ({"layer_norm": variants.layer_norm_unbiased}, {"softmax": variants.softmax_mask_ignored},
                  {"position_ids": lambda s: np.broadcast_to(np.arange(7) + 1, s.shape)}, {"query_scale": 2.0},
                  {"split_heads": variants.split_heads_interleaved, "merge_heads": variants.merge_heads_interleaved},
                  {"pooler": variants.pooler_no_tanh}, {"pooler": variants.pooler_mean}, {"pre_layer_norm": True}):
        out = _run(model, steps)
        key = "pooled_output" if "pooler" in steps else "sequence_output"
        assert np.abs(out[key] - base[key]).max() > 1e-6, steps


def test_unbiased_and_half_layer_norms_round_where_they_say():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8))
    g, b = np.ones(8), np.zeros(8)
    unbiased = variants.layer_norm_unbiased(x, g, b, 0.0)
    np.testing.assert_allclose(unbiased.std(axis=-1, ddof=1), 1, atol=1e-12)
    half = variants.layer_norm_half(x, g, b, 1e-12)
    assert np.array_equal(half, half.astype(np.float16).astype(np.float64))  # float16 values
    np.testing.assert_allclose(half, ops.layer_norm(x, g, b, 1e-12), atol=4e-3)  # a few float16 steps at |y| < 4


def test_masks_on_queries_and_ignored_differ_only_at_padded_queries():
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((1, 2, 5, 5))
    mask = np.array([[True, True, True, False, False]])
    ignored = variants.softmax_mask_ignored(scores, mask)
    queries = variants.softmax_mask_on_queries(scores, mask)
    np.testing.assert_allclose(ignored[:, :, :3], queries[:, :, :3], atol=1e-15)
    np.testing.assert_allclose(queries[:, :, 3:], 0.2, atol=1e-15)  # a padded query attends uniformly
    assert np.isnan(variants.softmax_mask_neg_inf(scores, np.zeros((1, 5), bool))).all()
    additive = variants.softmax_mask_additive(scores, mask)
    np.testing.assert_allclose(additive, ops.masked_softmax(scores, mask[:, None, None, :]), atol=1e-300)


def test_catalogue_lists_only_the_mistakes_these_inputs_can_show(model):
    full = {h.id for h in variants.catalogue(model.config, _inputs())}
    assert {"mask_ignored", "token_types_zero", "positions_restart_at_segment", "activation=gelu_approximate",
            "layer_norm_epsilon=1e-5", "kernel_transposed=value", "pre_layer_norm"} <= full
    assert "activation=gelu" not in full and "layer_norm_epsilon=1e-12" not in full  # what the config says
    plain = _inputs(padded=False)
    plain["segment_ids"][:] = 0
    few = {h.id for h in variants.catalogue(model.config, plain)}
    assert not {"mask_ignored", "token_types_zero", "positions_restart_at_segment"} & few


def test_combinations_join_different_kinds_only(model):
    cat = {h.id: h for h in variants.catalogue(model.config, _inputs())}
    pair = variants.combine(cat["activation=gelu_approximate"], cat["layer_norm_epsilon=1e-5"])
    assert pair is not None and pair.ids == ("activation=gelu_approximate", "layer_norm_epsilon=1e-5")
    assert variants.combine(cat["layer_norm_epsilon=1e-5"], cat["layer_norm_epsilon=1e-3"]) is None
    assert variants.combine(cat["mask_ignored"], cat["softmax_half"]) is None  # both replace the softmax
    config, _, _, steps = pair.apply(model.config, dict(model.weights), _inputs())
    assert config.activation == "gelu_approximate" and config.layer_norm_epsilon == 1e-5 and not steps
