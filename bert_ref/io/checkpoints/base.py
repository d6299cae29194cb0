"""What every checkpoint reader returns (`Checkpoint`), and the checks they share."""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref import encoder
from bert_ref.model import limits
from bert_ref.model.config import BertConfig


class CheckpointError(ValueError):
    """A preset directory or weights file does not hold what its format requires."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A BERT checkpoint read from a local directory.

    Attributes:
        config: the architecture.
        weights: canonical name -> array in storage dtype (2-D `(in, out)` kernels, see
            `BertConfig.weight_shapes()`), in that order; `None` when loaded with
            `load_weights=False`. Arrays read from safetensors (and uncompressed .h5) files are
            read-only views into a memory map of the file, not copies.
        format: `"keras"` (keras-hub preset), `"huggingface"` or `"native"` (ours).
        path: the preset directory.
        files: the files that were read.
        metadata: `lowercase` (bool or None), `vocabulary` (Path of a one-token-per-line file, or
            None), `source` (who wrote the checkpoint), `dtype` (the saved dtype policy name, or
            None), plus format-specific entries.
        unchecked: None when the weights were checked for NaN/inf (or not loaded); with
            `check_finite=False`, the name of the file they came from, for `check_all_finite`
            to name when it runs later.
    """

    config: BertConfig
    weights: dict[str, np.ndarray] | None
    format: str
    path: Path
    files: tuple[Path, ...]
    metadata: dict[str, Any]
    unchecked: str | None = None


def read_json(path: Path) -> Any:
    """Parse a JSON file within `bert_ref.model.limits`' size and depth; a clear error naming the file
    when it is not JSON, too large or too deep."""
    try:
        return limits.load_file(path)
    except FileNotFoundError:
        raise
    except limits.LimitError as e:
        raise CheckpointError(str(e)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read_config(directory: Path, parse: Callable[[Any, str], BertConfig]) -> tuple[Any, BertConfig, Path]:
    """Read `directory/config.json` and parse it with a format's `config_from_json(json, source)`.

    Returns `(the JSON, the BertConfig, the file's path)`; errors name the file."""
    path = directory / "config.json"
    config_json = read_json(path)
    return config_json, parse(config_json, str(path)), path


def read_optional_json(path: Path) -> Any:
    """Like `read_json`, but None when the file is absent."""
    return read_json(path) if path.is_file() else None


def read_json_object(path: Path) -> dict[str, Any] | None:
    """An optional JSON file that must hold an object: the object, or None when the file is absent."""
    obj = read_optional_json(path)
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def check_weights(config: BertConfig, weights: Mapping[str, np.ndarray], source: str, *,
                  finite: bool = True) -> dict[str, np.ndarray]:
    """`bert_ref.encoder.check_weights` (names, shapes, floating dtypes; canonical order, no copies)
    as a `CheckpointError` that also states the architecture the expected shapes come from, then
    (unless `finite=False`) `check_all_finite`.

    `source` names the file the weights came from. Readers whose files use other names (keras-hub's
    h5 paths, Hugging Face's module names) report mismatches in those names before calling this."""
    try:
        checked = encoder.check_weights(weights, config, source=source)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{e}; the config: {_arch(config)}") from None
    if finite:
        check_all_finite(checked, source)
    return checked


def check_all_finite(weights: Mapping[str, np.ndarray], source: str) -> None:
    """`check_finite` for every tensor, in order: a `CheckpointError` naming the first that holds NaN or
    inf. Reads every weight once (BERT-base: 438 MB)."""
    from bert_ref.model.runtime import map_concurrent  # the tensors are read on the cores' threads

    map_concurrent(lambda item: check_finite(item[1], item[0], source), weights.items())


def check_weight_bytes(config: BertConfig, files: list[Path], config_source: str) -> None:
    """A `CheckpointError` when the weight files are too small for the parameters the config
    implies (at least one byte each, even in an 8-bit format): the config does not describe them.
    Costs a `stat` per file, before any tensor is looked at."""
    have = sum(f.stat().st_size for f in files)
    need = config.implied_params()
    if need > have:
        names = ", ".join(f.name for f in files)
        raise CheckpointError(
            f"{config_source} implies {need:,} parameters, at least {need:,} bytes even stored in 8 bits, but "
            f"{names} hold{'s' if len(files) == 1 else ''} {have:,} bytes: the config does not describe these weights")


def check_finite(w: np.ndarray, name: str, source: str) -> None:
    """A `CheckpointError` naming `name`, the first position and the count when `w` holds NaN or inf.

    One pass per tensor, without a temporary mask: NaN or inf in any term makes a sum NaN or inf, so
    a finite float64 sum proves every value finite (for float16/32 values the converse holds too:
    |sum| <= 3.4e38 * size cannot overflow float64; a float64 sum can overflow, and then the scan
    below decides). Only a non-finite sum pays for the element-wise `isfinite` that locates the
    first bad value.
    """
    if w.size == 0:
        return
    if w.dtype.kind == "f" and w.dtype.itemsize in (2, 4, 8):
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow here only means: scan
            total = np.add.reduce(w, axis=None, dtype=np.float64)
        if np.isfinite(total):
            return
    values = w if w.dtype.kind == "f" else w.astype(np.float32)  # bfloat16 / float8 (ml_dtypes)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise CheckpointError(
        f"{source}: tensor {name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), the first "
        f"{name}[{', '.join(map(str, first))}] = {values[first]}; a checkpoint's weights must be finite"
    )


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file although it exists (a FIFO, a device, a directory, a
    link to one), else None (a regular file, or nothing there at all)."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO (named pipe)"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "not a regular file"
    return f"{path} is {kind}" + (" (through a symbolic link)" if path.is_symlink() else "") + \
        "; a checkpoint file must be a regular file"


def check_regular_file(path: Path, missing: str) -> None:
    """A `CheckpointError`: `missing` when `path` does not exist, what it is when it is not a file."""
    why = not_a_regular_file(path)
    if why is not None:
        raise CheckpointError(why)
    if not path.is_file():
        raise CheckpointError(missing)


def list_names(items: list[str], limit: int = 8) -> str:
    """The first `limit` of `items`, comma-separated, then " ..." if there are more."""
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def _arch(config: BertConfig) -> str:
    return ", ".join(f"{k}={getattr(config, k)}" for k in (
        "vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
        "max_sequence_length", "num_segments"))


def check_field(source: str, config: Mapping[str, Any], key: str, kind: type, default: Any = dataclasses.MISSING,
                *, minimum: float | None = None) -> Any:
    """Read `config[key]` as an int / float / str / bool; clear error naming the file and field."""
    if key not in config:
        if default is dataclasses.MISSING:
            raise CheckpointError(f"{source}: missing config field {key!r}")
        return default
    value = config[key]
    if kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        wanted = "an integer"
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        wanted = "a number"
    elif kind is bool:
        ok = isinstance(value, bool)
        wanted = "true or false"
    else:
        ok = isinstance(value, kind)
        wanted = f"a {kind.__name__}"
    if not ok:
        raise CheckpointError(
            f"{source}: config field {key!r} must be {wanted}, got {value!r} ({type(value).__name__})"
        )
    if minimum is not None and value < minimum:
        raise CheckpointError(f"{source}: config field {key!r} must be >= {minimum}, got {value!r}")
    return kind(value) if kind in (int, float) else value


def dtype_name(dtype: Any) -> str | None:
    """The policy name of a keras `dtype` config entry (a string or a serialized DTypePolicy)."""
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, Mapping):
        inner = dtype.get("config")
        if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
            return inner["name"]
    return None
