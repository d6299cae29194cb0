"""The catalogue of mistakes ports make, each a variant of our forward (`compare --diagnose`).

A `Hypothesis` says how a port may differ from BERT as the checkpoint defines it, and builds that
port out of our own forward: a change of the config (`activation`, `layer_norm_epsilon`), of the
weights (a table zeroed, a kernel transposed), of the inputs (token types dropped), or a step
replaced (the layer norm, the masked softmax, the position ids, the head split and merge, the
query scale, the layer's arrangement, the pooler). Nothing here is a second encoder: every variant
runs `bert_ref.encoder.forward` with the plain ops of `bert_ref.ops`, some of them replaced: a
`VariantPolicy` is the candidate's precision policy whose `ops` hands the forward a `Steps`
namespace instead of `bert_ref.ops`. It can also feed a hidden state in place of the embeddings
(`inject`), so that one segment of the network runs alone.

`catalogue(config, inputs)` lists the hypotheses that can be told apart on these inputs: a mask
mistake needs padding, a token-type mistake a second segment, a position shift room in the
position table, a GELU or epsilon mistake a config that says otherwise.

- activation: `activation=gelu` (exact, erf), `=gelu_approximate` (tanh), `=gelu_approximate_f16_table`
  (the tanh form read from ggml's float16 table, llama.cpp), `=gelu_sigmoid` (`x * sigmoid(1.702 x)`);
- layer norm: `layer_norm_epsilon=1e-12`, `=1e-6`, `=1e-5`, `=1e-3`; `variance_unbiased` (divided by n - 1);
- mask: `mask_ignored` (no padding mask); `mask_on_queries` (laid on the queries instead of the
  keys); `mask_additive_1e4` (-1e4 added to masked scores, no zeroing); `mask_neg_inf` (-inf
  instead of a large finite number: a fully padded row becomes NaN);
- token types: `token_types_zero` (every token type 0, as llama.cpp); `segment_embedding_dropped`;
- positions: `positions_shifted_1`, `positions_shifted_2` (ids from 1 or 2, RoBERTa's habit);
  `positions_restart_at_segment` (back to 0 where the second segment begins);
- attention scale: `attention_scale_missing`, `attention_scale_doubled` (1/d),
  `attention_scale_sqrt_hidden` (1/sqrt(hidden) instead of 1/sqrt(head dim));
- heads: `heads_interleaved` (head j is columns j, j + h, ...: a `view(B, S, d, h)`, merged back
  the same way);
- kernels: `kernel_transposed=query`, `=key`, `=value`, `=output` (a square kernel used
  transposed: an (out, in) weight read as (in, out)); `query_key_swapped`;
- architecture: `pre_layer_norm` (`x + f(LN(x))` instead of BERT's post-LN `LN(x + f(x))`);
- pooler: `pooler_no_tanh`; `pooler_mean` (the mean over valid tokens instead of [CLS]);
- half precision: `softmax_half`, `layer_norm_half` (the attention softmax, or every layer norm,
  in float16 arithmetic: every intermediate rounded).

Not in the catalogue: tokenization mistakes (no lowercasing, no accent stripping), which need the
texts the ids came from; the compare reads token ids only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bert_ref import ops
from bert_ref.encoder import check_weights, forward, prepare
from bert_ref.model import kernels
from bert_ref.model.config import BertConfig
from bert_ref.model.precision import UNIT_ROUNDOFF, Policy, get_policy

Weights = dict[str, np.ndarray]
Inputs = dict[str, np.ndarray]

#: Which part of the network a hypothesis changes.
PARTS = ("embeddings", "layers", "pooler")


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One mistake (or, combined with `combine`, several): `parts` says which parts of the network
    it changes, `config`, `weights`, `inputs` and `steps` how (see `apply` and `Steps`). `unit_roundoff`: the
    unit roundoff of a lower precision the mistake rounds to (float16's, 2^-11, for float16
    arithmetic or a float16 table), else 0: one rounding of an output's largest value at that
    precision is the smallest floor a port making the mistake can have."""

    id: str
    kind: str
    what: str
    parts: frozenset[str]
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: Callable[[Weights, BertConfig], Weights] | None = None
    inputs: Callable[[Inputs], Inputs] | None = None
    steps: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    unit_roundoff: float = 0.0
    members: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        """The catalogue ids this hypothesis is made of (one, or those of a combination)."""
        return self.members or (self.id,)

    def apply(self, config: BertConfig, weights: Weights,
              inputs: Inputs) -> tuple[BertConfig, Weights, Inputs, Mapping[str, Any]]:
        """The port this hypothesis describes: its config, weights, inputs and replaced steps."""
        if self.config:
            config = dataclasses.replace(config, **self.config)
        if self.weights is not None:
            weights = self.weights(weights, config)
        if self.inputs is not None:
            inputs = self.inputs(inputs)
        return config, weights, inputs, self.steps


def combine(*hypotheses: Hypothesis) -> Hypothesis | None:
    """Several mistakes made together, or None where they cannot be (same kind, or the same
    config value, hook or part of the inputs changed twice)."""
    kinds = [h.kind for h in hypotheses]
    if len(set(kinds)) < len(kinds):
        return None
    config: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    for h in hypotheses:
        if set(config) & set(h.config) or set(steps) & set(h.steps):
            return None
        config.update(h.config)
        steps.update(h.steps)
    if sum(h.inputs is not None for h in hypotheses) > 1:
        return None
    weight_fns = [h.weights for h in hypotheses if h.weights is not None]
    input_fn = next((h.inputs for h in hypotheses if h.inputs is not None), None)

    def weights(w: Weights, c: BertConfig) -> Weights:
        for fn in weight_fns:
            w = fn(w, c)
        return w

    members = tuple(i for h in hypotheses for i in h.ids)
    return Hypothesis(" + ".join(members), "+".join(kinds), "; ".join(h.what for h in hypotheses),
                      frozenset().union(*(h.parts for h in hypotheses)), config,
                      weights if weight_fns else None, input_fn, steps, max(h.unit_roundoff for h in hypotheses),
                      members)


# ----------------------------------------------------------------------------------------------
# The replaced steps (plain NumPy, in the dtype of their input, like bert_ref.ops)


def _half(x: np.ndarray) -> np.ndarray:
    """`x` rounded to float16, held in its own dtype (float32 or float64). [...] -> [...]"""
    return x.astype(np.float16).astype(x.dtype)


def layer_norm_unbiased(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """`ops.layer_norm` with the unbiased variance (divided by n - 1). [..., H] -> [..., H]"""
    if ops.is_half(x.dtype):
        return layer_norm_unbiased(x.astype(np.float32), gamma, beta, epsilon).astype(x.dtype)
    centred = x - x.mean(axis=-1, keepdims=True)  # [..., H]
    var = np.einsum("...i,...i->...", centred, centred)[..., None] / (x.shape[-1] - 1)  # [..., 1]
    return centred * (1 / np.sqrt(var + x.dtype.type(epsilon))) * gamma + beta


def layer_norm_half(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """A layer norm in float16 arithmetic: the input, mean, centred values, their squares, the
    variance, `1/sqrt(var + eps)` (eps itself rounded, 0 below 6e-8), each product and the output
    rounded to float16 (sums of float16 accumulate in float32, as frameworks do). [..., H] -> [..., H]"""
    dtype = x.dtype
    x = _half(np.asarray(x, np.float32))
    g, b = _half(np.asarray(gamma, np.float32)), _half(np.asarray(beta, np.float32))
    centred = _half(x - _half(x.mean(axis=-1, keepdims=True)))  # [..., H]
    var = _half(_half(centred * centred).mean(axis=-1, keepdims=True))  # [..., 1]
    inv = _half(1 / np.sqrt(_half(var + _half(np.float32(epsilon)))))
    return _half(_half(_half(centred * inv) * g) + b).astype(dtype)


def softmax_half(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`ops.masked_softmax` in float16 arithmetic: the scores, `s - max`, its exp, the row sum and
    the quotient each rounded to float16 (the sum accumulated in float32). [B, h, S, S], [B, S] -> [B, h, S, S]"""
    dtype = scores.dtype
    s = np.where(mask[:, None, None, :], _half(scores.astype(np.float32)), np.float32(ops.MASK_NEGATIVE_FLOAT16))
    e = _half(np.exp(_half(s - s.max(axis=-1, keepdims=True))))
    p = _half(e / _half(e.sum(axis=-1, keepdims=True)))
    return (p * mask[:, None, None, :]).astype(dtype)


def softmax_mask_ignored(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Every key attended to, padding included. [B, h, S, S], [B, S] -> [B, h, S, S]"""
    return ops.masked_softmax(scores, np.ones_like(mask)[:, None, None, :])


def softmax_mask_on_queries(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The padding mask applied along the queries instead of the keys (a [B, 1, S, 1] mask where
    [B, 1, 1, S] was meant): a valid query attends to every key, padding included; a padded
    query's scores are all the same large negative number, so it attends uniformly (what an
    additive mask so broadcast gives). [B, h, S, S], [B, S] -> [B, h, S, S]"""
    s = np.where(mask[:, None, :, None], scores, scores.dtype.type(ops.MASK_NEGATIVE))
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_mask_additive(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """-1e4 added to the scores of padded keys, then a plain softmax (no zeroing): a fully padded
    row attends uniformly. [B, h, S, S], [B, S] -> [B, h, S, S]"""
    s = scores + np.where(mask, 0, -1e4).astype(scores.dtype)[:, None, None, :]
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_mask_neg_inf(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Padded keys' scores set to -inf, then a plain softmax: a fully padded row is NaN.
    [B, h, S, S], [B, S] -> [B, h, S, S]"""
    s = np.where(mask[:, None, None, :], scores, scores.dtype.type(-np.inf))
    with np.errstate(invalid="ignore"):
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def split_heads_interleaved(x: np.ndarray, num_heads: int) -> np.ndarray:
    """Head j is columns j, j + h, j + 2h, ... [B, S, d*h] -> [B, h, S, d]"""
    b, s, a = x.shape
    return x.reshape(b, s, a // num_heads, num_heads).transpose(0, 3, 1, 2)


def merge_heads_interleaved(x: np.ndarray) -> np.ndarray:
    """The inverse of `split_heads_interleaved`. [B, h, S, d] -> [B, S, d*h]"""
    b, h, s, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(b, s, d * h)


def pooler_no_tanh(sequence: np.ndarray, mask: np.ndarray, dense: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`dense(sequence[:, 0])`, without the tanh. [B, S, H] -> [B, H]"""
    return dense(sequence[:, 0])


def pooler_mean(sequence: np.ndarray, mask: np.ndarray, dense: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`tanh(dense(mean over the valid positions))` instead of the [CLS] position. [B, S, H] -> [B, H]"""
    m = mask.astype(sequence.dtype)[:, :, None]  # [B, S, 1]
    mean = (sequence * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
    return np.tanh(dense(mean))


def _positions_shifted(k: int) -> Callable[[np.ndarray], np.ndarray]:
    def position_ids(segment_ids: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.arange(segment_ids.shape[1]) + k, segment_ids.shape)

    return position_ids


def positions_restart(segment_ids: np.ndarray) -> np.ndarray:
    """0, 1, ... from the first token, and again from the first token whose segment differs from
    the previous one. [B, S] -> [B, S]"""
    b, s = segment_ids.shape
    starts = np.zeros((b, s), bool)
    starts[:, 0] = True
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    index = np.broadcast_to(np.arange(s), (b, s))
    last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return index - last_start


# ----------------------------------------------------------------------------------------------
# The weight and input changes


def _zero_segments(w: Weights, c: BertConfig) -> Weights:
    return {**w, "segment_embedding/embeddings": np.zeros_like(w["segment_embedding/embeddings"])}


def _transposed(which: str) -> Callable[[Weights, BertConfig], Weights]:
    name = {"query": "query", "key": "key", "value": "value", "output": "attention_output"}[which]

    def weights(w: Weights, c: BertConfig) -> Weights:
        out = dict(w)
        for key in w:
            if key.endswith(f"/self_attention_layer/{name}/kernel"):
                out[key] = np.ascontiguousarray(w[key].T)
        return out

    return weights


def _swap_query_key(w: Weights, c: BertConfig) -> Weights:
    out = dict(w)
    for key in w:
        if "/self_attention_layer/query/" in key:
            other = key.replace("/query/", "/key/")
            out[key], out[other] = w[other], w[key]
    return out


def _token_types_zero(inputs: Inputs) -> Inputs:
    return {**inputs, "segment_ids": np.zeros_like(inputs["segment_ids"])}


# ----------------------------------------------------------------------------------------------
# Running a variant: the candidate's policy, computing with some ops replaced


class Steps:
    """The ops a variant computes with: those of `base` (`bert_ref.ops`), some replaced as the
    hypothesis' `steps` say (keys: `layer_norm`, `softmax`, `position_ids`, `query_scale`,
    `split_heads` / `merge_heads`, `pre_layer_norm`, `pooler`), and, with `inject`, the given
    hidden state in place of the embeddings' layer-norm output. The replacements that need to know
    which weights an op is called with (the position table, a layer's layer norms and kernels)
    recognise the prepared arrays of `params` by identity."""

    def __init__(self, base: Any, steps: Mapping[str, Any], policy: Policy, params: Mapping[str, Any],
                 epsilon: float, segment_ids: np.ndarray, mask: np.ndarray, inject: np.ndarray | None) -> None:
        self.base, self.steps, self.policy, self.params = base, steps, policy, params
        self.epsilon, self.segment_ids, self.mask, self.inject = epsilon, segment_ids, mask, inject
        self.norm = steps.get("layer_norm", base.layer_norm)
        self.pure_norm = steps.get("layer_norm", ops.layer_norm)  # never in place: pre-LN keeps its input
        self.last: np.ndarray | None = inject  # the latest layer-norm output: the pooler's sequence
        self.pre: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(kernel) -> the layer norm before it
        self.post: set[int] = set()  # ids of the layer norms after the residual sums
        self.normed: dict[tuple[int, int], np.ndarray] = {}
        if steps.get("pre_layer_norm"):
            for p in params["layers"]:
                attention = (p["attention_norm_gamma"], p["attention_norm_beta"])
                self.pre.update({id(p[n][0]): attention for n in ("query", "key", "value")})
                self.pre[id(p["ffn_kernel1"])] = (p["ffn_norm_gamma"], p["ffn_norm_beta"])
                self.post.update((id(p["attention_norm_gamma"]), id(p["ffn_norm_gamma"])))

    def __getattr__(self, name: str) -> Any:  # every op not replaced: the base's
        return getattr(self.base, name)

    def layer_norm(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
        if self.inject is not None and gamma is self.params["norm_gamma"]:
            y = self.inject  # [B, S, H]: the segment's input
        elif id(gamma) in self.post:  # pre-LN: no layer norm after the residual sum
            y = x
        else:
            y = self.norm(x, gamma, beta, epsilon)
        self.last = y
        return y

    def dense(self, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, activation: str | None = None) -> np.ndarray:
        if id(kernel) in self.pre:  # pre-LN: the sublayer's input normalised (rounded as a step)
            gamma, beta = self.pre[id(kernel)]
            key = (id(x), id(gamma))
            if key not in self.normed:
                self.normed = {key: self.policy.round(self.pure_norm(x, gamma, beta, self.epsilon))}
            x = self.normed[key]
        return self.base.dense(x, kernel, bias, activation)

    def embedding(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if "position_ids" in self.steps and table is self.params["position"]:
            ids = self.steps["position_ids"](self.segment_ids)
        return self.base.embedding(table, ids)

    def masked_softmax(self, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if "softmax" in self.steps:
            return self.steps["softmax"](scores, self.mask)
        return self.base.masked_softmax(scores, mask)

    def attention_scores(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        if "query_scale" in self.steps:
            q = q * q.dtype.type(self.steps["query_scale"])
        return self.base.attention_scores(q, k)

    def split_heads(self, x: np.ndarray, num_heads: int) -> np.ndarray:
        return self.steps.get("split_heads", self.base.split_heads)(x, num_heads)

    def attention_context(self, probs: np.ndarray, v: np.ndarray) -> np.ndarray:
        if "merge_heads" in self.steps:
            return self.steps["merge_heads"](probs @ v)
        return self.base.attention_context(probs, v)

    def pooler(self, sequence: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
        if "pooler" not in self.steps:
            return self.base.pooler(sequence, kernel, bias)
        assert self.last is not None
        return self.steps["pooler"](self.last, self.mask,
                                    lambda v: self.base.dense(self.policy.dense_input(v), kernel, bias))


@dataclasses.dataclass(frozen=True, eq=False)
class VariantPolicy(Policy):
    """The precision policy `base` (its roundings, its kernels), computing with the ops of a
    `Steps`: `ops` replaces the ops the forward hands it, once `context` holds the prepared
    weights ("params"), the segment ids, the padding mask, the layer-norm epsilon and, optionally,
    the hidden state to inject. It always runs the plain ops, never fused. Equal only to itself."""

    base: Policy
    replaced: Mapping[str, Any]
    context: dict[str, Any]

    @classmethod
    def of(cls, base: Policy, replaced: Mapping[str, Any]) -> VariantPolicy:
        return cls(base.name, base.variable_dtype, base.compute_dtype, base.work_dtype, base, replaced, {})

    @property
    def rounds(self) -> bool:
        return self.base.rounds

    def round(self, x: np.ndarray) -> np.ndarray:
        return self.base.round(x)

    def weight(self, w: np.ndarray) -> np.ndarray:
        return self.base.weight(w)

    def kernel(self, w: np.ndarray) -> np.ndarray:
        return self.base.kernel(w)

    def embedding_table(self, name: str, w: np.ndarray) -> np.ndarray:
        return self.base.embedding_table(name, w)

    def round_at(self, name: str, x: np.ndarray) -> np.ndarray:
        return self.base.round_at(name, x)

    def dense_input(self, x: np.ndarray) -> np.ndarray:
        return self.base.dense_input(x)

    def matmul_input(self, x: np.ndarray) -> np.ndarray:
        return self.base.matmul_input(x)

    def norm_weight(self, w: np.ndarray) -> np.ndarray:
        return self.base.norm_weight(w)

    def output(self, x: np.ndarray) -> np.ndarray:
        return self.base.output(x)

    def activation(self, name: str) -> str:
        return self.base.activation(name)

    @property
    def rounds_matmul_inputs(self) -> bool:
        return True  # the plain ops, step by step: never the fast path's fused ops

    def ops(self, f: Any) -> Any:
        """A `Steps` over `f` (the plain ops), or over their fast twins when the base policy rounds
        no matmul input (the same results; the replaced steps never hand them an array to overwrite),
        as the base policy composes them (an ensemble member that sums its products otherwise)."""
        c = self.context
        base = self.base.ops(kernels if f is ops and not self.base.rounds_matmul_inputs else f)
        return Steps(base, self.replaced, self.base, c["params"], c["epsilon"], c["segment_ids"], c["mask"],
                     c.get("inject"))


def run(weights: Mapping[str, np.ndarray], config: BertConfig, inputs: Mapping[str, np.ndarray], *, dtype: Any,
        steps: Mapping[str, Any] | None = None, inject: np.ndarray | None = None,
        no_layers: bool = False) -> dict[str, Any]:
    """`bert_ref.encoder.forward` (hidden states included) at policy `dtype`, with the `steps` of a
    hypothesis replaced (see `Steps`); `inject` [B, S, H] in place of the embeddings' layer-norm
    output; `no_layers`: run none of the layers (the embeddings alone, or with `inject` the pooler
    alone)."""
    policy = VariantPolicy.of(get_policy(dtype), steps or {})
    params = prepare(check_weights(weights, config), config, policy)
    if no_layers:
        params["layers"] = []
    if inject is not None:
        inject = policy.round(np.asarray(inject).astype(policy.work_dtype))
    policy.context.update(params=params, epsilon=config.layer_norm_epsilon, inject=inject,
                          segment_ids=np.asarray(inputs["segment_ids"]),
                          mask=np.asarray(inputs["padding_mask"]).astype(bool))
    return forward(params, config, inputs, dtype=policy, output_hidden_states=True)


# ----------------------------------------------------------------------------------------------
# The catalogue

_ACTIVATIONS = {
    "gelu": "exact (erf) GELU",
    "gelu_approximate": "tanh-approximate GELU",
    "gelu_approximate_f16_table": "tanh GELU read from ggml's float16 table (llama.cpp)",
    "gelu_sigmoid": "sigmoid GELU, x * sigmoid(1.702 x)",
}
_EPSILONS = (1e-12, 1e-6, 1e-5, 1e-3)
EMB, LAYERS, POOL = frozenset({"embeddings"}), frozenset({"layers"}), frozenset({"pooler"})
NORMS = frozenset({"embeddings", "layers"})
HALF = UNIT_ROUNDOFF["float16"]


def _eps(eps: float) -> str:
    """1e-12, 1e-6, 1e-5, 1e-3: the short form of a power of ten."""
    return f"{eps:.0e}".replace("e-0", "e-")


def catalogue(config: BertConfig, inputs: Mapping[str, np.ndarray]) -> list[Hypothesis]:
    """Every mistake that can show on these inputs under this config (see the module docstring)."""
    mask = np.asarray(inputs["padding_mask"]).astype(bool)
    segments = np.asarray(inputs["segment_ids"])
    seq = mask.shape[1]
    padded, pairs = bool((~mask).any()), bool((segments != 0).any())
    d = config.hidden_dim // config.num_heads
    square = config.num_heads * d == config.hidden_dim
    out: list[Hypothesis] = []
    for name, what in _ACTIVATIONS.items():
        if name != config.activation:
            out.append(Hypothesis(f"activation={name}", "activation", f"the FFN activation is the {what}", LAYERS,
                                  {"activation": name}, unit_roundoff=HALF if name.endswith("_table") else 0.0))
    for eps in _EPSILONS:
        if not math.isclose(eps, config.layer_norm_epsilon, rel_tol=1e-9):
            out.append(Hypothesis(f"layer_norm_epsilon={_eps(eps)}", "layer_norm_epsilon",
                                  f"layer norms use epsilon {eps:g} (the checkpoint says "
                                  f"{config.layer_norm_epsilon:g})",
                                  NORMS, {"layer_norm_epsilon": eps}))
    out.append(Hypothesis("variance_unbiased", "layer_norm", "layer norms divide the variance by n - 1 (unbiased)",
                          NORMS, steps={"layer_norm": layer_norm_unbiased}))
    if padded:
        out += [
            Hypothesis("mask_ignored", "mask", "the padding mask is ignored: valid tokens attend to padding", LAYERS,
                       steps={"softmax": softmax_mask_ignored}),
            Hypothesis("mask_on_queries", "mask", "the padding mask is laid on the queries instead of the keys",
                       LAYERS, steps={"softmax": softmax_mask_on_queries}),
            Hypothesis("mask_additive_1e4", "mask", "-1e4 is added to padded keys' scores (no zeroing)", LAYERS,
                       steps={"softmax": softmax_mask_additive}),
            Hypothesis("mask_neg_inf", "mask", "padded keys' scores are -inf (a fully padded row is NaN)", LAYERS,
                       steps={"softmax": softmax_mask_neg_inf}),
        ]
    if pairs:
        out.append(Hypothesis("token_types_zero", "token_types", "token types are all 0 (the second segment is "
                              "embedded as the first)", EMB, inputs=_token_types_zero))
        out.append(Hypothesis("positions_restart_at_segment", "positions",
                              "position ids restart at 0 where the second segment begins", EMB,
                              steps={"position_ids": positions_restart}))
    out.append(Hypothesis("segment_embedding_dropped", "token_types", "the segment (token type) embedding is left out",
                          EMB, weights=_zero_segments))
    for k in (1, 2):
        if seq + k <= config.max_sequence_length:
            out.append(Hypothesis(f"positions_shifted_{k}", "positions", f"position ids start at {k}, not 0", EMB,
                                  steps={"position_ids": _positions_shifted(k)}))
    for name, factor, what in (("missing", math.sqrt(d), "not scaled by 1/sqrt(head_dim)"),
                               ("doubled", 1 / math.sqrt(d), "scaled by 1/head_dim (the scale applied twice)"),
                               ("sqrt_hidden", math.sqrt(d / config.hidden_dim),
                                "scaled by 1/sqrt(hidden) instead of 1/sqrt(head_dim)")):
        out.append(Hypothesis(f"attention_scale_{name}", "attention_scale", f"attention scores {what}", LAYERS,
                              steps={"query_scale": factor}))
    if config.num_heads > 1 and d > 1:
        out.append(Hypothesis("heads_interleaved", "heads", "heads are split interleaved (head j = columns j, j+h, "
                              "...) instead of contiguous", LAYERS,
                              steps={"split_heads": split_heads_interleaved, "merge_heads": merge_heads_interleaved}))
    if square:
        for which in ("query", "key", "value", "output"):
            out.append(Hypothesis(f"kernel_transposed={which}", "kernel", f"the {which} kernel is used transposed",
                                  LAYERS, weights=_transposed(which)))
    out.append(Hypothesis("query_key_swapped", "kernel_swap", "the query and key projections are swapped", LAYERS,
                          weights=_swap_query_key))
    out.append(Hypothesis("pre_layer_norm", "architecture", "layers are pre-LN, x + f(LN(x)), instead of post-LN",
                          LAYERS, steps={"pre_layer_norm": True}))
    out.append(Hypothesis("pooler_no_tanh", "pooler", "the pooler's tanh is left out", POOL,
                          steps={"pooler": pooler_no_tanh}))
    out.append(Hypothesis("pooler_mean", "pooler", "the pooler reads the mean over valid tokens instead of [CLS]",
                          POOL, steps={"pooler": pooler_mean}))
    out.append(Hypothesis("softmax_half", "softmax_precision", "the attention softmax runs in float16 arithmetic",
                          LAYERS, steps={"softmax": softmax_half}, unit_roundoff=HALF))
    out.append(Hypothesis("layer_norm_half", "layer_norm_precision", "layer norms run in float16 arithmetic", NORMS,
                          steps={"layer_norm": layer_norm_half}, unit_roundoff=HALF))
    return out
