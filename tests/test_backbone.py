"""BertBackbone's public API: construction, config, weights, presets, policies and input errors."""

import re

import numpy as np
import pytest

from bert_ref import POLICY_NAMES, BertBackbone, BertConfig, forward
from bert_ref.model.presets import PRESETS

SMALL = dict(vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=12,
             max_sequence_length=10, num_segments=3)


@pytest.fixture(scope="module")
def model():
    return BertBackbone(**SMALL, seed=0)


def inputs(batch=2, seq=6, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), bool)
    mask[0, seq // 2:] = False
    return {"token_ids": rng.integers(0, 40, (batch, seq)), "segment_ids": rng.integers(0, 3, (batch, seq)),
            "padding_mask": mask}


# -- outputs -----------------------------------------------------------------------------------

def test_call_returns_sequence_and_pooled_output(model):
    out = model(inputs())
    assert set(out) == {"sequence_output", "pooled_output"}
    assert out["sequence_output"].shape == (2, 6, 8) and out["sequence_output"].dtype == np.float32
    assert out["pooled_output"].shape == (2, 8)


def test_hidden_states_and_attentions(model):
    out = model(inputs(), output_hidden_states=True, output_attentions=True)
    assert len(out["hidden_states"]) == 3 and all(h.shape == (2, 6, 8) for h in out["hidden_states"])
    np.testing.assert_array_equal(out["hidden_states"][-1], out["sequence_output"])
    assert len(out["attention_probs"]) == 2 and out["attention_probs"][0].shape == (2, 2, 6, 6)


def test_forward_is_the_same_pure_function(model):
    a = model(inputs())
    b = forward(dict(model.weights), model.config, inputs())
    np.testing.assert_array_equal(a["sequence_output"], b["sequence_output"])
    c = forward(dict(model.weights), model.config, inputs())  # nothing carried between calls
    np.testing.assert_array_equal(b["sequence_output"], c["sequence_output"])


def test_defaults_for_segment_ids_and_padding_mask_and_lists(model):
    ids = [[1, 2, 3], [4, 5, 6]]
    a = model({"token_ids": ids})
    b = model({"token_ids": np.array(ids), "segment_ids": np.zeros((2, 3), int), "padding_mask": np.ones((2, 3), bool)})
    np.testing.assert_array_equal(a["sequence_output"], b["sequence_output"])
    c = model({"token_ids": ids, "padding_mask": [[1, 1, 1], [1.0, 1.0, 1.0]]})
    np.testing.assert_array_equal(a["sequence_output"], c["sequence_output"])


def test_all_padding_row_is_finite_and_attends_to_nothing(model):
    x = inputs()
    x["padding_mask"][1] = False
    out = model(x, output_attentions=True)
    assert np.isfinite(out["sequence_output"]).all() and np.isfinite(out["pooled_output"]).all()
    assert all(np.all(p[1] == 0) for p in out["attention_probs"])


def test_batch_of_zero_returns_empty_outputs(model):
    out = model({"token_ids": np.zeros((0, 5), int)})
    assert out["sequence_output"].shape == (0, 5, 8) and out["pooled_output"].shape == (0, 8)


def test_dropout_is_stored_and_never_applied():
    a = BertBackbone(**SMALL, dropout=0.0, seed=3)
    b = BertBackbone(**SMALL, dropout=0.5, weights=a.weights)
    assert b.get_config()["dropout"] == 0.5
    np.testing.assert_array_equal(a(inputs())["sequence_output"], b(inputs())["sequence_output"])


# -- weights, config, init -----------------------------------------------------------------------

def test_weights_are_read_only_and_canonical(model):
    assert list(model.weights) == list(model.config.weight_shapes())
    with pytest.raises(TypeError):
        model.weights["pooled_dense/bias"] = np.zeros(8)
    with pytest.raises(ValueError):
        model.weights["pooled_dense/bias"][0] = 1.0


def test_non_divisible_hidden_dim_uses_floor_key_dim():
    m = BertBackbone(vocabulary_size=20, num_layers=1, num_heads=3, hidden_dim=10, intermediate_dim=7, seed=0)
    assert m.weights["transformer_layer_0/self_attention_layer/query/kernel"].shape == (10, 9)
    assert m.weights["transformer_layer_0/self_attention_layer/attention_output/kernel"].shape == (9, 10)
    assert m({"token_ids": [[1, 2]]})["sequence_output"].shape == (1, 2, 10)


def test_key_dim_zero_is_an_error():
    with pytest.raises(ValueError, match="key_dim"):
        BertBackbone(vocabulary_size=20, num_layers=1, num_heads=4, hidden_dim=3, intermediate_dim=7)


def test_random_init_is_keras_hub_truncated_normal_and_seeded():
    a = BertBackbone(**SMALL, seed=7)
    b = BertBackbone(**SMALL, seed=7)
    c = BertBackbone(**SMALL, seed=8)
    for name, w in a.weights.items():
        np.testing.assert_array_equal(w, b.weights[name])
        if name.endswith("/gamma"):
            assert np.all(w == 1)
        elif name.endswith(("/bias", "/beta")):
            assert np.all(w == 0)
        else:
            assert np.abs(w).max() <= 0.04  # cut at 2 stddev
    big = BertBackbone(vocabulary_size=5000, num_layers=0, num_heads=1, hidden_dim=64, intermediate_dim=1, seed=0)
    e = big.weights["token_embedding/embeddings"]
    # truncated N(0, 0.02) at ±2σ has std 0.02 * 0.8796; 320k samples: sampling error ~ 0.1%
    assert abs(e.std() / 0.02 - 0.8796) < 0.005 and abs(e.mean()) < 1e-4
    assert not np.array_equal(a.weights["pooled_dense/kernel"], c.weights["pooled_dense/kernel"])


def test_weights_missing_extra_and_misshaped_are_named():
    good = dict(BertBackbone(**SMALL, seed=0).weights)
    missing = dict(good)
    del missing["transformer_layer_1/feedforward_output_dense/bias"]
    with pytest.raises(ValueError, match=re.escape("missing transformer_layer_1/feedforward_output_dense/bias "
                                                   "(expected shape (8,))")):
        BertBackbone(**SMALL, weights=missing)
    extra = dict(good, **{"cls/bias": np.zeros(3)})
    with pytest.raises(ValueError, match="unexpected cls/bias"):
        BertBackbone(**SMALL, weights=extra)
    bad = dict(good, **{"pooled_dense/kernel": np.zeros((8, 7), np.float32)})
    with pytest.raises(ValueError, match=re.escape("pooled_dense/kernel has shape (8, 7), expected (8, 8)")):
        BertBackbone(**SMALL, weights=bad)


def test_weights_in_storage_dtype_are_not_copied():
    w = {k: np.array(v) for k, v in BertBackbone(**SMALL, seed=0).weights.items()}
    m = BertBackbone(**SMALL, weights=w)
    assert np.shares_memory(m.weights["token_embedding/embeddings"], w["token_embedding/embeddings"])


def test_get_config_from_config_round_trip(model):
    config = model.get_config()
    assert list(config)[:8] == ["vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
                                "dropout", "max_sequence_length", "num_segments"]
    assert config["activation"] == "gelu_approximate" and config["layer_norm_epsilon"] == 1e-12
    again = BertBackbone.from_config(config)
    assert again.get_config() == config
    assert model.num_layers == 2 and model.hidden_dim == 8  # keras-style attributes


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="activation must be one of"):
        BertBackbone(**SMALL, activation="relu")
    with pytest.raises(TypeError, match="num_layers must be an integer"):
        BertBackbone(**dict(SMALL, num_layers=2.5))
    with pytest.raises(ValueError, match="layer_norm_epsilon must be a positive number"):
        BertBackbone(**SMALL, layer_norm_epsilon=0)
    with pytest.raises(ValueError, match="missing config field"):
        BertConfig.from_dict({"vocabulary_size": 3})


def test_token_embedding_lookup_and_reverse(model):
    table = model.weights["token_embedding/embeddings"]
    np.testing.assert_array_equal(model.token_embedding(np.array([[3, 5]])), table[[[3, 5]]])
    hidden = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    logits = model.token_embedding(hidden, reverse=True)
    assert logits.shape == (2, 3, 40)
    np.testing.assert_allclose(logits, hidden @ table.T, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"token_ids\[0, 1\] = 40 is outside \[0, 40\)"):
        model.token_embedding(np.array([[1, 40]]))
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 8\]"):
        model.token_embedding(np.zeros((2, 5), np.float32), reverse=True)


# -- presets (architecture only; weights loading is tested with the checkpoints) ------------------

PARAMS = {
    "bert_tiny_en_uncased": 4_385_920, "bert_small_en_uncased": 28_763_648,
    "bert_medium_en_uncased": 41_373_184, "bert_base_en_uncased": 109_482_240,
    "bert_base_en": 108_310_272, "bert_base_zh": 102_267_648, "bert_base_multi": 177_853_440,
    "bert_large_en_uncased": 335_141_888, "bert_large_en": 333_579_264,
    "bert_tiny_en_uncased_sst2": 4_385_920,
}


def test_presets_registry_lists_the_ten_names():
    assert set(BertBackbone.presets) == set(PARAMS)
    for name, meta in BertBackbone.presets.items():
        assert meta["params"] == PARAMS[name]
        assert meta["description"] and meta["kaggle_handle"].startswith("kaggle://keras/bert/keras/" + name + "/")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_preset_architecture_has_the_exact_parameter_count(name):
    # count from the config's weight shapes (building random weights for bert_large is slow).
    assert BertConfig(**PRESETS[name]["config"]).count_params() == PARAMS[name]


@pytest.mark.parametrize("name", ["bert_tiny_en_uncased", "bert_tiny_en_uncased_sst2", "bert_small_en_uncased"])
def test_from_preset_without_weights_builds_the_architecture(name):
    m = BertBackbone.from_preset(name, load_weights=False)
    assert m.count_params() == PARAMS[name]
    assert m({"token_ids": [[101, 2023, 102]]})["pooled_output"].shape == (1, m.hidden_dim)


def test_unknown_preset_name_is_reported_with_the_choices():
    from bert_ref.model.presets import preset_config
    with pytest.raises(ValueError, match="bert_tiny_en_uncased"):
        preset_config("bert_gigantic")


# -- dtype policies --------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_runs_and_returns_its_compute_dtype(policy):
    base = BertBackbone(**SMALL, seed=0)
    m = BertBackbone(**SMALL, dtype=policy, weights=base.weights)
    out = m(inputs())
    assert out["sequence_output"].dtype == m.dtype_policy.compute_dtype
    ref = base(inputs())["sequence_output"].astype(np.float64)
    err = np.abs(out["sequence_output"].astype(np.float64) - ref).max()
    # vs float32: float64 differs by float32 rounding (measured 3e-7 on outputs of magnitude < 4);
    # the half policies by about one unit in the last place of outputs in [2, 4) (float16 spacing
    # there 1.95e-3, bfloat16 1.56e-2; measured 1.6e-3 and 1.2e-2): bound at two units. tf32 and
    # int8 round only the inputs of matrix products (relative 2^-11; int8 steps of max|x|/127), whose
    # contributions are small at keras' initialisation (kernels of std 0.02) next to the embeddings
    # that dominate these outputs: measured 3.4e-6 and 8.4e-5, bound at 3x. The ggml block formats
    # need widths that are multiples of 32: at hidden 8 every kernel and the token table fall back to
    # F16 as llama-quantize does (ggml_f16 is F16 everywhere), with float16 matmul inputs (fewer
    # rounding points than the float16 policy; measured 6.8e-4 for all six): bound at the float16
    # policy's two units.
    bound = {"float32": 0.0, "float64": 2e-6, "float16": 3.9e-3, "mixed_float16": 3.9e-3,
             "bfloat16": 3.1e-2, "mixed_bfloat16": 3.1e-2, "tf32": 1e-5, "int8": 2.5e-4,
             **dict.fromkeys(("ggml_f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"), 3.9e-3)}[policy]
    assert err <= bound, (policy, err)
    assert m.dtype == m.dtype_policy.variable_dtype.name
    assert m.weights["pooled_dense/kernel"].dtype == m.dtype_policy.variable_dtype


@pytest.mark.parametrize("policy, variable, compute", [
    ("float32", "float32", "float32"), ("float64", "float64", "float64"),
    ("float16", "float16", "float16"), ("bfloat16", "bfloat16", "bfloat16"),
    ("mixed_float16", "float32", "float16"), ("mixed_bfloat16", "float32", "bfloat16"),
])
def test_policy_dtypes_have_keras_meaning(policy, variable, compute):
    from bert_ref import get_policy
    p = get_policy(policy)
    assert (p.variable_dtype.name, p.compute_dtype.name) == (variable, compute)
    assert p.work_dtype.name == ("float64" if policy == "float64" else "float32")


def test_half_policy_outputs_are_rounded_to_the_compute_dtype():
    base = BertBackbone(**SMALL, seed=0)
    f16 = BertBackbone(**SMALL, dtype="mixed_float16", weights=base.weights)(inputs())["sequence_output"]
    bf16 = BertBackbone(**SMALL, dtype="mixed_bfloat16", weights=base.weights)(inputs())["sequence_output"]
    ref = base(inputs())["sequence_output"]
    # bfloat16 keeps 8 significant bits to float16's 11: its error must be clearly larger.
    assert np.abs(bf16.astype(np.float32) - ref).max() > 2 * np.abs(f16.astype(np.float32) - ref).max()


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="unknown dtype policy 'float8'"):
        BertBackbone(**SMALL, dtype="float8")


# -- input validation: every bad input is an error naming field, position and range ------------

@pytest.mark.parametrize("bad, exc, message", [
    ({"token_ids": [[1, -1, 2]]}, ValueError, r"token_ids[0, 1] = -1 is outside [0, 40): vocabulary_size is 40"),
    ({"token_ids": [[1, 2], [3, 40]]}, ValueError, r"token_ids[1, 1] = 40 is outside [0, 40): vocabulary_size is 40"),
    ({"token_ids": [[1, 2]], "segment_ids": [[0, 3]]}, ValueError, r"segment_ids[0, 1] = 3 is outside [0, 3): "
                                                                   r"num_segments is 3"),
    ({"token_ids": [[1, 2]], "segment_ids": [[-1, 0]]}, ValueError, r"segment_ids[0, 0] = -1 is outside [0, 3)"),
    ({"token_ids": [[1, 2]], "padding_mask": [[1, 2]]}, ValueError,
     r"padding_mask[0, 1] = 2 is not a valid mask value"),
    ({"token_ids": [[1, 2]], "padding_mask": [[0.5, 1]]}, ValueError, r"padding_mask[0, 0] = 0.5"),
    ({"token_ids": [[1, 2]], "padding_mask": [["a", "b"]]}, TypeError, r"padding_mask must be bool or 0/1 numbers"),
    ({"token_ids": [[1.0, 2.0]]}, TypeError, r"token_ids must hold integers, got dtype float64"),
    ({"token_ids": [[True, False]]}, TypeError, r"token_ids must hold integers, got booleans"),
    ({"token_ids": [["1", "2"]]}, TypeError, r"token_ids must hold integers"),
    ({"token_ids": [[1, 2]], "segment_ids": [[0.0, 1.0]]}, TypeError, r"segment_ids must hold integers"),
    ({"token_ids": [1, 2, 3]}, ValueError, r"token_ids must be 2-D (batch, sequence), got shape (3,)"),
    ({"token_ids": [[[1]]]}, ValueError, r"token_ids must be 2-D (batch, sequence), got shape (1, 1, 1)"),
    ({"token_ids": [[1, 2]], "segment_ids": [0, 0]}, ValueError, r"segment_ids must be 2-D"),
    ({"token_ids": [[1, 2]], "segment_ids": [[0, 0, 0]]}, ValueError, r"segment_ids has shape (1, 3) but token_ids "
                                                                      r"has shape (1, 2)"),
    ({"token_ids": [[1, 2]], "padding_mask": [[1], [1]]}, ValueError, r"padding_mask has shape (2, 1) but token_ids "
                                                                      r"has shape (1, 2)"),
    ({"token_ids": np.ones((1, 11), int)}, ValueError, r"sequence length 11 exceeds max_sequence_length 10 (valid "
                                                       r"lengths are 1..10)"),
    ({"token_ids": np.ones((2, 0), int)}, ValueError, r"sequence length is 0"),
    ({"token_ids": [[1]], "mask": [[1]]}, ValueError, r"unknown input key(s) ['mask']"),
    ({"segment_ids": [[1]]}, ValueError, r"inputs must contain 'token_ids'"),
])
def test_bad_inputs_are_clear_errors(model, bad, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        model(bad)


def test_inputs_must_be_a_dict(model):
    with pytest.raises(TypeError, match="inputs must be a dict"):
        model([[1, 2, 3]])


def test_zero_layers_return_the_embeddings_layer_norm():
    m = BertBackbone(**dict(SMALL, num_layers=0), seed=0)
    out = m(inputs(), output_hidden_states=True, output_attentions=True)
    assert len(out["hidden_states"]) == 1 and out["attention_probs"] == []
    np.testing.assert_array_equal(out["sequence_output"], out["hidden_states"][0])
    assert out["pooled_output"].shape == (2, 8) and np.isfinite(out["pooled_output"]).all()
