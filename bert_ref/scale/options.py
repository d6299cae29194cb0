"""`bert-ref run` and `compare`'s dataset arguments (`bert_ref.scale`), apart from the module that runs
them: building the command line then does not import `bert_ref.scale`, `bert_ref.scale.dataset` and what
they import; only a `--dataset` command does."""

from __future__ import annotations

from typing import Any

__all__ = ["add_run_arguments", "add_pack_arguments", "add_compare_arguments", "DEFAULT_SHARD_SIZE",
           "DEFAULT_BATCH_TOKENS", "OUTPUT_CHOICES"]

DEFAULT_SHARD_SIZE = 256
DEFAULT_BATCH_TOKENS = 4096
OUTPUT_CHOICES = ("sequence_output", "pooled_output", "hidden_states")


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
