"""Verdicts in the candidate's precision: floors, the floor-ratio mode, per-kind tolerances, the new
error measures, the one-element sentence, the cache and the assert API.

Candidates here are our own outputs (other policies, or with known perturbations): the tests check
the verdict's arithmetic and bookkeeping. How real ports fare is measured by
tools/golden/make_port_candidates.py and written in docs/conformance.md.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from bert_ref import BertBackbone, compare, compare_to_truth
from bert_ref.model.precision import quantize_symmetric, round_to_tf32
from bert_ref.oracle import cache as oracle_cache
from bert_ref.oracle.run import DEFAULT_FLOOR_RATIO, check_candidate, detect_precision, oracle_outputs
from bert_ref.oracle.tolerances import parse_tolerance
from bert_ref.testing import assert_close_to_reference

from needs import need

need("ml_dtypes", 'pip install "bert-ref[bf16]"')  # the bfloat16 policy


@pytest.fixture(scope="module")
def model():
    return BertBackbone(vocabulary_size=50, num_layers=3, num_heads=2, hidden_dim=16, intermediate_dim=32,
                        max_sequence_length=12, seed=3, activation="gelu")


@pytest.fixture(scope="module")
def inputs():
    return {
        "token_ids": np.array([[2, 7, 9, 11, 3, 4, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 10, 12, 13, 3]]),
        "segment_ids": np.array([[0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [0] * 10]),
        "padding_mask": np.array([[1] * 6 + [0] * 4, [1] * 10]).astype(bool),
    }


def _ours(model, inputs, dtype):
    out = forward_flat(model, inputs, dtype)
    return out


def forward_flat(model, inputs, dtype, **config):
    m = BertBackbone(**{**model.config.to_dict(), **config}, dtype=dtype, weights=model.weights) if config else model
    return oracle_outputs(m, inputs, ["sequence_output", "pooled_output"] + [f"hidden_states.{i}" for i in range(4)],
                          dtype=dtype)


# -- floors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32"])
def test_our_own_run_in_a_precision_is_exactly_one_floor(model, inputs, precision):
    cand = _ours(model, inputs, precision)
    report = compare_to_truth(model, inputs, cand, precision=precision)
    assert report.passed and report.floor_ratio_limit == DEFAULT_FLOOR_RATIO and report.precision == precision
    for e in report:
        # The floor is this very run against the truth: its max abs error is the floor's own,
        # unless that is below one rounding of the largest value (then the ratio is below 1).
        assert e.valid.max_abs_error == e.floor.max_abs_error
        assert e.floor_ratio <= 1.0 and (e.floor_ratio == 1.0 or e.floor_scale > e.floor.max_abs_error)
    assert f"{ {'float16': 'f16', 'bfloat16': 'bf16', 'float32': 'f32'}[precision]} floor" in str(report)


def test_floors_grow_as_precision_shrinks(model, inputs):
    cand = _ours(model, inputs, "float32")
    floors = {p: compare_to_truth(model, inputs, cand, precision=p)["sequence_output"].floor.max_abs_error
              for p in ("float64", "float32", "float16", "bfloat16")}
    # float64's run is the truth itself: its floor is modelled as the float32 floor x 2^-29.
    # float32 keeps 24 bits, float16 11, bfloat16 8: each floor is at least 4x the previous one
    # (the bit counts say ~2^13x and ~8x; 4x leaves room for chance).
    assert floors["float64"] == pytest.approx(floors["float32"] * 2.0 ** -29, rel=1e-6)
    assert 0 < floors["float32"] * 4 < floors["float16"] and floors["float16"] * 4 < floors["bfloat16"]


def test_precision_is_read_from_the_dtypes(model, inputs):
    half = _ours(model, inputs, "float16")
    assert detect_precision(half) == "float16"
    assert detect_precision({k: v.astype(np.float32) for k, v in half.items()}) == "float32"
    report = compare_to_truth(model, inputs, half)  # detected: float16, floor-ratio mode by default
    assert report.precision == "float16" and report.floor_ratio_limit == DEFAULT_FLOOR_RATIO and report.passed


# -- the floor-ratio mode --------------------------------------------------------------------------


@pytest.mark.parametrize("times, passes", [(3.0, True), (3.9, True), (4.1, False), (20.0, False)])
def test_floor_ratio_mode_passes_at_most_k_times_the_floor(model, inputs, times, passes):
    truth = oracle_outputs(model, inputs, ["hidden_states.2"], dtype="float64")
    floor = oracle_outputs(model, inputs, ["hidden_states.2"], dtype="float16")
    ref = truth["hidden_states.2"]
    probe = compare(truth, floor, floor=floor, floor_ratio=4.0, precision="float16",
                    padding_mask=inputs["padding_mask"])["hidden_states.2"]
    cand = ref.copy()
    cand[1, 3, 5] += times * probe.floor_scale
    e = compare(truth, {"hidden_states.2": cand}, floor=floor, floor_ratio=4.0, precision="float16",
                padding_mask=inputs["padding_mask"])["hidden_states.2"]
    assert e.passed is passes
    assert e.floor_ratio == pytest.approx(times, rel=1e-9)
    assert e.valid.worst_index == (1, 3, 5) and e.atol == pytest.approx(4.0 * probe.floor_scale, rel=1e-12)


def test_one_wrong_op_fails_in_float32_and_the_override_confirms_it(model, inputs):
    # The "port" uses tanh GELU where the preset says exact GELU (every layer). The two differ by
    # up to 4.7e-4 near |x| = 2.7, and by far less at keras' random initialisation, where the FFN's
    # inputs are below 0.2: the FFN kernels are scaled to trained-model sizes (inputs of order 1).
    w = {k: (v * 50 if "feedforward_intermediate_dense/kernel" in k else v) for k, v in model.weights.items()}
    model = BertBackbone(**model.config.to_dict(), weights=w)
    cand = forward_flat(model, inputs, "float32", activation="gelu_approximate")
    report = compare_to_truth(model, inputs, cand, precision="float32")
    assert not report.passed
    assert report.first_failure.key == "hidden_states.1"  # the first layer's output
    assert report.first_failure.floor_ratio > 10 * DEFAULT_FLOOR_RATIO
    other = BertBackbone(**{**model.config.to_dict(), "activation": "gelu_approximate"}, weights=model.weights)
    assert compare_to_truth(other, inputs, cand, precision="float32").passed


def test_floor_ratio_needs_a_floor(model, inputs):
    ours = _ours(model, inputs, "float32")
    with pytest.raises(ValueError, match="needs a floor"):
        compare(ours, ours, floor_ratio=4.0)


# -- tolerances per kind ----------------------------------------------------------------------------


def test_parse_tolerance():
    assert parse_tolerance("1e-3") == 1e-3
    assert parse_tolerance("1e-5,hidden_states=1e-2,attention_probs=1e-3") == {
        "default": 1e-5, "hidden_states": 1e-2, "attention_probs": 1e-3}
    assert parse_tolerance("pooled=2e-3") == {"pooled_output": 2e-3}
    with pytest.raises(ValueError, match="unknown kind 'hiden_states'.*closest: 'hidden_states'"):
        parse_tolerance("hiden_states=1")
    with pytest.raises(ValueError, match=">= 0"):
        parse_tolerance("attention_probs=-1")


def test_per_kind_atol_applies_to_its_kind_only(model, inputs):
    ours = model(inputs, output_hidden_states=True, output_attentions=True)
    cand = {"hidden_states.2": ours["hidden_states"][2] + np.float32(5e-3),
            "attention_probs.1": ours["attention_probs"][1] + np.float32(5e-4),
            "pooled_output": ours["pooled_output"]}
    r = compare(ours, cand, atol="1e-6,hidden_states=1e-2,attention_probs=1e-3", rtol=0,
                padding_mask=inputs["padding_mask"])
    assert r.passed and r["hidden_states.2"].atol == 1e-2 and r["attention_probs.1"].atol == 1e-3
    assert r["pooled_output"].atol == 1e-6
    r = compare(ours, cand, atol="1e-6,hidden_states=1e-2,attention_probs=1e-4", rtol=0,
                padding_mask=inputs["padding_mask"])
    assert [e.key for e in r.failures] == ["attention_probs.1"]


# -- error measures and the sentence --------------------------------------------------------------


def test_rms_relative_over_cut_and_worst_cosine():
    ref = {"pooled_output": np.array([[3.0, 4.0, 0.0, 1e-9], [1.0, 0.0, 0.0, 0.0]])}
    cand = {"pooled_output": np.array([[3.0, 4.0, 0.0, 2e-9], [0.0, 1.0, 0.0, 0.0]])}
    s = compare(ref, cand, atol=0, rtol=0)["pooled_output"].valid
    assert s.rms_error == pytest.approx(math.sqrt((1e-18 + 2.0) / 8), rel=1e-12)
    assert s.max_rel_error == math.inf  # 0 -> 1: x / 0, what max rel alone reports
    # The cut is 10% of the reference's RMS (sqrt(26/8) / 10 = 0.18): 1e-9 is below it, 1.0 is not.
    assert s.magnitude_cut == pytest.approx(0.1 * math.sqrt(26 / 8))
    assert s.rel_error_over_cut == 1.0
    assert s.min_cosine == 0.0 and s.min_cosine_index == (1,)  # orthogonal second row
    ref2 = {"pooled_output": np.array([[3.0, 4.0, 0.0, 1e-9]])}
    cand2 = {"pooled_output": np.array([[3.0, 4.0, 0.0, 2e-9]])}
    s2 = compare(ref2, cand2, atol=0, rtol=0)["pooled_output"].valid
    assert s2.rel_error_over_cut == 0.0 and s2.max_rel_error == pytest.approx(1.0)
    assert s2.min_cosine == pytest.approx(1.0, abs=1e-15)


def test_first_over_tolerance_sentence_describes_one_element():
    # Element (0, 0): a large value with the largest error (1e-3) but within its tolerance
    # (1e-5 + 1e-4 * 100 = 1.001e-2). Element (0, 1): a small error (5e-5) 5x over its tolerance.
    ref = {"pooled_output": np.array([[100.0, 0.0, 1.0]])}
    cand = {"pooled_output": np.array([[100.001, 5e-5, 1.0]])}
    report = compare(ref, cand)
    sentence = report.summary().splitlines()[1]
    assert sentence == ("First over tolerance: pooled_output (pooler): at batch 0, channel 1 the reference is 0 and "
                        "the candidate 5e-05: error 5.000e-05 = 5x its tolerance 1.000e-05 "
                        "(atol 1e-05 + rtol 0.0001 * |reference|).")
    assert "1.000e-03" not in sentence and "100" not in sentence


# -- shapes checked before running ----------------------------------------------------------------


def test_shapes_are_checked_against_the_inputs(model, inputs):
    good = {"sequence_output": np.zeros((2, 10, 16), np.float32), "attention_probs.2": np.zeros((2, 2, 10, 10))}
    check_candidate(good, model.config, inputs)
    with pytest.raises(ValueError, match=r"sequence_output has shape \(2, 8, 16\), expected \(2, 10, 16\) for inputs "
                                         r"of 2 x 10: the candidate must be run on the same padded batch"):
        check_candidate({"sequence_output": np.zeros((2, 8, 16))}, model.config, inputs)
    with pytest.raises(ValueError, match="3 layers"):
        check_candidate({"hidden_states.4": np.zeros((2, 10, 16))}, model.config, inputs)


# -- TF32 and int8 rounding -----------------------------------------------------------------------


def test_round_to_tf32_is_round_to_nearest_even_on_10_mantissa_bits():
    one = np.float32(1.0)
    step = np.float32(2.0 ** -10)  # TF32's spacing at 1
    # ties (1 + half a step) go to the even neighbour: 1 + 2^-11 -> 1, 1 + 3 * 2^-11 -> 1 + 2 steps
    x = np.array([1.0, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -20, 1 + 2.0 ** -12,
                  -(1 + 3 * 2.0 ** -11), np.inf, -np.inf, 0.0, np.finfo(np.float32).max], np.float32)
    got = round_to_tf32(x)
    want = [1.0, 1.0, 1 + 2 * step, 1 + step, 1.0, -(1 + 2 * step), np.inf, -np.inf, 0.0, np.inf]
    assert got.tolist() == want
    assert np.isnan(round_to_tf32(np.float32([np.nan])))[0]
    # Every result has its 13 low mantissa bits zero, and is within half a TF32 step (relative 2^-11).
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(10000) * 10.0 ** rng.uniform(-20, 20, 10000)).astype(np.float32)
    r = round_to_tf32(y)
    assert not (r.view(np.uint32) & 0x1FFF).any()
    assert (np.abs(r.astype(np.float64) - y) <= 2.0 ** -11 * np.abs(y.astype(np.float64))).all()
    assert one == round_to_tf32(one)


def test_quantize_symmetric_has_255_levels_and_keeps_the_extremes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    q = quantize_symmetric(x)
    scale = np.abs(x).max() / 127
    levels = np.rint(q / scale)
    assert np.abs(levels - q / scale).max() < 1e-3 and np.abs(levels).max() == 127
    assert np.abs(q - x).max() <= scale / 2 * (1 + 1e-6)
    assert (quantize_symmetric(np.zeros(4, np.float32)) == 0).all()


# -- the cache ------------------------------------------------------------------------------------


def test_cache_reuses_runs_and_stays_bounded(model, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    keys = ["sequence_output", "hidden_states.1"]
    first = oracle_outputs(model, inputs, keys, dtype="float64", cache=True)
    files = list((tmp_path / "oc").glob("*" + oracle_cache.SUFFIX))
    assert len(files) == 1 and not list((tmp_path / "oc").glob("*.tmp"))
    # A hit returns the stored arrays, bit for bit, without running the model.
    import sys

    cmp = sys.modules["bert_ref.oracle.run"]  # the module that runs the forward for the oracle

    def boom(*a, **k):
        raise AssertionError("ran the model on a cache hit")

    monkeypatch.setattr(cmp, "forward", boom)
    monkeypatch.setattr(type(model), "__call__", boom)
    again = oracle_outputs(model, inputs, keys, dtype="float64", cache=True)
    assert all(np.array_equal(first[k], again[k]) and first[k].dtype == again[k].dtype for k in keys)
    monkeypatch.undo()
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    # Other inputs, policy or weights are other entries.
    other = dict(inputs, token_ids=inputs["token_ids"].copy())
    other["token_ids"][0, 0] = 5
    key64 = oracle_cache.entry_key(model, inputs, "float64")
    assert oracle_cache.entry_key(model, other, "float64") != key64
    assert oracle_cache.entry_key(model, inputs, "float32") != key64
    twin = BertBackbone(**model.config.to_dict(), seed=4)
    assert oracle_cache.model_digest(twin) != oracle_cache.model_digest(model)
    # So is the same run by changed forward code (a kernel edited in place, version unchanged).
    monkeypatch.setattr(oracle_cache, "code_digest", lambda: "0" * 64)
    assert oracle_cache.entry_key(model, inputs, "float64") != key64
    monkeypatch.undo()
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    # Bounded: entries of one size S under a limit of 2.5 S: the least recently used one goes.
    oc = tmp_path / "oc"
    size = next(oc.glob("*" + oracle_cache.SUFFIX)).stat().st_size
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE_MB", str(2.5 * size / 2 ** 20))
    first_entry = oc / (oracle_cache.entry_key(model, inputs, "float64") + oracle_cache.SUFFIX)
    os.utime(first_entry, (1e9, 1e9))  # the oldest
    oracle_outputs(model, other, keys, dtype="float64", cache=True)
    assert len(list(oc.glob("*" + oracle_cache.SUFFIX))) == 2
    third = dict(other, token_ids=other["token_ids"].copy())
    third["token_ids"][0, 1] = 6
    oracle_outputs(model, third, keys, dtype="float64", cache=True)
    assert len(list(oc.glob("*" + oracle_cache.SUFFIX))) == 2 and not first_entry.exists()
    # bfloat16 entries read back as bfloat16; a damaged entry is a miss, and is removed.
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE_MB", "100")
    b1 = oracle_outputs(model, inputs, keys, dtype="bfloat16", cache=True)
    b2 = oracle_outputs(model, inputs, keys, dtype="bfloat16", cache=True)
    assert b2["sequence_output"].dtype.name == "bfloat16"
    assert np.array_equal(b1["sequence_output"], b2["sequence_output"])
    entry = tmp_path / "oc" / (oracle_cache.entry_key(model, inputs, "bfloat16") + oracle_cache.SUFFIX)
    entry.write_bytes(b"broken")
    assert oracle_cache.load(entry.stem) is None and not entry.exists()
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", "off")
    assert oracle_cache.cache_root() is None


def test_cache_entries_read_back_whole_private_and_writable_and_damage_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    arrays = {"sequence_output": np.arange(24, dtype=np.float32).reshape(1, 4, 6),
              "transformer_layer_0/query": np.linspace(-1, 1, 12).reshape(1, 2, 6), "empty": np.zeros((2, 0)),
              "scalar": np.float64(2.5)}
    path = oracle_cache.store("k", arrays)
    got = oracle_cache.load("k")
    assert set(got) == set(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == np.asarray(a).dtype and got[k].shape == np.shape(a) and np.array_equal(got[k], a)
    got["sequence_output"][0, 0, 0] = 99.0  # writable, and private to this process: the file is unchanged
    assert oracle_cache.load("k")["sequence_output"][0, 0, 0] == 0.0
    # Damage is a miss, and the entry is removed: a header whose shape claims more values than the
    # entry holds, a file cut short, an entry of the old format.
    raw = path.read_bytes()
    assert raw.count(b"[1,2,6]") == 1
    path.write_bytes(raw.replace(b"[1,2,6]", b"[1,2,7]"))
    assert oracle_cache.load("k") is None and not path.exists()
    oracle_cache.store("k", arrays)
    path.write_bytes(path.read_bytes()[:-100])
    assert oracle_cache.load("k") is None and not path.exists()
    np.savez(tmp_path / "old.npz", **arrays)
    path.write_bytes((tmp_path / "old.npz").read_bytes())
    assert oracle_cache.load("k") is None and not path.exists()


def test_weights_digest_is_kept_for_a_preset_directory_until_its_files_change(model, tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    model.save_to_preset(tmp_path / "preset")
    loaded = BertBackbone.from_preset(tmp_path / "preset")
    first = oracle_cache.model_digest(loaded)
    # The same content identified by its bytes, whichever way it was loaded or built.
    assert first == oracle_cache.model_digest(model)
    # A second load of the unchanged directory reuses the stored digest: the weights are not hashed.
    monkeypatch.setattr(oracle_cache, "arrays_digest", lambda *a: (_ for _ in ()).throw(AssertionError("hashed")))
    assert oracle_cache.model_digest(BertBackbone.from_preset(tmp_path / "preset")) == first
    monkeypatch.undo()
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    # Other weights written over the same file (same size): its modification time or inode changes,
    # so the stored digest is not used and the new content gets its own.
    twin = BertBackbone(**model.config.to_dict(), seed=4)
    twin.save_to_preset(tmp_path / "preset")
    rewritten = oracle_cache.model_digest(BertBackbone.from_preset(tmp_path / "preset"))
    assert rewritten == oracle_cache.model_digest(twin) != first
    # Weights that could be changed in place are never identified by their files.
    assert oracle_cache._files_signature(model) is None


# -- the assert API -------------------------------------------------------------------------------


def test_assert_close_to_reference_passes_and_fails_with_the_report(model, inputs, monkeypatch, tmp_path):
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    hf_inputs = {"input_ids": inputs["token_ids"], "token_type_ids": inputs["segment_ids"],
                 "attention_mask": inputs["padding_mask"].astype(np.int64)}
    out = model(inputs, output_hidden_states=True)
    theirs = {"last_hidden_state": out["sequence_output"], "pooler_output": out["pooled_output"],
              "hidden_states": np.stack(out["hidden_states"])}
    assert assert_close_to_reference(theirs, model, hf_inputs) is None
    half = _ours(model, inputs, "float16")
    assert_close_to_reference(half, model, inputs)  # float16 arrays: judged against the float16 floor
    bad = dict(theirs, hidden_states=np.stack(out["hidden_states"]).copy())
    bad["hidden_states"][2, 1, 4, 3] += 1e-2
    with pytest.raises(AssertionError) as info:
        assert_close_to_reference(bad, model, hf_inputs)
    text = str(info.value)
    assert "hidden_states.2" in text and "FAIL" in text
    assert ("First over tolerance: hidden_states.2 (transformer_layer_1 output): at batch 1, position 4, channel 3"
            in text)
    with pytest.raises(AssertionError, match="x the f16 floor"):
        assert_close_to_reference({"sequence_output": half["sequence_output"] * np.float16(1.01)}, model, inputs)
