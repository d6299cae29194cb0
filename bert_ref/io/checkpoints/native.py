"""bert_ref's own preset format: keras-hub's `config.json` layout + `model.safetensors`.

A native preset directory holds:

- `config.json`: `{"module": "keras_hub.src.models.bert.bert_backbone", "class_name": "BertBackbone",
  "config": {<keras-hub BertBackbone arguments>, "activation", "layer_norm_epsilon"},
  "registered_name": "keras_hub>BertBackbone"}` — keras-hub's layout, plus our two fields;
- `metadata.json`: `bert_ref_version`, `parameter_count`, `date_saved`, and optionally `lowercase`
  and `source`;
- `model.safetensors`: the weights under their canonical names (`BertConfig.weight_shapes()`),
  2-D `(in, out)` kernels, in their storage dtype;
- optionally `assets/tokenizer/vocabulary.txt` (one token per line), as keras-hub stores it, with
  the tokenizer's settings in `metadata.json`'s "tokenizer" object and a keras-hub `tokenizer.json`.

Loading memory-maps `model.safetensors`: the returned arrays are read-only views of the file.
Saving then loading gives back the same bits.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io import atomic
from bert_ref.io.checkpoints.base import (
    Checkpoint,
    CheckpointError,
    check_regular_file,
    check_weight_bytes,
    check_weights,
    dtype_name,
    read_config,
    read_json_object,
)
from bert_ref.io.checkpoints.safetensors_io import read_safetensors, write_safetensors
from bert_ref.model.config import BertConfig

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"
VOCABULARY_FILE = "assets/tokenizer/vocabulary.txt"
TOKENIZER_FILE = "tokenizer.json"
MODULE = "keras_hub.src.models.bert.bert_backbone"
CLASS_NAME = "BertBackbone"
REGISTERED_NAME = "keras_hub>BertBackbone"


def is_native_config(config_json: Mapping[str, Any]) -> bool:
    """True for a `config.json` written by `save_preset` (it has our `activation` field)."""
    inner = config_json.get("config") if isinstance(config_json, Mapping) else None
    return (
        isinstance(config_json, Mapping)
        and config_json.get("class_name") == CLASS_NAME
        and isinstance(inner, Mapping)
        and "activation" in inner
        and "layer_norm_epsilon" in inner
    )


def required_files(config_json: Mapping[str, Any]) -> list[str]:
    """Files a native preset needs besides `config.json` (see `OPTIONAL_FILES` for the extras)."""
    config_from_json(config_json, CONFIG_FILE)
    return [WEIGHTS_FILE]


#: Files a native preset may hold; their absence is not an error.
OPTIONAL_FILES = (METADATA_FILE, VOCABULARY_FILE, TOKENIZER_FILE)


def config_from_json(config_json: Any, source: str) -> BertConfig:
    """The `BertConfig` of a keras-hub-layout `config.json` (keras-hub's or ours)."""
    if not isinstance(config_json, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(config_json).__name__}")
    if config_json.get("class_name") != CLASS_NAME:
        raise CheckpointError(
            f"{source}: class_name is {config_json.get('class_name')!r}, expected {CLASS_NAME!r}"
        )
    inner = config_json.get("config")
    if not isinstance(inner, Mapping):
        raise CheckpointError(f"{source}: field 'config' must be a JSON object with the BertBackbone arguments")
    try:
        return BertConfig.from_dict(inner, source=source)
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def read_keras_layout(directory: Path) -> tuple[Mapping[str, Any], BertConfig, list[Path], dict[str, Any]]:
    """`config.json` and the optional `metadata.json` of a keras-hub-layout preset (keras-hub's or ours).

    Returns `(config JSON, BertConfig, files read, metadata)`: `metadata` holds the entries both
    layouts share — `vocabulary` (the `assets/tokenizer/vocabulary.txt` path, or None), `dtype`
    (the saved policy name, or None) and `preset_metadata` (`metadata.json`'s object, or {})."""
    config_json, config, config_path = read_config(directory, config_from_json)
    files = [config_path]
    metadata_path = directory / METADATA_FILE
    preset_metadata = read_json_object(metadata_path)
    if preset_metadata is None:
        preset_metadata = {}
    else:
        files.append(metadata_path)
    vocabulary = directory / VOCABULARY_FILE
    metadata = {
        "vocabulary": vocabulary if vocabulary.is_file() else None,
        "dtype": dtype_name(config_json["config"].get("dtype")),
        "preset_metadata": preset_metadata,
    }
    return config_json, config, files, metadata


def load(directory: str | os.PathLike, *, load_weights: bool = True, check_finite: bool = True) -> Checkpoint:
    """Read a native preset directory (see the module docstring); `check_finite` as in
    `bert_ref.io.checkpoints.load_preset_dir`."""
    directory = Path(directory)
    _, config, files, metadata = read_keras_layout(directory)
    meta = metadata["preset_metadata"]
    lowercase = meta.get("lowercase")
    if lowercase is not None and not isinstance(lowercase, bool):
        raise CheckpointError(
            f"{directory / METADATA_FILE}: field 'lowercase' must be true, false or null, got {lowercase!r}"
        )
    metadata["lowercase"] = lowercase
    metadata["source"] = meta.get("source") or f"bert_ref {meta.get('bert_ref_version', '?')}"
    weights = None
    if load_weights:
        weights_path = directory / WEIGHTS_FILE
        check_regular_file(weights_path, f"{directory}: native preset has no {WEIGHTS_FILE}")
        check_weight_bytes(config, [weights_path], str(directory / CONFIG_FILE))
        tensors, _ = read_safetensors(weights_path)
        weights = check_weights(config, tensors, str(weights_path), finite=check_finite)
        files.append(weights_path)
    unchecked = str(weights_path) if weights is not None and not check_finite else None
    return Checkpoint(config, weights, "native", directory, tuple(files), metadata, unchecked)


def _write_json(path: Path, obj: Any) -> None:
    atomic.write_text(path, json.dumps(obj, indent=4) + "\n")


def save_preset(
    directory: str | os.PathLike,
    config: BertConfig | Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a native preset: `config.json`, `metadata.json`, `model.safetensors` (+ vocabulary).

    Args:
        directory: created if needed; existing preset files in it are replaced.
        config: a `BertConfig` (or its `to_dict()`).
        weights: canonical name -> array; names and shapes are checked against `config` before
            anything is written. Each array is stored in its own dtype (no conversion).
        metadata: optional `lowercase` (bool), `source` (str), `dtype` (the policy name to record
            in `config.json`, as keras-hub does), `vocabulary` (a path to a one-token-per-line
            file, or a sequence of tokens; written to `assets/tokenizer/vocabulary.txt`), and the
            tokenizer's `strip_accents` and `special_tokens_in_strings` (bools). With a vocabulary
            and `lowercase`, `metadata.json` states the tokenizer's three settings in its
            "tokenizer" object (what `bert_ref.text.tokenizer.preset_tokenizer_settings` reads back;
            unstated: `strip_accents` follows `lowercase`, `special_tokens_in_strings` is False),
            and a keras-hub `tokenizer.json` says the same to keras-hub.

    Returns the directory.

    Example:
        >>> save_preset("./my_bert", model.config, model.weights, metadata={"lowercase": True})
    """
    if not isinstance(config, BertConfig):
        config = BertConfig.from_dict(config)
    metadata = dict(metadata or {})
    directory = Path(directory)
    weights = check_weights(config, weights, "save_preset(weights=...)")
    lowercase = metadata.get("lowercase")
    if lowercase is not None and not isinstance(lowercase, bool):
        raise TypeError(f"metadata['lowercase'] must be a bool or None, got {lowercase!r}")
    inner: dict[str, Any] = {"name": "bert_backbone", "trainable": True}
    if metadata.get("dtype") is not None:
        inner["dtype"] = {
            "module": "keras",
            "class_name": "DTypePolicy",
            "config": {"name": str(metadata["dtype"])},
            "registered_name": None,
        }
    inner.update(config.to_dict())
    config_json = {"module": MODULE, "class_name": CLASS_NAME, "config": inner, "registered_name": REGISTERED_NAME}

    from bert_ref import __version__

    meta: dict[str, Any] = {
        "bert_ref_version": __version__,
        "parameter_count": config.count_params(),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
    }
    tokenizer_json = None
    if lowercase is not None:
        meta["lowercase"] = lowercase
        if metadata.get("vocabulary") is not None:
            settings = {"lowercase": lowercase}
            for name, default in (("strip_accents", lowercase), ("special_tokens_in_strings", False)):
                value = metadata.get(name)
                if value is not None and not isinstance(value, bool):
                    raise TypeError(f"metadata[{name!r}] must be a bool or None, got {value!r}")
                settings[name] = default if value is None else value
            meta["tokenizer"] = settings
            tokenizer_json = _keras_tokenizer_json(settings)
    if metadata.get("source") is not None:
        meta["source"] = str(metadata["source"])

    # Everything is written into a staging directory next to `directory`, then moved into place
    # (config.json last: it is what makes a directory a preset), so that a failure part-way (a full
    # disk) never leaves half a preset behind.
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_directory(directory) as stage:
        _write_preset_files(stage, weights, metadata.get("vocabulary"), meta, config_json)
        if tokenizer_json is not None:
            _write_json(stage / TOKENIZER_FILE, tokenizer_json)
        if directory.exists():
            for name in (VOCABULARY_FILE, TOKENIZER_FILE, WEIGHTS_FILE, METADATA_FILE, CONFIG_FILE):
                if (stage / name).exists():
                    (directory / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(stage / name, directory / name)
    return directory


def _keras_tokenizer_json(settings: Mapping[str, bool]) -> dict[str, Any]:
    """keras-hub's `tokenizer.json` for a `BertTokenizer` with these settings."""
    return {"module": "keras_hub.src.models.bert.bert_tokenizer", "class_name": "BertTokenizer",
            "config": {"name": "bert_tokenizer", "trainable": True, "config_file": TOKENIZER_FILE,
                       "vocabulary": None, "sequence_length": None, "lowercase": settings["lowercase"],
                       "strip_accents": settings["strip_accents"], "split": True, "suffix_indicator": "##",
                       "oov_token": "[UNK]", "special_tokens": None,
                       "special_tokens_in_strings": settings["special_tokens_in_strings"]},
            "registered_name": "keras_hub>BertTokenizer"}


def _write_preset_files(stage: Path, weights: Mapping[str, np.ndarray], vocabulary: Any,
                        meta: Mapping[str, Any], config_json: Mapping[str, Any]) -> None:
    if vocabulary is not None:
        target = stage / VOCABULARY_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(vocabulary, (str, os.PathLike)):
            atomic.write_bytes(target, Path(vocabulary).read_bytes())
        elif isinstance(vocabulary, Sequence):
            tokens = list(vocabulary)
            bad = [i for i, t in enumerate(tokens) if not isinstance(t, str) or "\n" in t]
            if bad:
                raise ValueError(f"metadata['vocabulary'][{bad[0]}] must be a string without newlines, got "
                                 f"{tokens[bad[0]]!r}")
            atomic.write_text(target, "".join(t + "\n" for t in tokens))
        else:
            raise TypeError("metadata['vocabulary'] must be a path or a sequence of tokens, got "
                            f"{type(vocabulary).__name__}")

    write_safetensors(stage / WEIGHTS_FILE, weights, {"format": "np"})
    _write_json(stage / METADATA_FILE, meta)
    _write_json(stage / CONFIG_FILE, config_json)
