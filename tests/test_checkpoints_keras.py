"""keras-hub presets written by keras-hub's own `save_to_preset` (golden/keras_preset/)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from needs import need

h5py = need("h5py", 'pip install "bert-ref[keras]"')  # the import error itself is tested below

from bert_ref import BertBackbone  # noqa: E402
from bert_ref.io.checkpoints import CheckpointError, load_preset_dir  # noqa: E402
from bert_ref.io.checkpoints.keras import h5_paths  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "keras_preset"
CASES = ("tiny", "uneven_heads")


def _case(case: str):
    manifest = json.loads((GOLDEN / case / "manifest.json").read_text())
    data = np.load(GOLDEN / case / "outputs.npz")
    inputs = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("inputs/")}
    outputs = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("outputs/")}
    return manifest, inputs, outputs


@pytest.mark.parametrize("case", CASES)
def test_h5_mapping_is_the_one_keras_wrote(case):
    """Each dataset path in model.weights.h5 holds the keras variable the manifest found by value."""
    manifest, _, _ = _case(case)
    ckpt = load_preset_dir(GOLDEN / case / "preset", load_weights=False)
    recorded = {path: entry["variable"] for path, entry in manifest["h5_to_keras_variable"].items()}
    ours = {path: canonical for canonical, path in h5_paths(ckpt.config).items()}
    assert ours == recorded


@pytest.mark.parametrize("case", CASES)
def test_weights_are_the_h5_datasets_flattened(case):
    directory = GOLDEN / case / "preset"
    ckpt = load_preset_dir(directory)
    assert ckpt.format == "keras"
    assert list(ckpt.weights) == list(ckpt.config.weight_shapes())
    with h5py.File(directory / "model.weights.h5") as f:
        for canonical, path in h5_paths(ckpt.config).items():
            stored = f[path][()]
            assert np.array_equal(ckpt.weights[canonical], stored.reshape(ckpt.config.weight_shapes()[canonical]))
            assert ckpt.weights[canonical].dtype == stored.dtype == np.float32


def test_einsum_kernels_flatten_heads_row_major():
    directory = GOLDEN / "uneven_heads" / "preset"
    ckpt = load_preset_dir(directory)
    heads, key_dim = ckpt.config.num_heads, ckpt.config.key_dim
    with h5py.File(directory / "model.weights.h5") as f:
        q = f["layers/transformer_encoder_1/_self_attention_layer/query_dense/vars/0"][()]
        o = f["layers/transformer_encoder_1/_self_attention_layer/output_dense/vars/0"][()]
    assert q.shape == (18, 4, 4) and o.shape == (4, 4, 18)
    kernel = ckpt.weights["transformer_layer_1/self_attention_layer/query/kernel"]
    out = ckpt.weights["transformer_layer_1/self_attention_layer/attention_output/kernel"]
    for h in range(heads):  # head h owns columns [h*key_dim, (h+1)*key_dim)
        assert np.array_equal(kernel[:, h * key_dim:(h + 1) * key_dim], q[:, h, :])
        assert np.array_equal(out[h * key_dim:(h + 1) * key_dim, :], o[h])


def test_weights_are_memory_mapped_read_only():
    ckpt = load_preset_dir(GOLDEN / "tiny" / "preset")
    w = ckpt.weights["transformer_layer_2/self_attention_layer/value/kernel"]
    base = w
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    assert not w.flags.writeable


def test_metadata_from_the_preset():
    ckpt = load_preset_dir(GOLDEN / "tiny" / "preset")
    manifest = json.loads((GOLDEN / "tiny" / "manifest.json").read_text())
    assert ckpt.metadata["lowercase"] is True
    assert ckpt.metadata["dtype"] == "float32"
    assert ckpt.metadata["vocabulary"].read_text().splitlines()[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert ckpt.metadata["source"] == (f"keras_hub {manifest['versions']['keras_hub']}, "
                                       f"keras {manifest['versions']['keras']}")
    for key, value in manifest["backbone_arguments"].items():
        assert getattr(ckpt.config, key) == value, key
    # keras-hub's BERT: tanh GELU, epsilon 1e-12.
    assert (ckpt.config.activation, ckpt.config.layer_norm_epsilon) == ("gelu_approximate", 1e-12)


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_keras_hub(case):
    manifest, inputs, expected = _case(case)
    # keras-hub float32 (XLA) vs ours float32: different summation orders; measured <= 1.6e-6.
    tolerance = manifest["tolerance"]
    assert tolerance == 1e-5
    model = BertBackbone.from_preset(GOLDEN / case / "preset")
    out = model(inputs)
    for name in ("sequence_output", "pooled_output"):
        assert out[name].dtype == np.float32
        err = np.max(np.abs(out[name].astype(np.float64) - expected[name]))
        assert err <= tolerance, f"{case}/{name}: max abs error {err:.3g} > {tolerance}"


# --- failures ---------------------------------------------------------------------------------


@pytest.fixture
def preset(tmp_path):
    target = tmp_path / "preset"
    shutil.copytree(GOLDEN / "tiny" / "preset", target)
    return target


def test_missing_h5py_says_how_to_install(preset, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r'needs h5py: pip install "bert-ref\[keras\]"'):
        load_preset_dir(preset)


def test_missing_dataset(preset):
    with h5py.File(preset / "model.weights.h5", "r+") as f:
        del f["layers/transformer_encoder_2/_feedforward_layer_norm/vars/1"]
    with pytest.raises(CheckpointError, match=r"model\.weights\.h5: missing tensor "
                                              r"'layers/transformer_encoder_2/_feedforward_layer_norm/vars/1' "
                                              r"\(canonical 'transformer_layer_2/feedforward_layer_norm/beta'\)"):
        load_preset_dir(preset)


def test_unexpected_dataset(preset):
    with h5py.File(preset / "model.weights.h5", "r+") as f:
        f["layers/transformer_encoder_3/_feedforward_layer_norm/vars/0"] = np.zeros(16, np.float32)
    with pytest.raises(CheckpointError, match=r"model\.weights\.h5: 1 unexpected tensor\(s\) for a 3-layer "
                                              r"BertBackbone: 'layers/transformer_encoder_3/"):
        load_preset_dir(preset)


def test_wrong_shape(preset):
    with h5py.File(preset / "model.weights.h5", "r+") as f:
        del f["layers/transformer_encoder_1/_self_attention_layer/key_dense/vars/0"]
        f["layers/transformer_encoder_1/_self_attention_layer/key_dense/vars/0"] = np.zeros((16, 16), np.float32)
    with pytest.raises(CheckpointError, match=r"tensor "
                                              r"'layers/transformer_encoder_1/_self_attention_layer/key_dense/vars/0' "
                                              r"\(canonical 'transformer_layer_1/self_attention_layer/key/kernel'\) "
                                              r"has shape \(16, 16\), expected \(16, 4, 4\)"):
        load_preset_dir(preset)


def test_config_disagreeing_with_weights(preset):
    config = json.loads((preset / "config.json").read_text())
    config["config"]["vocabulary_size"] = 101
    (preset / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'layers/reversible_embedding/vars/0' \(canonical "
                                              r"'token_embedding/embeddings'\) has shape \(100, 16\), "
                                              r"expected \(101, 16\)"):
        load_preset_dir(preset)


def test_layer_numbering_is_checked_against_layer_names(preset):
    with h5py.File(preset / "model.weights.h5", "r+") as f:
        f["layers/transformer_encoder_1/vars"].attrs["name"] = "transformer_layer_2"
        f["layers/transformer_encoder_2/vars"].attrs["name"] = "transformer_layer_1"
    with pytest.raises(CheckpointError, match=r"layers/transformer_encoder_1 is named 'transformer_layer_2', expected "
                                              r"transformer_layer_1"):
        load_preset_dir(preset)


def test_truncated_h5(preset):
    data = (preset / "model.weights.h5").read_bytes()
    (preset / "model.weights.h5").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match=r"model\.weights\.h5: cannot be read as HDF5"):
        load_preset_dir(preset)


def test_missing_weights_file(preset):
    (preset / "model.weights.h5").unlink()
    assert load_preset_dir(preset, load_weights=False).weights is None
    with pytest.raises(CheckpointError, match=r"keras-hub preset has no model\.weights\.h5"):
        load_preset_dir(preset)
