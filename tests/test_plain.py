"""Run what you read: `forward(..., plain=True)` and `BertBackbone(..., plain=True)` run the ops of
`bert_ref.ops` alone. With every function of `bert_ref.model.kernels` made to raise they still give
the fast forward's outputs: bit for bit with the fast path's two documented roundings switched off
(the float32 exact GELU's other formula, attention over the valid keys only), within the bound
stated below with them on."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest

from bert_ref import BertBackbone, forward
from bert_ref.model import kernels, runtime
from bert_ref.oracle.keys import flatten_outputs

POLICIES = ["float32", "float64", "mixed_float16", "bfloat16", "tf32", "int8"]


def _raiser(name: str):
    def raiser(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} ran in a plain forward")

    return raiser


def _make_all_raise(monkeypatch, module) -> None:
    for name, obj in list(vars(module).items()):
        if inspect.isfunction(obj):
            monkeypatch.setattr(module, name, _raiser(f"{module.__name__}.{name}"))
    if module is kernels:
        monkeypatch.setattr(kernels, "ACTIVATIONS", {k: _raiser(f"kernels.{k}") for k in kernels.ACTIVATIONS})
        monkeypatch.setattr(kernels, "_GELU_BLOCKS", {k: _raiser("a GELU block") for k in kernels._GELU_BLOCKS})


def _model(dtype: str, activation: str) -> tuple[BertBackbone, dict]:
    # Large enough that the fast forward splits the batch over threads (runtime.MIN_PART), with a
    # right-padded row, a fully padded row and a row of one token.
    if dtype.endswith("bfloat16"):
        pytest.importorskip("ml_dtypes")
    model = BertBackbone(vocabulary_size=300, num_layers=2, num_heads=4, hidden_dim=128, intermediate_dim=200,
                         max_sequence_length=128, activation=activation, seed=11, dtype=dtype)
    mask = np.ones((5, 128), bool)
    mask[0, 70:] = False
    mask[2, :] = False
    mask[4, 1:] = False
    rng = np.random.default_rng(3)
    inputs = {"token_ids": rng.integers(0, 300, mask.shape), "segment_ids": rng.integers(0, 2, mask.shape),
              "padding_mask": mask}
    return model, inputs


def _same(a: np.ndarray, b: np.ndarray, key: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, key
    assert a.tobytes() == b.tobytes(), f"{key}: max |diff| {np.abs(a.astype(np.float64) - b).max()}"


@pytest.mark.parametrize("dtype", POLICIES)
@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate"])
def test_plain_forward_runs_without_kernels_and_gives_the_same_bits(monkeypatch, dtype, activation):
    monkeypatch.setattr(runtime, "THREADS", 2)  # the fast forward splits the batch even on one core
    model, inputs = _model(dtype, activation)
    asked = dict(output_hidden_states=True, output_attentions=True)
    # The fast forward, with its two roundings of its own switched off: the erf-table GELU in float32
    # (the plain op's arithmetic) and attention over all keys (the masked softmax's).
    monkeypatch.setitem(kernels._GELU_BLOCKS, np.float32, kernels._gelu_erf_block)
    monkeypatch.setattr(kernels, "VALID_KEYS", False)
    fast = {"untraced": flatten_outputs(model(inputs, **asked)),
            "traced": flatten_outputs(model(inputs, **asked, trace=True))}
    prepared = model.prepared_weights()
    _make_all_raise(monkeypatch, kernels)
    if not model.dtype_policy.rounds_matmul_inputs:  # (tf32 and int8 run the plain ops in any case)
        with pytest.raises(AssertionError, match="in a plain forward"):  # the patch bites
            model(inputs)
    plain_model = BertBackbone(**model.config.to_dict(), dtype=dtype, weights=model.weights, plain=True)
    runs = {"untraced": [plain_model(inputs, **asked), forward(prepared, model.config, inputs, dtype=dtype,
                                                                    plain=True, **asked)],
            "traced": [model(inputs, **asked, trace=True, plain=True)]}
    for kind, outs in runs.items():
        for out in outs:
            flat = flatten_outputs(out)
            assert list(flat) == list(fast[kind])
            for key in flat:
                _same(flat[key], fast[kind][key], key)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate"])
def test_plain_forward_is_within_its_bound_of_the_fast_forward(monkeypatch, dtype, activation):
    # The fast path's own roundings on: attention over the n valid keys of right-padded rows (its
    # sums re-associated: tests/test_kernels.py bounds a 2-layer forward at 4 ulps of the largest
    # output) and, in float32, the exact GELU's logit formula (per element within
    # 2.02e-7 * max(|x|, 1) of the plain op: tests/test_kernels.py). Measured on this model and three
    # more seeds: sequence_output within 3 ulps of its largest value in both dtypes and with both
    # GELUs, pooled_output within 2.4e-7 (float32) / 2.3e-16 (float64). Bound: 4 ulps of the largest
    # sequence output for both (the pooler's dense layer, kernel entries ~0.02, shrinks the error).
    monkeypatch.setattr(runtime, "THREADS", 2)
    model, inputs = _model(dtype, activation)
    fast = model(inputs, output_hidden_states=True)
    _make_all_raise(monkeypatch, kernels)
    plain = model(inputs, output_hidden_states=True, plain=True)
    bound = 4 * np.spacing(np.abs(plain["sequence_output"]).max())
    for a, b in zip(fast["hidden_states"], plain["hidden_states"], strict=True):
        assert a.dtype == b.dtype and np.abs(a - b).max() <= bound
    assert np.abs(fast["pooled_output"] - plain["pooled_output"]).max() <= bound


def test_plain_forward_starts_no_thread_and_uses_no_runtime(monkeypatch):
    model, inputs = _model("float32", "gelu")
    expected = model(inputs, plain=True)
    prepared = model.prepared_weights()  # (the casts of `prepare` may use threads; the forward does not)
    _make_all_raise(monkeypatch, kernels)
    _make_all_raise(monkeypatch, runtime)
    monkeypatch.setattr(threading.Thread, "start", _raiser("threading.Thread.start"))
    out = forward(prepared, model.config, inputs, plain=True)
    _same(out["sequence_output"], expected["sequence_output"], "sequence_output")
