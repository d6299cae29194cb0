"""Sentence embeddings of all-MiniLM-L6-v2 against sentence-transformers' own.

Golden: golden/embeddings/minilm.json, written by tools/golden/make_tokenizer_golden.py with
`SentenceTransformer(model_dir, device="cpu").encode(...)` (PyTorch float32).
Tolerance: cosine >= 0.99999 and max abs <= 1e-5 per element. Both sides run the same float32
model with different summation orders (NumPy vs PyTorch kernels), so they agree to float32 rounding
accumulated over 6 layers, not bitwise; measured: cosine >= 1 - 1e-7, max abs ~2e-7 (normalised)
and ~1e-6 (unnormalised, norms ~3-10).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "embeddings" / "minilm.json"
COSINE_MIN = 0.99999
MAX_ABS = 1e-5




@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    from bert_ref.text.sentence import SentenceEncoder

    return SentenceEncoder.from_preset(minilm_dir)


def _check(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= COSINE_MIN, f"min cosine {cos.min()}"
    err = np.abs(got.astype(np.float64) - expected).max()
    assert err <= MAX_ABS, f"max abs error {err}"


def test_preset_settings_come_from_the_sentence_transformers_files(encoder, golden):
    assert golden["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert encoder.pooling == "mean"
    assert encoder.normalize is True
    assert encoder.max_sequence_length == golden["max_seq_length"] == 256


def test_embeddings_match_sentence_transformers(encoder, golden):
    expected = np.asarray(golden["embeddings"], dtype=np.float64)
    got = encoder.encode(golden["sentences"], batch_size=8)
    assert got.dtype == np.float32
    _check(got, expected)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=0, atol=1e-6)


def test_unnormalized_mean_pooling_matches_sentence_transformers(encoder, golden):
    expected = np.asarray(golden["embeddings_unnormalized"], dtype=np.float64)
    _check(encoder.encode(golden["sentences"], normalize=False, batch_size=5), expected)


def test_the_long_sentence_is_truncated_like_sentence_transformers(encoder, golden):
    # The last golden sentence has more than 256 word pieces; matching it checks the truncation.
    long_text = golden["sentences"][-1]
    assert len(encoder.tokenizer.encode(long_text)) > 256
    _check(encoder.encode([long_text]), np.asarray(golden["embeddings"][-1:], dtype=np.float64))


def test_batch_size_and_single_string_do_not_change_results(encoder, golden):
    sentences = golden["sentences"][:6]
    a = encoder.encode(sentences, batch_size=1)
    b = encoder.encode(sentences, batch_size=6)
    # Different padding lengths change summation order only: float32 rounding.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    single = encoder.encode(sentences[0])
    assert single.shape == (384,)
    np.testing.assert_array_equal(single, a[0])
