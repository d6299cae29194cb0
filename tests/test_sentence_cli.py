"""`bert-ref embed`, run as the installed console script in a subprocess.

Golden: golden/embeddings/minilm.json (sentence-transformers' own vectors, see
tools/golden/make_tokenizer_golden.py). Tolerance as in test_sentence_golden.py: cosine >= 0.99999, max
abs <= 1e-5 (float32 in two implementations; the printed values are the float32 values exactly).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from needs import run_bert_ref as bert_ref

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "embeddings" / "minilm.json"
FRAMEWORKS = ("torch", "tensorflow", "jax", "keras", "transformers", "sentence_transformers", "tokenizers")


@pytest.fixture(scope="module")
def model_dir(minilm_dir) -> str:
    return str(minilm_dir)


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)




def _close(got: np.ndarray, expected: np.ndarray) -> None:
    cos = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert np.min(cos) >= 0.99999
    assert np.abs(got - expected).max() <= 1e-5


def test_embed_prints_sentence_transformers_vectors(model_dir, golden):
    texts = golden["sentences"][:3]
    r = bert_ref("embed", model_dir, *texts)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(len(row) == 384 for row in rows)
    _close(np.array(rows), np.array(golden["embeddings"][:3]))


def test_embed_reads_stdin_lines_and_writes_an_array_file(model_dir, golden, tmp_path):
    out = tmp_path / "emb.npz"
    stdin = "\n".join(golden["sentences"][3:6]) + "\n\n"
    r = bert_ref("embed", model_dir, "--output", str(out), stdin=stdin)
    assert r.returncode == 0, r.stderr
    with np.load(out) as f:
        vectors = f["embeddings"]
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    _close(vectors.astype(np.float64), np.array(golden["embeddings"][3:6]))


def test_embed_pooling_and_normalize_flags(model_dir, golden):
    text = golden["sentences"][0]
    raw = bert_ref("embed", model_dir, text, "--no-normalize")
    assert raw.returncode == 0, raw.stderr
    _close(np.array(json.loads(raw.stdout)), np.array(golden["embeddings_unnormalized"][0]))
    cls = bert_ref("embed", model_dir, text, "--pooling", "cls", "--normalize")
    assert cls.returncode == 0, cls.stderr
    v = np.array(json.loads(cls.stdout))
    assert abs(np.linalg.norm(v) - 1) < 1e-6
    assert np.abs(v - np.array(golden["embeddings"][0])).max() > 1e-2  # a different pooling


def test_embed_bad_input_exits_2_with_a_reason(model_dir, tmp_path):
    r = bert_ref("embed", model_dir, "fine", "")
    assert r.returncode == 2 and "text 2 is empty" in r.stderr
    r = bert_ref("embed", model_dir, stdin="\n  \n")
    assert r.returncode == 2 and "standard input holds no text" in r.stderr
    r = bert_ref("embed", str(tmp_path / "missing"), "text")
    assert r.returncode == 2 and r.stderr.strip()
    r = bert_ref("embed", model_dir, "text", "--pooling", "sum")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_embed_imports_no_framework(model_dir, golden):
    # The whole path from text to vector needs only NumPy and safetensors.
    code = (
        "import sys, io, contextlib\n"
        "from bert_ref.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    assert main(['embed', {model_dir!r}, {golden['sentences'][0]!r}]) == 0\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
