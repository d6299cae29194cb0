"""What each ensemble member adds: per precision, each member's statistic over the largest of the
members before it in `bert_ref.oracle.ensemble.members` (from `--first`), the largest over the
outputs, on all-MiniLM-L6-v2 and the inputs of each directory given.

    PYTHONPATH=. python tools/golden/ensemble_members_table.py golden/ports/suite /tmp/port_suite/suite \
        /tmp/port_suite/wide [--first 3] [--precisions float16,bfloat16]

Each directory holds `inputs.safetensors` and `torch_fp16.safetensors` (whose output keys are the
ones judged): the cut-down suite (golden/ports/suite/) or a full run of tools/golden/make_port_suite.py.
The statistics are `bert_ref.oracle.verdict.statistics` of each member's run against the float64
truth at valid positions, as the verdict computes them. Prints one line per member and directory,
with the time each member's run took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--first", type=int, default=3, help="members measured against (the first N)")
    p.add_argument("--precisions", default="float16,bfloat16")
    a = p.parse_args(argv)
    from bert_ref import BertBackbone
    from bert_ref.oracle import ensemble, verdict
    from bert_ref.oracle.candidates import read_candidate, read_inputs
    from bert_ref.oracle.keys import valid_mask
    from bert_ref.oracle.run import oracle_outputs

    model = BertBackbone.from_preset(minilm_dir())
    for src in a.dirs:
        inputs = read_inputs(src / "inputs.safetensors")
        keys = list(read_candidate(src / "torch_fp16.safetensors").arrays)
        mask = np.asarray(inputs["padding_mask"]).astype(bool)
        truth = oracle_outputs(model, inputs, keys, dtype="float64")
        for precision in a.precisions.split(","):
            members = ensemble.members(precision)
            runs, took = {}, {}
            for m in members:
                t = time.perf_counter()
                runs[m.name] = oracle_outputs(model, inputs, keys, dtype=m.policy)
                took[m.name] = time.perf_counter() - t
            worst: dict[str, dict[str, tuple[float, str]]] = {m.name: {} for m in members[a.first:]}
            for key in keys:
                valid = valid_mask(key, truth[key].shape, mask)
                t_rows = verdict.rows(truth[key], key, valid)
                st = {n: verdict.statistics(verdict.rows(r[key], key, valid), t_rows) for n, r in runs.items()}
                before = [st[m.name] for m in members[: a.first]]
                for m in members[a.first:]:
                    for s, v in st[m.name].items():
                        ref = max(b[s] for b in before)
                        ratio = v / ref if ref > 0 else float("nan")
                        if ratio > worst[m.name].get(s, (0.0, ""))[0]:
                            worst[m.name][s] = (ratio, key)
            print(f"{src}: {precision}, {len(keys)} outputs")
            for name, w in worst.items():
                print(f"  {name} ({took[name]:.2f} s): " + ", ".join(f"{s} {r:.2f}x ({k})" for s, (r, k) in w.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
