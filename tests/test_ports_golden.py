"""Real ports of all-MiniLM-L6-v2 get the right verdict in the floor-ratio mode.

golden/ports/h100_*.safetensors: transformers `BertModel` on an NVIDIA H100 in float32 (TF32 off),
float32 with TF32 matmuls, float16, bfloat16 and float32 with eager attention (see
golden/ports/manifest.json; cut to 2 rows x 24 positions by tools/golden/trim_port_candidates.py).
golden/ports/cpu_wrong_op_float32.safetensors: transformers on the CPU with tanh GELU in layer 2
(tools/golden/make_port_candidates.py --fixture). Each real port must pass at the default K, the wrong op
must fail, at the output of the layer that has it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone, compare_to_truth
from bert_ref.io.arrays import read_arrays
from bert_ref.oracle.candidates import read_candidate, read_inputs
from bert_ref.oracle.run import DEFAULT_FLOOR_RATIO

PORTS = Path(__file__).resolve().parents[1] / "golden" / "ports"
MANIFEST = json.loads((PORTS / "manifest.json").read_text())


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return BertBackbone.from_preset(minilm_dir)


@pytest.mark.parametrize("name", ["fp32", "tf32", "fp16", "bf16", "fp32_eager_attentions"])
def test_real_gpu_ports_pass_at_the_default_floor_ratio(minilm, name):
    inputs = read_inputs(PORTS / MANIFEST["files"]["inputs"])
    candidate = read_candidate(PORTS / MANIFEST["files"][name])
    precision = MANIFEST["precision"][name]
    report = compare_to_truth(minilm, inputs, candidate.arrays, precision=precision)
    assert report.floor_ratio_limit == DEFAULT_FLOOR_RATIO
    assert report.passed, str(report)
    # Measured on these files: every ratio is below 2 (K = 4 leaves a factor 2 of margin).
    assert max(e.floor_ratio for e in report) < 2.0, str(report)


def test_bfloat16_file_written_by_torch_on_the_gpu_is_read_as_bfloat16():
    a = read_arrays(PORTS / MANIFEST["files"]["bf16"])
    assert {v.dtype.name for v in a.values()} == {"bfloat16"}


def test_one_wrong_op_fails_at_its_layer(minilm):
    meta = json.loads((PORTS / "cpu_wrong_op_float32.json").read_text())
    d = np.load(PORTS.parent / "minilm" / "outputs.npz")
    inputs = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith("inputs/")}
    candidate = read_candidate(PORTS / "cpu_wrong_op_float32.safetensors").arrays
    report = compare_to_truth(minilm, inputs, candidate, precision="float32")
    assert not report.passed
    first = report.first_failure
    assert first.key == f"hidden_states.{meta['wrong_layer'] + 1}"  # the output of the layer with the wrong op
    # Measured: ~1100x the float32 floor; 100x K would still fail.
    assert first.floor_ratio > 100 * DEFAULT_FLOOR_RATIO



def test_torch_dynamic_int8_port_passes_against_the_int8_floor(minilm):
    # torch quantises activations asymmetrically to uint8 (reduce_range), our int8 floor symmetrically
    # (see bert_ref.model.precision): not the same rounding, the same size of error. Measured on this
    # cut-down file: 0.94-1.09x of the floor.
    d = np.load(PORTS.parent / "minilm" / "outputs.npz")
    inputs = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith("inputs/")}
    candidate = read_candidate(PORTS / "cpu_int8.safetensors").arrays
    report = compare_to_truth(minilm, inputs, candidate, precision="int8")
    assert report.passed, str(report)
    # ... and as a float32 port it is far out: the int8 error is real.
    assert min(e.floor_ratio for e in compare_to_truth(minilm, inputs, candidate, precision="float32")) > 100


def test_float64_port_passes_against_the_modelled_float64_floor(minilm):
    # golden/minilm: transformers `model.double()` (tools/golden/make_checkpoint_golden.py). Our float64 run
    # is the truth, so the float64 floor is the float32 floor x 2^-29; measured 0.75-2.0x of it.
    d = np.load(PORTS.parent / "minilm" / "outputs.npz")
    inputs = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith("inputs/")}
    candidate = {"sequence_output": d["float64/last_hidden_state"], "pooled_output": d["float64/pooler_output"]}
    candidate.update({f"hidden_states.{i}": d[f"float64/hidden_states/{i}"] for i in range(6)})
    report = compare_to_truth(minilm, inputs, candidate)  # float64 read from the dtypes: absolute check
    assert report.precision == "float64" and report.floor_ratio_limit is None and report.passed
    report = compare_to_truth(minilm, inputs, candidate, precision="float64")
    assert report.floor_ratio_limit == DEFAULT_FLOOR_RATIO and report.passed, str(report)
    assert "f64 floor = our float32 vs float64 truth x 2^-29" in str(report)
