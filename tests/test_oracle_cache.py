"""The oracle cache cannot lie (bert_ref.oracle.cache): every way a stored run could be served for
the wrong run, or kill the compare, that a red-team review found, each made to happen here.

A flipped bit, a float32 run stored under the float64 truth's name, weights edited with the
modification time put back, weights changed in place through the Python API, a read-only cache with
a damaged entry, an entry truncated while in use, settings that are not numbers."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone, compare_to_truth
from bert_ref.io.checkpoints.base import CheckpointError
from bert_ref.io.checkpoints.safetensors_io import read_header
from bert_ref.oracle import cache as oracle_cache
from bert_ref.oracle.run import oracle_outputs

KEYS = ["sequence_output", "pooled_output", "hidden_states.1"]


@pytest.fixture
def model():
    return BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                        max_sequence_length=12, seed=3)


@pytest.fixture
def inputs():
    return {"token_ids": np.array([[2, 7, 9, 11, 3, 0], [2, 5, 6, 7, 8, 3]]),
            "padding_mask": np.array([[1, 1, 1, 1, 1, 0], [1] * 6])}


@pytest.fixture
def oc(tmp_path, monkeypatch):
    root = tmp_path / "oc"
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(root))
    monkeypatch.delenv("BERT_REF_ORACLE_CACHE_MB", raising=False)
    return root


def _no_forward(monkeypatch, model):
    """Any run of the model from here on is a test failure (the answer must come from the cache)."""
    def boom(*a, **k):
        raise AssertionError("ran the model")

    monkeypatch.setattr(sys.modules["bert_ref.oracle.run"], "forward", boom)
    monkeypatch.setattr(type(model), "__call__", boom)


def _entry(model, inputs, policy, keys=KEYS) -> Path:
    return oracle_cache.cache_root() / (oracle_cache.entry_key(model, inputs, policy) + oracle_cache.SUFFIX)


# -- damaged or misplaced entries ---------------------------------------------------------------------


def test_a_flipped_bit_in_an_entry_is_a_miss_and_the_entry_is_removed(oc, model, inputs):
    truth = oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)
    path = _entry(model, inputs, "float64")
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(truth["sequence_output"].tobytes())
    assert at > 0
    raw[at + 7] ^= 0x40  # an exponent bit of the first value: 5e37 or so, as np.load would call a bad CRC
    path.write_bytes(raw)
    assert oracle_cache.load(path.stem) is None and not path.exists()
    again = oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)  # recomputed, stored again
    assert all(np.array_equal(again[k], truth[k]) for k in KEYS) and path.exists()


def test_swapped_float32_and_float64_entries_are_caught(oc, model, inputs):
    truth = oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)
    ours32 = oracle_outputs(model, inputs, KEYS, dtype="float32", cache=True)
    p64, p32 = _entry(model, inputs, "float64"), _entry(model, inputs, "float32")
    os.replace(p64, oc / "swap")
    os.replace(p32, p64)
    os.replace(oc / "swap", p32)
    got = oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)
    assert all(got[k].dtype == np.float64 and np.array_equal(got[k], truth[k]) for k in KEYS)
    # The float32 candidate against the truth: its real error, not zero (the truth is not our float32 run).
    os.replace(p64, oc / "swap")
    os.replace(p32, p64)
    os.replace(oc / "swap", p32)
    report = compare_to_truth(model, inputs, ours32, cache=True)
    assert all(e.valid.max_abs_error > 0 for e in report)


# -- the weights' identity ------------------------------------------------------------------------------


def test_a_nan_written_into_the_weights_with_the_mtime_restored_is_caught(oc, model, inputs, tmp_path):
    preset = tmp_path / "preset"
    model.save_to_preset(preset)
    loaded = BertBackbone.from_preset(preset, defer_finite_check=True)
    oracle_outputs(loaded, inputs, KEYS, cache=True)
    weights_file = preset / "model.safetensors"
    header, _, start = read_header(weights_file)
    name = "transformer_layer_0/feedforward_output_dense/bias"
    assert header[name]["dtype"] == "F32"
    st = weights_file.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity, so the change time can change
    with open(weights_file, "r+b") as f:  # in place: same inode, same size
        f.seek(start + header[name]["data_offsets"][0])
        f.write(np.float32(np.nan).tobytes())
    os.utime(weights_file, ns=(st.st_atime_ns, st.st_mtime_ns))  # the modification time put back
    after = weights_file.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    edited = BertBackbone.from_preset(preset, defer_finite_check=True)
    with pytest.raises(CheckpointError, match="NaN"):  # not served from the cache: the forward's check runs
        oracle_outputs(edited, inputs, KEYS, cache=True)


def test_weights_changed_in_place_through_the_python_api_are_caught(oc, model, inputs, monkeypatch):
    w = {k: np.array(v) for k, v in model.weights.items()}  # the caller's own, writable arrays
    mine = BertBackbone(**model.config.to_dict(), weights=w)
    before = oracle_outputs(mine, inputs, KEYS, dtype="float64", cache=True)
    w["transformer_layer_1/feedforward_output_dense/kernel"] *= 2
    got = oracle_outputs(mine, inputs, KEYS, dtype="float64", cache=True)
    fresh = oracle_outputs(mine, inputs, KEYS, dtype="float64", cache=False)
    assert not np.array_equal(fresh["sequence_output"], before["sequence_output"])  # the edit does change the run
    assert all(np.array_equal(got[k], fresh[k]) for k in KEYS)
    # The same weights again are a hit.
    _no_forward(monkeypatch, mine)
    again = oracle_outputs(mine, inputs, KEYS, dtype="float64", cache=True)
    assert all(np.array_equal(again[k], fresh[k]) for k in KEYS)


# -- a read-only cache, a truncated entry ------------------------------------------------------------------


def test_a_read_only_cache_still_serves_its_good_entries_and_skips_damaged_ones(oc, model, inputs, monkeypatch):
    good = oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)
    oracle_outputs(model, inputs, KEYS, dtype="float32", cache=True)
    damaged = _entry(model, inputs, "float32")
    damaged.write_bytes(damaged.read_bytes()[:-8])
    # Read-only: what a read-only mount answers to every change under the cache directory. (The
    # tests may run as root, whom chmod does not stop, so the refusals are made here.)
    root = str(oc)

    def refuse(real):
        def call(*a, **k):
            if os.fspath(k.get("dir") or (a[0] if a else "")).startswith(root):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real(*a, **k)
        return call

    for module, name in ((os, "unlink"), (os, "utime"), (os, "replace"), (os, "rename"), (tempfile, "mkstemp")):
        monkeypatch.setattr(module, name, refuse(getattr(module, name)))
    got = oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)
    assert all(np.array_equal(got[k], good[k]) for k in KEYS)
    ours32 = oracle_outputs(model, inputs, KEYS, dtype="float32", cache=True)  # a miss, computed, not stored
    assert ours32["sequence_output"].dtype == np.float32 and damaged.exists()


def test_an_entry_truncated_while_in_use_or_before_it_is_read_does_no_harm(oc, tmp_path):
    # In a child process: a memory map of a file that another process truncates raises SIGBUS on the
    # next read of a page past the new end, which no Python code can catch.
    script = textwrap.dedent("""
        import os, sys
        import numpy as np
        from bert_ref.oracle import cache
        arrays = {"sequence_output": np.arange(2 ** 20, dtype=np.float64)}  # 8 MiB: pages past the cut
        path = cache.store("k", arrays)
        got = cache.load("k")
        os.truncate(path, 4096)  # another process cuts the entry short while it is in use
        assert got["sequence_output"].sum() == arrays["sequence_output"].sum()
        cache.store("k", arrays)
        os.truncate(path, 4096)  # ... or before it is read
        assert cache.load("k") is None and not path.exists()
        print("no harm")
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), BERT_REF_ORACLE_CACHE=str(oc))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no harm" in r.stdout, (r.returncode, r.stderr[-2000:])


# -- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-1", "nan", "lots", "1e12"])
def test_a_bad_size_limit_is_an_error_before_any_run(oc, model, inputs, monkeypatch, value):
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE_MB", value)
    _no_forward(monkeypatch, model)
    with pytest.raises(ValueError, match=rf"BERT_REF_ORACLE_CACHE_MB='{value}' is not valid: expected a number "
                                         r"of MiB from 0 to 1e\+09"):
        oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)


def test_a_cache_directory_that_is_a_file_is_an_error_before_any_run(oc, model, inputs, monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "a-file"))
    _no_forward(monkeypatch, model)
    with pytest.raises(ValueError, match=r"BERT_REF_ORACLE_CACHE='.*a-file' is not valid: expected a directory"):
        oracle_outputs(model, inputs, KEYS, dtype="float64", cache=True)


def test_the_command_checks_the_settings_before_reading_anything(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), BERT_REF_ORACLE_CACHE_MB="inf",
               BERT_REF_ORACLE_CACHE=str(tmp_path / "oc"))
    r = subprocess.run([sys.executable, "-m", "bert_ref", "compare", str(tmp_path / "no-preset"), "-i",
                        str(tmp_path / "no-in.npz"), "-c", str(tmp_path / "no-cand.npz")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "BERT_REF_ORACLE_CACHE_MB='inf' is not valid: expected a number of MiB from 0 to 1e+09" in r.stderr


def test_eviction_removes_only_the_caches_own_files(oc, monkeypatch):
    arrays = {"sequence_output": np.zeros((1, 2, 3), np.float32)}
    key = "ab" * 32
    path = oracle_cache.store(key, arrays)
    old = oc / ("cd" * 32 + ".npz")  # an entry of the format before: never read again
    old.write_bytes(b"PK")
    killed = oc / f".{key}{oracle_cache.SUFFIX}.x1y2z3w4.tmp"  # a writer killed an hour ago
    killed.write_bytes(b"half")
    os.utime(killed, (time.time() - 2 * oracle_cache.STALE_TEMP_S,) * 2)
    live = oc / f".{'ef' * 32}{oracle_cache.SUFFIX}.a1b2c3d4.tmp"  # a writer at work now
    live.write_bytes(b"in progress")
    foreign = {"notes.txt": "mine", "thesis.tmp-backup": "mine", ("0" * 64) + ".txt": "mine"}
    for name, text in foreign.items():
        (oc / name).write_text(text)
    oracle_cache.evict(10 ** 9)
    assert path.exists() and live.exists() and not old.exists() and not killed.exists()
    assert all((oc / name).read_text() == text for name, text in foreign.items())
    # A limit of 0 stores nothing and keeps nothing.
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE_MB", "0")
    assert oracle_cache.store(key, arrays) is None and not path.exists()
    assert all((oc / name).exists() for name in foreign) and live.exists()


# -- the ensemble's statistics (what a verdict needs of the ensemble, kept for the next candidate) ----


def _candidate(model, inputs, precision, keys=KEYS, scale=1.0):
    """Our own run in `precision` (a correct port), optionally scaled (a wrong one)."""
    out = oracle_outputs(model, inputs, keys, dtype=precision)
    return {k: (np.asarray(v, np.float32) * np.float32(scale)) for k, v in out.items()}


def _sides_entry(model, inputs, precision):
    from bert_ref.oracle import ensemble

    names = ",".join(m.name for m in ensemble.members(precision))
    what = f"ensemble statistics|{precision}||{names}|recipe |{oracle_cache.statistics_digest()}"
    return oracle_cache.cache_root() / (oracle_cache.entry_key(model, inputs, what) + oracle_cache.SUFFIX)


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "tf32"])
def test_a_warm_compare_reads_the_ensembles_statistics_and_runs_nothing(oc, model, inputs, monkeypatch, precision):
    good, bad = _candidate(model, inputs, precision), _candidate(model, inputs, precision, scale=1.01)
    plain = {n: compare_to_truth(model, inputs, c, precision=precision).to_dict() for n, c in
             (("good", good), ("bad", bad))}
    assert plain["good"]["passed"] and not plain["bad"]["passed"]  # the check can fail
    cold = compare_to_truth(model, inputs, good, precision=precision, cache=True).to_dict()
    assert cold == plain["good"] and _sides_entry(model, inputs, precision).exists()
    _no_forward(monkeypatch, model)  # from here on, no run of ours: the truth and the statistics are read
    monkeypatch.setattr(sys.modules["bert_ref.oracle.run"], "ensemble_outputs",
                        lambda *a, **k: pytest.fail("read the ensemble's runs"))
    for name, c in (("good", good), ("bad", bad)):
        assert compare_to_truth(model, inputs, c, precision=precision, cache=True).to_dict() == plain[name]


def test_the_statistics_hold_the_union_of_the_outputs_asked(oc, model, inputs, monkeypatch):
    from bert_ref.oracle import run

    first = _candidate(model, inputs, "float16", keys=["sequence_output"])
    both = _candidate(model, inputs, "float16", keys=["sequence_output", "hidden_states.1"])
    want = compare_to_truth(model, inputs, both, precision="float16").to_dict()
    compare_to_truth(model, inputs, first, precision="float16", cache=True)
    asked = []
    real = run.ensemble_outputs
    monkeypatch.setattr(run, "ensemble_outputs", lambda m, i, keys, *a, **k: asked.append(list(keys))
                        or real(m, i, keys, *a, **k))
    report = compare_to_truth(model, inputs, both, precision="float16", cache=True)
    assert asked == [["hidden_states.1"]]  # only what the entry lacked
    assert report.to_dict() == want
    compare_to_truth(model, inputs, first, precision="float16", cache=True)  # a subset: read, nothing run
    compare_to_truth(model, inputs, both, precision="float16", cache=True)
    assert asked == [["hidden_states.1"]]


def test_damaged_statistics_are_a_miss_and_computed_again(oc, model, inputs):
    good = _candidate(model, inputs, "float16")
    want = compare_to_truth(model, inputs, good, precision="float16", cache=True).to_dict()
    path = _sides_entry(model, inputs, "float16")
    raw = bytearray(path.read_bytes())
    at = bytes(raw).rfind(b"max_abs")
    assert at > 0
    raw[at + 12] ^= 0x01  # one digit of one member's statistic: the digest no longer matches
    path.write_bytes(raw)
    assert oracle_cache.load(path.stem) is None and not path.exists()
    assert compare_to_truth(model, inputs, good, precision="float16", cache=True).to_dict() == want
    assert path.exists()


def test_other_statistics_code_is_another_entry(oc, model, inputs, monkeypatch):
    good = _candidate(model, inputs, "float16")
    compare_to_truth(model, inputs, good, precision="float16", cache=True)
    before = _sides_entry(model, inputs, "float16")
    monkeypatch.setattr(oracle_cache, "statistics_digest", lambda: "0" * 64)  # as if verdict.py had changed
    assert not _sides_entry(model, inputs, "float16").exists()
    compare_to_truth(model, inputs, good, precision="float16", cache=True)
    assert _sides_entry(model, inputs, "float16").exists() and before.exists()


def test_an_int8_verdict_with_its_recipe_is_the_same_warm(oc, model, inputs, monkeypatch):
    keys = ["hidden_states.0", "hidden_states.1", "sequence_output"]
    from bert_ref.oracle import ensemble

    floor = ensemble.members("int8")[0]
    port = {k: np.asarray(v, np.float32) for k, v in
            oracle_outputs(model, inputs, keys, dtype=floor.policy).items()}
    plain = compare_to_truth(model, inputs, port, precision="int8", int8_scheme="symmetric").to_dict()
    checked = {c["statistic"] for e in plain["entries"] for c in e["checks"]}
    assert "recipe" in checked
    compare_to_truth(model, inputs, port, precision="int8", int8_scheme="symmetric", cache=True)
    monkeypatch.setattr(sys.modules["bert_ref.oracle.run"], "ensemble_outputs",
                        lambda *a, **k: pytest.fail("read the ensemble's runs"))
    warm = compare_to_truth(model, inputs, port, precision="int8", int8_scheme="symmetric", cache=True)
    assert warm.to_dict() == plain


def test_floor_sides_round_trip_through_json_exactly():
    import json

    from bert_ref.oracle.compare import FloorSide
    from bert_ref.oracle.report import Stats

    inf = float("inf")
    stats = Stats(7, 0.1 + 0.2, inf, 3e-310, float("nan"), 1 / 3, (0, 5, 2), 1.5, -2.25, 0,
                  True, 1e-300, 2.0, 0.0, 0.125, 0.9999999999999999, (1, 4))
    side = FloorSide(stats, 1 / 7, None, ({"max_abs": 0.1, "rms": inf},), (0.02, 1e-17), (800, 768, 0.3, 1 / 3))
    back = FloorSide.from_dict(json.loads(json.dumps(side.to_dict())))
    assert repr(back) == repr(side)  # every float to the bit (repr of NaN is stable), tuples kept
    assert back.floor.worst_index == (0, 5, 2) and back.floor.min_cosine_index == (1, 4)


def test_a_model_cut_from_another_is_keyed_by_that_ones_digest(oc, model, inputs, monkeypatch, tmp_path):
    from bert_ref.oracle.run import _truncated

    model.save_to_preset(tmp_path / "p")
    loaded = BertBackbone.from_preset(tmp_path / "p")
    small = _truncated(loaded, 1)
    key = oracle_cache.entry_key(small, inputs, "float32")
    assert key != oracle_cache.entry_key(loaded, inputs, "float32")
    assert oracle_cache.entry_key(_truncated(loaded, 1), inputs, "float32") == key  # the same cut: the same key
    calls = []
    real = oracle_cache.arrays_digest
    monkeypatch.setattr(oracle_cache, "arrays_digest", lambda a, *s: calls.append(len(a)) or real(a, *s))
    oracle_cache.model_digest(_truncated(loaded, 1))
    assert calls == []  # the preset's digest is kept: nothing hashed for the cut
    cut = _truncated(model, 1)  # weights from Python (changeable in place): the cut's own weights hashed
    oracle_cache.model_digest(cut)
    assert calls == [len(cut.weights)] and len(cut.weights) < len(model.weights)
    other = BertBackbone(**model.config.to_dict(), seed=4)  # other weights: another key for its cut
    assert oracle_cache.entry_key(_truncated(other, 1), inputs, "float32") != oracle_cache.entry_key(cut, inputs,
                                                                                                      "float32")
    plain = BertBackbone(**model.config.to_dict(), seed=3, plain=True)
    assert plain.first_layers(1).plain  # the cut computes as its model does
