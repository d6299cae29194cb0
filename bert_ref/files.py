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

import contextlib
import dataclasses
import difflib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import limits
from .encoder import TRACE_EMBEDDINGS, TRACE_LAYER

SUFFIXES = (".npz", ".safetensors", ".json")
OUTPUT_SUFFIXES = SUFFIXES + (".npy",)
INPUT_KEYS = ("token_ids", "segment_ids", "padding_mask")
#: Hugging Face's input names, read as ours.
INPUT_ALIASES = {"input_ids": "token_ids", "token_type_ids": "segment_ids", "attention_mask": "padding_mask"}
#: Inputs that ports store next to their outputs: ignored in an outputs file (with a note).
STORED_INPUT_KEYS = INPUT_KEYS + tuple(INPUT_ALIASES) + ("position_ids",)
#: Hugging Face / ONNX output names of single outputs.
OUTPUT_ALIASES = {"last_hidden_state": "sequence_output", "pooler_output": "pooled_output"}
BF16_INSTALL = 'pip install ml_dtypes  (or pip install "bert-ref[bf16]")'

_OUTPUT_KEY = re.compile(r"^(sequence_output|pooled_output|(hidden_states|attention_probs)\.(0|[1-9][0-9]*))$")
_TRACE_KEY = re.compile(
    "^(" + "|".join(map(re.escape, TRACE_EMBEDDINGS)) + "|transformer_layer_(0|[1-9][0-9]*)/("
    + "|".join(map(re.escape, TRACE_LAYER)) + "))$"
)
OUTPUT_KEYS_HELP = ("sequence_output, pooled_output, hidden_states.{i}, attention_probs.{i}, or a trace name "
                    "(embeddings/..., transformer_layer_{i}/...)")


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


def _check_npz(path: Path) -> None:
    """Before anything is inflated: `path` is a zip of `.npy` members whose declared arrays (the
    shape and dtype in each member's header) total at most BERT_REF_MAX_INPUT_BYTES, and no member
    inflates to more than its header declares (a deflate bomb)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ArrayFileError(f"{path}: not a .npz archive: it is a single .npy array (save with numpy.savez "
                             "to name the arrays token_ids, segment_ids, padding_mask)")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ArrayFileError(f"{path}: cannot read as .npz (not a zip archive: truncated, or another format)") from None
    total = 0
    with zf:
        infos = zf.infolist()
        limits.check("archive_entries", len(infos), f"{path}: the number of arrays")
        for info in infos:
            key = info.filename.removesuffix(".npy")
            with zf.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
                    shape, _, dtype = read_header(member)
                except (ValueError, EOFError, SyntaxError) as e:
                    raise ArrayFileError(f"{path}: key {key!r} is not a .npy array ({_one_line(e)})") from None
                header_bytes = member.tell()
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if info.file_size > header_bytes + declared:
                raise ArrayFileError(f"{path}: key {key!r} inflates to {info.file_size:,} bytes but its header "
                                     f"declares {declared:,} bytes of {dtype} {shape}; the file is corrupt")
            total += declared
            limits.check("input_bytes", total, f"{path}: the declared size of its arrays (up to key {key!r})",
                         " bytes")


def read_arrays(path: str | os.PathLike, suffixes: tuple[str, ...] = SUFFIXES) -> dict[str, np.ndarray]:
    """All arrays in a `.npz`, `.safetensors` or `.json` file, by key (file order).

    With ".npy" among `suffixes`, a `.npy` file is read as one array under the key "" (empty)."""
    path = Path(path)
    suffix = _suffix(path, suffixes)
    if not path.exists():
        raise ArrayFileError(f"{path}: no such file")
    if not path.is_file():
        raise ArrayFileError(f"{path}: not a file")
    try:
        if suffix == ".npz":
            _check_npz(path)
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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, KeyError) as e:
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
    # Written to a temporary name in the same directory and renamed into place when complete: a
    # failure (a full disk) never leaves a truncated file that looks like output.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                                    suffix=".part")
    tmp = Path(tmp_name)
    try:
        if suffix == ".npz":
            with os.fdopen(fd, "wb") as f:
                # numpy's stub types **kwds as if they could fill `allow_pickle`; they are arrays.
                np.savez(f, **arrays)  # type: ignore[arg-type]
        elif suffix == ".safetensors":
            from safetensors.numpy import save_file

            os.close(fd)
            try:
                save_file(arrays, str(tmp))
            except Exception as e:  # the safetensors package raises its own error type
                if type(e).__name__ == "SafetensorError":
                    raise OSError(_one_line(e)) from None
                raise
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({k: _jsonable(v) for k, v in arrays.items()}, f)
                f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise ArrayFileError(f"{path}: cannot write ({_one_line(e)}); nothing was written") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def is_output_key(key: str) -> bool:
    """True for `sequence_output`, `pooled_output`, `hidden_states.{i}`, `attention_probs.{i}` and
    the trace names (`embeddings/sum`, `transformer_layer_{i}/query`, ...)."""
    return bool(_OUTPUT_KEY.match(key) or _TRACE_KEY.match(key))


def flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`forward`'s result as a flat mapping: lists `hidden_states` / `attention_probs` become
    `hidden_states.{i}` / `attention_probs.{i}`; a `trace` dict contributes its names (its
    `pooled_output` is the output of the same name and appears once)."""
    flat: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        if key in ("hidden_states", "attention_probs") and not isinstance(value, np.ndarray):
            for i, v in enumerate(value):
                flat[f"{key}.{i}"] = np.asarray(v)
        elif key == "trace":
            for name, v in value.items():
                flat.setdefault(name, np.asarray(v))
        else:
            flat[key] = np.asarray(value)
    return flat


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An outputs file as read: `arrays` by our output keys, and `notes` saying what was translated
    (an alias, a stacked array split, inputs ignored)."""

    arrays: dict[str, np.ndarray]
    notes: tuple[str, ...]


def _valid_names(key: str) -> list[str]:
    """Names a misspelt `key` may have meant: ours, the aliases, and indexed names with its index."""
    digits = re.findall(r"\d+", key)
    i = digits[0] if digits else "0"
    names = ["sequence_output", "pooled_output", f"hidden_states.{i}", f"attention_probs.{i}", "hidden_states",
             "attentions", f"attentions.{i}", *OUTPUT_ALIASES, *TRACE_EMBEDDINGS]
    names += [f"transformer_layer_{i}/{t}" for t in TRACE_LAYER]
    return names


def unknown_key_message(key: str) -> str:
    """"unexpected key 'X'; expected ... (closest match: 'Y')"."""
    close = difflib.get_close_matches(key, _valid_names(key), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unexpected key {key!r}; expected {OUTPUT_KEYS_HELP}, or Hugging Face's last_hidden_state, "
            f"pooler_output, hidden_states [L+1, B, S, H], attentions [L, B, heads, S, S].{hint}")


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
        if is_output_key(stem) or stem in OUTPUT_ALIASES or stem in ("hidden_states", "attentions"):
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
        if not is_output_key(key) and key not in OUTPUT_ALIASES and key not in ("hidden_states", "attentions") \
                and not re.fullmatch(r"attentions\.(0|[1-9][0-9]*)", key):
            raise ArrayFileError(f"{path}: {unknown_key_message(key)}")
        if not _is_float(arr):
            raise ArrayFileError(f"{path}: {key} has dtype {arr.dtype}; expected floating point values")
        if key in OUTPUT_ALIASES:
            put(OUTPUT_ALIASES[key], arr, key)
            notes.append(f"{key} read as {OUTPUT_ALIASES[key]}")
        elif key in ("hidden_states", "attentions"):
            name, ndim = ("hidden_states", 4) if key == "hidden_states" else ("attention_probs", 5)
            want = ("[L+1, batch, sequence, hidden]" if key == "hidden_states"
                    else "[L, batch, heads, sequence, sequence]")
            if arr.ndim != ndim:
                raise ArrayFileError(f"{path}: {key} has shape {arr.shape}; a stacked {key} array is {ndim}-D {want}")
            for i in range(arr.shape[0]):
                put(f"{name}.{i}", arr[i], key)
            notes.append(f"{key} {tuple(arr.shape)} split into {name}.0 .. {name}.{arr.shape[0] - 1}")
        elif key.startswith("attentions."):
            name = "attention_probs." + key.split(".")[1]
            put(name, arr, key)
            notes.append(f"{key} read as {name}")
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
