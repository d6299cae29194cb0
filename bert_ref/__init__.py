"""bert_ref: a pure-NumPy reference implementation of the BERT encoder.

Faithful to keras-hub's `BertBackbone` and Hugging Face's `BertModel`, checked against golden
outputs recorded from both.

    >>> from bert_ref import BertBackbone
    >>> model = BertBackbone.from_preset("bert_tiny_en_uncased", load_weights=False)
    >>> out = model({"token_ids": [[101, 7592, 102]]})
    >>> out["sequence_output"].shape
    (1, 3, 128)
"""

from .backbone import BertBackbone, TokenEmbedding
from .compare import compare, compare_to_truth  # the function; `from bert_ref.compare import Report` still works
from .config import BertConfig
from .encoder import forward, init_weights, prepare
from .precision import POLICY_NAMES, Policy, get_policy
from .presets import PRESETS
from .sentence import SentenceEncoder
from .tokenizer import BertTokenizer

__version__ = "0.1.0"
__all__ = [
    "BertBackbone", "BertConfig", "TokenEmbedding", "forward", "init_weights", "prepare",
    "POLICY_NAMES", "Policy", "get_policy", "PRESETS", "__version__", "compare", "compare_to_truth",
    "BertTokenizer", "SentenceEncoder",
]
