"""`bert-ref run --dataset` and `compare --dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bert_ref.cli import say
from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL
from bert_ref.scale.compare import compare_dataset
from bert_ref.scale.run import run_dataset
from bert_ref.scale.shards import MANIFEST

# ----------------------------------------------------------------------------------------------
# The command line (called from bert_ref.cli)


def cli_run(args: Any) -> int:
    if args.out is None:
        raise ValueError("--dataset needs --out DIR (the run directory)")
    if args.input is not None or args.output is not None or args.attentions or args.trace or args.hidden_states:
        raise ValueError("--dataset runs take --out and --outputs, not "
                         "--input/--output/--attentions/--trace/--hidden-states")
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    manifest = run_dataset(args.preset, args.dataset, args.out, dtype=args.dtype, outputs=outputs,
                           shard_size=args.shard_size, scheduler=args.scheduler, workers=args.workers,
                           threads=args.threads, sequence_length=args.sequence_length, truncate=args.truncate,
                           batch_tokens=args.batch_tokens, progress=False if args.no_progress else None, log=say)
    s = manifest["settings"]
    say(f"{manifest['job']['policy']} policy, {s['scheduler']} scheduler, {s['workers'] or '?'} worker(s) x "
         f"{s['threads_per_worker']} thread(s); manifest: {Path(args.out) / MANIFEST}")
    return 0


def cli_compare(args: Any) -> int:
    if args.input is not None:
        raise ValueError("give --dataset or --input, not both")
    if args.reference is not None and (args.truth or args.dtype is not None):
        raise ValueError("--reference takes its policy from the run; do not combine it with --truth or --dtype")
    if args.worst < 1:
        raise ValueError(f"--worst must be >= 1, got {args.worst}")
    unsupported = [flag for flag, value in (("--precision", getattr(args, "precision", None)),
                                            ("--floor-ratio", getattr(args, "floor_ratio", None)),
                                            ("--activation", getattr(args, "activation", None)),
                                            ("--layer-norm-epsilon", getattr(args, "layer_norm_epsilon", None)),
                                            ("--junit", getattr(args, "junit", None))) if value is not None]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not available with --dataset (it takes --atol, --rtol, --truth, "
                         "--dtype, --json)")
    tolerances = []
    for name, given, default in (("atol", args.atol, DEFAULT_ATOL), ("rtol", args.rtol, DEFAULT_RTOL)):
        try:
            value = float(given) if given is not None else default
        except (TypeError, ValueError):
            raise ValueError(f"--{name} {given!r}: with --dataset give one number (per-output tolerances are for "
                             "--input)") from None
        tolerances.append(value)
    atol, rtol = tolerances
    dtype = "float64" if args.truth else args.dtype
    report = compare_dataset(args.preset, args.dataset, args.candidate, reference=args.reference, dtype=dtype,
                             atol=atol, rtol=rtol, shard_size=args.shard_size, scheduler=args.scheduler,
                             workers=args.workers, threads=args.threads, sequence_length=args.sequence_length,
                             truncate=args.truncate, batch_tokens=args.batch_tokens, worst=args.worst,
                             progress=False if args.no_progress else None)
    if args.json:
        say(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        say(report.format_table())
    return 0 if report.passed else 1
