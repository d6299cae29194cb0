"""The files ports produce: bfloat16 in .npz / .safetensors, Hugging Face / ONNX names, stacked
arrays, .npy, inputs stored with outputs; and `bert-ref compare`'s precision options, --junit and
config overrides, end to end."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone
from bert_ref.io.arrays import ArrayFileError, read_arrays, write_arrays
from bert_ref.oracle.candidates import read_candidate, read_inputs

from needs import need, run_bert_ref

ml_dtypes = need("ml_dtypes", 'pip install "bert-ref[bf16]"')
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "ports"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ports")
    model = BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                         max_sequence_length=12, seed=5, activation="gelu")
    model.save_to_preset(d / "tiny")
    inputs = {"token_ids": np.array([[2, 7, 9, 11, 3, 0], [2, 5, 6, 7, 8, 3]]),
              "segment_ids": np.zeros((2, 6), np.int64),
              "padding_mask": np.array([[1, 1, 1, 1, 1, 0], [1] * 6])}
    np.savez(d / "in.npz", **inputs)
    return d, model, inputs


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(tmp_path / "oracle-cache"))
    monkeypatch.setenv("BERT_REF_OFFLINE", "1")


# -- bfloat16 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_bfloat16_round_trips_through_our_files(tmp_path, suffix):
    a = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(ml_dtypes.bfloat16)
    path = write_arrays(tmp_path / f"o{suffix}", {"sequence_output": a[None]})
    back = read_arrays(path)["sequence_output"]
    assert back.dtype.name == "bfloat16" and np.array_equal(back.view(np.uint16), a[None].view(np.uint16))


def test_bfloat16_safetensors_written_by_torch_is_read():
    # golden/ports/torch_bf16.safetensors: torch.save_file of a bfloat16 tensor (tools/golden/make_port_candidates.py).
    arrays = read_arrays(GOLDEN / "torch_bf16.safetensors")
    meta = json.loads((GOLDEN / "torch_bf16.json").read_text())
    a = arrays["last_hidden_state"]
    assert a.dtype.name == "bfloat16" and list(a.shape) == meta["shape"]
    assert a.view(np.uint16).ravel()[:8].tolist() == meta["first_bits"]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_missing_ml_dtypes_names_file_key_and_install_command(tmp_path, suffix, monkeypatch):
    a = np.ones((1, 2, 3), np.float32).astype(ml_dtypes.bfloat16)
    path = write_arrays(tmp_path / f"o{suffix}", {"sequence_output": a})
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now raises ImportError
    with pytest.raises(ArrayFileError) as info:
        read_arrays(path)
    msg = str(info.value)
    assert str(path) in msg and "'sequence_output'" in msg and "bfloat16" in msg and "pip install ml_dtypes" in msg


# -- names ----------------------------------------------------------------------------------------


def test_hugging_face_names_stacked_arrays_and_stored_inputs(tmp_path):
    h = np.zeros((3, 2, 6, 16), np.float32)
    att = np.zeros((2, 2, 2, 6, 6), np.float32)
    np.savez(tmp_path / "hf.npz", last_hidden_state=h[-1], pooler_output=np.zeros((2, 16), np.float32),
             hidden_states=h, attentions=att, input_ids=np.zeros((2, 6), np.int64),
             attention_mask=np.ones((2, 6), np.int64))
    c = read_candidate(tmp_path / "hf.npz")
    assert sorted(c.arrays) == sorted(["sequence_output", "pooled_output", "hidden_states.0", "hidden_states.1",
                                       "hidden_states.2", "attention_probs.0", "attention_probs.1"])
    text = "\n".join(c.notes)
    assert "last_hidden_state read as sequence_output" in text and "pooler_output read as pooled_output" in text
    assert "hidden_states (3, 2, 6, 16) split into hidden_states.0 .. hidden_states.2" in text
    assert "attentions (2, 2, 2, 6, 6) split into attention_probs.0 .. attention_probs.1" in text
    assert "ignored the inputs stored with the outputs: input_ids, attention_mask" in text


def test_npy_holds_one_output(tmp_path):
    np.save(tmp_path / "out.npy", np.zeros((2, 6, 16), np.float32))
    c = read_candidate(tmp_path / "out.npy")
    assert list(c.arrays) == ["sequence_output"] and "read as sequence_output" in c.notes[0]
    np.save(tmp_path / "pooler_output.npy", np.zeros((2, 16), np.float32))
    assert list(read_candidate(tmp_path / "pooler_output.npy").arrays) == ["pooled_output"]
    np.save(tmp_path / "hidden_states.npy", np.zeros((3, 2, 6, 16), np.float32))
    assert len(read_candidate(tmp_path / "hidden_states.npy").arrays) == 3
    np.save(tmp_path / "x.npy", np.zeros(5, np.float32))
    with pytest.raises(ArrayFileError, match="a .npy file holds one output"):
        read_candidate(tmp_path / "x.npy")


@pytest.mark.parametrize("key, closest", [("last_hidden_states", "last_hidden_state"),
                                          ("hidden_state.1", "hidden_states.1"), ("pooled_outputs", "pooled_output"),
                                          ("transformer_layer_0/querry", "transformer_layer_0/query")])
def test_unknown_name_lists_the_valid_ones_and_the_closest(tmp_path, key, closest):
    np.savez(tmp_path / "c.npz", **{key: np.zeros((2, 6, 16), np.float32)})
    with pytest.raises(ArrayFileError) as info:
        read_candidate(tmp_path / "c.npz")
    msg = str(info.value)
    assert f"unexpected key {key!r}" in msg and "sequence_output, pooled_output" in msg and "last_hidden_state" in msg
    assert f"Did you mean {closest!r}?" in msg


def test_inputs_file_with_hugging_face_names(tmp_path):
    np.savez(tmp_path / "hf_in.npz", input_ids=np.array([[101, 7, 102]]), token_type_ids=np.zeros((1, 3), np.int64),
             attention_mask=np.array([[1, 1, 0]]))
    ins = read_inputs(tmp_path / "hf_in.npz")
    assert sorted(ins) == ["padding_mask", "segment_ids", "token_ids"]
    assert ins["padding_mask"].tolist() == [[True, True, False]]
    np.savez(tmp_path / "both.npz", input_ids=np.array([[1]]), token_ids=np.array([[1]]))
    with pytest.raises(ArrayFileError, match="both 'token_ids' and its Hugging Face name 'input_ids'"):
        read_inputs(tmp_path / "both.npz")


# -- the command ----------------------------------------------------------------------------------


def test_compare_reads_its_own_bfloat16_run_and_judges_it_against_the_bf16_floor(work, env):
    d, _, _ = work
    r = run_bert_ref("run", d / "tiny", "-i", d / "in.npz", "-o", d / "bf.npz", "--dtype", "bfloat16",
                     "--hidden-states")
    assert r.returncode == 0, r.stderr
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", d / "bf.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "note: precision bfloat16, from the candidate's dtypes" in r.stdout
    assert "bf16 floor" in r.stdout and "max abs error <= 4 x the bf16 floor" in r.stdout
    # Without the precision (--atol given) the bfloat16 run is over float32's tolerance, and the hint says what to do.
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", d / "bf.npz", "--atol", "1e-5")
    assert r.returncode == 1 and "--precision compares it with the float64 truth" in r.stdout


def test_compare_activation_override_tests_the_other_gelu(work, env, tmp_path):
    d, model, inputs = work
    w = {k: (v * 50 if "feedforward_intermediate_dense/kernel" in k else v) for k, v in model.weights.items()}
    big = BertBackbone(**model.config.to_dict(), weights=w)
    big.save_to_preset(tmp_path / "big")
    tanh = BertBackbone(**{**model.config.to_dict(), "activation": "gelu_approximate"}, weights=w)
    out = tanh(inputs, output_hidden_states=True)
    np.savez(tmp_path / "tanh.npz", last_hidden_state=out["sequence_output"],
             hidden_states=np.stack(out["hidden_states"]))
    r = run_bert_ref("compare", tmp_path / "big", "-i", d / "in.npz", "-c", tmp_path / "tanh.npz",
                     "--precision", "float32")
    assert r.returncode == 1 and "First over tolerance: hidden_states.1" in r.stdout, r.stdout + r.stderr
    r = run_bert_ref("compare", tmp_path / "big", "-i", d / "in.npz", "-c", tmp_path / "tanh.npz", "--precision",
                     "float32", "--activation", "gelu_approximate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "note: activation overridden: gelu_approximate (the preset says gelu)" in r.stdout


def test_compare_shape_mismatch_is_reported_before_running(work, env, tmp_path):
    d, _, _ = work
    np.savez(tmp_path / "short.npz", last_hidden_state=np.zeros((2, 5, 16), np.float32))
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "short.npz")
    assert r.returncode == 2
    assert "sequence_output has shape (2, 5, 16), expected (2, 6, 16)" in r.stderr
    assert "same padded batch as the inputs file" in r.stderr


def test_compare_junit_report(work, env, tmp_path):
    d, model, inputs = work
    out = model(inputs, output_hidden_states=True)
    bad = {f"hidden_states.{i}": h.copy() for i, h in enumerate(out["hidden_states"])}
    bad["hidden_states.2"][1, 2, 3] += 1e-2
    np.savez(tmp_path / "bad.npz", **bad)
    junit = tmp_path / "report.xml"
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "bad.npz", "--junit", junit)
    assert r.returncode == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["hidden_states.0", "hidden_states.1", "hidden_states.2"]
    failure = cases["hidden_states.2"].find("failure")
    assert failure is not None and "batch 1, position 2, channel 3" in failure.get("message")
    assert cases["hidden_states.0"].find("failure") is None
    assert "First over tolerance" in suite.find("system-out").text
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_compare_per_kind_atol_on_the_command_line(work, env, tmp_path):
    d, model, inputs = work
    out = model(inputs, output_attentions=True)
    cand = {"sequence_output": out["sequence_output"] + np.float32(5e-3),
            "attention_probs.0": out["attention_probs"][0]}
    np.savez(tmp_path / "c.npz", **cand)
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "c.npz", "--atol",
                     "1e-6,hidden_states=1e-2", "--rtol", "0", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["atol"] == {"default": 1e-6, "hidden_states": 1e-2}
    assert {e["key"]: e["atol"] for e in rep["entries"]} == {"attention_probs.0": 1e-6, "sequence_output": 1e-2}
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "c.npz", "--atol", "hiden_states=1")
    assert r.returncode == 2 and "closest: 'hidden_states'" in r.stderr


def test_compare_layer_norm_epsilon_override(work, env, tmp_path):
    d, model, inputs = work
    other = BertBackbone(**{**model.config.to_dict(), "layer_norm_epsilon": 1e-3}, weights=model.weights)
    np.savez(tmp_path / "eps.npz", sequence_output=other(inputs)["sequence_output"])
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "eps.npz")
    assert r.returncode == 1, r.stdout + r.stderr
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "eps.npz",
                     "--layer-norm-epsilon", "1e-3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "note: layer_norm_epsilon overridden: 0.001 (the preset says 1e-12)" in r.stdout


def test_compare_truth_with_dtype_labels_the_floor_with_that_precision(work, env):
    d, _, _ = work
    if not (d / "bf.npz").exists():
        r = run_bert_ref("run", d / "tiny", "-i", d / "in.npz", "-o", d / "bf.npz", "--dtype", "bfloat16")
        assert r.returncode == 0
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", d / "bf.npz", "--truth", "--dtype", "float16",
                     "--atol", "1", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["precision"] == "float16" and rep["floor"] == "our float16 vs float64 truth"
    assert rep["floor_ratio_limit"] is None and rep["atol"] == 1.0  # --atol given: the absolute check
    table = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", d / "bf.npz", "--truth", "--dtype", "float16")
    assert table.returncode in (0, 1) and "f16 floor = our float16 vs float64 truth" in table.stdout


def test_compare_stores_our_runs_in_the_cache_and_no_cache_does_not(work, tmp_path, monkeypatch):
    d, model, inputs = work
    monkeypatch.setenv("BERT_REF_OFFLINE", "1")
    np.savez(tmp_path / "c.npz", sequence_output=model(inputs)["sequence_output"])
    cache = tmp_path / "oc"
    monkeypatch.setenv("BERT_REF_ORACLE_CACHE", str(cache))
    r = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "c.npz", "--no-cache")
    assert r.returncode == 0
    assert not cache.exists()
    first = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "c.npz")
    entries = sorted(cache.glob("*.safetensors"))
    assert first.returncode == 0 and len(entries) == 2  # our float32 reference and the float64 truth
    stamps = [p.stat().st_mtime_ns for p in entries]
    second = run_bert_ref("compare", d / "tiny", "-i", d / "in.npz", "-c", tmp_path / "c.npz")
    assert second.returncode == 0 and second.stdout == first.stdout
    assert sorted(cache.glob("*.safetensors")) == entries  # read back, nothing new written
    assert all(p.stat().st_mtime_ns >= s for p, s in zip(entries, stamps, strict=True))
