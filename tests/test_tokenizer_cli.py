"""`bert-ref tokenize`, run as the installed console script in a subprocess.

Expected ids come from golden/tokenizer/ids_uncased.json (Hugging Face `tokenizers` with the
all-MiniLM-L6-v2 tokenizer.json, which recognises special tokens written in the text).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from needs import run_bert_ref as bert_ref

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tokenizer"


@pytest.fixture(scope="module")
def model_dir(minilm_dir) -> str:
    return str(minilm_dir)




def _golden_lines(n: int) -> list[tuple[str, list[int]]]:
    with open(GOLDEN / "corpus.jsonl", encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    with open(GOLDEN / "ids_uncased.json", encoding="utf-8") as f:
        ids = json.load(f)
    expected = [ids["hf_special_tokens_in_strings"].get(str(i), x) for i, x in enumerate(ids["hf"])]
    picked = [(t, e) for t, e in zip(corpus, expected, strict=True) if t.strip() and "\n" not in t and "\r" not in t
              and "\x85" not in t and "\u2028" not in t and "\u2029" not in t and "\x00" not in t]
    return picked[:: max(1, len(picked) // n)][:n]


def test_tokenize_arguments_give_tokenizers_ids(model_dir):
    lines = _golden_lines(20)
    r = bert_ref("tokenize", model_dir, *[t for t, _ in lines])
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["text"] for rec in records] == [t for t, _ in lines]
    assert [rec["ids"] for rec in records] == [e for _, e in lines]
    assert all(len(rec["tokens"]) == len(rec["ids"]) for rec in records)


def test_tokenize_reads_stdin_and_packs(model_dir):
    r = bert_ref("tokenize", model_dir, "--sequence-length", "8", "--pair", "second",
                 stdin="Hello World!\n\n")
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["tokens"] == ["hello", "world", "!"]
    assert rec["token_ids"] == [101, 7592, 2088, 999, 102, 2117, 102, 0]
    assert rec["segment_ids"] == [0, 0, 0, 0, 0, 1, 1, 0]
    assert rec["padding_mask"] == [1, 1, 1, 1, 1, 1, 1, 0]


def test_tokenize_errors(model_dir, tmp_path):
    r = bert_ref("tokenize", model_dir, "x", "--pair", "y")
    assert r.returncode == 2 and "--pair needs --sequence-length" in r.stderr
    r = bert_ref("tokenize", str(tmp_path), "x")
    assert r.returncode == 2 and "holds no BERT vocabulary" in r.stderr
    r = bert_ref("tokenize", model_dir, "a b c", "--sequence-length", "1")
    assert r.returncode == 2 and "sequence_length = 1 is too short" in r.stderr
