"""Hugging Face transformers' BERT layout: `config.json` (`model_type: "bert"`) + safetensors.

Weights come from `model.safetensors`, or from the shards listed in `model.safetensors.index.json`.
Names are mapped to the canonical ones:

    embeddings.word_embeddings.weight              -> token_embedding/embeddings
    embeddings.position_embeddings.weight          -> position_embedding/embeddings
    embeddings.token_type_embeddings.weight        -> segment_embedding/embeddings
    embeddings.LayerNorm.{weight,bias}             -> embeddings_layer_norm/{gamma,beta}
    encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}
                          -> transformer_layer_{i}/self_attention_layer/{query,key,value}/{kernel,bias}
    encoder.layer.{i}.attention.output.dense       -> .../self_attention_layer/attention_output
    encoder.layer.{i}.attention.output.LayerNorm   -> transformer_layer_{i}/self_attention_layer_norm
    encoder.layer.{i}.intermediate.dense           -> transformer_layer_{i}/feedforward_intermediate_dense
    encoder.layer.{i}.output.dense                 -> transformer_layer_{i}/feedforward_output_dense
    encoder.layer.{i}.output.LayerNorm             -> transformer_layer_{i}/feedforward_layer_norm
    pooler.dense                                   -> pooled_dense

- A `bert.` prefix (BertForPreTraining, BertForMaskedLM, ... checkpoints) is stripped; tensors outside
  the encoder body (`cls.*`, `classifier.*`, `qa_outputs.*`, ...) are ignored and listed in a
  `logging.debug` message and in `metadata["ignored_tensors"]`.
- LayerNorm parameters may be named `weight`/`bias` or (older checkpoints) `gamma`/`beta`.
- torch `Linear` stores `weight` as `(out, in)`; the canonical kernel is its transpose — a
  transposed *view* of the memory-mapped file, not a copy.
- The pooler is required: keras-hub's BertBackbone always has one. Checkpoints saved without it
  (`add_pooling_layer=False`) are rejected rather than given made-up pooler weights.
- `pytorch_model.bin` (a pickle) is never read; convert such checkpoints to safetensors first.

Config: `vocab_size`, `num_hidden_layers`, `num_attention_heads`, `hidden_size`,
`intermediate_size` are required; `max_position_embeddings` (512), `type_vocab_size` (2),
`layer_norm_eps` (1e-12), `hidden_act` ("gelu"), `hidden_dropout_prob` (0.1) default as in
transformers. `hidden_act`: "gelu" is the exact erf form; "gelu_new" and "gelu_pytorch_tanh" the
tanh approximation.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from bert_ref.io.checkpoints.base import (
    Checkpoint,
    CheckpointError,
    check_field,
    check_regular_file,
    check_weight_bytes,
    check_weights,
    list_names,
    not_a_regular_file,
    read_config,
    read_json,
)
from bert_ref.io.checkpoints.safetensors_io import read_safetensors
from bert_ref.model.config import BertConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
VOCABULARY_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

#: Files worth fetching when present; their absence does not stop the encoder from loading.
OPTIONAL_FILES = (VOCABULARY_FILE, TOKENIZER_CONFIG_FILE, "special_tokens_map.json", "tokenizer.json")

HIDDEN_ACT = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate"}

_BODY = ("embeddings", "encoder", "pooler")
# Buffers transformers saves alongside the weights; not parameters.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_LN = {"weight": "gamma", "gamma": "gamma", "bias": "beta", "beta": "beta"}
_LINEAR = {"weight": "kernel", "bias": "bias"}
_LAYER_MODULES = {
    "attention.self.query": ("self_attention_layer/query", _LINEAR),
    "attention.self.key": ("self_attention_layer/key", _LINEAR),
    "attention.self.value": ("self_attention_layer/value", _LINEAR),
    "attention.output.dense": ("self_attention_layer/attention_output", _LINEAR),
    "attention.output.LayerNorm": ("self_attention_layer_norm", _LN),
    "intermediate.dense": ("feedforward_intermediate_dense", _LINEAR),
    "output.dense": ("feedforward_output_dense", _LINEAR),
    "output.LayerNorm": ("feedforward_layer_norm", _LN),
}
_TOP_MODULES = {
    "embeddings.word_embeddings": ("token_embedding", {"weight": "embeddings"}),
    "embeddings.position_embeddings": ("position_embedding", {"weight": "embeddings"}),
    "embeddings.token_type_embeddings": ("segment_embedding", {"weight": "embeddings"}),
    "embeddings.LayerNorm": ("embeddings_layer_norm", _LN),
    "pooler.dense": ("pooled_dense", _LINEAR),
}
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(\w+)$")


def is_huggingface_config(config_json: Any) -> bool:
    return isinstance(config_json, Mapping) and "model_type" in config_json


def required_files(config_json: Mapping[str, Any], *, sharded: bool = False) -> list[str]:
    """Files a Hugging Face BERT repo needs besides `config.json`: its weights.

    That is `model.safetensors`, or, for a sharded checkpoint (`sharded=True`, e.g. when
    `model.safetensors` is absent), `model.safetensors.index.json` — then fetch the index and ask
    `shard_files(index_json)` for the shards. The tokenizer's files (`OPTIONAL_FILES`: vocab.txt,
    tokenizer_config.json) are worth fetching when present; a repo without them still loads.
    A config that is not a supported BERT fails here, before any download.
    """
    config_from_json(config_json, CONFIG_FILE)
    return [INDEX_FILE if sharded else WEIGHTS_FILE]


def shard_files(index_json: Mapping[str, Any], source: str = INDEX_FILE) -> list[str]:
    """The shard file names of a `model.safetensors.index.json`, sorted; each a plain file name."""
    weight_map = index_json.get("weight_map") if isinstance(index_json, Mapping) else None
    if not isinstance(weight_map, Mapping) or not weight_map:
        raise CheckpointError(f"{source}: expected a non-empty 'weight_map' object (tensor name -> shard file)")
    shards = set()
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{source}: weight_map[{tensor!r}] must be a file name, got {shard!r}")
        pure = PurePosixPath(shard)
        if pure.is_absolute() or "\\" in shard or len(pure.parts) != 1 or shard in (".", ".."):
            raise CheckpointError(
                f"{source}: weight_map[{tensor!r}] = {shard!r} is not a plain file name in the checkpoint directory"
            )
        shards.add(shard)
    return sorted(shards)


def config_from_json(config_json: Any, source: str) -> BertConfig:
    """The `BertConfig` of a transformers BERT `config.json`."""
    if not isinstance(config_json, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(config_json).__name__}")
    model_type = config_json.get("model_type")
    if model_type != "bert":
        raise CheckpointError(f"{source}: model_type is {model_type!r}; only 'bert' is supported")
    c = config_json
    hidden = check_field(source, c, "hidden_size", int, minimum=1)
    heads = check_field(source, c, "num_attention_heads", int, minimum=1)
    if hidden % heads:
        raise CheckpointError(
            f"{source}: hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads})"
        )
    act = check_field(source, c, "hidden_act", str, "gelu")
    if act not in HIDDEN_ACT:
        raise CheckpointError(
            f"{source}: hidden_act {act!r} is not supported; supported: {sorted(HIDDEN_ACT)} "
            "('gelu' is the exact erf GELU, the others its tanh approximation)"
        )
    position_type = check_field(source, c, "position_embedding_type", str, "absolute")
    if position_type != "absolute":
        raise CheckpointError(
            f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')"
        )
    if check_field(source, c, "is_decoder", bool, False):
        raise CheckpointError(f"{source}: is_decoder is true; only the bidirectional encoder is supported")
    dropout = check_field(source, c, "hidden_dropout_prob", float, 0.1)
    try:
        return BertConfig(
            vocabulary_size=check_field(source, c, "vocab_size", int, minimum=1),
            num_layers=check_field(source, c, "num_hidden_layers", int, minimum=0),
            num_heads=heads,
            hidden_dim=hidden,
            intermediate_dim=check_field(source, c, "intermediate_size", int, minimum=1),
            dropout=dropout,
            max_sequence_length=check_field(source, c, "max_position_embeddings", int, 512, minimum=1),
            num_segments=check_field(source, c, "type_vocab_size", int, 2, minimum=1),
            activation=HIDDEN_ACT[act],
            layer_norm_epsilon=check_field(source, c, "layer_norm_eps", float, 1e-12),
        )
    except CheckpointError:
        raise  # already names the file and the field
    except (TypeError, ValueError) as e:
        message = str(e)
        for ours, theirs in _HF_FIELD_NAMES.items():  # name the field as config.json spells it
            if re.match(rf"{ours}\b", message):
                message = f"field {theirs!r}: {message}"
                break
        raise CheckpointError(f"{source}: {message}") from None


_HF_FIELD_NAMES = {
    "vocabulary_size": "vocab_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
    "hidden_dim": "hidden_size", "intermediate_dim": "intermediate_size", "dropout": "hidden_dropout_prob",
    "max_sequence_length": "max_position_embeddings", "num_segments": "type_vocab_size",
    "layer_norm_epsilon": "layer_norm_eps",
}


def canonical_name(name: str) -> tuple[str, bool] | None:
    """Map a prefix-free HF tensor name to `(canonical name, needs transpose)`; None if unknown."""
    m = _LAYER_RE.match(name)
    if m:
        index, module, param = m.groups()
        entry = _LAYER_MODULES.get(module)
        if entry is None or param not in entry[1]:
            return None
        target = entry[1][param]
        return f"transformer_layer_{int(index)}/{entry[0]}/{target}", target == "kernel"
    module, _, param = name.rpartition(".")
    entry = _TOP_MODULES.get(module)
    if entry is None or param not in entry[1]:
        return None
    target = entry[1][param]
    return f"{entry[0]}/{target}", target == "kernel"


def _read_tokenizer_metadata(directory: Path, files: list[Path]) -> dict[str, Any]:
    lowercase = None
    tokenizer_config = directory / TOKENIZER_CONFIG_FILE
    if tokenizer_config.is_file():
        tc = read_json(tokenizer_config)
        if isinstance(tc, Mapping) and "do_lower_case" in tc:
            lowercase = tc["do_lower_case"]
            if not isinstance(lowercase, bool):
                raise CheckpointError(f"{tokenizer_config}: do_lower_case must be true or false, got {lowercase!r}")
        files.append(tokenizer_config)
    vocabulary = directory / VOCABULARY_FILE
    return {"lowercase": lowercase, "vocabulary": vocabulary if vocabulary.is_file() else None}


def _read_tensors(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Path], list[Path]]:
    """name -> array (memory-mapped), name -> file it came from, files read."""
    single, index = directory / WEIGHTS_FILE, directory / INDEX_FILE
    for path in (single, index):
        why = not_a_regular_file(path)
        if why is not None:
            raise CheckpointError(why)
    if single.is_file():
        tensors, _ = read_safetensors(single)
        return tensors, {k: single for k in tensors}, [single]
    if index.is_file():
        index_json = read_json(index)
        shards = shard_files(index_json, str(index))
        tensors = {}
        origin: dict[str, Path] = {}
        for shard in shards:
            path = directory / shard
            check_regular_file(path, f"{index}: shard {shard!r} is listed but {path} does not exist")
            part, _ = read_safetensors(path)
            for k, v in part.items():
                if k in tensors:
                    raise CheckpointError(f"{path}: tensor {k!r} is also in {origin[k]}")
                tensors[k] = v
                origin[k] = path
        for k, shard in index_json["weight_map"].items():
            if k not in tensors:
                raise CheckpointError(f"{index}: tensor {k!r} is listed in {shard!r} but that shard does not hold it")
            if origin[k].name != shard:
                raise CheckpointError(f"{index}: tensor {k!r} is listed in {shard!r} but found in {origin[k].name}")
        return tensors, origin, [index] + [directory / s for s in shards]
    pickles = [p for p in PICKLE_FILES if (directory / p).is_file()]
    if pickles:
        raise CheckpointError(
            f"{directory}: only {pickles[0]} (a PyTorch pickle) was found; bert_ref reads only safetensors "
            "and never unpickles. Convert it once, e.g. in Python with transformers installed: "
            "`BertModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`, "
            "which writes model.safetensors"
        )
    raise CheckpointError(f"{directory}: no weights found: looked for {WEIGHTS_FILE} and {INDEX_FILE}")


def load(directory: str | os.PathLike, *, load_weights: bool = True, check_finite: bool = True) -> Checkpoint:
    """Read a Hugging Face BERT directory (see the module docstring); `check_finite` as in
    `bert_ref.io.checkpoints.load_preset_dir`."""
    directory = Path(directory)
    config_json, config, config_path = read_config(directory, config_from_json)
    files = [config_path]
    metadata = _read_tokenizer_metadata(directory, files)
    metadata["source"] = "transformers " + str(config_json.get("transformers_version", "?"))
    metadata["dtype"] = config_json.get("torch_dtype") or config_json.get("dtype")
    weights = None
    unchecked = None
    if load_weights:
        tensors, origin, weight_files = _read_tensors(directory)
        check_weight_bytes(config, [f for f in weight_files if f.suffix == ".safetensors"], str(config_path))
        files.extend(weight_files)
        prefixed = any(k.startswith("bert.") for k in tensors)
        mapped: dict[str, np.ndarray] = {}
        stored: dict[str, str] = {}
        ignored: list[str] = []
        for key, array in tensors.items():
            if prefixed:
                if not key.startswith("bert."):
                    ignored.append(key)
                    continue
                name = key[len("bert."):]
            else:
                name = key
            if name.split(".", 1)[0] not in _BODY:
                ignored.append(key)
                continue
            if name in _BUFFERS:
                ignored.append(key)
                continue
            target = canonical_name(name)
            if target is None:
                raise CheckpointError(f"{origin[key]}: unexpected tensor {key!r}: not part of a BERT encoder")
            canonical, transpose = target
            if canonical in mapped:
                raise CheckpointError(
                    f"{origin[key]}: tensor {key!r} maps to {canonical!r}, which {stored[canonical]!r} already gave"
                )
            if transpose:
                if array.ndim != 2:
                    raise CheckpointError(
                        f"{origin[key]}: tensor {key!r} has shape {array.shape}, expected a 2-D (out, in) Linear weight"
                    )
                array = array.T
            mapped[canonical] = array
            stored[canonical] = key
        if ignored:
            logger.debug("%s: ignored %d tensor(s) outside the BERT encoder: %s", directory, len(ignored), ignored)
        metadata["ignored_tensors"] = ignored
        where = str(weight_files[0]) if len(weight_files) == 1 else f"{directory} (sharded)"
        _explain_pooler(config, mapped, where)
        _check_in_file_terms(config, mapped, stored, origin, where, prefix="bert." if prefixed else "")
        weights = check_weights(config, mapped, where, finite=check_finite)
        unchecked = None if check_finite else where
    return Checkpoint(config, weights, "huggingface", directory, tuple(files), metadata, unchecked)


def _check_in_file_terms(
    config: BertConfig, mapped: Mapping[str, np.ndarray], stored: Mapping[str, str], origin: Mapping[str, Path],
    where: str, *, prefix: str,
) -> None:
    """Missing, unexpected and wrongly shaped tensors, named as the file names them (each with its
    canonical name), and shapes in torch's layout: Linear weights are (out, in)."""
    expected = config.weight_shapes()
    missing = [k for k in expected if k not in mapped]
    if missing:
        hf = _hf_names(config)
        shown = list_names([f"{prefix + hf[k]!r} (canonical {k!r})" for k in missing])
        raise CheckpointError(f"{where}: missing {len(missing)} tensor(s): {shown}")
    unexpected = [k for k in mapped if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"{where}: {len(unexpected)} unexpected tensor(s) for a {config.num_layers}-layer BERT: "
            f"{list_names([repr(stored[k]) for k in unexpected])}"
        )
    for canonical, shape in expected.items():
        array = mapped[canonical]
        if tuple(array.shape) != shape:
            transposed = canonical.endswith("/kernel")
            found = tuple(reversed(array.shape)) if transposed else tuple(array.shape)
            want = tuple(reversed(shape)) if transposed else shape
            key = stored[canonical]
            raise CheckpointError(
                f"{origin[key]}: tensor {key!r} has shape {found}, expected {want}"
                + (" (torch Linear weights are (out, in))" if transposed else "")
                + f" for config.json's vocab_size={config.vocabulary_size}, hidden_size={config.hidden_dim}, "
                f"intermediate_size={config.intermediate_dim}, max_position_embeddings={config.max_sequence_length}, "
                f"type_vocab_size={config.num_segments}"
            )


def _explain_pooler(config: BertConfig, mapped: Mapping[str, np.ndarray], where: str) -> None:
    has_body = any(k.startswith("token_embedding") for k in mapped)
    if has_body and not any(k.startswith("pooled_dense/") for k in mapped):
        raise CheckpointError(
            f"{where}: missing tensors 'pooler.dense.weight' and 'pooler.dense.bias': this checkpoint was "
            "saved without a pooling layer (add_pooling_layer=False, e.g. from BertForMaskedLM); "
            "keras-hub's BertBackbone always has one, and bert_ref does not invent its weights"
        )


def _hf_names(config: BertConfig) -> dict[str, str]:
    """Canonical name -> the HF tensor name it is read from (weight/bias spelling of LayerNorm)."""
    names = {
        "token_embedding/embeddings": "embeddings.word_embeddings.weight",
        "position_embedding/embeddings": "embeddings.position_embeddings.weight",
        "segment_embedding/embeddings": "embeddings.token_type_embeddings.weight",
        "embeddings_layer_norm/gamma": "embeddings.LayerNorm.weight",
        "embeddings_layer_norm/beta": "embeddings.LayerNorm.bias",
        "pooled_dense/kernel": "pooler.dense.weight",
        "pooled_dense/bias": "pooler.dense.bias",
    }
    for i in range(config.num_layers):
        for module, (target, params) in _LAYER_MODULES.items():
            for param in ("weight", "bias"):
                names[f"transformer_layer_{i}/{target}/{params[param]}"] = f"encoder.layer.{i}.{module}.{param}"
    return names
