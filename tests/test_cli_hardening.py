"""Hostile or careless use of the `bert-ref` command: every failure is exit 2 with one line naming
the file and field (never a traceback), nothing half-written is left, and a closed pipe is quiet.
Each command runs for real in a subprocess (`python -m bert_ref`)."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from bert_ref import BertBackbone

from test_cli import assert_usage_error, cli

SMALL = dict(vocabulary_size=60, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "a", "##a"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard")
    BertBackbone(**SMALL, seed=0).save_to_preset(d / "tiny")
    np.savez(d / "in.npz", token_ids=np.array([[2, 7, 9, 3]], np.int32))
    return d


def _fsize_limited(limit: int):
    """A child whose writes past `limit` bytes per file fail with EFBIG, as on a full disk."""
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _run_limited(env, limit, *args):
    return subprocess.run([sys.executable, "-m", "bert_ref", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, preexec_fn=_fsize_limited(limit))


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".part")


# -- a closed pipe --------------------------------------------------------------------------------

def test_a_closed_stdout_ends_quietly(env):
    # Before: exit 2 and "bert-ref presets: error: [Errno 32] Broken pipe".
    p = subprocess.Popen([sys.executable, "-m", "bert_ref", "presets"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read()
    p.stderr.close()
    assert p.wait(timeout=60) == 141 and err == b""


# -- arguments ------------------------------------------------------------------------------------

def test_options_may_come_between_the_preset_and_the_texts(env, tmp_path):
    # Before: "unrecognized arguments: text".
    (tmp_path / "p").mkdir()
    BertBackbone(**dict(SMALL, vocabulary_size=len(VOCAB)), seed=0).save_to_preset(tmp_path / "p")
    (tmp_path / "p" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    from bert_ref.io.checkpoints import load_preset_dir
    from bert_ref.io.checkpoints.native import save_preset

    ckpt = load_preset_dir(tmp_path / "p")
    save_preset(tmp_path / "q", ckpt.config, ckpt.weights, metadata={"vocabulary": VOCAB, "lowercase": True})
    r = cli(env, "tokenize", tmp_path / "q", "--sequence-length", "6", "hello worlds")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["tokens"] == ["hello", "world", "##s"] and record["token_ids"] == [2, 5, 6, 7, 3, 0]


def test_an_absurd_sequence_length_is_refused(env, tmp_path):
    from bert_ref.io.checkpoints.native import save_preset

    save_preset(tmp_path / "q", BertBackbone(**dict(SMALL, vocabulary_size=len(VOCAB)), seed=0).config,
                BertBackbone(**dict(SMALL, vocabulary_size=len(VOCAB)), seed=0).weights,
                metadata={"vocabulary": VOCAB, "lowercase": True})
    r = cli(env, "tokenize", tmp_path / "q", "hello", "--sequence-length", str(10**12))
    assert_usage_error(r, "--sequence-length is 1,000,000,000,000, over the limit of 1,048,576",
                       "BERT_REF_MAX_SEQUENCE_LENGTH")


# -- inputs files ---------------------------------------------------------------------------------

def _npz_declaring(path, shape, dtype="<i8", payload=b"\0" * 64, compress=False):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        z.writestr("token_ids.npy", header.getvalue() + payload)


def test_an_npz_declaring_100_terabytes_is_refused_before_reading(env, work, tmp_path):
    # Before: MemoryError (a traceback, exit 1).
    _npz_declaring(tmp_path / "huge.npz", (1 << 22, 1 << 22))
    r = cli(env, "run", work / "tiny", "--input", tmp_path / "huge.npz", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "huge.npz", "140,737,488,355,328 bytes, over the limit of 1,073,741,824",
                       "BERT_REF_MAX_INPUT_BYTES")


def test_a_deflate_bomb_is_refused_before_inflating(env, work, tmp_path):
    # Declares 8 KiB but inflates to 64 MiB. Before, the whole member was inflated first.
    _npz_declaring(tmp_path / "bomb.npz", (1, 1024), payload=bytes(64 << 20), compress=True)
    assert (tmp_path / "bomb.npz").stat().st_size < 200_000
    r = cli(env, "run", work / "tiny", "--input", tmp_path / "bomb.npz", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "bomb.npz", "key 'token_ids' inflates to", "declares 8,192 bytes")


def test_an_npy_renamed_npz_is_named(env, work, tmp_path):
    # Before: "'numpy.ndarray' object does not support the context manager protocol".
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.int32))
    os.replace(tmp_path / "x.npy", tmp_path / "x.npz")
    r = cli(env, "run", work / "tiny", "--input", tmp_path / "x.npz", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "x.npz: not a .npz archive: it is a single .npy array")


def test_a_deep_json_inputs_file_is_named(env, work, tmp_path):
    (tmp_path / "deep.json").write_text('{"token_ids": ' + "[" * 100_000 + "]" * 100_000 + "}")
    r = cli(env, "run", work / "tiny", "--input", tmp_path / "deep.json", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "deep.json: JSON nested 100001 levels deep, over the limit of 64")


def test_a_recursion_error_is_one_line(env, work, tmp_path):
    # With the depth limit lifted, the JSON parser itself gives up: still one line, exit 2.
    (tmp_path / "deep.json").write_text('{"token_ids": ' + "[" * 100_000 + "]" * 100_000 + "}")
    r = cli(dict(env, BERT_REF_MAX_JSON_DEPTH=str(10**6)), "run", work / "tiny", "--input",
            tmp_path / "deep.json", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "nested too deeply")


def test_a_batch_whose_activations_do_not_fit_is_refused_with_the_estimate(env, work, tmp_path):
    # 4,000 x 16 positions of a 16-wide model: ~50 MB estimated, against a 10 MB limit.
    np.savez(tmp_path / "big.npz", token_ids=np.zeros((4000, 16), np.int32))
    r = cli(dict(env, BERT_REF_MAX_ACTIVATION_BYTES="10000000"), "run", work / "tiny", "--input",
            tmp_path / "big.npz", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "inputs of batch 4,000 x sequence 16 need an estimated", "GB of activations",
                       "BERT_REF_MAX_ACTIVATION_BYTES", "smaller batches")
    assert not (tmp_path / "o.npz").exists()


def test_a_memory_error_is_one_line(env, work, tmp_path):
    # The activation estimate lifted and the address space capped: numpy's MemoryError is caught.
    # Before: numpy's _ArrayMemoryError traceback, exit 1.
    np.savez(tmp_path / "big.npz", token_ids=np.zeros((300_000, 16), np.int32))

    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (1_000_000_000, 1_000_000_000))

    r = subprocess.run([sys.executable, "-m", "bert_ref", "run", str(work / "tiny"),
                        "--input", str(tmp_path / "big.npz"), "--output", str(tmp_path / "o.npz"),
                        "--attentions", "--hidden-states"],
                       capture_output=True, text=True, timeout=120, preexec_fn=preexec,
                       env=dict(env, BERT_REF_MAX_ACTIVATION_BYTES=str(10**15), OPENBLAS_NUM_THREADS="1",
                                OMP_NUM_THREADS="1"))
    assert_usage_error(r, "out of memory")


# -- nothing half-written -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".json"])
def test_a_full_disk_leaves_no_output_file(env, work, tmp_path, suffix):
    # Writes past 512 bytes fail (EFBIG, as ENOSPC on a full disk). Before: a truncated o.npz that looked
    # complete was left behind, and safetensors' own SafetensorError was a traceback.
    out = tmp_path / f"o{suffix}"
    r = _run_limited(env, 512, "run", work / "tiny", "--input", work / "in.npz", "--output", out, "--hidden-states")
    assert_usage_error(r, str(out), "cannot write", "nothing was written")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_full_disk_leaves_no_half_converted_preset(env, work, tmp_path):
    dst = tmp_path / "converted"
    r = _run_limited(env, 4096, "convert", work / "tiny", dst)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not dst.exists() and _leftovers(tmp_path) == []


# -- checkpoint files -----------------------------------------------------------------------------

def _hf_dir(d, weights_file="model.safetensors"):
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16}))
    return d


def test_a_fifo_shard_is_named_a_fifo(env, tmp_path):
    # Before: "... is listed but .../model-00001.safetensors does not exist".
    d = _hf_dir(tmp_path / "hf")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    os.mkfifo(d / "model-00001.safetensors")
    np.savez(tmp_path / "in.npz", token_ids=np.array([[1, 2]], np.int32))
    r = cli(env, "run", d, "--input", tmp_path / "in.npz", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "model-00001.safetensors is a FIFO (named pipe); a checkpoint file must be a regular file")


def test_a_link_to_dev_zero_is_named_a_device(env, tmp_path):
    d = _hf_dir(tmp_path / "hf")
    os.symlink("/dev/zero", d / "model.safetensors")
    np.savez(tmp_path / "in.npz", token_ids=np.array([[1, 2]], np.int32))
    r = cli(env, "run", d, "--input", tmp_path / "in.npz", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "model.safetensors is a device (through a symbolic link)")


def test_a_hugging_face_config_error_names_the_file_once_and_the_field_as_spelled(env, tmp_path):
    d = _hf_dir(tmp_path / "hf")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=-3)))
    r = cli(env, "info", d)
    assert_usage_error(r, "config field 'intermediate_size' must be >= 1, got -3")
    assert r.stderr.count(str(d / "config.json")) == 1, r.stderr
    (d / "config.json").write_text(json.dumps(dict(cfg, hidden_dropout_prob=3)))
    assert_usage_error(cli(env, "info", d), "field 'hidden_dropout_prob': dropout must be a number in [0, 1)")


def test_a_corrupt_h5_is_one_line(env, tmp_path):
    import shutil
    from pathlib import Path

    golden = Path(__file__).resolve().parents[1] / "golden" / "keras_preset" / "tiny" / "preset"
    shutil.copytree(golden, tmp_path / "p")
    data = bytearray((tmp_path / "p" / "model.weights.h5").read_bytes())
    data[37170] ^= 0xFF  # an object header: h5py raised RuntimeError inside a SystemError
    (tmp_path / "p" / "model.weights.h5").write_bytes(bytes(data))
    np.savez(tmp_path / "in.npz", token_ids=np.array([[1, 2]], np.int32))
    r = cli(env, "run", tmp_path / "p", "--input", tmp_path / "in.npz", "--output", tmp_path / "o.npz")
    assert_usage_error(r, "model.weights.h5: cannot be read as HDF5", "the file is corrupt")
