"""The detection-power table of docs/conformance.md: per output and precision, the smallest systematic
deviation the verdict catches, next to the size of each planted bug of the port suite.

    PYTHONPATH=. python tools/golden/detection_power_table.py [--dir /tmp/port_suite/wide]

For each precision (float32, tf32, float16, bfloat16, int8 with torch's and onnxruntime's default
recipes) our own run in that precision is judged as a candidate by `compare_to_truth` on
all-MiniLM-L6-v2 and the inputs of `--dir` (default: the cut-down suite, golden/ports/suite/);
each output's `Entry.power` is the smallest per-channel shift and the smallest element-wise change,
relative to the output's RMS value, that would fail it (`bert_ref.oracle.verdict.power`). The bugs'
sizes are measured the same way (tools/golden/judge_port_suite.py's `bug_size`: the bug's float32
port minus the correct float32 port) from the files in `--dir`. Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402
from judge_port_suite import SUITE_DIR, bug_size  # noqa: E402

PRECISIONS = [("float32", None), ("tf32", None), ("float16", None), ("bfloat16", None), ("int8", "torch"),
              ("int8", "ort")]
BUGS = ("eps", "mask", "positions", "segments", "tanh_gelu", "unbiased_var")


def _pct(x: float) -> str:
    p = 100 * x
    return "-" if not np.isfinite(p) else (f"{p:.2g}%" if p < 10 else f"{p:.0f}%")


def main(argv: list[str] | None = None) -> int:
    from bert_ref import BertBackbone
    from bert_ref.oracle.candidates import read_candidate, read_inputs
    from bert_ref.oracle.int8 import scheme_policy
    from bert_ref.oracle.run import compare_to_truth, oracle_outputs

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=SUITE_DIR)
    a = p.parse_args(argv)
    model = BertBackbone.from_preset(minilm_dir())
    inputs = read_inputs(a.dir / "inputs.safetensors")
    mask = np.asarray(inputs["padding_mask"]).astype(bool)
    correct = read_candidate(a.dir / "torch_fp32.safetensors").arrays
    keys = [k for k in correct if not k.startswith("attention_probs")]
    powers: dict[str, dict[str, tuple[float, float]]] = {}
    for precision, recipe in PRECISIONS:
        label = precision if recipe is None else f"int8 ({recipe})"
        dtype = scheme_policy(recipe) if recipe else precision
        ours = oracle_outputs(model, inputs, keys, dtype=dtype)
        report = compare_to_truth(model, inputs, ours, precision=precision, int8_scheme=recipe)
        powers[label] = {e.key: (e.power.shift, e.power.scatter) for e in report if e.power is not None}
    b, s = inputs["token_ids"].shape
    print(f"Detection power on all-MiniLM-L6-v2, inputs {b} x {s} ({int(mask.sum())} valid positions): the "
          "smallest per-channel shift / element-wise change that fails each output, relative to its RMS value.\n")
    print("| output | " + " | ".join(powers) + " |")
    print("|---|" + "---|" * len(powers))
    for k in keys:
        print(f"| `{k}` | " + " | ".join(f"{_pct(v[k][0])} / {_pct(v[k][1])}" for v in powers.values()) + " |")
    print("\nThe planted bugs' own size (shift / scatter, the bug's float32 port minus the correct one):\n")
    print("| output | " + " | ".join(BUGS) + " |")
    print("|---|" + "---|" * len(BUGS))
    bugs = {bug: read_candidate(a.dir / f"bug_{bug}_fp32.safetensors").arrays for bug in BUGS}
    for k in keys:
        cells = []
        for bug in BUGS:
            shift, scatter = bug_size(bugs[bug], correct, k, mask)
            cells.append(f"{_pct(shift)} / {_pct(scatter)}")
        print(f"| `{k}` | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
