"""Limits on what a file, a config or a server may make bert_ref spend, checked before the work.

Every limit has a default large enough for any real BERT and an environment variable that
overrides it (a positive integer; sizes in bytes, times in seconds):

    BERT_REF_MAX_LAYERS            1024         num_layers of a config
    BERT_REF_MAX_PARAMS            20000000000  parameters a config implies (bert-large: 3.4e8)
    BERT_REF_MAX_JSON_BYTES        67108864     size of any JSON file or response read (64 MiB)
    BERT_REF_MAX_JSON_DEPTH        64           nesting of [ ] and { } in any JSON read
    BERT_REF_MAX_INPUT_BYTES       1073741824   declared size of the arrays of an inputs/outputs file (1 GiB)
    BERT_REF_MAX_ACTIVATION_BYTES  half of RAM  estimated peak activations of one forward pass
    BERT_REF_MAX_SEQUENCE_LENGTH   1048576      `--sequence-length` of `tokenize` / `embed`
    BERT_REF_MAX_DOWNLOAD_BYTES    68719476736  a downloaded file whose size the server does not state (64 GiB)
    BERT_REF_DOWNLOAD_DEADLINE     7200         seconds one file's download may take in all
    BERT_REF_MAX_ARCHIVE_BYTES     68719476736  bytes extracted from one archive (64 GiB)
    BERT_REF_MAX_ARCHIVE_ENTRIES   10000        entries of one archive (Kaggle download, .npz file)
    BERT_REF_CONNECT_TIMEOUT       30           seconds to reach a Dask scheduler and receive its handshake

A limit that is hit raises `LimitError` (a `ValueError`) naming the file or field, the amount
and the limit, and the variable that raises it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import numpy as np


class LimitError(ValueError):
    """A file, config or response asks for more than a limit allows (see the module docstring)."""


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 16 << 30


#: name -> (environment variable, default, what it bounds)
LIMITS: dict[str, tuple[str, Any, str]] = {
    "layers": ("BERT_REF_MAX_LAYERS", 1024, "num_layers of a config"),
    "params": ("BERT_REF_MAX_PARAMS", 20_000_000_000, "parameters a config implies"),
    "json_bytes": ("BERT_REF_MAX_JSON_BYTES", 64 << 20, "bytes of a JSON document"),
    "json_depth": ("BERT_REF_MAX_JSON_DEPTH", 64, "nesting depth of a JSON document"),
    "input_bytes": ("BERT_REF_MAX_INPUT_BYTES", 1 << 30, "declared bytes of the arrays of a file"),
    "activation_bytes": ("BERT_REF_MAX_ACTIVATION_BYTES", None, "estimated activation bytes of a forward pass"),
    "sequence_length": ("BERT_REF_MAX_SEQUENCE_LENGTH", 1 << 20, "--sequence-length"),
    "download_bytes": ("BERT_REF_MAX_DOWNLOAD_BYTES", 64 << 30, "bytes of a download of unstated size"),
    "download_deadline": ("BERT_REF_DOWNLOAD_DEADLINE", 7200, "seconds for one file's download"),
    "archive_bytes": ("BERT_REF_MAX_ARCHIVE_BYTES", 64 << 30, "bytes extracted from an archive"),
    "archive_entries": ("BERT_REF_MAX_ARCHIVE_ENTRIES", 10_000, "entries of an archive"),
    "connect_timeout": ("BERT_REF_CONNECT_TIMEOUT", 30, "seconds to reach a Dask scheduler and get its handshake"),
}


def limit(name: str) -> int:
    """The current value of limit `name` (its environment variable, else its default)."""
    env, default, _ = LIMITS[name]
    raw = os.environ.get(env, "").strip()
    if not raw:
        return _physical_memory() // 2 if default is None else default
    try:
        value = int(float(raw)) if re.fullmatch(r"[0-9.]+(e[0-9]+)?", raw, re.I) else None
    except (ValueError, OverflowError):
        value = None
    if value is None or value < 1:
        raise LimitError(f"{env}={raw!r} is not valid: expected a positive integer")
    return value


def env_name(name: str) -> str:
    """The environment variable that overrides limit `name`."""
    return LIMITS[name][0]


def check(name: str, amount: int, what: str, unit: str = "") -> None:
    """`LimitError` "{what} is {amount}{unit}, over the limit of ... (ENV)" when `amount` exceeds it."""
    cap = limit(name)
    if amount > cap:
        raise LimitError(f"{what} is {amount:,}{unit}, over the limit of {cap:,}{unit} "
                         f"(set {env_name(name)} to raise it)")


# ----------------------------------------------------------------------------------------------
# JSON

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped), in C-speed passes."""
    if not (b"[" in raw or b"{" in raw):
        return 0
    skeleton = _STRING.sub(b"", raw)
    codes = np.frombuffer(skeleton, dtype=np.uint8)
    steps = np.zeros(codes.shape, np.int32)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def loads(raw: bytes | str, source: str) -> Any:
    """Parse JSON text from `source` (a file name or URL) within the size and depth limits.

    Raises `LimitError` naming `source` when it is larger or deeper than allowed, before parsing,
    or holds an integer of more digits than Python converts. Parse errors are left to the caller
    (`json.JSONDecodeError`, a `ValueError`)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    check("json_bytes", len(raw), f"{source}: the JSON document", " bytes")
    # Nesting cannot exceed the number of opening brackets: most documents (a JSONL record of any
    # length, a config) are cleared by two counts, without `json_depth`'s passes over a copy.
    depth = json_depth(raw) if raw.count(b"[") + raw.count(b"{") > limit("json_depth") else 0
    if depth > limit("json_depth"):
        raise LimitError(f"{source}: JSON nested {depth} levels deep, over the limit of {limit('json_depth')} "
                         f"(set {env_name('json_depth')} to raise it)")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # Python's cap on the digits of an int read from text (CVE-2020-10735)
        found = re.search(r"value has (\d+) digits", str(e))
        if found is None:
            raise
        cap = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
        raise LimitError(f"{source}: a number with {int(found.group(1)):,} digits, over the limit of {cap:,} digits "
                         "for an integer read from text (PYTHONINTMAXSTRDIGITS); write it as a string, or leave "
                         "it out") from None


def load_file(path: str | os.PathLike, source: str | None = None) -> Any:
    """`loads` of the file at `path`; reads at most the byte limit plus one."""
    source = str(path) if source is None else source
    cap = limit("json_bytes")
    with open(path, "rb") as f:
        raw = f.read(cap + 1)
    if len(raw) > cap:
        raise LimitError(f"{source}: the JSON document is over the limit of {cap:,} bytes "
                         f"(set {env_name('json_bytes')} to raise it)")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark, as some editors write
    return loads(raw, source)


# ----------------------------------------------------------------------------------------------
# Activations


def forward_bytes(config: Any, batch: int, sequence: int, itemsize: int, *, hidden_states: bool = False,
                  attentions: bool = False, trace: bool = False) -> int:
    """An estimate of the peak bytes one forward pass holds at once (NumPy allocations).

    Working set of one layer: about four [B, S, H] arrays (residual stream, queries, keys, values or
    context), the feed-forward's intermediate [B, S, F] and the attention scores [B, heads, S, S];
    plus what is kept for the caller: the outputs, and with `hidden_states` / `attentions` /
    `trace` every layer's. Against tracemalloc's peak on all-MiniLM-L6-v2 (float32): 1.18x at
    batch 64 x 128, 1.09x at 16 x 512; with hidden states and attentions kept 1.15x at 8 x 128,
    1.17x at 4 x 512 (an over-estimate, as a limit should be)."""
    b, s, h, f = batch, sequence, config.hidden_dim, config.intermediate_dim
    heads, layers = config.num_heads, config.num_layers
    work = b * s * (4 * h + f) + b * heads * s * s
    kept = b * s * h + b * h
    if hidden_states:
        kept += (layers + 1) * b * s * h
    if attentions:
        kept += layers * b * heads * s * s
    if trace:
        kept += layers * (b * s * (10 * h + 2 * f) + 3 * b * heads * s * s)
    return itemsize * (work + kept)


def check_forward(config: Any, batch: int, sequence: int, itemsize: int, policy: str, **kept: bool) -> None:
    """`LimitError` with the estimate and a suggestion when `forward_bytes` exceeds the limit."""
    need = forward_bytes(config, batch, sequence, itemsize, **kept)
    cap = limit("activation_bytes")
    if need > cap:
        raise LimitError(
            f"inputs of batch {batch:,} x sequence {sequence:,} need an estimated {need / 1e9:,.1f} GB of "
            f"activations ({policy} policy), over the limit of {cap / 1e9:,.1f} GB "
            f"({env_name('activation_bytes')}, default half of physical memory); run the inputs in "
            "smaller batches, or raise the limit")


__all__ = ["LIMITS", "LimitError", "check", "check_forward", "forward_bytes", "env_name", "json_depth", "limit",
           "load_file", "loads"]
