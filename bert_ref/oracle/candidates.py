"""Reading candidates and inputs: what ports write (Hugging Face / ONNX names, stacked arrays,
`.npy` files, inputs stored beside outputs) translated to our keys, with a note per translation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bert_ref.io.arrays import OUTPUT_SUFFIXES, ArrayFileError, read_arrays
from bert_ref.oracle.keys import OUTPUT_KEYS_HELP, canonical_key, unknown_key_message

INPUT_KEYS = ("token_ids", "segment_ids", "padding_mask")
#: Hugging Face's input names, read as ours.
INPUT_ALIASES = {"input_ids": "token_ids", "token_type_ids": "segment_ids", "attention_mask": "padding_mask"}
#: Inputs that ports store next to their outputs: ignored in an outputs file (with a note).
STORED_INPUT_KEYS = INPUT_KEYS + tuple(INPUT_ALIASES) + ("position_ids",)
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
        ok = arr.dtype.kind in "iu" or (key == "padding_mask" and arr.dtype.kind == "b")
        if not ok:
            want = "integers or booleans" if key == "padding_mask" else "integers"
            raise ArrayFileError(f"{source}: {key} has dtype {arr.dtype}; expected {want}")
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

def _is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f" or arr.dtype.name == "bfloat16"


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
    out: dict[str, np.ndarray] = {}
    ignored = []

    def put(key: str, arr: np.ndarray, source: str) -> None:
        if key in out:
            raise ArrayFileError(f"{path}: {key} is given twice (as {source} and under another name); keep one")
        out[key] = arr

    for key, arr in raw.items():
        if key in STORED_INPUT_KEYS:
            ignored.append(key)
            continue
        ours = canonical_key(key)
        if ours is None and key not in ("hidden_states", "attentions"):
            raise ArrayFileError(f"{path}: {unknown_key_message(key)}")
        if not _is_float(arr):
            raise ArrayFileError(f"{path}: {key} has dtype {arr.dtype}; expected floating point values")
        if ours is not None and ours != key:  # a Hugging Face / ONNX name
            put(ours, arr, key)
            notes.append(f"{key} read as {ours}")
        elif key in ("hidden_states", "attentions"):
            name, ndim = ("hidden_states", 4) if key == "hidden_states" else ("attention_probs", 5)
            want = ("[L+1, batch, sequence, hidden]" if key == "hidden_states"
                    else "[L, batch, heads, sequence, sequence]")
            if arr.ndim != ndim:
                raise ArrayFileError(f"{path}: {key} has shape {arr.shape}; a stacked {key} array is {ndim}-D {want}")
            for i in range(arr.shape[0]):
                put(f"{name}.{i}", arr[i], key)
            notes.append(f"{key} {tuple(arr.shape)} split into {name}.0 .. {name}.{arr.shape[0] - 1}")
        else:
            put(key, arr, key)
    if ignored:
        notes.append(f"ignored the inputs stored with the outputs: {', '.join(ignored)}")
    if not out:
        raise ArrayFileError(f"{path}: holds no outputs (only inputs {ignored}); expected {OUTPUT_KEYS_HELP}")
    return Candidate(out, tuple(notes))


def read_outputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An outputs file's arrays by our output keys (see `read_candidate`, which also gives the notes)."""
    return read_candidate(path).arrays
