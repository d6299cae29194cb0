"""Judge the port suite (tools/golden/make_port_suite.py) with bert_ref's verdict, against the
expectations written before it was built.

    PYTHONPATH=. python tools/golden/judge_port_suite.py [--full-dir /tmp/port_suite --batch suite|wide]
        [--json measured.json] [--only a,b]

Refuses to run unless golden/ports/suite/expected.json is the file whose SHA-256 the builder
recorded in golden/ports/suite/manifest.json when it wrote the expectations, before any candidate
existed. Without `--full-dir` it judges the cut-down copies in golden/ports/suite/ (what
tests/test_port_suite.py checks); with it, every output of the run in `--full-dir/<batch>/`.

Each candidate is judged by `bert_ref.oracle.run.compare_to_truth` at its expected precision and
options (int8 recipes are detected, not given). A verdict is graded

- `ok`: the expected verdict, and for a FAIL the expected place (the stage of the first failing
  output: an attention output of a layer counts as that layer's);
- `ok, seen at <stage> (below power before)`: a planted bug failed later than the stage where it
  enters, and at every output before the first failing one its size (below) is under the power;
- `ok, below power`: a planted bug expected to FAIL passed, and at every output the candidate holds
  the bug's own deviation (`bug_size`: the bug's float32 port minus the correct float32 port, as a
  per-channel shift and an element-wise scatter relative to the output's RMS value) is below the
  verdict's detection power there (`Entry.power`): the case the issue allows, caveat printed;
- `WRONG`: anything else.

The table prints each candidate's largest ratio per statistic (over its outputs); `--json` keeps
every output's checks, the bug sizes and the grades (docs/conformance.md's tables come from it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402

SUITE_DIR = ROOT / "golden" / "ports" / "suite"
STATS = ("max_abs", "rms", "mean_cos", "worst_cos", "channel", "recipe")


def check_expected(suite: Path = SUITE_DIR) -> dict[str, Any]:
    """expected.json's candidates, after checking it is the file recorded before the candidates were built."""
    manifest = json.loads((suite / "manifest.json").read_text())
    text = (suite / "expected.json").read_bytes()
    digest = hashlib.sha256(text).hexdigest()
    if digest != manifest["expected"]["sha256"]:
        raise SystemExit(f"expected.json has SHA-256 {digest}, the builder recorded {manifest['expected']['sha256']} "
                         "when it wrote the expectations: they were changed after the fact")
    return dict(json.loads(text)["candidates"])


def stage(key: str | None) -> str | None:
    """The stage an output key is computed in (`bert_ref.oracle.keys.placement`)."""
    from bert_ref.oracle.keys import OUTPUT_ALIASES, placement

    if key is None:
        return None
    return placement(OUTPUT_ALIASES.get(key, key))[1]


def bug_size(bug: Mapping[str, np.ndarray], correct: Mapping[str, np.ndarray], key: str,
             mask: np.ndarray) -> tuple[float, float]:
    """(shift, scatter) of a planted bug at one output: d = bug - correct (both float32 ports) at valid
    positions; shift = RMS over channels of d's per-channel mean, scatter = RMS of the rest, both over
    the RMS value of the correct output there. [B, S, H] / [B, H] -> two numbers."""
    from bert_ref.oracle.keys import valid_mask
    from bert_ref.oracle.verdict import rows

    valid = valid_mask(key, np.shape(correct[key]), mask)
    b, c = rows(bug[key], key, valid), rows(correct[key], key, valid)
    d = b - c
    r = float(np.sqrt(np.mean(c * c)))
    mean = d.mean(axis=0)
    return float(np.sqrt(np.mean(mean * mean))) / r, float(np.sqrt(np.mean((d - mean) ** 2))) / r


def grade(expected: Mapping[str, Any], report: Any, sizes: Mapping[str, tuple[float, float]] | None) -> str:
    """"ok", "ok, below power" or "WRONG" (see the module docstring)."""
    first = report.first_failure
    got = "PASS" if report.passed else "FAIL"

    def below(entries: Any) -> bool:
        return all(e.power is not None and sizes is not None and sizes[e.key][0] < e.power.shift
                   and sizes[e.key][1] < e.power.scatter for e in entries)

    if got == expected["expected"]:
        if got == "PASS" or stage(first.key) == stage(expected["first_failure"]):
            return "ok"
        before = [e for e in report if e.key != first.key and e.stage == stage(expected["first_failure"])]
        earlier = [e for e in report if _order(e.key) < _order(first.key)]
        if sizes is not None and _order(first.key) > _order(expected["first_failure"]) and before and below(earlier):
            return f"ok, seen at {stage(first.key)} (below power before)"
        return "WRONG"
    if got == "PASS" and below(report) and "Detection power" in report.summary():
        return "ok, below power"
    return "WRONG"


def _order(key: str) -> Any:
    from bert_ref.oracle.keys import OUTPUT_ALIASES, placement

    return placement(OUTPUT_ALIASES.get(key, key))[0]


def judge_all(src: Path, expected: Mapping[str, Any], names: list[str] | None = None,
              cache: bool = True) -> list[dict[str, Any]]:
    """Judge every candidate in `src` (a suite directory: inputs.safetensors and <name>.safetensors)."""
    from bert_ref import BertBackbone
    from bert_ref.oracle.candidates import read_candidate, read_inputs
    from bert_ref.oracle.run import compare_to_truth

    base = BertBackbone.from_preset(minilm_dir())
    models: dict[str, Any] = {}

    def model_for(activation: str | None) -> Any:
        if activation is None:
            return base
        if activation not in models:
            config = base.config.to_dict()
            config["activation"] = activation
            models[activation] = BertBackbone(**config, weights=base.weights)
        return models[activation]

    inputs = read_inputs(src / "inputs.safetensors")
    mask = np.asarray(inputs["padding_mask"]).astype(bool)
    arrays: dict[str, dict[str, np.ndarray]] = {}

    def load(name: str) -> dict[str, np.ndarray]:
        if name not in arrays:
            arrays[name] = read_candidate(src / f"{name}.safetensors").arrays
        return arrays[name]

    rows = []
    for name in names or list(expected):
        exp = expected[name]
        if not (src / f"{name}.safetensors").exists():
            continue
        cand = load(name)
        report = compare_to_truth(model_for(exp["options"].get("activation")), inputs, cand,
                                  precision=exp["precision"], candidate_name=name, cache=cache)
        sizes = None
        if "bug" in exp:
            bug32, ok32 = load(f"bug_{exp['bug']}_fp32"), load("torch_fp32")
            sizes = {e.key: bug_size(bug32, ok32, e.key, mask) for e in report}
        first = report.first_failure
        rows.append({
            "candidate": name, "precision": exp["precision"], "expected": exp["expected"],
            "expected_first": exp["first_failure"], "verdict": "PASS" if report.passed else "FAIL",
            "first": None if first is None else first.key,
            "failed_statistics": [] if first is None else [c.statistic for c in first.failed_checks],
            "grade": grade(exp, report, sizes), "notes": list(report.notes),
            "outputs": {e.key: {"checks": {c.statistic: {"ratio": c.ratio, "limit": c.limit, "spread": c.spread}
                                           for c in e.checks},
                                "power": None if e.power is None else e.power.to_dict(),
                                "bug_size": None if sizes is None else list(sizes[e.key])} for e in report},
            "summary": report.summary(),
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The confusion matrix: one row per candidate, its expected and actual verdict, the statistics
    that failed it, its largest ratio per statistic, the grade."""
    out = ["| candidate | precision | expected | verdict (statistics over) | " + " | ".join(STATS)
           + " | grade |", "|---|---|---|---|" + "---|" * len(STATS) + "---|"]
    for r in rows:
        worst = {s: max((o["checks"][s]["ratio"] for o in r["outputs"].values() if s in o["checks"]),
                        default=math.nan) for s in STATS}
        exp = r["expected"] + ("" if r["expected_first"] is None else f" at `{r['expected_first']}`")
        got = r["verdict"] + ("" if r["first"] is None else f" at `{r['first']}` ({', '.join(r['failed_statistics'])})")
        out.append(f"| {r['candidate']} | {r['precision']} | {exp} | {got} | "
                   + " | ".join(_fmt(worst[s]) for s in STATS) + f" | {r['grade']} |")
    return "\n".join(out)


def _fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else (f"{x:.2f}" if x < 100 else f"{x:.3g}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--full-dir", type=Path, default=None)
    p.add_argument("--batch", default="suite", choices=["suite", "wide"])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--only", default=None, help="comma-separated candidate names")
    p.add_argument("--markdown", action="store_true", help="print the confusion matrix as a markdown table")
    a = p.parse_args(argv)
    expected = check_expected()
    src = SUITE_DIR if a.full_dir is None else a.full_dir / a.batch
    rows = judge_all(src, expected, a.only.split(",") if a.only else None)
    print(f"{'candidate':<28} {'prec':<8} {'expected':<25} {'verdict':<25} "
          + " ".join(f"{s:>9}" for s in STATS) + "  grade")
    for r in rows:
        worst = {s: max((o["checks"][s]["ratio"] for o in r["outputs"].values() if s in o["checks"]),
                        default=math.nan) for s in STATS}
        exp = r["expected"] + ("" if r["expected_first"] is None else f" {r['expected_first']}")
        got = r["verdict"] + ("" if r["first"] is None else f" {r['first']}")
        print(f"{r['candidate']:<28} {r['precision']:<8} {exp:<25} {got:<25} "
              + " ".join(f"{_fmt(worst[s]):>9}" for s in STATS) + f"  {r['grade']}", flush=True)
    if a.markdown:
        print(markdown(rows))
    wrong = [r["candidate"] for r in rows if r["grade"] == "WRONG"]
    print(f"{len(rows)} candidates, {len(wrong)} wrong" + (f": {', '.join(wrong)}" if wrong else ""))
    if a.json:
        a.json.write_text(json.dumps({"batch": a.batch, "source": str(src), "rows": rows}, indent=1) + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
