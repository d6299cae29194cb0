"""The architecture of a BERT encoder, and the names and shapes of its weights.

`BertConfig` holds exactly what determines the math of a forward pass. The storage/compute dtype is
not part of it: that is a *policy* (see `bert_ref.model.precision`) chosen when the model is built or run.

Canonical weight names follow keras-hub's variable paths (listed by `BertConfig.weight_shapes()`
and in the README, section "The API"); every kernel is 2-D `(in, out)` so the math reads
`x @ kernel + bias`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

from bert_ref.model import limits

ACTIVATIONS = ("gelu_approximate", "gelu", "gelu_sigmoid", "gelu_approximate_f16_table")
_FLOAT32_TINY = 2.0 ** -126  # the smallest normal float32 (numpy.finfo(numpy.float32).tiny)

# keras-hub `BertBackbone.get_config()` keys, in keras-hub's order.
KERAS_CONFIG_KEYS = (
    "vocabulary_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "intermediate_dim",
    "dropout",
    "max_sequence_length",
    "num_segments",
)
# Our two additions: which GELU, and the layer-norm epsilon (HF `hidden_act`, `layer_norm_eps`).
EXTRA_CONFIG_KEYS = ("activation", "layer_norm_epsilon")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (keras-hub `BertBackbone` arguments, plus two).

    Args:
        vocabulary_size: number of rows of the token embedding.
        num_layers: number of transformer encoder layers.
        num_heads: attention heads per layer.
        hidden_dim: width of the residual stream and of the pooler.
        intermediate_dim: width of the feed-forward hidden layer.
        dropout: stored for compatibility; inference never drops.
        max_sequence_length: rows of the position embedding.
        num_segments: rows of the segment ("token type") embedding.
        activation: `"gelu_approximate"` (tanh form; keras-hub's BERT) or `"gelu"` (exact erf
            form; Hugging Face `hidden_act: "gelu"`); also the forms ports use instead,
            `"gelu_sigmoid"` (`x * sigmoid(1.702 x)`, HF `quick_gelu`) and
            `"gelu_approximate_f16_table"` (ggml's float16 table of the tanh form, llama.cpp's
            BERT): see `bert_ref.ops`.
        layer_norm_epsilon: added to the variance in every layer norm (HF `layer_norm_eps`).

    As in keras-hub, `key_dim = hidden_dim // num_heads` (floor): `hidden_dim` need not be
    divisible by `num_heads`; only `key_dim == 0` is an error.
    """

    vocabulary_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    intermediate_dim: int
    dropout: float = 0.1
    max_sequence_length: int = 512
    num_segments: int = 2
    activation: str = "gelu_approximate"
    layer_norm_epsilon: float = 1e-12

    def __post_init__(self) -> None:
        for name, minimum in (
            ("vocabulary_size", 1),
            ("num_layers", 0),
            ("num_heads", 1),
            ("hidden_dim", 1),
            ("intermediate_dim", 1),
            ("max_sequence_length", 1),
            ("num_segments", 1),
        ):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum))
        # Bounded before anything is sized from the config (a 300-byte config.json must not make
        # weight_shapes() list a million layers): see bert_ref.model.limits.
        limits.check("layers", self.num_layers, "num_layers")
        limits.check("params", self.implied_params(), "the parameter count the config implies")
        if self.hidden_dim // self.num_heads == 0:
            raise ValueError(
                f"hidden_dim // num_heads must be >= 1 (it is the per-head key_dim), got "
                f"hidden_dim={self.hidden_dim}, num_heads={self.num_heads}"
            )
        dropout: object = self.dropout  # checked at run time: any type may have been passed
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not (
            0.0 <= float(dropout) < 1.0
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        object.__setattr__(self, "dropout", float(dropout))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        eps: object = self.layer_norm_epsilon  # checked at run time, like dropout
        if (isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(float(eps))
                or not float(eps) > 0.0):
            raise ValueError(f"layer_norm_epsilon must be a positive number (finite: not NaN or inf), got {eps!r}")
        if not float(eps) >= _FLOAT32_TINY:
            # Layer norm runs in at least float32, where this epsilon would round to 0 (or to a
            # subnormal): a constant row would then divide by zero instead of being held at 0.
            raise ValueError(
                f"layer_norm_epsilon = {eps!r} underflows in float32 (layer norm computes in at least "
                f"float32); it must be >= {_FLOAT32_TINY:.4g}, the smallest normal float32"
            )
        object.__setattr__(self, "layer_norm_epsilon", float(eps))

    @property
    def key_dim(self) -> int:
        """Per-head width of queries, keys and values: `hidden_dim // num_heads` (floor)."""
        return self.hidden_dim // self.num_heads

    @property
    def attention_dim(self) -> int:
        """`num_heads * key_dim`: the width of the concatenated heads (<= hidden_dim)."""
        return self.num_heads * self.key_dim

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight name -> shape, in a stable order (embeddings, layers, pooler)."""
        h, a, f = self.hidden_dim, self.attention_dim, self.intermediate_dim
        shapes: dict[str, tuple[int, ...]] = {
            "token_embedding/embeddings": (self.vocabulary_size, h),
            "position_embedding/embeddings": (self.max_sequence_length, h),
            "segment_embedding/embeddings": (self.num_segments, h),
            "embeddings_layer_norm/gamma": (h,),
            "embeddings_layer_norm/beta": (h,),
        }
        for i in range(self.num_layers):
            p = f"transformer_layer_{i}/"
            for proj in ("query", "key", "value"):
                shapes[p + f"self_attention_layer/{proj}/kernel"] = (h, a)
                shapes[p + f"self_attention_layer/{proj}/bias"] = (a,)
            shapes[p + "self_attention_layer/attention_output/kernel"] = (a, h)
            shapes[p + "self_attention_layer/attention_output/bias"] = (h,)
            shapes[p + "self_attention_layer_norm/gamma"] = (h,)
            shapes[p + "self_attention_layer_norm/beta"] = (h,)
            shapes[p + "feedforward_intermediate_dense/kernel"] = (h, f)
            shapes[p + "feedforward_intermediate_dense/bias"] = (f,)
            shapes[p + "feedforward_output_dense/kernel"] = (f, h)
            shapes[p + "feedforward_output_dense/bias"] = (h,)
            shapes[p + "feedforward_layer_norm/gamma"] = (h,)
            shapes[p + "feedforward_layer_norm/beta"] = (h,)
        shapes["pooled_dense/kernel"] = (h, h)
        shapes["pooled_dense/bias"] = (h,)
        return shapes

    def implied_params(self) -> int:
        """`count_params()` in closed form, without listing the weights (for limits)."""
        h, f = self.hidden_dim, self.intermediate_dim
        a = (h // self.num_heads) * self.num_heads if self.num_heads else 0
        embeddings = (self.vocabulary_size + self.max_sequence_length + self.num_segments) * h + 2 * h
        layer = 3 * (h * a + a) + (a * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
        return embeddings + self.num_layers * layer + h * h + h

    def count_params(self) -> int:
        """Total number of scalars in all weights (keras' `count_params()`)."""
        total = 0
        for shape in self.weight_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def to_dict(self) -> dict[str, Any]:
        """keras-hub `get_config()` keys (same order) plus `activation` and `layer_norm_epsilon`."""
        return {k: getattr(self, k) for k in KERAS_CONFIG_KEYS + EXTRA_CONFIG_KEYS}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, source: str = "config") -> BertConfig:
        """Build from a keras-hub-style config dict; unknown keys are ignored, missing ones named.

        `source` names where the dict came from (e.g. a file path) so errors can say so.
        Keys keras-hub adds that do not affect the math (`name`, `trainable`, `dtype`) are ignored.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"{source}: expected a mapping of config fields, got {type(config).__name__}")
        required = KERAS_CONFIG_KEYS[:5]
        missing = [k for k in required if k not in config]
        if missing:
            raise ValueError(f"{source}: missing config field(s) {missing}; required: {list(required)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in fields}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{source}: {e}") from None
