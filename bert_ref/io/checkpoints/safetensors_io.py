"""Read safetensors files as memory-mapped NumPy views; write them with the `safetensors` package.

The format (https://github.com/huggingface/safetensors) is: an 8-byte little-endian unsigned header
length `N`, `N` bytes of UTF-8 JSON, then one byte buffer. The JSON maps each tensor name to
`{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the start of the buffer)
and may hold a `"__metadata__"` map of strings. All data are little-endian and C-ordered.

`read_safetensors` parses and checks the header itself, memory-maps the file once (read-only) and
returns NumPy *views* into that map: loading costs no copy of the weights; pages are read from disk
when the math first touches them. A truncated or corrupt file gives a `SafetensorsError` naming the
file and, where there is one, the tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io import atomic
from bert_ref.io.errors import writer_error
from bert_ref.model import limits

# The `safetensors` package refuses headers larger than this; so do we (a corrupt length field
# would otherwise make us read gigabytes of "JSON").
MAX_HEADER_BYTES = 100_000_000

_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
# Need ml_dtypes (the `bf16` extra).
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_ITEMSIZE = {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


class SafetensorsError(ValueError):
    """A safetensors file is truncated, corrupt, or holds something we cannot represent."""


def numpy_dtype(code: str, where: str) -> np.dtype:
    if code in _DTYPES:
        return np.dtype(_DTYPES[code])
    if code in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            raise ImportError(
                f"{where}: dtype {code} needs the ml_dtypes package; "
                'install it with `pip install "bert-ref[bf16]"`'
            ) from None
        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[code]))
    known = sorted(_DTYPES) + sorted(_ML_DTYPES)
    raise SafetensorsError(f"{where}: unknown dtype {code!r}; known dtypes: {known}")


def _itemsize(code: str) -> int:
    if code in _DTYPES:
        return np.dtype(_DTYPES[code]).itemsize
    return _ITEMSIZE[code]


def code_for(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    for code, name in _DTYPES.items():
        if np.dtype(name) == dtype:
            return code
    for code, name in _ML_DTYPES.items():
        if dtype.name == name:
            return code
    raise SafetensorsError(f"dtype {dtype} cannot be stored in safetensors")


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Parse and validate the header of `path`.

    Returns `(tensors, metadata, data_start)`: `tensors` maps name -> `{"dtype", "shape",
    "data_offsets"}` (validated), `metadata` is the `__metadata__` map (or `{}`), and `data_start`
    is the file offset of the byte buffer. Raises `SafetensorsError` naming the file (and tensor)
    when the header is truncated, not JSON, or inconsistent with the file: every tensor must lie
    inside the buffer, have a known dtype, `prod(shape) * itemsize == end - begin`, and the tensors
    must cover the buffer exactly, without gaps or overlaps.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = _header_length(f.read(8), size, str(path))
        raw = f.read(n)
    return _parse_header_json(raw, size, str(path))


def parse_header(data: Any, where: str) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """`read_header` for a whole file already in memory (`data`: bytes, or a 1-D uint8 array);
    `where` names it in errors."""
    view = memoryview(data).cast("B")
    n = _header_length(view[:8].tobytes(), len(view), where)
    return _parse_header_json(view[8:8 + n].tobytes(), len(view), where)


def _header_length(first: bytes, size: int, where: str) -> int:
    """The header length the first 8 bytes of a `size`-byte file state, checked against the file."""
    if size < 8:
        raise SafetensorsError(
            f"{where}: truncated safetensors file ({size} bytes; the 8-byte header length is missing)")
    (n,) = struct.unpack("<Q", first)
    if n < 2 or n > MAX_HEADER_BYTES:
        raise SafetensorsError(
            f"{where}: corrupt safetensors file: header length {n} is outside [2, {MAX_HEADER_BYTES}]"
        )
    if 8 + n > size:
        raise SafetensorsError(
            f"{where}: truncated safetensors file: the header needs {n} bytes after the first 8, "
            f"but the file has {size - 8}"
        )
    return int(n)


def _parse_header_json(raw: bytes, size: int, where: str) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    n = len(raw)
    depth = limits.json_depth(raw)
    if depth > 3:  # {name: {"shape": [...]}}: a deeper header is not a safetensors header
        raise SafetensorsError(f"{where}: corrupt safetensors file: the header JSON is nested {depth} levels deep; "
                               "a safetensors header has 3")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{where}: corrupt safetensors file: the header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where}: corrupt safetensors file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{where}: corrupt safetensors file: __metadata__ must map strings to strings")

    data_start = 8 + n
    data_len = size - data_start
    spans = []
    for name, info in header.items():
        at = f"{where}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise SafetensorsError(f"{at}: header entry must have dtype, shape and data_offsets, got {info!r}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str):
            raise SafetensorsError(f"{at}: dtype must be a string, got {code!r}")
        if code not in _DTYPES and code not in _ML_DTYPES:
            numpy_dtype(code, at)  # raises with the list of known dtypes
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise SafetensorsError(f"{at}: shape must be a list of non-negative integers, got {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise SafetensorsError(
                f"{at}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        begin, end = offsets
        if end > data_len:
            raise SafetensorsError(
                f"{at}: data_offsets [{begin}, {end}] run past the end of the data "
                f"({data_len} bytes after the header): the file is truncated"
            )
        expected = math.prod(shape) * _itemsize(code)
        if end - begin != expected:
            raise SafetensorsError(
                f"{at}: {code} shape {shape} needs {expected} bytes, but data_offsets "
                f"[{begin}, {end}] span {end - begin}"
            )
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            kind = "a gap before" if begin > position else "an overlap at"
            raise SafetensorsError(
                f"{where}: tensor {name!r}: corrupt safetensors file: {kind} byte {begin} "
                f"(the previous tensor ends at {position})"
            )
        position = end
    if position != data_len:
        raise SafetensorsError(
            f"{where}: corrupt safetensors file: tensors cover {position} bytes but the data "
            f"section has {data_len} (trailing bytes)"
        )
    return header, metadata, data_start


def header_bytes(specs: Mapping[str, tuple[Any, Sequence[int]]],
                 metadata: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The start of a safetensors file holding arrays of `specs` (name -> (dtype, shape)), for a
    writer that writes the data itself: the 8-byte header length and the JSON header (with
    `metadata` as `__metadata__`), padded with spaces so the data start 8-byte aligned as the
    safetensors writer does; and each array's [begin, end) byte span in the data. Arrays are laid
    out widest dtype first, then by name, so every array is aligned and the same specs always give
    the same bytes."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    spans: dict[str, tuple[int, int]] = {}
    offset = 0
    for name in sorted(specs, key=lambda k: (-np.dtype(specs[k][0]).itemsize, k)):
        dtype, shape = np.dtype(specs[name][0]), [int(d) for d in specs[name][1]]
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": code_for(dtype), "shape": shape, "data_offsets": [offset, offset + nbytes]}
        spans[name] = (offset, offset + nbytes)
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, spans


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-map `path` and return `(tensors, metadata)`.

    Every tensor is a read-only NumPy view into one `np.memmap` of the file (no copy); the map stays
    open as long as any view is alive. The dict keeps the file's tensor order (by offset).
    """
    path = Path(path)
    header, metadata, data_start = read_header(path)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    size = path.stat().st_size
    buffer = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    tensors: dict[str, np.ndarray] = {}
    for name in order:
        info = header[name]
        dtype = numpy_dtype(info["dtype"], f"{path}: tensor {name!r}")
        begin, _ = info["data_offsets"]
        count = math.prod(info["shape"])
        if count == 0:
            array = np.zeros(info["shape"], dtype)
        else:
            array = np.frombuffer(buffer, dtype=dtype, count=count, offset=data_start + begin)
        array = array.reshape(tuple(info["shape"]))
        array.flags.writeable = False
        tensors[name] = array
    return tensors, dict(metadata)


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Write `tensors` (name -> array, any layout) to `path` with the `safetensors` package.

    Arrays are made C-contiguous little-endian first (a transposed view is written transposed).
    The file is written through `bert_ref.io.atomic` (a temporary name next to `path`, renamed into
    place when complete).
    """
    from safetensors.numpy import save_file

    path = Path(path)
    prepared = {}
    for name, array in tensors.items():
        array = np.asarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        code_for(array.dtype)  # clear error for unsupported dtypes
        prepared[name] = array if array.flags.c_contiguous else array.copy(order="C")  # keeps 0-d arrays 0-d
    with atomic.atomic_path(path) as tmp:
        try:
            save_file(prepared, str(tmp), metadata=dict(metadata) if metadata else None)
        except Exception as e:  # the safetensors package's own error type: an OSError naming `path`
            if type(e).__name__ == "SafetensorError":
                raise writer_error(e, path) from None
            raise
