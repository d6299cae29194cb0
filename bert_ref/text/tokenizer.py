"""BERT's WordPiece tokenizer and input packing, in pure Python.

Text becomes model inputs in four steps, each a short function below:

1. `normalize(text)`: drop U+0000, U+FFFD and control characters, turn every whitespace character
   into " ", put spaces around CJK ideographs, and (uncased vocabularies) strip accents (NFD, then
   drop non-spacing marks) and lowercase.
2. `pre_tokenize(text)`: split on whitespace and isolate each punctuation character.
3. `wordpiece(word, ...)`: greedy longest-match-first pieces, continuations prefixed with "##";
   a word of more than 100 characters, or one with no complete split, becomes "[UNK]".
4. `pack(...)`: `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, truncated and padded to a fixed length.

The result is token for token what Hugging Face `tokenizers` (`BertNormalizer` +
`BertPreTokenizer` + `WordPiece`, the fast tokenizer of every BERT checkpoint on the Hub) gives,
including its character classes: `tokenizers` classifies characters with Unicode 8.0 tables
(`bert_ref.text.unicode8`), so punctuation, format characters and combining marks added to Unicode later
are ordinary letters here too. Two details where keras-hub's `BertTokenizer` differs are noted at
`BertTokenizer`.

    >>> tok = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "!"],
    ...                     lowercase=True)
    >>> tok.tokenize("Unaffable!")
    ['un', '##aff', '##able', '!']
    >>> tok.encode("Unaffable!")
    [4, 5, 6, 7]
    >>> tok.decode([4, 5, 6, 7])
    'unaffable !'
    >>> out = tok(["Unaffable!"], sequence_length=8)
    >>> out["token_ids"].tolist(), out["padding_mask"].tolist()
    ([[2, 4, 5, 6, 7, 3, 0, 0]], [[True, True, True, True, True, True, False, False]])
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io.checkpoints.base import read_optional_json
from bert_ref.text import unicode8

__all__ = [
    "BertTokenizer", "normalize", "pre_tokenize", "wordpiece", "pack", "truncate_lengths",
    "read_vocabulary", "preset_tokenizer_files", "preset_tokenizer_settings", "TokenizerSettings",
]

CLS, SEP, PAD, UNK, MASK = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
REQUIRED_TOKENS = (CLS, SEP, UNK, PAD)
MAX_INPUT_CHARS_PER_WORD = 100
CONTINUATION = "##"

# ---------------------------------------------------------------------------------------------
# Character classes
# ---------------------------------------------------------------------------------------------

#: Unicode White_Space characters that survive text cleaning (the others are controls).
WHITESPACE = frozenset(
    " \t\n\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

#: CJK ideograph blocks split into single characters (the ranges `tokenizers` uses; note that
#: its fourth supplementary range starts at U+2B920, not at U+2B820 as in Google's original BERT).
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def _in_ranges(table: tuple, starts: list[int], cp: int) -> bool:
    i = bisect.bisect_right(starts, cp) - 1
    return i >= 0 and cp <= table[i][1]


_CONTROL_STARTS = [a for a, _ in unicode8.CONTROL]
_PUNCT_STARTS = [a for a, _ in unicode8.PUNCTUATION]
_MARK_STARTS = [a for a, _ in unicode8.NONSPACING_MARK]
_KEEP_WHOLE = frozenset(chr(cp) for a, b in unicode8.NEWER_DECOMPOSABLE for cp in range(a, b + 1))


def is_control(ch: str) -> bool:
    """Cc, Cf or Co in Unicode 8.0, except tab, newline and carriage return (those are whitespace)."""
    return ch not in "\t\n\r" and _in_ranges(unicode8.CONTROL, _CONTROL_STARTS, ord(ch))


def is_punctuation(ch: str) -> bool:
    """ASCII symbols 33-47, 58-64, 91-96, 123-126 (e.g. "$", "^", "`"), or P* in Unicode 8.0."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return _in_ranges(unicode8.PUNCTUATION, _PUNCT_STARTS, cp)


def is_nonspacing_mark(ch: str) -> bool:
    """Mn in Unicode 8.0: what accent stripping removes after NFD."""
    return _in_ranges(unicode8.NONSPACING_MARK, _MARK_STARTS, ord(ch))


def nfd(text: str) -> str:
    """Unicode NFD, leaving whole the few characters `tokenizers`' (Unicode 8.0) NFD does not know."""
    if not any(ch in _KEEP_WHOLE for ch in text):
        return unicodedata.normalize("NFD", text)
    parts, start = [], 0
    for i, ch in enumerate(text):
        if ch in _KEEP_WHOLE:
            parts += [unicodedata.normalize("NFD", text[start:i]), ch]
            start = i + 1
    parts.append(unicodedata.normalize("NFD", text[start:]))
    return "".join(parts)


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(a <= cp <= b for a, b in CJK_RANGES)


# ---------------------------------------------------------------------------------------------
# 1-3: normalize, pre-tokenize, WordPiece
# ---------------------------------------------------------------------------------------------


def normalize(text: str, *, lowercase: bool, strip_accents: bool) -> str:
    """BERT's text normalization, in `tokenizers`' order: clean, space CJK, strip accents, lowercase.

    Lowercasing maps each character on its own (`"Σ"` -> `"σ"` everywhere, never the final `"ς"`
    that `str.lower()` would pick at the end of a word).
    """
    out = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or is_control(ch):
            continue
        if ch in WHITESPACE:
            out.append(" ")
        elif is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = "".join(out)
    if strip_accents:
        text = "".join(c for c in nfd(text) if not is_nonspacing_mark(c))
    if lowercase:
        text = "".join(c.lower() for c in text)
    return text


def pre_tokenize(text: str) -> list[str]:
    """Split normalized text into words: whitespace separates, each punctuation character stands alone."""
    words: list[str] = []
    for chunk in text.split(" "):
        word: list[str] = []
        for ch in chunk:
            if ch in WHITESPACE:  # lowercasing/NFD never produce these, but split on them like BERT
                if word:
                    words.append("".join(word))
                    word = []
            elif is_punctuation(ch):
                if word:
                    words.append("".join(word))
                    word = []
                words.append(ch)
            else:
                word.append(ch)
        if word:
            words.append("".join(word))
    return words


def wordpiece(word: str, vocabulary: dict[str, int], *, unk_token: str = UNK,
              max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
              max_piece_chars: int | None = None) -> list[str]:
    """Greedy longest-match-first WordPiece of one word; `[unk_token]` if any part has no match.

    `max_piece_chars` (the longest vocabulary entry, without "##"; `BertTokenizer` passes it) only
    skips candidates longer than any entry, so the result is the same; it bounds the cost of a
    word of n characters by n x max_piece_chars lookups instead of n^2 / 2.

    >>> wordpiece("unaffable", {"un": 0, "##aff": 1, "##able": 2})
    ['un', '##aff', '##able']
    """
    if len(word) > max_input_chars_per_word:
        return [unk_token]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        end = len(word) if max_piece_chars is None else min(len(word), start + max_piece_chars)
        while end > start:
            piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
            if piece in vocabulary:
                break
            end -= 1
        else:  # nothing matched from `start`
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# ---------------------------------------------------------------------------------------------
# 4: packing
# ---------------------------------------------------------------------------------------------

TRUNCATION_STRATEGIES = ("round_robin", "longest_first")


def truncate_lengths(lengths: Sequence[int], budget: int, strategy: str = "round_robin") -> list[int]:
    """How many tokens of each segment survive when `sum(lengths)` must fit in `budget`.

    "round_robin" (keras-hub's `MultiSegmentPacker` default): hand out one token at a time to each
    segment that still has tokens, first segment first. "longest_first" (`tokenizers`' default for
    pairs): the shorter segment keeps what it can up to half, the longer one takes the rest. They
    agree except when both segments are cut and the budget is odd: round robin gives the extra token
    to the first segment, longest_first to the longer one (the second one on a tie).

    >>> truncate_lengths([10, 10], 7), truncate_lengths([10, 10], 7, "longest_first")
    ([4, 3], [3, 4])
    >>> truncate_lengths([2, 10], 7)
    [2, 5]
    """
    if strategy not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncate={strategy!r} is not one of {TRUNCATION_STRATEGIES}")
    if budget < 0:
        raise ValueError(f"the token budget is {budget}: sequence_length is too short")
    lengths = list(lengths)
    if sum(lengths) <= budget:
        return lengths
    if strategy == "round_robin":
        kept = [0] * len(lengths)
        left = budget
        while left > 0:
            for i, n in enumerate(lengths):
                if left > 0 and kept[i] < n:
                    kept[i] += 1
                    left -= 1
        return kept
    if len(lengths) == 1:
        return [budget]
    if len(lengths) != 2:
        raise ValueError("truncate='longest_first' packs one or two segments")
    a, b = lengths
    short, long_ = min(a, b), max(a, b)
    n_short, n_long = short, (short if short > budget else max(short, budget - short))
    if n_short + n_long > budget:
        n_short, n_long = budget // 2, budget // 2 + budget % 2
    n_short, n_long = min(n_short, short), min(n_long, long_)
    return [n_long, n_short] if a > b else [n_short, n_long]


def pack(segments: Sequence[Sequence[Sequence[int]]], *, sequence_length: int, cls_id: int,
         sep_id: int, pad_id: int, truncate: str = "round_robin") -> dict[str, np.ndarray]:
    """Pack a batch: `segments[k][b]` is the id list of segment k of example b.

    Returns `token_ids` (int32), `segment_ids` (int32: 0 for [CLS], segment k and the [SEP] ending
    it get k) and `padding_mask` (bool, True at real tokens), each of shape (batch, sequence_length).
    """
    if not isinstance(sequence_length, (int, np.integer)) or isinstance(sequence_length, bool):
        raise TypeError(f"sequence_length must be an int, got {type(sequence_length).__name__}")
    num_segments = len(segments)
    minimum = num_segments + 1
    if sequence_length < minimum:
        raise ValueError(
            f"sequence_length = {sequence_length} is too short: {num_segments} segment(s) need "
            f"at least {minimum} positions for [CLS] and [SEP]")
    batch = len(segments[0])
    token_ids = np.full((batch, sequence_length), pad_id, dtype=np.int32)
    segment_ids = np.zeros((batch, sequence_length), dtype=np.int32)
    padding_mask = np.zeros((batch, sequence_length), dtype=bool)
    for b in range(batch):
        parts = [list(seg[b]) for seg in segments]
        kept = truncate_lengths([len(p) for p in parts], sequence_length - minimum, truncate)
        ids, segs = [cls_id], [0]
        for k, (part, n) in enumerate(zip(parts, kept, strict=True)):
            ids += part[:n] + [sep_id]
            segs += [k] * (n + 1)
        token_ids[b, : len(ids)] = ids
        segment_ids[b, : len(ids)] = segs
        padding_mask[b, : len(ids)] = True
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


# ---------------------------------------------------------------------------------------------
# Vocabulary and presets
# ---------------------------------------------------------------------------------------------


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """One token per line, the line number is the id; trailing whitespace is not part of a token.

    A UTF-8 byte order mark at the start (some editors write one) is not part of the first token."""
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip() for line in lines]


def wordpiece_vocabulary(path: str | os.PathLike) -> list[str]:
    """The tokens of a `tokenizers` WordPiece `tokenizer.json` (`model.vocab`), in id order."""
    fast = read_optional_json(Path(path))
    vocab = fast.get("model", {}).get("vocab") if isinstance(fast, dict) else None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise ValueError(f"{path}: model.vocab must map tokens to integer ids")
    tokens = sorted(vocab, key=vocab.__getitem__)
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        gap = next(i for i, v in enumerate(ids) if v != i)
        raise ValueError(f"{path}: model.vocab ids must be 0 .. {len(ids) - 1} without gaps; id {gap} is missing")
    return tokens


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    """What a preset's tokenizer does, as `BertTokenizer.from_preset` builds it.

    Attributes:
        vocabulary: the vocabulary file (`tokenizer.json` when the vocabulary is inside it).
        lowercase, strip_accents, special_tokens_in_strings: `BertTokenizer`'s arguments.
        layout: "huggingface", "keras-hub" or "native" (a keras-hub layout written by bert_ref,
            whose `metadata.json` states every setting).
        files: every file these settings were read from (the vocabulary first): what a job's
            identity hashes.
    """

    vocabulary: Path
    lowercase: bool
    strip_accents: bool
    special_tokens_in_strings: bool
    layout: str
    files: tuple[Path, ...]

    def options(self) -> dict[str, bool]:
        """`BertTokenizer`'s keyword arguments."""
        return {"lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "special_tokens_in_strings": self.special_tokens_in_strings}


#: The `metadata.json` object a native preset states its tokenizer in (see `save_preset`).
NATIVE_TOKENIZER_KEY = "tokenizer"


def _flag(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{where} must be true, false or null, got {value!r}")


def preset_tokenizer_settings(directory: str | os.PathLike) -> TokenizerSettings:
    """How a preset directory's tokenizer behaves (see `TokenizerSettings`): the one reading of a
    preset's tokenizer files, used by `BertTokenizer.from_preset`, `bert-ref info` and `convert`.

    Hugging Face layout: `vocab.txt` + `tokenizer_config.json` (`do_lower_case`, `strip_accents`),
    or the normalizer of `tokenizer.json`; without `vocab.txt` (transformers >= 5 does not write
    one), the WordPiece vocabulary inside `tokenizer.json`. Special tokens written in the text are
    recognised, as `tokenizers` does. keras-hub layout: `assets/tokenizer/vocabulary.txt` +
    `tokenizer.json` (`config.lowercase`); special tokens in the text are split like other text, as
    keras-hub does; accents are stripped when lowercasing (see `BertTokenizer` for this documented
    difference). A native preset (keras-hub layout written by `save_preset`) states all three
    settings in `metadata.json`'s "tokenizer" object, which wins; an older one only `lowercase`.
    An unstated `lowercase` is False; an unstated `strip_accents` follows `lowercase`.

    Raises:
        FileNotFoundError: no vocabulary in the directory.
        ValueError: a setting that is not a boolean (naming the file and field).
    """
    d = Path(directory)
    keras_vocab = d / "assets" / "tokenizer" / "vocabulary.txt"
    lowercase: bool | None = None
    strip: bool | None = None
    if keras_vocab.is_file():
        files = [keras_vocab]
        special = False
        layout = "keras-hub"
        cfg = read_optional_json(d / "tokenizer.json")
        if isinstance(cfg, dict) and isinstance(cfg.get("config"), dict):
            files.append(d / "tokenizer.json")
            lowercase = _flag(cfg["config"].get("lowercase"), f"{d / 'tokenizer.json'}: config.lowercase")
        meta = read_optional_json(d / "metadata.json")
        if isinstance(meta, dict):
            where = d / "metadata.json"
            native = meta.get(NATIVE_TOKENIZER_KEY)
            if isinstance(native, dict):
                files.append(where)
                layout = "native"
                lowercase = _flag(native.get("lowercase"), f"{where}: tokenizer.lowercase")
                strip = _flag(native.get("strip_accents"), f"{where}: tokenizer.strip_accents")
                special = bool(_flag(native.get("special_tokens_in_strings"),
                                     f"{where}: tokenizer.special_tokens_in_strings"))
            elif lowercase is None and meta.get("lowercase") is not None:
                files.append(where)
                layout = "native"
                lowercase = _flag(meta.get("lowercase"), f"{where}: lowercase")
        return _settings(keras_vocab, lowercase, strip, special, layout, files)
    tokenizer_json = d / "tokenizer.json"
    fast = read_optional_json(tokenizer_json) if tokenizer_json.is_file() else None
    model = fast.get("model") if isinstance(fast, dict) else None
    if (d / "vocab.txt").is_file():
        vocab = d / "vocab.txt"
    elif isinstance(model, dict) and model.get("type") == "WordPiece":  # transformers >= 5 saves no vocab.txt
        vocab = tokenizer_json
    else:
        raise FileNotFoundError(
            f"{d} holds no BERT vocabulary: expected vocab.txt (Hugging Face) or "
            "assets/tokenizer/vocabulary.txt (keras-hub)")
    files = [vocab]
    cfg = read_optional_json(d / "tokenizer_config.json")
    norm = fast.get("normalizer") if isinstance(fast, dict) else None
    if isinstance(cfg, dict) and "do_lower_case" in cfg:
        files.append(d / "tokenizer_config.json")
        lowercase = bool(cfg["do_lower_case"])
        strip = _flag(cfg.get("strip_accents"), f"{d / 'tokenizer_config.json'}: strip_accents")
    elif isinstance(norm, dict) and norm.get("type") == "BertNormalizer":
        lowercase = bool(norm.get("lowercase", True))
        strip = _flag(norm.get("strip_accents"), f"{tokenizer_json}: normalizer.strip_accents")
    if fast is not None and tokenizer_json not in files:
        files.append(tokenizer_json)
    return _settings(vocab, lowercase, strip, True, "huggingface", files)


def _settings(vocab: Path, lowercase: bool | None, strip: bool | None, special: bool, layout: str,
              files: list[Path]) -> TokenizerSettings:
    low = bool(lowercase) if lowercase is not None else False
    return TokenizerSettings(vocab, low, low if strip is None else strip, special, layout, tuple(files))


def preset_tokenizer_files(directory: str | os.PathLike) -> tuple[Path, bool | None]:
    """The vocabulary file and lowercase flag of a preset directory (see `preset_tokenizer_settings`)."""
    s = preset_tokenizer_settings(directory)
    return s.vocabulary, s.lowercase


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


class BertTokenizer:
    """BERT's WordPiece tokenizer: `tokenize`, `encode`, `decode`, and packing by calling it.

    Args:
        vocabulary: a vocabulary file (one token per line) or a list of tokens; it must hold
            "[CLS]", "[SEP]", "[UNK]" and "[PAD]".
        lowercase: lowercase the text (uncased vocabularies).
        strip_accents: drop accents (NFD, then drop non-spacing marks). None: same as `lowercase`.
        special_tokens_in_strings: recognise "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]" written
            in the text as those tokens (what `tokenizers` does with a Hub checkpoint's
            tokenizer.json). False, as in keras-hub: they are split like any other text.

    keras-hub's `BertTokenizer` differs from `tokenizers` (and so from this class) in a few corners:
    it splits words at control characters instead of deleting them, does not split on non-ASCII
    whitespace such as U+00A0 or U+3000, lowercases by case folding ("ß" -> "ss"), uses current
    Unicode categories and the CJK range U+2B820..U+2CEAF, and counts the 100-per-word limit in UTF-8
    bytes rather than characters.
    """

    def __init__(self, vocabulary: str | os.PathLike | Sequence[str], lowercase: bool = False, *,
                 strip_accents: bool | None = None, special_tokens_in_strings: bool = False) -> None:
        given: object = vocabulary  # checked at run time, bytes included
        if isinstance(given, (str, os.PathLike)):
            path = Path(given)
            if not path.is_file():
                raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
            tokens = read_vocabulary(path)
            where = f"vocabulary file {str(path)!r}"
        elif isinstance(given, Sequence) and not isinstance(given, bytes):
            tokens = list(given)
            for i, t in enumerate(tokens):
                if not isinstance(t, str):
                    raise TypeError(f"vocabulary[{i}] must be a str, got {type(t).__name__}")
            where = "vocabulary"
        else:
            raise TypeError(
                f"vocabulary must be a file path or a list of tokens, got {type(vocabulary).__name__}")
        self._tokens = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}  # a repeated token maps to its last line
        # The longest entry, counting a "##" continuation's prefix (candidates are looked up with it).
        self._max_piece_chars = max((len(t) for t in tokens), default=1)
        missing = [t for t in REQUIRED_TOKENS if t not in self._ids]
        if missing:
            raise ValueError(
                f"{where} lacks the special token(s) {', '.join(missing)}; BERT needs "
                f"{', '.join(REQUIRED_TOKENS)}")
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.special_tokens_in_strings = bool(special_tokens_in_strings)
        self.special_tokens = tuple(t for t in (CLS, SEP, PAD, UNK, MASK) if t in self._ids)
        self._special_pattern = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True))
            + ")")
        self.cls_token_id = self._ids[CLS]
        self.sep_token_id = self._ids[SEP]
        self.pad_token_id = self._ids[PAD]
        self.unk_token_id = self._ids[UNK]
        self.mask_token_id = self._ids.get(MASK)

    @classmethod
    def from_preset(cls, preset: str | os.PathLike, **kwargs: Any) -> BertTokenizer:
        """The tokenizer of a preset: a local directory (Hugging Face or keras-hub layout), a
        built-in name, `kaggle://...` or `hf://...` (see `bert_ref.io.hub.resolve`).

        A Hugging Face preset recognises special tokens written in the text, as its tokenizer.json
        does; a keras-hub preset does not. Keyword arguments override what the preset says.
        """
        from bert_ref.io import hub

        directory = hub.resolve(preset)
        settings = preset_tokenizer_settings(directory)
        vocab = settings.vocabulary
        tokens: Path | list[str] = wordpiece_vocabulary(vocab) if vocab.name == "tokenizer.json" else vocab
        options: dict[str, Any] = settings.options()
        options.update(kwargs)
        return cls(tokens, **options)

    # -- vocabulary ---------------------------------------------------------------------------

    def vocabulary_size(self) -> int:
        return len(self._tokens)

    def get_vocabulary(self) -> list[str]:
        return list(self._tokens)

    def token_to_id(self, token: str) -> int:
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary") from None

    def id_to_token(self, id: int) -> str:
        if not isinstance(id, (int, np.integer)) or isinstance(id, bool):
            raise TypeError(f"id must be an int, got {type(id).__name__}")
        if not 0 <= id < len(self._tokens):
            raise ValueError(f"id {id} is outside [0, {len(self._tokens)}): the vocabulary size")
        return self._tokens[id]

    # -- text -> tokens -----------------------------------------------------------------------

    def tokenize(self, text: str, max_tokens: int | None = None) -> list[str]:
        """WordPiece tokens of `text`, without [CLS]/[SEP].

        With `max_tokens`, the first `max_tokens` of them, and the text after them is not looked at:
        it is normalized and split in blocks that end at a word boundary (whitespace or
        punctuation, where normalization and splitting of the parts equal those of the whole), so
        cutting a 10 MB line to 256 tokens costs a few blocks, not the whole line."""
        _check_text(text, "text")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 0):
            raise ValueError(f"max_tokens = {max_tokens!r} must be None or an int >= 0")
        if self.special_tokens_in_strings:
            chunks = self._special_pattern.split(text)
        else:
            chunks = [text]
        tokens: list[str] = []
        for i, chunk in enumerate(chunks):
            if max_tokens is not None and len(tokens) >= max_tokens:
                break
            if i % 2 == 1:  # a special token written in the text
                tokens.append(chunk)
                continue
            for block in ([chunk] if max_tokens is None else _blocks(chunk)):
                normalized = normalize(block, lowercase=self.lowercase, strip_accents=self.strip_accents)
                for word in pre_tokenize(normalized):
                    tokens += wordpiece(word, self._ids, max_piece_chars=self._max_piece_chars)
                if max_tokens is not None and len(tokens) >= max_tokens:
                    break
        return tokens if max_tokens is None else tokens[:max_tokens]

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP] (packing adds them). `encode("") == []`.

        `max_tokens`: only the first that many (see `tokenize`)."""
        return [self._ids[t] for t in self.tokenize(text, max_tokens)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Tokens joined by spaces, "##" continuations glued to the piece before them."""
        ids = list(np.asarray(ids).reshape(-1).tolist()) if isinstance(ids, np.ndarray) else list(ids)
        words: list[str] = []
        for pos, i in enumerate(ids):
            if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
                raise TypeError(f"ids[{pos}] must be an int, got {type(i).__name__}")
            if not 0 <= i < len(self._tokens):
                raise ValueError(
                    f"ids[{pos}] = {i} is outside [0, {len(self._tokens)}): the vocabulary size")
            token = self._tokens[i]
            if skip_special_tokens and token in self.special_tokens:
                continue
            if token.startswith(CONTINUATION) and words:
                words[-1] += token[len(CONTINUATION):]
            else:
                words.append(token)
        return " ".join(words)

    # -- packing ------------------------------------------------------------------------------

    def __call__(self, texts: str | Sequence[str], texts_pair: str | Sequence[str] | None = None, *,
                 sequence_length: int = 512, truncate: str = "round_robin") -> dict[str, np.ndarray]:
        """Tokenize and pack a batch for `BertBackbone`: `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`.

        `texts` (and `texts_pair`) is a string or a list of strings; the result always has a batch
        axis: `token_ids`, `segment_ids` (int32) and `padding_mask` (bool), (batch, sequence_length).
        `truncate`: "round_robin" (keras-hub) or "longest_first" (`tokenizers`), see
        `truncate_lengths`.
        """
        first = _as_batch(texts, "texts")
        _check_sequence_length(sequence_length)
        # No segment keeps more than the positions left after [CLS] and [SEP], and which tokens it
        # keeps depends only on the first that many of each segment's (a prefix; round robin hands
        # out one at a time): tokenizing stops there. longest_first compares the full lengths of a
        # pair, so a pair cut that way is tokenized whole.
        budget = max(sequence_length - 2, 0) if texts_pair is None or truncate == "round_robin" else None
        segments = [[self.encode(t, budget) for t in first]]
        if texts_pair is not None:
            second = _as_batch(texts_pair, "texts_pair")
            if len(second) != len(first):
                raise ValueError(
                    f"texts has {len(first)} entries but texts_pair has {len(second)}")
            segments.append([self.encode(t, budget) for t in second])
        return pack(segments, sequence_length=sequence_length, cls_id=self.cls_token_id,
                    sep_id=self.sep_token_id, pad_id=self.pad_token_id, truncate=truncate)

    def __repr__(self) -> str:
        return (f"BertTokenizer(vocabulary_size={len(self._tokens)}, lowercase={self.lowercase}, "
                f"strip_accents={self.strip_accents})")


_BOUNDARY = re.compile("[" + re.escape("".join(sorted(WHITESPACE))) + r"]|[!-/:-@\[-`{-~]")
_BLOCK_CHARS = 4096


def _blocks(text: str) -> Iterator[str]:
    """`text` in consecutive pieces of about `_BLOCK_CHARS` characters, each cut just before a
    whitespace or ASCII punctuation character (a word boundary, and a starter for NFD), so that
    normalizing and splitting the pieces gives the words of the whole. A run with no such
    character is one piece."""
    start = 0
    while start < len(text):
        m = _BOUNDARY.search(text, start + _BLOCK_CHARS) if start + _BLOCK_CHARS < len(text) else None
        end = m.start() if m else len(text)
        yield text[start:end]
        start = end


def _check_sequence_length(sequence_length: object) -> None:
    from bert_ref.model import limits

    if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)):
        raise TypeError(f"sequence_length must be an int, got {type(sequence_length).__name__}")
    limits.check("sequence_length", int(sequence_length), "sequence_length")


def _check_text(text: object, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _as_batch(texts: object, name: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    if not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a str or a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} is empty: give at least one text")
    for i, t in enumerate(texts):
        _check_text(t, f"{name}[{i}]")
    return list(texts)
