"""Hostile and damaged keras `model.weights.h5` files: every byte of a weight comes from the file
itself, and a damaged file is a `CheckpointError` naming it, never an h5py traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from needs import need

h5py = need("h5py", 'pip install "bert-ref[keras]"')

from bert_ref.io.checkpoints import CheckpointError, load_preset_dir  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "keras_preset" / "tiny" / "preset"
TARGET = "layers/reversible_embedding/vars/0"  # token_embedding/embeddings


@pytest.fixture
def preset(tmp_path) -> Path:
    shutil.copytree(GOLDEN, tmp_path / "preset")
    return tmp_path / "preset"


def _shape_dtype(preset: Path):
    with h5py.File(preset / "model.weights.h5", "r") as f:
        return f[TARGET].shape, f[TARGET].dtype


def _secret(tmp_path: Path, nbytes: int) -> Path:
    """A local file the preset must not be able to read (stands in for /etc/...)."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * (nbytes // 256 + 1))
    return secret


def _replace(preset: Path, make) -> None:
    with h5py.File(preset / "model.weights.h5", "a") as f:
        del f[TARGET]
        make(f)


def _refused(preset: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as e:
        load_preset_dir(preset)
    message = str(e.value)
    assert "model.weights.h5" in message and TARGET in message, message
    for w in words:
        assert w in message, message
    return message


def test_external_storage_is_refused(preset, tmp_path):
    shape, dtype = _shape_dtype(preset)
    secret = _secret(tmp_path, int(np.prod(shape)) * dtype.itemsize)
    _replace(preset, lambda f: f.create_dataset(TARGET, shape, dtype,
                                                external=[(str(secret), 0, int(np.prod(shape)) * dtype.itemsize)]))
    _refused(preset, "external storage", str(secret))


def test_virtual_dataset_is_refused(preset, tmp_path):
    shape, dtype = _shape_dtype(preset)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["data"] = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[...] = h5py.VirtualSource(str(other), "data", shape=shape)
    _replace(preset, lambda f: f.create_virtual_dataset(TARGET, layout))
    _refused(preset, "virtual dataset")


def test_external_link_is_refused(preset, tmp_path):
    shape, dtype = _shape_dtype(preset)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["data"] = np.arange(np.prod(shape), dtype=dtype).reshape(shape)

    def link(f):
        f[TARGET] = h5py.ExternalLink(str(other), "/data")

    _replace(preset, link)
    _refused(preset, "external link", "other.h5")


@pytest.mark.parametrize("options", [dict(compression="lzf"), dict(scaleoffset=3)], ids=["lzf", "scaleoffset"])
def test_filters_keras_does_not_write_are_refused(preset, options):
    with h5py.File(preset / "model.weights.h5", "r") as f:
        values = f[TARGET][()]
    _replace(preset, lambda f: f.create_dataset(TARGET, data=values, chunks=True, **options))
    _refused(preset, "HDF5 filter")


def test_gzip_and_shuffle_chunked_datasets_still_load(preset):
    with h5py.File(preset / "model.weights.h5", "r") as f:
        values = f[TARGET][()]
    _replace(preset, lambda f: f.create_dataset(TARGET, data=values, compression="gzip", shuffle=True))
    assert np.array_equal(load_preset_dir(preset).weights["token_embedding/embeddings"], values)


def test_damaged_files_raise_a_checkpoint_error_naming_the_file(preset):
    # Flipping one byte at a time across the whole file (every 331st byte: ~500 files) must give
    # a good load (the byte was data) or a CheckpointError naming the file; before, some positions
    # raised h5py's RuntimeError (wrapped as SystemError) or ValueError ("Insufficient precision").
    path = preset / "model.weights.h5"
    original = path.read_bytes()
    outcomes = {"loaded": 0, "refused": 0}
    for pos in range(0, len(original), 331):
        damaged = bytearray(original)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            load_preset_dir(preset)
            outcomes["loaded"] += 1
        except CheckpointError as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
