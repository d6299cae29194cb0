"""Running the oracle: our outputs (and floors) for a model and inputs, candidate checks, and
`compare_to_truth`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bert_ref.encoder import TRACE_POOLER, forward
from bert_ref.model.precision import HALF_PRECISIONS, PRECISIONS, UNIT_ROUNDOFF, get_policy
from bert_ref.oracle.blocked import as_flat
from bert_ref.oracle.candidates import canonical_outputs, check_inputs
from bert_ref.oracle.compare import compare
from bert_ref.oracle.keys import ATTENTION_NAMES, flatten_outputs, parse_key
from bert_ref.oracle.report import Report
from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

# ----------------------------------------------------------------------------------------------
# Running the oracle


#: K of the floor-ratio mode when none is given: see docs/conformance.md for the measurements.
DEFAULT_FLOOR_RATIO = 4.0


def detect_precision(candidate: Mapping[str, Any]) -> str:
    """The precision a candidate's arrays are stored in: the lowest of their dtypes ("bfloat16",
    "float16", "float32" or "float64"). A float32 file may hold a TF32, int8 or half-precision
    port's upcast outputs: only the user can say so (`precision=`)."""
    order = ["bfloat16", "float16", "float32", "float64"]
    found = set()
    for v in as_flat(candidate, "candidate").values():
        name = np.asarray(v).dtype.name
        found.add(name if name in order else "float32")
    return min(found, key=order.index) if found else "float32"


def expected_shapes(config: Any, batch: int, seq: int, keys: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The shape each output key has for a [batch, seq] input under `config` (a `BertConfig`)."""
    h, heads, inter = config.hidden_dim, config.num_heads, config.intermediate_dim
    out: dict[str, tuple[int, ...]] = {}
    for key in keys:
        base = parse_key(key).name
        if key in TRACE_POOLER:
            out[key] = (batch, h)
        elif base in ATTENTION_NAMES:
            out[key] = (batch, heads, seq, seq)
        elif base in ("feedforward_intermediate", "feedforward_activation"):
            out[key] = (batch, seq, inter)
        else:
            out[key] = (batch, seq, h)
    return out


def check_candidate(candidate: Mapping[str, Any], config: Any, inputs: Mapping[str, Any],
                    source: str = "candidate") -> None:
    """Check a candidate's keys and shapes against the model and the inputs, before running anything.

    Raises:
        ValueError: an unknown key, a layer the model does not have, or a shape that is not the
            inputs' padded batch (the message gives the shape expected and why).
    """
    layers = config.num_layers
    flat = as_flat(candidate, "candidate")
    for key in flat:
        parsed = parse_key(key)
        if parsed.layers_needed > layers:
            kind = "transformer_layer_" if parsed.trace else parsed.name + "."
            top = layers if parsed.name == "hidden_states" and not parsed.trace else layers - 1
            raise ValueError(f"{source}: key {key!r} but the model has {layers} layers ({kind}0 .. {kind}{top})")
    b, s = np.shape(inputs["token_ids"])
    for key, shape in expected_shapes(config, b, s, flat).items():
        got = tuple(np.shape(flat[key]))
        if got != shape:
            raise ValueError(
                f"{source}: {key} has shape {got}, expected {shape} for inputs of {b} x {s}: the candidate must be "
                f"run on the same padded batch as the inputs file (batch {b}, sequence length {s}, padding included)")


def oracle_outputs(model: Any, inputs: Mapping[str, Any], keys: Any = None, *, dtype: Any = None,
                   cache: bool = False) -> dict[str, np.ndarray]:
    """Our outputs for `inputs` under policy `dtype` (default: the model's), flattened to output keys.

    `model` is a `BertBackbone`. `keys` (an iterable of output keys) limits what is computed and
    returned: hidden states, attention probabilities and the trace are only computed when asked
    for; None returns `sequence_output` and `pooled_output`. With `cache=True` the run is read
    from / written to the on-disk cache (`bert_ref.oracle.cache`)."""
    keys = None if keys is None else list(keys)
    policy = model.dtype_policy if dtype is None else get_policy(dtype)
    entry = None
    if cache:
        from bert_ref.oracle import cache as oracle_cache

        oracle_cache.check_settings()  # a bad BERT_REF_ORACLE_CACHE(_MB) fails before the run, not after
        entry = oracle_cache.entry_key(model, inputs, policy.name, keys)
        hit = oracle_cache.load(entry)
        if hit is not None and (keys is None or all(k in hit for k in keys)):
            return hit
    parsed = [parse_key(k) for k in keys or ()]
    want_hidden = any(p.name == "hidden_states" and not p.trace for p in parsed)
    want_att = any(p.name == "attention_probs" and not p.trace for p in parsed)
    want_trace = any(p.trace for p in parsed)
    options: dict[str, Any] = dict(output_hidden_states=want_hidden, output_attentions=want_att,
                                   trace=True if want_trace else None)
    if policy == model.dtype_policy:  # the model's own cast weights, prepared once
        out = model(inputs, **options)
    else:
        out = forward(model.weights, model.config, inputs, dtype=policy, **options)
    flat = flatten_outputs(out)
    if keys is not None:
        flat = {k: flat[k] for k in keys if k in flat}
    if entry is not None:
        oracle_cache.store(entry, flat)
    return flat


def compare_to_truth(
    model: Any,
    inputs: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    precision: str | None = None,
    floor_ratio: float | None = None,
    atol: float | Mapping[str, float] | str | None = None,
    rtol: float | Mapping[str, float] | str | None = None,
    check_padded: bool = False,
    candidate_name: str = "candidate",
    notes: Sequence[str] = (),
    cache: bool = False,
) -> Report:
    """Compare `candidate` with the float64 truth, next to the floor of its precision.

    The truth is our float64 policy on `model`'s weights; the floor is our policy of the
    candidate's precision on the same weights (float16, bfloat16, tf32, int8, float32 — see
    `bert_ref.model.precision`) against the truth: the error that precision has by nature. For float64,
    whose run is the truth itself, the floor is the float32 floor times 2^-29 (the ratio of the
    two unit roundoffs).

    Args:
        precision: the candidate's precision (`bert_ref.model.precision.PRECISIONS`); None:
            `detect_precision` from its dtypes.
        floor_ratio: K of the floor-ratio mode: an output passes when its max abs error is at most
            K times its floor (`Entry.floor_scale`). The default mode is floor-ratio with
            `DEFAULT_FLOOR_RATIO` when `precision` is given or the candidate is stored in float16 /
            bfloat16, unless `atol` or `rtol` is given; otherwise absolute tolerances (defaults
            `DEFAULT_ATOL`, `DEFAULT_RTOL`).
        atol, rtol: absolute-mode tolerances, numbers or per kind (see `parse_tolerance`).
        check_padded: also fail on padded positions (`padding_mask` is taken from `inputs`).
        cache: read and write our runs through the on-disk cache (`bert_ref.oracle.cache`).

    Returns:
        A `Report` against the "float64 truth", with each `Entry.floor_ratio` filled in.
    """
    as_flat(candidate, "candidate")  # a mapping, or a TypeError that says what is expected
    # The one reader of candidates and inputs (as for files): Hugging Face names, stacked arrays,
    # the dtype rule and the key grammar, all checked before any work is done.
    read = canonical_outputs(candidate, candidate_name)
    flat, notes = read.arrays, tuple(read.notes) + tuple(notes)
    inputs = check_inputs({k: np.asarray(v) for k, v in inputs.items()}, "inputs")
    given = precision is not None
    if precision is None:
        precision = detect_precision(flat)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    floor_ratio = default_floor_ratio(given, precision, floor_ratio, atol, rtol)
    truth = oracle_outputs(model, inputs, flat, dtype="float64", cache=cache)
    floor, floor_name = floor_outputs(model, inputs, flat, precision, truth, cache=cache)
    return truth_report(truth, flat, floor, precision=precision, floor_ratio=floor_ratio, atol=atol, rtol=rtol,
                        padding_mask=inputs.get("padding_mask"), check_padded=check_padded,
                        candidate_name=candidate_name, floor_name=floor_name, notes=notes)


def default_floor_ratio(given: bool, precision: str, floor_ratio: float | None, atol: Any, rtol: Any) -> float | None:
    """K of the floor-ratio mode: `floor_ratio`, else `DEFAULT_FLOOR_RATIO` when the precision was
    given or is a half precision and no `atol` / `rtol` asks for the absolute mode, else None."""
    if floor_ratio is None and atol is None and rtol is None and (given or precision in HALF_PRECISIONS):
        return DEFAULT_FLOOR_RATIO
    return floor_ratio


def float64_floor(truth: Mapping[str, np.ndarray], f32: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float64 floor: our float64 run is the truth itself, so its error cannot be measured
    against it; it is modelled as the float32 floor scaled by the ratio of the unit roundoffs
    (2^-53 / 2^-24): the same algorithm's rounding error scales with the unit roundoff."""
    scale = UNIT_ROUNDOFF["float64"] / UNIT_ROUNDOFF["float32"]
    return {k: truth[k] + (np.asarray(f32[k]).astype(np.float64) - truth[k]) * scale for k in f32}


def floor_name(precision: str) -> str:
    """The name of `floor_outputs`' floor of `precision`."""
    return "our float32 vs float64 truth x 2^-29" if precision == "float64" else f"our {precision} vs float64 truth"


def floor_outputs(model: Any, inputs: Mapping[str, Any], keys: Any, precision: str, truth: Mapping[str, np.ndarray],
                  *, cache: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """The floor of `precision` on `inputs` and its name: our run at that precision (for float64,
    `float64_floor` of our float32 run), to be compared with `truth`, our float64 run."""
    if precision == "float64":
        f32 = oracle_outputs(model, inputs, keys, dtype="float32", cache=cache)
        return float64_floor(truth, f32), floor_name(precision)
    return oracle_outputs(model, inputs, keys, dtype=PRECISIONS[precision].policy, cache=cache), floor_name(precision)


def truth_report(truth: Mapping[str, Any], candidate: Mapping[str, Any], floor: Mapping[str, Any], *,
                 precision: str, floor_ratio: float | None, atol: Any, rtol: Any, padding_mask: Any = None,
                 check_padded: bool = False, candidate_name: str = "candidate", floor_name: str = "floor",
                 notes: Sequence[str] = ()) -> Report:
    """The verdict against the float64 truth, next to the floor (`compare_to_truth`'s, once its
    runs are done; the dataset compare calls it batch by batch)."""
    return compare(truth, candidate, atol=DEFAULT_ATOL if atol is None else atol,
                   rtol=DEFAULT_RTOL if rtol is None else rtol, padding_mask=padding_mask,
                   check_padded=check_padded, floor=floor,
                   floor_ratio=floor_ratio, precision=precision, reference_name="float64 truth",
                   candidate_name=candidate_name, floor_name=floor_name, notes=notes)
