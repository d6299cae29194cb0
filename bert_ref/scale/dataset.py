"""Datasets for dataset-scale runs: reading records, checking them, and batching them by length.

A dataset is a sequence of *records*, each one BERT input row. Four layouts are read:

* **JSONL** (`.jsonl`): one JSON object per line, `{"text": "...", "text_pair": "..."}`
  (`text_pair` optional), tokenized with the preset's tokenizer and packed as
  `[CLS] text [SEP] text_pair [SEP]`;
* **plain text** (`.txt` or any other suffix): one text per line;
* **token ids**: an `.npz` or `.safetensors` file with `token_ids` [N, S] (and optionally
  `segment_ids`, `padding_mask`), or a directory of such files (read in file-name order);
* **Parquet** (`.parquet`, the `parquet` extra): a `text` column (and optionally `text_pair`);
  each shard reads only the row groups that hold its records, streamed in batches (a row group
  of millions of rows costs a pass over it per shard: write Parquet with row groups of at most a
  few shards' records).

Blank lines are not records. Record indices count from 0 in file order; every error about a record
names its index and where it came from (`data.jsonl:17`, `ids.npz row 5`).

Sizes are checked when the dataset is opened, before any shard is planned: every array file must
hold the bytes its headers declare (`bert_ref.io.arrays`), and a Parquet row group may not decode
to more than the `BERT_REF_MAX_INPUT_BYTES` limit. Text records are tokenized only up to the
sequence length: a 50 MB line cut by `truncate` costs a few blocks of it, not the whole line.

A record's *length* is its number of real tokens. Token-id records must be right-padded (their
`padding_mask` row is ones, then zeros) and hold at least one real token; only the first `length`
positions are computed. Text records longer than the sequence length are an error unless
`truncate=True` (then they are cut as keras-hub's packer cuts them, round robin).

`Dataset` is a small picklable description (absolute paths, offsets, record counts): a worker that
receives one reads its records itself, from the same path (shared storage on a cluster), so record
data never travels through a scheduler.

    >>> ds = open_dataset("data.jsonl")                                       # doctest: +SKIP
    >>> ds.num_records, ds.shards(256)[:2]                                    # doctest: +SKIP
    (1000, [(0, 256), (256, 512)])
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io.arrays import ArrayFileError, Member, array_members, read_header, read_rows
from bert_ref.io.errors import check_regular_file
from bert_ref.oracle.candidates import check_input_header
from bert_ref.text.lines import decode_line, is_blank, parse_record, split_lines

__all__ = ["Dataset", "Records", "open_dataset", "length_batches", "DatasetError", "ARRAY_SUFFIXES"]

ARRAY_SUFFIXES = (".npz", ".safetensors")
TEXT_KINDS = ("jsonl", "lines", "parquet")
#: A text record over the length limit is tokenized whole, to say how long it is, up to this many
#: characters; a longer one is "more than N tokens".
EXACT_COUNT_CHARS = 100_000
#: Rows per batch when a Parquet row group is streamed.
PARQUET_BATCH_ROWS = 4096


class DatasetError(ValueError):
    """A dataset file is missing or unreadable, or one of its records is invalid."""


@dataclasses.dataclass
class Records:
    """The records `[start, stop)` of a dataset, unpadded.

    Attributes:
        index: [n] int64, the records' indices in the dataset.
        token_ids, segment_ids: n int arrays, record i of length `lengths[i]`.
        lengths: [n] int64, real tokens per record.
        sources: n strings naming where each record came from (`file:line`, `file row r`).
    """

    index: np.ndarray
    token_ids: list
    segment_ids: list
    lengths: np.ndarray
    sources: list


@dataclasses.dataclass(frozen=True)
class ArrayFile:
    path: str
    rows: int
    width: int
    keys: tuple
    members: tuple[Member, ...] = ()

    def member(self, key: str) -> Member:
        return next(m for m in self.members if m.key == key)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where a dataset's records are: a picklable description, no record data.

    Attributes:
        path: the dataset as given (a file or a directory).
        kind: "jsonl", "lines", "parquet" or "arrays".
        num_records: the number of records.
        offsets: text kinds: [num_records + 1] byte offsets of each record's line (the last one is
            the end of the file); parquet: row numbers.
        lines: text kinds: [num_records] 1-based line numbers.
        files: arrays kind: the files, in order, with their row counts.
        groups: parquet: the first row of each row group, and the row count at the end.
    """

    path: str
    kind: str
    num_records: int
    offsets: np.ndarray | None = None
    lines: np.ndarray | None = None
    files: tuple = ()
    first: int = 0  # `offsets` and `lines` start at this record (see `part`)
    groups: tuple[int, ...] = ()

    def source(self, record: int) -> str:
        """Where record `record` comes from (`data.jsonl:17`, `ids.npz row 5`), without reading it."""
        name = Path(self.path).name
        if self.kind in ("jsonl", "lines") and self.lines is not None and 0 <= record - self.first < len(self.lines):
            return f"{name}:{int(self.lines[record - self.first])}"
        if self.kind == "arrays":
            first = 0
            for f in self.files:
                if record < first + f.rows:
                    return f"{Path(f.path).name} row {record - first}"
                first += f.rows
        return f"{name} row {record}" if self.kind != "lines" and self.kind != "jsonl" else f"{name} record {record}"

    def part(self, start: int, stop: int) -> Dataset:
        """The same dataset, carrying only what records `[start, stop)` need (what a worker gets)."""
        if self.offsets is None:
            return self
        a, b = start - self.first, stop - self.first
        return dataclasses.replace(self, offsets=self.offsets[a:b + 1].copy(),
                                   lines=self.lines[a:b].copy() if self.lines is not None else None, first=start)

    def shards(self, shard_size: int) -> list[tuple[int, int]]:
        """`[start, stop)` record ranges of at most `shard_size` records each."""
        if not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
            raise ValueError(f"shard size must be a positive integer, got {shard_size!r}")
        return [(a, min(a + shard_size, self.num_records)) for a in range(0, self.num_records, shard_size)]

    def files_for_hash(self) -> list[Path]:
        """The files whose bytes define the dataset."""
        if self.kind == "arrays":
            return [Path(f.path) for f in self.files]
        return [Path(self.path)]

    def sha256(self) -> str:
        """sha256 of the dataset's content, not of its files' names: a single file's is the file's
        own (what `sha256sum` prints); a directory's is over its files' sha256s in order."""
        files = self.files_for_hash()
        if len(files) == 1:
            return file_sha256(files[0])
        h = hashlib.sha256()
        for f in files:
            h.update(file_sha256(f).encode() + b"\n")
        return h.hexdigest()

    def read(self, start: int, stop: int, *, vocabulary_size: int, num_segments: int, max_length: int,
             tokenizer: Callable[[], Any] | None = None, truncate: bool = False) -> Records:
        """Read and check records `[start, stop)`.

        Args:
            vocabulary_size, num_segments: the model's; ids outside them are an error.
            max_length: the longest record allowed (text: the packed length; ids: the real tokens).
            tokenizer: a callable returning a `BertTokenizer` (text kinds only; called once).
            truncate: cut text records longer than `max_length` instead of raising.

        Raises:
            DatasetError: naming the record index, its source and what is wrong.
        """
        if not 0 <= start <= stop <= self.num_records:
            raise ValueError(f"record range [{start}, {stop}) is outside [0, {self.num_records}]")
        if self.kind == "arrays":
            recs = _read_array_records(self, start, stop)
        else:
            if tokenizer is None:
                raise ValueError(f"{self.path}: a text dataset needs the preset's tokenizer")
            recs = _read_text_records(self, start, stop, tokenizer(), max_length, truncate)
        fields = (recs.index, recs.token_ids, recs.segment_ids, recs.lengths, recs.sources)
        for i, ids, segs, n, src in zip(*fields, strict=True):
            where = f"record {int(i)} ({src})"
            if n > max_length:
                raise DatasetError(f"{where}: {int(n)} tokens; the longest record allowed is {max_length} "
                                   "(the model's max_sequence_length or --sequence-length)"
                                   + ("; pass --truncate to cut text records" if self.kind != "arrays" else ""))
            for name, arr, high, why in (("token_ids", ids, vocabulary_size, "vocabulary_size"),
                                         ("segment_ids", segs, num_segments, "num_segments")):
                bad = np.flatnonzero((arr < 0) | (arr >= high))
                if bad.size:
                    p = int(bad[0])
                    raise DatasetError(f"{where}: {name}[{p}] = {int(arr[p])} is outside [0, {high}): "
                                       f"{why} is {high}")
        recs.token_ids = [a.astype(np.int64, copy=False) for a in recs.token_ids]
        recs.segment_ids = [a.astype(np.int64, copy=False) for a in recs.segment_ids]
        return recs


# ----------------------------------------------------------------------------------------------
# Opening


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Index a dataset (see the module docstring) without reading its records' contents. The path
    is made absolute, so that workers elsewhere (a cluster sharing the storage) find it.

    Raises:
        DatasetError: a missing path, an unreadable file, an empty dataset, array files whose
            keys, dtypes or shapes are wrong or that lack the bytes they declare, a Parquet row
            group over the size limit (naming the file and key).
    """
    p = Path(os.path.abspath(path))
    if not p.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in ARRAY_SUFFIXES)
        if not files:
            raise DatasetError(f"{p}: a dataset directory must hold .npz or .safetensors files of token ids; "
                               "found none")
        return _open_arrays(p, files)
    check_regular_file(p, "--dataset")  # a pipe (<(...)) cannot be read again, at offsets, by each worker
    suffix = p.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return _open_arrays(p, [p])
    if suffix == ".parquet":
        return _open_parquet(p)
    return _open_text(p, "jsonl" if suffix == ".jsonl" else "lines")


def _open_text(p: Path, kind: str) -> Dataset:
    offsets, lines = [], []
    pos = 0
    with open(p, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not is_blank(line, pos):
                offsets.append(pos)
                lines.append(number)
            pos += len(line)
    if not offsets:
        raise DatasetError(f"{p}: holds no records (every line is blank)")
    offsets.append(pos)
    return Dataset(str(p), kind, len(lines), np.array(offsets, np.int64), np.array(lines, np.int64))


@contextlib.contextmanager
def dataset_errors() -> Iterator[None]:
    """The one array reader's `ArrayFileError`, raised as a `DatasetError` (the same message)."""
    try:
        yield
    except ArrayFileError as e:
        raise DatasetError(str(e)) from None


def array_header(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (shape, dtype) of an `.npz` / `.safetensors` file, from its headers (the one array
    reader, `bert_ref.io.arrays.read_header`: every array must hold the bytes it declares)."""
    with dataset_errors():
        return read_header(path)


def _open_arrays(p: Path, paths: Sequence[Path]) -> Dataset:
    files = []
    total = 0
    for f in paths:
        with dataset_errors():
            found = array_members(f)
            header = {k: (m.shape, m.dtype) for k, m in found.items()}
            shape = check_input_header(header, str(f))
        files.append(ArrayFile(str(f), int(shape[0]), int(shape[1]), tuple(header), tuple(found.values())))
        total += int(shape[0])
    if total == 0:
        raise DatasetError(f"{p}: holds no records (token_ids has 0 rows)")
    return Dataset(str(p), "arrays", total, files=tuple(files))


def _open_parquet(p: Path) -> Dataset:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{p}: reading Parquet needs pyarrow; install it with "
                          '`pip install "bert-ref[parquet]"`') from None
    try:
        meta = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises its own error types
        raise DatasetError(f"{p}: cannot read as .parquet ({' '.join(str(e).split())})") from None
    names = meta.schema_arrow.names
    if "text" not in names:
        raise DatasetError(f"{p}: a Parquet dataset needs a 'text' column (and optionally 'text_pair'); found {names}")
    from bert_ref.model import limits

    md = meta.metadata
    starts = [0]
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        decoded = max(int(group.total_byte_size), sum(int(group.column(c).total_uncompressed_size)
                                                       for c in range(group.num_columns)))
        limits.check("input_bytes", decoded, f"{p}: row group {g} decoded", " bytes")
        starts.append(starts[-1] + int(group.num_rows))
    n = md.num_rows
    if n == 0:
        raise DatasetError(f"{p}: holds no records (0 rows)")
    if starts[-1] != n:
        raise DatasetError(f"{p}: its row groups hold {starts[-1]} rows but the file says {n}: a corrupt file")
    return Dataset(str(p), "parquet", int(n), groups=tuple(starts))


# ----------------------------------------------------------------------------------------------
# Reading records


def _text_items(ds: Dataset, start: int, stop: int) -> list[tuple[int, str, Any, Any]]:
    """(record index, source, text, text_pair) for records [start, stop) of a text dataset."""
    if ds.kind == "parquet":
        return _parquet_items(ds, start, stop)
    offsets, lines = ds.offsets, ds.lines
    if offsets is None or lines is None:
        raise ValueError(f"{ds.path}: not indexed as a text dataset")
    begin, end = int(offsets[start - ds.first]), int(offsets[stop - ds.first])
    with open(ds.path, "rb") as f:
        f.seek(begin)
        data = f.read(end - begin)
    name = Path(ds.path).name
    items: list[tuple[int, str, Any, Any]] = []
    record = start
    for raw, at in split_lines(data, begin):
        if is_blank(raw, at):
            continue
        src = f"{name}:{int(lines[record - ds.first])}" if record < stop else name
        where = f"record {record} ({src})"
        try:
            line = decode_line(raw, where, at)
            text, pair = (line, None) if ds.kind == "lines" else parse_record(line, where)
        except ValueError as e:  # TextInputError, LimitError: they name the record and its line
            raise DatasetError(str(e)) from None
        items.append((record, src, text, pair))
        record += 1
    if record != stop:
        raise DatasetError(f"{ds.path}: changed since it was indexed (expected records [{start}, {stop}), "
                           f"read {record - start})")
    return items


def _parquet_items(ds: Dataset, start: int, stop: int) -> list[tuple[int, str, Any, Any]]:
    """Records [start, stop) of a Parquet dataset: only the row groups holding them, streamed."""
    import pyarrow.parquet as pq

    name = Path(ds.path).name
    items: list[tuple[int, str, Any, Any]] = []
    pf = pq.ParquetFile(ds.path)
    columns = ["text"] + (["text_pair"] if "text_pair" in pf.schema_arrow.names else [])
    groups = list(ds.groups)
    g = max(0, bisect.bisect_right(groups, start) - 1)
    while g < len(groups) - 1 and groups[g] < stop:
        row = groups[g]
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[g], columns=columns):
            a, b = max(start, row), min(stop, row + batch.num_rows)
            if a < b:
                part = batch.slice(a - row, b - a)
                texts = part.column(0).to_pylist()
                pairs = part.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
                items += [(a + i, f"{name} row {a + i}", t, q)
                          for i, (t, q) in enumerate(zip(texts, pairs, strict=True))]
            row += batch.num_rows
            if row >= stop:
                break
        g += 1
    if len(items) != stop - start:
        raise DatasetError(f"{ds.path}: changed since it was indexed (expected records [{start}, {stop}), "
                           f"read {len(items)})")
    return items


def _read_text_records(ds: Dataset, start: int, stop: int, tokenizer: Any, max_length: int, truncate: bool) -> Records:
    from bert_ref.text.tokenizer import pack

    index, ids, segs, lengths, sources = [], [], [], [], []
    for record, src, text, pair in _text_items(ds, start, stop):
        if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
            raise DatasetError(f"record {record} ({src}): text and text_pair must be strings")
        # Tokenize only up to the budget: round-robin truncation keeps at most `max_length` tokens
        # of any part, so a part cut at max_length + 1 packs as the whole one would (and the + 1
        # shows that it was too long).
        cap = max_length + 1
        parts = [tokenizer.encode(text, cap)] + ([tokenizer.encode(pair, cap)] if pair is not None else [])
        need = sum(len(q) for q in parts) + len(parts) + 1
        if need > max_length and not truncate:
            exact = all(len(q) < cap for q in parts)
            if not exact and len(text) + len(pair or "") <= EXACT_COUNT_CHARS:
                need = sum(len(tokenizer.encode(t)) for t in (text, pair) if t is not None) + len(parts) + 1
                exact = True
            count = f"{need} tokens" if exact else f"more than {max_length} tokens"
            raise DatasetError(f"record {record} ({src}): {count} after packing; the longest record "
                               f"allowed is {max_length} (the model's max_sequence_length or --sequence-length); "
                               "pass --truncate to cut text records")
        packed = pack([[q] for q in parts], sequence_length=min(need, max_length), cls_id=tokenizer.cls_token_id,
                      sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id)
        n = int(packed["padding_mask"][0].sum())
        index.append(record)
        ids.append(packed["token_ids"][0, :n].astype(np.int64))
        segs.append(packed["segment_ids"][0, :n].astype(np.int64))
        lengths.append(n)
        sources.append(src)
    return Records(np.array(index, np.int64), ids, segs, np.array(lengths, np.int64), sources)


def load_rows(f: ArrayFile, a: int, b: int) -> dict[str, np.ndarray]:
    """Rows `[a, b)` of each array of `f`, read by slices (`bert_ref.io.arrays.read_rows`)."""
    with dataset_errors():
        return read_rows(f.path, f.keys, a, b, {m.key: m for m in f.members} if f.members else None)


def _read_array_records(ds: Dataset, start: int, stop: int) -> Records:
    index, ids, segs, lengths, sources = [], [], [], [], []
    first = 0
    for f in ds.files:
        a, b = max(start, first), min(stop, first + f.rows)
        if a < b:
            rows = load_rows(f, a - first, b - first)
            tok = rows["token_ids"]
            seg = rows.get("segment_ids", np.zeros_like(tok))
            mask = rows.get("padding_mask")
            name = Path(f.path).name
            for j in range(b - a):
                record, row = a + j, a - first + j
                src = f"{name} row {row}"
                if mask is None:
                    n = tok.shape[1]
                else:
                    m = mask[j]
                    if m.dtype.kind != "b":
                        bad = np.flatnonzero((m != 0) & (m != 1))
                        if bad.size:
                            raise DatasetError(f"record {record} ({src}): padding_mask[{int(bad[0])}] = "
                                               f"{int(m[bad[0]])}; expected 0 or 1")
                        m = m != 0
                    n = int(m.sum())
                    if n == 0:
                        raise DatasetError(f"record {record} ({src}): padding_mask has no real token")
                    if not m[:n].all():
                        raise DatasetError(f"record {record} ({src}): padding_mask is not right-padded "
                                           f"(ones, then zeros): position {int(np.flatnonzero(~m)[0])} is padding "
                                           "before a real token")
                index.append(record)
                ids.append(tok[j, :n])  # in the file's dtype until `read` checks the range (uint64 2**64-1
                segs.append(seg[j, :n])  # would read as -1 in int64)
                lengths.append(n)
                sources.append(src)
        first += f.rows
    return Records(np.array(index, np.int64), ids, segs, np.array(lengths, np.int64), sources)


# ----------------------------------------------------------------------------------------------
# Batching


def length_batches(lengths: Sequence[int] | np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group records into batches of similar length: positions into `lengths`, sorted by length
    (stable), cut so that `len(batch) * max length in batch <= batch_tokens` (a record longer than
    `batch_tokens` is a batch of its own).

    >>> [b.tolist() for b in length_batches([5, 2, 9, 3], batch_tokens=10)]
    [[1, 3], [0], [2]]
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    sizes = np.asarray(lengths)
    order = np.argsort(sizes, kind="stable")
    batches: list[np.ndarray] = []
    current: list[int] = []
    for i in order:
        n = int(sizes[i])
        if current and (len(current) + 1) * n > batch_tokens:
            batches.append(np.array(current, np.int64))
            current = []
        current.append(int(i))
    if current:
        batches.append(np.array(current, np.int64))
    return batches


def pad_batch(records: Records, rows: np.ndarray, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Inputs [b, L] for records `rows` (positions into `records`), L = their longest length."""
    width = int(records.lengths[rows].max())
    b = len(rows)
    token_ids = np.full((b, width), pad_id, np.int64)  # [b, L]
    segment_ids = np.zeros((b, width), np.int64)  # [b, L]
    padding_mask = np.zeros((b, width), bool)  # [b, L]
    for j, r in enumerate(rows):
        n = int(records.lengths[r])
        token_ids[j, :n] = records.token_ids[r]
        segment_ids[j, :n] = records.segment_ids[r]
        padding_mask[j, :n] = True
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
