"""The tokenizer's cost is bounded by what is kept: a long line is cut while tokenizing, a long
word costs at most (its length) x (the longest vocabulary entry) lookups; a BOM is not a token."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bert_ref.text.tokenizer as tokenizer_module
from bert_ref.text.tokenizer import BertTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "a", "##a", "un", "##aff",
         "##able", ",", "é", "e", "##e", "ü"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("helo wrdsaunfbEÉé,ü\u0301\u00a0\t!\x00\u4e00") + ["hello", " world", "Ü"]),
                max_size=150).map("".join),
       st.integers(0, 40), st.booleans(), st.integers(1, 12))
def test_cutting_while_tokenizing_keeps_exactly_the_first_tokens(text, n, lowercase, block):
    tok = BertTokenizer(VOCAB, lowercase=lowercase)
    with mock.patch.object(tokenizer_module, "_BLOCK_CHARS", block):  # many block boundaries
        assert tok.tokenize(text, max_tokens=n) == tok.tokenize(text)[:n]


def test_cutting_across_blocks_keeps_exactly_the_first_tokens(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "_BLOCK_CHARS", 7)  # many block boundaries in a short text
    tok = BertTokenizer(VOCAB, lowercase=True)
    text = "Hello, worlds! unaffable e\u0301 " * 20 + "aaaaaaaaaaaaaaaaaaaa" * 3 + " hello"
    for n in (0, 1, 5, 50, 1000):
        assert tok.tokenize(text, max_tokens=n) == tok.tokenize(text)[:n]


def test_a_long_line_is_not_normalized_past_the_budget(monkeypatch):
    # Before: `embed` normalized and split a whole 10 MB line (about 2 minutes) before cutting it
    # to 256 tokens. Now only the blocks that hold the first tokens are looked at.
    seen = []
    real = tokenizer_module.normalize
    monkeypatch.setattr(tokenizer_module, "normalize", lambda text, **kw: seen.append(len(text)) or real(text, **kw))
    tok = BertTokenizer(VOCAB, lowercase=True)
    text = "hello world " * 100_000  # 1.2 MB
    packed = tok([text], sequence_length=16)
    assert packed["token_ids"][0].tolist() == [2] + [5, 6] * 7 + [3]
    assert sum(seen) <= 2 * tokenizer_module._BLOCK_CHARS + 100


def test_a_pair_cut_longest_first_is_unchanged():
    tok = BertTokenizer(VOCAB)
    a, b = "hello " * 30, "world " * 20  # both cut, odd budget: the longer one gets the extra token
    packed = tok([a], [b], sequence_length=12, truncate="longest_first")
    assert packed["token_ids"][0].tolist() == [2] + [5] * 5 + [3] + [6] * 4 + [3]


class _CountingVocabulary(dict):
    lookups = 0

    def __contains__(self, key):
        type(self).lookups += 1
        return super().__contains__(key)


def test_a_long_word_costs_length_times_the_longest_entry_lookups():
    # Before: a 99-character word cost up to 99 * 100 / 2 = 4,950 lookups of substrings of up to
    # 99 characters; now at most 99 x 6 ("##able").
    tok = BertTokenizer(VOCAB)
    tok._ids = _CountingVocabulary(tok._ids)
    _CountingVocabulary.lookups = 0
    assert tok.tokenize("a" * 99) == ["a"] + ["##a"] * 98
    assert _CountingVocabulary.lookups <= 99 * max(len(t) for t in VOCAB)


def test_a_byte_order_mark_is_not_part_of_the_first_token(tmp_path):
    # Before: "vocabulary file ... lacks the special token(s) [PAD]" (the BOM glued to it).
    (tmp_path / "vocab.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(VOCAB).encode() + b"\n")
    tok = BertTokenizer(tmp_path / "vocab.txt")
    assert tok.pad_token_id == 0 and tok.token_to_id("[PAD]") == 0


def test_an_absurd_sequence_length_is_refused_before_allocating():
    tok = BertTokenizer(VOCAB)
    with pytest.raises(ValueError, match="sequence_length is 1,000,000,000,000, over the limit"):
        tok(["hello"], sequence_length=10**12)
    assert np.asarray(tok(["hello"], sequence_length=4)["token_ids"]).tolist() == [[2, 5, 3, 0]]
