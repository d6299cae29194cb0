"""Reading candidates and inputs: the one reader behind `bert-ref compare` (one batch or a
dataset), `bert-ref run --input`, `compare_to_truth` and `bert_ref.testing`.

What ports write (Hugging Face / ONNX names, stacked arrays, `.npy` files, inputs stored beside
outputs) is translated to our keys with a note per translation (`canonical_outputs`). The rules,
whichever way the arrays come in (a file, a dataset's shard files, a mapping):

* **outputs** are float16, bfloat16, float32 or float64; integers, booleans, complex numbers,
  extended precision and Python objects are refused, naming the file and key (`check_output_dtype`);
* **output keys** follow the one grammar of `bert_ref.oracle.keys`;
* **inputs** (`token_ids`, `segment_ids`: integers; `padding_mask`: 0/1 integers or booleans) are
  checked by `check_inputs` for one batch and `check_input_header` for a dataset's files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io.arrays import OUTPUT_SUFFIXES, ArrayFileError, read_arrays
from bert_ref.oracle.keys import OUTPUT_KEYS_HELP, canonical_key, unknown_key_message

INPUT_KEYS = ("token_ids", "segment_ids", "padding_mask")
#: Hugging Face's input names, read as ours.
INPUT_ALIASES = {"input_ids": "token_ids", "token_type_ids": "segment_ids", "attention_mask": "padding_mask"}
#: Inputs that ports store next to their outputs: ignored in an outputs file (with a note).
STORED_INPUT_KEYS = INPUT_KEYS + tuple(INPUT_ALIASES) + ("position_ids",)
#: The dtypes an output may be stored in.
OUTPUT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _dtype_words(dtype: np.dtype) -> str:
    kind = {"i": "integers", "u": "integers", "b": "booleans", "c": "complex numbers", "O": "Python objects",
            "U": "strings", "S": "bytes", "V": "raw bytes", "M": "dates", "m": "time spans"}.get(dtype.kind)
    if dtype.kind == "f":
        kind = "extended-precision floats"
    return f"{dtype} values" + (f" ({kind})" if kind else "")


def check_output_dtype(dtype: np.dtype | type, source: str, key: str) -> None:
    """The one dtype rule of outputs: float16, bfloat16, float32 or float64 (`OUTPUT_DTYPES`).

    Raises:
        ArrayFileError: naming `source` (the file, or the argument) and `key`, the dtype found and
            what to write instead.
    """
    dtype = np.dtype(dtype)
    if dtype.name in OUTPUT_DTYPES:
        return
    raise ArrayFileError(f"{source}: key {key!r} holds {_dtype_words(dtype)}; outputs must be "
                         f"{', '.join(OUTPUT_DTYPES[:-1])} or {OUTPUT_DTYPES[-1]}: store the model's outputs as floats "
                         "(e.g. `.astype(np.float32)`)")


def check_input_dtype(dtype: np.dtype | type, source: str, key: str) -> None:
    """The one dtype rule of inputs: integers; `padding_mask` may also be booleans."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" or (key == "padding_mask" and dtype.kind == "b"):
        return
    want = "integers or booleans" if key == "padding_mask" else "integers"
    raise ArrayFileError(f"{source}: {key} has dtype {dtype}; expected {want} (store the ids as int32 or int64)")


# ----------------------------------------------------------------------------------------------
# Inputs


def check_inputs(arrays: Mapping[str, np.ndarray], source: str = "inputs") -> dict[str, np.ndarray]:
    """Check an inputs mapping's keys, dtypes and shapes; return it with `padding_mask` as bool.

    Hugging Face's names (`input_ids`, `token_type_ids`, `attention_mask`) are read as ours. Range
    checks (token ids below the vocabulary size, ...) need a config: `forward` does them."""
    renamed = {}
    for k, v in arrays.items():
        name = INPUT_ALIASES.get(k, k)
        if name in renamed:
            raise ArrayFileError(f"{source}: both {name!r} and its Hugging Face name "
                                 f"{next(a for a, b in INPUT_ALIASES.items() if b == name)!r}; keep one")
        renamed[name] = v
    arrays = renamed
    unknown = [k for k in arrays if k not in INPUT_KEYS]
    if unknown:
        raise ArrayFileError(f"{source}: unexpected key(s) {unknown}; an inputs file holds {list(INPUT_KEYS)} "
                             f"(token_ids required; Hugging Face's {list(INPUT_ALIASES)} are accepted too)")
    if "token_ids" not in arrays:
        raise ArrayFileError(f"{source}: missing key 'token_ids' (found {list(arrays)}); an inputs file holds "
                             f"{list(INPUT_KEYS)}")
    out = {}
    shape = None
    for key in INPUT_KEYS:
        if key not in arrays:
            continue
        arr = np.asarray(arrays[key])
        check_input_dtype(arr.dtype, source, key)
        if arr.ndim != 2:
            raise ArrayFileError(f"{source}: {key} has shape {arr.shape}; expected 2-D (batch, sequence)")
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise ArrayFileError(f"{source}: {key} has shape {arr.shape} but token_ids has shape {shape}; "
                                 "they must match")
        if key == "padding_mask" and arr.dtype.kind != "b":
            bad = (arr != 0) & (arr != 1)
            if bad.any():
                pos = ", ".join(str(int(i)) for i in np.argwhere(bad)[0])
                raise ArrayFileError(f"{source}: padding_mask[{pos}] = {arr[tuple(np.argwhere(bad)[0])]}; "
                                     "expected 0 or 1")
            arr = arr != 0
        out[key] = arr
    return out


def check_input_header(header: Mapping[str, tuple[tuple[int, ...], np.dtype]], source: str) -> tuple[int, ...]:
    """Check a dataset file's inputs from its header (key -> (shape, dtype), `read_header`): the keys,
    dtypes and shapes `check_inputs` checks, with records on the first axis. Returns token_ids' shape."""
    unknown = [k for k in header if k not in INPUT_KEYS]
    if unknown or "token_ids" not in header:
        raise ArrayFileError(f"{source}: a token-id dataset file holds {list(INPUT_KEYS)} (token_ids required); "
                             f"found {list(header)}")
    shape = header["token_ids"][0]
    for key, (s, dtype) in header.items():
        check_input_dtype(dtype, source, key)
        if len(s) != 2:
            raise ArrayFileError(f"{source}: {key} has shape {s}; expected 2-D (records, sequence)")
        if s != shape:
            raise ArrayFileError(f"{source}: {key} has shape {s} but token_ids has shape {shape}; they must match")
    return tuple(shape)


def read_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An inputs file (see the module docstring), checked by `check_inputs`."""
    return check_inputs(read_arrays(path), str(path))


# ----------------------------------------------------------------------------------------------
# Outputs

@dataclasses.dataclass(frozen=True)
class Candidate:
    """An outputs file as read: `arrays` by our output keys, and `notes` saying what was translated
    (an alias, a stacked array split, inputs ignored)."""

    arrays: dict[str, np.ndarray]
    notes: tuple[str, ...]
    stacked: tuple[tuple[str, int], ...] = ()  # (name, entries) of each stacked array split (`check_stacked`)

def output_name(key: str, source: str) -> str | None:
    """Our key for an output key or an alias of a single output (`last_hidden_state`,
    `attentions.{i}`); None for an input stored with the outputs (ignored).

    Raises:
        ArrayFileError: an unknown key, with the closest valid one.
    """
    if key in STORED_INPUT_KEYS:
        return None
    ours = canonical_key(key)
    if ours is None:
        raise ArrayFileError(f"{source}: {unknown_key_message(key)}")
    return ours


_STACKED = {"hidden_states": ("hidden_states", 4, "[L+1, batch, sequence, hidden]"),
            "attentions": ("attention_probs", 5, "[L, batch, heads, sequence, sequence]"),
            "attention_probs": ("attention_probs", 5, "[L, batch, heads, sequence, sequence]")}


def canonical_outputs(arrays: Mapping[str, Any], source: str) -> Candidate:
    """Outputs by our keys, from a mapping of what a port gives: our keys, Hugging Face / ONNX names,
    `hidden_states` / `attentions` stacked in one array or as a list of arrays, `forward`'s result
    (its `trace` dict included), and inputs passed along (ignored). Every array is checked by the
    one dtype rule (`check_output_dtype`), every key by the one key grammar (`output_name`).

    Raises:
        ArrayFileError: naming `source` and the key.
    """
    notes: list[str] = []
    out: dict[str, np.ndarray] = {}
    ignored = []
    stacked: list[tuple[str, int]] = []  # each stacked array split, for `check_stacked`

    def put(key: str, value: Any, given_as: str) -> None:
        arr = np.asarray(value)
        check_output_dtype(arr.dtype, source, given_as)
        if key in out:
            raise ArrayFileError(f"{source}: {key} is given twice (as {given_as} and under another name); keep one")
        out[key] = arr

    for key, value in arrays.items():
        if key == "trace" and isinstance(value, Mapping):  # forward(trace=True)'s intermediates
            for name, v in value.items():
                if name not in out and name not in arrays:
                    put(output_name(name, source) or name, v, name)
            continue
        if key in _STACKED and not hasattr(value, "shape"):  # a tuple of arrays, as torch ports return
            name = _STACKED[key][0]
            for i, v in enumerate(value):
                put(f"{name}.{i}", v, f"{key}[{i}]")
            stacked.append((key, len(value)))
            continue
        if key in _STACKED and key != "attention_probs":
            name, ndim, want = _STACKED[key]
            arr = np.asarray(value)
            check_output_dtype(arr.dtype, source, key)
            if arr.ndim != ndim:
                raise ArrayFileError(f"{source}: {key} has shape {arr.shape}; a stacked {key} array is "
                                     f"{ndim}-D {want}")
            for i in range(arr.shape[0]):
                put(f"{name}.{i}", arr[i], key)
            stacked.append((key, int(arr.shape[0])))
            notes.append(f"{key} {tuple(arr.shape)} split into {name}.0 .. {name}.{arr.shape[0] - 1}")
            continue
        name = output_name(key, source)
        if name is None:
            ignored.append(key)
            continue
        put(name, value, key)
        if name != key:
            notes.append(f"{key} read as {name}")
    if ignored:
        notes.append(f"ignored the inputs stored with the outputs: {', '.join(ignored)}")
    if not out:
        raise ArrayFileError(f"{source}: holds no outputs" + (f" (only inputs {ignored})" if ignored else "")
                             + f"; expected {OUTPUT_KEYS_HELP}")
    return Candidate(out, tuple(notes), tuple(stacked))


def read_candidate(path: str | os.PathLike) -> Candidate:
    """An outputs file, with Hugging Face / ONNX names and `.npy` accepted (see the module docstring).

    Every key must be an output key (see `is_output_key`) or an alias, holding floats; input arrays
    stored with the outputs are dropped with a note."""
    path = Path(path)
    raw = read_arrays(path, OUTPUT_SUFFIXES)
    notes: list[str] = []
    if "" in raw:  # a .npy file: one array, named by the file
        arr = raw.pop("")
        stem = path.stem
        if canonical_key(stem) is not None or stem in ("hidden_states", "attentions"):
            name = stem
        elif arr.ndim == 3:
            name = "sequence_output"
        elif arr.ndim == 2:
            name = "pooled_output"
        else:
            raise ArrayFileError(f"{path}: a .npy file holds one output: name the file after it "
                                 f"(e.g. sequence_output.npy, hidden_states.npy) or store a 3-D sequence_output "
                                 f"[B, S, H] or a 2-D pooled_output [B, H]; got shape {arr.shape}")
        if name != stem:
            notes.append(f"{path.name}: a single array of shape {arr.shape}, read as {name}")
        raw = {name: arr}
    if not raw:
        raise ArrayFileError(f"{path}: holds no arrays; expected {OUTPUT_KEYS_HELP}")
    read = canonical_outputs(raw, str(path))
    return Candidate(read.arrays, tuple(notes) + read.notes, read.stacked)


def read_outputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An outputs file's arrays by our output keys (see `read_candidate`, which also gives the notes)."""
    return read_candidate(path).arrays
