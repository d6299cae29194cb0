"""BertTokenizer against ids recorded from Hugging Face `tokenizers` and keras-hub.

Goldens: golden/tokenizer/, written by tools/golden/make_tokenizer_golden.py (see its manifest.json).
Tolerance: none. Token ids are integers from a deterministic algorithm, so every id must be equal.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from bert_ref.text.tokenizer import BertTokenizer, normalize, pre_tokenize

from needs import minilm_model_dir

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tokenizer"


def _minilm_vocab() -> Path:
    return minilm_model_dir() / "vocab.txt"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    with open(GOLDEN / "corpus.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _load(name: str) -> dict:
    with open(GOLDEN / name, encoding="utf-8") as f:
        return json.load(f)


CASES = {
    "uncased": (lambda: _minilm_vocab(), True),
    "cased": (lambda: GOLDEN / "cased_vocab.txt", False),
}


def _mismatches(tok: BertTokenizer, corpus: list[str], expected: list[list[int]]) -> list[str]:
    bad = []
    for i, (line, ids) in enumerate(zip(corpus, expected, strict=True)):
        got = tok.encode(line)
        if got != ids:
            bad.append(f"line {i} {line!r:.60}: got {tok.tokenize(line)[:12]} "
                       f"expected {[tok.id_to_token(t) for t in ids][:12]}")
    return bad


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 1000
    text = "".join(corpus)
    categories = {unicodedata.category(c)[0] for c in text}
    assert categories >= {"L", "M", "N", "P", "S", "Z", "C"}
    assert any(len(line) > 100 for line in corpus)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_match_tokenizers_on_the_whole_corpus(case, corpus):
    vocab, lowercase = CASES[case]
    golden = _load(f"ids_{case}.json")
    tok = BertTokenizer(vocab(), lowercase=lowercase)
    assert len(golden["hf"]) == len(corpus)
    bad = _mismatches(tok, corpus, golden["hf"])
    assert not bad, f"{len(bad)} lines differ from tokenizers:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("case", sorted(CASES))
def test_special_tokens_in_strings_match_tokenizers_added_tokens(case, corpus):
    vocab, lowercase = CASES[case]
    golden = _load(f"ids_{case}.json")
    special = golden["hf_special_tokens_in_strings"]
    assert len(special) >= 5  # the corpus has lines like "a[MASK]b"
    tok = BertTokenizer(vocab(), lowercase=lowercase, special_tokens_in_strings=True)
    expected = [special.get(str(i), ids) for i, ids in enumerate(golden["hf"])]
    bad = _mismatches(tok, corpus, expected)
    assert not bad, "\n".join(bad[:10])


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_match_keras_hub_where_keras_hub_agrees_with_tokenizers(case, corpus):
    # keras-hub differs from tokenizers on a documented set of inputs (see BertTokenizer's
    # docstring); on every line where the two frameworks agree, we agree with both.
    vocab, lowercase = CASES[case]
    golden = _load(f"ids_{case}.json")
    tok = BertTokenizer(vocab(), lowercase=lowercase)
    same = [i for i, (a, b) in enumerate(zip(golden["hf"], golden["keras_hub"], strict=True)) if a == b]
    assert len(same) >= 500
    bad = _mismatches(tok, [corpus[i] for i in same], [golden["keras_hub"][i] for i in same])
    assert not bad, "\n".join(bad[:10])


def test_keras_hub_uncased_keeps_accents_which_tokenizers_strips(corpus):
    # One documented difference, checked on the recorded outputs themselves: keras-hub's
    # BertTokenizer(lowercase=True) does not strip accents, tokenizers (and we) do.
    golden = _load("ids_uncased.json")
    i = corpus.index("na\u00efve r\u00e9sum\u00e9 fa\u00e7ade")
    tok = BertTokenizer(_minilm_vocab(), lowercase=True)
    assert tok.decode(golden["hf"][i]) == "naive resume facade"
    assert golden["keras_hub"][i] != golden["hf"][i]


def _expand_runs(runs: list[list]) -> list[tuple[int, int, str]]:
    out = []
    for k, (start, cls) in enumerate(runs):
        end = runs[k + 1][0] - 1 if k + 1 < len(runs) else 0x10FFFF
        out.append((start, end, cls))
    return out


@pytest.mark.parametrize("mode", ["uncased", "cased"])
def test_every_code_point_is_classified_as_tokenizers_does(mode):
    """`a<c>b` for every code point c: removed, whitespace, isolated, kept or transformed exactly as
    tokenizers' BertNormalizer + BertPreTokenizer do. Characters the running Python's Unicode
    database does not know yet (category Cn) are skipped where tokenizers transforms them: their
    case mapping and decomposition come from that database."""
    golden = _load("codepoints.json")[mode]
    lowercase = mode == "uncased"
    other = golden["other"]
    bad = []
    for start, end, cls in _expand_runs(golden["runs"]):
        if cls == "S":
            continue
        for cp in range(start, end + 1):
            c = chr(cp)
            words = pre_tokenize(normalize("a" + c + "b", lowercase=lowercase, strip_accents=lowercase))
            expected = {"R": ["ab"], "W": ["a", "b"], "I": ["a", c, "b"], "K": ["a" + c + "b"]}.get(cls)
            if cls == "O":
                expected = other[f"{cp:X}"]
            if words != expected:
                if cls == "O" and unicodedata.category(c) == "Cn":
                    continue
                bad.append(f"U+{cp:04X} {unicodedata.name(c, '?')}: got {words} expected {expected}")
    assert not bad, f"{len(bad)} code points differ:\n" + "\n".join(bad[:20])


@pytest.fixture(scope="module")
def packing() -> list[dict]:
    return _load("packing.json")["cases"]


@pytest.mark.parametrize("source,truncate", [("keras_hub", "round_robin"), ("hf", "longest_first")])
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_packing_matches_recorded(packing, source, truncate, kind):
    tok = BertTokenizer(_minilm_vocab(), lowercase=True)
    assert len(packing) >= 50
    for case in packing:
        pair = [case["b"]] if kind == "pair" else None
        out = tok([case["a"]], pair, sequence_length=case["sequence_length"], truncate=truncate)
        ref = case[f"{source}_{kind}"]
        for key in ("token_ids", "segment_ids", "padding_mask"):
            np.testing.assert_array_equal(
                out[key][0].astype(np.int64), np.asarray(ref[key], dtype=np.int64),
                err_msg=f"{key} for {case}")
        assert out["token_ids"].dtype == np.int32 and out["segment_ids"].dtype == np.int32
        assert out["padding_mask"].dtype == bool


def test_round_robin_and_longest_first_really_differ_in_the_goldens(packing):
    # The two recorded strategies disagree on some pairs, so the two tests above are not one test.
    differ = [c for c in packing if c["keras_hub_pair"]["token_ids"] != c["hf_pair"]["token_ids"]]
    assert differ
