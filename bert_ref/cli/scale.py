"""`bert-ref run --dataset`, `pack` and `compare --dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bert_ref.cli import UsageError, say
from bert_ref.scale.compare import compare_dataset
from bert_ref.scale.options import options_from_args
from bert_ref.scale.run import pack_dataset, run_dataset
from bert_ref.scale.shards import MANIFEST

# ----------------------------------------------------------------------------------------------
# The command line (called from bert_ref.cli)


def _summary(manifest: dict[str, Any], out: str) -> str:
    s = manifest["settings"]
    policy = manifest["job"]["policy"]
    if s["scheduler"] == "distributed":
        where = f"Dask cluster at {s['address']}" + (f", {s['workers']} worker(s)" if s["workers"] else "")
    else:
        where = f"{s['scheduler']} scheduler, {s['workers']} worker(s)"
    head = f"{policy} policy, " if policy else "inputs only, "
    return f"{head}{where} x {s['threads_per_worker']} thread(s); manifest: {Path(out) / MANIFEST}"


def cli_run(args: Any) -> int:
    if args.out is None:
        raise ValueError("--dataset needs --out DIR (the run directory)")
    if args.input is not None or args.output is not None or args.attentions or args.trace or args.hidden_states:
        raise ValueError("--dataset runs take --out and --outputs, not "
                         "--input/--output/--attentions/--trace/--hidden-states")
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    if not outputs:
        raise ValueError("--outputs is empty; for the inputs alone use `bert-ref pack`")
    manifest = run_dataset(args.preset, args.dataset, args.out, dtype=args.dtype, outputs=outputs,
                           ensemble=args.ensemble, log=say, **options_from_args(args))
    say(_summary(manifest, args.out))
    return 0


def cli_pack(args: Any) -> int:
    manifest = pack_dataset(args.preset, args.dataset, args.out, log=say, **options_from_args(args))
    say(_summary(manifest, args.out))
    return 0


def cli_compare(args: Any) -> int:
    if args.input is not None:
        raise ValueError("give --dataset or --input, not both")
    if args.reference is not None and args.dtype is not None and (args.truth or args.precision):
        raise ValueError("--reference takes its policy from the run; do not combine it with --dtype")
    for flag in ("activation", "layer_norm_epsilon"):
        if getattr(args, flag, None) is not None:
            raise UsageError(f"--{flag.replace('_', '-')}: not available with --dataset (convert a preset with the "
                             "changed config instead)")
    if getattr(args, "check_padded", False):
        raise UsageError("--check-padded: a dataset compare covers valid positions only (the run stores no padded "
                         "positions)")
    report = compare_dataset(args.preset, args.dataset, args.candidate, reference=args.reference,
                             floor_from=args.floor_from, dtype=args.dtype, truth=args.truth, precision=args.precision,
                             floor_ratio=args.floor_ratio, atol=args.atol, rtol=args.rtol, records=args.records,
                             worst=args.worst, int8_scheme=getattr(args, "int8_scheme", None),
                             **options_from_args(args))
    if args.junit:
        from bert_ref.cli.compare import write_junit

        write_junit(args.junit, report.report, f"{args.preset} vs {Path(args.candidate).name}",
                    extra=report.junit_cases())
    if args.json:
        d = report.to_dict()
        d["preset"] = args.preset
        say(json.dumps(d, indent=2, allow_nan=False))
    else:
        say(f"preset {args.preset}; dataset {args.dataset}")
        say(report.format_table())
    return 0 if report.passed else 1
