"""The encoder's hooks and start/stop, and the catalogue of mistakes built on them.

The reference for each hook is the plain composition of `bert_ref.ops` (the teaching ops), in
float64, so the checks are exact up to float64 rounding of differently ordered sums (1e-12).
"""

from __future__ import annotations

import numpy as np
import pytest

from bert_ref import BertBackbone, ops
from bert_ref.encoder import Hooks, forward
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


def _run(model, hooks=None, **kw):
    return forward(model.weights, model.config, kw.pop("inputs", _inputs()), dtype="float64",
                   output_hidden_states=True, hooks=hooks, **kw)


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


def test_empty_hooks_and_start_stop_reproduce_the_forward(model):
    inputs = _inputs(padded=False)  # the fused path is bit-identical to the steps without padding
    plain = forward(model.weights, model.config, inputs, dtype="float64", output_hidden_states=True)
    hooked = _run(model, Hooks(), inputs=inputs)
    for a, b in zip(plain["hidden_states"], hooked["hidden_states"], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain["pooled_output"], hooked["pooled_output"])
    one = _run(model, start=(1, hooked["hidden_states"][1]), stop=2, inputs=inputs)  # layer 1 alone
    np.testing.assert_array_equal(one["hidden_states"][1], hooked["hidden_states"][2])
    np.testing.assert_array_equal(one["pooled_output"], hooked["pooled_output"])
    emb = _run(model, stop=0, inputs=inputs)  # the embeddings alone: no layer, no pooler
    np.testing.assert_array_equal(emb["sequence_output"], hooked["hidden_states"][0])
    assert "pooled_output" not in emb
    pool = _run(model, start=(2, hooked["hidden_states"][2]), inputs=inputs)  # the pooler alone
    np.testing.assert_array_equal(pool["pooled_output"], hooked["pooled_output"])


def test_start_does_not_write_into_the_callers_hidden_state(model):
    x = _run(model)["hidden_states"][1].astype(np.float32)
    before = x.copy()
    forward(model.weights, model.config, _inputs(), output_hidden_states=True, start=(1, x),
            hooks=Hooks(pre_layer_norm=True))
    np.testing.assert_array_equal(x, before)


def test_pre_layer_norm_hook_is_the_pre_ln_composition_of_the_plain_ops(model):
    inputs = _inputs()
    x = _run(model)["hidden_states"][0]
    got = _run(model, Hooks(pre_layer_norm=True), start=(0, x), stop=1, inputs=inputs)["hidden_states"][1]
    d, g = _layer_params(model, 0)
    eps, mask = model.config.layer_norm_epsilon, inputs["padding_mask"][:, None, None, :]
    y = ops.layer_norm(x, g["self_attention_layer_norm/gamma"], g["self_attention_layer_norm/beta"], eps)
    x1 = x + ops.multi_head_attention(y, d["query"], d["key"], d["value"], d["attention_output"], 4, mask)
    y = ops.layer_norm(x1, g["feedforward_layer_norm/gamma"], g["feedforward_layer_norm/beta"], eps)
    x2 = x1 + ops.feed_forward(y, g["feedforward_intermediate_dense/kernel"], g["feedforward_intermediate_dense/bias"],
                               g["feedforward_output_dense/kernel"], g["feedforward_output_dense/bias"], "gelu")
    np.testing.assert_allclose(got, x2, rtol=0, atol=1e-12)


def test_interleaved_heads_are_contiguous_heads_of_permuted_projections(model):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 12))  # [B, S, h*d] with h = 4, d = 3
    split = variants.split_heads_interleaved(x, 4)
    np.testing.assert_array_equal(variants.merge_heads_interleaved(split), x)
    perm = np.arange(12).reshape(3, 4).T.ravel()  # head j = columns j, j+4, j+8
    np.testing.assert_array_equal(split, ops.split_heads(x[..., perm], 4))


def test_each_hook_changes_what_it_says(model):
    base = _run(model)
    same = _run(model, Hooks(layer_norm=ops.layer_norm, position_ids=lambda s: np.broadcast_to(np.arange(7), s.shape),
                             query_scale=1.0, split_heads=ops.split_heads, merge_heads=ops.merge_heads))
    np.testing.assert_allclose(same["sequence_output"], base["sequence_output"], rtol=0, atol=1e-12)
    for hooks in (Hooks(layer_norm=variants.layer_norm_unbiased), Hooks(softmax=variants.softmax_mask_ignored),
                  Hooks(position_ids=lambda s: np.broadcast_to(np.arange(7) + 1, s.shape)), Hooks(query_scale=2.0),
                  Hooks(split_heads=variants.split_heads_interleaved, merge_heads=variants.merge_heads_interleaved),
                  Hooks(pooler=variants.pooler_no_tanh)):
        out = _run(model, hooks)
        changed = out["pooled_output"] if hooks.pooler else out["sequence_output"]
        assert np.abs(changed - (base["pooled_output"] if hooks.pooler else base["sequence_output"])).max() > 1e-6


def test_position_ids_outside_the_table_are_refused(model):
    with pytest.raises(ValueError, match=r"position_ids\[0, 2\] = 12 is outside \[0, 12\)"):
        _run(model, Hooks(position_ids=lambda s: np.broadcast_to(np.arange(7) + 10, s.shape)))


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
    config, _, _, hooks = pair.apply(model.config, dict(model.weights), _inputs())
    assert config.activation == "gelu_approximate" and config.layer_norm_epsilon == 1e-5 and hooks == Hooks()
