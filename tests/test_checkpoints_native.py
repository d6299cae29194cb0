"""Native presets (save_preset / load_preset_dir) and format detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from bert_ref import BertConfig
from bert_ref.io.checkpoints import CheckpointError, detect_format, load_preset_dir, required_files
from bert_ref.io.checkpoints.native import save_preset

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CONFIG = BertConfig(vocabulary_size=30, num_layers=2, num_heads=3, hidden_dim=12, intermediate_dim=10,
                    max_sequence_length=9, num_segments=3, activation="gelu", layer_norm_epsilon=1e-6)


def random_weights(config: BertConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in config.weight_shapes().items()}


def _memmap_base(array):
    while array is not None and not isinstance(array, np.memmap):
        array = array.base
    return array


def test_save_then_load_is_bit_exact(tmp_path):
    weights = random_weights(CONFIG)
    save_preset(tmp_path / "p", CONFIG, weights)
    ckpt = load_preset_dir(tmp_path / "p")
    assert ckpt.format == "native"
    assert ckpt.config == CONFIG
    assert list(ckpt.weights) == list(CONFIG.weight_shapes())
    for name, value in weights.items():
        assert ckpt.weights[name].dtype == value.dtype
        assert np.array_equal(ckpt.weights[name], value), name


@pytest.mark.parametrize("dtype", [np.float64, np.float16, ml_dtypes.bfloat16])
def test_storage_dtype_is_kept(tmp_path, dtype):
    weights = random_weights(CONFIG, dtype=dtype)
    weights["pooled_dense/bias"] = weights["pooled_dense/bias"].astype(np.float32)  # mixed is fine
    save_preset(tmp_path, CONFIG, weights)
    ckpt = load_preset_dir(tmp_path)
    for name, value in weights.items():
        assert ckpt.weights[name].dtype == value.dtype
        assert np.array_equal(ckpt.weights[name].view(np.uint8), value.view(np.uint8)), name


def test_files_follow_keras_hub_layout(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG), metadata={"lowercase": True, "dtype": "float32"})
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["module"] == "keras_hub.src.models.bert.bert_backbone"
    assert config_json["class_name"] == "BertBackbone"
    assert config_json["registered_name"] == "keras_hub>BertBackbone"
    inner = config_json["config"]
    for key in ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "dropout",
                "max_sequence_length", "num_segments"):
        assert inner[key] == getattr(CONFIG, key)
    assert inner["activation"] == "gelu" and inner["layer_norm_epsilon"] == 1e-6
    assert inner["dtype"]["config"]["name"] == "float32"
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["parameter_count"] == CONFIG.count_params()
    assert metadata["lowercase"] is True


def test_safetensors_holds_canonical_names_read_independently(tmp_path):
    weights = random_weights(CONFIG, seed=3)
    save_preset(tmp_path, CONFIG, weights)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert set(stored) == set(CONFIG.weight_shapes())
    for name, value in weights.items():
        assert np.array_equal(stored[name], value)
    assert stored["transformer_layer_1/self_attention_layer/query/kernel"].shape == (12, 12)


def test_loading_memory_maps_the_weights(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    ckpt = load_preset_dir(tmp_path)
    maps = {id(_memmap_base(w)) for w in ckpt.weights.values()}
    assert len(maps) == 1 and _memmap_base(ckpt.weights["pooled_dense/kernel"]) is not None
    assert not any(w.flags.writeable for w in ckpt.weights.values())


def test_vocabulary_and_lowercase_are_kept(tmp_path):
    tokens = ["[PAD]", "[UNK]", "hello", "wörld"]
    save_preset(tmp_path, CONFIG, random_weights(CONFIG), metadata={"lowercase": False, "vocabulary": tokens})
    ckpt = load_preset_dir(tmp_path)
    assert ckpt.metadata["lowercase"] is False
    assert ckpt.metadata["vocabulary"] == tmp_path / "assets/tokenizer/vocabulary.txt"
    assert ckpt.metadata["vocabulary"].read_text(encoding="utf-8").splitlines() == tokens


def test_load_weights_false_reads_only_the_config(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    (tmp_path / "model.safetensors").unlink()
    ckpt = load_preset_dir(tmp_path, load_weights=False)
    assert ckpt.weights is None and ckpt.config == CONFIG and ckpt.format == "native"


def test_save_checks_weights_before_writing(tmp_path):
    weights = random_weights(CONFIG)
    weights["transformer_layer_0/feedforward_output_dense/kernel"] = np.zeros((10, 11), np.float32)
    with pytest.raises(CheckpointError, match=r"save_preset\(weights=\.\.\.\): "
                                              r"transformer_layer_0/feedforward_output_dense/kernel "
                                              r"has shape \(10, 11\), expected \(10, 12\); "
                                              r"the config: vocabulary_size=30, num_layers=2, num_heads=3, "
                                              r"hidden_dim=12, intermediate_dim=10"):
        save_preset(tmp_path / "p", CONFIG, weights)
    assert not (tmp_path / "p").exists()
    del weights["transformer_layer_0/feedforward_output_dense/kernel"]
    with pytest.raises(CheckpointError, match=r"missing transformer_layer_0/feedforward_output_dense/kernel "
                                              r"\(expected shape \(10, 12\)\)"):
        save_preset(tmp_path / "p", CONFIG, weights)


def _rewrite_tensors(path: Path, change) -> None:
    from safetensors.numpy import save_file

    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_missing_tensor_names_file_and_tensor(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    _rewrite_tensors(tmp_path / "model.safetensors",
                     lambda t: t.pop("transformer_layer_1/self_attention_layer/value/bias"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing "
                                              r"transformer_layer_1/self_attention_layer/value/bias "
                                              r"\(expected shape \(12,\)\)"):
        load_preset_dir(tmp_path)


def test_unexpected_tensor_names_file_and_tensor(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    _rewrite_tensors(tmp_path / "model.safetensors",
                     lambda t: t.update({"transformer_layer_2/extra": np.zeros(2, np.float32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected transformer_layer_2/extra; the config: "
                                              r".*num_layers=2"):
        load_preset_dir(tmp_path)


def test_wrong_shape_says_expected_and_found(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    _rewrite_tensors(tmp_path / "model.safetensors",
                     lambda t: t.update({"token_embedding/embeddings": np.zeros((31, 12), np.float32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: token_embedding/embeddings has shape \(31, 12\), "
                                              r"expected \(30, 12\); the config: vocabulary_size=30,"):
        load_preset_dir(tmp_path)


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor '.*'.*truncated"):
        load_preset_dir(tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["config"].pop("hidden_dim"), r"config\.json: missing config field\(s\) \['hidden_dim'\]"),
        (lambda c: c["config"].update(num_layers="2"), r"config\.json: num_layers must be an integer >= 0, got '2'"),
        (lambda c: c["config"].update(activation="relu"), r"config\.json: activation must be one of"),
        (lambda c: c.update(config=[1, 2]), r"config\.json: field 'config' must be a JSON object"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, edit, message):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    config_json = json.loads((tmp_path / "config.json").read_text())
    edit(config_json)
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    with pytest.raises(CheckpointError, match=message):
        load_preset_dir(tmp_path)


def test_config_json_that_is_not_json(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_preset_dir(tmp_path)


# --- format detection -------------------------------------------------------------------------


def test_format_comes_from_files_not_the_name(tmp_path):
    # A native preset in a directory named like a keras-hub preset and like a HF repo.
    for name in ("bert_base_en", "model.weights.h5", "bert-base-uncased"):
        save_preset(tmp_path / name, CONFIG, random_weights(CONFIG))
        assert detect_format(tmp_path / name) == "native"
    keras_dir = tmp_path / "native_looking_name"
    shutil.copytree(GOLDEN / "keras_preset" / "tiny" / "preset", keras_dir)
    assert detect_format(keras_dir) == "keras"
    hf = tmp_path / "keras_preset"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert detect_format(hf) == "huggingface"


def test_unrecognisable_directory_says_what_was_looked_for(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"no recognisable BERT checkpoint \(no config\.json\); looked for "
                                              r"config\.json with \"class_name\": \"BertBackbone\".*"
                                              r"\"model_type\": \"bert\".*found \['weights\.bin'\]"):
        detect_format(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Foo"]}))
    with pytest.raises(CheckpointError, match=r"config\.json: not a BERT config; looked for"):
        detect_format(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(CheckpointError, match=r"model_type is 'roberta'; only 'bert' is supported"):
        detect_format(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"class_name": "GPT2Backbone", "config": {}}))
    with pytest.raises(CheckpointError, match=r"class_name is 'GPT2Backbone'; only 'BertBackbone'"):
        detect_format(tmp_path)


def test_missing_or_non_directory_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such preset directory"):
        detect_format(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a preset is a directory"):
        load_preset_dir(tmp_path / "file")


def test_required_files_per_layout(tmp_path):
    save_preset(tmp_path, CONFIG, random_weights(CONFIG))
    native_json = json.loads((tmp_path / "config.json").read_text())
    assert required_files(native_json) == ["model.safetensors"]
    keras_json = json.loads((GOLDEN / "keras_preset" / "tiny" / "preset" / "config.json").read_text())
    assert required_files(keras_json) == ["model.weights.h5"]
    hf_json = {"model_type": "bert", "vocab_size": 5, "num_hidden_layers": 1, "num_attention_heads": 1,
               "hidden_size": 4, "intermediate_size": 4}
    assert required_files(hf_json) == ["model.safetensors"]
