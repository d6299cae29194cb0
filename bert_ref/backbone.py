"""`BertBackbone`: a thin, keras-hub-shaped object around a config and its weights."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from bert_ref import encoder
from bert_ref.model import limits
from bert_ref.model.config import BertConfig
from bert_ref.model.precision import get_policy
from bert_ref.model.presets import PRESETS, preset_config


def _read_only(w: np.ndarray) -> np.ndarray:
    view = w.view()
    view.flags.writeable = False
    return view


class TokenEmbedding:
    """The token embedding table as a layer, like keras' `ReversibleEmbedding`.

    `emb(token_ids)` looks rows up ([B, S] -> [B, S, H]); `emb(hidden, reverse=True)` is the
    product with the transposed table, `hidden @ embeddings.T` ([..., H] -> [..., V]): each
    vocabulary entry's dot product with `hidden`. That is all it is. It is *not* BERT's masked-LM
    head: the head pre-training used is dense (H -> H), GELU, layer norm, *then* this product plus a
    per-token bias, and none of that is here (nor in most checkpoints, all-MiniLM-L6-v2 included).
    On an input embedding it finds the nearest tokens; on the encoder's output at [MASK] it does not
    predict the word (docs/walkthrough.md, section 9, shows both). Computed in the model's policy;
    returned in its compute dtype. Ids are range-checked like the backbone's inputs.
    """

    def __init__(self, backbone: BertBackbone):
        self._backbone = backbone

    @property
    def embeddings(self) -> np.ndarray:
        """The [V, H] table, in the storage dtype (read-only)."""
        return self._backbone.weights["token_embedding/embeddings"]

    @property
    def input_dim(self) -> int:
        return self._backbone.config.vocabulary_size

    @property
    def output_dim(self) -> int:
        return self._backbone.config.hidden_dim

    def __call__(self, inputs: Any, reverse: bool = False) -> np.ndarray:
        policy = self._backbone.dtype_policy
        table = self._backbone.prepared_weights()["token"]  # policy.weight(embeddings), cast once
        if reverse:
            hidden = np.asarray(inputs)
            if hidden.dtype.kind != "f" and hidden.dtype.name != "bfloat16":
                raise TypeError(f"reverse=True expects floating hidden states [..., {self.output_dim}], got dtype "
                                f"{hidden.dtype}")
            if hidden.ndim < 1 or hidden.shape[-1] != self.output_dim:
                raise ValueError(f"reverse=True expects hidden states of shape [..., {self.output_dim}], got "
                                 f"{hidden.shape}")
            logits = np.matmul(policy.weight(hidden), table.T)  # [..., H] @ [H, V] -> [..., V]
            return policy.output(policy.round(logits))
        ids = encoder._as_int_array("token_ids", inputs)
        v = self.input_dim
        encoder._first_bad("token_ids", ids, (ids < 0) | (ids >= v), 0, v, f"vocabulary_size is {v}")
        return policy.output(np.take(table, ids, axis=0))  # [..., H]


class BertBackbone:
    """A BERT encoder network, with keras-hub's `BertBackbone` interface, in NumPy.

    Bi-directional Transformer encoder as in "BERT: Pre-training of Deep Bidirectional Transformers
    for Language Understanding" (Devlin et al., 2018): embeddings, `num_layers` post-LN encoder
    layers, and a tanh pooler over the first ([CLS]) position — no pre-training heads.

    Args:
        vocabulary_size: int. The size of the token vocabulary.
        num_layers: int. The number of transformer layers.
        num_heads: int. Attention heads per layer. As in keras-hub, `key_dim = hidden_dim //
            num_heads`; `hidden_dim` need not be divisible by it (only key_dim == 0 is an error).
        hidden_dim: int. Width of the transformer encoding and of the pooler.
        intermediate_dim: int. Width of the feed-forward hidden layer.
        dropout: float. Stored for compatibility; inference never drops.
        max_sequence_length: int. Rows of the position embedding (the longest input).
        num_segments: int. Rows of the segment embedding.
        dtype: None / "float32", "float64", "float16", "bfloat16", "mixed_float16",
            "mixed_bfloat16" — see `bert_ref.model.precision` for where each rounds.
        activation: "gelu_approximate" (tanh form, keras-hub's BERT) or "gelu" (exact, erf form,
            Hugging Face `hidden_act: "gelu"`).
        layer_norm_epsilon: float. Added to the variance in every layer norm.
        weights: None for keras-hub's random initialisation, or a dict of canonical names ->
            arrays (see `BertConfig.weight_shapes()`); arrays in the policy's storage dtype are
            used without copying.
        seed: int. Seed of the random initialisation.
        plain: run the plain ops of `bert_ref.ops` alone, in the calling thread (the code a
            learner reads), instead of their fast twins in `bert_ref.model.kernels`; see
            `bert_ref.forward`.

    Call it with `{"token_ids", "segment_ids", "padding_mask"}` ([B, S] each; the last two
    optional) to get `{"sequence_output": [B, S, H], "pooled_output": [B, H]}`.

    Examples:

    >>> import numpy as np
    >>> from bert_ref import BertBackbone
    >>> model = BertBackbone(vocabulary_size=30552, num_layers=4, num_heads=4,
    ...                      hidden_dim=256, intermediate_dim=512, max_sequence_length=128, seed=0)
    >>> inputs = {"token_ids": np.ones((1, 12), dtype="int32"),
    ...           "segment_ids": np.array([[0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]]),
    ...           "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])}
    >>> out = model(inputs)
    >>> out["sequence_output"].shape, out["pooled_output"].shape
    ((1, 12, 256), (1, 256))
    """

    #: Built-in presets: name -> metadata (description, params, kaggle_handle, config).
    presets = PRESETS

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        dropout: float = 0.1,
        max_sequence_length: int = 512,
        num_segments: int = 2,
        dtype: Any = None,
        *,
        activation: str = "gelu_approximate",
        layer_norm_epsilon: float = 1e-12,
        weights: Mapping[str, Any] | None = None,
        seed: int | None = None,
        plain: bool = False,
    ):
        self.config = BertConfig(
            vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
            hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, dropout=dropout,
            max_sequence_length=max_sequence_length, num_segments=num_segments,
            activation=activation, layer_norm_epsilon=layer_norm_epsilon,
        )
        self.dtype_policy = get_policy(dtype)
        self.plain = plain
        storage = self.dtype_policy.variable_dtype
        if weights is None:
            checked = encoder.init_weights(self.config, seed=seed, dtype=storage)
        else:
            checked = encoder.check_weights(weights, self.config)
            checked = {n: w.astype(storage, copy=False) for n, w in checked.items()}
        self._weights = MappingProxyType({n: _read_only(w) for n, w in checked.items()})
        self._prepared: encoder.PreparedWeights | None = None
        # A NaN/inf check deferred by `from_preset(..., defer_finite_check=True)`: the checkpoint's
        # own arrays (before any cast to the policy's dtype) and the file to name; None once run.
        self._unchecked: tuple[Mapping[str, np.ndarray], str] | None = None
        self.token_embedding = TokenEmbedding(self)
        self.source: str | None = None  # where from_preset loaded it from
        # What the preset said besides config and weights (lowercase flag, vocabulary path, ...),
        # carried so that save_to_preset keeps the tokenizer assets.
        self.preset_metadata: dict[str, Any] = {}

    # -- keras-like attributes ------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # keras-hub exposes the config values as attributes (model.num_layers, ...).
        config = self.__dict__.get("config")
        if config is not None and name in config.to_dict():
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def weights(self) -> Mapping[str, np.ndarray]:
        """Canonical name -> array (storage dtype), read-only."""
        self._check_finite()
        return self._weights

    def _check_finite(self) -> None:
        """Run the NaN/inf check `from_preset(..., defer_finite_check=True)` left for first use."""
        if self._unchecked is not None:
            from bert_ref.io.checkpoints.base import check_all_finite

            check_all_finite(*self._unchecked)
            self._unchecked = None

    def first_layers(self, layers: int) -> BertBackbone:
        """The model cut after its first `layers` layers (the same config but for the number of
        layers; the very same embedding and layer arrays, not copies): its outputs are this model's
        up to that layer, bit for bit, for a fraction of the work. A NaN/inf check this model still
        defers (`from_preset(..., defer_finite_check=True)`) is carried over for the arrays kept,
        so cutting reads no weight. `layers` at least the model's: the model itself."""
        if layers >= self.config.num_layers:
            return self
        if layers < 0:
            raise ValueError(f"layers={layers}: expected 0 to {self.config.num_layers}")

        def kept(name: str) -> bool:
            return not name.startswith("transformer_layer_") or int(name.split("_")[2].split("/")[0]) < layers

        small = BertBackbone(**{**self.config.to_dict(), "num_layers": layers}, dtype=self.dtype_policy,
                             weights={n: w for n, w in self._weights.items() if kept(n)}, plain=self.plain)
        if self._unchecked is not None:
            arrays, source = self._unchecked
            small._unchecked = ({n: w for n, w in arrays.items() if kept(n)}, source)
        return small

    @property
    def dtype(self) -> str:
        """The storage (variable) dtype, as keras' `layer.dtype`."""
        return self.dtype_policy.variable_dtype.name

    def count_params(self) -> int:
        return encoder.count_params(self._weights)

    def get_config(self) -> dict[str, Any]:
        """keras-hub's config keys plus `activation`, `layer_norm_epsilon` and `dtype`."""
        return {**self.config.to_dict(), "dtype": self.dtype_policy.name}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BertBackbone:
        config = dict(config)
        dtype = config.pop("dtype", None)
        if isinstance(dtype, Mapping):  # a serialised keras DTypePolicy
            dtype = dtype.get("config", {}).get("name")
        return cls(**BertConfig.from_dict(config).to_dict(), dtype=dtype)

    def __repr__(self) -> str:
        c = self.config
        return (f"BertBackbone(vocabulary_size={c.vocabulary_size}, num_layers={c.num_layers}, "
                f"num_heads={c.num_heads}, hidden_dim={c.hidden_dim}, intermediate_dim={c.intermediate_dim}, "
                f"dtype={self.dtype_policy.name!r}, params={self.count_params():,})")

    # -- running ---------------------------------------------------------------------------------

    def prepared_weights(self) -> encoder.PreparedWeights:
        """The policy-cast weights `forward` computes with; built on first use, then kept."""
        self._check_finite()
        if self._prepared is None:
            self._prepared = encoder.prepare(self._weights, self.config, self.dtype_policy)
        return self._prepared

    def __call__(
        self,
        inputs: Mapping[str, Any],
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        trace: Any = None,
        plain: bool | None = None,
    ) -> dict[str, Any]:
        """Run the encoder; see `bert_ref.forward` for the arguments and the outputs (`plain`: None
        for the model's own setting).

        Inputs whose activations would not fit in memory are refused before any work (a
        `bert_ref.model.limits.LimitError` giving the estimate; see BERT_REF_MAX_ACTIVATION_BYTES)."""
        ids = inputs.get("token_ids") if isinstance(inputs, Mapping) else None
        shape = np.shape(ids) if ids is not None else ()
        if len(shape) == 2:
            policy = self.dtype_policy
            itemsize = max(np.dtype(policy.compute_dtype).itemsize, 4)  # softmax / layer norm: >= float32
            limits.check_forward(self.config, int(shape[0]), int(shape[1]), itemsize, policy.name,
                                 hidden_states=output_hidden_states, attentions=output_attentions,
                                 trace=trace is not None and trace is not False)
        return encoder.forward(
            self.prepared_weights(), self.config, inputs, dtype=self.dtype_policy,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, trace=trace,
            plain=self.plain if plain is None else plain,
        )

    predict = __call__

    # -- presets ---------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset: str | os.PathLike, load_weights: bool = True, dtype: Any = None, *,
                    defer_finite_check: bool = False, plain: bool = False) -> BertBackbone:
        """Build a backbone from a preset.

        `preset` is a built-in name (see `BertBackbone.presets`), `"kaggle://owner/model/framework/
        variation[/version]"`, `"hf://owner/name[@revision]"`, or a local directory holding a
        keras-hub preset, a Hugging Face BERT checkpoint, or a preset saved by `save_to_preset`.
        With `load_weights=False` the architecture gets random weights (a built-in name then needs
        no download at all).

        Every weight is checked for NaN/inf (a `CheckpointError` names the tensor and position),
        which reads all of them. With `defer_finite_check=True` that check runs at the model's first
        use of its weights instead (`model(...)`, `weights`, `prepared_weights`, `save_to_preset`),
        with the same error; a caller that may need only the config (a compare whose runs are all
        cached) then never reads them. `plain`: as in the constructor.

        >>> model = BertBackbone.from_preset("bert_tiny_en_uncased", load_weights=False)
        >>> model.count_params()
        4385920
        """
        preset = os.fspath(preset)
        if not load_weights and preset in PRESETS:
            model = cls(**preset_config(preset).to_dict(), dtype=dtype)
            model.source = preset
            return model
        from bert_ref.io import checkpoints, hub

        directory = hub.resolve(preset)
        ckpt = checkpoints.load_preset_dir(directory, load_weights=load_weights, check_finite=not defer_finite_check)
        model = cls(**ckpt.config.to_dict(), dtype=dtype, weights=ckpt.weights)
        if ckpt.weights is not None and ckpt.unchecked is not None:
            model._unchecked = (ckpt.weights, ckpt.unchecked)
        model.source = str(directory)
        model.preset_metadata = dict(ckpt.metadata)
        return model

    def save_to_preset(self, preset_dir: str | os.PathLike) -> None:
        """Write a native preset: keras-hub's `config.json` layout plus `model.safetensors` with the
        canonical weight names. `from_preset(preset_dir)` reads it back bit-exactly. The vocabulary
        and lowercase flag of the preset this model was loaded from are kept."""
        from bert_ref.io.checkpoints.native import save_preset

        kept = {k: self.preset_metadata[k] for k in ("lowercase", "vocabulary")
                if self.preset_metadata.get(k) is not None}
        metadata = {**kept, "dtype": self.dtype_policy.name, "source": self.source}
        save_preset(preset_dir, self.config, dict(self.weights), metadata=metadata)
