"""Record sentence-transformers goldens for every pooling mode and for Dense modules.

Builds small real sentence-transformers models — a random 2-layer `BertModel` (hidden 32, a
100-odd-token WordPiece vocabulary) as the Transformer module, then Pooling in each mode,
`Dense` projections with each activation, and `Normalize` — saves each with
`SentenceTransformer.save`, reloads it from disk, and records `encode(...)` of a few sentences of
different lengths (so the batch is padded) with sentence-transformers itself (PyTorch float32, CPU).

Run (from the repository root) with the `golden` extra installed (torch 2.13.0 CPU first):

    python tools/golden/make_sentence_golden.py

Writes, under `golden/sentence_modes/`:
  <case>/               the saved model directory (modules.json, 1_Pooling/, 2_Dense/, ...)
  expected.json         the sentences, and for each case its modules and embeddings
  manifest.json         generator, versions, seeds, tolerance and its reason

Deterministic: the same versions write the same bytes (weights are drawn from a seeded NumPy
generator with the distribution of tools/_random_weights.py).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: the shared helpers
from _provenance import provenance  # noqa: E402
from _random_weights import random_weight  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "golden" / "sentence_modes"
SEED = 20241127
HIDDEN = 32

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog, again and again!",
    "Hello world.",
    "Is this a test? Yes: it is a test of pooling modes and dense layers.",
    "Dogs.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
    # Longer than max_seq_length (48 positions): the cut, which sentence-transformers >= 6 records
    # only as the tokenizer's model_max_length, must be honoured.
    "The lazy dog sleeps, the quick fox jumps, the man eats food, and again the dog sleeps while the fox "
    "jumps over the sea shore and the shells; is this a test of the dense layers? Yes, again and again.",
]

# (case, pooling modes, Dense modules as (out_features, activation class, bias, use_residual), normalize)
CASES = [
    ("mean_dense_tanh_normalize", "mean", [(16, "Tanh", True, False)], True),
    ("weightedmean_dense_identity_nobias", "weightedmean", [(24, "Identity", False, False)], False),
    ("max", "max", [], False),
    ("cls_mean_dense_relu", ("cls", "mean"), [(16, "ReLU", True, False)], False),
    ("mean_sqrt_len_lasttoken", ("mean_sqrt_len_tokens", "lasttoken"), [], False),
    ("two_dense_residual_sigmoid", "mean", [(HIDDEN, "Tanh", True, True), (8, "Sigmoid", True, False)], True),
]

# Both sides run the same float32 model (2 layers, hidden 32) and differ only in summation order
# (NumPy vs PyTorch kernels; pooling and Dense in float64 on our side): float32 rounding, not
# bitwise. Measured when this golden was recorded: max abs <= 1.9e-6 (on mean_sqrt_len vectors of
# norm ~33; <= 1e-6 elsewhere), cosine >= 1 - 6e-8 over all cases.
TOLERANCE = {"max_abs": 1e-5, "cosine_min": 0.99999,
             "reason": "float32 on both sides, different summation order (NumPy vs PyTorch); measured max abs "
                       "<= 1.9e-6 on vectors of norm up to 33, cosine >= 1 - 6e-8; a wrong mode, weight, "
                       "activation or cut is O(0.01) or more"}


def vocabulary() -> list[str]:
    words = sorted({w for s in SENTENCES for w in
                    "".join(c if c.isalnum() else " " for c in s.lower()).split()})
    punctuation = sorted({c for s in SENTENCES for c in s if not c.isalnum() and not c.isspace()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + punctuation + letters + ["##" + c for c in letters]
    return tokens + [w for w in words if w not in tokens and len(w) > 1][:: 2]  # every other word: ## splits too


def build_transformer(directory: Path, rng: np.random.Generator) -> None:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = vocabulary()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    assert len(tokenizer) == len(vocab), "the tokenizer did not take the vocabulary"
    config = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")
    model = BertModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                kind = "gamma"
            elif "LayerNorm.bias" in name:
                kind = "beta"
            elif name.endswith("bias"):
                kind = "bias"
            elif "embeddings" in name:
                kind = "embeddings"
            else:  # torch stores Linear weights (out, in): draw the (in, out) kernel and transpose
                param.copy_(torch.from_numpy(random_weight("kernel", tuple(param.shape[::-1]), rng).T.copy()))
                continue
            param.copy_(torch.from_numpy(random_weight(kind, tuple(param.shape), rng)))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def dense_module(n_in: int, spec, rng: np.random.Generator):
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    n_out, activation, bias, residual = spec
    module = Dense(n_in, n_out, bias=bias, activation_function=getattr(torch.nn, activation)(),
                   use_residual=residual)
    with torch.no_grad():
        for name, param in module.named_parameters():
            kind = "bias" if name.endswith("bias") else None
            if kind:
                param.copy_(torch.from_numpy(random_weight("bias", tuple(param.shape), rng)))
            else:
                param.copy_(torch.from_numpy(random_weight("kernel", tuple(param.shape[::-1]), rng).T.copy()))
    return module


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    expected = {"sentences": SENTENCES, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "transformer"
        base.mkdir()
        build_transformer(base, rng)
        for case, modes, dense_specs, normalize in CASES:
            modules = [Transformer(str(base), max_seq_length=48)]
            modules.append(Pooling(HIDDEN, pooling_mode=modes))
            width = HIDDEN * (1 if isinstance(modes, str) else len(modes))
            for spec in dense_specs:
                modules.append(dense_module(width, spec, rng))
                width = spec[0]
            if normalize:
                modules.append(Normalize())
            model = SentenceTransformer(modules=modules, device="cpu").eval()
            target = OUT / case
            model.save(str(target))
            for junk in ("README.md",):
                (target / junk).unlink(missing_ok=True)
            reloaded = SentenceTransformer(str(target), device="cpu").eval()
            ids = reloaded.tokenizer(SENTENCES, truncation=True, max_length=48)["input_ids"]
            assert sum(i == 1 for row in ids for i in row) == 0, f"{case}: [UNK] in the golden sentences"
            a = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
            b = reloaded.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
            assert np.array_equal(a, b), f"{case}: the saved model does not reproduce the built one"
            expected["cases"][case] = {
                "pooling_mode": modes if isinstance(modes, str) else list(modes),
                "dense": [{"out_features": s[0], "activation": s[1], "bias": s[2], "use_residual": s[3]}
                          for s in dense_specs],
                "normalize": normalize,
                "modules": [type(m).__name__ for m in reloaded],
                "embeddings": b.astype(np.float64).tolist(),
            }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    manifest = {
        "generator": "tools/golden/make_sentence_golden.py",
        "framework": "sentence-transformers SentenceTransformer.encode (PyTorch float32, CPU)",
        "seed": SEED,
        "weights": "BertModel and Dense weights from tools/_random_weights.py (gamma ~ 1 + 0.1 N, beta/bias ~ "
                   "0.1 N, embeddings ~ 0.5 N, kernels ~ N / sqrt(fan_in)); hidden 32, 2 layers, 4 heads, "
                   "intermediate 64, erf GELU, max_seq_length 48",
        "tolerance": TOLERANCE,
        "versions": provenance(),
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(CASES)} cases to {OUT}")


if __name__ == "__main__":
    main()
