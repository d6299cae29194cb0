"""bert_ref.oracle: per-output errors, worst-element positions, valid/padded split, ordering, floor.

The candidates here are our own outputs with known perturbations: these tests check the comparer's
arithmetic and bookkeeping, not the model (the model is checked against goldens elsewhere).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bert_ref import BertBackbone, compare, compare_to_truth
from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER
from bert_ref.oracle.report import Report


@pytest.fixture(scope="module")
def model():
    return BertBackbone(vocabulary_size=50, num_layers=3, num_heads=2, hidden_dim=16, intermediate_dim=32,
                        max_sequence_length=12, seed=1)


@pytest.fixture(scope="module")
def inputs():
    return {
        "token_ids": np.array([[2, 7, 9, 11, 3, 4, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 10, 12, 13, 3]]),
        "segment_ids": np.array([[0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [0] * 10]),
        "padding_mask": np.array([[1] * 6 + [0] * 4, [1] * 10]),
    }


@pytest.fixture(scope="module")
def ours(model, inputs):
    return model(inputs, output_hidden_states=True, output_attentions=True)


def _copy(out):
    return {k: ([a.copy() for a in v] if isinstance(v, list) else v.copy()) for k, v in out.items()}


def test_identical_outputs_pass_with_zero_error(ours, inputs):
    report = compare(ours, ours, padding_mask=inputs["padding_mask"])
    assert report.passed and report.first_failure is None
    assert len(report) == 2 + 4 + 3  # sequence, pooled, hidden_states.0..3, attention_probs.0..2
    for e in report:
        assert e.valid.max_abs_error == 0.0 and e.valid.max_ulp_error == 0.0 and e.valid.tolerance_ratio == 0.0


def test_perturbed_layer_2_hidden_state_fails_there_with_exact_position(ours, inputs):
    cand = _copy(ours)
    cand["hidden_states"][2][1, 4, 3] += np.float32(1e-3)
    report = compare(ours, cand, atol=1e-5, rtol=1e-4, padding_mask=inputs["padding_mask"])
    assert not report.passed
    first = report.first_failure
    assert first.key == "hidden_states.2" and first.layer == 2 and first.stage == "transformer_layer_1"
    assert first.valid.worst_index == (1, 4, 3)
    assert first.where() == "batch 1, position 4, channel 3"
    # float32 rounding of x + 1e-3 moves the error by at most half an ulp of x (|x| < 4: < 2.4e-7).
    assert first.valid.max_abs_error == pytest.approx(1e-3, abs=2.4e-7)
    assert [e.key for e in report.failures] == ["hidden_states.2"]
    assert "hidden_states.2" in report.summary() and "batch 1, position 4, channel 3" in report.summary()


def test_outputs_summarised_on_threads_give_the_report_of_one_thread(ours, inputs, monkeypatch):
    from bert_ref.model import runtime

    cand = _copy(ours)
    rng = np.random.default_rng(3)
    cand["hidden_states"] = [h + rng.normal(0, 1e-6, h.shape).astype(np.float32) for h in cand["hidden_states"]]
    cand["hidden_states"][2][1, 4, 3] = np.nan
    reports = []
    for threads in (1, 4):
        monkeypatch.setattr(runtime, "THREADS", threads)
        reports.append(compare(ours, cand, padding_mask=inputs["padding_mask"], floor=cand, floor_reference=ours))
    assert [e.key for e in reports[1]] == [e.key for e in reports[0]]
    assert json.dumps(reports[1].to_dict()) == json.dumps(reports[0].to_dict())
    assert reports[1].format_table() == reports[0].format_table()


def test_first_failure_is_the_earliest_in_computation_order(ours, inputs):
    cand = _copy(ours)
    cand["sequence_output"][0, 0, 0] += 1.0
    cand["attention_probs"][1][1, 0, 2, 5] += 0.5
    cand["hidden_states"][3][1, 1, 1] += 1.0
    report = compare(ours, cand, padding_mask=inputs["padding_mask"])
    assert [e.key for e in report.failures] == ["attention_probs.1", "hidden_states.3", "sequence_output"]
    assert report.first_failure.valid.worst_index == (1, 0, 2, 5)
    assert report.first_failure.where() == "batch 1, head 0, query 2, key 5"


def test_entries_follow_computation_order_including_trace(model, inputs):
    small = BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                         max_sequence_length=12, seed=0)
    out = small(inputs, output_hidden_states=True, output_attentions=True, trace=True)
    keys = [e.key for e in compare(out, out)]
    expected = list(TRACE_EMBEDDINGS) + ["hidden_states.0"]
    for i in range(2):
        for name in TRACE_LAYER:
            expected.append(f"transformer_layer_{i}/{name}")
            if name == "attention_probs":
                expected.append(f"attention_probs.{i}")
        expected.append(f"hidden_states.{i + 1}")
    expected += ["sequence_output", "pooled_output"]
    assert keys == expected


def test_hand_computed_errors():
    # |2.5 - 2| = 0.5; rel 0.25; float32 spacing at 2 is 2**-22, so 0.5 is 2**21 ulps;
    # tolerance 1e-3 + 1e-2 * 2 = 0.021, ratio 0.5 / 0.021.
    ref = {"pooled_output": np.array([[1.0, 2.0]], np.float32)}
    cand = {"pooled_output": np.array([[1.0, 2.5]], np.float32)}
    e = compare(ref, cand, atol=1e-3, rtol=1e-2)["pooled_output"]
    assert e.valid.max_abs_error == 0.5
    assert e.valid.max_rel_error == 0.25
    assert e.valid.max_ulp_error == 2.0 ** 21
    assert e.valid.tolerance_ratio == pytest.approx(0.5 / 0.021, rel=1e-12)
    assert e.valid.rms_error == pytest.approx(np.sqrt(0.125), rel=1e-12)
    assert e.valid.worst_index == (0, 1) and e.valid.worst_reference == 2.0 and e.valid.worst_candidate == 2.5
    assert not e.passed


def test_tolerance_boundary_follows_allclose_rule():
    ref = {"pooled_output": np.array([[1.0, -4.0]], np.float64)}
    inside = {"pooled_output": np.array([[1.0, -4.0 + 0.5 * (1e-5 + 1e-4 * 4.0)]])}
    outside = {"pooled_output": np.array([[1.0, -4.0 + 2.0 * (1e-5 + 1e-4 * 4.0)]])}
    assert compare(ref, inside, atol=1e-5, rtol=1e-4).passed
    assert not compare(ref, outside, atol=1e-5, rtol=1e-4).passed


def test_padded_positions_are_reported_but_fail_only_when_asked(ours, inputs):
    cand = _copy(ours)
    cand["sequence_output"][0, 8, 5] += 0.25  # row 0, position 8 is padding
    report = compare(ours, cand, padding_mask=inputs["padding_mask"])
    e = report["sequence_output"]
    assert e.passed and e.valid.max_abs_error == 0.0
    assert e.padded.worst_index == (0, 8, 5) and e.padded.max_abs_error == pytest.approx(0.25, abs=1e-6)
    assert e.padded.count == 4 * 16 and e.valid.count == 16 * 16
    strict = compare(ours, cand, padding_mask=inputs["padding_mask"], check_padded=True)
    assert not strict.passed and strict.first_failure.key == "sequence_output"
    assert "padded batch 0, position 8, channel 5" in strict.summary()


def test_attention_to_padded_keys_from_valid_queries_fails(ours, inputs):
    cand = _copy(ours)
    cand["attention_probs"][0][0, 1, 2, 7] = 0.01  # valid query 2 attends to padded key 7
    report = compare(ours, cand, padding_mask=inputs["padding_mask"])
    assert report.first_failure.key == "attention_probs.0"
    assert report.first_failure.valid.worst_index == (0, 1, 2, 7)


def test_padded_query_rows_of_attention_are_padded(ours, inputs):
    cand = _copy(ours)
    cand["attention_probs"][0][0, 1, 7, 2] += 0.01  # query 7 is padding
    e = compare(ours, cand, padding_mask=inputs["padding_mask"])["attention_probs.0"]
    assert e.passed and e.padded.worst_index == (0, 1, 7, 2)


def test_pooled_output_is_padded_when_position_0_is():
    ref = {"pooled_output": np.zeros((2, 3))}
    cand = {"pooled_output": np.array([[0.0, 0.0, 0.0], [0.0, 9.0, 0.0]])}
    mask = np.array([[1, 1], [0, 1]])
    e = compare(ref, cand, padding_mask=mask)["pooled_output"]
    assert e.passed and e.padded.worst_index == (1, 1)


def test_nonfinite_values():
    ref = {"pooled_output": np.array([[np.nan, np.inf, 1.0]])}
    same = {"pooled_output": np.array([[np.nan, np.inf, 1.0]])}
    assert compare(ref, same).passed
    e = compare(ref, {"pooled_output": np.array([[np.nan, np.inf, np.nan]])})["pooled_output"]
    assert not e.passed and e.valid.nonfinite == 1 and e.valid.worst_index == (0, 2)
    e = compare(ref, {"pooled_output": np.array([[0.0, -np.inf, 1.0]])})["pooled_output"]
    assert not e.passed and e.valid.nonfinite == 2 and np.isnan(e.valid.max_abs_error)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_candidate_fails_even_at_padded_positions_and_prints_nan(ours, inputs, bad):
    cand = _copy(ours)
    cand["sequence_output"][0, 8, 3] = bad  # row 0 is padded from position 6 on
    report = compare(ours, cand, padding_mask=inputs["padding_mask"])
    e = report["sequence_output"]
    assert e.valid.passed and e.padded.nonfinite == 1 and not e.passed and not report.passed
    assert np.isnan(e.padded.max_abs_error) and e.padded.worst_index == (0, 8, 3)
    text = str(report)
    row = next(line for line in text.splitlines() if line.startswith("sequence_output"))
    assert "nan" in row and "inf" not in row
    assert "1 non-finite candidate value(s) at padded positions; the first at batch 0, position 8, channel 3" in text
    assert report.to_dict()["entries"][-2]["padded"]["max_abs_error"] == "nan"


def test_accepts_flat_keys_and_lists_alike(ours, inputs):
    flat = {f"hidden_states.{i}": h for i, h in enumerate(ours["hidden_states"])}
    report = compare(ours, flat, padding_mask=inputs["padding_mask"])
    assert [e.key for e in report] == [f"hidden_states.{i}" for i in range(4)]


@pytest.mark.parametrize(
    "candidate, message",
    [
        ({"hidden_state.1": np.zeros((2, 10, 16))}, "unknown output key 'hidden_state.1'"),
        ({"hidden_states.9": np.zeros((2, 10, 16))}, "has no hidden_states.9"),
        ({"sequence_output": np.zeros((2, 10, 15))}, "sequence_output: candidate has shape (2, 10, 15)"),
        ({}, "no outputs"),
    ],
)
def test_bad_candidates_raise_naming_the_key(ours, candidate, message):
    with pytest.raises(ValueError) as info:
        compare(ours, candidate)
    assert message in str(info.value)


def test_padding_mask_must_fit(ours):
    with pytest.raises(ValueError, match="does not fit padding_mask"):
        compare(ours, {"sequence_output": ours["sequence_output"]}, padding_mask=np.ones((2, 9)))


def test_negative_tolerance_is_an_error(ours):
    with pytest.raises(ValueError, match="atol and rtol must be >= 0"):
        compare(ours, ours, atol=-1.0)


def test_report_json_is_strict_json(ours, inputs):
    cand = _copy(ours)
    cand["pooled_output"][0, 0] = np.nan
    d = compare(ours, cand, padding_mask=inputs["padding_mask"]).to_dict()
    text = json.dumps(d, allow_nan=False)  # raises if a NaN/inf float slipped through
    back = json.loads(text)
    assert back["passed"] is False and back["first_failure"]["key"] == "pooled_output"
    assert back["entries"][-1]["valid"]["max_abs_error"] == "nan"


def test_candidate_equal_to_float32_floor_is_1x_the_floor(model, inputs):
    ours32 = model(inputs, output_hidden_states=True, output_attentions=True)
    report = compare_to_truth(model, inputs, ours32)
    assert isinstance(report, Report) and report.passed
    for e in report:
        # floor_scale is the floor's max abs error, or one float32 rounding of the largest value
        # when that is larger (the embedding lookups are exact): the ratio is 1 or below.
        assert e.valid.max_abs_error == e.floor.max_abs_error
        assert e.floor_scale >= e.floor.max_abs_error
        assert e.floor_ratio <= 1.0, e.key
        if e.floor.max_abs_error == e.floor_scale:
            assert e.floor_ratio == 1.0, e.key
    # The float32 floor is real: float32 and float64 evaluations differ (by float32 rounding).
    assert 0 < report["sequence_output"].floor.max_abs_error < 1e-5


def test_float16_candidate_is_many_times_the_float32_floor(model, inputs):
    half = BertBackbone(**model.config.to_dict(), dtype="float16", weights=model.weights)
    cand = half(inputs, output_hidden_states=True)
    report = compare_to_truth(model, inputs, {"sequence_output": cand["sequence_output"]}, precision="float32")
    e = report["sequence_output"]
    assert not report.passed and report.floor_ratio_limit is not None  # judged as a float32 port
    # float16 keeps 11 significant bits against float32's 24: its error is orders of magnitude
    # above the float32 floor; 10x is a deliberately loose lower bound that still cannot pass by accident.
    assert e.floor_ratio > 10
    assert "x floor" in report.format_table()


def test_table_names_columns_and_verdict(ours, inputs):
    text = str(compare(ours, ours, padding_mask=inputs["padding_mask"]))
    assert "max abs" in text and "rms" in text and "min cos" in text and "padded max abs" in text
    assert text.rstrip().splitlines()[-1].startswith("PASS")


def _summary_cases():
    """Outputs of the shapes `compare` meets, with the values that take the arithmetic's side roads:
    NaN and inf on either side, zeros in the reference, errors that overflow float64, exact matches."""
    rng = np.random.default_rng(11)
    for t in range(48):
        b, s, h, heads = int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 40)), 2
        key, shape = [("hidden_states.1", (b, s, h)), ("attention_probs.0", (b, heads, s, s)),
                      ("pooled_output", (b, h)), ("transformer_layer_0/feedforward_intermediate", (b, s, 2 * h))][t % 4]
        dtype = [np.float32, np.float64, np.float16][t % 3]
        ref = rng.standard_normal(shape).astype(np.float64 if t % 5 == 0 else np.float16 if t % 7 == 3 else np.float32)
        cand = (ref + rng.standard_normal(shape) * 10.0 ** float(rng.integers(-8, -1))).astype(dtype)
        r, c = ref.reshape(-1), cand.reshape(-1)
        if t % 6 == 1:
            c[rng.integers(c.size)] = [np.nan, np.inf, -np.inf][t % 3]
        if t % 6 == 2:
            j = rng.integers(r.size, size=4)
            r[j[:3]], c[j[:2]] = 0, 0  # 0/0 and x/0 in the relative error
            r[j[3]] = 1e-35 if r.dtype != np.float16 else 0  # below 2^-103: a subnormal float32 spacing
        if t % 6 == 3:
            i = rng.integers(r.size)
            r[i] = np.inf
            c[i] = np.inf if t % 12 == 3 else 1.0  # a reference's inf matched, or not
        if t % 6 == 4 and ref.dtype == np.float64 and dtype == np.float64:
            r[0], c[0] = 1.7e308, -1.7e308  # |c - r| overflows
        if t % 8 == 5:
            c[:] = r
        if t % 10 == 7:
            r[:] = 0  # a set whose magnitude cut is 0
        if ref.dtype == np.float64 and dtype == np.float64 and t % 3 == 1:
            r[-1], c[-1] = 3e39, 3.1e39  # beyond float32's range: its ulp is that of float32's max
        if t % 11 == 4:  # not C-contiguous (every other channel of a wider array; Fortran order): the
            # plain path, whose float64 copies keep the memory order the dot products depend on
            ref = np.repeat(ref, 2, axis=-1)[..., ::2]
            cand = np.asfortranarray(cand)
        mask = (rng.random((b, s)) < 0.6).astype(int)
        if t % 7 == 0:
            mask[:] = 1
        if t % 9 == 0:
            mask[:] = 0
        yield key, ref, cand, mask


@pytest.mark.parametrize("block", [1, 48, 1 << 15])
@pytest.mark.parametrize("atol, rtol", [(1e-5, 1e-4), (0.0, 0.0), (0.0, 1e-3), (1e-3, np.inf), (3e-3, 0.0)])
def test_blockwise_summaries_are_the_plain_stats_bit_for_bit(monkeypatch, block, atol, rtol):
    from bert_ref.oracle import blocked, keys, stats

    monkeypatch.setattr(blocked, "SUMMARY_BLOCK", block)
    checked = 0
    for key, ref, cand, mask in _summary_cases():
        for padding in (mask, None):
            valid = keys.valid_mask(key, ref.shape, None if padding is None else padding.astype(bool))
            assert blocked._fits_blocks(ref.shape, valid)  # the blockwise path, not the fallback
            with np.errstate(invalid="ignore"):  # rtol = inf times |r| = 0
                e = stats.elementwise(ref, cand, atol, rtol)
                want_v = stats.error_stats(e, valid)
                want_p = None if valid is None else stats.error_stats(e, ~valid)
                r64 = np.abs(ref.astype(np.float64))
                at_valid = r64 if valid is None else np.broadcast_to(valid, ref.shape).choose(0.0, r64)
                want_big = float(at_valid.max())
                got_v, got_p, got_big = blocked.summaries(ref, cand, atol, rtol, valid, True)
            # repr() spells every float exactly (and NaN as nan): equal text is equal bits.
            assert repr(got_v) == repr(want_v), key
            assert repr(got_p) == repr(want_p), key
            assert repr(got_big) == repr(want_big), key
            checked += want_v is not None
    assert checked > 60
