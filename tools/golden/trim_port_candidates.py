"""Cut the real GPU port candidates down to what tests/test_ports_golden.py needs, into golden/ports/.

    python tools/golden/trim_port_candidates.py GPU_DIR [--out golden/ports]

GPU_DIR holds the files of the GPU run (transformers `BertModel` with the all-MiniLM-L6-v2 weights on
an NVIDIA H100: fp32.npz, tf32.npz, fp16.npz, bf16.safetensors, fp32_eager_attentions.npz, inputs.npz,
provenance.json; Hugging Face output names, stacked hidden_states / attentions). Kept: batch rows
0 and 1 (valid lengths 22 and 12) and positions 0..23 — padded keys get no attention weight, so
the outputs at these positions are those of the full 64-position batch — and the outputs
`last_hidden_state`, `pooler_output`, `hidden_states.1` (the first layer's output) and, from the
eager run, `attentions.0`, each in the dtype the GPU wrote. Values are copied, never recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ROWS, POSITIONS = [0, 1], 24
FILES = {"fp32": "fp32.npz", "tf32": "tf32.npz", "fp16": "fp16.npz", "bf16": "bf16.safetensors",
         "fp32_eager_attentions": "fp32_eager_attentions.npz"}


def main(argv=None) -> int:
    from safetensors.numpy import save_file

    from bert_ref.io.arrays import read_arrays

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gpu_dir", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "golden" / "ports")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    ins = read_arrays(a.gpu_dir / "inputs.npz")
    mask = ins["attention_mask"][ROWS]
    assert mask[:, POSITIONS:].sum() == 0, "rows must be padding beyond the kept positions"
    save_file({k: np.ascontiguousarray(v[ROWS, :POSITIONS]) for k, v in ins.items()},
              str(a.out / "h100_inputs.safetensors"))
    for name, file in FILES.items():
        src = read_arrays(a.gpu_dir / file)
        out = {"last_hidden_state": src["last_hidden_state"][ROWS, :POSITIONS],
               "pooler_output": src["pooler_output"][ROWS]}
        if "hidden_states" in src:
            out["hidden_states.1"] = src["hidden_states"][1][ROWS, :POSITIONS]
        if "attentions" in src:
            out["attentions.0"] = src["attentions"][0][ROWS][:, :, :POSITIONS, :POSITIONS]
        save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(a.out / f"h100_{name}.safetensors"))
    prov = json.loads((a.gpu_dir / "provenance.json").read_text())
    manifest = {
        "generator": "python tools/golden/trim_port_candidates.py GPU_DIR",
        "source": prov,
        "trim": {"batch_rows": ROWS, "positions": f"0..{POSITIONS - 1}",
                 "outputs": ["last_hidden_state", "pooler_output", "hidden_states.1", "attentions.0 (eager run)"]},
        "files": {name: f"h100_{name}.safetensors" for name in FILES} | {"inputs": "h100_inputs.safetensors"},
        "precision": {"fp32": "float32", "tf32": "tf32", "fp16": "float16", "bf16": "bfloat16",
                      "fp32_eager_attentions": "float32"},
    }
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print("\n".join(f"{p.name} {p.stat().st_size:,} bytes" for p in sorted(a.out.glob("h100_*"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
