"""Reading and writing the array files the `bert-ref` command exchanges: `.npz`, `.safetensors`, `.json`.

Two kinds of file:

* **inputs** — keys `token_ids` (required), `segment_ids`, `padding_mask` (optional), each a
  [batch, sequence] array of integers (`padding_mask` may also be bool);
* **outputs** — keys `sequence_output` [B, S, H], `pooled_output` [B, H], `hidden_states.{i}`
  [B, S, H], `attention_probs.{i}` [B, heads, S, S], and optionally trace points by their names
  (`embeddings/sum`, `transformer_layer_0/query`, ...; see `bert_ref.encoder.TRACE_LAYER`).

What ports write is accepted too (`read_candidate` reports each translation as a note):

* Hugging Face / ONNX output names: `last_hidden_state` (= `sequence_output`), `pooler_output`
  (= `pooled_output`), `hidden_states` stacked as [L + 1, B, S, H] and `attentions` stacked as
  [L, B, heads, S, S] (split into `hidden_states.{i}` / `attention_probs.{i}`), and
  `hidden_states.{i}` / `attentions.{i}` one by one;
* input arrays stored next to the outputs (`input_ids`, `token_type_ids`, `attention_mask`,
  `position_ids`, `token_ids`, `segment_ids`, `padding_mask`) are ignored;
* a `.npy` file holds one output: the one its file name says (`last_hidden_state.npy`,
  `pooled_output.npy`, `hidden_states.npy`, ...), else `sequence_output` when 3-D and
  `pooled_output` when 2-D;
* inputs files may use Hugging Face's input names `input_ids`, `token_type_ids`, `attention_mask`.

bfloat16 arrays are read from `.safetensors` (dtype `BF16`, as torch and bert-ref write them) and
from `.npz` (NumPy stores ml_dtypes' bfloat16 as the 2-byte void type `V2`, which is read back as
bfloat16). Both need the `ml_dtypes` package; without it the error names the file, the key and
the install command.

A `.json` file is one object mapping each key to a nested list of numbers:

    {"token_ids": [[101, 7592, 102]], "padding_mask": [[1, 1, 1]]}

Every problem with a file — missing, truncated, not the format its suffix says, a wrong key, dtype
or shape — raises `ArrayFileError` (a `ValueError`) with a one-line message naming the file, the key
and what would be right.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io import atomic
from bert_ref.io.errors import check_regular_file, file_error, writer_error
from bert_ref.model import limits

SUFFIXES = (".npz", ".safetensors", ".json")
OUTPUT_SUFFIXES = SUFFIXES + (".npy",)
BF16_INSTALL = 'pip install ml_dtypes  (or pip install "bert-ref[bf16]")'

class ArrayFileError(ValueError):
    """A file of arrays is missing, unreadable, or does not hold what it must."""


def _suffix(path: Path, allowed: tuple[str, ...] = SUFFIXES) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ArrayFileError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; use one of "
                             f"{', '.join(allowed)}")
    return suffix


def _bfloat16(path: Path, key: str) -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise ArrayFileError(f"{path}: key {key!r} holds bfloat16 values, which need the ml_dtypes package: "
                             f"{BF16_INSTALL}") from None
    return np.dtype(ml_dtypes.bfloat16)


def _safetensors_bf16_key(path: Path) -> str | None:
    """The first key of a `.safetensors` file whose dtype is BF16 (read from its JSON header), or None."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                return None
            header = limits.loads(f.read(n), f"{path}: safetensors header")
    except (OSError, ValueError):  # incl. limits.LimitError: the reader below reports the file
        return None
    return next((k for k, v in header.items() if isinstance(v, dict) and v.get("dtype") == "BF16"), None)


def _npz_arrays(path: Path, data: Any) -> dict[str, np.ndarray]:
    out = {}
    for key in data.files:
        arr = data[key]
        if arr.dtype == np.dtype("V2"):  # how np.savez stores ml_dtypes.bfloat16
            arr = arr.view(_bfloat16(path, key))
        out[key] = arr
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


#: The largest expansion of deflate (RFC 1951: 1032 output bytes per input byte, at best).
DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Member:
    """One array of an `.npz` / `.safetensors` file: its key, shape and dtype, and where its bytes
    are, so that rows can be read without the rest (`read_member_rows`).

    Attributes:
        offset: the file offset of the array's first byte when it can be read in place (a
            safetensors array, an uncompressed `.npz` member), else None (a compressed member,
            streamed).
        zip_name: the `.npz` member's name (None for safetensors).
        header: bytes of the `.npy` header before the data inside the member (`.npz` only).
        fortran: stored in Fortran order (read whole, not by rows).
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int | None
    zip_name: str | None = None
    header: int = 0
    fortran: bool = False

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=object)) * self.dtype.itemsize if self.shape else self.dtype.itemsize


def _npz_members(path: Path, *, total_limit: bool) -> dict[str, Member]:
    """key -> `Member` of a `.npz`, from each member's `.npy` header, before anything is inflated.
    Checked: it is a zip of `.npy` members, at most BERT_REF_MAX_ARCHIVE_ENTRIES of them, none
    holding pickled objects (dtype object: never loaded), each holding exactly the bytes its header
    declares (a forged header declaring 10^9 rows, a deflate bomb, a member cut short or past the
    end of the file); with `total_limit`, the declared arrays total at most BERT_REF_MAX_INPUT_BYTES."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ArrayFileError(f"{path}: not a .npz archive: it is a single .npy array (save with numpy.savez "
                             "to name the arrays token_ids, segment_ids, padding_mask)")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ArrayFileError(f"{path}: cannot read as .npz (not a zip archive: truncated, or another format)") from None
    size = path.stat().st_size
    total = 0
    out: dict[str, Member] = {}
    with zf, open(path, "rb") as raw:
        infos = zf.infolist()
        limits.check("archive_entries", len(infos), f"{path}: the number of arrays")
        for info in infos:
            key = info.filename.removesuffix(".npy")
            if not 0 <= info.header_offset < size:
                raise ArrayFileError(f"{path}: key {key!r}: the zip directory places it at byte "
                                     f"{info.header_offset:,}, outside the file's {size:,} bytes (truncated or "
                                     "corrupt)")
            with zf.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
                    shape, fortran, dtype = read_header(member)
                except (ValueError, EOFError, SyntaxError) as e:
                    raise ArrayFileError(f"{path}: key {key!r} is not a .npy array ({_one_line(e)})") from None
                header_bytes = member.tell()
            if dtype.hasobject:
                raise ArrayFileError(f"{path}: key {key!r} holds pickled Python objects (dtype {dtype}), which are "
                                     "never loaded (unpickling can run code): store arrays of numbers")
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if info.file_size > header_bytes + declared:
                raise ArrayFileError(f"{path}: key {key!r} inflates to {info.file_size:,} bytes but its header "
                                     f"declares {declared:,} bytes of {dtype} {shape}; the file is corrupt")
            total += declared
            if total_limit:
                limits.check("input_bytes", total, f"{path}: the declared size of its arrays (up to key {key!r})",
                             " bytes")
            if info.file_size < header_bytes + declared:
                raise ArrayFileError(f"{path}: key {key!r} declares shape {tuple(shape)} of {dtype} ({declared:,} "
                                     f"bytes), but the member holds {max(0, info.file_size - header_bytes):,} bytes "
                                     "of data: a corrupt or forged file")
            offset = None
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                local = raw.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise ArrayFileError(f"{path}: key {key!r}: corrupt zip member header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + 30 + name_len + extra_len + header_bytes
                if offset + declared > size:
                    raise ArrayFileError(f"{path}: key {key!r} declares {declared:,} bytes of data, but the file ends "
                                         f"{offset + declared - size:,} bytes before them (truncated)")
            elif info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > info.compress_size * \
                    DEFLATE_MAX_RATIO + 1024:
                raise ArrayFileError(f"{path}: key {key!r} declares {info.file_size:,} bytes compressed into "
                                     f"{info.compress_size:,}, more than deflate can expand: a forged file")
            out[key] = Member(key, tuple(int(n) for n in shape),
                              _bfloat16(path, key) if dtype == np.dtype("V2") else dtype, offset, info.filename,
                              header_bytes, bool(fortran))
    return out


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ArrayFileError(f"{path}: no such file")
    if not path.is_file():
        check_regular_file(path, "")  # says what it is (a directory, a pipe) and what to give instead


def read_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (shape, dtype) of every array in a `.npz` or `.safetensors` file, read from its headers
    alone (no array is loaded; bfloat16 is reported as ml_dtypes' bfloat16). The checks of
    `read_arrays` apply, except the total size limit: a dataset's files are read a slice at a time
    (`read_rows`)."""
    return {k: (m.shape, m.dtype) for k, m in array_members(path).items()}


def array_members(path: str | os.PathLike) -> dict[str, Member]:
    """key -> `Member` of every array in a `.npz` or `.safetensors` file, from its headers alone, with
    the checks of `read_header` (every array holds the bytes it declares)."""
    path = Path(path)
    suffix = _suffix(path, (".npz", ".safetensors"))
    _check_file(path)
    try:
        if suffix == ".npz":
            return _npz_members(path, total_limit=False)
        from bert_ref.io.checkpoints.safetensors_io import numpy_dtype
        from bert_ref.io.checkpoints.safetensors_io import read_header as safetensors_header

        header, _, start = safetensors_header(path)  # every array lies inside the file
        return {k: Member(k, tuple(v["shape"]), numpy_dtype(v["dtype"], f"{path}: key {k!r}"),
                          start + v["data_offsets"][0]) for k, v in header.items()}
    except ArrayFileError:
        raise
    except limits.LimitError as e:
        raise ArrayFileError(str(e)) from None
    except OSError as e:
        raise file_error(e, path, "read") from None
    except (ValueError, EOFError, zipfile.BadZipFile, struct.error) as e:
        raise ArrayFileError(f"{path}: cannot read as {suffix} ({_one_line(e)})") from None


def read_member_rows(path: str | os.PathLike, member: Member, start: int, stop: int) -> np.ndarray:
    """Rows `[start, stop)` of `member`'s first axis, a fresh array, reading no other rows: in
    place at the array's offset (safetensors, an uncompressed `.npz` member, as `np.savez` writes),
    or streamed through a compressed member up to row `stop`, one chunk at a time."""
    path = Path(path)
    rows = member.shape[0] if member.shape else 1
    if not 0 <= start <= stop <= rows:
        raise ArrayFileError(f"{path}: key {member.key!r}: rows [{start}, {stop}) are outside [0, {rows}]")
    shape = (stop - start, *member.shape[1:])
    count = (stop - start) * member.row_bytes
    try:
        if member.fortran:
            with zipfile.ZipFile(path) as z, z.open(member.zip_name or "") as f:
                whole = np.lib.format.read_array(f, allow_pickle=False)
            return np.ascontiguousarray(whole[start:stop]).view(member.dtype)
        if member.offset is not None:
            data = bytearray(count)
            view = memoryview(data)
            with open(path, "rb", buffering=0) as f:
                f.seek(member.offset + start * member.row_bytes)
                got = 0
                while got < count:
                    n = f.readinto(view[got:])
                    if not n:
                        raise ArrayFileError(f"{path}: key {member.key!r}: the file ends before row {stop} "
                                             "(truncated)")
                    got += n
            return np.frombuffer(data, member.dtype).reshape(shape)
        with zipfile.ZipFile(path) as z, z.open(member.zip_name or "") as f:
            skip = member.header + start * member.row_bytes
            while skip:
                n = len(f.read(min(skip, _CHUNK)))
                if n == 0:
                    raise ArrayFileError(f"{path}: key {member.key!r}: the member ends before row {start} (truncated)")
                skip -= n
            chunk = f.read(count)
        if len(chunk) != count:
            raise ArrayFileError(f"{path}: key {member.key!r}: the member ends before row {stop} (truncated)")
        return np.frombuffer(chunk, member.dtype).reshape(shape).copy()
    except ArrayFileError:
        raise
    except OSError as e:
        raise file_error(e, path, "read") from None
    except (ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArrayFileError(f"{path}: cannot read rows {start}..{stop} of key {member.key!r} "
                             f"({_one_line(e)})") from None


def read_rows(path: str | os.PathLike, keys: Sequence[str], start: int, stop: int,
              members: Mapping[str, Member] | None = None) -> dict[str, np.ndarray]:
    """Rows `[start, stop)` (the first axis) of arrays `keys` of a `.npz` or `.safetensors` file
    (`read_header` has checked it), reading only those rows (`read_member_rows`); bfloat16 as
    ml_dtypes' bfloat16. `members`: the file's `array_members`, when already read."""
    found = array_members(path) if members is None else members
    missing = [k for k in keys if k not in found]
    if missing:
        raise ArrayFileError(f"{path}: no key {missing[0]!r}")
    return {k: read_member_rows(path, found[k], start, stop) for k in keys}


def read_arrays(path: str | os.PathLike, suffixes: tuple[str, ...] = SUFFIXES) -> dict[str, np.ndarray]:
    """All arrays in a `.npz`, `.safetensors` or `.json` file, by key (file order).

    With ".npy" among `suffixes`, a `.npy` file is read as one array under the key "" (empty)."""
    path = Path(path)
    suffix = _suffix(path, suffixes)
    _check_file(path)
    try:
        if suffix == ".npz":
            _npz_members(path, total_limit=True)  # checked before anything is inflated
            with np.load(path, allow_pickle=False) as data:
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise ArrayFileError(f"{path}: not a .npz archive (it holds a single .npy array)")
                return _npz_arrays(path, data)
        if suffix == ".npy":
            limits.check("input_bytes", path.stat().st_size, f"{path}: the file", " bytes")
            arr = np.load(path, allow_pickle=False)
            if not isinstance(arr, np.ndarray):
                raise ArrayFileError(f"{path}: not a .npy array")
            if arr.dtype == np.dtype("V2"):
                arr = arr.view(_bfloat16(path, path.stem))
            return {"": arr}
        if suffix == ".safetensors":
            bf16_key = _safetensors_bf16_key(path)
            if bf16_key is not None:
                _bfloat16(path, bf16_key)  # a clear error when ml_dtypes is missing
            from safetensors.numpy import load_file

            limits.check("input_bytes", path.stat().st_size, f"{path}: the file", " bytes")
            return dict(load_file(str(path)))
        obj = limits.load_file(path)
    except ArrayFileError:
        raise
    except limits.LimitError as e:
        raise ArrayFileError(str(e)) from None
    except MemoryError:
        raise ArrayFileError(f"{path}: out of memory while reading it; its arrays are larger than this machine "
                             "can hold") from None
    except OSError as e:
        raise file_error(e, path, "read") from None
    except (ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, KeyError) as e:
        raise ArrayFileError(f"{path}: cannot read as {suffix} ({_one_line(e)})") from None
    except Exception as e:  # the safetensors reader raises its own (non-ValueError) error type
        if type(e).__name__ == "SafetensorError":
            raise ArrayFileError(f"{path}: cannot read as {suffix} ({_one_line(e)})") from None
        raise
    if not isinstance(obj, dict):
        raise ArrayFileError(f"{path}: expected a JSON object mapping keys to nested lists, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        try:
            arr = np.asarray(value)
        except ValueError as e:
            raise ArrayFileError(f"{path}: key {key!r} is not a rectangular nested list ({_one_line(e)})") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise ArrayFileError(f"{path}: key {key!r} must be a rectangular nested list of numbers, "
                                 f"got {arr.dtype} values")
        out[key] = arr
    return out


def _jsonable(arr: np.ndarray) -> Any:
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        # float64 repr round-trips every float16/bfloat16/float32/float64 value exactly.
        return arr.astype(np.float64).tolist()
    return arr.tolist()


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` to `path`, format from the suffix. JSON floats are written so that reading them
    back and casting to the original dtype gives the same bits; non-finite values are written as
    `NaN` / `Infinity` (Python's and JavaScript's spelling)."""
    path = Path(path)
    suffix = _suffix(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    if path.parent and not path.parent.exists():
        raise ArrayFileError(f"{path}: directory {path.parent} does not exist")
    # Written through the one atomic writer: a failure (a full disk) never leaves a truncated file
    # that looks like output.
    try:
        if suffix == ".npz":
            with atomic.open_atomic(path) as f:
                # numpy's stub types **kwds as if they could fill `allow_pickle`; they are arrays.
                np.savez(f, **arrays)  # type: ignore[arg-type]
        elif suffix == ".safetensors":
            from safetensors.numpy import save_file

            with atomic.atomic_path(path) as tmp:
                try:
                    save_file(arrays, str(tmp))
                except Exception as e:  # the safetensors package raises its own error type
                    if type(e).__name__ == "SafetensorError":
                        raise writer_error(e, path) from None
                    raise
        else:
            with atomic.open_atomic(path, "w", encoding="utf-8") as f:
                json.dump({k: _jsonable(v) for k, v in arrays.items()}, f)
                f.write("\n")
    except OSError as e:
        said = str(e) if str(e).startswith(f"{path}: ") else str(file_error(e, path, "write"))
        raise ArrayFileError(f"{said}; nothing was written") from None
    return path

