"""Hugging Face BERT checkpoints: name mapping, config mapping, shards, and every failure."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bert_ref import BertConfig
from bert_ref.io.checkpoints import CheckpointError, detect_format, huggingface, load_preset_dir

HF_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 40,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "max_position_embeddings": 16,
    "type_vocab_size": 3,
    "layer_norm_eps": 1e-7,
    "transformers_version": "4.40.0",
}


def hf_tensors(config: dict, seed: int = 0, ln: tuple[str, str] = ("weight", "bias")) -> dict[str, np.ndarray]:
    """A BertModel state dict, named and shaped as transformers saves it (Linear weights (out, in))."""
    rng = np.random.default_rng(seed)
    h, f, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": r(config["vocab_size"], h),
        "embeddings.position_embeddings.weight": r(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": r(config["type_vocab_size"], h),
        f"embeddings.LayerNorm.{ln[0]}": r(h),
        f"embeddings.LayerNorm.{ln[1]}": r(h),
        "embeddings.position_ids": np.arange(config["max_position_embeddings"], dtype=np.int64)[None],
        "pooler.dense.weight": r(h, h),
        "pooler.dense.bias": r(h),
    }
    for i in range(n):
        p = f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            t[p + f"attention.self.{proj}.weight"] = r(h, h)
            t[p + f"attention.self.{proj}.bias"] = r(h)
        t[p + "attention.output.dense.weight"] = r(h, h)
        t[p + "attention.output.dense.bias"] = r(h)
        t[p + f"attention.output.LayerNorm.{ln[0]}"] = r(h)
        t[p + f"attention.output.LayerNorm.{ln[1]}"] = r(h)
        t[p + "intermediate.dense.weight"] = r(f, h)
        t[p + "intermediate.dense.bias"] = r(f)
        t[p + "output.dense.weight"] = r(h, f)
        t[p + "output.dense.bias"] = r(h)
        t[p + f"output.LayerNorm.{ln[0]}"] = r(h)
        t[p + f"output.LayerNorm.{ln[1]}"] = r(h)
    return t


def write_hf(directory: Path, config: dict = HF_CONFIG, tensors: dict | None = None) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(config) if tensors is None else tensors
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return tensors


def expected_canonical(t: dict[str, np.ndarray], n: int, prefix: str = "",
                       ln=("weight", "bias")) -> dict[str, np.ndarray]:
    """Written out by hand (independently of the reader's tables)."""
    g, b = ln
    e = {
        "token_embedding/embeddings": t[prefix + "embeddings.word_embeddings.weight"],
        "position_embedding/embeddings": t[prefix + "embeddings.position_embeddings.weight"],
        "segment_embedding/embeddings": t[prefix + "embeddings.token_type_embeddings.weight"],
        "embeddings_layer_norm/gamma": t[prefix + f"embeddings.LayerNorm.{g}"],
        "embeddings_layer_norm/beta": t[prefix + f"embeddings.LayerNorm.{b}"],
        "pooled_dense/kernel": t[prefix + "pooler.dense.weight"].T,
        "pooled_dense/bias": t[prefix + "pooler.dense.bias"],
    }
    for i in range(n):
        p, q = f"{prefix}encoder.layer.{i}.", f"transformer_layer_{i}/"
        for proj in ("query", "key", "value"):
            e[q + f"self_attention_layer/{proj}/kernel"] = t[p + f"attention.self.{proj}.weight"].T
            e[q + f"self_attention_layer/{proj}/bias"] = t[p + f"attention.self.{proj}.bias"]
        e[q + "self_attention_layer/attention_output/kernel"] = t[p + "attention.output.dense.weight"].T
        e[q + "self_attention_layer/attention_output/bias"] = t[p + "attention.output.dense.bias"]
        e[q + "self_attention_layer_norm/gamma"] = t[p + f"attention.output.LayerNorm.{g}"]
        e[q + "self_attention_layer_norm/beta"] = t[p + f"attention.output.LayerNorm.{b}"]
        e[q + "feedforward_intermediate_dense/kernel"] = t[p + "intermediate.dense.weight"].T
        e[q + "feedforward_intermediate_dense/bias"] = t[p + "intermediate.dense.bias"]
        e[q + "feedforward_output_dense/kernel"] = t[p + "output.dense.weight"].T
        e[q + "feedforward_output_dense/bias"] = t[p + "output.dense.bias"]
        e[q + "feedforward_layer_norm/gamma"] = t[p + f"output.LayerNorm.{g}"]
        e[q + "feedforward_layer_norm/beta"] = t[p + f"output.LayerNorm.{b}"]
    return e


def assert_weights(ckpt, expected):
    assert set(ckpt.weights) == set(expected)
    for name, value in expected.items():
        assert ckpt.weights[name].shape == value.shape, name
        assert np.array_equal(ckpt.weights[name], value), name


def test_maps_names_transposes_linears_and_reads_config(tmp_path):
    tensors = write_hf(tmp_path)
    ckpt = load_preset_dir(tmp_path)
    assert ckpt.format == "huggingface" and detect_format(tmp_path) == "huggingface"
    assert ckpt.config == BertConfig(vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=12,
                                     dropout=0.1, max_sequence_length=16, num_segments=3, activation="gelu",
                                     layer_norm_epsilon=1e-7)
    assert_weights(ckpt, expected_canonical(tensors, 2))
    assert ckpt.metadata["ignored_tensors"] == ["embeddings.position_ids"]
    assert ckpt.metadata["source"] == "transformers 4.40.0"


def test_kernels_are_transposed_views_of_the_memory_map(tmp_path):
    write_hf(tmp_path)
    kernel = load_preset_dir(tmp_path).weights["transformer_layer_0/feedforward_intermediate_dense/kernel"]
    assert kernel.shape == (8, 12) and kernel.flags.f_contiguous and not kernel.flags.owndata
    base = kernel
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)


@pytest.mark.parametrize("act, expected", [("gelu", "gelu"), ("gelu_new", "gelu_approximate"),
                                           ("gelu_pytorch_tanh", "gelu_approximate")])
def test_hidden_act(tmp_path, act, expected):
    write_hf(tmp_path, dict(HF_CONFIG, hidden_act=act))
    assert load_preset_dir(tmp_path, load_weights=False).config.activation == expected


@pytest.mark.parametrize("act", ["relu", "gelu_fast", "quick_gelu", "silu"])
def test_unsupported_hidden_act_is_a_clear_error(tmp_path, act):
    write_hf(tmp_path, dict(HF_CONFIG, hidden_act=act))
    with pytest.raises(CheckpointError, match=rf"config\.json: hidden_act '{act}' is not supported; supported: "
                                              r"\['gelu', 'gelu_new', 'gelu_pytorch_tanh'\]"):
        load_preset_dir(tmp_path)


def test_defaults_follow_transformers(tmp_path):
    config = {k: v for k, v in HF_CONFIG.items()
              if k not in ("hidden_act", "layer_norm_eps", "type_vocab_size", "max_position_embeddings",
                           "hidden_dropout_prob")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    c = load_preset_dir(tmp_path, load_weights=False).config
    assert (c.activation, c.layer_norm_epsilon, c.num_segments, c.max_sequence_length, c.dropout) == (
        "gelu", 1e-12, 2, 512, 0.1)


def test_bert_prefix_and_heads_are_handled_and_logged(tmp_path, caplog):
    body = hf_tensors(HF_CONFIG, seed=5)
    tensors = {"bert." + k: v for k, v in body.items()}
    tensors["cls.predictions.bias"] = np.zeros(40, np.float32)
    tensors["cls.predictions.transform.dense.weight"] = np.zeros((8, 8), np.float32)
    tensors["cls.seq_relationship.weight"] = np.zeros((2, 8), np.float32)
    write_hf(tmp_path, dict(HF_CONFIG, architectures=["BertForPreTraining"]), tensors)
    with caplog.at_level(logging.DEBUG, logger="bert_ref.io.checkpoints.huggingface"):
        ckpt = load_preset_dir(tmp_path)
    assert_weights(ckpt, expected_canonical(tensors, 2, prefix="bert."))
    ignored = ["bert.embeddings.position_ids", "cls.predictions.bias", "cls.predictions.transform.dense.weight",
               "cls.seq_relationship.weight"]
    assert sorted(ckpt.metadata["ignored_tensors"]) == ignored
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "ignored 4 tensor(s)" in logged and all(name in logged for name in ignored)


def test_unprefixed_checkpoint_with_a_classifier_head(tmp_path):
    tensors = hf_tensors(HF_CONFIG, seed=6)
    tensors["classifier.weight"] = np.zeros((3, 8), np.float32)
    write_hf(tmp_path, HF_CONFIG, tensors)
    ckpt = load_preset_dir(tmp_path)
    assert "classifier.weight" in ckpt.metadata["ignored_tensors"]
    assert_weights(ckpt, expected_canonical(tensors, 2))


def test_layer_norm_named_gamma_beta(tmp_path):
    tensors = write_hf(tmp_path, HF_CONFIG, hf_tensors(HF_CONFIG, seed=7, ln=("gamma", "beta")))
    assert_weights(load_preset_dir(tmp_path), expected_canonical(tensors, 2, ln=("gamma", "beta")))


def test_tokenizer_metadata(tmp_path):
    write_hf(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ckpt = load_preset_dir(tmp_path)
    assert ckpt.metadata["lowercase"] is False and ckpt.metadata["vocabulary"] == tmp_path / "vocab.txt"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "yes"}))
    with pytest.raises(CheckpointError,
                       match=r"tokenizer_config\.json: do_lower_case must be true or false, got 'yes'"):
        load_preset_dir(tmp_path)


def test_without_tokenizer_files_lowercase_is_unknown(tmp_path):
    write_hf(tmp_path)
    ckpt = load_preset_dir(tmp_path)
    assert ckpt.metadata["lowercase"] is None and ckpt.metadata["vocabulary"] is None


# --- shards -----------------------------------------------------------------------------------


def write_sharded(directory: Path, tensors: dict[str, np.ndarray]) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(HF_CONFIG))
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, str(directory / shard))
        weight_map.update({k: shard for k in keys})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_sharded_checkpoint(tmp_path):
    tensors = hf_tensors(HF_CONFIG, seed=8)
    index = write_sharded(tmp_path, tensors)
    ckpt = load_preset_dir(tmp_path)
    assert_weights(ckpt, expected_canonical(tensors, 2))
    assert huggingface.shard_files(index) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert {p.name for p in ckpt.files} >= {"model.safetensors.index.json", *huggingface.shard_files(index)}


def test_missing_shard(tmp_path):
    write_sharded(tmp_path, hf_tensors(HF_CONFIG))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"index\.json: shard 'model-00002-of-00002\.safetensors' is listed but "
                                              r".* does not exist"):
        load_preset_dir(tmp_path)


def test_index_that_disagrees_with_its_shards(tmp_path):
    index = write_sharded(tmp_path, hf_tensors(HF_CONFIG))
    key = "pooler.dense.bias"
    other = next(s for s in set(index["weight_map"].values()) if s != index["weight_map"][key])
    index["weight_map"][key] = other
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"tensor 'pooler\.dense\.bias' is listed in '.*' but found in"):
        load_preset_dir(tmp_path)


@pytest.mark.parametrize("bad", ["../model.safetensors", "/etc/passwd", "sub/dir.safetensors", "..", ""])
def test_shard_names_must_be_plain_file_names(bad):
    with pytest.raises(CheckpointError, match="weight_map"):
        huggingface.shard_files({"weight_map": {"a": "ok.safetensors", "b": bad}})


def test_required_files():
    assert huggingface.required_files(HF_CONFIG) == ["model.safetensors"]
    assert huggingface.required_files(HF_CONFIG, sharded=True) == ["model.safetensors.index.json"]
    with pytest.raises(CheckpointError, match="model_type is 'gpt2'"):
        huggingface.required_files({"model_type": "gpt2"})


# --- failures ---------------------------------------------------------------------------------


def test_pytorch_bin_only_is_refused_without_unpickling(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    sentinel = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (os.mkdir, (str(sentinel),))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    with pytest.raises(CheckpointError, match=r"only pytorch_model\.bin \(a PyTorch pickle\) was found; .*never "
                                              r"unpickles.*safetensors"):
        load_preset_dir(tmp_path)
    assert not sentinel.exists()


def test_no_weights_at_all(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(CheckpointError, match=r"no weights found: looked for model\.safetensors and "
                                              r"model\.safetensors\.index\.json"):
        load_preset_dir(tmp_path)


def test_missing_pooler_is_explained(tmp_path):
    tensors = hf_tensors(HF_CONFIG)
    del tensors["pooler.dense.weight"], tensors["pooler.dense.bias"]
    write_hf(tmp_path, HF_CONFIG, tensors)
    with pytest.raises(CheckpointError, match=r"missing tensors 'pooler\.dense\.weight' and "
                                              r"'pooler\.dense\.bias'.*add_pooling_layer=False"):
        load_preset_dir(tmp_path)


def test_missing_tensor_names_the_file_and_hf_name(tmp_path):
    tensors = hf_tensors(HF_CONFIG)
    del tensors["encoder.layer.1.output.dense.bias"]
    write_hf(tmp_path, HF_CONFIG, tensors)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing 1 tensor\(s\): "
                                              r"'encoder\.layer\.1\.output\.dense\.bias' "
                                              r"\(canonical 'transformer_layer_1/feedforward_output_dense/bias'\)"):
        load_preset_dir(tmp_path)


def test_extra_layer_is_unexpected(tmp_path):
    tensors = hf_tensors(dict(HF_CONFIG, num_hidden_layers=3))
    write_hf(tmp_path, HF_CONFIG, tensors)
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) for a 2-layer BERT: 'encoder\.layer\.2\."):
        load_preset_dir(tmp_path)


def test_unknown_body_tensor(tmp_path):
    tensors = hf_tensors(HF_CONFIG)
    tensors["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(2, np.float32)
    write_hf(tmp_path, HF_CONFIG, tensors)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor "
                                              r"'encoder\.layer\.0\.attention\.self\.rotary\.weight'"):
        load_preset_dir(tmp_path)


def test_wrong_shape_is_reported_in_torch_layout(tmp_path):
    tensors = hf_tensors(HF_CONFIG)
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((12, 9), np.float32)
    write_hf(tmp_path, HF_CONFIG, tensors)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor "
                                              r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(12, 9\), "
                                              r"expected \(12, 8\) \(torch Linear weights are \(out, in\)\)"):
        load_preset_dir(tmp_path)


def test_vocab_size_disagreeing_with_embedding(tmp_path):
    write_hf(tmp_path, HF_CONFIG, hf_tensors(dict(HF_CONFIG, vocab_size=41)))
    with pytest.raises(CheckpointError, match=r"'embeddings\.word_embeddings\.weight' has shape \(41, 8\), expected "
                                              r"\(40, 8\)"):
        load_preset_dir(tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"hidden_size": "8"}, r"config field 'hidden_size' must be an integer, got '8' \(str\)"),
        ({"num_hidden_layers": None}, r"config field 'num_hidden_layers' must be an integer, got None"),
        ({"layer_norm_eps": True}, r"config field 'layer_norm_eps' must be a number, got True"),
        ({"vocab_size": 0}, r"config field 'vocab_size' must be >= 1, got 0"),
        ({"num_attention_heads": 3}, r"hidden_size \(8\) must be a multiple of num_attention_heads \(3\)"),
        ({"position_embedding_type": "relative_key"}, r"position_embedding_type 'relative_key' is not supported"),
        ({"is_decoder": True}, r"is_decoder is true"),
        ({"layer_norm_eps": -1.0}, r"layer_norm_epsilon must be a positive number"),
    ],
)
def test_bad_config_field(tmp_path, edit, message):
    write_hf(tmp_path, dict(HF_CONFIG, **edit), hf_tensors(HF_CONFIG))
    with pytest.raises(CheckpointError, match=r"config\.json: .*" + message):
        load_preset_dir(tmp_path)


def test_missing_config_field(tmp_path):
    config = dict(HF_CONFIG)
    del config["intermediate_size"]
    write_hf(tmp_path, config, hf_tensors(HF_CONFIG))
    with pytest.raises(CheckpointError, match=r"config\.json: missing config field 'intermediate_size'"):
        load_preset_dir(tmp_path)


def test_values_read_independently_match(tmp_path):
    write_hf(tmp_path)
    independent = load_file(str(tmp_path / "model.safetensors"))
    ckpt = load_preset_dir(tmp_path)
    assert np.array_equal(ckpt.weights["transformer_layer_1/self_attention_layer/key/kernel"],
                          independent["encoder.layer.1.attention.self.key.weight"].T)
