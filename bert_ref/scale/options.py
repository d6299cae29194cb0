"""`bert-ref run` and `compare`'s dataset arguments (`bert_ref.scale`), apart from the module that runs
them: building the command line then does not import `bert_ref.scale`, `bert_ref.scale.dataset` and what
they import; only a `--dataset` command does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

__all__ = ["add_run_arguments", "add_pack_arguments", "add_compare_arguments", "DEFAULT_SHARD_SIZE",
           "DEFAULT_BATCH_TOKENS", "OUTPUT_CHOICES", "DatasetOptions", "dataset_options", "options_from_args"]

DEFAULT_SHARD_SIZE = 256
DEFAULT_BATCH_TOKENS = 4096
OUTPUT_CHOICES = ("sequence_output", "pooled_output", "hidden_states")


class DatasetOptions(TypedDict, total=False):
    """The keyword arguments that `run_dataset`, `pack_dataset` and `compare_dataset` share (the
    command line's flags of `_common_arguments`), each with its default in `DEFAULTS`:

    * `shard_size`: records per shard (one task, one file);
    * `scheduler`: "local" (threads), "processes", "synchronous", or a Dask scheduler address;
    * `workers`: threads or processes of the local schedulers;
    * `threads`: BLAS threads per worker (None: cores // workers locally, 1 on a cluster);
    * `sequence_length`: the longest record allowed (None: the model's max_sequence_length);
    * `truncate`: cut text records longer than `sequence_length` instead of failing;
    * `batch_tokens`: records are batched by length with records x longest length <= this;
    * `progress`: progress on stderr (None: a bar on a terminal, else a line per shard).
    """

    shard_size: int
    scheduler: str
    workers: int | None
    threads: int | None
    sequence_length: int | None
    truncate: bool
    batch_tokens: int
    progress: bool | None


DEFAULTS: DatasetOptions = {"shard_size": DEFAULT_SHARD_SIZE, "scheduler": "local", "workers": None, "threads": None,
                            "sequence_length": None, "truncate": False, "batch_tokens": DEFAULT_BATCH_TOKENS,
                            "progress": None}


def dataset_options(options: Mapping[str, Any], function: str) -> DatasetOptions:
    """`options` over `DEFAULTS`; a name that is not an option is a TypeError, as Python's own."""
    unknown = [k for k in options if k not in DEFAULTS]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    return {**DEFAULTS, **options}  # type: ignore[typeddict-item]


def options_from_args(args: Any) -> DatasetOptions:
    """The options of a parsed command line (`_common_arguments`)."""
    return {"shard_size": args.shard_size, "scheduler": args.scheduler, "workers": args.workers,
            "threads": args.threads, "sequence_length": args.sequence_length, "truncate": args.truncate,
            "batch_tokens": args.batch_tokens, "progress": False if args.no_progress else None}


def add_run_arguments(p: Any) -> None:
    """`bert-ref run`'s dataset arguments."""
    g = p.add_argument_group("dataset runs (instead of --input/--output; needs the scale extra)")
    g.add_argument("--dataset", metavar="IN", help="JSONL (text, text_pair), plain text lines, Parquet, or .npz / "
                   ".safetensors token ids (a file or a directory of them)")
    g.add_argument("--out", metavar="DIR", help="run directory: one shard-*.safetensors per shard + manifest.json; "
                   "rerunning resumes")
    g.add_argument("--outputs", default="sequence_output,pooled_output",
                   help=f"comma-separated, from {', '.join(OUTPUT_CHOICES)} (default sequence_output,pooled_output)")
    g.add_argument("--ensemble", action="store_true",
                   help="also store the outputs of the other members of --dtype's ensemble (for float16: its fused "
                        "and wide variants), so that `compare --floor-from` reads the whole floor ensemble")
    _common_arguments(g)


def add_pack_arguments(p: Any) -> None:
    """`bert-ref pack`'s arguments (after PRESET)."""
    p.add_argument("--dataset", metavar="IN", required=True,
                   help="JSONL (text, text_pair), plain text lines, Parquet, or .npz / .safetensors token ids")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="the directory of packed shards: one shard-*.safetensors per shard + manifest.json")
    _common_arguments(p)


def add_compare_arguments(p: Any) -> None:
    """`bert-ref compare`'s dataset arguments."""
    g = p.add_argument_group("dataset comparisons (instead of --input; needs the scale extra)")
    g.add_argument("--dataset", metavar="IN", help="the dataset the candidate was run on (see `run --dataset`)")
    g.add_argument("--reference", metavar="RUN_DIR",
                   help="read the reference from a `run --dataset` directory (checksums checked) instead of "
                        "computing it; with --precision / --truth, a `run --dtype float64` directory")
    g.add_argument("--floor-from", metavar="RUN_DIR",
                   help="read the floor of --precision P from a `run --dataset --dtype P` directory of the same job "
                        "(for float64, a float32 run) instead of computing it")
    g.add_argument("--records", metavar="A:B", help="compare records A .. B-1 only (the report says so)")
    g.add_argument("--worst", type=int, default=5, help="worst records reported per output (default 5)")
    _common_arguments(g)


def _common_arguments(g: Any) -> None:
    g.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"records per shard (default {DEFAULT_SHARD_SIZE})")
    g.add_argument("--scheduler", default="local",
                   help="local (threads, default), processes, synchronous, or a Dask scheduler address tcp://HOST:8786")
    g.add_argument("--workers", type=int, default=None,
                   help="threads (local) or processes (processes); default 1 / one per core")
    g.add_argument("--threads", type=int, default=None,
                   help="BLAS threads per worker (default cores // workers; 1 on a cluster)")
    g.add_argument("--sequence-length", type=int, default=None,
                   help="the longest record allowed (default the model's max_sequence_length)")
    g.add_argument("--truncate", action="store_true", help="cut longer text records instead of failing")
    g.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                   help=f"records per batch x longest length <= this (default {DEFAULT_BATCH_TOKENS})")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress (default: a bar on a terminal, else one line per shard on stderr)")
