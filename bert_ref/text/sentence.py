"""Sentence embeddings: text -> WordPiece -> BertBackbone -> one vector per text.

    >>> from bert_ref.text.sentence import SentenceEncoder
    >>> encoder = SentenceEncoder.from_preset("path/to/all-MiniLM-L6-v2")   # doctest: +SKIP
    >>> encoder.encode(["A man is eating food.", "A man is riding a horse."]).shape  # doctest: +SKIP
    (2, 384)

Pooling turns the (tokens, hidden) output into one vector (sentence-transformers' modes, by its
names, computed as it computes them):

* "mean": the average of the final hidden states over real tokens ([CLS] and [SEP] included,
  padding excluded);
* "mean_sqrt_len_tokens": their sum divided by the square root of the number of real tokens;
* "weightedmean": their average weighted by position (1 for the first token, 2 for the second, ...);
* "cls": the final hidden state of [CLS];
* "max": the element-wise maximum over real tokens;
* "lasttoken": the final hidden state of the last real token ([SEP]);
* "pooled": the backbone's `pooled_output` (tanh(dense([CLS]))), BERT's sentence-level head (ours;
  not a sentence-transformers mode).

Several modes together (a sentence-transformers Pooling with more than one on) are concatenated in
sentence-transformers' order: cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken.

A sentence-transformers preset says how it was trained to be used, and its modules run in its
order: `modules.json` lists them — the Transformer (our backbone), Pooling (`1_Pooling/config.json`,
the mode), any `Dense` projections (`2_Dense/config.json` + `model.safetensors`:
`activation(x @ W.T + b)`, optionally plus a residual), and `Normalize` (unit-length vectors).
`sentence_bert_config.json` gives `max_seq_length` (longer texts are cut to that many positions,
[CLS] and [SEP] included; sentence-transformers >= 6 writes it as `tokenizer_config.json`'s
`model_max_length` instead) and `do_lower_case`. Without these files: mean pooling, no projection, no
normalisation, the backbone's `max_sequence_length`.

Numerics: the backbone runs in its dtype policy (float32 by default); pooling, Dense projections and
normalisation run in float64 and the result is returned in the backbone's compute dtype. Against sentence-transformers
(PyTorch, float32) on all-MiniLM-L6-v2 the vectors agree to cosine >= 0.99999 and 1e-5 per element
(tests/test_sentence_golden.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bert_ref.io.checkpoints.base import CheckpointError, check_regular_file, read_optional_json
from bert_ref.text.tokenizer import BertTokenizer, pack

if TYPE_CHECKING:
    from bert_ref.backbone import BertBackbone

__all__ = ["DenseLayer", "SentenceEncoder", "SentenceSettings", "read_sentence_settings", "pool", "POOLING_MODES"]

#: sentence-transformers' modes in its concatenation order, then ours.
ST_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", "pooled")

# sentence-transformers' legacy pooling flags (before `pooling_mode`) -> mode, in its order.
_ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ST_MODULES_OK = {"Transformer", "Pooling", "Dense", "Normalize"}
# `torch.nn` activations a Dense module may name (its `activation_function`) -> x -> f(x) in float64.
_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0.0),
    "torch.nn.modules.activation.Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers `Dense` module: `activation(x @ weight.T + bias)` (+ residual).

    Attributes:
        weight: (out_features, in_features), as torch's `nn.Linear` stores it.
        bias: (out_features,) or None.
        activation: the `torch.nn` class name from the module's config.
        residual: None; or "identity" (adds x) or a (out_features, in_features) projection of x
            (`use_residual`).
        source: the module's directory, for error messages.
    """

    weight: np.ndarray
    bias: np.ndarray | None
    activation: str
    residual: np.ndarray | str | None = None
    source: str = "Dense"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[B, in] -> [B, out], in float64."""
        x = np.asarray(x, dtype=np.float64)                              # [B, in]
        if x.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"{self.source}: expects vectors of {self.weight.shape[1]} values, got {x.shape[-1]} "
                             "(the modules before it produce that many)")
        y = x @ self.weight.astype(np.float64).T                        # [B, out]
        if self.bias is not None:
            y = y + self.bias.astype(np.float64)                         # [B, out]
        y = _ACTIVATIONS[self.activation](y)                             # [B, out]
        if isinstance(self.residual, np.ndarray):
            y = y + x @ self.residual.astype(np.float64).T               # [B, out]
        elif self.residual == "identity":
            y = y + x                                                    # [B, out]
        return y


@dataclass(frozen=True)
class SentenceSettings:
    """What a preset directory says about sentence embeddings (None: it says nothing).

    `pooling` is one mode or a tuple of modes (concatenated); `dense` the Dense modules to run
    after pooling, in order."""

    pooling: str | tuple[str, ...] | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    do_lower_case: bool = False
    dense: tuple[DenseLayer, ...] = ()


def read_sentence_settings(directory: str | os.PathLike) -> SentenceSettings:
    """Read `modules.json`, the Pooling module's `config.json` and `sentence_bert_config.json`.

    Raises `NotImplementedError` for modules or settings this package does not implement, rather
    than silently producing different vectors; `ValueError` naming the file and field for a bad one.
    """
    d = Path(directory)
    pooling: str | tuple[str, ...] | None = None
    normalize = max_len = None
    lower = False
    dense: list[DenseLayer] = []
    modules = read_optional_json(d / "modules.json")
    if modules is not None:
        if not isinstance(modules, list):
            raise ValueError(f"{d / 'modules.json'} must hold a list of modules")
        normalize = False
        for i, module in enumerate(modules):
            if not isinstance(module, dict):
                raise ValueError(f"{d / 'modules.json'}[{i}] must be an object with a 'type', got {module!r}")
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _ST_MODULES_OK:
                raise NotImplementedError(
                    f"{d / 'modules.json'}[{i}] is a sentence-transformers {kind!r} module; only "
                    f"{', '.join(sorted(_ST_MODULES_OK))} are implemented")
            where = f"{d / 'modules.json'}[{i}]"
            if kind == "Normalize":
                normalize = True
            elif kind in ("Pooling", "Dense") and (pooling is None) == (kind == "Dense"):
                order = "after the Pooling module" if kind == "Dense" else "once, before any Dense module"
                raise NotImplementedError(f"{where}: a {kind} module is implemented only {order}")
            elif normalize and kind != "Normalize":
                raise NotImplementedError(f"{where}: a {kind} module after Normalize is not implemented")
            module_dir = d / _module_path(module, where)
            if kind == "Pooling":
                pooling = _pooling_from_config(module_dir / "config.json")
            elif kind == "Dense":
                dense.append(_read_dense(module_dir))
    st_config = read_optional_json(d / "sentence_bert_config.json")
    if isinstance(st_config, dict):
        max_len = st_config.get("max_seq_length")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"{d / 'sentence_bert_config.json'}: max_seq_length must be an integer >= 1 "
                             f"(or null), got {max_len!r}")
        lower = bool(st_config.get("do_lower_case", False))
    if max_len is None and modules is not None:
        # sentence-transformers >= 6 records the Transformer's max_seq_length as the tokenizer's
        # model_max_length only (transformers writes a huge number there for "no limit").
        tok_config = read_optional_json(d / "tokenizer_config.json")
        value = tok_config.get("model_max_length") if isinstance(tok_config, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 1_000_000:
            max_len = value
    return SentenceSettings(pooling=pooling, normalize=normalize, max_seq_length=max_len,
                            do_lower_case=lower, dense=tuple(dense))


def _module_path(module: dict, where: str) -> str:
    from bert_ref.io.hub.archive import safe_relpath
    from bert_ref.io.hub.errors import UnsafeArchiveError

    path = module.get("path", "")
    if not isinstance(path, str):
        raise ValueError(f"{where}: 'path' must be a string, got {path!r}")
    try:
        return safe_relpath(path, where).as_posix() if path else ""
    except UnsafeArchiveError as e:  # a module must live inside the preset directory
        raise ValueError(str(e)) from None


def _pooling_from_config(path: Path) -> str | tuple[str, ...]:
    config = read_optional_json(path)
    if not isinstance(config, dict):
        raise FileNotFoundError(f"the Pooling module's configuration {path} is missing")
    if "pooling_mode" in config:  # sentence-transformers >= 6: a mode or a list of modes
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else modes
        if not isinstance(modes, list) or not modes or not all(m in ST_POOLING_MODES for m in modes):
            raise ValueError(f"{path}: pooling_mode must be one of {ST_POOLING_MODES} or a list of them, "
                             f"got {config['pooling_mode']!r}")
    else:  # the older boolean flags; none on means mean, as sentence-transformers reads them
        modes = [mode for flag, mode in _ST_POOLING_FLAGS.items() if config.get(flag)] or ["mean"]
    if config.get("include_prompt", True) is not True:
        raise NotImplementedError(f"{path}: include_prompt false (pooling that skips a prompt) is not implemented")
    return modes[0] if len(modes) == 1 else tuple(modes)


def _read_dense(directory: Path) -> DenseLayer:
    """A sentence-transformers Dense module directory: `config.json` + `model.safetensors`."""
    from bert_ref.io.checkpoints.safetensors_io import read_safetensors

    path = directory / "config.json"
    config = read_optional_json(path)
    if not isinstance(config, dict):
        raise FileNotFoundError(f"the Dense module's configuration {path} is missing")

    def field(key: str, kind: type, default: Any = None) -> Any:
        value = config.get(key, default)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise ValueError(f"{path}: {key} must be {'true or false' if kind is bool else 'a ' + kind.__name__}, "
                             f"got {value!r}")
        return value

    n_in, n_out = field("in_features", int), field("out_features", int)
    has_bias, use_residual = field("bias", bool, True), field("use_residual", bool, False)
    activation = field("activation_function", str, "torch.nn.modules.activation.Tanh")
    if activation not in _ACTIVATIONS:
        raise NotImplementedError(f"{path}: activation_function {activation!r} is not implemented; implemented: "
                                  f"{', '.join(sorted(_ACTIVATIONS))}")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") not in ("sentence_embedding", None):
            raise NotImplementedError(f"{path}: {key} {config[key]!r}: only a Dense module on the sentence "
                                      "embedding is implemented")
    weights_path = directory / "model.safetensors"
    if not weights_path.exists() and (directory / "pytorch_model.bin").exists():
        raise CheckpointError(f"{directory}: only pytorch_model.bin (a PyTorch pickle) was found; bert_ref reads only "
                              "safetensors and never unpickles. Save the model again with sentence-transformers >= 3 "
                              "(safe_serialization=True) to write model.safetensors")
    check_regular_file(weights_path, f"{directory}: the Dense module has no model.safetensors")
    tensors, _ = read_safetensors(weights_path)
    expected: dict[str, tuple[int, ...]] = {"linear.weight": (n_out, n_in)}
    if has_bias:
        expected["linear.bias"] = (n_out,)
    if use_residual and n_in != n_out:
        expected["residual.weight"] = (n_out, n_in)
    if sorted(tensors) != sorted(expected):
        raise CheckpointError(f"{weights_path}: holds tensors {sorted(tensors)}; a Dense({n_in} -> {n_out}"
                              f"{', bias' if has_bias else ''}) module has {sorted(expected)}")
    for name, shape in expected.items():
        t = tensors[name]
        if t.shape != shape or t.dtype.kind != "f":
            raise CheckpointError(f"{weights_path}: {name} is {t.dtype} {t.shape}; expected floating {shape} "
                                  f"(in_features {n_in}, out_features {n_out} in config.json)")
        from bert_ref.io.checkpoints.base import check_finite

        check_finite(t, name, str(weights_path))
    residual = None
    if use_residual:
        residual = tensors["residual.weight"] if n_in != n_out else "identity"
    return DenseLayer(tensors["linear.weight"], tensors.get("linear.bias"), activation, residual, str(directory))


def pool(sequence_output: np.ndarray, padding_mask: np.ndarray, mode: str | Sequence[str],
         pooled_output: np.ndarray | None = None) -> np.ndarray:
    """One vector per row: (B, S, H) hidden states + (B, S) mask -> (B, H), computed in float64.

    Several modes (a tuple) give their vectors concatenated in that order: (B, len(modes) * H).
    Positions are real where the mask is True; padding is on the right."""
    if not isinstance(mode, str):
        return np.concatenate([pool(sequence_output, padding_mask, m, pooled_output) for m in mode], axis=-1)
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling={mode!r} is not one of {POOLING_MODES}")
    h = np.asarray(sequence_output, dtype=np.float64)                  # [B, S, H]
    mask = np.asarray(padding_mask, dtype=bool)                          # [B, S]
    if mode == "pooled":
        if pooled_output is None:
            raise ValueError("pooling='pooled' needs the backbone's pooled_output")
        return np.asarray(pooled_output, dtype=np.float64)               # [B, H]
    if mode == "cls":
        return h[:, 0, :]                                                # [B, H]
    if mode == "max":
        return np.where(mask[:, :, None], h, -np.inf).max(axis=1)        # [B, H]
    if mode == "lasttoken":
        last = np.where(mask.any(axis=1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), mask.shape[1] - 1)
        return (h * mask[:, :, None])[np.arange(h.shape[0]), last]       # [B, H]
    if mode == "weightedmean":
        weights = mask * np.arange(1, mask.shape[1] + 1, dtype=np.float64)  # [B, S]: 1, 2, ... at real tokens
        total = weights.sum(axis=1, keepdims=True)                         # [B, 1]
        return (h * weights[:, :, None]).sum(axis=1) / np.maximum(total, 1e-9)  # [B, H]
    counts = mask.sum(axis=1, keepdims=True).astype(np.float64)          # [B, 1]
    sums = (h * mask[:, :, None]).sum(axis=1)                            # [B, H]
    if mode == "mean_sqrt_len_tokens":
        return sums / np.sqrt(np.maximum(counts, 1e-9))                  # [B, H]
    return sums / np.maximum(counts, 1e-9)                               # [B, H]


def _check_pooling(pooling: object) -> None:
    modes = (pooling,) if isinstance(pooling, str) else pooling
    if not isinstance(modes, (tuple, list)) or not modes or any(m not in POOLING_MODES for m in modes):
        raise ValueError(f"pooling={pooling!r} is not one of {POOLING_MODES} (or a tuple of them)")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """x / max(||x||, eps) row by row: [B, H] -> [B, H]."""
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.maximum(norm, eps)


class SentenceEncoder:
    """A backbone and its tokenizer, turning texts into fixed-size vectors.

    Args:
        backbone: a `BertBackbone`.
        tokenizer: a `BertTokenizer` for the backbone's vocabulary.
        pooling: default pooling: one of `POOLING_MODES`, or a tuple of them (concatenated).
        normalize: default for scaling vectors to unit L2 norm (after any Dense module).
        max_sequence_length: texts are cut to this many positions ([CLS] and [SEP] included).
            None: the backbone's `max_sequence_length`.
        lowercase_input: lowercase the text before tokenizing (sentence-transformers'
            `do_lower_case`, on top of the tokenizer's own lowercasing).
        dense: `DenseLayer`s applied in order after pooling (sentence-transformers' Dense modules).
    """

    def __init__(self, backbone: BertBackbone, tokenizer: BertTokenizer, *, pooling: str | tuple[str, ...] = "mean",
                 normalize: bool = False, max_sequence_length: int | None = None,
                 lowercase_input: bool = False, dense: Sequence[DenseLayer] = ()) -> None:
        _check_pooling(pooling)
        limit = backbone.config.max_sequence_length
        if max_sequence_length is None:
            max_sequence_length = limit
        if not 2 <= max_sequence_length <= limit:
            raise ValueError(
                f"max_sequence_length = {max_sequence_length} is outside [2, {limit}]: the backbone "
                f"has {limit} positions")
        if tokenizer.vocabulary_size() != backbone.config.vocabulary_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocabulary_size()} tokens but the backbone's "
                f"vocabulary_size is {backbone.config.vocabulary_size}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.max_sequence_length = int(max_sequence_length)
        self.lowercase_input = bool(lowercase_input)
        self.dense = tuple(dense)

    @classmethod
    def from_preset(cls, preset: str | os.PathLike, dtype: Any = None, *,
                    pooling: str | tuple[str, ...] | None = None,
                    normalize: bool | None = None, max_sequence_length: int | None = None
                    ) -> SentenceEncoder:
        """Backbone, tokenizer and sentence-transformers settings of a preset (see the module doc).

        Explicit `pooling`, `normalize` and `max_sequence_length` override the preset's settings.
        """
        from bert_ref.backbone import BertBackbone
        from bert_ref.io import hub

        directory = hub.resolve(preset)
        settings = read_sentence_settings(directory)
        backbone = BertBackbone.from_preset(directory, dtype=dtype)
        tokenizer = BertTokenizer.from_preset(directory)
        if max_sequence_length is None and settings.max_seq_length is not None:
            max_sequence_length = min(settings.max_seq_length, backbone.config.max_sequence_length)
        return cls(
            backbone, tokenizer,
            pooling=pooling or settings.pooling or "mean",
            normalize=bool(settings.normalize) if normalize is None else normalize,
            max_sequence_length=max_sequence_length,
            lowercase_input=settings.do_lower_case,
            dense=settings.dense,
        )

    def encode(self, texts: str | Sequence[str], *, pooling: str | tuple[str, ...] | None = None,
               normalize: bool | None = None, batch_size: int = 32) -> np.ndarray:
        """Vectors of `texts`: (len(texts), hidden_dim), or (hidden_dim,) for a single string.

        Texts are batched `batch_size` at a time, each batch padded to its longest text.
        """
        single = isinstance(texts, str)
        given: object = [texts] if single else texts
        if isinstance(given, np.ndarray):
            given = given.tolist()
        if not isinstance(given, Sequence):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        if len(given) == 0:
            raise ValueError("texts is empty: give at least one text")
        for i, t in enumerate(given):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            if t == "":
                raise ValueError(f"texts[{i}] is an empty string: there is nothing to embed")
        batch = cast(Sequence[str], given)  # every item checked above
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size = {batch_size!r} must be an int >= 1")
        pooling = self.pooling if pooling is None else pooling
        _check_pooling(pooling)
        normalize = self.normalize if normalize is None else bool(normalize)

        out = []
        for start in range(0, len(batch), batch_size):
            chunk = batch[start:start + batch_size]
            if self.lowercase_input:
                chunk = [t.lower() for t in chunk]
            ids = [self.tokenizer.encode(t, self.max_sequence_length - 2) for t in chunk]
            length = max(len(x) for x in ids) + 2
            tok = self.tokenizer
            inputs = pack([ids], sequence_length=length, cls_id=tok.cls_token_id,
                          sep_id=tok.sep_token_id, pad_id=tok.pad_token_id)
            result = self.backbone(inputs)
            vectors = pool(result["sequence_output"], inputs["padding_mask"], pooling,
                           result.get("pooled_output"))                 # [B, H * modes]
            for layer in self.dense:
                vectors = layer(vectors)                                 # [B, out_features]
            if normalize:
                vectors = l2_normalize(vectors)
            out.append(vectors.astype(result["sequence_output"].dtype))
        vectors = np.concatenate(out, axis=0)
        return vectors[0] if single else vectors

    def __repr__(self) -> str:
        dense = "".join(f", Dense({d.weight.shape[1]} -> {d.weight.shape[0]})" for d in self.dense)
        return (f"SentenceEncoder(pooling={self.pooling!r}{dense}, normalize={self.normalize}, "
                f"max_sequence_length={self.max_sequence_length}, "
                f"hidden_dim={self.backbone.config.hidden_dim})")
