"""`compare --diagnose` names the planted mistake of every port of our suite, and nothing for correct ports.

The suite (golden/ports/planted, golden/ports/llama; see their manifest.json):

- transformers `BertModel` ports of all-MiniLM-L6-v2 on the CPU with one mistake of each kind planted
  in torch (tools/golden/make_planted_ports.py), at float32 and float16, and the correct ports;
- llama.cpp ports of the same checkpoint converted and quantised by llama.cpp's own tools (f32, f16,
  q8_0, q4_0, and a q8_0 GGUF with a planted epsilon), run through llama-cpp-python with the per-layer
  outputs read through the graph callback (tools/golden/make_llama_ports.py).

Each candidate is judged twice: with the layer outputs it holds (`hidden_states.0`, `hidden_states.1`)
and with its final outputs only, by the verdict of `compare_to_truth` (five statistics against the
ensemble of the precision), and diagnosed with that verdict. The expected verdicts and causes were
written by the generators before anything was judged; the cases where the measurement contradicts
them are listed in `MEASURED_PASS` with the measured ratio and the reason, and there the measured
verdict is asserted. A cause is named exactly when the verdict fails, and it is the planted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert_ref import BertBackbone
from bert_ref.oracle.candidates import read_candidate, read_inputs
from bert_ref.oracle.diagnose import diagnose
from bert_ref.oracle.run import compare_to_truth

PORTS = Path(__file__).resolve().parents[1] / "golden" / "ports"
PLANTED = json.loads((PORTS / "planted" / "manifest.json").read_text())
LLAMA = json.loads((PORTS / "llama" / "manifest.json").read_text())

#: Expected to fail, measured to pass: the mistake is below what the precision's floor can show.
#: Key: (suite, name, precision, view: "layers", "final" or "both"); value: the largest statistic measured, in
#: units of its limit (value / (K x the ensemble's largest)), and why.
MEASURED_PASS = {
    # float16 rounds every activation (2^-11): a tanh GELU differs by <= 5e-4, under it.
    ("planted", "activation_tanh_float16", "float16", "both"): (0.59, "tanh GELU below float16's rounding"),
    # a float16 softmax or layer norm only rounds where the float16 policy already rounds
    ("planted", "softmax_half_float16", "float16", "both"): (0.59, "rounds where float16 rounds"),
    ("planted", "layernorm_half_float16", "float16", "layers"): (0.82, "rounds where float16 rounds"),
    ("planted", "layernorm_half_float16", "float16", "final"): (0.53, "rounds where float16 rounds"),
    # llama.cpp's F16 GGUF rounds only dense inputs, our float16 every activation: its GELU table stays
    # within float16's floor (it fails at ggml_f16: 1.15x, sequence_output's mean cosine deficit)
    ("llama", "f16_single", "float16", "both"): (0.34, "the GELU table below float16's rounding"),
    # Final outputs only: where the mistake fades below the floor by the last layer. q4_0's floor at
    # the final output is 10x its embeddings'; the q8_0 epsilon's 6.3x of the limits at the embeddings
    # is 0.69x there; epsilon 1e-5 in float16 (1.39x at hidden_states.0) 0.40x there, the unbiased
    # variance (1.72x there) 0.77x.
    ("llama", "q4_0_pair", "q4_0", "final"): (0.51, "q4_0's floor at the final output"),
    ("llama", "q8_0_epsilon_1e-3_single", "q8_0", "final"): (0.69, "the epsilon fades by the last layer"),
    ("planted", "epsilon_1e-5_float16", "float16", "final"): (0.40, "the epsilon fades by the last layer"),
    ("planted", "variance_unbiased_float16", "float16", "final"): (0.77, "the 1/384 fades by the last layer"),
}
#: The planted cause ranks first but does not explain within the limits: torch's float16 additive
#: mask laid on the queries adds -65504 in float16 (steps of 32), so a padded query attends to its
#: top keys instead of uniformly, and later layers read those positions as keys (measured 19.4x the
#: limits; BERT 2.5e4x; final only).
PARTLY = {("planted", "mask_on_queries_float16", "final")}


def _measured_pass(suite: str, name: str, precision: str, view: str) -> float | None:
    """The measured ratio of a case listed in `MEASURED_PASS` (None: not listed)."""
    for v in (view, "both"):
        if (suite, name, precision, v) in MEASURED_PASS:
            return MEASURED_PASS[(suite, name, precision, v)][0]
    return None


def _cases() -> list[tuple[str, str, str, dict]]:
    out = [("planted", name, "inputs.safetensors", exp) for name, exp in PLANTED["expected"].items()]
    for name, exp in LLAMA["expected"].items():
        out.append(("llama", name, f"inputs_{name.rsplit('_', 1)[1]}.safetensors", exp))
    for name, exp in LLAMA["expected_ggml_f16"].items():
        out.append(("llama", name, f"inputs_{name.rsplit('_', 1)[1]}.safetensors", exp))
    return out


#: Every candidate with its layer outputs; with its final outputs only, the llama.cpp ports, the
#: float32 planted ports and the float16 ones listed above (the other float16 ones repeat the float32
#: ones at several times the cost of a local diagnosis).
CASES = [(*c, "layers") for c in _cases()] + [
    (*c, "final") for c in _cases()
    if c[0] == "llama" or c[3]["precision"] == "float32" or (c[0], c[1], "final") in PARTLY
    or _measured_pass(c[0], c[1], c[3]["precision"], "final") is not None]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return BertBackbone.from_preset(minilm_dir)


@pytest.fixture(scope="module")
def oracle_cache(tmp_path_factory):
    """An oracle cache of this module's own: the verdict's runs are then the diagnosis' (the same
    truth and ensemble, read back instead of run twice)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path_factory.mktemp("oracle-cache")))
        yield


@pytest.mark.parametrize("suite, name, inputs_file, expected, view", CASES,
                         ids=[f"{s}/{n}@{e['precision']}-{v}" for s, n, _, e, v in CASES])
def test_diagnosis_names_the_planted_cause_and_nothing_for_correct_ports(minilm, oracle_cache, suite, name, inputs_file,
                                                                          expected, view):
    inputs = read_inputs(PORTS / suite / inputs_file)
    candidate = read_candidate(PORTS / suite / f"{name}.safetensors").arrays
    if view == "final":
        candidate = {k: v for k, v in candidate.items() if not k.startswith("hidden_states")}
    precision = expected["precision"]
    report = compare_to_truth(minilm, inputs, candidate, precision=precision, cache=True)
    if _measured_pass(suite, name, precision, view) is not None:
        assert report.passed, str(report)
    else:
        assert ("PASS" if report.passed else "FAIL") == expected["verdict"], str(report)
    diagnosis = diagnose(minilm, inputs, candidate, precision=precision, report=report, cache=True)
    assert diagnosis is not None
    if report.passed:  # a passing port gets no cause
        assert diagnosis.cause is None and not diagnosis.ranked, diagnosis.format()
        assert diagnosis.likely_cause().startswith("Likely cause: none: the verdict passes")
        return
    assert expected["cause"] is not None, diagnosis.format()
    allowed = {expected["cause"], *expected.get("with", [])}
    best = diagnosis.ranked[0]
    assert expected["cause"] in best.ids and set(best.ids) <= allowed, diagnosis.format()
    assert diagnosis.cause is best, diagnosis.format()
    assert diagnosis.likely_cause().startswith("Likely cause: ")
    assert best.name in diagnosis.likely_cause()
    if (suite, name, view) not in PARTLY:
        assert best.explains and best.ratio <= 1, diagnosis.format()  # the verdict passes it against the variant
    assert best.score < diagnosis.baseline.score, diagnosis.format()  # more likely than no mistake at all


def test_diagnose_computes_the_verdict_itself_when_not_given_one(minilm):
    inputs = read_inputs(PORTS / "llama" / "inputs_single.safetensors")
    candidate = read_candidate(PORTS / "llama" / "f16_single.safetensors").arrays
    # the ggml_f16 verdict fails the F16 GGUF's GELU table (1.15x the limits: mean cosine deficit) ...
    d = diagnose(minilm, inputs, candidate, precision="ggml_f16")
    assert d is not None and d.cause is not None and d.cause.ids == ("activation=gelu_approximate_f16_table",)
    # ... the float16 verdict passes it, and so does the diagnosis
    d = diagnose(minilm, inputs, candidate, precision="float16")
    assert d is not None and d.cause is None and not d.ranked


# -- the command ---------------------------------------------------------------------------------


def _compare(env, minilm_dir, name, precision, *extra):
    import subprocess
    import sys

    batch = name.rsplit("_", 1)[1]
    return subprocess.run([sys.executable, "-m", "bert_ref", "compare", str(minilm_dir), "-i",
                           str(PORTS / "llama" / f"inputs_{batch}.safetensors"), "-c",
                           str(PORTS / "llama" / f"{name}.safetensors"), "--precision", precision, *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_diagnose_names_llama_cpps_gelu_table_and_json_carries_it(env, minilm_dir):
    r = _compare(env, minilm_dir, "f32_single", "float32", "--diagnose")
    assert r.returncode == 1, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("Likely cause:")]
    assert len(lines) == 1 and "activation=gelu_approximate_f16_table" in lines[0], r.stdout
    assert "float16 table" in lines[0]
    assert "rank" in r.stdout and "hypothesis" in r.stdout  # the short ranked table
    j = _compare(env, minilm_dir, "f32_single", "float32", "--diagnose", "--json")
    d = json.loads(j.stdout)
    assert d["diagnosis"]["likely_cause"]["ids"] == ["activation=gelu_approximate_f16_table"]
    assert d["diagnosis"]["line"] == lines[0]
    assert d["diagnosis"]["ranked"][0]["explains"] is True


def test_cli_failing_report_suggests_diagnose_and_passing_port_gets_no_cause(env, minilm_dir):
    r = _compare(env, minilm_dir, "f32_pair", "float32")
    assert r.returncode == 1 and "--diagnose" in r.stdout and "Likely cause" not in r.stdout, r.stdout
    ok = _compare(env, minilm_dir, "q8_0_single", "q8_0", "--diagnose")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Likely cause" not in ok.stdout and "--diagnose" not in ok.stdout
    j = json.loads(_compare(env, minilm_dir, "q8_0_single", "q8_0", "--diagnose", "--json").stdout)
    assert j["diagnosis"] is None


def test_block_quantised_llama_ports_pass_under_their_own_policies_and_fail_under_int8_floors(minilm):
    for name, precision in (("q8_0_single", "q8_0"), ("q4_0_single", "q4_0")):
        inputs = read_inputs(PORTS / "llama" / "inputs_single.safetensors")
        candidate = read_candidate(PORTS / "llama" / f"{name}.safetensors").arrays
        for view in (candidate, {"sequence_output": candidate["sequence_output"]}):
            report = compare_to_truth(minilm, inputs, view, precision=precision)
            assert report.passed, str(report)
            # measured 0.96-1.05x the ensemble's largest max abs: the emulation is ggml's rounding, not a looser floor
            assert max(e.floor_ratio for e in report) < 2, str(report)
        # the same q8_0 port fails the int8 floor at the embeddings, whose q8_0 table int8 does not model
        if precision == "q8_0":
            assert not compare_to_truth(minilm, inputs, candidate, precision="int8").passed
