"""A port's outputs on a dataset: what `compare --dataset` reads, a shard at a time.

A candidate is a directory of `.npz` / `.safetensors` files (read in name order), or a list of
files. Each file holds records on the first axis of its arrays:

* outputs: `sequence_output` [n, S, H] (S at least each record's length; positions past it are
  not compared), `pooled_output` [n, H], `hidden_states.{i}` [n, S, H]; or Hugging Face / ONNX
  names: `last_hidden_state`, `pooler_output`, and `hidden_states` stacked [L+1, n, S, H] (records
  on axis 1); or, with `offsets` [n+1], the ragged layout of our own shards ([T, H], record j's
  positions at rows `offsets[j]:offsets[j+1]`), so a `bert-ref run` directory is a candidate too;
* optionally `record_index` [n]: which record each row is. Without it, the files hold consecutive
  records in file order, from record 0;
* optionally the inputs the port ran on, under our or Hugging Face's names (`token_ids` /
  `input_ids`, `segment_ids` / `token_type_ids`, `padding_mask` / `attention_mask`) [n, S]: they
  are checked against the packed inputs record by record, and a record whose ids differ is named
  (a port fed other text, another tokenizer, or rows in another order). `position_ids` and our
  shards' `length` and `batch` are ignored.

Outputs must be floating point (float16, bfloat16, float32, float64). The records a candidate holds
may be a subset of the dataset's: only those are compared, and the report says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io.arrays import Member, array_members, read_member_rows
from bert_ref.oracle.keys import canonical_key, parse_key, try_parse_key
from bert_ref.scale.dataset import DatasetError, dataset_errors

#: Hugging Face / ONNX input names, read as ours.
INPUT_NAMES = {"token_ids": "token_ids", "input_ids": "token_ids", "segment_ids": "segment_ids",
               "token_type_ids": "segment_ids", "padding_mask": "padding_mask", "attention_mask": "padding_mask"}
IGNORED = ("position_ids", "length", "batch")
#: The outputs a dataset run computes (`bert_ref.scale.options.OUTPUT_CHOICES`), by key name.
DATASET_OUTPUTS = ("sequence_output", "pooled_output", "hidden_states")
_SUFFIXES = (".npz", ".safetensors")


def dataset_key(name: str) -> str | None:
    """Our key for an array name of a candidate (ours or a Hugging Face / ONNX alias, by the one key
    grammar), when it is an output a dataset run computes; else None."""
    key = canonical_key(name)
    parsed = try_parse_key(key) if key is not None else None
    return key if parsed is not None and not parsed.trace and parsed.name in DATASET_OUTPUTS else None


def is_sequence_key(key: str) -> bool:
    """[records, positions, hidden] outputs: `sequence_output`, `hidden_states.{i}`."""
    return parse_key(key).name in ("sequence_output", "hidden_states")


def key_order(key: str) -> tuple[float, float]:
    """Computation order: hidden_states.0 .. L, then sequence_output, then pooled_output."""
    return parse_key(key).placement[0]


@dataclasses.dataclass(frozen=True)
class CandidateFile:
    """One candidate file: its rows, and where each of our keys is in it."""

    path: str
    rows: int
    outputs: tuple[tuple[str, Member], ...]
    inputs: tuple[tuple[str, Member], ...]
    offsets: Member | None = None

    def output(self, key: str) -> Member:
        return dict(self.outputs)[key]


@dataclasses.dataclass(frozen=True)
class CandidateIndex:
    """Where each record of the dataset is in the candidate's files.

    Attributes:
        files: the files, in order.
        keys: the outputs every file holds, in computation order (our names).
        inputs: the inputs every file holds (our names; empty: no ids to check).
        rec_file, rec_row: per record of the dataset, its file (-1: not in the candidate) and row.
        notes: what was translated (aliases, stacked arrays, ignored inputs).
        precision: the lowest precision its outputs are stored in.
    """

    files: tuple[CandidateFile, ...]
    keys: tuple[str, ...]
    inputs: tuple[str, ...]
    rec_file: np.ndarray
    rec_row: np.ndarray
    notes: tuple[str, ...]
    precision: str

    @property
    def present(self) -> np.ndarray:
        return self.rec_file >= 0

    def part(self, start: int, stop: int) -> CandidateIndex:
        """Only what records `[start, stop)` need (what a worker gets): `rec_file` / `rec_row` of
        those records (indexed from `start`)."""
        return dataclasses.replace(self, rec_file=self.rec_file[start:stop].copy(),
                                   rec_row=self.rec_row[start:stop].copy())


def _layer_view(m: Member, i: int, key: str) -> Member:
    """Layer `i` of a stacked [L+1, n, ...] array, as a [n, ...] member."""
    layer = math.prod(m.shape[1:]) * m.dtype.itemsize
    if m.fortran:
        raise DatasetError(f"{key}: a stacked hidden_states in Fortran order cannot be read by rows; store it "
                           "C-ordered or as hidden_states.{i}")
    if m.offset is not None:
        return dataclasses.replace(m, key=f"{m.key}[{i}]", shape=m.shape[1:], offset=m.offset + i * layer)
    return dataclasses.replace(m, key=f"{m.key}[{i}]", shape=m.shape[1:], header=m.header + i * layer)


def members(path: Path) -> dict[str, Member]:
    with dataset_errors():
        return array_members(path)


def read_rows(path: Path, member: Member, a: int, b: int) -> np.ndarray:
    with dataset_errors():
        return read_member_rows(path, member, a, b)


def _read_file(f: Path, num_layers: int, hidden: int) -> tuple[CandidateFile, Member | None, list[str]]:
    from bert_ref.oracle.candidates import check_input_dtype, check_output_dtype

    found = members(f)
    notes: list[str] = []
    outputs: dict[str, Member] = {}
    inputs: dict[str, Member] = {}
    index = found.get("record_index")
    offsets = found.get("offsets")
    ignored = []

    def put(table: dict[str, Member], key: str, m: Member, name: str) -> None:
        """`m` (array `name`) as `key` of `outputs` or `inputs`, after the one dtype rule of each."""
        if key in table:
            raise DatasetError(f"{f}: {key} is given twice (as {name!r} and under another name); keep one")
        with dataset_errors():
            if table is outputs:
                check_output_dtype(m.dtype, str(f), name)
            else:
                check_input_dtype(m.dtype, str(f), key)
        table[key] = m

    for name, m in found.items():
        if name in ("record_index", "offsets"):
            continue
        if name in INPUT_NAMES:
            put(inputs, INPUT_NAMES[name], m, name)
        elif name in IGNORED:
            ignored.append(name)
        elif name == "hidden_states":
            want = 3 if offsets is not None else 4
            if len(m.shape) != want:
                raise DatasetError(f"{f}: hidden_states has shape {m.shape}; stacked it is [L+1, records, sequence, "
                                   "hidden] (records on axis 1)" + (" or, with offsets, [L+1, positions, hidden]"
                                                                    if offsets is not None else ""))
            if m.shape[0] not in (num_layers + 1,):
                raise DatasetError(f"{f}: hidden_states has {m.shape[0]} entries on its first axis; the model has "
                                   f"{num_layers} layers, so a stacked hidden_states holds the embeddings and each "
                                   f"layer's output: {num_layers + 1}")
            for i in range(m.shape[0]):
                put(outputs, f"hidden_states.{i}", _layer_view(m, i, name), name)
            notes.append(f"hidden_states {m.shape} split into hidden_states.0 .. hidden_states.{m.shape[0] - 1}")
        elif dataset_key(name) is not None:
            key = dataset_key(name) or name
            put(outputs, key, m, name)
            if key != name:
                notes.append(f"{name} read as {key}")
        else:
            from bert_ref.oracle.keys import unknown_key_message

            raise DatasetError(f"{f}: {unknown_key_message(name)} A dataset candidate holds sequence_output, "
                               "pooled_output and hidden_states (attentions and trace points are compared with "
                               "--input)")
    if ignored:
        notes.append(f"ignored {', '.join(sorted(set(ignored)))}")
    if not outputs:
        raise DatasetError(f"{f}: holds no outputs (sequence_output / last_hidden_state, pooled_output / "
                           "pooler_output, hidden_states)")
    # Rows: every output and input has the file's records on its first axis.
    n = None
    if offsets is not None:
        if len(offsets.shape) != 1 or offsets.shape[0] < 1 or offsets.dtype.kind not in "iu":
            raise DatasetError(f"{f}: offsets has shape {offsets.shape} and dtype {offsets.dtype}; expected [n+1] "
                               "integers")
        n = offsets.shape[0] - 1
    for key, m in outputs.items():
        seq = is_sequence_key(key)
        ragged = seq and offsets is not None
        want = 2 if ragged or not seq else 3
        if len(m.shape) != want:
            layout = ("[positions, hidden] (ragged, with offsets)" if ragged else
                      "[records, sequence, hidden]" if seq else "[records, hidden]")
            raise DatasetError(f"{f}: {key} has shape {m.shape}; expected {layout}")
        if m.shape[-1] != hidden:
            raise DatasetError(f"{f}: {key} has {m.shape[-1]} channels on its last axis; the model's hidden_dim is "
                               f"{hidden}")
        if parse_key(key).layers_needed > num_layers:
            raise DatasetError(f"{f}: holds {key} but the model has {num_layers} layers (hidden_states.0 .. "
                               f"hidden_states.{num_layers})")
        if not ragged:
            if n is None:
                n = m.shape[0]
            elif m.shape[0] != n:
                raise DatasetError(f"{f}: {key} has {m.shape[0]} records on its first axis, other arrays {n}")
    for key, m in inputs.items():
        if len(m.shape) != 2 or m.shape[0] != n:
            raise DatasetError(f"{f}: {key} has shape {m.shape}; expected [{n}, sequence] (one row per record)")
    if index is not None and (index.shape != (n,) or index.dtype.kind not in "iu"):
        raise DatasetError(f"{f}: record_index has shape {index.shape} and dtype {index.dtype}; expected [{n}] "
                           "integers")
    assert n is not None
    cf = CandidateFile(str(f), int(n), tuple(sorted(outputs.items(), key=lambda kv: key_order(kv[0]))),
                       tuple(sorted(inputs.items())), offsets)
    return cf, index, notes


def index_candidate(paths: Sequence[str | os.PathLike], num_records: int, num_layers: int,
                    hidden: int) -> CandidateIndex:
    """Index a candidate's files (see the module docstring) from their headers and record indices.

    Raises:
        DatasetError: a missing file, an unknown key, a dtype or shape that cannot be right, a
            record index outside the dataset or given twice, files holding different outputs.
    """
    from bert_ref.oracle.run import detect_precision

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _SUFFIXES)
            if not found:
                raise DatasetError(f"{p}: holds no .npz or .safetensors files of outputs")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or directory")
    rec_file = np.full(num_records, -1, np.int32)
    rec_row = np.full(num_records, -1, np.int64)
    keys: tuple[str, ...] | None = None
    inputs: tuple[str, ...] | None = None
    notes: list[str] = []
    read: list[CandidateFile] = []
    next_record = 0
    dtypes = {}
    for i, f in enumerate(files):
        cf, index_member, file_notes = _read_file(f, num_layers, hidden)
        for note in file_notes:
            if note not in notes:
                notes.append(note)
        outs = tuple(k for k, _ in cf.outputs)
        dtypes.update({k: m.dtype for k, m in cf.outputs})
        if keys is None:
            keys, inputs = outs, tuple(k for k, _ in cf.inputs)
        elif outs != keys:
            raise DatasetError(f"{f}: holds {list(outs)}, but {files[0]} holds {list(keys)}; every candidate file must "
                               "hold the same outputs")
        else:
            inputs = tuple(k for k in (inputs or ()) if k in dict(cf.inputs))
        n = cf.rows
        if index_member is not None:
            index = read_rows(f, index_member, 0, n).astype(np.int64).reshape(-1)
        else:
            index = np.arange(next_record, next_record + n, dtype=np.int64)
        bad = np.flatnonzero((index < 0) | (index >= num_records))
        if bad.size:
            j = int(bad[0])
            raise DatasetError(f"{f}: row {j} is record {int(index[j])}, outside the dataset's [0, {num_records})"
                               + ("" if index_member is not None else
                                  f" (without record_index, files hold consecutive records: the files before it "
                                  f"hold {next_record})"))
        seen = rec_file[index] >= 0
        if seen.any():
            j = int(np.flatnonzero(seen)[0])
            raise DatasetError(f"{f}: row {j} is record {int(index[j])}, which {files[rec_file[index[j]]]} also holds")
        uniq, counts = np.unique(index, return_counts=True)
        if (counts > 1).any():
            raise DatasetError(f"{f}: record {int(uniq[np.argmax(counts > 1)])} appears twice in its record_index")
        rec_file[index] = i
        rec_row[index] = np.arange(n)
        next_record = int(index.max()) + 1 if n else next_record
        read.append(cf)
    precision = detect_precision({k: np.empty(0, d) for k, d in dtypes.items()})
    return CandidateIndex(tuple(read), keys or (), inputs or (), rec_file, rec_row, tuple(notes), precision)


def _runs(rows: np.ndarray, gap: int = 16) -> list[tuple[int, int]]:
    """Sorted rows grouped into ranges [a, b) that skip at most `gap` rows at a time."""
    rows = np.unique(rows)
    out: list[tuple[int, int]] = []
    start = prev = int(rows[0])
    for r in rows[1:]:
        r = int(r)
        if r - prev > gap:
            out.append((start, prev + 1))
            start = r
        prev = r
    out.append((start, prev + 1))
    return out


def read_records(part: CandidateIndex, positions: np.ndarray) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The candidate's outputs and inputs for the records at `positions` (indices into `part`'s
    records, all present): per key, one array per record ([S, H] or [L_j, H] for sequence outputs,
    [H] for pooled, [S] for inputs)."""
    outs: dict[str, list[Any]] = {k: [None] * len(positions) for k in part.keys}
    ins: dict[str, list[Any]] = {k: [None] * len(positions) for k in part.inputs}
    files = part.rec_file[positions]
    for fi in np.unique(files):
        cf = part.files[int(fi)]
        mine = np.flatnonzero(files == fi)
        rows = part.rec_row[positions[mine]]
        path = Path(cf.path)
        for a, b in _runs(rows):
            sel = [(int(p), int(r)) for p, r in zip(mine, rows, strict=True) if a <= r < b]
            offsets = None
            if cf.offsets is not None:
                offsets = read_rows(path, cf.offsets, a, b + 1).astype(np.int64)
            for key, m in cf.outputs:
                ragged = offsets is not None and is_sequence_key(key)
                if ragged:
                    assert offsets is not None
                    lo, hi = int(offsets[0]), int(offsets[-1])
                    if not 0 <= lo <= hi <= m.shape[0]:
                        raise DatasetError(f"{path}: offsets[{a}..{b}] point outside {key}'s {m.shape[0]} rows")
                    block = read_rows(path, m, lo, hi)
                    for p, r in sel:
                        outs[key][p] = block[int(offsets[r - a]) - lo:int(offsets[r - a + 1]) - lo]
                else:
                    block = read_rows(path, m, a, b)
                    for p, r in sel:
                        outs[key][p] = block[r - a]
            for key, m in cf.inputs:
                if key not in ins:
                    continue
                block = read_rows(path, m, a, b)
                for p, r in sel:
                    ins[key][p] = block[r - a]
    return outs, ins
