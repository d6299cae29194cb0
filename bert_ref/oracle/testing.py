"""Assertions for a port's own test suite, in the style of `numpy.testing` / `torch.testing`.

    >>> import numpy as np
    >>> from bert_ref import BertBackbone
    >>> from bert_ref.testing import assert_close_to_reference
    >>> model = BertBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
    ...                      intermediate_dim=16, max_sequence_length=8, seed=0)
    >>> inputs = {"token_ids": [[2, 5, 7, 0]], "padding_mask": [[1, 1, 1, 0]]}
    >>> mine = {"last_hidden_state": model(inputs)["sequence_output"]}   # a float32 "port"
    >>> assert_close_to_reference(mine, model, inputs, cache=False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bert_ref.model.precision import HALF_PRECISIONS
from bert_ref.oracle.candidates import canonical_outputs
from bert_ref.oracle.compare import compare
from bert_ref.oracle.run import check_candidate, compare_to_truth, oracle_outputs
from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

__all__ = ["assert_close_to_reference"]


def _canonical(candidate: Mapping[str, Any],
               stacked: list[tuple[str, int]] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The candidate by our keys, read by the one reader of candidates
    (`bert_ref.oracle.candidates.canonical_outputs`: Hugging Face names, stacked arrays, the dtype
    rule); torch tensors and other array-likes become NumPy arrays first. Each stacked array's
    (name, entries) is appended to `stacked` (for `check_stacked`)."""
    if not isinstance(candidate, Mapping):
        raise TypeError("candidate_outputs must be a mapping of output names to arrays, got "
                        f"{type(candidate).__name__}")
    arrays: dict[str, Any] = {}
    for key, value in candidate.items():
        if isinstance(value, Mapping):
            arrays[key] = {k: _numpy(v) for k, v in value.items()}
        elif isinstance(value, (list, tuple)) and key in ("hidden_states", "attentions", "attention_probs"):
            arrays[key] = [_numpy(v) for v in value]
        else:
            arrays[key] = _numpy(value)
    read = canonical_outputs(arrays, "candidate_outputs")
    if stacked is not None:
        stacked.extend(read.stacked)
    return read.arrays, list(read.notes)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)  # a torch tensor: to the CPU, bfloat16 via float32
    if detach is not None:
        t = detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import ml_dtypes

            return t.float().numpy().astype(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(value)


def assert_close_to_reference(
    candidate_outputs: Mapping[str, Any],
    preset_or_model: Any,
    inputs: Mapping[str, Any],
    *,
    precision: str | None = None,
    floor_ratio: float | None = None,
    atol: float | Mapping[str, float] | str | None = None,
    rtol: float | Mapping[str, float] | str | None = None,
    truth: bool | None = None,
    check_padded: bool = False,
    activation: str | None = None,
    layer_norm_epsilon: float | None = None,
    cache: bool = True,
    int8_scheme: str | None = None,
) -> None:
    """Assert that a port's outputs agree with bert_ref's, as `bert-ref compare` decides.

    The same rules as the command: with a precision (given, or float16 / bfloat16 read from the
    arrays' dtypes) the outputs are compared with our float64 truth in the floor-ratio mode (each
    output's statistics within their limits of our own runs' errors in that precision,
    `bert_ref.oracle.verdict`); otherwise with our
    float32 outputs within `atol + rtol * |reference|`.

    Args:
        candidate_outputs: a mapping of output names to arrays (NumPy arrays, torch tensors or
            nested lists): our keys (`sequence_output`, `hidden_states.3`, trace names, ...) or
            Hugging Face's (`last_hidden_state`, `pooler_output`, `hidden_states` as a tuple or a
            stacked array, `attentions`). Inputs passed along (`input_ids`, ...) are ignored.
        preset_or_model: a preset (built-in name, directory, `hf://...`, `kaggle://...`) or a
            `BertBackbone`.
        inputs: `token_ids`/`input_ids`, `segment_ids`/`token_type_ids`, `padding_mask`/`attention_mask`.
        precision: "float16", "bfloat16", "tf32", "int8", "float32" or "float64".
        floor_ratio: K of the floor-ratio mode (default `bert_ref.oracle.DEFAULT_FLOOR_RATIO`).
        atol, rtol: absolute-mode tolerances (numbers, or per kind: `"1e-5,attention_probs=1e-6"`).
        truth: compare with the float64 truth even in the absolute mode (default: when a precision
            applies).
        check_padded: padded positions fail the check too.
        activation, layer_norm_epsilon: override the preset's config.
        cache: reuse our runs through the on-disk cache (`bert_ref.oracle.cache`).
        int8_scheme: with precision "int8", the port's recipe (`bert_ref.oracle.int8`, e.g. "torch",
            "ort,per=channel"); default: detected from the outputs' errors.

    Raises:
        AssertionError: an output over tolerance; the message is the command's report (the table
            and the first element over tolerance).
        ValueError: unknown keys, or shapes that are not the inputs' padded batch.

    Examples:

    >>> import numpy as np
    >>> from bert_ref import BertBackbone
    >>> model = BertBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
    ...                      intermediate_dim=16, max_sequence_length=8, seed=0)
    >>> inputs = {"input_ids": [[2, 5, 7, 0]], "attention_mask": [[1, 1, 1, 0]]}
    >>> out = model({"token_ids": [[2, 5, 7, 0]], "padding_mask": [[1, 1, 1, 0]]})
    >>> out["sequence_output"][0, 1, 2] += 0.5                  # a bug
    >>> assert_close_to_reference(out, model, inputs, cache=False)    # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: ...First over tolerance: sequence_output (final output): at batch 0, position 1, channel 2...
    """
    from bert_ref.backbone import BertBackbone
    from bert_ref.oracle.candidates import check_inputs

    model = preset_or_model if isinstance(preset_or_model, BertBackbone) else BertBackbone.from_preset(preset_or_model)
    changes: dict[str, Any] = {}
    if activation is not None:
        changes["activation"] = activation
    if layer_norm_epsilon is not None:
        changes["layer_norm_epsilon"] = layer_norm_epsilon
    if changes:
        model = BertBackbone(**{**model.config.to_dict(), **changes}, dtype=model.dtype_policy, weights=model.weights)
    ins = check_inputs({k: np.asarray(v) for k, v in inputs.items()}, "inputs")
    stacked: list[tuple[str, int]] = []
    flat, notes = _canonical(candidate_outputs, stacked)
    check_candidate(flat, model.config, ins, "candidate_outputs", stacked)
    from bert_ref.oracle.run import detect_precision

    detected = detect_precision(flat)
    use_truth = truth if truth is not None else (
        precision is not None or floor_ratio is not None
        or (detected in HALF_PRECISIONS and atol is None and rtol is None))
    if use_truth:
        report = compare_to_truth(model, ins, flat, precision=precision, floor_ratio=floor_ratio, atol=atol, rtol=rtol,
                                  check_padded=check_padded, notes=notes, cache=cache, int8_scheme=int8_scheme)
    else:
        reference = oracle_outputs(model, ins, flat, cache=cache)
        report = compare(reference, flat, atol=DEFAULT_ATOL if atol is None else atol,
                         rtol=DEFAULT_RTOL if rtol is None else rtol, padding_mask=ins.get("padding_mask"),
                         check_padded=check_padded, reference_name=f"our {model.dtype_policy.name}", notes=notes)
    if not report.passed:
        raise AssertionError("\n" + report.format_table())
