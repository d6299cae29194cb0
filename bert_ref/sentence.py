"""Sentence embeddings: text -> WordPiece -> BertBackbone -> one vector per text.

    >>> from bert_ref.sentence import SentenceEncoder
    >>> encoder = SentenceEncoder.from_preset("path/to/all-MiniLM-L6-v2")   # doctest: +SKIP
    >>> encoder.encode(["A man is eating food.", "A man is riding a horse."]).shape  # doctest: +SKIP
    (2, 384)

Pooling turns the (tokens, hidden) output into one vector:

* "mean": the average of the final hidden states over real tokens ([CLS] and [SEP] included,
  padding excluded), as sentence-transformers' `pooling_mode_mean_tokens`;
* "cls": the final hidden state of [CLS];
* "max": the element-wise maximum over real tokens;
* "pooled": the backbone's `pooled_output` (tanh(dense([CLS]))), BERT's sentence-level head.

A sentence-transformers preset says how it was trained to be used, and its settings become the
defaults: `modules.json` (a `Normalize` module -> unit-length vectors), `1_Pooling/config.json`
(the pooling mode) and `sentence_bert_config.json` (`max_seq_length`: longer texts are cut to that
many positions, [CLS] and [SEP] included; `do_lower_case`). Without them: mean pooling, no
normalisation, the backbone's `max_sequence_length`.

Numerics: the backbone runs in its dtype policy (float32 by default); pooling and normalisation run
in float64 and the result is returned in the backbone's compute dtype. Against sentence-transformers
(PyTorch, float32) on all-MiniLM-L6-v2 the vectors agree to cosine >= 0.99999 and 1e-5 per element
(tests/test_sentence_golden.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoints.base import read_optional_json
from .tokenizer import BertTokenizer, pack

__all__ = ["SentenceEncoder", "SentenceSettings", "read_sentence_settings", "pool", "POOLING_MODES"]

POOLING_MODES = ("mean", "cls", "max", "pooled")

# sentence-transformers' pooling flags -> our names; anything else is not implemented.
_ST_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
_ST_UNSUPPORTED_FLAGS = (
    "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken",
)
_ST_MODULES_OK = {"Transformer", "Pooling", "Normalize"}


@dataclass(frozen=True)
class SentenceSettings:
    """What a preset directory says about sentence embeddings (None: it says nothing)."""

    pooling: str | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    do_lower_case: bool = False


def read_sentence_settings(directory: str | os.PathLike) -> SentenceSettings:
    """Read `modules.json`, the Pooling module's `config.json` and `sentence_bert_config.json`.

    Raises `NotImplementedError` for modules or pooling modes this package does not implement
    (e.g. a `Dense` projection), rather than silently producing different vectors.
    """
    d = Path(directory)
    pooling = normalize = max_len = None
    lower = False
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
            if kind == "Normalize":
                normalize = True
            if kind == "Pooling":
                pooling = _pooling_from_config(d / module.get("path", "") / "config.json")
    st_config = read_optional_json(d / "sentence_bert_config.json")
    if isinstance(st_config, dict):
        max_len = st_config.get("max_seq_length")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"{d / 'sentence_bert_config.json'}: max_seq_length must be an integer >= 1 "
                             f"(or null), got {max_len!r}")
        lower = bool(st_config.get("do_lower_case", False))
    return SentenceSettings(pooling=pooling, normalize=normalize, max_seq_length=max_len,
                            do_lower_case=lower)


def _pooling_from_config(path: Path) -> str:
    config = read_optional_json(path)
    if not isinstance(config, dict):
        raise FileNotFoundError(f"the Pooling module's configuration {path} is missing")
    on = [name for flag, name in _ST_POOLING_FLAGS.items() if config.get(flag)]
    unsupported = [flag for flag in _ST_UNSUPPORTED_FLAGS if config.get(flag)]
    if unsupported or len(on) != 1:
        raise NotImplementedError(
            f"{path} asks for pooling {', '.join(unsupported + on) or 'none'}; exactly one of "
            f"{', '.join(_ST_POOLING_FLAGS)} is implemented")
    return on[0]


def pool(sequence_output: np.ndarray, padding_mask: np.ndarray, mode: str,
         pooled_output: np.ndarray | None = None) -> np.ndarray:
    """One vector per row: (B, S, H) hidden states + (B, S) mask -> (B, H), computed in float64."""
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
    counts = mask.sum(axis=1, keepdims=True).astype(np.float64)          # [B, 1]
    return (h * mask[:, :, None]).sum(axis=1) / np.maximum(counts, 1e-9)  # [B, H]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """x / max(||x||, eps) row by row: [B, H] -> [B, H]."""
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.maximum(norm, eps)


class SentenceEncoder:
    """A backbone and its tokenizer, turning texts into fixed-size vectors.

    Args:
        backbone: a `BertBackbone`.
        tokenizer: a `BertTokenizer` for the backbone's vocabulary.
        pooling: default pooling ("mean", "cls", "max" or "pooled").
        normalize: default for scaling vectors to unit L2 norm.
        max_sequence_length: texts are cut to this many positions ([CLS] and [SEP] included).
            None: the backbone's `max_sequence_length`.
        lowercase_input: lowercase the text before tokenizing (sentence-transformers'
            `do_lower_case`, on top of the tokenizer's own lowercasing).
    """

    def __init__(self, backbone, tokenizer: BertTokenizer, *, pooling: str = "mean",
                 normalize: bool = False, max_sequence_length: int | None = None,
                 lowercase_input: bool = False):
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLING_MODES}")
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

    @classmethod
    def from_preset(cls, preset: str | os.PathLike, dtype=None, *, pooling: str | None = None,
                    normalize: bool | None = None, max_sequence_length: int | None = None
                    ) -> "SentenceEncoder":
        """Backbone, tokenizer and sentence-transformers settings of a preset (see the module doc).

        Explicit `pooling`, `normalize` and `max_sequence_length` override the preset's settings.
        """
        from . import hub
        from .backbone import BertBackbone

        directory = hub.resolve(preset)
        settings = read_sentence_settings(directory)
        backbone = BertBackbone.from_preset(directory, dtype=dtype)
        tokenizer = BertTokenizer.from_preset(directory)
        if max_sequence_length is None and settings.max_seq_length is not None:
            max_sequence_length = min(settings.max_seq_length, backbone.config.max_sequence_length)
        return cls(
            backbone, tokenizer,
            pooling=pooling or settings.pooling or "mean",
            normalize=settings.normalize if normalize is None else normalize,
            max_sequence_length=max_sequence_length,
            lowercase_input=settings.do_lower_case,
        )

    def encode(self, texts: str | Sequence[str], *, pooling: str | None = None,
               normalize: bool | None = None, batch_size: int = 32) -> np.ndarray:
        """Vectors of `texts`: (len(texts), hidden_dim), or (hidden_dim,) for a single string.

        Texts are batched `batch_size` at a time, each batch padded to its longest text.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        if isinstance(batch, np.ndarray):
            batch = batch.tolist()
        if not isinstance(batch, Sequence):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        if len(batch) == 0:
            raise ValueError("texts is empty: give at least one text")
        for i, t in enumerate(batch):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            if t == "":
                raise ValueError(f"texts[{i}] is an empty string: there is nothing to embed")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size = {batch_size!r} must be an int >= 1")
        pooling = self.pooling if pooling is None else pooling
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLING_MODES}")
        normalize = self.normalize if normalize is None else bool(normalize)

        out = []
        for start in range(0, len(batch), batch_size):
            chunk = batch[start:start + batch_size]
            if self.lowercase_input:
                chunk = [t.lower() for t in chunk]
            ids = [self.tokenizer.encode(t, self.max_sequence_length - 2) for t in chunk]
            length = max(len(x) for x in ids) + 2
            t = self.tokenizer
            inputs = pack([ids], sequence_length=length, cls_id=t.cls_token_id,
                          sep_id=t.sep_token_id, pad_id=t.pad_token_id)
            result = self.backbone(inputs)
            vectors = pool(result["sequence_output"], inputs["padding_mask"], pooling,
                           result.get("pooled_output"))
            if normalize:
                vectors = l2_normalize(vectors)
            out.append(vectors.astype(result["sequence_output"].dtype))
        vectors = np.concatenate(out, axis=0)
        return vectors[0] if single else vectors

    def __repr__(self) -> str:
        return (f"SentenceEncoder(pooling={self.pooling!r}, normalize={self.normalize}, "
                f"max_sequence_length={self.max_sequence_length}, "
                f"hidden_dim={self.backbone.config.hidden_dim})")
