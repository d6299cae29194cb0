"""Which files a preset needs, decided from its `config.json` (never from its name).

The checkpoint readers (`bert_ref.io.checkpoints`) say what they read, so the hub fetches exactly that:
`format_of_config` tells the layout from config.json ("keras", "native" or "huggingface"), the
reader's `required_files(config)` lists the files it cannot do without, and its `OPTIONAL_FILES`
those worth fetching when present (tokenizer, metadata). A Hugging Face repository without
`model.safetensors` may be sharded: then `model.safetensors.index.json` and the shards named by
`huggingface.shard_files(index)` are fetched instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from bert_ref.io import checkpoints
from bert_ref.io.checkpoints import huggingface as hf_reader
from bert_ref.io.hub.archive import safe_relpath


class Source(Protocol):
    """Where preset files come from: a remote repository, or a directory being checked."""

    def get(self, name: str, *, required: bool) -> object | None:
        """Make `name` available; None if absent and not required (raise if required)."""

    def read_json(self, name: str) -> dict:
        """The parsed JSON object of a file already obtained with `get`."""

    def describe(self, name: str) -> str:
        """Where `name` is (a URL or a path), for error messages."""

    def missing(self, message: str) -> Exception:
        """The exception to raise when a required file is absent."""


def _checked(names: Iterable[object], where: str) -> list[str]:
    # Names from a remote index become paths on our disk: they must stay inside the preset.
    return [safe_relpath(str(n), where).as_posix() for n in names]


def gather(source: Source) -> tuple[str, list[str]]:
    """Obtain config.json and every file its layout needs from `source`.

    Returns (format, names of the files obtained). A config that is not a supported BERT raises
    `CheckpointError` (a ValueError) before anything else is fetched; required files that are
    absent raise `source.missing(...)` (or the source's own not-found error); optional ones are
    skipped.
    """
    source.get(hf_reader.CONFIG_FILE, required=True)
    config = source.read_json(hf_reader.CONFIG_FILE)
    where = source.describe(hf_reader.CONFIG_FILE)
    fmt = checkpoints.format_of_config(config, where)
    reader = {"huggingface": hf_reader, "keras": checkpoints.keras,
              "native": checkpoints.native}[fmt]
    got = [hf_reader.CONFIG_FILE]
    for name in _checked(reader.required_files(config), where):
        if name in got:
            continue
        if fmt == "huggingface" and name == hf_reader.WEIGHTS_FILE:
            got.extend(_hf_weights(source, config))
        elif source.get(name, required=True) is not None:
            got.append(name)
    for name in _checked(getattr(reader, "OPTIONAL_FILES", ()), where):
        if name not in got and source.get(name, required=False) is not None:
            got.append(name)
    return fmt, got


def _hf_weights(source: Source, config: dict) -> list[str]:
    weights = hf_reader.WEIGHTS_FILE
    if source.get(weights, required=False) is not None:
        return [weights]
    (index,) = hf_reader.required_files(config, sharded=True)
    if source.get(index, required=False) is None:
        raise source.missing(
            f"neither {source.describe(weights)} nor {index} exists: bert_ref reads safetensors "
            "checkpoints only and never unpickles pytorch_model.bin; convert the checkpoint to "
            "safetensors or choose a revision that has model.safetensors")
    where = source.describe(index)
    shards = _checked(hf_reader.shard_files(source.read_json(index), where), where)
    for name in shards:
        source.get(name, required=True)
    return [index, *shards]
