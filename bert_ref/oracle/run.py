"""Running the oracle: our outputs (and floors) for a model and inputs, candidate checks, and
`compare_to_truth`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bert_ref.encoder import TRACE_POOLER, PreparedWeights, check_weights, forward, prepare
from bert_ref.model.precision import HALF_PRECISIONS, PRECISIONS, UNIT_ROUNDOFF, get_policy
from bert_ref.model.runtime import map_concurrent
from bert_ref.oracle import ensemble, int8, verdict
from bert_ref.oracle.blocked import as_flat
from bert_ref.oracle.candidates import canonical_outputs, check_inputs
from bert_ref.oracle.compare import FloorSide, compare, floor_sides
from bert_ref.oracle.int8 import Int8Scheme
from bert_ref.oracle.keys import ATTENTION_NAMES, flatten_outputs, parse_key, placement, valid_mask
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


def check_stacked(stacked: Sequence[tuple[str, int]], config: Any, source: str = "candidate") -> None:
    """A stacked `hidden_states` of exactly L entries (L = the model's layers) is refused: Hugging
    Face's holds L + 1 (the embeddings' output, then each layer's), and reading L entries in that
    order would shift every layer by one and fail "at the embeddings" — wrong in verdict and place.
    (`stacked`: (name, entries) per stacked array the reader split, `Candidate.stacked`.)

    Raises:
        ValueError: naming the entries found, the ones expected and how to store them unambiguously.
    """
    layers = config.num_layers
    for name, count in stacked:
        if name == "hidden_states" and count == layers:
            raise ValueError(
                f"{source}: hidden_states has {count} entries, but the model has {layers} layers: a stacked "
                f"hidden_states holds L+1 = {layers + 1} (hidden_states.0, the embeddings' output, then each "
                f"layer's), so {count} entries cannot be placed without guessing. If they are the {layers} layers' "
                f"outputs without the embeddings, store them as hidden_states.1 .. hidden_states.{layers} (or "
                f"prepend the embeddings); if they lack the last layer, store hidden_states.0 .. "
                f"hidden_states.{layers - 1}")


def check_candidate(candidate: Mapping[str, Any], config: Any, inputs: Mapping[str, Any],
                    source: str = "candidate", stacked: Sequence[tuple[str, int]] = ()) -> None:
    """Check a candidate's keys and shapes against the model and the inputs, before running anything
    (and its stacked arrays' lengths: `check_stacked`).

    Raises:
        ValueError: an unknown key, a layer the model does not have, a stacked hidden_states of L
            entries, or a shape that is not the inputs' padded batch (the message gives the shape
            expected and why).
    """
    check_stacked(stacked, config, source)
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
                   cache: bool = False, prepared: dict[str, Any] | None = None,
                   share: str | None = None) -> dict[str, np.ndarray]:
    """Our outputs for `inputs` under policy `dtype` (default: the model's), flattened to output keys.

    `model` is a `BertBackbone`. `keys` (an iterable of output keys) limits what is computed and
    returned: hidden states, attention probabilities and the trace are only computed when asked
    for; None returns `sequence_output` and `pooled_output`. `dtype` is a policy name or a `Policy`
    (the ensemble's variants, `bert_ref.oracle.ensemble`). With `cache=True` the run is read from /
    written to the on-disk cache (`bert_ref.oracle.cache`): one entry per model, inputs and policy,
    holding the union of every output asked of it, so asking for other outputs of a cached run
    computes the union and replaces the entry.

    `prepared` and `share`: a run that computes (a cache miss) takes its prepared weights from
    `prepared[share]`, or prepares them and leaves them there: the ensemble's members that treat
    the weights alike (`ensemble.Member.weights_of`) prepare them once."""
    wanted = ["sequence_output", "pooled_output"] if keys is None else list(keys)
    policy = model.dtype_policy if dtype is None else get_policy(dtype)
    entry = None
    run_keys = wanted
    if cache:
        from bert_ref.oracle import cache as oracle_cache

        oracle_cache.check_settings()  # a bad BERT_REF_ORACLE_CACHE(_MB) fails before the run, not after
        entry = oracle_cache.entry_key(model, inputs, policy.name)
        hit = oracle_cache.load(entry)
        if hit is not None:
            if all(k in hit for k in wanted):
                return {k: hit[k] for k in wanted}
            run_keys = list(dict.fromkeys([*hit, *wanted]))  # the union: the entry keeps what it held
    parsed = [parse_key(k) for k in run_keys]
    want_hidden = any(p.name == "hidden_states" and not p.trace for p in parsed)
    want_att = any(p.name == "attention_probs" and not p.trace for p in parsed)
    want_trace = any(p.trace for p in parsed)
    options: dict[str, Any] = dict(output_hidden_states=want_hidden, output_attentions=want_att,
                                   trace=True if want_trace else None)
    if policy == model.dtype_policy:  # the model's own cast weights, prepared once
        out = model(inputs, **options)
    elif prepared is not None and share is not None:
        if share not in prepared:
            prepared[share] = prepare(check_weights(model.weights, model.config), model.config, policy)
        out = forward(PreparedWeights(prepared[share], policy, model.config), model.config, inputs, dtype=policy,
                      **options)
    else:
        out = forward(model.weights, model.config, inputs, dtype=policy, **options)
    flat = flatten_outputs(out)
    if entry is not None:
        oracle_cache.store(entry, {k: flat[k] for k in run_keys if k in flat})
    return {k: flat[k] for k in wanted if k in flat}


def ensemble_outputs(model: Any, inputs: Mapping[str, Any], keys: Any, precision: str, *,
                     scheme: Int8Scheme | None = None, cache: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The runs of `precision`'s ensemble (`bert_ref.oracle.ensemble.members`; int8: of `scheme`),
    member name -> outputs, the floor first. Members that treat the weights alike share one
    preparation of them (`ensemble.Member.weights_of`)."""
    chosen = ensemble.members(precision, scheme)
    reused = {m.weights_of for m in chosen if m.weights_of}
    prepared: dict[str, Any] = {}
    return {m.name: oracle_outputs(model, inputs, keys, dtype=m.policy, cache=cache, prepared=prepared,
                                   share=m.weights_of or (m.name if m.name in reused else None))
            for m in chosen}


def recipe_members(precision: str, scheme: Int8Scheme | None = None) -> tuple[str, ...]:
    """The ensemble's members that compute an int8 recipe exactly (other float arithmetic): the
    `recipe` statistic's references. Empty for other precisions."""
    if precision != "int8":
        return ()
    return tuple(m.name for m in ensemble.members(precision, scheme)[1:] if m.exact)


def ensemble_sides(model: Any, inputs: Mapping[str, Any], keys: Sequence[str], truth: Mapping[str, np.ndarray],
                   precision: str, *, scheme: Int8Scheme | None = None,
                   cache: bool = False) -> dict[str, FloorSide]:
    """What each output's verdict needs of `precision`'s ensemble (`bert_ref.oracle.compare.FloorSide`:
    the floor's error, each member's statistics against `truth`, our float64 run of `inputs`).

    None of it depends on the candidate. With `cache=True` it is read from / written to the oracle
    cache (`bert_ref.oracle.cache.store_record`): one entry per model, inputs and ensemble (its
    members and the source of the statistics' code in the key), holding the union of the outputs
    asked of it. A compare of another candidate on the same inputs then reads these numbers
    instead of the ensemble's runs, and runs the ensemble (itself cached) only for outputs it lacks."""
    from bert_ref.oracle import cache as oracle_cache

    keys = list(keys)
    chosen = ensemble.members(precision, scheme)
    exact = recipe_members(precision, scheme)
    entry = None
    have: dict[str, FloorSide] = {}
    if cache:
        oracle_cache.check_settings()
        what = (f"ensemble statistics|{precision}|{scheme.spec if scheme is not None else ''}|"
                f"{','.join(m.name for m in chosen)}|recipe {','.join(exact)}|{oracle_cache.statistics_digest()}")
        entry = oracle_cache.entry_key(model, inputs, what)
        stored = oracle_cache.load_record(entry)
        for k, v in (stored.items() if isinstance(stored, dict) else ()):
            try:
                have[k] = FloorSide.from_dict(v)
            except (KeyError, TypeError, ValueError, AttributeError):  # not a side: computed again
                continue
    missing = [k for k in keys if k not in have]
    if missing:
        runs = ensemble_outputs(model, inputs, missing, precision, scheme=scheme, cache=cache)
        have.update(floor_sides(truth, runs, missing, padding_mask=inputs.get("padding_mask"), precision=precision,
                                recipe_members=exact))
        if entry is not None:
            oracle_cache.store_record(entry, {k: v.to_dict() for k, v in have.items()})
    return {k: have[k] for k in keys}


def _truncated(model: Any, layers: int) -> Any:
    """The model's first `layers` layers as a model of their own (`BertBackbone.first_layers`): the
    early outputs of a scheme's run cost a fraction of a full forward. Its cache key derives from
    `model`'s (`bert_ref.oracle.cache.derived`)."""
    from bert_ref.oracle import cache as oracle_cache

    small = model.first_layers(layers)
    if small is not model:
        oracle_cache.derived(small, model, layers)  # keyed by `model`'s digest: its weights not hashed again
    return small


def detect_int8_scheme(model: Any, inputs: Mapping[str, Any], candidate: Mapping[str, Any],
                       truth: Mapping[str, np.ndarray], *, cache: bool = False) -> int8.Detection:
    """Which int8 recipe (`bert_ref.oracle.int8.CANDIDATE_SCHEMES`) the candidate's errors follow.

    The embeddings' part from `hidden_states.0` (a quantised embedding table leaves its own pattern
    there: quantised tables only when it matches); the rest from the first output after the
    embeddings, by the correlation of the candidate's error with each scheme's (a model cut after
    that layer runs each scheme cheaply).
    A candidate with only final outputs is matched there, among the presets, on the whole model."""
    flat = as_flat(candidate, "candidate")
    mask = inputs.get("padding_mask")
    mask = None if mask is None else np.asarray(mask).astype(bool)
    parsed = sorted((parse_key(k) for k in flat), key=lambda p: p.placement[0])
    later = [p for p in parsed if p.layers_needed >= 1]
    schemes = list(int8.CANDIDATE_SCHEMES)
    if later:
        key = later[0].key
        small = _truncated(model, later[0].layers_needed)
    else:
        key = next(k for k in ("sequence_output", "pooled_output", "hidden_states.0") if k in flat)
        small = model
        schemes = list(int8.PRESETS.values())
    keys = [key] + (["hidden_states.0"] if "hidden_states.0" in flat and key != "hidden_states.0" else [])

    valid = {k: valid_mask(k, truth[k].shape, mask) for k in keys}
    mine = {k: int8.centered_error(flat[k], truth[k], valid[k]) for k in keys}  # the candidate's side, once

    def score(k: str, scheme: int8.Int8Scheme) -> float:
        ours = oracle_outputs(small, inputs, keys, dtype=int8.scheme_policy(scheme), cache=cache)[k]
        return int8.correlation_with(mine[k], ours, truth[k], valid[k])

    def scores(k: str, chosen: list[int8.Int8Scheme]) -> list[float]:  # the schemes on the cores' threads
        return map_concurrent(lambda scheme: score(k, scheme), chosen)

    if "hidden_states.0" in keys and key != "hidden_states.0":
        # Quantised tables only when their error pattern is matched: a bug in the embeddings (a wrong
        # epsilon) also makes a large error there, which float tables must not be excused by.
        table = "u8" if scores("hidden_states.0", [int8.Int8Scheme(embeddings="u8")])[0] >= int8.MATCH_CORRELATION \
            else "float"
        schemes = [s for s in schemes if s.embeddings == table]
    return int8.rank_schemes(dict(zip(schemes, scores(key, schemes), strict=True)), key, early=bool(later))


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
    int8_scheme: str | Int8Scheme | None = None,
    limits: Mapping[str, float] | None = None,
) -> Report:
    """Compare `candidate` with the float64 truth, next to the floor of its precision.

    The truth is our float64 policy on `model`'s weights; the floor is our policy of the
    candidate's precision on the same weights (float16, bfloat16, tf32, int8, float32 — see
    `bert_ref.model.precision`) against the truth: the error that precision has by nature. In the
    floor-ratio mode the floor is an ensemble (`bert_ref.oracle.ensemble`): our run and legitimate
    variants of it, and each output is judged by the statistics of `bert_ref.oracle.verdict`, each
    against the largest the ensemble reaches. For float64, whose run is the truth itself, the floor
    is the float32 floor times 2^-29 (the ratio of the two unit roundoffs), alone.

    Args:
        precision: the candidate's precision (`bert_ref.model.precision.PRECISIONS`); None:
            `detect_precision` from its dtypes.
        floor_ratio: K of the max abs error (the floor-ratio mode): an output passes when its max abs
            error is at most K times its floor (`Entry.floor_scale`) and every other statistic is
            within its limit. The default mode is floor-ratio with `DEFAULT_FLOOR_RATIO` when
            `precision` is given or the candidate is stored in float16 / bfloat16, unless `atol` or
            `rtol` is given; otherwise absolute tolerances (defaults `DEFAULT_ATOL`, `DEFAULT_RTOL`).
        atol, rtol: absolute-mode tolerances, numbers or per kind (see `parse_tolerance`).
        check_padded: also fail on padded positions (`padding_mask` is taken from `inputs`), against
            the floor's error at padded positions.
        cache: read and write our runs through the on-disk cache (`bert_ref.oracle.cache`).
        int8_scheme: for int8, the recipe (`bert_ref.oracle.int8`: a preset such as "ort" or
            "torch", or key=value parts); None: detected from the candidate's errors (a note says
            which, and how sure).
        limits: K per statistic (default `bert_ref.oracle.verdict.LIMITS`).

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
    scheme = int8.parse_int8_scheme(int8_scheme) if int8_scheme is not None else None
    if scheme is not None and precision != "int8":
        raise ValueError(f"an int8 scheme ({scheme.spec}) is for --precision int8, not {precision}")
    floor_ratio = default_floor_ratio(given, precision, floor_ratio, atol, rtol)
    notes = list(notes)
    truth = oracle_outputs(model, inputs, flat, dtype="float64", cache=cache)
    sides: dict[str, FloorSide] | None = None
    recipe_variants: tuple[str, ...] = ()
    if precision == "float64" or floor_ratio is None:
        floor, name = floor_outputs(model, inputs, flat, precision, truth, cache=cache)
    else:
        name = floor_name(precision)
        recipe_known = scheme is not None
        if precision == "int8" and scheme is None:
            detection = detect_int8_scheme(model, inputs, flat, truth, cache=cache)
            scheme, recipe_known = detection.scheme, detection.explains
            notes.append(detection.note())
        sides = ensemble_sides(model, inputs, list(flat), truth, precision, scheme=scheme, cache=cache)
        floor = {}
        if precision == "int8" and recipe_known:
            recipe_variants = recipe_members(precision, scheme)
            # The candidate's distance from our run of the recipe, at the first layers: that run's outputs.
            early = [k for k in flat if (layer := placement(k)[2]) is not None and layer <= verdict.RECIPE_LAYERS]
            if early:  # (a model cut after those layers computes them as the whole one does, for less)
                small = _truncated(model, max(parse_key(k).layers_needed for k in early))
                floor = oracle_outputs(small, inputs, early, dtype=ensemble.members(precision, scheme)[0].policy,
                                       cache=cache)
        if precision == "int8" and scheme is not None:
            name = f"our int8 ({scheme.spec}) vs float64 truth"
    return truth_report(truth, flat, floor, precision=precision, floor_ratio=floor_ratio, atol=atol, rtol=rtol,
                        padding_mask=inputs.get("padding_mask"), check_padded=check_padded,
                        candidate_name=candidate_name, floor_name=name, notes=notes, limits=limits,
                        recipe_variants=recipe_variants, sides=sides)


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
                 notes: Sequence[str] = (), ensemble: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                 limits: Mapping[str, float] | None = None, recipe_variants: tuple[str, ...] = (),
                 sides: Mapping[str, FloorSide] | None = None) -> Report:
    """The verdict against the float64 truth, next to the floor (`compare_to_truth`'s, once its
    runs are done, with the ensemble's `sides` or its runs; the dataset compare calls it batch by
    batch with the runs)."""
    return compare(truth, candidate, atol=DEFAULT_ATOL if atol is None else atol,
                   rtol=DEFAULT_RTOL if rtol is None else rtol, padding_mask=padding_mask,
                   check_padded=check_padded, floor=floor,
                   floor_ratio=floor_ratio, precision=precision, reference_name="float64 truth",
                   candidate_name=candidate_name, floor_name=floor_name, notes=notes,
                   ensemble=ensemble, limits=limits, recipe_variants=recipe_variants, sides=sides)
