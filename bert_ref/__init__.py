"""bert_ref: a pure-NumPy reference implementation of the BERT encoder.

Faithful to keras-hub's `BertBackbone` and Hugging Face's `BertModel`, checked against golden
outputs recorded from both.
"""

from .config import BertConfig
from .presets import PRESETS

__version__ = "0.1.0"
__all__ = ["BertConfig", "PRESETS", "__version__"]
