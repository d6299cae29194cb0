"""Degenerate numerics are named, and configs/JSON are bounded before any work (bert_ref.model.limits)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bert_ref import BertBackbone
from bert_ref.io.checkpoints import CheckpointError, load_preset_dir
from bert_ref.model.config import BertConfig
from bert_ref.model.limits import LimitError, json_depth, loads

SMALL = dict(vocabulary_size=11, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
             max_sequence_length=9, num_segments=2)


def _hf_config(**over):
    c = {"model_type": "bert", "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 2,
         "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 9, "type_vocab_size": 2}
    c.update(over)
    return c


# -- epsilon --------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [1e-50, 1e-40, 0.0, -1e-12, math.nan, math.inf])
def test_an_epsilon_that_is_zero_in_float32_or_not_finite_is_an_error(eps):
    # 1e-40 is a float32 subnormal, 1e-50 rounds to 0 in float32: layer norm computes in >= float32.
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        BertConfig(**SMALL, layer_norm_epsilon=eps)


def test_the_smallest_normal_float32_epsilon_is_accepted():
    assert BertConfig(**SMALL, layer_norm_epsilon=float(np.finfo(np.float32).tiny)).layer_norm_epsilon > 0


@pytest.mark.parametrize("eps", ["1e-50", "NaN", "Infinity"])
def test_a_hugging_face_config_with_a_degenerate_epsilon_names_the_file(tmp_path, eps):
    (tmp_path / "config.json").write_text(json.dumps(_hf_config()).replace("}", f', "layer_norm_eps": {eps}}}'))
    with pytest.raises(CheckpointError, match=r"config\.json.*layer_norm_epsilon"):
        load_preset_dir(tmp_path, load_weights=False)


# -- non-finite weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_non_finite_weights_are_reported_at_load_naming_the_tensor(tmp_path, bad, dtype):
    from bert_ref.io.checkpoints import read_safetensors, write_safetensors
    from bert_ref.io.checkpoints.native import save_preset

    model = BertBackbone(**SMALL, seed=0)
    save_preset(tmp_path / "q", BertConfig(**SMALL), {k: w.astype(dtype) for k, w in model.weights.items()})
    load_preset_dir(tmp_path / "q")  # the finite original loads
    tensors, metadata = read_safetensors(tmp_path / "q" / "model.safetensors")
    tensors = {k: np.array(w) for k, w in tensors.items()}
    tensors["transformer_layer_1/feedforward_output_dense/kernel"][3, 5] = bad
    write_safetensors(tmp_path / "q" / "model.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*transformer_layer_1/feedforward_output_dense/"
                                              r"kernel holds 1 non-finite value.*\[3, 5\]"):
        load_preset_dir(tmp_path / "q")


def test_finite_float16_weights_near_the_top_of_the_range_load(tmp_path):
    # The one-pass check sums in float64: large finite float16 values must not look like overflow.
    model = BertBackbone(**SMALL, seed=0)
    weights = {k: np.full(w.shape, 65504.0, np.float16) for k, w in model.weights.items()}
    from bert_ref.io.checkpoints.native import save_preset

    save_preset(tmp_path / "q", BertConfig(**SMALL), weights)
    assert load_preset_dir(tmp_path / "q").weights["pooled_dense/kernel"].max() == 65504


def test_finite_float64_weights_whose_sum_overflows_load(tmp_path):
    # A float64 sum of finite values can overflow to inf: the check then scans element by element
    # instead of calling the tensor non-finite.
    from bert_ref.io.checkpoints.base import check_finite

    w = np.full((4, 3), 1.7e308)
    with np.errstate(over="ignore"):
        assert not np.isfinite(w.sum())
    check_finite(w, "w", "test")  # no error
    w[2, 1] = -np.inf
    with pytest.raises(CheckpointError, match=r"w holds 1 non-finite value.*w\[2, 1\]"):
        check_finite(w, "w", "test")


def _preset_with(tmp_path, name, value, dtype="float32"):
    """A SMALL native preset whose transformer_layer_1 output kernel holds `value` at [3, 5]."""
    from bert_ref.io.checkpoints import read_safetensors, write_safetensors
    from bert_ref.io.checkpoints.native import save_preset

    model = BertBackbone(**SMALL, seed=0)
    save_preset(tmp_path / name, BertConfig(**SMALL), {k: w.astype(dtype) for k, w in model.weights.items()})
    tensors, metadata = read_safetensors(tmp_path / name / "model.safetensors")
    tensors = {k: np.array(w) for k, w in tensors.items()}
    tensors["transformer_layer_1/feedforward_output_dense/kernel"][3, 5] = value
    write_safetensors(tmp_path / name / "model.safetensors", tensors, metadata)
    return tmp_path / name


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_deferred_finite_check_gives_the_load_error_at_first_use(tmp_path, bad):
    path = _preset_with(tmp_path, "q", bad)
    with pytest.raises(CheckpointError) as at_load:
        BertBackbone.from_preset(path)
    model = BertBackbone.from_preset(path, defer_finite_check=True)  # the weights are not read yet
    assert model.config.num_layers == 2 and model.count_params() > 0  # what needs no values works
    uses = {"forward": lambda: model({"token_ids": [[1, 2, 3]]}), "weights": lambda: model.weights,
            "prepared_weights": model.prepared_weights, "save_to_preset": lambda: model.save_to_preset(tmp_path / "c")}
    for use, call in uses.items():
        with pytest.raises(CheckpointError) as late:
            call()
        assert str(late.value) == str(at_load.value), use
    assert not (tmp_path / "c").exists()


def test_a_deferred_finite_check_looks_at_the_checkpoint_not_at_its_cast(tmp_path):
    # 1e6 is finite in the float32 file and inf once cast to float16: neither check objects to it.
    path = _preset_with(tmp_path, "q", 1e6)
    with np.errstate(over="ignore"):
        eager = BertBackbone.from_preset(path, dtype="float16")
        lazy = BertBackbone.from_preset(path, dtype="float16", defer_finite_check=True)
    assert np.isinf(lazy.weights["transformer_layer_1/feedforward_output_dense/kernel"][3, 5])
    assert np.array_equal(lazy.weights["pooled_dense/kernel"], eager.weights["pooled_dense/kernel"])


def test_compare_checks_the_weights_only_when_it_runs_a_forward(tmp_path, monkeypatch, capsys):
    from bert_ref import cli
    from bert_ref.io.checkpoints import base, read_safetensors, write_safetensors

    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    monkeypatch.setenv("BERT_REF_OFFLINE", "1")
    path = _preset_with(tmp_path, "q", 0.25)
    inputs = {"token_ids": np.array([[2, 7, 9, 3]]), "padding_mask": np.array([[1, 1, 1, 0]])}
    np.savez(tmp_path / "in.npz", **inputs)
    np.savez(tmp_path / "c.npz", **{"sequence_output": BertBackbone.from_preset(path)(inputs)["sequence_output"]})
    checked: list[str] = []
    real = base.check_all_finite
    monkeypatch.setattr(base, "check_all_finite", lambda w, source: (checked.append(source), real(w, source))[1])
    args = ["compare", str(path), "-i", str(tmp_path / "in.npz"), "-c", str(tmp_path / "c.npz")]
    assert cli.main(args) == 0  # runs our float32 and float64 forwards: one check, before the first
    assert checked == [str(path / "model.safetensors")]
    assert cli.main(args) == 0  # both runs come from the cache: the weights are never read
    assert checked == [str(path / "model.safetensors")]
    # The file changes to hold a NaN: its stat signature changes, the cache misses, the check refuses it.
    tensors, metadata = read_safetensors(path / "model.safetensors")
    tensors = {k: np.array(w) for k, w in tensors.items()}
    tensors["transformer_layer_1/feedforward_output_dense/kernel"][3, 5] = np.nan
    write_safetensors(path / "model.safetensors", tensors, metadata)
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot load preset {str(path)!r}" in err and "kernel holds 1 non-finite value" in err, err


# -- config limits --------------------------------------------------------------------------------

def test_a_config_asking_for_a_million_layers_is_refused_before_anything_is_sized(tmp_path):
    # Before: `bert-ref info` of this 200-byte config listed 16 million weight shapes (3 GB, 19 s)
    # and `run` died with MemoryError. The limit is checked first, in closed form.
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(num_hidden_layers=10**6, hidden_size=384,
                                                                 num_attention_heads=12, intermediate_size=1536)))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'num_hidden_layers': num_layers is 1,000,000, "
                                              r"over the limit of 1,024 "
                                              r"\(set BERT_REF_MAX_LAYERS"):
        load_preset_dir(tmp_path, load_weights=False)


def test_a_config_implying_too_many_parameters_is_refused():
    with pytest.raises(LimitError, match="parameter count .* over the limit .*BERT_REF_MAX_PARAMS"):
        BertConfig(vocabulary_size=10**9, num_layers=1, num_heads=1, hidden_dim=4096, intermediate_dim=1)


def test_limits_are_overridden_by_their_environment_variables(monkeypatch):
    monkeypatch.setenv("BERT_REF_MAX_LAYERS", "1")
    with pytest.raises(LimitError, match="num_layers is 2, over the limit of 1"):
        BertConfig(**SMALL)
    monkeypatch.setenv("BERT_REF_MAX_LAYERS", "lots")
    with pytest.raises(LimitError, match="BERT_REF_MAX_LAYERS='lots' is not valid"):
        BertConfig(**SMALL)


def test_implied_params_is_count_params_in_closed_form():
    for config in (BertConfig(**SMALL), BertConfig(30, 3, 3, 17, 40), BertConfig(5, 0, 1, 1, 1)):
        assert config.implied_params() == config.count_params()


# -- JSON -----------------------------------------------------------------------------------------

def test_deep_json_is_refused_naming_the_source_before_parsing():
    deep = b"[" * 100_000 + b"]" * 100_000  # before: RecursionError from json
    with pytest.raises(LimitError, match=r"x\.json: JSON nested 100000 levels deep, over the limit of 64"):
        loads(deep, "x.json")


def test_json_depth_ignores_brackets_inside_strings():
    assert json_depth(b'{"a": "[[[[{{{{", "b": [[1], "\\"[["]}') == 3
    assert loads(b'{"a": "' + b"[" * 72 + b'"}', "s")["a"][0] == "["


def test_a_deep_config_json_is_a_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json: JSON nested 100000 levels deep"):
        load_preset_dir(tmp_path)


def test_a_large_json_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_REF_MAX_JSON_BYTES", "1000")
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(padding=" " * 2000)))
    with pytest.raises(ValueError, match=r"config\.json: the JSON document is over the limit of 1,000 bytes"):
        load_preset_dir(tmp_path)


def test_a_deep_safetensors_header_is_refused_before_parsing(tmp_path):
    import struct

    from bert_ref.io.checkpoints import SafetensorsError, read_safetensors

    header = b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(SafetensorsError, match=r"x\.safetensors: corrupt safetensors file: the header JSON is nested "
                                               r"100001 levels deep"):
        read_safetensors(tmp_path / "x.safetensors")


def test_a_config_too_large_for_its_weight_file_is_named_before_any_tensor(tmp_path):
    # 12 layers of hidden 384 imply 22 million parameters; the file holds one float.
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(json.dumps(_hf_config(num_hidden_layers=12, hidden_size=384,
                                                                 num_attention_heads=12, intermediate_size=1536)))
    save_file({"embeddings.word_embeddings.weight": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"config\.json implies 21,\d{3},\d{3} parameters, at least .* bytes even "
                                              r"stored in 8 bits, but model\.safetensors holds \d+ bytes"):
        load_preset_dir(tmp_path)
