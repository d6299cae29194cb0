"""SentenceEncoder behaviour on a small random backbone: pooling, settings, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bert_ref import BertBackbone
from bert_ref.text.sentence import SentenceEncoder, l2_normalize, pool, read_sentence_settings
from bert_ref.text.tokenizer import BertTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "."]


@pytest.fixture(scope="module")
def encoder():
    backbone = BertBackbone(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=8,
                            intermediate_dim=16, max_sequence_length=16, seed=0)
    return SentenceEncoder(backbone, BertTokenizer(VOCAB, lowercase=True))


def test_mean_pooling_averages_real_tokens_only():
    h = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    np.testing.assert_array_equal(pool(h, mask, "mean")[1], h[1].mean(0))
    np.testing.assert_array_equal(pool(h, mask, "cls"), h[:, 0])
    np.testing.assert_array_equal(pool(h, mask, "max")[0], h[0, 1])


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_finite():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])


def test_each_pooling_mode(encoder):
    texts = ["the cat sat on the mat .", "a dog"]
    inputs = encoder.tokenizer(texts, sequence_length=10)
    out = encoder.backbone(inputs)
    mean = encoder.encode(texts, pooling="mean")
    cls = encoder.encode(texts, pooling="cls")
    pooled = encoder.encode(texts, pooling="pooled")
    # padding to 10 instead of the batch's longest changes summation order only
    np.testing.assert_allclose(cls, out["sequence_output"][:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(pooled, out["pooled_output"], rtol=0, atol=1e-6)
    n = inputs["padding_mask"].sum(1)
    np.testing.assert_allclose(mean[1], out["sequence_output"][1, : n[1]].mean(0), rtol=0, atol=1e-6)
    assert not np.allclose(mean, cls)


def test_normalize_option(encoder):
    v = encoder.encode(["the cat", "a dog sat"], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=0, atol=1e-6)
    raw = encoder.encode(["the cat", "a dog sat"])
    np.testing.assert_allclose(v, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from(VOCAB[5:]), min_size=1, max_size=6), st.integers(1, 4))
def test_result_does_not_depend_on_batch_neighbours(words, batch_size):
    backbone = BertBackbone(vocabulary_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=8,
                            intermediate_dim=16, max_sequence_length=16, seed=1)
    enc = SentenceEncoder(backbone, BertTokenizer(VOCAB, lowercase=True))
    text = " ".join(words)
    alone = enc.encode([text])
    together = enc.encode(["the cat sat on the mat . a dog", text, "a"], batch_size=batch_size)
    np.testing.assert_allclose(together[1], alone[0], rtol=0, atol=1e-5)


def test_bad_input(encoder):
    with pytest.raises(ValueError, match=r"texts\[1\] is an empty string"):
        encoder.encode(["the cat", ""])
    with pytest.raises(ValueError, match="texts is empty"):
        encoder.encode([])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str, got int"):
        encoder.encode([3])
    with pytest.raises(TypeError, match="texts must be a str or a list of str, got int"):
        encoder.encode(3)
    with pytest.raises(ValueError, match="pooling='sum' is not one of"):
        encoder.encode(["the"], pooling="sum")
    with pytest.raises(ValueError, match="batch_size = 0 must be an int >= 1"):
        encoder.encode(["the"], batch_size=0)


def test_constructor_checks(encoder):
    with pytest.raises(ValueError, match=r"max_sequence_length = 100 is outside \[2, 16\]"):
        SentenceEncoder(encoder.backbone, encoder.tokenizer, max_sequence_length=100)
    with pytest.raises(ValueError, match="the tokenizer has 14 tokens but the backbone's vocabulary_size is 13"):
        SentenceEncoder(encoder.backbone, BertTokenizer(VOCAB + ["extra"]))


def test_settings_from_sentence_transformers_files(tmp_path):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    s = read_sentence_settings(tmp_path)
    assert (s.pooling, s.normalize, s.max_seq_length) == ("cls", False, 128)


def test_unsupported_sentence_transformers_modules_are_refused(tmp_path):
    modules = [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(NotImplementedError, match=r"modules.json\[1\] is a sentence-transformers 'LayerNorm'"):
        read_sentence_settings(tmp_path)
    modules[1] = {"idx": 1, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(NotImplementedError, match=r"modules.json\[1\]: a Dense module is implemented only after the "
                                                  r"Pooling"):
        read_sentence_settings(tmp_path)


def test_no_sentence_transformers_files_means_no_settings(tmp_path):
    s = read_sentence_settings(tmp_path)
    assert (s.pooling, s.normalize, s.max_seq_length) == (None, None, None)


@pytest.mark.parametrize("name, text, message", [
    ("modules.json", "[{\"type\": ", r"modules\.json: not valid JSON"),
    ("modules.json", "[\"Pooling\"]", r"modules\.json\[0\] must be an object with a 'type', got 'Pooling'"),
    ("sentence_bert_config.json", "{\"max_seq_length\": \"128\"}",
     r"sentence_bert_config\.json: max_seq_length must be an integer >= 1 \(or null\), got '128'"),
    ("sentence_bert_config.json", "{\"max_seq_length\": 0}", r"max_seq_length must be an integer >= 1 \(or null\), "
                                                             r"got 0"),
])
def test_malformed_sentence_transformers_files_name_the_file_and_field(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_sentence_settings(tmp_path)
