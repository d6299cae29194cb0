"""save_to_preset -> from_preset gives back the same bits, from every source format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone
from bert_ref.io.checkpoints import load_preset_dir

from needs import need

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_keras_preset_to_native_and_back_is_bit_exact(tmp_path):
    need("h5py", 'pip install "bert-ref[keras]"')
    original = BertBackbone.from_preset(GOLDEN / "keras_preset" / "tiny" / "preset")
    original.save_to_preset(tmp_path / "a")
    again = BertBackbone.from_preset(tmp_path / "a")
    assert again.config == original.config
    assert list(again.weights) == list(original.weights)
    for name in original.weights:
        assert _same_bits(np.asarray(again.weights[name]), np.asarray(original.weights[name])), name
    data = np.load(GOLDEN / "keras_preset" / "tiny" / "outputs.npz")
    inputs = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("inputs/")}
    a, b = original(inputs), again(inputs)
    for name in ("sequence_output", "pooled_output"):
        assert _same_bits(a[name], b[name]), name
    # A second round trip writes the same tensors.
    again.save_to_preset(tmp_path / "b")
    first, second = load_preset_dir(tmp_path / "a"), load_preset_dir(tmp_path / "b")
    assert all(_same_bits(first.weights[k], second.weights[k]) for k in first.weights)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_random_model_round_trip_keeps_storage_dtype(tmp_path, dtype):
    model = BertBackbone(vocabulary_size=37, num_layers=2, num_heads=2, hidden_dim=6, intermediate_dim=5,
                         max_sequence_length=7, num_segments=2, dtype=dtype, seed=11)
    model.save_to_preset(tmp_path)
    again = BertBackbone.from_preset(tmp_path, dtype=dtype)
    for name, value in model.weights.items():
        assert _same_bits(np.asarray(again.weights[name]), np.asarray(value)), name
    inputs = {"token_ids": np.array([[2, 5, 36, 0]]), "segment_ids": np.array([[0, 1, 1, 0]]),
              "padding_mask": np.array([[1, 1, 1, 0]])}
    a, b = model(inputs), again(inputs)
    assert _same_bits(a["sequence_output"], b["sequence_output"])


def test_save_to_preset_keeps_the_source_tokenizer_assets(tmp_path):
    need("h5py", 'pip install "bert-ref[keras]"')
    source = GOLDEN / "keras_preset" / "tiny" / "preset"
    original = BertBackbone.from_preset(source)
    assert original.preset_metadata["vocabulary"] is not None
    original.save_to_preset(tmp_path)
    again = load_preset_dir(tmp_path)
    assert again.metadata["lowercase"] == original.preset_metadata["lowercase"]
    assert Path(again.metadata["vocabulary"]).read_text() == Path(original.preset_metadata["vocabulary"]).read_text()
