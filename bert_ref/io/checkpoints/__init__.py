"""Read BERT checkpoints from a local directory, whatever wrote them.

Three on-disk formats, told apart by their files (never by the directory's name):

- `"keras"`: a keras-hub preset — `config.json` with `"class_name": "BertBackbone"` and
  `model.weights.h5` (see `bert_ref.io.checkpoints.keras`; needs h5py);
- `"native"`: ours — the same `config.json` layout with `model.safetensors` under canonical names
  (see `bert_ref.io.checkpoints.native`);
- `"huggingface"`: transformers — `config.json` with `"model_type": "bert"` and `model.safetensors`
  or `model.safetensors.index.json` + shards (see `bert_ref.io.checkpoints.huggingface`).

Example:
    >>> ckpt = load_preset_dir("./bert_tiny_en_uncased")
    >>> ckpt.format, ckpt.config.num_layers, ckpt.weights["pooled_dense/kernel"].shape
    ('keras', 2, (128, 128))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bert_ref.io.checkpoints import huggingface, keras, native
from bert_ref.io.checkpoints.base import Checkpoint, CheckpointError, read_json
from bert_ref.io.checkpoints.safetensors_io import SafetensorsError, read_safetensors, write_safetensors

FORMATS = ("keras", "huggingface", "native")

_LOOKED_FOR = (
    "config.json with \"class_name\": \"BertBackbone\" (keras-hub / bert_ref preset, weights in "
    "model.weights.h5 or model.safetensors), or config.json with \"model_type\": \"bert\" "
    "(Hugging Face, weights in model.safetensors or model.safetensors.index.json)"
)


def format_of_config(config_json: Any, source: str = "config.json") -> str:
    """The format a `config.json` announces: `"huggingface"`, `"native"` or `"keras"`.

    From the config alone, a keras-hub preset and ours differ only in our extra `activation` /
    `layer_norm_epsilon` fields; `detect_format` (which sees the weight files) is authoritative.
    """
    if isinstance(config_json, Mapping):
        if config_json.get("class_name") == native.CLASS_NAME:
            return "native" if native.is_native_config(config_json) else "keras"
        if "model_type" in config_json:
            if config_json["model_type"] != "bert":
                raise CheckpointError(
                    f"{source}: model_type is {config_json['model_type']!r}; only 'bert' is supported"
                )
            return "huggingface"
        if "class_name" in config_json:
            raise CheckpointError(
                f"{source}: class_name is {config_json['class_name']!r}; only 'BertBackbone' is supported"
            )
    raise CheckpointError(f"{source}: not a BERT config; looked for {_LOOKED_FOR}")


def required_files(config_json: Mapping[str, Any]) -> list[str]:
    """The files (besides `config.json`) the layout `config_json` announces needs."""
    fmt = format_of_config(config_json)
    return {"huggingface": huggingface, "keras": keras, "native": native}[fmt].required_files(config_json)


def detect_format(path: str | os.PathLike) -> str:
    """`"keras"`, `"huggingface"` or `"native"`, from the files in directory `path`.

    Raises `FileNotFoundError` / `NotADirectoryError` for a missing path, and `CheckpointError`
    saying what was looked for when the directory holds no recognisable BERT checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such preset directory")
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: a preset is a directory; looked for {_LOOKED_FOR}")
    config_path = path / "config.json"
    if not config_path.is_file():
        present = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"{path}: no recognisable BERT checkpoint (no config.json); looked for {_LOOKED_FOR}; "
            f"found {present}"
        )
    config_json = read_json(config_path)
    fmt = format_of_config(config_json, str(config_path))
    if fmt == "huggingface":
        return fmt
    if (path / native.WEIGHTS_FILE).exists():
        return "native"
    if (path / keras.WEIGHTS_FILE).exists():
        return "keras"
    return fmt


def load_preset_dir(path: str | os.PathLike, *, load_weights: bool = True, check_finite: bool = True) -> Checkpoint:
    """Read the checkpoint in directory `path` (format detected by `detect_format`).

    Args:
        path: a local directory.
        load_weights: when False, only the config and metadata are read (`weights` is None).
        check_finite: check every weight for NaN/inf (which reads them all). With False the check
            is left to the caller: `Checkpoint.unchecked` then names the weights' file, and
            `bert_ref.io.checkpoints.base.check_all_finite(ckpt.weights, ckpt.unchecked)` runs it.

    Returns a `Checkpoint`. Every mismatch raises an error naming the file and tensor.
    """
    fmt = detect_format(path)
    reader = {"huggingface": huggingface, "keras": keras, "native": native}[fmt]
    return reader.load(Path(path), load_weights=load_weights, check_finite=check_finite)


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FORMATS",
    "SafetensorsError",
    "detect_format",
    "format_of_config",
    "load_preset_dir",
    "read_safetensors",
    "required_files",
    "write_safetensors",
]
