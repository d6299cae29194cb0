"""Pooling modes and Dense modules against sentence-transformers itself.

Golden: golden/sentence_modes/, written by tools/golden/make_sentence_golden.py — small real
sentence-transformers models (a random 2-layer BertModel, then Pooling in each mode, Dense
projections with Tanh / Identity / ReLU / Sigmoid, a residual Dense, Normalize), saved with
`SentenceTransformer.save` and encoded by `SentenceTransformer.encode` (PyTorch float32).
Tolerance (manifest.json, with its reason): max abs <= 1e-5 and cosine >= 0.99999; measured
max abs <= 1.9e-6. Before, each of these presets raised NotImplementedError.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bert_ref.io.checkpoints import CheckpointError
from bert_ref.text.sentence import SentenceEncoder, read_sentence_settings

from test_cli import cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sentence_modes"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text(encoding="utf-8"))
TOLERANCE = json.loads((GOLDEN / "manifest.json").read_text(encoding="utf-8"))["tolerance"]
CASES = sorted(EXPECTED["cases"])


@pytest.mark.parametrize("case", CASES)
def test_the_preset_settings_are_the_modules_sentence_transformers_saved(case):
    want = EXPECTED["cases"][case]
    s = read_sentence_settings(GOLDEN / case)
    modes = want["pooling_mode"]
    assert s.pooling == (modes if isinstance(modes, str) else tuple(modes))
    assert [(d.weight.shape[0], d.activation.rsplit(".", 1)[-1], d.bias is not None, d.residual is not None)
            for d in s.dense] == [(d["out_features"], d["activation"], d["bias"], d["use_residual"])
                                  for d in want["dense"]]
    assert s.normalize is want["normalize"]
    assert s.max_seq_length == 48  # sentence-transformers 6 records it as tokenizer_config's model_max_length


@pytest.mark.parametrize("case", CASES)
def test_embeddings_match_sentence_transformers(case):
    expected = np.asarray(EXPECTED["cases"][case]["embeddings"], dtype=np.float64)
    got = SentenceEncoder.from_preset(GOLDEN / case).encode(EXPECTED["sentences"], batch_size=8)
    assert got.dtype == np.float32 and got.shape == expected.shape
    err = np.abs(got.astype(np.float64) - expected).max()
    assert err <= TOLERANCE["max_abs"], f"{case}: max abs error {err}"
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= TOLERANCE["cosine_min"], f"{case}: min cosine {cos.min()}"


def test_the_golden_distinguishes_the_modes():
    # Each case's vectors differ from every other's of the same width by far more than the tolerance.
    cases = {c: np.asarray(EXPECTED["cases"][c]["embeddings"]) for c in CASES}
    for a in CASES:
        for b in CASES:
            if a < b and cases[a].shape == cases[b].shape:
                assert np.abs(cases[a] - cases[b]).max() > 1000 * TOLERANCE["max_abs"], (a, b)


def test_embed_runs_a_preset_with_dense_modules(env):
    case = "cls_mean_dense_relu"
    r = cli(env, "embed", GOLDEN / case, *EXPECTED["sentences"][:2])
    assert r.returncode == 0, r.stderr
    got = np.array([json.loads(line) for line in r.stdout.splitlines()])
    expected = np.asarray(EXPECTED["cases"][case]["embeddings"][:2])
    assert np.abs(got - expected).max() <= TOLERANCE["max_abs"]


# -- Dense modules that cannot be run are named ---------------------------------------------------

@pytest.fixture
def dense_preset(tmp_path) -> Path:
    shutil.copytree(GOLDEN / "cls_mean_dense_relu", tmp_path / "p")
    return tmp_path / "p"


def _edit_config(path: Path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_an_unknown_activation_is_named(dense_preset):
    _edit_config(dense_preset / "2_Dense" / "config.json", activation_function="torch.nn.modules.activation.Mish")
    with pytest.raises(NotImplementedError,
                       match=r"2_Dense/config\.json: activation_function .*Mish.* not implemented"):
        read_sentence_settings(dense_preset)


def test_weights_that_do_not_match_the_config_are_named(dense_preset):
    _edit_config(dense_preset / "2_Dense" / "config.json", out_features=17)
    with pytest.raises(CheckpointError, match=r"2_Dense/model\.safetensors: linear\.weight is float32 \(16, 64\); "
                                              r"expected floating \(17, 64\)"):
        read_sentence_settings(dense_preset)


def test_a_pickled_dense_module_is_refused(dense_preset):
    (dense_preset / "2_Dense" / "model.safetensors").unlink()
    (dense_preset / "2_Dense" / "pytorch_model.bin").write_bytes(b"PK pickle")
    with pytest.raises(CheckpointError, match=r"2_Dense: only pytorch_model\.bin \(a PyTorch pickle\)"):
        read_sentence_settings(dense_preset)


def test_a_module_path_outside_the_preset_is_refused(dense_preset):
    modules = json.loads((dense_preset / "modules.json").read_text())
    modules[2]["path"] = "../elsewhere"
    (dense_preset / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"modules\.json\[2\].*escapes"):
        read_sentence_settings(dense_preset)


def test_legacy_pooling_flags_are_read_in_sentence_transformers_order(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True, "pooling_mode_weightedmean_tokens": True}))
    assert read_sentence_settings(tmp_path).pooling == ("cls", "mean", "weightedmean")
