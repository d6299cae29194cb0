"""bert_ref's BertBackbone against the backbone goldens recorded from keras-hub and transformers.

Each case in `golden/backbone/manifest.json` holds random canonical weights, inputs, and the outputs
of the real frameworks (`tools/golden/make_golden.py`). For every case, anchor and dtype policy we rebuild
the model from the stored weights and compare sequence_output, pooled_output, every hidden state
and (where recorded) every layer's attention probabilities. Errors are reported separately for
valid and padded positions; the tolerance applies to every position.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy

from bert_ref import BertBackbone

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "backbone"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())

# ------------------------------------------------------------------------------------------------
# Tolerances: max abs error over every position of every compared tensor.
# ------------------------------------------------------------------------------------------------
TOLERANCE = {
    # Both sides compute in float32 with different summation orders (NumPy/BLAS vs
    # XLA or PyTorch); measured max error is below 1.5e-6 on every case (golden/README.md).
    "float32": 1e-5,
    # The float64 policy vs transformers run in double: only float64 rounding
    # (~1e-16 per op) separates them; measured below 1e-14 (golden/README.md).
    "float64": 1e-12,
    # Half precision: 4 ulps of the compute dtype at |x| in [2, 4) (every golden value has |x| < 4).
    # Measured max abs error vs keras-hub: 5.9e-3 (mixed_float16), 4.9e-3 (float16), 3.9e-2
    # (mixed_bfloat16), 4.7e-2 (bfloat16). keras on JAX CPU rounds after every primitive (matmul
    # and bias add separately, each op of the tanh GELU, softmax's exp/sum/divide); rounding only at
    # layer outputs flips 1-3 ulps that then propagate. See golden/README.md.
    "mixed_float16": 2.0**-7,
    "float16": 2.0**-7,
    "mixed_bfloat16": 2.0**-4,
    "bfloat16": 2.0**-4,
}


def _load(case: str) -> dict[str, np.ndarray]:
    return safetensors_numpy.load_file(str(GOLDEN / MANIFEST["cases"][case]["file"]))


_CACHE: dict[str, dict[str, np.ndarray]] = {}


def golden(case: str) -> dict[str, np.ndarray]:
    if case not in _CACHE:
        _CACHE[case] = _load(case)
    return _CACHE[case]


def weights_of(g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len("weights/"):]: v for k, v in g.items() if k.startswith("weights/")}


def inputs_of(g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len("inputs/"):]: v for k, v in g.items() if k.startswith("inputs/")}


def checks():
    for case, entry in sorted(MANIFEST["cases"].items()):
        for check in entry["checks"]:
            yield pytest.param(case, check, id=f"{case}-{check['anchor']}")


_RUNS: dict[tuple[str, str], dict] = {}


def run_ours(case: str, policy: str) -> dict:
    """Our model on the case's weights and inputs, under `policy` (cached per case and policy)."""
    key = (case, policy)
    if key not in _RUNS:
        g = golden(case)
        config = MANIFEST["cases"][case]["config"]
        model = BertBackbone(**config, dtype=policy, weights=weights_of(g))
        _RUNS[key] = model(inputs_of(g), output_hidden_states=True, output_attentions=True)
    return _RUNS[key]


def compare(name: str, ours, expected, tol: float, valid_rows: np.ndarray, token_mask: np.ndarray | None):
    """Assert max |ours - expected| <= tol over every position; messages split valid/padded.

    `token_mask` (B, S) marks valid tokens for (B, S, ...) tensors; None for per-row tensors whose
    row validity is `valid_rows` (B,)."""
    ours = np.asarray(ours, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape, f"{name}: shape {ours.shape} != golden {expected.shape}"
    assert np.isfinite(ours).all(), f"{name}: non-finite values in our output"
    err = np.abs(ours - expected)
    mask = token_mask if token_mask is not None else valid_rows
    mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * (err.ndim - mask.ndim)), err.shape)
    valid_err = float(err[mask].max()) if mask.any() else 0.0
    padded_err = float(err[~mask].max()) if (~mask).any() else 0.0
    worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    assert max(valid_err, padded_err) <= tol, (
        f"{name}: max abs err {max(valid_err, padded_err):.3e} > {tol:.1e} "
        f"(valid positions {valid_err:.3e}, padded positions {padded_err:.3e}; worst at {tuple(map(int, worst))})"
    )
    return valid_err, padded_err


def _anchor_tensors(g, anchor):
    prefix = anchor + "/"
    return {k[len(prefix):]: v for k, v in g.items() if k.startswith(prefix)}


def _tolerance(check) -> float:
    tol = TOLERANCE[check["policy"]]
    # The manifest records the tolerance the goldens were published with; keep them in step.
    assert check["max_abs"] == tol, (
        f"manifest tolerance {check['max_abs']} for {check['anchor']} differs from the test's {tol}"
    )
    return tol


def _require_compute_dtype(case, check, ours):
    """Half policies: outputs must come back in the anchor's compute dtype (a float16 run would pass
    a bfloat16 tolerance, so the dtype is checked on its own)."""
    if check["policy"] in ("float32", "float64"):
        return
    expected = MANIFEST["cases"][case]["anchors"][check["anchor"]]["compute_dtype"]
    got = np.asarray(ours["sequence_output"]).dtype.name
    assert got == expected, f"{check['policy']}: outputs are {got}, keras-hub computes in {expected}"


def _row_filter(case, check):
    """Rows to compare: all, except rows with no valid key for transformers' eager path."""
    mask = inputs_of(golden(case))["padding_mask"].astype(bool)
    rows = np.ones(mask.shape[0], dtype=bool)
    if check["anchor"].startswith("transformers_eager/"):
        rows = mask.any(axis=1)  # eager gives all-padding rows uniform attention; we follow keras-hub
    return rows, mask


@pytest.mark.parametrize("case,check", list(checks()))
def test_sequence_and_pooled_output_match_anchor(case, check):
    tol = _tolerance(check)
    rows, mask = _row_filter(case, check)
    ours = run_ours(case, check["policy"])
    _require_compute_dtype(case, check, ours)
    exp = _anchor_tensors(golden(case), check["anchor"])
    compare(f"{case} {check['anchor']} sequence_output", ours["sequence_output"][rows],
            exp["sequence_output"][rows], tol, mask.any(1)[rows], mask[rows])
    # pooled_output reads position 0: "padded" here means position 0 of the row is padding.
    compare(f"{case} {check['anchor']} pooled_output", ours["pooled_output"][rows],
            exp["pooled_output"][rows], tol, mask[rows, 0], None)


@pytest.mark.parametrize("case,check", list(checks()))
def test_hidden_states_match_anchor_layer_by_layer(case, check):
    tol = _tolerance(check)
    rows, mask = _row_filter(case, check)
    ours = run_ours(case, check["policy"])["hidden_states"]
    exp = _anchor_tensors(golden(case), check["anchor"])
    n = MANIFEST["cases"][case]["config"]["num_layers"]
    assert len(ours) == n + 1, f"expected {n + 1} hidden states (embeddings + {n} layers), got {len(ours)}"
    for i in range(n + 1):
        what = "embeddings layer norm" if i == 0 else f"layer {i - 1} output"
        compare(f"{case} {check['anchor']} hidden_states[{i}] ({what})", ours[i][rows],
                exp[f"hidden_states/{i}"][rows], tol, mask.any(1)[rows], mask[rows])


def attention_checks():
    for case, entry in sorted(MANIFEST["cases"].items()):
        g = golden(case)
        for check in entry["checks"]:
            if f"{check['anchor']}/attention_probs/0" in g:
                yield pytest.param(case, check, id=f"{case}-{check['anchor']}")


@pytest.mark.parametrize("case,check", list(attention_checks()))
def test_attention_probs_match_anchor(case, check):
    tol = _tolerance(check)
    rows, mask = _row_filter(case, check)
    ours = run_ours(case, check["policy"])["attention_probs"]
    exp = _anchor_tensors(golden(case), check["anchor"])
    for i in range(MANIFEST["cases"][case]["config"]["num_layers"]):
        # (B, heads, S, S): "padded" = the query position is padding.
        q_mask = mask[rows][:, None, :, None]
        q_mask = np.broadcast_to(q_mask, exp[f"attention_probs/{i}"][rows].shape)
        compare(f"{case} {check['anchor']} attention_probs[{i}]", ours[i][rows],
                exp[f"attention_probs/{i}"][rows], tol, None, q_mask)


# ------------------------------------------------------------------------------------------------
# The goldens themselves: they must be able to catch a mistake.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MANIFEST["cases"]))
def test_golden_weights_are_complete_and_every_tensor_is_random(case):
    from bert_ref import BertConfig

    config = BertConfig.from_dict(MANIFEST["cases"][case]["config"])
    w = weights_of(golden(case))
    assert sorted(w) == sorted(config.weight_shapes()), "golden weights differ from canonical names"
    for name, shape in config.weight_shapes().items():
        assert w[name].shape == shape, f"{name}: {w[name].shape} != {shape}"
        # No tensor may be constant (a 1-gamma or 0-bias would hide a mis-mapped tensor).
        assert np.std(w[name]) > 0.01, f"{name} is (nearly) constant: std {np.std(w[name])}"


@pytest.mark.parametrize("case", sorted(MANIFEST["cases"]))
def test_golden_manifest_records_provenance_and_reasons(case):
    entry = MANIFEST["cases"][case]
    assert MANIFEST["generator"].endswith("tools/make_golden.py")  # the path it had when it ran
    for key in ("keras", "keras_hub", "jax", "numpy", "python"):
        assert MANIFEST["versions"].get(key), f"manifest lacks the {key} version"
    assert MANIFEST["backend"] == "jax"
    assert isinstance(entry["seed"], int)
    assert entry["checks"], f"{case}: no checks"
    for check in entry["checks"]:
        assert check["reason"], f"{case} {check['anchor']}: tolerance without a reason"


def test_a_swapped_tensor_is_caught():
    """Swapping layer 0's query and key kernels moves the outputs far beyond the tolerance."""
    case = "one_head"
    g = golden(case)
    w = weights_of(g)
    p = "transformer_layer_0/self_attention_layer/"
    w[p + "query/kernel"], w[p + "key/kernel"] = w[p + "key/kernel"], w[p + "query/kernel"]
    out = BertBackbone(**MANIFEST["cases"][case]["config"], weights=w)(inputs_of(g))
    err = np.abs(np.asarray(out["sequence_output"], np.float64) - g["keras_hub/float32/sequence_output"]).max()
    assert err > 1000 * TOLERANCE["float32"], f"swapped query/key kernels moved outputs only {err:.2e}"


@pytest.mark.parametrize(
    "case,change",
    [("exact_gelu", {"activation": "gelu_approximate"}), ("layer_norm_epsilon_1e-3", {"layer_norm_epsilon": 1e-12})],
    ids=["exact_gelu-vs-tanh", "epsilon_1e-3-vs-1e-12"],
)
def test_golden_distinguishes_the_variant(case, change):
    """The exact-GELU and epsilon cases really pin their setting: the other setting fails them."""
    g = golden(case)
    config = {**MANIFEST["cases"][case]["config"], **change}
    out = BertBackbone(**config, weights=weights_of(g))(inputs_of(g))
    err = np.abs(np.asarray(out["sequence_output"], np.float64) - g["keras_hub/float32/sequence_output"]).max()
    assert err > 10 * TOLERANCE["float32"], f"{change} changes outputs by only {err:.2e}"
