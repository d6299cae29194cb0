"""keras-hub presets: `config.json` + `metadata.json` + `model.weights.h5` (needs h5py).

Keras 3 does not store variables under their layer names but under paths derived from the
*classes* of the tracked layers, numbered in creation order (`transformer_encoder`,
`transformer_encoder_1`, ...), each layer's variables as `vars/0`, `vars/1`, ... in creation order.
For keras-hub's `BertBackbone` (as written by its `save_to_preset`, checked with keras 3.15 /
keras-hub 0.32) the file holds:

    layers/reversible_embedding/vars/0          token_embedding/embeddings      (vocab, hidden)
    layers/position_embedding/vars/0            position_embedding/embeddings   (max_len, hidden)
    layers/embedding/vars/0                     segment_embedding/embeddings    (segments, hidden)
    layers/layer_normalization/vars/{0,1}       embeddings_layer_norm/{gamma,beta}
    layers/dense/vars/{0,1}                     pooled_dense/{kernel,bias}
    layers/transformer_encoder{,_1,_2,...}/     transformer_layer_{0,1,2,...}/
      _self_attention_layer/{query,key,value}_dense/vars/0   .../self_attention_layer/{query,key,value}/kernel
                                                               (hidden, heads, key_dim)
      _self_attention_layer/{query,key,value}_dense/vars/1   .../bias  (heads, key_dim)
      _self_attention_layer/output_dense/vars/0              .../self_attention_layer/attention_output/kernel
                                                               (heads, key_dim, hidden)
      _self_attention_layer/output_dense/vars/1              .../self_attention_layer/attention_output/bias  (hidden,)
      _self_attention_layer_norm/vars/{0,1}                  .../self_attention_layer_norm/{gamma,beta}
      _feedforward_intermediate_dense/vars/{0,1}             .../feedforward_intermediate_dense/{kernel,bias}
      _feedforward_output_dense/vars/{0,1}                   .../feedforward_output_dense/{kernel,bias}
      _feedforward_layer_norm/vars/{0,1}                     .../feedforward_layer_norm/{gamma,beta}

The einsum kernels are flattened to the canonical 2-D `(in, out)` form row-major (a free reshape).
Each `vars` group also carries a `name` attribute with the layer's name (`transformer_layer_3`,
`pooled_dense`, ...); where present it is checked against the mapping above.

Uncompressed, unchunked datasets (what keras writes) are memory-mapped, not copied.

Every byte of a weight must come from `model.weights.h5` itself. HDF5 can take a dataset's bytes
from elsewhere: *external storage* (raw bytes of any file on the machine), *virtual datasets*
(slices of datasets in other files) and *external links* (a name that resolves into another file);
and filters other than deflate, shuffle and fletcher32 run code from plugins or change values
(scale-offset). Before any dataset is read, each of these is refused with an error naming the
dataset; only contiguous, chunked or compact layouts inside the file are read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bert_ref.io.checkpoints.base import (
    Checkpoint,
    CheckpointError,
    check_regular_file,
    check_weights,
    list_names,
    read_json,
)
from bert_ref.io.checkpoints.native import CLASS_NAME, config_from_json, read_keras_layout
from bert_ref.model.config import BertConfig

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
TOKENIZER_FILE = "tokenizer.json"
VOCABULARY_FILE = "assets/tokenizer/vocabulary.txt"

#: Files a keras-hub preset may hold besides the required ones; their absence does not stop the
#: encoder from loading (the tokenizer's files, keras-hub's metadata).
OPTIONAL_FILES = (METADATA_FILE, TOKENIZER_FILE, VOCABULARY_FILE)


def required_files(config_json: Mapping[str, Any]) -> list[str]:
    """Files a keras-hub-layout preset needs besides `config.json`: its weights file.

    keras-hub writes `model.weights.h5`; a preset written by bert_ref's `save_preset` (same
    `config.json` layout, recognised by its `activation` field) has `model.safetensors` instead.
    See `OPTIONAL_FILES` for the files worth fetching when present.
    """
    config_from_json(config_json, CONFIG_FILE)
    from bert_ref.io.checkpoints import native

    return [native.WEIGHTS_FILE if native.is_native_config(config_json) else WEIGHTS_FILE]


def _require_h5py() -> ModuleType:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            'reading keras-hub presets (model.weights.h5) needs h5py: pip install "bert-ref[keras]"'
        ) from None
    return h5py


# (h5 path relative to the layer group, canonical suffix, layer name in the `vars` name attribute)
_TOP = (
    ("layers/reversible_embedding/vars/0", "token_embedding/embeddings", "token_embedding"),
    ("layers/position_embedding/vars/0", "position_embedding/embeddings", "position_embedding"),
    ("layers/embedding/vars/0", "segment_embedding/embeddings", "segment_embedding"),
    ("layers/layer_normalization/vars/0", "embeddings_layer_norm/gamma", "embeddings_layer_norm"),
    ("layers/layer_normalization/vars/1", "embeddings_layer_norm/beta", "embeddings_layer_norm"),
    ("layers/dense/vars/0", "pooled_dense/kernel", "pooled_dense"),
    ("layers/dense/vars/1", "pooled_dense/bias", "pooled_dense"),
)
_LAYER = (
    ("_self_attention_layer/query_dense/vars/0", "self_attention_layer/query/kernel", "query"),
    ("_self_attention_layer/query_dense/vars/1", "self_attention_layer/query/bias", "query"),
    ("_self_attention_layer/key_dense/vars/0", "self_attention_layer/key/kernel", "key"),
    ("_self_attention_layer/key_dense/vars/1", "self_attention_layer/key/bias", "key"),
    ("_self_attention_layer/value_dense/vars/0", "self_attention_layer/value/kernel", "value"),
    ("_self_attention_layer/value_dense/vars/1", "self_attention_layer/value/bias", "value"),
    ("_self_attention_layer/output_dense/vars/0", "self_attention_layer/attention_output/kernel", "attention_output"),
    ("_self_attention_layer/output_dense/vars/1", "self_attention_layer/attention_output/bias", "attention_output"),
    ("_self_attention_layer_norm/vars/0", "self_attention_layer_norm/gamma", "self_attention_layer_norm"),
    ("_self_attention_layer_norm/vars/1", "self_attention_layer_norm/beta", "self_attention_layer_norm"),
    ("_feedforward_intermediate_dense/vars/0", "feedforward_intermediate_dense/kernel",
     "feedforward_intermediate_dense"),
    ("_feedforward_intermediate_dense/vars/1", "feedforward_intermediate_dense/bias",
     "feedforward_intermediate_dense"),
    ("_feedforward_output_dense/vars/0", "feedforward_output_dense/kernel", "feedforward_output_dense"),
    ("_feedforward_output_dense/vars/1", "feedforward_output_dense/bias", "feedforward_output_dense"),
    ("_feedforward_layer_norm/vars/0", "feedforward_layer_norm/gamma", "feedforward_layer_norm"),
    ("_feedforward_layer_norm/vars/1", "feedforward_layer_norm/beta", "feedforward_layer_norm"),
)
_ENCODER_RE = re.compile(r"transformer_encoder(?:_(\d+))?$")


def h5_paths(config: BertConfig) -> dict[str, str]:
    """Canonical name -> the dataset path keras-hub's `save_to_preset` writes it under."""
    paths = {canonical: h5 for h5, canonical, _ in _TOP}
    for i in range(config.num_layers):
        group = "layers/transformer_encoder" + (f"_{i}" if i else "")
        for h5, suffix, _ in _LAYER:
            paths[f"transformer_layer_{i}/{suffix}"] = f"{group}/{h5}"
    order = config.weight_shapes()
    return {name: paths[name] for name in order}


def _keras_shape(config: BertConfig, canonical: str) -> tuple[int, ...]:
    """The shape keras-hub stores `canonical` with (einsum kernels keep their head axes)."""
    shape = config.weight_shapes()[canonical]
    heads, key_dim, hidden = config.num_heads, config.key_dim, config.hidden_dim
    if re.search(r"self_attention_layer/(query|key|value)/kernel$", canonical):
        return (hidden, heads, key_dim)
    if re.search(r"self_attention_layer/(query|key|value)/bias$", canonical):
        return (heads, key_dim)
    if canonical.endswith("attention_output/kernel"):
        return (heads, key_dim, hidden)
    return shape


def _datasets(h5file: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if obj.__class__.__name__ == "Dataset":
            found[name] = obj

    h5file.visititems(visit)
    return found


def _view(dataset: Any, mm: np.ndarray | None) -> np.ndarray:
    """A read-only memory-mapped view of `dataset` when it is stored contiguously, else a copy."""
    dtype = dataset.dtype
    offset = dataset.id.get_offset() if mm is not None else None
    if (
        mm is not None
        and offset is not None
        and dataset.chunks is None
        and dataset.compression is None
        and dtype.kind == "f"
        and offset + dataset.size * dtype.itemsize <= mm.size
    ):
        array = np.frombuffer(mm, dtype=dtype, count=dataset.size, offset=offset).reshape(dataset.shape)
    else:
        array = dataset[()]
    array = np.asarray(array)
    array.flags.writeable = False
    return array


# HDF5 filter ids a keras-written (or h5py-rewritten) weights file may use: deflate, shuffle,
# fletcher32. Anything else (szip, lzf, scale-offset, n-bit, plugins) is refused.
_ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32"}


def _check_storage(h5py: ModuleType, h5file: Any, weights_path: Path) -> None:
    """Refuse external links, external storage, virtual datasets and unneeded filters, anywhere in
    the file, before anything is read (see the module docstring)."""
    bad: list[str] = []

    def visit_link(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            bad.append(f"{name!r} is an external link to {link.filename!r}:{link.path!r}; "
                       "weights must be stored inside the file")
        return None

    h5file.visititems_links(visit_link)
    if bad:
        raise CheckpointError(f"{weights_path}: {bad[0]}")
    layouts = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked", h5py.h5d.COMPACT: "compact"}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or bad:
            return None
        plist = obj.id.get_create_plist()
        layout = plist.get_layout()
        if layout == getattr(h5py.h5d, "VIRTUAL", -1):
            bad.append(f"dataset {name!r} is a virtual dataset (its bytes come from other files); "
                       "weights must be stored inside the file")
        elif layout not in layouts:
            bad.append(f"dataset {name!r} has HDF5 layout {layout}; expected one of {sorted(layouts.values())}")
        elif plist.get_external_count():
            source = plist.get_external(0)[0]
            source = source.decode(errors="replace") if isinstance(source, bytes) else source
            bad.append(f"dataset {name!r} uses external storage (its bytes come from {source!r}); "
                       "weights must be stored inside the file")
        else:
            for i in range(plist.get_nfilters()):
                code, _, _, fname = plist.get_filter(i)
                if code not in _ALLOWED_FILTERS:
                    fname = fname.decode(errors="replace") if isinstance(fname, bytes) else fname
                    bad.append(f"dataset {name!r} uses HDF5 filter {code} ({fname}); allowed filters: "
                               f"{', '.join(_ALLOWED_FILTERS.values())}")
                    break
        return None

    h5file.visititems(visit)
    if bad:
        raise CheckpointError(f"{weights_path}: {bad[0]}")


def _check_layer_names(h5file: Any, path: str, canonical: str, layer_name: str | None) -> None:
    """Check the `name` attribute keras writes on each `vars` group, where present."""
    group = h5file.get(path.rsplit("/", 1)[0])
    attr = group.attrs.get("name") if group is not None else None
    if isinstance(attr, bytes):
        attr = attr.decode()
    if attr is not None and layer_name is not None and attr != layer_name:
        raise CheckpointError(
            f"{h5file.filename}: {path} belongs to layer {attr!r}, expected {layer_name!r} (for {canonical!r})"
        )


def _read_weights(config: BertConfig, weights_path: Path, check_finite: bool = True) -> dict[str, np.ndarray]:
    h5py = _require_h5py()
    paths = h5_paths(config)
    layer_names = {canonical: name for _, canonical, name in _TOP}
    for i in range(config.num_layers):
        for _, suffix, name in _LAYER:
            layer_names[f"transformer_layer_{i}/{suffix}"] = name
    encoder_names = {f"transformer_layer_{i}": i for i in range(config.num_layers)}
    try:
        h5file = h5py.File(weights_path, "r")
    except OSError as e:
        raise CheckpointError(
            f"{weights_path}: cannot be read as HDF5 ({e}); the file is truncated or corrupt") from None
    with h5file:
        try:
            return _read_open(h5py, h5file, config, weights_path, paths, layer_names, encoder_names,
                              check_finite)
        except CheckpointError:
            raise
        except (RuntimeError, KeyError, OSError, AttributeError, SystemError, ValueError) as e:
            # h5py's own errors on a damaged file (a broken B-tree, a dangling object header).
            text = " ".join(str(e).split()) or type(e).__name__
            raise CheckpointError(f"{weights_path}: cannot be read as HDF5 ({text}); the file is corrupt") from None


def _read_open(h5py: ModuleType, h5file: Any, config: BertConfig, weights_path: Path, paths: dict[str, str],
               layer_names: dict[str, str], encoder_names: dict[str, int],
               check_finite: bool = True) -> dict[str, np.ndarray]:
    _check_storage(h5py, h5file, weights_path)
    datasets = _datasets(h5file)
    try:
        mm = np.memmap(weights_path, dtype=np.uint8, mode="r")
    except (OSError, ValueError):
        mm = None
    weights: dict[str, np.ndarray] = {}
    for canonical, path in paths.items():
        if path not in datasets:
            raise CheckpointError(
                f"{weights_path}: missing tensor {path!r} (canonical {canonical!r}) for a "
                f"{config.num_layers}-layer BertBackbone"
            )
        dataset = datasets[path]
        expected = _keras_shape(config, canonical)
        if tuple(dataset.shape) != expected:
            raise CheckpointError(
                f"{weights_path}: tensor {path!r} (canonical {canonical!r}) has shape "
                f"{tuple(dataset.shape)}, expected {expected} from config.json"
            )
        if dataset.dtype.kind != "f":
            raise CheckpointError(
                f"{weights_path}: tensor {path!r} has dtype {dataset.dtype}, expected a floating dtype"
            )
        _check_layer_names(h5file, path, canonical, layer_names.get(canonical))
        try:
            array = _view(dataset, mm)
        except OSError as e:
            raise CheckpointError(
                f"{weights_path}: tensor {path!r} cannot be read ({e}); the file is corrupt") from None
        weights[canonical] = array.reshape(config.weight_shapes()[canonical])
    # Encoder groups carry the layer's name; a mismatch means the numbering is not what we assume.
    for group_name in h5file.get("layers", {}):
        m = _ENCODER_RE.match(group_name)
        vars_group = h5file["layers"][group_name].get("vars")
        attr = vars_group.attrs.get("name") if vars_group is not None else None
        if m and attr is not None:
            attr = attr.decode() if isinstance(attr, bytes) else attr
            index = int(m.group(1) or 0)
            if encoder_names.get(attr, index) != index:
                raise CheckpointError(
                    f"{weights_path}: layers/{group_name} is named {attr!r}, expected transformer_layer_{index}"
                )
    used = set(paths.values())
    unexpected = sorted(set(datasets) - used)
    if unexpected:
        raise CheckpointError(
            f"{weights_path}: {len(unexpected)} unexpected tensor(s) for a {config.num_layers}-layer "
            f"BertBackbone: {list_names([repr(u) for u in unexpected])}"
        )
    return check_weights(config, weights, str(weights_path), finite=check_finite)


def load(directory: str | os.PathLike, *, load_weights: bool = True, check_finite: bool = True) -> Checkpoint:
    """Read a keras-hub BERT preset directory (see the module docstring); `check_finite` as in
    `bert_ref.io.checkpoints.load_preset_dir`."""
    directory = Path(directory)
    _, config, files, metadata = read_keras_layout(directory)
    lowercase = None
    tokenizer_path = directory / TOKENIZER_FILE
    if tokenizer_path.is_file():
        tokenizer = read_json(tokenizer_path)
        files.append(tokenizer_path)
        inner = tokenizer.get("config") if isinstance(tokenizer, Mapping) else None
        if isinstance(inner, Mapping) and "lowercase" in inner:
            lowercase = inner["lowercase"]
            if not isinstance(lowercase, bool):
                raise CheckpointError(f"{tokenizer_path}: config.lowercase must be true or false, got {lowercase!r}")
    preset_metadata = metadata["preset_metadata"]
    versions = [f"{k.removesuffix('_version')} {preset_metadata[k]}" for k in ("keras_hub_version", "keras_version")
                if k in preset_metadata]
    metadata["lowercase"] = lowercase
    metadata["source"] = ", ".join(versions) if versions else "keras-hub"
    weights = None
    if load_weights:
        weights_path = directory / WEIGHTS_FILE
        check_regular_file(weights_path, f"{directory}: keras-hub preset has no {WEIGHTS_FILE}")
        weights = _read_weights(config, weights_path, check_finite)
        files.append(weights_path)
    unchecked = str(weights_path) if weights is not None and not check_finite else None
    return Checkpoint(config, weights, "keras", directory, tuple(files), metadata, unchecked)


__all__ = ["CLASS_NAME", "OPTIONAL_FILES", "h5_paths", "load", "required_files"]
