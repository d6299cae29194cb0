"""Record the backbone goldens in `golden/backbone/` from the real keras-hub and transformers.

Run (from the repository root, with the frameworks' interpreter):

    KERAS_BACKEND=jax /path/to/venv/bin/python tools/golden/make_golden.py [--out golden/backbone] [--only CASE ...]

For every case in `CASES` this script

1. draws canonical weights with NumPy from the case's fixed seed. EVERY tensor is random (layer-norm
   gamma ~ 1 + 0.1 N, beta and biases ~ 0.1 N, kernels ~ N / sqrt(fan_in), embeddings ~ 0.5 N) so a
   mis-mapped tensor cannot hide behind a 1, a 0 or a symmetry. Weights are stored as float32; every
   anchor uses exactly those values (cast to float64 for the float64 runs).
2. loads them into keras-hub's `BertBackbone` (JAX backend) and records `sequence_output`,
   `pooled_output`, the hidden states (embeddings layer-norm output and each layer's output, read
   from the functional graph itself) and the attention probabilities, for each dtype policy of the
   case. keras-hub's default `dropout=0.1` is kept and the model is called with `training=False`:
   with dropout > 0 keras' `MultiHeadAttention` runs its explicit einsum + masked-softmax path (the
   path is recorded in the manifest); with dropout 0.0 it would switch to the fused
   `ops.dot_product_attention`, whose fully-padded rows differ (measured and recorded too).
3. loads them into transformers' `BertModel` (PyTorch, CPU; `attn_implementation="sdpa"`, plus
   "eager" where it is informative) in float32 and in float64 (`model.double()`).
4. writes `golden/backbone/<case>.safetensors` and `golden/backbone/manifest.json`.

keras-hub's `BertBackbone` hard-codes the tanh GELU and `layer_norm_epsilon=1e-12`. For cases that
need the exact GELU or another epsilon, the keras-hub model is built as usual and then the
attributes its own layers read at call time are set (`Dense.activation` to
`keras.activations.gelu(approximate=False)`, `LayerNormalization.epsilon`); the manifest says so,
and the script checks that the change took effect (the outputs differ from the unpatched model).

This script never uses bert_ref's math; it imports `bert_ref.model.config` only for the canonical weight
names and shapes. Outputs are deterministic: re-running writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
if os.environ["KERAS_BACKEND"] != "jax":
    raise SystemExit("make_golden.py records keras-hub with the JAX backend: set KERAS_BACKEND=jax")

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bert_ref.model.config import BertConfig  # noqa: E402  (names and shapes only)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: the shared helpers
from _provenance import provenance  # noqa: E402
from _random_weights import random_weight  # noqa: E402

GENERATOR = "KERAS_BACKEND=jax python tools/golden/make_golden.py"

# ---------------------------------------------------------------------------------------------
# Tolerances (max abs error over every position; padded positions are reported separately).
# ---------------------------------------------------------------------------------------------
TOL_FLOAT32 = 1e-5
TOL_FLOAT32_REASON = (
    "float32 on every position (valid and padded). Both sides compute in float32 "
    "with different summation orders (NumPy/BLAS vs XLA or PyTorch); the difference of O(1) "
    "activations is a few float32 ulps per op, amplified by at most a few through the layers."
)
TOL_FLOAT64 = 1e-12
TOL_FLOAT64_REASON = (
    "the float64 policy against transformers run in double; only float64 rounding "
    "(~1e-16 per op) separates them."
)
# Half precision: measured (golden/README.md, "Half-precision tolerances"). All outputs here have
# |x| < 4, where one ulp is 2**-9 (float16) or 2**-6 (bfloat16); the tolerance is 4 such ulps.
_HALF_MEASURED = (
    "measured max abs error of bert_ref vs keras-hub on every output, hidden state and attention "
    "probability: {measured}. keras on JAX CPU rounds to the compute dtype after every primitive "
    "(matmul then bias add separately, each elementwise op of the tanh GELU, the softmax's "
    "subtract/exp/sum/divide); rounding only at layer outputs flips 1-3 ulps, which then propagate. "
    "Tolerance = 4 ulps of the compute dtype at |x| in [2, 4) (all golden values have |x| < 4); "
    "outputs must also be returned in the compute dtype."
)
TOL_HALF = {
    "mixed_float16": 2.0**-7,
    "float16": 2.0**-7,
    "mixed_bfloat16": 2.0**-4,
    "bfloat16": 2.0**-4,
}
TOL_HALF_REASON = {
    "mixed_float16": _HALF_MEASURED.format(measured="6.8e-3 (three_segments, layer 1-3 outputs)"),
    "float16": _HALF_MEASURED.format(measured="4.9e-3"),
    "mixed_bfloat16": _HALF_MEASURED.format(measured="4.3e-2 (with bfloat16 compute)"),
    "bfloat16": _HALF_MEASURED.format(measured="4.7e-2 (with bfloat16 compute)"),
}

# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def _case(name, *, seed, config, batch, seq_len, lengths=None, segments=None, half=(), notes=""):
    cfg = dict(
        vocabulary_size=97,
        num_layers=2,
        num_heads=4,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.1,
        max_sequence_length=24,
        num_segments=2,
        activation="gelu_approximate",
        layer_norm_epsilon=1e-12,
    )
    cfg.update(config)
    return dict(
        name=name,
        seed=seed,
        config=cfg,
        batch=batch,
        seq_len=seq_len,
        lengths=lengths,  # None: no padding
        half=tuple(half),
        notes=notes,
    )


CASES = [
    _case(
        "odd_shape",
        seed=1001,
        config=dict(vocabulary_size=61, num_layers=2, num_heads=3, hidden_dim=10, intermediate_dim=17,
                    max_sequence_length=12),
        batch=3, seq_len=9, lengths=[9, 6, 2],
        notes="hidden_dim 10 is not divisible by 3 heads: key_dim = 10 // 3 = 3, attention width 9. "
              "transformers' BertModel requires hidden_size % num_attention_heads == 0, so only "
              "keras-hub can anchor this case.",
    ),
    _case(
        "one_head",
        seed=1002,
        config=dict(num_heads=1, hidden_dim=12, intermediate_dim=20),
        batch=2, seq_len=7, lengths=[7, 4],
    ),
    _case(
        "three_segments",
        seed=1003,
        config=dict(num_segments=3, vocabulary_size=53, num_layers=3),
        batch=3, seq_len=10, lengths=[10, 8, 3],
        half=("mixed_float16", "mixed_bfloat16", "float16", "bfloat16"),
    ),
    _case(
        "full_length",
        seed=1004,
        config=dict(max_sequence_length=16, vocabulary_size=150),
        batch=2, seq_len=16, lengths=[16, 11],
        notes="sequence length == max_sequence_length: every position-embedding row is used.",
    ),
    _case(
        "ragged_padding",
        seed=1005,
        config=dict(num_layers=2, vocabulary_size=80),
        batch=4, seq_len=8, lengths=[8, 5, 1, 0],
        half=("mixed_float16", "mixed_bfloat16", "float16", "bfloat16"),
        notes="row 2 has length 1 and row 3 is all padding: its keys are all masked, so keras-hub "
              "(explicit softmax path) zeroes every attention probability and the row's context is "
              "0. transformers sdpa agrees; transformers eager gives that row uniform attention "
              "(recorded as transformers_eager).",
    ),
    _case(
        "exact_gelu",
        seed=1006,
        config=dict(activation="gelu", intermediate_dim=48),
        batch=2, seq_len=9, lengths=[9, 6],
        notes="Exact (erf) GELU, Hugging Face hidden_act 'gelu'. keras-hub's BertBackbone only uses "
              "the tanh form; its feed-forward Dense.activation is set to "
              "keras.activations.gelu(approximate=False).",
    ),
    _case(
        "layer_norm_epsilon_1e-3",
        seed=1007,
        config=dict(layer_norm_epsilon=1e-3, hidden_dim=8, num_heads=2, intermediate_dim=24),
        batch=2, seq_len=6, lengths=[6, 3],
        notes="layer_norm_epsilon 1e-3 (every LayerNormalization.epsilon of the keras-hub model is "
              "set after construction; keras-hub hard-codes 1e-12). Chosen large enough to change "
              "the outputs by far more than the tolerance (measured: see manifest).",
    ),
]

HALF_POLICIES = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")


def canonical_config(cfg: dict) -> BertConfig:
    return BertConfig(**cfg)


# ---------------------------------------------------------------------------------------------
# Weights and inputs (NumPy only)
# ---------------------------------------------------------------------------------------------


def draw_weights(config: BertConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every canonical tensor random (see tools/_random_weights.py)."""
    return {name: random_weight(name.rsplit("/", 1)[1], shape, rng) for name, shape in config.weight_shapes().items()}


def draw_inputs(case: dict, config: BertConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    b, s = case["batch"], case["seq_len"]
    token_ids = rng.integers(0, config.vocabulary_size, size=(b, s)).astype(np.int32)
    segment_ids = rng.integers(0, config.num_segments, size=(b, s)).astype(np.int32)
    lengths = case["lengths"] if case["lengths"] is not None else [s] * b
    padding_mask = (np.arange(s)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


# ---------------------------------------------------------------------------------------------
# keras-hub
# ---------------------------------------------------------------------------------------------


def keras_variable_value(canonical: np.ndarray, variable_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Canonical 2-D (in, out) kernels / flat biases -> keras-hub's EinsumDense shapes (row-major).

    query/key/value kernel (hidden, heads*key_dim) -> (hidden, heads, key_dim); their bias
    (heads*key_dim,) -> (heads, key_dim); attention_output kernel (heads*key_dim, hidden) ->
    (heads, key_dim, hidden). Everything else has the same shape on both sides.
    """
    if canonical.size != int(np.prod(variable_shape)):
        raise ValueError(f"{name}: canonical shape {canonical.shape} cannot map to keras {variable_shape}")
    return canonical.reshape(variable_shape)


def build_keras(case: dict, weights: dict[str, np.ndarray], dtype: str | None):
    import keras
    import keras_hub

    cfg = case["config"]
    model = keras_hub.models.BertBackbone(
        vocabulary_size=cfg["vocabulary_size"],
        num_layers=cfg["num_layers"],
        num_heads=cfg["num_heads"],
        hidden_dim=cfg["hidden_dim"],
        intermediate_dim=cfg["intermediate_dim"],
        dropout=cfg["dropout"],
        max_sequence_length=cfg["max_sequence_length"],
        num_segments=cfg["num_segments"],
        dtype=dtype,
    )
    # Map canonical -> keras variables from what the model actually has.
    by_path = {v.path: v for v in model.weights}
    if sorted(by_path) != sorted(weights):
        missing = sorted(set(weights) - set(by_path))
        extra = sorted(set(by_path) - set(weights))
        raise RuntimeError(f"keras-hub variables differ from canonical names: missing {missing}, extra {extra}")
    for name, var in by_path.items():
        var.assign(keras_variable_value(weights[name], tuple(var.shape), name))
    patches = []
    if cfg["activation"] == "gelu":
        exact = lambda x: keras.activations.gelu(x, approximate=False)  # noqa: E731
        for layer in model.transformer_layers:
            layer._feedforward_intermediate_dense.activation = exact
        patches.append("transformer_layer_*/feedforward_intermediate_dense.activation = "
                       "keras.activations.gelu(approximate=False)")
    elif cfg["activation"] != "gelu_approximate":
        raise ValueError(cfg["activation"])
    if cfg["layer_norm_epsilon"] != 1e-12:
        eps = cfg["layer_norm_epsilon"]
        lns = [model.embeddings_layer_norm]
        for layer in model.transformer_layers:
            lns += [layer._self_attention_layer_norm, layer._feedforward_layer_norm]
        for ln in lns:
            ln.epsilon = eps
        patches.append(f"every LayerNormalization.epsilon = {eps!r}")
    return model, patches


def run_keras(model, case: dict, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """sequence/pooled outputs, hidden states from the functional graph, attention probabilities."""
    import keras

    n_layers = case["config"]["num_layers"]
    outputs = {
        "sequence_output": model.output["sequence_output"],
        "pooled_output": model.output["pooled_output"],
        "hidden_states/0": model.get_layer("embeddings_layer_norm").output,
    }
    for i in range(n_layers):
        outputs[f"hidden_states/{i + 1}"] = model.get_layer(f"transformer_layer_{i}").output
    probe = keras.Model(model.input, outputs)
    feed = {k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    got = {k: np.asarray(v) for k, v in probe(feed, training=False).items()}
    direct = model(feed, training=False)
    for k in ("sequence_output", "pooled_output"):
        if not np.array_equal(np.asarray(direct[k]), got[k], equal_nan=True):
            raise RuntimeError(f"keras functional probe disagrees with the model on {k}")
    # Attention probabilities: each layer's own MultiHeadAttention on that layer's input.
    mask = keras.ops.expand_dims(keras.ops.convert_to_tensor(inputs["padding_mask"], "int32"), 1)
    for i, layer in enumerate(model.transformer_layers):
        _, scores = layer._self_attention_layer(
            query=got[f"hidden_states/{i}"], value=got[f"hidden_states/{i}"],
            attention_mask=mask, return_attention_scores=True, training=False,
        )
        got[f"attention_probs/{i}"] = np.asarray(scores)
    return got


class AttentionPathProbe:
    """Counts calls of MultiHeadAttention's explicit masked softmax vs the fused dot-product op."""

    def __enter__(self):
        from keras.src.layers.attention import multi_head_attention as mha_mod

        self.mod = mha_mod
        self.calls = {"explicit_masked_softmax": 0, "fused_dot_product_attention": 0}
        self._orig_softmax = mha_mod.MultiHeadAttention._masked_softmax
        self._orig_dpa = mha_mod.ops.dot_product_attention
        calls = self.calls
        orig_softmax, orig_dpa = self._orig_softmax, self._orig_dpa

        def softmax(this, *a, **k):
            calls["explicit_masked_softmax"] += 1
            return orig_softmax(this, *a, **k)

        def dpa(*a, **k):
            calls["fused_dot_product_attention"] += 1
            return orig_dpa(*a, **k)

        mha_mod.MultiHeadAttention._masked_softmax = softmax
        mha_mod.ops.dot_product_attention = dpa
        return self

    def __exit__(self, *exc):
        self.mod.MultiHeadAttention._masked_softmax = self._orig_softmax
        self.mod.ops.dot_product_attention = self._orig_dpa


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------

HF_ACT = {"gelu_approximate": "gelu_pytorch_tanh", "gelu": "gelu"}


def hf_state_dict(weights: dict[str, np.ndarray], n_layers: int, torch_dtype):
    import torch

    def lin(name):  # canonical (in, out) kernel -> torch Linear weight (out, in)
        return weights[name].T

    sd = {
        "embeddings.word_embeddings.weight": weights["token_embedding/embeddings"],
        "embeddings.position_embeddings.weight": weights["position_embedding/embeddings"],
        "embeddings.token_type_embeddings.weight": weights["segment_embedding/embeddings"],
        "embeddings.LayerNorm.weight": weights["embeddings_layer_norm/gamma"],
        "embeddings.LayerNorm.bias": weights["embeddings_layer_norm/beta"],
        "pooler.dense.weight": lin("pooled_dense/kernel"),
        "pooler.dense.bias": weights["pooled_dense/bias"],
    }
    for i in range(n_layers):
        c, h = f"transformer_layer_{i}/", f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            sd[h + f"attention.self.{proj}.weight"] = lin(c + f"self_attention_layer/{proj}/kernel")
            sd[h + f"attention.self.{proj}.bias"] = weights[c + f"self_attention_layer/{proj}/bias"]
        sd[h + "attention.output.dense.weight"] = lin(c + "self_attention_layer/attention_output/kernel")
        sd[h + "attention.output.dense.bias"] = weights[c + "self_attention_layer/attention_output/bias"]
        sd[h + "attention.output.LayerNorm.weight"] = weights[c + "self_attention_layer_norm/gamma"]
        sd[h + "attention.output.LayerNorm.bias"] = weights[c + "self_attention_layer_norm/beta"]
        sd[h + "intermediate.dense.weight"] = lin(c + "feedforward_intermediate_dense/kernel")
        sd[h + "intermediate.dense.bias"] = weights[c + "feedforward_intermediate_dense/bias"]
        sd[h + "output.dense.weight"] = lin(c + "feedforward_output_dense/kernel")
        sd[h + "output.dense.bias"] = weights[c + "feedforward_output_dense/bias"]
        sd[h + "output.LayerNorm.weight"] = weights[c + "feedforward_layer_norm/gamma"]
        sd[h + "output.LayerNorm.bias"] = weights[c + "feedforward_layer_norm/beta"]
    return {k: torch.tensor(np.ascontiguousarray(v), dtype=torch_dtype) for k, v in sd.items()}


def run_transformers(case: dict, weights, inputs, *, double: bool, attn: str) -> dict[str, np.ndarray]:
    import torch
    import transformers

    cfg = case["config"]
    hf_config = transformers.BertConfig(
        vocab_size=cfg["vocabulary_size"],
        hidden_size=cfg["hidden_dim"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=cfg["intermediate_dim"],
        hidden_act=HF_ACT[cfg["activation"]],
        hidden_dropout_prob=cfg["dropout"],
        attention_probs_dropout_prob=cfg["dropout"],
        max_position_embeddings=cfg["max_sequence_length"],
        type_vocab_size=cfg["num_segments"],
        layer_norm_eps=cfg["layer_norm_epsilon"],
    )
    hf_config._attn_implementation = attn
    torch.manual_seed(0)
    model = transformers.BertModel(hf_config, add_pooling_layer=True)
    dtype = torch.float64 if double else torch.float32
    model = model.to(dtype).eval()
    sd = hf_state_dict(weights, cfg["num_layers"], dtype)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in sd and not k.endswith("position_ids") and "token_type_ids" not in k)
    if missing:
        raise RuntimeError(f"transformers parameters not mapped: {missing}")
    result = model.load_state_dict(sd, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"unexpected transformers keys: {result.unexpected_keys}")
    if model.config._attn_implementation != attn:
        raise RuntimeError(f"asked for attn_implementation={attn}, model uses {model.config._attn_implementation}")
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(inputs["token_ids"], dtype=torch.long),
            token_type_ids=torch.tensor(inputs["segment_ids"], dtype=torch.long),
            attention_mask=torch.tensor(inputs["padding_mask"], dtype=torch.long),
            output_hidden_states=True,
            output_attentions=(attn == "eager"),
        )
    got = {
        "sequence_output": out.last_hidden_state.numpy(),
        "pooled_output": out.pooler_output.numpy(),
    }
    for i, h in enumerate(out.hidden_states):
        got[f"hidden_states/{i}"] = h.numpy()
    if attn == "eager":
        for i, a in enumerate(out.attentions):
            got[f"attention_probs/{i}"] = a.numpy()
    return got


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _maxabs(a, b, mask=None):
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if mask is not None:
        d = d[mask]
    return float(d.max()) if d.size else 0.0


def _keras_dtype_arg(dtype: str) -> str | None:
    return None if dtype == "float32" else dtype


def make_case(case: dict, out_dir: Path) -> dict:
    from safetensors.numpy import save_file

    config = canonical_config(case["config"])
    rng = np.random.default_rng(case["seed"])
    weights = draw_weights(config, rng)
    inputs = draw_inputs(case, config, rng)
    tensors: dict[str, np.ndarray] = {f"weights/{k}": v for k, v in weights.items()}
    tensors.update({f"inputs/{k}": v for k, v in inputs.items()})
    valid = inputs["padding_mask"].astype(bool)

    entry = {
        "config": config.to_dict(),
        "seed": case["seed"],
        "batch_size": case["batch"],
        "sequence_length": case["seq_len"],
        "lengths": [int(x) for x in valid.sum(1)],
        "notes": case["notes"],
        "anchors": {},
        "checks": [],
        "measurements": {},
    }

    # --- keras-hub, float32 and half policies ---
    keras_dtypes = ["float32"] + list(case["half"])
    for dtype in keras_dtypes:
        model, patches = build_keras(case, weights, _keras_dtype_arg(dtype))
        with AttentionPathProbe() as probe:
            got = run_keras(model, case, inputs)
        path_calls = dict(probe.calls)
        for k, v in got.items():
            tensors[f"keras_hub/{dtype}/{k}"] = np.asarray(v, dtype=np.float32)  # exact upcast
        policy = model.dtype_policy
        entry["anchors"][f"keras_hub/{dtype}"] = {
            "framework": "keras_hub.models.BertBackbone",
            "backend": "jax",
            "dtype_policy": dtype,
            "variable_dtype": policy.variable_dtype,
            "compute_dtype": policy.compute_dtype,
            "stored_as": "float32 (exact upcast of the compute-dtype outputs)",
            "called_with": f"training=False, dropout={case['config']['dropout']!r}",
            "attention_path": ("explicit einsum + masked softmax (MultiHeadAttention._masked_softmax)"
                               if path_calls["explicit_masked_softmax"]
                               and not path_calls["fused_dot_product_attention"]
                               else f"MIXED/FUSED: {path_calls}"),
            "attention_path_calls_in_forward": path_calls,
            "patches": patches,
            "outputs": sorted(got),
        }
        if dtype == "float32" and patches:
            # Show that the patches take effect: the unpatched keras-hub model differs.
            plain, _ = build_keras({**case, "config": {**case["config"], "activation": "gelu_approximate",
                                                      "layer_norm_epsilon": 1e-12}}, weights, None)
            base = run_keras(plain, case, inputs)
            entry["measurements"]["keras_patch_effect_max_abs_sequence_output"] = _maxabs(
                base["sequence_output"], got["sequence_output"])
            if entry["measurements"]["keras_patch_effect_max_abs_sequence_output"] < 10 * TOL_FLOAT32:
                raise RuntimeError(f"{case['name']}: patch {patches} barely changes the outputs: "
                                   f"{entry['measurements']}")
        if dtype == "float32":
            keras_f32 = got
            # The fused path (dropout 0.0): measure how it differs, for the record.
            fused_case = {**case, "config": {**case["config"], "dropout": 0.0}}
            fmodel, _ = build_keras(fused_case, weights, None)
            with AttentionPathProbe() as fprobe:
                feed = {k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")}
                fout = fmodel(feed, training=False)
            entry["measurements"]["keras_dropout0_fused_path"] = {
                "attention_path_calls_in_forward": dict(fprobe.calls),
                "max_abs_vs_explicit_valid_positions": _maxabs(fout["sequence_output"], got["sequence_output"], valid),
                "max_abs_vs_explicit_padded_positions": _maxabs(fout["sequence_output"], got["sequence_output"],
                                                                ~valid),
            }
        else:
            entry["measurements"][f"keras_hub/{dtype}_vs_keras_hub/float32_max_abs"] = {
                "sequence_output_valid": _maxabs(got["sequence_output"], keras_f32["sequence_output"], valid),
                "sequence_output_padded": _maxabs(got["sequence_output"], keras_f32["sequence_output"], ~valid),
                "pooled_output": _maxabs(got["pooled_output"], keras_f32["pooled_output"]),
            }

    # --- transformers ---
    divisible = config.hidden_dim % config.num_heads == 0
    if divisible:
        runs = [("transformers/float32", False, "sdpa"), ("transformers/float64", True, "sdpa")]
        if not valid.all(axis=1).all() and (~valid).all(axis=1).any():
            runs.append(("transformers_eager/float32", False, "eager"))
        hf = {}
        for key, double, attn in runs:
            got = run_transformers(case, weights, inputs, double=double, attn=attn)
            hf[key] = got
            store_dtype = np.float64 if double else np.float32
            for k, v in got.items():
                tensors[f"{key}/{k}"] = np.asarray(v, dtype=store_dtype)
            entry["anchors"][key] = {
                "framework": "transformers.BertModel (PyTorch, CPU)",
                "attn_implementation": attn,
                "dtype": "float64 (model.double(), float32 weights cast to float64)" if double else "float32",
                "hidden_act": HF_ACT[case["config"]["activation"]],
                "called_with": "model.eval(), torch.no_grad(), output_hidden_states=True",
                "outputs": sorted(got),
            }
        # Cross-anchor agreement, for the record.
        for a, b in (("transformers/float32", "keras_hub/float32"),):
            other = keras_f32 if b == "keras_hub/float32" else hf[b]
            entry["measurements"][f"{a}_vs_{b}_max_abs"] = {
                "sequence_output_valid": _maxabs(hf[a]["sequence_output"], other["sequence_output"], valid),
                "sequence_output_padded": _maxabs(hf[a]["sequence_output"], other["sequence_output"], ~valid),
                "pooled_output": _maxabs(hf[a]["pooled_output"], other["pooled_output"]),
            }
        entry["measurements"]["transformers/float64_vs_transformers/float32_max_abs_sequence_output"] = _maxabs(
            hf["transformers/float64"]["sequence_output"], hf["transformers/float32"]["sequence_output"])
        if "transformers_eager/float32" in hf:
            e, s = hf["transformers_eager/float32"], hf["transformers/float32"]
            entry["measurements"]["transformers_eager_vs_sdpa_max_abs"] = {
                "sequence_output_valid": _maxabs(e["sequence_output"], s["sequence_output"], valid),
                "sequence_output_padded": _maxabs(e["sequence_output"], s["sequence_output"], ~valid),
            }
    else:
        entry["transformers_skipped"] = (
            f"hidden_dim {config.hidden_dim} % num_heads {config.num_heads} != 0: transformers' BertModel "
            "raises for a hidden size that is not a multiple of the number of heads"
        )

    # --- the checks the test runs, with tolerances and reasons ---
    for anchor in entry["anchors"]:
        source, dtype = anchor.split("/")
        if dtype == "float32":
            check = {"anchor": anchor, "policy": "float32", "max_abs": TOL_FLOAT32, "reason": TOL_FLOAT32_REASON}
        elif dtype == "float64":
            check = {"anchor": anchor, "policy": "float64", "max_abs": TOL_FLOAT64, "reason": TOL_FLOAT64_REASON}
        else:
            check = {"anchor": anchor, "policy": dtype, "max_abs": TOL_HALF[dtype], "reason": TOL_HALF_REASON[dtype]}
        if source == "transformers_eager":
            check["padded_rows"] = ("rows with no valid key are excluded: eager gives them uniform attention, "
                                    "keras-hub (and bert_ref) a zero context")
        entry["checks"].append(check)

    path = out_dir / f"{case['name']}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, str(path))
    entry["file"] = path.name
    entry["tensors"] = len(tensors)
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "golden" / "backbone"))
    p.add_argument("--only", nargs="*", help="case names (default: all)")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(1)  # deterministic reductions run to run
    manifest_path = out_dir / "manifest.json"
    cases = {}
    if args.only and manifest_path.exists():
        cases = json.loads(manifest_path.read_text())["cases"]
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        print(f"[make_golden] {case['name']}", flush=True)
        cases[case["name"]] = make_case(case, out_dir)

    manifest = {
        "description": "Backbone goldens: keras-hub BertBackbone (JAX) and transformers BertModel outputs "
                       "for random weights; see golden/README.md.",
        "generator": GENERATOR,
        "generator_source": "tools/golden/make_golden.py",
        "versions": provenance(),
        "backend": os.environ["KERAS_BACKEND"],
        "torch_num_threads": 1,
        "weight_distribution": "gamma ~ 1 + 0.1 N(0,1); beta, biases ~ 0.1 N(0,1); kernels ~ N(0,1)/sqrt(fan_in); "
                               "embeddings ~ 0.5 N(0,1); drawn in float64 from numpy.random.default_rng(seed), "
                               "stored float32",
        "key_layout": {
            "weights/<canonical name>": "float32, canonical 2-D (in, out) kernels",
            "inputs/token_ids|segment_ids|padding_mask": "int32 (B, S)",
            "<anchor>/<dtype>/sequence_output": "(B, S, H)",
            "<anchor>/<dtype>/pooled_output": "(B, H)",
            "<anchor>/<dtype>/hidden_states/<i>": "(B, S, H); 0 = embeddings layer-norm output, i = layer i-1 output",
            "<anchor>/<dtype>/attention_probs/<i>": "(B, heads, S, S) of layer i (keras_hub and transformers_eager)",
        },
        "cases": dict(sorted(cases.items())),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"[make_golden] wrote {manifest_path}")


if __name__ == "__main__":
    main()
