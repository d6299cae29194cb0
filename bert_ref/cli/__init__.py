"""The `bert-ref` command (also `python -m bert_ref`).

    bert-ref presets                         built-in presets, parameter counts, descriptions
    bert-ref info PRESET                     config, parameter count, files, where it was loaded from
    bert-ref run PRESET --input IN --output OUT [--dtype D] [--hidden-states] [--attentions] [--trace]
    bert-ref compare PRESET --input IN --candidate CAND [--precision P] [--floor-ratio K] [--atol A] [--rtol R]
                     [--truth] [--activation G] [--layer-norm-epsilon E] [--json] [--junit FILE]
    bert-ref run PRESET --dataset IN --out DIR [--outputs ...] [--shard-size N] [--scheduler S] [--workers N]
    bert-ref compare PRESET --dataset IN --candidate DIR_OR_FILE [--reference RUN_DIR] [--floor-from RUN_DIR]
    bert-ref pack PRESET --dataset IN --out DIR   the packed inputs of a dataset, for a port (see bert_ref.scale)
    bert-ref download PRESET                 prefetch into the cache
    bert-ref convert SRC DST                 any loadable preset -> a native preset directory
    bert-ref example [PRESET]                a sentence pair through real weights (installed MiniLM by default)
    bert-ref embed PRESET [TEXT ...] [--output OUT] [--pooling P] [--dtype D]   sentence vectors
    bert-ref tokenize PRESET [TEXT ...]      WordPiece tokens and ids (stdin when no TEXT)

Exit status: 0 success (for `compare`: every output within tolerance), 1 `compare` found an output
over tolerance, 2 bad usage, a bad file, a preset that cannot be loaded, a limit reached or memory
exhausted (one line on stderr says why, naming the file and field; never a traceback), 141 the
reader of standard output went away (`bert-ref presets | head -1`; nothing is printed). Every file
written (outputs, embeddings, converted presets, reports, plots) goes through `bert_ref.io.atomic`:
a fresh temporary name, renamed into place when complete. Files are `.npz`, `.safetensors` or
`.json` (see `bert_ref.oracle.candidates`).

Each command group is one module of this package (`COMMAND_MODULES`); each defines
`add_commands(register)`, the one way a command is registered.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bert_ref import __version__
from bert_ref.backbone import BertBackbone
from bert_ref.io.arrays import ArrayFileError
from bert_ref.io.errors import describe as describe_os_error
from bert_ref.model.precision import POLICY_NAMES

PROG = "bert-ref"

#: The command groups, in the order `bert-ref --help` lists them: each module defines
#: `add_commands(register)`, imported only when the parser is built.
COMMAND_MODULES: tuple[str, ...] = ("bert_ref.cli.models", "bert_ref.cli.compare", "bert_ref.cli.text",
                                    "bert_ref.cli.trace")


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


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_preset(preset: str, dtype: str | None = None, defer_finite_check: bool = False) -> BertBackbone:
    try:
        return BertBackbone.from_preset(preset, dtype=dtype, defer_finite_check=defer_finite_check)
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise UsageError(f"cannot load preset {preset!r}: {e}") from None


def dtype_arg(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    parser.add_argument("--dtype", choices=POLICY_NAMES, default=default, help=help)


def where(model: BertBackbone) -> str:
    source = model.source
    return str(Path(source).resolve()) if source and Path(source).is_dir() else str(source)


# ----------------------------------------------------------------------------------------------
# Parser and entry point


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
    for module in COMMAND_MODULES:
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
    except OSError as e:  # with its path and a remedy (ENOSPC, EFBIG, EACCES...) when it names a file
        return fail(describe_os_error(e) or type(e).__name__)
    except (UsageError, ArrayFileError, ValueError, TypeError, ImportError, NotImplementedError) as e:
        return fail(str(e) or type(e).__name__)
    except MemoryError as e:
        if str(e).startswith("out of memory"):  # a command's own account of what did not fit
            return fail(str(e))
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
