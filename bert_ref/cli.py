"""The `bert-ref` command (also `python -m bert_ref`).

    bert-ref presets                         built-in presets, parameter counts, descriptions
    bert-ref info PRESET                     config, parameter count, files, where it was loaded from
    bert-ref run PRESET --input IN --output OUT [--dtype D] [--hidden-states] [--attentions] [--trace]
    bert-ref compare PRESET --input IN --candidate CAND [--atol A] [--rtol R] [--truth] [--json]
    bert-ref download PRESET                 prefetch into the cache
    bert-ref convert SRC DST                 any loadable preset -> a native preset directory
    bert-ref example [PRESET]                keras-hub's example input through a preset
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
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .backbone import BertBackbone
from .compare import DEFAULT_ATOL, DEFAULT_RTOL, compare, compare_to_truth, oracle_outputs
from .files import SUFFIXES, ArrayFileError, flatten_outputs, read_inputs, read_outputs, write_arrays
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
EXAMPLE_SEED = 0

#: Modules that add subcommands: each defines `add_commands(register)` (see `register`).
EXTENSION_MODULES: tuple[str, ...] = ("bert_ref.text_cli",)


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


def _load(preset: str, dtype: str | None = None) -> BertBackbone:
    try:
        return BertBackbone.from_preset(preset, dtype=dtype)
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
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:6], widths[1:6])] + [r[6]]
        _say("  ".join(cells))
        if j == 0:
            _say("  ".join("-" * w for w in widths) + "  " + "-" * 11)
    _say("\nAlso accepted wherever PRESET is: a local preset directory, kaggle://owner/model/framework/variation[/version], "
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
    p.add_argument("--input", "-i", required=True, metavar="IN",
                   help="inputs file (.npz, .safetensors or .json) with token_ids [, segment_ids, padding_mask]")
    p.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="where to write the outputs (.npz, .safetensors or .json)")
    _dtype_arg(p, None, "dtype policy (default float32; float64 is the truth)")
    p.add_argument("--hidden-states", action="store_true", help="also write hidden_states.{i} (num_layers + 1 arrays)")
    p.add_argument("--attentions", action="store_true", help="also write attention_probs.{i} (one per layer)")
    p.add_argument("--trace", action="store_true",
                   help="also write every named intermediate (embeddings/..., transformer_layer_{i}/...)")


def _cmd_run(args: argparse.Namespace) -> int:
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
    p.add_argument("--input", "-i", required=True, metavar="IN", help="the inputs the candidate was run on")
    p.add_argument("--candidate", "-c", required=True, metavar="CAND",
                   help="the candidate's outputs: any of sequence_output, pooled_output, hidden_states.{i}, "
                        "attention_probs.{i}, trace names")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    p.add_argument("--truth", action="store_true",
                   help="compare against our float64 policy (the truth) instead of our float32 output")
    _dtype_arg(p, None, "policy of the reference run when not --truth (default float32)")
    p.add_argument("--check-padded", action="store_true", help="padded positions fail the check too")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the float64 run that measures the float32 floor")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _cmd_compare(args: argparse.Namespace) -> int:
    if not (args.atol >= 0 and args.rtol >= 0):
        raise UsageError(f"--atol and --rtol must be >= 0, got {args.atol} and {args.rtol}")
    if args.truth and args.dtype is not None:
        raise UsageError("--dtype chooses the reference policy; with --truth the reference is float64")
    candidate = read_outputs(args.candidate)
    inputs = read_inputs(args.input)
    model = _load(args.preset, args.dtype)
    layers = model.config.num_layers
    for key in candidate:
        kind, _, idx = key.partition(".")
        if kind in ("hidden_states", "attention_probs"):
            top = layers if kind == "hidden_states" else layers - 1
            if int(idx) > top:
                raise UsageError(f"{args.candidate}: key {key!r} but {args.preset} has {layers} layers "
                                 f"({kind}.0 .. {kind}.{top})")
        elif key.startswith("transformer_layer_") and int(key[len("transformer_layer_"):].split("/")[0]) >= layers:
            raise UsageError(f"{args.candidate}: key {key!r} but {args.preset} has {layers} layers")
    name = Path(args.candidate).name
    if args.truth:
        report = compare_to_truth(model, inputs, candidate, atol=args.atol, rtol=args.rtol,
                                  check_padded=args.check_padded, candidate_name=name)
    else:
        reference = oracle_outputs(model, inputs, candidate)
        floor_kwargs: dict[str, Any] = {}
        if not args.no_floor:
            ours32 = reference if model.dtype_policy.name == "float32" else oracle_outputs(model, inputs, candidate, dtype="float32")
            floor_kwargs = dict(floor=ours32, floor_reference=oracle_outputs(model, inputs, candidate, dtype="float64"),
                                floor_name="our float32 vs float64 truth")
        report = compare(reference, candidate, atol=args.atol, rtol=args.rtol,
                         padding_mask=inputs.get("padding_mask"), check_padded=args.check_padded,
                         reference_name=f"our {model.dtype_policy.name}", candidate_name=name, **floor_kwargs)
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
    return 0 if report.passed else 1


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
    if args.dtype is not None:
        storage = get_policy(args.dtype).variable_dtype
        weights = {k: np.asarray(w).astype(storage) for k, w in weights.items()}
    md = ckpt.metadata
    metadata = {"source": f"{args.src} ({ckpt.format})", "lowercase": md.get("lowercase"),
                "vocabulary": md.get("vocabulary"), "dtype": args.dtype or md.get("dtype")}
    save_preset(dst, ckpt.config, weights, metadata=metadata)
    back = checkpoints.load_preset_dir(dst)
    differ = [k for k in weights if not np.array_equal(np.asarray(weights[k]), back.weights[k])]
    if differ:
        raise UsageError(f"{dst}: read back differs from what was written at {differ[:3]}")
    _say(f"{dst}: native preset from {args.src} ({ckpt.format} format, {ckpt.config.count_params():,} parameters); "
         "weights read back identical")
    return 0


# ----------------------------------------------------------------------------------------------
# example


def _configure_example(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", nargs="?", default=EXAMPLE_PRESET,
                   help=f"built-in name, local directory, kaggle://... or hf://... (default {EXAMPLE_PRESET}); "
                        "a built-in name that cannot be fetched falls back to its architecture with random weights")
    _dtype_arg(p, None, "dtype policy (default float32)")


def _stats_line(x: np.ndarray) -> str:
    x = x.astype(np.float64)
    return f"mean {x.mean():+.6f}  std {x.std():.6f}  min {x.min():+.6f}  max {x.max():+.6f}"


def _cmd_example(args: argparse.Namespace) -> int:
    preset = args.preset
    fallback_reason = None
    if preset in PRESETS:
        # Without a network, fail fast rather than retry: the fallback below is the answer.
        os.environ.setdefault("BERT_REF_HTTP_RETRIES", "1")
        os.environ.setdefault("BERT_REF_HTTP_TIMEOUT", "10")
        try:
            model = BertBackbone.from_preset(preset, dtype=args.dtype)
        except (OSError, ImportError) as e:
            fallback_reason = " ".join(str(e).split())
            model = BertBackbone(**preset_config(preset).to_dict(), dtype=args.dtype, seed=EXAMPLE_SEED)
    else:
        model = _load(preset, args.dtype)
    if fallback_reason is not None:
        if len(fallback_reason) > 300:
            fallback_reason = fallback_reason[:297] + "..."
        _say(f"NOTE: preset {preset!r} could not be loaded ({fallback_reason}).")
        _say(f"NOTE: using a RANDOM-INITIALISED {preset} architecture instead (keras-hub's initialisation, "
             f"seed {EXAMPLE_SEED}): the numbers below are not the pretrained model's.")
        _say(f"      `{PROG} download {preset}` (with a network) fetches the real weights.\n")
    else:
        _say(f"preset {preset}, loaded from {_where(model)}\n")
    _say(repr(model))
    inputs = EXAMPLE_INPUTS
    _say("\ninputs (keras-hub's BertBackbone example):")
    for k, v in inputs.items():
        _say(f"  {k:<13} {v.tolist()}")
    out = model(inputs, output_hidden_states=True, output_attentions=True)
    valid = inputs["padding_mask"].astype(bool)
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
register("example", "run keras-hub's example input through a preset", _configure_example, _cmd_example,
         "keras-hub's BertBackbone example input (token_ids of ones, two segments, two padded positions) "
         "through PRESET: output shapes, statistics and the float32 floor. Works offline: a built-in preset "
         "that cannot be fetched falls back to its architecture with random weights, and says so.")


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser that lets options and positionals mix (`tokenize PRESET
    --sequence-length 10 "text"`), as `parse_intermixed_args` does; argparse only offers that on
    the top-level parser, not through subparsers."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
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
