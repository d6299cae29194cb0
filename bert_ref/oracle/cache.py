"""An on-disk cache of the oracle's own runs (the float64 truth, the floors, the reference).

`bert-ref compare` runs our model up to three times (reference, float64 truth, the floor's
precision); on BERT-base at 8 x 128 that is most of its time. The runs depend only on the model
(config and weights), the inputs, the policy and the outputs asked for, so each is stored once,
keyed by a SHA-256 digest of exactly those (and of the bert_ref version and the source of the
modules that compute a forward, so that a changed kernel never reads runs of the old one), and a
second compare of another candidate on the same inputs reads them back.

Location and size (environment variables):

    BERT_REF_ORACLE_CACHE     the directory (default `<our cache>/oracle`, i.e. `$BERT_REF_CACHE/oracle`,
                              else `$XDG_CACHE_HOME/bert_ref/oracle`, else `~/.cache/bert_ref/oracle`);
                              `off` (or 0, false, no) disables the cache.
    BERT_REF_ORACLE_CACHE_MB  the most it may hold, in MiB (default 2048): after each write the
                              least recently used entries are removed until it fits.

Each entry is one `.npz` file, written to a temporary name in the same directory and renamed into
place, so a reader never sees half a file; a file that cannot be read is treated as absent and
removed. Reading an entry touches it (its modification time orders the eviction).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref import __version__
from bert_ref.io import atomic

_OFF = ("off", "0", "false", "no")
DEFAULT_LIMIT_MB = 2048

_digests: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def cache_root() -> Path | None:
    """The cache directory, or None when `BERT_REF_ORACLE_CACHE` disables it."""
    value = os.environ.get("BERT_REF_ORACLE_CACHE", "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    from bert_ref.io.hub.settings import cache_dir

    return cache_dir() / "oracle"


def limit_bytes() -> int:
    """`BERT_REF_ORACLE_CACHE_MB` in bytes (default 2048 MiB)."""
    raw = os.environ.get("BERT_REF_ORACLE_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_LIMIT_MB * 2 ** 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise ValueError(f"BERT_REF_ORACLE_CACHE_MB={raw!r} is not valid: expected a number of MiB >= 0")
    return int(mb * 2 ** 20)


def model_digest(model: Any) -> str:
    """SHA-256 of a `BertBackbone`'s config and weights (names, dtypes, shapes, bytes); computed once
    per model object (its weights are read-only).

    Hashing BERT-base's 438 MB takes about 0.2 s (per tensor, on the cores' threads), so the
    weights' part is also kept on disk for a
    model loaded from a preset directory whose weights are read-only views of its files (as
    `from_preset` maps them): it is stored under the directory's files' names, sizes, modification
    times and inode numbers, and reused while none of them changes."""
    try:
        return _digests[model]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    h.update(_weights_digest(model).encode())
    digest = h.hexdigest()
    try:
        _digests[model] = digest
    except TypeError:
        pass
    return digest


def _hash_weights(weights: Mapping[str, Any]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and the SHA-256 of its bytes; the tensors are
    hashed on the cores' threads (hashlib releases the GIL)."""
    from bert_ref.model.runtime import map_concurrent

    names = sorted(weights)

    def tensor_digest(name: str) -> str:
        w = np.ascontiguousarray(weights[name])
        return hashlib.sha256(w.data.cast("B")).hexdigest()

    h = hashlib.sha256()
    for name, digest in zip(names, map_concurrent(tensor_digest, names), strict=True):
        w = weights[name]
        h.update(f"{name}|{w.dtype.str}|{w.dtype.name}|{w.shape}|{digest}|".encode())
    return h.hexdigest()


def _stored_weights(model: Any) -> Mapping[str, Any]:
    """`model.weights` without running a NaN/inf check that `from_preset` deferred: hashing needs only
    the bytes, and a run is stored only after a forward, which runs the check."""
    weights = getattr(model, "_weights", None)
    return model.weights if weights is None else weights


def _files_signature(model: Any) -> str | None:
    """What identifies the files `model`'s weights were mapped from, or None when that cannot stand
    for the weights (no preset directory, or a weight array that could have been changed in place)."""
    source = getattr(model, "source", None)
    weights = _stored_weights(model)
    if not source or not Path(source).is_dir() or any(np.asarray(w).flags.writeable for w in weights.values()):
        return None
    h = hashlib.sha256(f"bert_ref {__version__}|{Path(source).resolve()}|".encode())
    for p in sorted(Path(source).iterdir()):
        try:
            st = p.stat()
        except OSError:
            return None
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_dev}|".encode())
    h.update("|".join(f"{n}:{np.asarray(w).dtype.str}:{np.shape(w)}" for n, w in sorted(weights.items())).encode())
    return h.hexdigest()


def _weights_digest(model: Any) -> str:
    root = cache_root()
    signature = _files_signature(model) if root is not None else None
    path = None if signature is None or root is None else root / "digests" / signature
    if path is not None:
        try:
            known = path.read_text(encoding="ascii").strip()
            if len(known) == 64:
                return known
        except (OSError, UnicodeDecodeError):
            pass
    digest = _hash_weights(_stored_weights(model))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, digest)
        except OSError:
            pass
    return digest


# The modules whose code decides what a forward computes (their source is part of every key),
# relative to the package.
FORWARD_MODULES = ("ops.py", "_erf_table.py", "encoder.py", "model/kernels.py", "model/runtime.py",
                   "model/precision.py", "model/config.py")


@functools.cache
def code_digest() -> str:
    """SHA-256 of the source of `FORWARD_MODULES` (read once per process)."""
    h = hashlib.sha256()
    for name in FORWARD_MODULES:
        h.update(name.encode() + b"\0" + (Path(__file__).parents[1] / name).read_bytes() + b"\0")
    return h.hexdigest()


def entry_key(model: Any, inputs: Mapping[str, Any], policy_name: str, keys: Iterable[str] | None) -> str:
    """The digest naming one run: model, inputs, policy, the outputs asked for, bert_ref's version
    and the forward's source (`code_digest`)."""
    h = hashlib.sha256()
    h.update(f"bert_ref {__version__} {code_digest()}|{model_digest(model)}|{policy_name}|".encode())
    h.update(json.dumps(None if keys is None else sorted(keys)).encode())
    for name in ("token_ids", "segment_ids", "padding_mask"):
        if name in inputs and inputs[name] is not None:
            a = np.ascontiguousarray(np.asarray(inputs[name]))
            a = a.astype(bool) if name == "padding_mask" else a.astype(np.int64)
            h.update(f"|{name}|{a.shape}|".encode())
            h.update(a.data.cast("B"))
    return h.hexdigest()


def load(key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under `key`, or None (absent, disabled, or unreadable: then removed)."""
    root = cache_root()
    if root is None:
        return None
    path = root / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        out = _map_entry(path) if os.name == "posix" else None
        if out is None:
            with np.load(path, allow_pickle=False) as data:
                out = {k: data[k] for k in data.files}
        for k, a in out.items():
            if a.dtype == np.dtype("V2"):  # bfloat16, as np.savez stores it
                import ml_dtypes

                out[k] = a.view(ml_dtypes.bfloat16)
    except Exception:  # a damaged entry is a miss
        path.unlink(missing_ok=True)
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return out


def _map_entry(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an entry as copy-on-write maps of its file: nothing is copied or read until the
    arrays are (BERT-base's two runs at 8 x 128 are 132 MB, which `np.load` copies twice, checking
    each member's CRC, in about 0.1 s). The arrays are writable, and writing changes only this
    process's pages. Entries are only ever replaced whole (written to a temporary name, renamed),
    never rewritten in place, so a mapped file does not change under its reader.

    None when a member is compressed or in a .npy format other than 1.0 / 2.0 (`np.load` reads it
    then); ValueError when the file is not the zip of .npy members `store` writes (a damaged entry)."""
    import mmap
    import zipfile

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            return None
        buffer = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))
    out: dict[str, np.ndarray] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise ValueError(f"{path}: {info.filename} is not an array")
        at = info.header_offset
        local = buffer[at:at + 30].tobytes()
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: no local header for {info.filename}")
        start = at + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        end = start + info.file_size
        if end > size:
            raise ValueError(f"{path}: {info.filename} is cut short")
        header = io.BytesIO(buffer[start:min(end, start + 65536)].tobytes())
        version = np.lib.format.read_magic(header)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
        else:  # a newer .npy format: np.load reads it
            return None
        offset = start + header.tell()
        if dtype.hasobject or offset + math.prod(shape) * dtype.itemsize != end:
            raise ValueError(f"{path}: {info.filename} does not hold {shape} {dtype}")
        data = buffer[offset:end]
        out[info.filename[:-4]] = np.ndarray(shape, dtype, buffer=data, order="F" if fortran else "C")
    return out


def store(key: str, arrays: Mapping[str, np.ndarray]) -> Path | None:
    """Store `arrays` under `key` (atomically), then evict down to `limit_bytes()`. Failing to
    write (a read-only disk, no space) is not an error: the run is simply not cached."""
    root = cache_root()
    if root is None:
        return None
    path = root / f"{key}.npz"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic.open_atomic(path) as f:
            # numpy's stub types **kwds as if they could fill `allow_pickle`; they are arrays.
            np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    except OSError:
        return None
    evict(limit_bytes())
    return path


def evict(limit: int) -> None:
    """Remove the least recently used entries until the cache holds at most `limit` bytes."""
    root = cache_root()
    if root is None or not root.is_dir():
        return
    entries = []
    for p in root.glob("*.npz"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        p.unlink(missing_ok=True)
        total -= size
