"""`bert-ref compare` and its JUnit XML.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bert_ref.backbone import BertBackbone
from bert_ref.cli import UsageError, dtype_arg, load_preset, say, where
from bert_ref.io import atomic
from bert_ref.io.checkpoints.base import CheckpointError
from bert_ref.model.config import ACTIVATIONS
from bert_ref.model.precision import HALF_PRECISIONS, POLICIES, PRECISIONS
from bert_ref.oracle.cache import check_settings as check_cache_settings
from bert_ref.oracle.candidates import read_candidate, read_inputs
from bert_ref.oracle.compare import compare
from bert_ref.oracle.run import (
    DEFAULT_FLOOR_RATIO,
    check_candidate,
    compare_to_truth,
    detect_precision,
    oracle_outputs,
)
from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL, parse_tolerance
from bert_ref.scale import options as scale_args

# ----------------------------------------------------------------------------------------------
# compare


def _configure_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, local directory, kaggle://... or hf://...")
    p.add_argument("--input", "-i", metavar="IN",
                   help="the inputs the candidate was run on (token_ids/input_ids, segment_ids/token_type_ids, "
                        "padding_mask/attention_mask)")
    p.add_argument("--candidate", "-c", required=True, metavar="CAND",
                   help="the candidate's outputs (.npz, .safetensors, .json, or .npy for one output): any of "
                        "sequence_output, pooled_output, hidden_states.{i}, attention_probs.{i}, trace names, or "
                        "Hugging Face's last_hidden_state, pooler_output, hidden_states [L+1,B,S,H], attentions")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                   help="the candidate's precision: compare with the float64 truth, next to our own error in that "
                        "precision (the floor), in the floor-ratio mode unless --atol/--rtol are given "
                        "(default: from the candidate's dtypes)")
    p.add_argument("--int8-scheme", default=None, metavar="SCHEME",
                   help="with --precision int8, the port's dynamic-quantisation recipe: a preset (symmetric, torch, "
                        "ort, ort-matmul) and/or key=value parts (weights=s8|s8r|s7|u8, per=tensor|channel, "
                        "act=s8|u8|u7, embeddings=float|u8), e.g. 'ort,per=channel' (default: detected from the "
                        "candidate's errors; see docs/conformance.md)")
    p.add_argument("--floor-ratio", type=float, default=None, metavar="K",
                   help=f"an output passes when its max abs error against the truth is at most K x the floor "
                        f"(default mode and K={DEFAULT_FLOOR_RATIO:g} when a precision is given or detected)")
    p.add_argument("--atol", default=None, metavar="A",
                   help=f"absolute tolerance (default {DEFAULT_ATOL:g}); per kind: "
                        "'1e-5,hidden_states=1e-2,attention_probs=1e-3'")
    p.add_argument("--rtol", default=None, metavar="R",
                   help=f"relative tolerance (default {DEFAULT_RTOL:g}); per kind like --atol")
    p.add_argument("--truth", action="store_true",
                   help="compare against our float64 policy (the truth) instead of our float32 output")
    dtype_arg(p, None, "policy of the reference run (default float32); with --truth, the policy whose error "
                        "against the truth is shown as the floor")
    p.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="override the preset's activation (test the hypothesis 'my port uses the other GELU'; "
                        "gelu_approximate_f16_table is ggml's, llama.cpp's)")
    p.add_argument("--layer-norm-epsilon", type=float, default=None, metavar="EPS",
                   help="override the preset's layer-norm epsilon")
    p.add_argument("--check-padded", action="store_true", help="padded positions fail the check too")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the float64 run that measures the float32 floor (absolute mode only)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the on-disk cache of our runs (see BERT_REF_ORACLE_CACHE)")
    p.add_argument("--junit", metavar="FILE", default=None,
                   help="also write a JUnit XML report (one test case per output) to FILE")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--diagnose", action="store_true",
                   help="when the candidate fails, rank the mistakes ports make (GELU form, epsilon, masking, token "
                        "types, positions, attention scale, heads, kernels, pre-LN, pooler, half-precision softmax "
                        "or layer norm) by how well each explains the failure and name the likely cause "
                        "(compares with the float64 truth)")
    scale_args.add_compare_arguments(p)


def _override(model: BertBackbone, args: argparse.Namespace) -> tuple[BertBackbone, list[str]]:
    changes = {}
    if args.activation is not None and args.activation != model.config.activation:
        changes["activation"] = args.activation
    if args.layer_norm_epsilon is not None:
        if not args.layer_norm_epsilon > 0:
            raise UsageError(f"--layer-norm-epsilon must be > 0, got {args.layer_norm_epsilon}")
        if args.layer_norm_epsilon != model.config.layer_norm_epsilon:
            changes["layer_norm_epsilon"] = args.layer_norm_epsilon
    if not changes:
        return model, []
    config = model.config.to_dict()
    notes = [f"{k} overridden: {v} (the preset says {config[k]})" for k, v in changes.items()]
    config.update(changes)
    new = BertBackbone(**config, dtype=model.dtype_policy, weights=model.weights)
    new.source = model.source
    return new, notes


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.dataset is not None:
        from bert_ref.cli import scale

        return scale.cli_compare(args)
    if args.input is None:
        raise UsageError("give --input IN (or --dataset IN)")
    atol = rtol = None
    try:
        if args.atol is not None:
            atol = parse_tolerance(args.atol, "atol")
        if args.rtol is not None:
            rtol = parse_tolerance(args.rtol, "rtol")
    except ValueError as e:
        raise UsageError(f"--{str(e)}") from None
    if args.floor_ratio is not None and not args.floor_ratio > 0:
        raise UsageError(f"--floor-ratio must be > 0, got {args.floor_ratio}")
    if args.floor_ratio is not None and (atol is not None or rtol is not None):
        raise UsageError("--floor-ratio and --atol/--rtol are two different checks; give one")
    cache = not args.no_cache
    if cache:
        check_cache_settings()  # a bad BERT_REF_ORACLE_CACHE(_MB) is an error before any work
    if args.int8_scheme is not None:
        from bert_ref.oracle.int8 import parse_int8_scheme

        if args.precision not in (None, "int8"):
            raise UsageError(f"--int8-scheme is for --precision int8, not --precision {args.precision}")
        try:
            parse_int8_scheme(args.int8_scheme)
        except ValueError as e:
            raise UsageError(str(e)) from None
        args.precision = "int8"
    read = read_candidate(args.candidate)
    candidate = read.arrays
    inputs = read_inputs(args.input)
    detected = detect_precision(candidate)
    precision = args.precision
    if precision is None and args.truth and args.dtype is not None:
        precision = POLICIES[args.dtype].precision
    truth_mode = (args.truth or precision is not None or args.floor_ratio is not None or args.diagnose
                  or (detected in HALF_PRECISIONS and atol is None and rtol is None))
    # The weights' NaN/inf check waits for the first forward: a compare whose runs are all in the
    # oracle cache needs only the config and the weights' digest (kept per preset directory).
    model = load_preset(args.preset, None if truth_mode else args.dtype, defer_finite_check=cache)
    model, notes = _override(model, args)
    notes = list(read.notes) + notes
    check_candidate(candidate, model.config, inputs, args.candidate, read.stacked)
    name = Path(args.candidate).name
    try:
        if truth_mode:
            if precision is None and detected != "float32":
                notes.append(f"precision {detected}, from the candidate's dtypes (--precision overrides)")
            floor_ratio = args.floor_ratio
            if args.diagnose and floor_ratio is None and atol is None and rtol is None:
                floor_ratio = DEFAULT_FLOOR_RATIO  # the rule the diagnosis explains failures against
            report = compare_to_truth(model, inputs, candidate, precision=precision, floor_ratio=floor_ratio,
                                      int8_scheme=args.int8_scheme,
                                      atol=atol, rtol=rtol, check_padded=args.check_padded, candidate_name=name,
                                      notes=notes, cache=cache)
        else:
            reference = oracle_outputs(model, inputs, candidate, cache=cache)
            floor_kwargs: dict[str, Any] = {}
            if not args.no_floor:
                ours32 = reference if model.dtype_policy.name == "float32" else oracle_outputs(
                    model, inputs, candidate, dtype="float32", cache=cache)
                truth = oracle_outputs(model, inputs, candidate, dtype="float64", cache=cache)
                floor_kwargs = dict(floor=ours32, floor_reference=truth, floor_name="our float32 vs float64 truth",
                                    precision="float32")
            report = compare(reference, candidate, atol=DEFAULT_ATOL if atol is None else atol,
                             rtol=DEFAULT_RTOL if rtol is None else rtol,
                             padding_mask=inputs.get("padding_mask"), check_padded=args.check_padded,
                             reference_name=f"our {model.dtype_policy.name}", candidate_name=name, notes=notes,
                             **floor_kwargs)
        diagnosis = None
        if args.diagnose and not report.passed:
            from bert_ref.oracle.diagnose import diagnose

            diagnosis = diagnose(model, inputs, candidate, precision=precision or detected, floor_ratio=floor_ratio,
                                 cache=cache, report=report, int8_scheme=args.int8_scheme)
    except CheckpointError as e:  # the deferred NaN/inf check of the weights, run by the first forward
        raise UsageError(f"cannot load preset {args.preset!r}: {e}") from None
    if args.junit:
        write_junit(args.junit, report, f"{args.preset} vs {name}")
    if args.json:
        d = report.to_dict()
        d["preset"] = args.preset
        d["source"] = where(model)
        if args.diagnose:
            d["diagnosis"] = None if diagnosis is None else diagnosis.to_dict()
        say(json.dumps(d, indent=2, allow_nan=False))
    else:
        mask = inputs.get("padding_mask")
        b, s = inputs["token_ids"].shape
        padded = 0 if mask is None else int((~mask).sum())
        say(f"preset {args.preset} (loaded from {where(model)}); inputs {b} x {s}, {padded} padded positions"
             + ("" if args.check_padded or not padded else " (reported, not checked; --check-padded checks them)"))
        say(report.format_table())
        if not report.passed and not truth_mode and args.precision is None:
            say(f"(The candidate is stored in {detected}. If it is a TF32, int8, float16 or bfloat16 port, "
                 "--precision compares it with the float64 truth next to that precision's floor.)")
        if diagnosis is not None:
            say(diagnosis.format())
        elif args.diagnose and not report.passed:
            say("Likely cause: not diagnosed (the candidate has none of hidden_states.{i}, sequence_output, "
                "pooled_output, which the diagnosis compares).")
        elif not report.passed:
            say("(--diagnose ranks the mistakes ports make by how well each explains this failure and names the "
                "likely cause.)")
    return 0 if report.passed else 1


def write_junit(path: str | os.PathLike, report: Any, suite: str,
                extra: Sequence[tuple[str, str | None]] = ()) -> Path:
    """A JUnit XML file for `report`: one test case per output (in computation order), a failure
    element with the output's errors for each one over tolerance, the whole table as system-out;
    then the `extra` cases, (name, failure message or None), e.g. a dataset's worst records.
    Written through `bert_ref.io.atomic` (whole or not at all)."""
    from xml.sax.saxutils import escape, quoteattr

    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"--junit {path}: directory {path.parent} does not exist")
    cases = []
    for e in report:
        v = e.valid
        attrs = f"classname={quoteattr('bert_ref.compare.' + suite)} name={quoteattr(e.key)}"
        if e.passed:
            cases.append(f"    <testcase {attrs}/>")
            continue
        stats = v if not v.passed else (e.padded or v)
        msg = (f"{e.key} ({e.stage}): max abs error {stats.max_abs_error:.3e}, rms {stats.rms_error:.3e}, "
               f"worst at {e.where(stats.worst_index)} (reference {stats.worst_reference}, candidate "
               f"{stats.worst_candidate})" + (f", {e.floor_ratio:.3g}x the floor" if e.floor_ratio is not None else "")
               + "".join(f"; {c.label} {c.ratio:.3g}x the ensemble's largest (limit {c.limit:g}x)"
                         for c in e.failed_checks if c.statistic != "max_abs"))
        cases.append(f"    <testcase {attrs}>\n      <failure message={quoteattr(msg)} type=\"OverTolerance\">"
                     f"{escape(msg)}</failure>\n    </testcase>")
    for name, failure in extra:
        attrs = f"classname={quoteattr('bert_ref.compare.' + suite)} name={quoteattr(name)}"
        cases.append(f"    <testcase {attrs}/>" if failure is None else
                     f"    <testcase {attrs}>\n      <failure message={quoteattr(failure)} type=\"OverTolerance\">"
                     f"{escape(failure)}</failure>\n    </testcase>")
    failures = len(report.failures) + sum(f is not None for _, f in extra)
    text = ('<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n'
            f"  <testsuite name={quoteattr(suite)} tests=\"{len(report) + len(extra)}\" failures=\"{failures}\" "
            'errors="0" skipped="0">\n' + "\n".join(cases) + "\n"
            f"    <system-out>{escape(report.format_table())}</system-out>\n  </testsuite>\n</testsuites>\n")
    return atomic.write_text(path, text)


def add_commands(register: Callable[..., None]) -> None:
    register("compare", "compare a candidate's outputs with the oracle's", _configure_compare, _cmd_compare,
             "Run the oracle on IN and compare every output present in CAND with it, in computation order, "
             "naming the first output over tolerance. An element passes when |cand - ref| <= atol + rtol*|ref|. "
             "Exit status: 0 all within tolerance, 1 some over, 2 bad usage or bad files.")
