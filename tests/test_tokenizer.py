"""BertTokenizer behaviour: basic tokenization rules, WordPiece, packing, bad input, properties."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bert_ref.text import tokenizer as tk
from bert_ref.text.tokenizer import BertTokenizer, pack, truncate_lengths

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "quick", "brown", "fox", "un", "##aff", "##able", "cafe", "café", "Café", "hello",
         "world", "a", "b", "c", "##b", "##c", ",", ".", "!", "'", "$", "^", "`", "中", "国", "σοφος",
         "σοφοσ", "i", "strasse", "straße"]
VOCAB = SPECIAL + WORDS


@pytest.fixture
def uncased():
    return BertTokenizer(VOCAB, lowercase=True)


@pytest.fixture
def cased():
    return BertTokenizer(VOCAB, lowercase=False)


def test_wordpiece_greedy_longest_match_with_continuations(uncased):
    assert uncased.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert uncased.tokenize("abc") == ["a", "##b", "##c"]


def test_word_without_a_complete_split_is_one_unk(uncased):
    assert uncased.tokenize("unaffablex") == ["[UNK]"]
    assert uncased.tokenize("hello zzz world") == ["hello", "[UNK]", "world"]


def test_words_longer_than_100_characters_become_unk():
    vocab = SPECIAL + ["a", "##a"]
    tok = BertTokenizer(vocab)
    assert tok.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert tok.tokenize("a" * 101) == ["[UNK]"]


def test_lowercase_strips_accents_by_default(uncased, cased):
    assert uncased.tokenize("Café") == ["cafe"]
    assert cased.tokenize("Café") == ["Café"]
    keep = BertTokenizer(VOCAB, lowercase=True, strip_accents=False)
    assert keep.tokenize("CAFÉ") == ["café"]


def test_lowercase_maps_each_character_so_no_final_sigma(uncased):
    # str.lower() would give "σοφος" (final sigma); BERT lowercases character by character.
    assert uncased.tokenize("ΣΟΦΟΣ") == ["σοφοσ"]


def test_no_case_folding_sharp_s_stays(uncased):
    assert uncased.tokenize("STRAßE") == ["straße"]


def test_punctuation_split_includes_ascii_symbols(uncased):
    assert uncased.tokenize("a$b^c`a") == ["a", "$", "b", "^", "c", "`", "a"]
    assert uncased.tokenize("hello,world!") == ["hello", ",", "world", "!"]


def test_cjk_ideographs_become_single_tokens(uncased):
    assert uncased.tokenize("中国hello") == ["中", "国", "hello"]
    # U+2B820..U+2B91F is not in the CJK ranges used by tokenizers (it starts again at U+2B920).
    assert tk.is_cjk("\U0002b920") and not tk.is_cjk("\U0002b820")


def test_control_characters_are_removed_and_whitespace_normalised(uncased):
    assert uncased.tokenize("hel\x00lo\u200b wor\ufffdld") == ["hello", "world"]
    assert uncased.tokenize("hello\tworld\nthe\rfox\u00a0a\u3000b\u2028c") == [
        "hello", "world", "the", "fox", "a", "b", "c"]


def test_characters_newer_than_unicode_8_are_letters():
    # U+2E43 DASH WITH LEFT UPTURN (Unicode 9.0, Po) is not punctuation to tokenizers.
    assert not tk.is_punctuation("\u2e43") and tk.is_punctuation("\u2e42")
    # U+0890 ARABIC POUND MARK ABOVE (Unicode 14.0, Cf) is not removed.
    assert not tk.is_control("\u0890") and tk.is_control("\u200b")


def test_encode_has_no_special_tokens_and_empty_text_gives_nothing(uncased):
    assert uncased.encode("hello") == [VOCAB.index("hello")]
    assert uncased.encode("") == []
    assert uncased.encode(" \t\n") == []


def test_decode_merges_continuations_and_can_skip_special_tokens(uncased):
    ids = [VOCAB.index(t) for t in ["[CLS]", "un", "##aff", "##able", "fox", "[SEP]"]]
    assert uncased.decode(ids) == "[CLS] unaffable fox [SEP]"
    assert uncased.decode(ids, skip_special_tokens=True) == "unaffable fox"
    assert uncased.decode(np.array(ids, dtype=np.int32)) == "[CLS] unaffable fox [SEP]"


def test_special_tokens_in_strings_only_when_asked():
    plain = BertTokenizer(VOCAB, lowercase=True)
    special = BertTokenizer(VOCAB, lowercase=True, special_tokens_in_strings=True)
    assert special.tokenize("a[MASK]b") == ["a", "[MASK]", "b"]
    # split like any text: "[", "mask", "]"; "mask" has no WordPiece split in this vocabulary
    assert plain.tokenize("a[MASK]b") == ["a", "[UNK]", "[UNK]", "[UNK]", "b"]


def test_vocabulary_lookups(uncased):
    assert uncased.vocabulary_size() == len(VOCAB)
    assert uncased.token_to_id("fox") == VOCAB.index("fox")
    assert uncased.id_to_token(VOCAB.index("fox")) == "fox"
    assert uncased.get_vocabulary() == VOCAB
    assert (uncased.cls_token_id, uncased.sep_token_id, uncased.pad_token_id) == (2, 3, 0)


def test_vocabulary_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizer(path, lowercase=True)
    assert tok.get_vocabulary() == VOCAB
    assert BertTokenizer(str(path)).vocabulary_size() == len(VOCAB)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a list"]])
def test_non_string_text_is_a_type_error_naming_the_type(uncased, bad):
    with pytest.raises(TypeError, match=f"text must be a str, got {type(bad).__name__}"):
        uncased.tokenize(bad)


def test_non_string_in_a_batch_names_its_position(uncased):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        uncased(["ok", 5])
    with pytest.raises(ValueError, match="texts is empty"):
        uncased([])


@pytest.mark.parametrize("missing", ["[CLS]", "[SEP]", "[UNK]", "[PAD]"])
def test_vocabulary_without_a_required_special_token(tmp_path, missing):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(t for t in VOCAB if t != missing) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) " + re.escape(missing)):
        BertTokenizer(path)


def test_vocabulary_type_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertTokenizer(tmp_path / "nope.txt")
    with pytest.raises(TypeError, match=r"vocabulary\[5\] must be a str, got int"):
        BertTokenizer(SPECIAL + [7])
    with pytest.raises(TypeError, match="vocabulary must be a file path or a list of tokens"):
        BertTokenizer(42)


def test_decode_rejects_ids_outside_the_vocabulary(uncased):
    with pytest.raises(ValueError, match=rf"ids\[1\] = {len(VOCAB)} is outside \[0, {len(VOCAB)}\)"):
        uncased.decode([0, len(VOCAB)])
    with pytest.raises(ValueError, match=r"ids\[0\] = -1"):
        uncased.decode([-1])
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int, got str"):
        uncased.decode(["a"])


def test_unknown_token_lookups(uncased):
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        uncased.token_to_id("zebra")
    with pytest.raises(ValueError, match=r"id 999 is outside \[0, "):
        uncased.id_to_token(999)


def test_sequence_length_too_short(uncased):
    with pytest.raises(ValueError, match="sequence_length = 2 is too short: 2 segment"):
        uncased(["a"], ["b"], sequence_length=2)
    with pytest.raises(TypeError, match="sequence_length must be an int"):
        uncased(["a"], sequence_length=8.0)
    with pytest.raises(ValueError, match="texts has 1 entries but texts_pair has 2"):
        uncased(["a"], ["b", "c"], sequence_length=8)
    with pytest.raises(ValueError, match="truncate='waterfall' is not one of"):
        uncased(["a"], sequence_length=8, truncate="waterfall")


# -- packing ---------------------------------------------------------------------------------


def test_pack_pair_layout(uncased):
    out = uncased(["the quick"], ["fox"], sequence_length=8)
    ids = [VOCAB.index(t) for t in ["[CLS]", "the", "quick", "[SEP]", "fox", "[SEP]"]] + [0, 0]
    assert out["token_ids"].tolist() == [ids]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0]]
    assert out["padding_mask"].tolist() == [[True] * 6 + [False] * 2]


def test_empty_text_packs_to_cls_sep(uncased):
    out = uncased("", sequence_length=4)
    assert out["token_ids"].tolist() == [[2, 3, 0, 0]]


def test_truncate_lengths_examples():
    assert truncate_lengths([3, 3], 10) == [3, 3]
    assert truncate_lengths([10, 10], 6) == [3, 3]
    assert truncate_lengths([10, 10], 7) == [4, 3]
    assert truncate_lengths([10, 10], 7, "longest_first") == [3, 4]
    assert truncate_lengths([10, 4], 7, "longest_first") == [4, 3]
    assert truncate_lengths([10, 2], 7, "longest_first") == [5, 2]
    assert truncate_lengths([1, 10], 6) == [1, 5]
    assert truncate_lengths([9], 4) == [4]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=2), st.integers(0, 60),
       st.sampled_from(["round_robin", "longest_first"]))
def test_truncation_fills_the_budget_and_never_grows(lengths, budget, strategy):
    kept = truncate_lengths(lengths, budget, strategy)
    assert all(0 <= k <= n for k, n in zip(kept, lengths, strict=True))
    assert sum(kept) == min(sum(lengths), budget)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(5, 20), max_size=12), min_size=1, max_size=4),
       st.integers(3, 16))
def test_pack_shapes_and_mask_match_content(batch, length):
    out = pack([batch], sequence_length=length, cls_id=2, sep_id=3, pad_id=0)
    for b, ids in enumerate(batch):
        n = min(len(ids), length - 2) + 2
        assert out["padding_mask"][b].sum() == n
        assert out["token_ids"][b, 0] == 2 and out["token_ids"][b, n - 1] == 3
        assert (out["token_ids"][b, n:] == 0).all()
        assert out["token_ids"][b, 1:n - 1].tolist() == ids[: n - 2]


# -- properties ------------------------------------------------------------------------------

PLAIN_WORDS = [w for w in WORDS if w.isascii() and w.isalpha() and w.islower() and not w.startswith("#")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PLAIN_WORDS), min_size=1, max_size=20))
def test_decode_encode_round_trip_on_vocabulary_words(words):
    tok = BertTokenizer(VOCAB, lowercase=True)
    text = " ".join(words)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_tokenize_never_returns_empty_strings_and_every_token_is_in_the_vocabulary(text):
    for tok in (BertTokenizer(VOCAB, lowercase=True), BertTokenizer(VOCAB)):
        tokens = tok.tokenize(text)
        assert all(t for t in tokens)
        assert all(t in VOCAB for t in tokens)
        assert len(tok.encode(text)) == len(tokens)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + " ,.!?$", max_size=60))
def test_whitespace_amount_does_not_change_tokens(text):
    tok = BertTokenizer(VOCAB, lowercase=True)
    assert tok.tokenize(text) == tok.tokenize(text.replace(" ", " \t\n "))
