"""The verdict's machinery: the int8 recipes and their grammar, recipe detection, the statistics and
their ensemble, detection power, padded positions' own floor, the cache's union of outputs, and
the misreads refused (a stacked hidden_states of L entries, names of other libraries).

Candidates here are our own runs, perturbed in known ways; how real ports fare is tests/test_port_suite.py.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from bert_ref import BertBackbone
from bert_ref.model.precision import get_policy
from bert_ref.oracle import cache as oracle_cache
from bert_ref.oracle import ensemble, int8, verdict
from bert_ref.oracle.compare import judge
from bert_ref.oracle.keys import unknown_key_message, valid_mask
from bert_ref.oracle.run import (
    check_candidate,
    compare_to_truth,
    detect_int8_scheme,
    ensemble_outputs,
    oracle_outputs,
)

from needs import need

need("ml_dtypes", 'pip install "bert-ref[bf16]"')

KEYS = ["hidden_states.0", "hidden_states.1", "hidden_states.2", "sequence_output", "pooled_output"]


@pytest.fixture(scope="module")
def model():
    # Weights scaled so that activations are of trained-model size (order 1 into the GELU and softmax).
    m = BertBackbone(vocabulary_size=60, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
                     max_sequence_length=24, seed=5, activation="gelu")
    w = {k: (v * 30 if k.endswith("/kernel") or "embeddings" in k else v) for k, v in m.weights.items()}
    return BertBackbone(**m.config.to_dict(), weights=w)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 60, (3, 20))
    mask = np.ones((3, 20), bool)
    mask[0, 14:] = False
    mask[1, 8:] = False
    seg = np.zeros((3, 20), int)
    seg[2, 10:] = 1
    return {"token_ids": ids, "segment_ids": seg, "padding_mask": mask}


# -- int8 recipes ----------------------------------------------------------------------------------


def test_int8_scheme_grammar():
    assert int8.parse_int8_scheme("ort") == int8.Int8Scheme("s8", "tensor", "u8", "u8")
    assert int8.parse_int8_scheme("ort-matmul,weights=u8") == int8.Int8Scheme("u8", "tensor", "u8", "float")
    assert int8.parse_int8_scheme("act=u7, weights=s8r") == int8.PRESETS["torch"]
    assert int8.parse_int8_scheme("ort,per=channel").spec == "ort,per=channel"
    for spec in ("symmetric", "torch", "ort", "ort-matmul", "ort,weights=s7", "ort-matmul,per=channel"):
        assert int8.parse_int8_scheme(int8.parse_int8_scheme(spec).spec) == int8.parse_int8_scheme(spec)
    with pytest.raises(ValueError, match=r"unknown preset 'onnx'.*presets symmetric, torch, ort, ort-matmul"):
        int8.parse_int8_scheme("onnx")
    with pytest.raises(ValueError, match=r"per='row' is not one of tensor, channel"):
        int8.parse_int8_scheme("ort,per=row")
    with pytest.raises(ValueError, match=r"'granularity=channel' is not key=value with a key of weights, per"):
        int8.parse_int8_scheme("granularity=channel")


def test_quantisers_follow_each_runtimes_rule():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    w[:, 3] *= 10  # one column with a larger range
    # symmetric per tensor: 127 levels a side over max|w|; per channel: each column's own max.
    q = int8.quantize_weight(w, int8.Int8Scheme(weights="s8"))
    scale = np.abs(w).max() / 127
    assert np.allclose(q / scale, np.rint(q / scale), atol=1e-3) and np.abs(q - w).max() <= scale / 2 * 1.0001
    qc = int8.quantize_weight(w, int8.Int8Scheme(weights="s8", per="channel"))
    col = np.abs(w).max(axis=0) / 127
    assert (np.abs(qc - w) <= col / 2 * 1.0001).all() and np.abs(qc - w)[:, 0].max() < np.abs(q - w)[:, 0].max()
    # torch's [-128, 127] over max|w| / 127.5; onnxruntime's reduce_range [-64, 64] over max|w| / 64.
    assert np.abs(int8.quantize_weight(w, int8.Int8Scheme(weights="s8r")) - w).max() <= np.abs(w).max() / 255 * 1.0001
    assert np.abs(int8.quantize_weight(w, int8.Int8Scheme(weights="s7")) - w).max() <= np.abs(w).max() / 128 * 1.0001
    # asymmetric uint8: a zero point, 0 exactly representable, the range [min(x, 0), max(x, 0)] over 255 steps.
    x = np.array([-0.5, 0.0, 0.25, 2.0], np.float32)
    qa = int8.quantize_asymmetric(x, 255)
    assert qa[1] == 0.0 and np.abs(qa - x).max() <= 2.5 / 255 / 2 * 1.0001
    assert np.abs(int8.quantize_asymmetric(x, 127) - x).max() > np.abs(qa - x).max()  # reduce_range: coarser


def test_symmetric_scheme_is_the_int8_policy(model, inputs):
    assert int8.scheme_policy("symmetric") == get_policy("int8")
    f32 = np.dtype(np.float32)
    explicit = int8.Int8SchemePolicy("int8[symmetric]", f32, f32, f32, int8.DEFAULT_SCHEME)
    a = oracle_outputs(model, inputs, KEYS, dtype="int8")
    b = oracle_outputs(model, inputs, KEYS, dtype=explicit)
    assert all(np.array_equal(a[k], b[k]) for k in KEYS)


@pytest.mark.parametrize("spec", ["torch", "ort", "ort-matmul,per=channel", "ort,weights=s7"])
def test_a_recipe_is_detected_from_its_own_errors(model, inputs, spec):
    truth = oracle_outputs(model, inputs, KEYS, dtype="float64")
    cand = oracle_outputs(model, inputs, KEYS, dtype=int8.scheme_policy(spec))
    found = detect_int8_scheme(model, inputs, cand, truth)
    assert found.scheme == int8.parse_int8_scheme(spec) and found.matched and found.key == "hidden_states.1"
    report = compare_to_truth(model, inputs, cand, precision="int8")
    assert report.passed and f"int8 scheme {spec} detected" in report.notes[-1], str(report)
    # Judged against another recipe's floor instead, the recipe distance fails it at the first layer.
    other = "ort-matmul,weights=u8" if spec != "ort-matmul,weights=u8" else "torch"
    wrong = compare_to_truth(model, inputs, cand, precision="int8", int8_scheme=other)
    assert not wrong.passed and "recipe" in {c.statistic for c in wrong.first_failure.failed_checks}


def test_a_bug_on_top_of_a_recipe_fails_the_recipe_distance(model, inputs):
    cand = oracle_outputs(model, inputs, KEYS, dtype=int8.scheme_policy("ort"))
    cand = {k: v.copy() for k, v in cand.items()}
    rng = np.random.default_rng(2)
    for k in KEYS[1:]:  # a deviation of 30% of the int8 error's size from the first layer on
        err = cand[k] - oracle_outputs(model, inputs, KEYS, dtype="float64")[k]
        cand[k] += (0.3 * np.sqrt(np.mean(err ** 2)) * rng.standard_normal(cand[k].shape)).astype(np.float32)
    report = compare_to_truth(model, inputs, cand, precision="int8", int8_scheme="ort")
    first = report.first_failure
    assert first is not None and first.key == "hidden_states.1"
    assert [c.statistic for c in first.failed_checks] == ["recipe"], str(report)
    assert "distance from our run of the int8 recipe" in report.summary()


# -- the statistics ----------------------------------------------------------------------------------


def test_cosine_deficit_is_exact_for_tiny_angles():
    t = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    eps = 1e-9
    c = np.array([[1.0, eps, 0.0], [0.0, 2.0, 0.0]])
    d = verdict.cosine_deficits(c, t)
    assert d[0] == pytest.approx(eps ** 2 / 2, rel=1e-6) and d[1] == 0.0  # 1 - c.t/(|c||t|) would give 0
    assert verdict.cosine_deficits(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 0.0
    assert verdict.cosine_deficits(np.zeros((1, 3)), np.ones((1, 3)))[0] == 1.0


def test_statistics_of_a_known_error():
    rng = np.random.default_rng(3)
    t = rng.standard_normal((40, 8))
    shift = np.linspace(-1, 1, 8) * 1e-3
    s = verdict.statistics(t + shift, t)
    assert s["max_abs"] == pytest.approx(1e-3) and s["rms"] == pytest.approx(np.sqrt(np.mean(shift ** 2)))
    assert s["channel"] == pytest.approx(s["rms"])  # a pure per-channel shift: all of it systematic
    assert "channel" not in verdict.statistics(t[:10] + shift, t[:10])  # too few rows to average
    bad = t.copy()
    bad[3, 2] = np.nan
    assert all(math.isnan(v) for v in verdict.statistics(bad, t).values())


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32", "tf32", "int8"])
def test_our_own_run_passes_with_every_statistic_within_its_ensemble(model, inputs, precision):
    cand = oracle_outputs(model, inputs, KEYS, dtype=precision)
    report = compare_to_truth(model, inputs, cand, precision=precision, int8_scheme="symmetric"
                              if precision == "int8" else None)
    assert report.passed, str(report)
    n = len(ensemble.members(precision))
    assert report.ensemble_size == n and n >= 2
    for e in report:
        assert {c.statistic for c in e.checks} >= {"max_abs", "rms", "mean_cos", "worst_cos"}
        assert all(c.ratio <= 1.0 for c in e.checks if c.statistic != "recipe")  # the floor is a member
        assert e.power is not None and 0 < e.power.shift <= e.power.scatter * 10


def test_ensemble_members_are_distinct_legitimate_runs(model, inputs):
    runs = {m.name: oracle_outputs(model, inputs, KEYS, dtype=m.policy) for m in ensemble.members("float16")}
    assert list(runs) == ["float16", "float16~fused", "float16~wide", "float16~splitk", "float16~f16acc"]
    ours = runs["float16"]
    for name, out in runs.items():
        if name != "float16":  # each rounds elsewhere: other values, of the same size of error
            assert not np.array_equal(out["sequence_output"], ours["sequence_output"])
    # The fused variant without anything to skip is our policy, bit for bit.
    p = get_policy("float16")
    same = ensemble.SkipRounding("f16-noskip", p.variable_dtype, p.compute_dtype, p.work_dtype, frozenset())
    assert np.array_equal(oracle_outputs(model, inputs, KEYS, dtype=same)["sequence_output"], ours["sequence_output"])


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_members_sharing_prepared_weights_compute_what_they_compute_alone(model, inputs, precision):
    chosen = ensemble.members(precision)
    assert [m.weights_of for m in chosen[1:] if m.weights_of] and not chosen[0].weights_of
    together = ensemble_outputs(model, inputs, KEYS, precision)
    for m in chosen:
        alone = oracle_outputs(model, inputs, KEYS, dtype=m.policy)
        for key in KEYS:
            assert together[m.name][key].tobytes() == alone[key].tobytes(), (m.name, key)


@pytest.mark.parametrize("mode", [{"slices": 4}, {"block": 32}])
def test_accumulation_members_round_their_partial_sums(mode):
    # Split-K: each slice's float32 sum rounded to float16, the slices added in float16; float16
    # accumulation: each block's float32 sum added to a float16 accumulator. Written out with astype.
    p = get_policy("float16")
    member = ensemble.Accumulating("acc", p.variable_dtype, p.compute_dtype, p.work_dtype, **mode)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((64, 200)).astype(np.float16).astype(np.float32)
    b = (rng.standard_normal((200, 48)) * 0.1).astype(np.float16).astype(np.float32)

    def r(x):
        return x.astype(np.float16).astype(np.float32)

    bounds = [0, 50, 100, 150, 200] if "slices" in mode else [*range(0, 200, 32), 200]
    parts = [a[:, lo:hi] @ b[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    expected = r(parts[0])
    for part in parts[1:]:
        expected = r(expected + (r(part) if "slices" in mode else part))
    got = member.matmul(a, b)
    np.testing.assert_array_equal(got, expected)
    exact = a.astype(np.float64) @ b
    assert np.sqrt(np.mean((got - exact) ** 2)) > 1.2 * np.sqrt(np.mean((r(a @ b) - exact) ** 2))  # more error


def test_detection_power_is_what_it_says(model, inputs):
    # A per-channel shift of the stated power fails; a fifth of it passes.
    report = compare_to_truth(model, inputs, oracle_outputs(model, inputs, KEYS, dtype="float16"),
                              precision="float16")
    e = report["hidden_states.2"]
    truth = oracle_outputs(model, inputs, KEYS, dtype="float64")["hidden_states.2"]
    valid = valid_mask("hidden_states.2", truth.shape, inputs["padding_mask"])
    r = float(np.sqrt(np.mean(verdict.rows(truth, "hidden_states.2", valid) ** 2)))
    pattern = np.where(np.arange(truth.shape[-1]) % 2 == 0, 1.0, -1.0)
    floor = oracle_outputs(model, inputs, KEYS, dtype="float16")
    for times, passes in ((3.0, False), (0.2, True)):
        cand = dict(floor)
        cand["hidden_states.2"] = (floor["hidden_states.2"].astype(np.float64)
                                   + times * e.power.shift * r * pattern).astype(np.float32)
        got = compare_to_truth(model, inputs, cand, precision="float16")["hidden_states.2"]
        assert got.passed is passes, (times, [(c.statistic, c.ratio) for c in got.checks])
    assert "Detection power: a systematic deviation smaller than this can pass unseen" in report.summary()


def test_judge_needs_no_model_and_agrees_with_compare_to_truth(model, inputs):
    cand = oracle_outputs(model, inputs, KEYS, dtype="bfloat16")
    truth = oracle_outputs(model, inputs, KEYS, dtype="float64")
    runs = {m.name: oracle_outputs(model, inputs, KEYS, dtype=m.policy) for m in ensemble.members("bfloat16")}
    a = judge(truth, cand, runs, precision="bfloat16", padding_mask=inputs["padding_mask"])
    b = compare_to_truth(model, inputs, cand, precision="bfloat16")
    assert [e.key for e in a] == [e.key for e in b]
    assert [[c.ratio for c in e.checks] for e in a] == [[c.ratio for c in e.checks] for e in b]
    with pytest.raises(ValueError, match="ensemble of at least one run"):
        judge(truth, cand, {}, precision="bfloat16")


def test_first_failure_names_the_statistic_and_the_ensemble(model, inputs):
    floor = oracle_outputs(model, inputs, KEYS, dtype="float16")
    cand = dict(floor)
    cand["hidden_states.1"] = (floor["hidden_states.1"] * np.float32(1.003)).astype(np.float16)  # a 0.3% scale
    report = compare_to_truth(model, inputs, cand, precision="float16")
    first = report.first_failure
    assert first is not None and first.key == "hidden_states.1" and first.valid.passed  # max abs alone passes
    text = report.summary()
    assert "the largest of our 5 float16 runs" in text and "the limit is" in text and "they span" in text


# -- padded positions ---------------------------------------------------------------------------------


def test_check_padded_has_its_own_floor_and_numbers_that_agree(model, inputs):
    keys = ["hidden_states.2"]
    ours = oracle_outputs(model, inputs, keys, dtype="float32")
    clean = compare_to_truth(model, inputs, ours, precision="float32", check_padded=True)
    e = clean["hidden_states.2"]
    assert clean.passed and e.padded_floor_scale is not None and e.padded_floor_scale > 0
    cand = {"hidden_states.2": ours["hidden_states.2"].copy()}
    cand["hidden_states.2"][1, 12, 3] += np.float32(6 * e.padded_floor_scale)  # a padded position
    assert compare_to_truth(model, inputs, cand, precision="float32").passed  # not checked without the flag
    report = compare_to_truth(model, inputs, cand, precision="float32", check_padded=True)
    assert not report.passed
    text = report.summary()
    f = report["hidden_states.2"]
    ratio = f.padded.max_abs_error / f.padded_floor_scale
    assert "at padded batch 1, position 12, channel 3" in text and "at padded positions" in text
    assert f"{ratio:.2f}x the f32 floor at padded positions {f.padded_floor_scale:.3e}" in text


# -- misreads -------------------------------------------------------------------------------------------


def test_stacked_hidden_states_of_l_entries_is_refused(model, inputs):
    ours = oracle_outputs(model, inputs, [f"hidden_states.{i}" for i in range(3)], dtype="float32")
    check_candidate(ours, model.config, inputs, "c.npz", stacked=[("hidden_states", 3)])  # L + 1: fine
    with pytest.raises(ValueError, match=r"hidden_states has 2 entries, but the model has 2 layers: a stacked "
                                         r"hidden_states holds L\+1 = 3.*hidden_states.1 .. hidden_states.2"):
        check_candidate({f"hidden_states.{i}": ours[f"hidden_states.{i + 1}"] for i in range(2)}, model.config,
                        inputs, "c.npz", stacked=[("hidden_states", 2)])


def test_stacked_hidden_states_of_l_entries_is_refused_by_the_command(model, inputs, tmp_path):
    from bert_ref.oracle.candidates import read_candidate

    ours = oracle_outputs(model, inputs, [f"hidden_states.{i}" for i in range(3)], dtype="float32")
    np.savez(tmp_path / "c.npz", hidden_states=np.stack([ours["hidden_states.1"], ours["hidden_states.2"]]))
    read = read_candidate(tmp_path / "c.npz")
    assert read.stacked == (("hidden_states", 2),)
    with pytest.raises(ValueError, match="cannot be placed without guessing"):
        check_candidate(read.arrays, model.config, inputs, "c.npz", read.stacked)


def test_key_suggestions_know_other_libraries_names():
    msg = unknown_key_message("sentence_embedding")
    assert "sentence-transformers" in msg and "not an encoder output" in msg and "Did you mean" not in msg
    assert "sequence_output" in unknown_key_message("token_embeddings")
    assert "Did you mean 'last_hidden_state'?" in unknown_key_message("last_hidden_states")  # a typo: spelling


# -- the cache -------------------------------------------------------------------------------------------


def test_cache_holds_the_union_of_outputs_asked(model, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oc"))
    a = oracle_outputs(model, inputs, ["sequence_output"], dtype="float64", cache=True)
    b = oracle_outputs(model, inputs, ["hidden_states.1", "pooled_output"], dtype="float64", cache=True)
    entries = list((tmp_path / "oc").glob("*" + oracle_cache.SUFFIX))
    assert len(entries) == 1  # one entry per model, inputs and policy, now holding all three outputs
    run = sys.modules["bert_ref.oracle.run"]

    def boom(*args, **kwargs):
        raise AssertionError("ran the model on a cache hit")

    monkeypatch.setattr(run, "forward", boom)
    monkeypatch.setattr(type(model), "__call__", boom)
    both = oracle_outputs(model, inputs, ["sequence_output", "hidden_states.1", "pooled_output"], dtype="float64",
                          cache=True)
    assert np.array_equal(both["sequence_output"], a["sequence_output"])
    assert np.array_equal(both["hidden_states.1"], b["hidden_states.1"])
    assert oracle_cache.entry_key(model, inputs, "float64") + oracle_cache.SUFFIX == entries[0].name


# -- the command ------------------------------------------------------------------------------------------


def test_int8_scheme_on_the_command_line(model, inputs, tmp_path):
    from needs import run_bert_ref

    model.save_to_preset(tmp_path / "tiny")
    np.savez(tmp_path / "in.npz", **inputs)
    ours = oracle_outputs(model, inputs, KEYS, dtype=int8.scheme_policy("ort,per=channel"))
    np.savez(tmp_path / "c.npz", **ours)
    base = ("compare", tmp_path / "tiny", "-i", tmp_path / "in.npz", "-c", tmp_path / "c.npz")
    r = run_bert_ref(*base, "--precision", "int8")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "note: int8 scheme ort,per=channel detected from the candidate's errors" in r.stdout
    r = run_bert_ref(*base, "--int8-scheme", "torch")  # implies --precision int8; the wrong recipe
    assert r.returncode == 1 and "distance from our run of the int8 recipe" in r.stdout, r.stdout
    r = run_bert_ref(*base, "--int8-scheme", "ort,per=row")
    assert r.returncode == 2 and "per='row' is not one of tensor, channel" in r.stderr, r.stderr
    r = run_bert_ref(*base, "--int8-scheme", "ort", "--precision", "float16")
    assert r.returncode == 2 and "--int8-scheme is for --precision int8" in r.stderr, r.stderr
