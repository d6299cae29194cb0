"""bert_ref: a pure-NumPy reference implementation of the BERT encoder.

Faithful to keras-hub's `BertBackbone` and Hugging Face's `BertModel`, checked against golden
outputs recorded from both.

    >>> from bert_ref import BertBackbone
    >>> model = BertBackbone.from_preset("bert_tiny_en_uncased", load_weights=False)
    >>> out = model({"token_ids": [[101, 7592, 102]]})
    >>> out["sequence_output"].shape
    (1, 3, 128)

The public names below are imported on first use, so `import bert_ref.ops` (the teaching path)
loads NumPy and the ops alone. The layout of the package is described in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_PUBLIC = {
    "BertBackbone": "bert_ref.backbone", "TokenEmbedding": "bert_ref.backbone",
    "forward": "bert_ref.encoder", "init_weights": "bert_ref.encoder", "prepare": "bert_ref.encoder",
    "BertConfig": "bert_ref.model.config", "PRESETS": "bert_ref.model.presets",
    "POLICY_NAMES": "bert_ref.model.precision", "Policy": "bert_ref.model.precision",
    "get_policy": "bert_ref.model.precision",
    "compare": "bert_ref.oracle.compare", "compare_to_truth": "bert_ref.oracle.run",
    "BertTokenizer": "bert_ref.text.tokenizer", "SentenceEncoder": "bert_ref.text.sentence",
}
__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from bert_ref.backbone import BertBackbone, TokenEmbedding  # noqa: F401
    from bert_ref.encoder import forward, init_weights, prepare  # noqa: F401
    from bert_ref.model.config import BertConfig  # noqa: F401
    from bert_ref.model.precision import POLICY_NAMES, Policy, get_policy  # noqa: F401
    from bert_ref.model.presets import PRESETS  # noqa: F401
    from bert_ref.oracle.compare import compare  # noqa: F401
    from bert_ref.oracle.run import compare_to_truth  # noqa: F401
    from bert_ref.text.sentence import SentenceEncoder  # noqa: F401
    from bert_ref.text.tokenizer import BertTokenizer  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'bert_ref' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
