"""Reading text: the one policy for every text that comes in (`embed` / `tokenize` on standard
input, `run --dataset` / `compare --dataset` on `.jsonl` and plain text files, texts given as
arguments).

* **Strict UTF-8.** Bytes that are not UTF-8 are an error naming the file or stream, the line and
  the byte offset; they are never replaced (a replaced byte would be tokenized as [UNK] and the
  text would silently differ from the one the port saw).
* **Lines end at LF** (`\\n`); one CR before it (Windows' CRLF) is dropped. A CR anywhere else is
  part of the text (the tokenizer treats it as white space), so every reader counts the same lines.
* **A UTF-8 byte order mark** (EF BB BF) at the very start of a file or stream is skipped, as
  editors on Windows write one (`vocab.txt` is read the same way).
* **Blank lines** (only ASCII white space) are not texts.
* **JSONL**: each non-blank line is one JSON object with a string `text` and optionally a string
  `text_pair`; other fields are ignored. JSON is read within `bert_ref.model.limits` (size, depth,
  digits of an integer).

    >>> [(n, text) for n, _, text in iter_lines(b"\\xef\\xbb\\xbfone\\r\\n\\n two\\rthree\\n", "data.txt")]
    [(1, 'one'), (3, ' two\\rthree')]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bert_ref.model import limits

BOM = b"\xef\xbb\xbf"
TEXT_KEYS = ("text", "text_pair")


class TextInputError(ValueError):
    """Text that is not valid input: not UTF-8, not a JSON record, or not a string."""


def is_blank(raw: bytes, offset: int = -1) -> bool:
    """True for a line that holds only ASCII white space (no text); `offset` is its byte offset in
    its file (a BOM at offset 0 is not text)."""
    if offset == 0:
        raw = raw.removeprefix(BOM)
    return not raw.strip()


def split_lines(data: bytes, offset: int = 0) -> Iterator[tuple[bytes, int]]:
    """(line, byte offset of its start) for each line of `data`, split at LF only (the LF is not
    part of the line; a last line without one is a line). `offset` is `data[0]`'s offset in its
    file. Blank lines are included: the caller counts them."""
    start = 0
    end = len(data)
    while start < end:
        stop = data.find(b"\n", start)
        if stop < 0:
            stop = end
        yield data[start:stop], offset + start
        start = stop + 1


def decode_line(raw: bytes, where: str, offset: int) -> str:
    """One line's text: a BOM skipped at file offset 0, one trailing CR dropped, strict UTF-8.

    Args:
        raw: the line's bytes, without its LF.
        where: names the line in an error ("data.jsonl:17", "standard input, line 3").
        offset: `raw[0]`'s byte offset in its file or stream.

    Raises:
        TextInputError: "{where}: not valid UTF-8: byte 0xff at byte offset N of the file
            (column c of the line) ..." and what to do.
    """
    if offset == 0 and raw.startswith(BOM):
        raw, offset = raw[len(BOM):], len(BOM)
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.end]
        raise TextInputError(
            f"{where}: not valid UTF-8: byte{'s' if len(bad) > 1 else ''} {bad.hex(' ')} at byte offset "
            f"{offset + e.start:,} (byte {e.start + 1} of the line; {e.reason}); text is read as UTF-8 only and "
            "never repaired: convert it first (e.g. `iconv -f latin1 -t utf-8`)") from None


def check_text(text: str, where: str) -> str:
    """`text` if it is valid Unicode; a command-line argument with bytes that are not UTF-8 reaches
    Python as lone surrogates (U+DC80..U+DCFF): an error naming the argument and the byte."""
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            raise TextInputError(f"{where}: not valid UTF-8: byte {ord(ch) - 0xDC00:02x} at character {i + 1}; "
                                 "text is read as UTF-8 only: convert it first (e.g. `iconv -f latin1 -t utf-8`)")
    return text


def iter_lines(data: bytes, source: str, first_line: int = 1, offset: int = 0) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset, text) of each non-blank line of `data`, decoded by `decode_line`.
    `source` names the file or stream; `first_line` and `offset` place `data` in it."""
    for number, (raw, at) in enumerate(split_lines(data, offset), start=first_line):
        if not is_blank(raw, at):
            yield number, at, decode_line(raw, f"{source}:{number}", at)


def parse_record(line: str, where: str) -> tuple[str, str | None]:
    """(text, text_pair or None) of one JSONL line.

    Raises:
        TextInputError: not a JSON object with a string `text` (and a string `text_pair` if any),
            naming `where`; `bert_ref.model.limits.LimitError` for JSON over a limit.
    """
    try:
        obj: Any = limits.loads(line, where)
    except limits.LimitError:
        raise
    except ValueError as e:
        raise TextInputError(f"{where}: not a JSON object ({' '.join(str(e).split())}); each line of a .jsonl "
                             'file is one object such as {"text": "...", "text_pair": "..."}') from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        got = type(obj).__name__ if not isinstance(obj, dict) else (
            "no 'text'" if "text" not in obj else f"'text' of type {type(obj['text']).__name__}")
        raise TextInputError(f"{where}: expected an object with a string 'text' (and optionally a string "
                             f"'text_pair'), got {got}")
    pair = obj.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        raise TextInputError(f"{where}: 'text_pair' must be a string, got {type(pair).__name__}")
    return obj["text"], pair
