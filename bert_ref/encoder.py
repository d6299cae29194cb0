"""The stateless BERT encoder: `forward(weights, config, inputs)`.

A pure function of a flat weights dict (canonical names, see `BertConfig.weight_shapes()`), a
`BertConfig` and the inputs. Also here: keras-hub's random initialisation, weight validation, input
validation, and `prepare` (the policy-cast view of the weights that `forward` computes with).

Data flow (shapes for batch B, sequence S, hidden H):

    token_ids, segment_ids [B, S] ─► token + position + segment embeddings ─► layer norm  [B, S, H]
      ─► num_layers × post-LN encoder layer (masked self-attention, GELU feed-forward)    [B, S, H]
      ─► sequence_output [B, S, H];  pooled_output = tanh(dense(sequence_output[:, 0]))   [B, H]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bert_ref import ops
from bert_ref.model import kernels, runtime
from bert_ref.model.config import BertConfig
from bert_ref.model.precision import Policy, get_policy

INPUT_KEYS = ("token_ids", "segment_ids", "padding_mask")

#: Names of the trace points of the embeddings, of each layer (prefixed "transformer_layer_{i}/"),
#: and of the pooler, in the order they are computed. See `forward(trace=...)`.
TRACE_EMBEDDINGS = (
    "embeddings/token", "embeddings/position", "embeddings/segment", "embeddings/sum", "embeddings/layer_norm",
)
TRACE_LAYER = (
    "query", "key", "value", "attention_scores", "attention_probs", "attention_context",
    "attention_output", "attention_residual", "self_attention_layer_norm",
    "feedforward_intermediate", "feedforward_activation", "feedforward_output",
    "feedforward_residual", "feedforward_layer_norm",
)
TRACE_POOLER = ("pooled_output",)


# ----------------------------------------------------------------------------------------------
# Weights


def init_weights(config: BertConfig, seed: int | None = None, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """keras-hub's initialisation: kernels and embeddings ~ truncated normal (stddev 0.02, values
    beyond 2 stddev redrawn), biases 0, layer-norm gamma 1 and beta 0. Reproducible with `seed`."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in config.weight_shapes().items():
        if name.endswith("/gamma"):
            w: np.ndarray = np.ones(shape)
        elif name.endswith("/bias") or name.endswith("/beta"):
            w = np.zeros(shape)
        else:
            w = rng.standard_normal(shape, dtype=np.float32)
            redraw = np.abs(w) > 2
            while redraw.any():
                w[redraw] = rng.standard_normal(int(redraw.sum()), dtype=np.float32)
                redraw = np.abs(w) > 2
            w *= np.float32(0.02)
        weights[name] = w.astype(dtype, copy=False)
    return weights


def check_weights(weights: Mapping[str, Any], config: BertConfig, *, source: str = "weights") -> dict[str, np.ndarray]:
    """Validate names and shapes against `config`; return a plain dict of arrays (never copied).

    A missing, unexpected or wrongly shaped tensor is a `ValueError` naming it and the expected
    shape; `source` (e.g. a file name) prefixes the message."""
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"{source}: expected a mapping of canonical weight names to arrays, got {type(weights).__name__}"
        )
    expected = config.weight_shapes()
    missing = [n for n in expected if n not in weights]
    unexpected = [n for n in weights if n not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"{n} (expected shape {expected[n]})" for n in missing[:8])
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:8])
                         + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
        raise ValueError(f"{source}: " + "; ".join(parts))
    out = {}
    for name, shape in expected.items():
        w = weights[name]
        if not isinstance(w, np.ndarray):
            w = np.asarray(w)
        if w.shape != shape:
            raise ValueError(f"{source}: {name} has shape {w.shape}, expected {shape}")
        if w.dtype.kind != "f" and not w.dtype.name.startswith(("bfloat16", "float8")):  # ml_dtypes' floats
            raise TypeError(
                f"{source}: {name} has dtype {w.dtype}, expected a floating dtype "
                "(float16/32/64, or bfloat16/float8 via ml_dtypes)"
            )
        out[name] = w
    return out


class PreparedWeights(dict):
    """The weights as `forward` computes with them under one policy: grouped per layer (see
    `_encode`) and in the policy's work dtype (rounded to its compute dtype).

    Keys: "token", "position", "segment", "norm_gamma", "norm_beta", "layers" (list of per-layer
    dicts), "pooler_kernel", "pooler_bias". Arrays that need no cast are the caller's arrays, not
    copies: under the float32 policy (float64 for float64 weights) nothing is copied at all."""

    def __init__(self, data: dict, policy: Policy, config: BertConfig):
        super().__init__(data)
        self.policy = policy
        self.config = config


def prepare(weights: Mapping[str, np.ndarray], config: BertConfig, policy: Policy) -> PreparedWeights:
    """Group and cast the weights for one policy (see `PreparedWeights`): dense kernels with
    `policy.kernel`, biases with `policy.weight`, the embedding tables with `policy.embedding_table`,
    layer-norm parameters with `policy.norm_weight`."""
    w, kernel, norm = policy.weight, policy.kernel, policy.norm_weight

    def table(path: str) -> np.ndarray:  # a weight, except where a policy quantises the lookups
        return policy.embedding_table(path, weights[path])

    def dense(path: str) -> tuple[np.ndarray, np.ndarray]:
        return kernel(weights[path + "/kernel"]), w(weights[path + "/bias"])

    def layer(i: int) -> dict[str, Any]:
        p = f"transformer_layer_{i}/"
        att = p + "self_attention_layer/"
        return {
            "query": dense(att + "query"),
            "key": dense(att + "key"),
            "value": dense(att + "value"),
            "output": dense(att + "attention_output"),
            "attention_norm_gamma": norm(weights[p + "self_attention_layer_norm/gamma"]),
            "attention_norm_beta": norm(weights[p + "self_attention_layer_norm/beta"]),
            "ffn_kernel1": kernel(weights[p + "feedforward_intermediate_dense/kernel"]),
            "ffn_bias1": w(weights[p + "feedforward_intermediate_dense/bias"]),
            "ffn_kernel2": kernel(weights[p + "feedforward_output_dense/kernel"]),
            "ffn_bias2": w(weights[p + "feedforward_output_dense/bias"]),
            "ffn_norm_gamma": norm(weights[p + "feedforward_layer_norm/gamma"]),
            "ffn_norm_beta": norm(weights[p + "feedforward_layer_norm/beta"]),
        }

    # The layers are cast (or quantised) on the cores' threads: each tensor as alone.
    layers = runtime.map_concurrent(layer, range(config.num_layers))
    return PreparedWeights({
        "token": table("token_embedding/embeddings"),
        "position": table("position_embedding/embeddings"),
        "segment": table("segment_embedding/embeddings"),
        "norm_gamma": norm(weights["embeddings_layer_norm/gamma"]),
        "norm_beta": norm(weights["embeddings_layer_norm/beta"]),
        "layers": layers,
        "pooler_kernel": kernel(weights["pooled_dense/kernel"]),
        "pooler_bias": w(weights["pooled_dense/bias"]),
    }, policy, config)


# ----------------------------------------------------------------------------------------------
# Inputs


def _as_int_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "iu":
        if arr.dtype.kind == "b":
            raise TypeError(f"{name} must hold integers, got booleans")
        if arr.size == 0 and arr.dtype.kind == "f":  # e.g. np.asarray([[]]): empty, no values to be wrong
            return arr.astype(np.int64)
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr


def _first_bad(name: str, arr: np.ndarray, bad: np.ndarray, low: int, high: int, why: str) -> None:
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        idx = ", ".join(map(str, pos))
        raise ValueError(f"{name}[{idx}] = {arr[pos]} is outside [{low}, {high}): {why}")


def validate_inputs(inputs: Mapping[str, Any], config: BertConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check and normalise `{"token_ids", "segment_ids", "padding_mask"}`.

    Returns (token_ids [B, S] intp, segment_ids [B, S] intp, padding_mask [B, S] bool).
    `segment_ids` defaults to zeros and `padding_mask` to ones; lists are accepted. Anything that
    NumPy would silently get wrong (a negative id wraps around in a lookup) is an error naming the
    field, the position and the valid range.
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict with keys {INPUT_KEYS}, got {type(inputs).__name__}")
    unknown = [k for k in inputs if k not in INPUT_KEYS]
    if unknown:
        raise ValueError(f"unknown input key(s) {unknown}; expected {list(INPUT_KEYS)}")
    if "token_ids" not in inputs:
        raise ValueError(f"inputs must contain 'token_ids' (got keys {list(inputs)})")
    token_ids = _as_int_array("token_ids", inputs["token_ids"])
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must be 2-D (batch, sequence), got shape {token_ids.shape}")
    shape = token_ids.shape
    segment_ids = inputs.get("segment_ids")
    segment_ids = np.zeros(shape, np.intp) if segment_ids is None else _as_int_array("segment_ids", segment_ids)
    mask = inputs.get("padding_mask")
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask)
    for name, arr in (("segment_ids", segment_ids), ("padding_mask", mask)):
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (batch, sequence), got shape {arr.shape}")
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape} but token_ids has shape {shape}; they must match")
    if shape[1] == 0:
        raise ValueError("sequence length is 0: token_ids must have at least one position per row")
    if shape[1] > config.max_sequence_length:
        raise ValueError(
            f"sequence length {shape[1]} exceeds max_sequence_length {config.max_sequence_length} "
            f"(valid lengths are 1..{config.max_sequence_length})"
        )
    v, n = config.vocabulary_size, config.num_segments
    _first_bad("token_ids", token_ids, (token_ids < 0) | (token_ids >= v), 0, v, f"vocabulary_size is {v}")
    _first_bad("segment_ids", segment_ids, (segment_ids < 0) | (segment_ids >= n), 0, n, f"num_segments is {n}")
    if mask.dtype != bool:
        if mask.dtype == object or mask.dtype.kind not in "iuf":
            raise TypeError(f"padding_mask must be bool or 0/1 numbers, got dtype {mask.dtype}")
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"padding_mask[{', '.join(map(str, pos))}] = {mask[pos]} is not a valid mask value: "
                "use 0/1 or False/True"
            )
        mask = mask != 0
    return token_ids.astype(np.intp, copy=False), segment_ids.astype(np.intp, copy=False), mask


# ----------------------------------------------------------------------------------------------
# Forward


def _params(weights: Mapping[str, np.ndarray] | PreparedWeights, config: BertConfig, policy: Policy) -> PreparedWeights:
    """`weights` prepared for `policy`: validated and prepared here, or reused when already prepared."""
    if not isinstance(weights, PreparedWeights):
        return prepare(check_weights(weights, config), config, policy)
    if weights.policy != policy or weights.config != config:
        raise ValueError(
            f"prepared weights are for policy {weights.policy.name!r} and {weights.config}; "
            f"called with policy {policy.name!r} and {config}"
        )
    return weights


def _outputs(policy: Policy, x: np.ndarray, pooled: np.ndarray, hidden_states: list | None, attentions: list | None,
             recorded: dict | None) -> dict[str, Any]:
    """`forward`'s result, in the compute dtype; hidden states, attention probabilities and the
    trace only when asked for (None when not)."""
    out: dict[str, Any] = {"sequence_output": policy.output(x), "pooled_output": policy.output(pooled)}
    if hidden_states is not None:
        out["hidden_states"] = [policy.output(h) for h in hidden_states]
    if attentions is not None:
        out["attention_probs"] = [policy.output(p) for p in attentions]
    if recorded is not None:
        out["trace"] = recorded
    return out


Record = Callable[[str, np.ndarray], None]


def forward(weights: Mapping[str, np.ndarray] | PreparedWeights, config: BertConfig, inputs: Mapping[str, Any], *,
            dtype: Any = None, output_hidden_states: bool = False, output_attentions: bool = False,
            trace: Record | bool | None = None, plain: bool = False) -> dict[str, Any]:
    """Run the encoder. A pure function: nothing is stored between calls.

    Args:
        weights: canonical weights dict (validated here), or `prepare(...)`'s result (reused as is).
        config: the architecture.
        inputs: `{"token_ids": [B, S] ints, "segment_ids": [B, S] ints (default 0),
            "padding_mask": [B, S] bool/0-1 (default all valid)}`.
        dtype: the policy (see `bert_ref.model.precision`): None/"float32", "float64", "float16",
            "bfloat16", "mixed_float16", "mixed_bfloat16", "tf32", "int8", a ggml format ("ggml_f16",
            "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"), or a `Policy` (the ensemble's members and the
            diagnosis' variants are policies, some of whose `ops` compute otherwise:
            `bert_ref.oracle.ensemble`, `bert_ref.oracle.variants`).
        output_hidden_states: also return "hidden_states", num_layers + 1 arrays [B, S, H]: the
            embeddings' layer-norm output, then each layer's output (Hugging Face's convention).
        output_attentions: also return "attention_probs", one [B, h, S, S] array per layer.
        trace: a callable `trace(name, array)` called with a copy of every named intermediate (see
            TRACE_EMBEDDINGS, TRACE_LAYER prefixed "transformer_layer_{i}/", TRACE_POOLER), or True
            to return them all as an ordered dict under "trace".
        plain: run the ops of `bert_ref.ops` alone, in this thread: the code a learner reads.

    Returns:
        `{"sequence_output": [B, S, H], "pooled_output": [B, H], ...}` in the compute dtype.

    The model is the ops composed step by named step (`_encode`, then the pooler); each
    `step(name, value)` is where the policy rounds to its compute dtype and where the trace records.
    The policy also rounds the input of every dense layer (`Policy.dense_input`) and both operands
    of the two attention matmuls (`Policy.matmul_input`); for float32 and float64 all three are the
    identity. The ops are those of `bert_ref.ops` with `plain=True` or when the policy rounds matmul
    inputs, else their twins in `bert_ref.model.kernels`: the same results, faster, bit for bit,
    except two, within tested bounds: the float32 exact GELU there is a more accurate formula, and
    where nothing is rounded or recorded between the three attention steps, attention over
    right-padded rows runs over the valid keys only (a few ulps). With nothing to trace, on the
    kernels, the batch is split over threads (`runtime.in_batch_parts`, bit for bit: every step,
    rounding included, works on rows of its own batch part).

    Padding: padded *keys* get exactly zero attention weight (keras-hub's semantics, which
    transformers' default sdpa path shares). Padded *positions* still produce outputs, as in both
    anchors; a row that is entirely padding attends to nothing (its attention context is 0) and
    stays finite.
    """
    policy = get_policy(dtype)
    params = _params(weights, config, policy)
    token_ids, segment_ids, mask = validate_inputs(inputs, config)
    recorded: dict[str, np.ndarray] = {}
    record = recorded.__setitem__ if trace is True else trace or None
    base = ops if plain or policy.rounds_matmul_inputs else kernels  # kernels: the same ops, faster
    f = policy.ops(base)  # (the ensemble's accumulation variants sum their products otherwise)
    encode = functools.partial(_encode, f, params, config, policy, record, output_hidden_states, output_attentions)
    if base is kernels and record is None:  # the same steps, the batch split over threads
        encode = functools.partial(runtime.in_batch_parts, encode, hidden=config.hidden_dim)
    x, hidden_states, attentions = encode(token_ids, segment_ids, mask)
    # Pooler: the [CLS] position, over the whole batch. [B, S, H] -> [B, H]
    pooled = _step(policy, record, "", "pooled_output",
                   f.pooler(policy.dense_input(x[:, :1]), params["pooler_kernel"], params["pooler_bias"]))
    return _outputs(policy, x, pooled, hidden_states, attentions, recorded if trace is True else None)


def forward_valid(weights: Mapping[str, np.ndarray] | PreparedWeights, config: BertConfig, inputs: Mapping[str, Any],
                  *, dtype: Any = None, output_hidden_states: bool = False) -> dict[str, Any]:
    """`forward`'s outputs at the valid positions only: `sequence_output` and each of
    `hidden_states` [T, H] (T = the rows' valid tokens, row i's at `offsets[i]:offsets[i+1]`),
    `pooled_output` [B, H], `offsets` [B + 1]. What the dataset engine stores.

    For right-padded rows under a policy that rounds nothing (float32, float64), the valid tokens
    of all rows are packed into one sequence and every per-token step (embeddings, dense layers,
    GELU, layer norms) runs on the T valid tokens alone, attention within each row
    (`kernels.Packed`), so no work is spent on padding. Each token's value is computed by the same
    operations as in `forward`: a GEMM's rows do not depend on the other rows (as
    `runtime.in_batch_parts` relies on), and attention is `forward`'s over each row's valid keys
    (tests/test_kernels.py checks the two, bit for bit). Other inputs and policies run `forward`
    and keep its valid rows."""
    policy = get_policy(dtype)
    params = _params(weights, config, policy)
    token_ids, segment_ids, mask = validate_inputs(inputs, config)
    lengths = mask.sum(axis=1)  # [B]
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    prefix = np.array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None])
    if not prefix or mask.all() or not lengths.all() or policy.rounds or policy.rounds_matmul_inputs:
        out = forward(params, config, inputs, dtype=policy, output_hidden_states=output_hidden_states)
        hidden = out.get("hidden_states")
        return {"sequence_output": out["sequence_output"][mask], "pooled_output": out["pooled_output"],
                "hidden_states": None if hidden is None else [h[mask] for h in hidden], "offsets": offsets}
    positions = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)[mask]  # [T]
    # Row j of the position table: token j's position embedding (the same rows `forward` adds).
    rows = PreparedWeights({**params, "position": np.take(params["position"], positions, axis=0)}, policy, config)
    packed = kernels.Packed(offsets, mask.shape[1])
    x, hidden_states, _ = _encode(kernels, rows, config, policy, None, output_hidden_states, False,
                                  token_ids[mask][None], segment_ids[mask][None], packed)
    first = x[0, offsets[:-1]][:, None]  # [B, 1, H]: each row's [CLS] position
    pooled = kernels.pooler(first, params["pooler_kernel"], params["pooler_bias"])
    return {"sequence_output": policy.output(x[0]), "pooled_output": policy.output(pooled),
            "hidden_states": None if hidden_states is None else [policy.output(h[0]) for h in hidden_states],
            "offsets": offsets}


def _step(policy: Policy, record: Record | None, prefix: str, name: str, value: np.ndarray) -> np.ndarray:
    """A named step: `value` rounded at the policy's rounding point `name`; a copy recorded in the
    trace as `prefix + name` (the prefix: "transformer_layer_{i}/" inside layer i, else "")."""
    value = policy.round_at(name, value)
    if record is not None:
        record(prefix + name, policy.output(value).copy())
    return value


def _encode(f: Any, params: PreparedWeights, config: BertConfig, policy: Policy, record: Record | None,
            output_hidden_states: bool, output_attentions: bool, token_ids: np.ndarray, segment_ids: np.ndarray,
            mask: np.ndarray | kernels.Packed) -> tuple[np.ndarray, list[np.ndarray] | None, list[np.ndarray] | None]:
    """The embeddings and the encoder layers, step by named step, on the ops of `f` (`bert_ref.ops`
    or `bert_ref.model.kernels`). [B, S] ids -> [B, S, H], and the hidden states and attention
    probabilities asked for (None when not). (`forward_valid` passes packed records: [1, T] ids, a
    `kernels.Packed` mask and a position table whose row j is token j's position embedding.)

    Each layer is BERT's post-LN layer: each sublayer's output is added to its input, then normalised,

        y   = layer_norm(x + self_attention(x))      # attention_residual, self_attention_layer_norm
        out = layer_norm(y + feed_forward(y))        # feedforward_residual, feedforward_layer_norm

    (pre-LN, GPT-2's, would be `y = x + attention(layer_norm(x))`, `out = y + ffn(layer_norm(y))`: a
    different function of the same weights). The picture, post-LN beside pre-LN, with these step
    names: docs/figures/layer_post_ln_pre_ln.svg (drawn by tools/figures/make_layer_diagram.py)."""
    eps, heads, key_mask, prefix = config.layer_norm_epsilon, config.num_heads, mask[:, None, None, :], ""
    fused = record is None and not policy.rounds and not policy.rounds_matmul_inputs  # no step between steps

    def step(name: str, value: np.ndarray) -> np.ndarray:
        return _step(policy, record, prefix, name, value)

    def self_attention(x: np.ndarray, p: dict) -> np.ndarray:  # [B, S, H] -> [B, S, H]
        h = policy.dense_input(x)
        q, k, v = (policy.matmul_input(f.split_heads(step(name, f.dense(h, *p[name])), heads))  # [B, h, S, d]
                   for name in ("query", "key", "value"))
        if fused:  # nothing to round or record in between: scores, softmax and context as one op
            context, probs = f.attention(q, k, v, key_mask, output_attentions)
        else:
            scores = step("attention_scores", f.attention_scores(q, k))  # [B, h, S, S]
            probs = step("attention_probs", f.masked_softmax(scores, key_mask))
            context = step("attention_context", f.attention_context(policy.matmul_input(probs), v))  # [B, S, A]
        if attentions is not None:
            attentions.append(probs)
        return step("attention_output", f.dense(policy.dense_input(context), *p["output"]))

    def feed_forward(y: np.ndarray, p: dict) -> np.ndarray:  # [B, S, H] -> [B, S, F] -> [B, S, H]
        h = policy.dense_input(y)
        if fused:  # nothing to round or record in between: the dense layer and its activation as one op
            inner = f.dense(h, p["ffn_kernel1"], p["ffn_bias1"], policy.activation(config.activation))
        else:
            inner = step("feedforward_intermediate", f.dense(h, p["ffn_kernel1"], p["ffn_bias1"]))
            inner = step("feedforward_activation", f.ACTIVATIONS[policy.activation(config.activation)](inner))
        return step("feedforward_output", f.dense(policy.dense_input(inner), p["ffn_kernel2"], p["ffn_bias2"]))

    # [B, S] ids -> [B, S, H]; summed in keras' order ((token + position) + segment); position ids 0..S-1
    def embeddings() -> np.ndarray:
        token = step("embeddings/token", f.embedding(params["token"], token_ids))
        position = step("embeddings/position", f.embedding(params["position"], np.indices(token_ids.shape)[1]))
        segment = step("embeddings/segment", f.embedding(params["segment"], segment_ids))
        return step("embeddings/sum", policy.round_at("embeddings/token+position", token + position) + segment)

    x = step("embeddings/layer_norm", f.layer_norm(embeddings(), params["norm_gamma"], params["norm_beta"], eps))
    hidden_states, attentions = [x] if output_hidden_states else None, list[np.ndarray]() if output_attentions else None

    # num_layers post-LN encoder layers: each sublayer's output is added to its input, then normalised.
    for i, p in enumerate(params["layers"]):  # [B, S, H] -> [B, S, H]
        prefix = f"transformer_layer_{i}/"
        x = step("attention_residual", self_attention(x, p) + x)
        x = step("self_attention_layer_norm", f.layer_norm(x, p["attention_norm_gamma"], p["attention_norm_beta"], eps))
        x = step("feedforward_residual", feed_forward(x, p) + x)
        x = step("feedforward_layer_norm", f.layer_norm(x, p["ffn_norm_gamma"], p["ffn_norm_beta"], eps))
        if hidden_states is not None:
            hidden_states.append(x)
    return x, hidden_states, attentions


def count_params(weights: Mapping[str, np.ndarray]) -> int:
    """Number of scalars in a weights dict."""
    return int(sum(np.size(w) for w in weights.values()))
