"""An on-disk cache of the oracle's own runs (the float64 truth, the floors, the reference).

`bert-ref compare` runs our model several times (reference, float64 truth, the floor's precision
and its ensemble); on BERT-base at 8 x 128 that is most of its time. The runs depend only on the
model (config and weights), the inputs and the policy, so each is stored once, keyed by a SHA-256
digest of exactly those (and of the bert_ref version and the source of the modules that compute a
forward, so that a changed kernel never reads runs of the old one); an entry holds every output
asked of its run so far, and a second compare of another candidate on the same inputs, with the
same or other outputs, reads them back (adding to the entry what it lacks). Small JSON records
(`store_record`, `load_record`) are entries of the same kind: `bert-ref compare --precision` keeps
there what each output's verdict needs of the ensemble (`bert_ref.oracle.run.ensemble_sides`), keyed
also by the source of the statistics' modules (`statistics_digest`).

Location and size (environment variables, both checked before any run: a bad value is a
`ValueError` naming the variable and what is valid):

    BERT_REF_ORACLE_CACHE     the directory (default `<our cache>/oracle`, i.e. `$BERT_REF_CACHE/oracle`,
                              else `$XDG_CACHE_HOME/bert_ref/oracle`, else `~/.cache/bert_ref/oracle`);
                              `off` (or 0, false, no) disables the cache.
    BERT_REF_ORACLE_CACHE_MB  the most it may hold, in MiB: a number from 0 to 1e9 (default 2048);
                              after each write the least recently used entries are removed until it
                              fits (0 stores nothing).

An entry cannot lie:

* Each entry is one safetensors file, `<key>.safetensors`, whose metadata holds its key and a SHA-256
  digest of its arrays (each one's name, dtype, shape and bytes). Reading an entry reads the whole
  file into memory (never a map of it, which a process truncating the file would turn into a
  SIGBUS), checks the key and the digest, and only then returns the arrays. So a flipped bit, a
  file cut short or an entry under another run's name (a float32 run where the float64 truth
  belongs) is a miss: the entry is removed where the directory is writable and skipped where it is
  not, so a read-only cache still serves its good entries.
* The model's part of the key is a digest of its content: the config, and every weight tensor's
  name, dtype, shape and bytes. Weights handed in from Python (`BertBackbone(weights=w)`), which can
  be changed in place, are hashed at every use. For a model loaded from a preset directory (weights
  that are read-only views of its files) the weights' digest is kept on disk, under the files'
  names, sizes, inode numbers, modification and change times (`st_ctime_ns`: an edit that restores
  the modification time still changes it), and reused while none of them changes.

Entries are written through `bert_ref.io.atomic` (a temporary name, renamed into place) without
fsync: an entry that did not reach the disk before a crash fails its digest and is a miss. Reading
an entry touches it (its modification time orders the eviction).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import re
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref import __version__
from bert_ref.io import atomic

ENV_DIR = "BERT_REF_ORACLE_CACHE"
ENV_MB = "BERT_REF_ORACLE_CACHE_MB"
_OFF = ("off", "0", "false", "no")
DEFAULT_LIMIT_MB = 2048
MAX_LIMIT_MB = 1e9
#: Written into every entry's metadata; an entry of another format is a miss.
FORMAT = "bert_ref oracle cache 2"
SUFFIX = ".safetensors"
#: A temporary entry file untouched this long belongs to a writer that was killed.
STALE_TEMP_S = 3600
_ENTRY = re.compile(r"[0-9a-f]{64}")

# model -> (the files' signature, the model's digest): reused while the signature holds.
_digests: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()
# model -> (the model it was cut from, its number of layers): see `derived`.
_parents: weakref.WeakKeyDictionary[Any, tuple[Any, int]] = weakref.WeakKeyDictionary()


def derived(model: Any, parent: Any, layers: int) -> None:
    """Declare `model` the first `layers` layers of `parent` (the same config but for the number of
    layers, and the very same weight arrays): where `parent`'s digest is kept (a preset directory's
    model), `model`'s is then `parent`'s digest and `layers`, which costs nothing, instead of hashing
    the weights it shares with `parent` at every use."""
    _parents[model] = (parent, int(layers))


# ----------------------------------------------------------------------------------------------
# Settings


def cache_root() -> Path | None:
    """The cache directory, or None when `BERT_REF_ORACLE_CACHE` disables it. ValueError when the
    variable names something that is not a directory."""
    value = os.environ.get(ENV_DIR, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        path = Path(value).expanduser()
        if "\0" in value or (path.exists() and not path.is_dir()):
            raise ValueError(f"{ENV_DIR}={value!r} is not valid: expected a directory (created if missing), or "
                             f"one of {', '.join(_OFF)} to turn the cache off")
        return path
    from bert_ref.io.hub.settings import cache_dir

    return cache_dir() / "oracle"


def limit_bytes() -> int:
    """`BERT_REF_ORACLE_CACHE_MB` in bytes (default 2048 MiB). ValueError unless it is a number of
    MiB from 0 to 1e9."""
    raw = os.environ.get(ENV_MB, "").strip()
    if not raw:
        return DEFAULT_LIMIT_MB * 2 ** 20
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not 0 <= mb <= MAX_LIMIT_MB:
        raise ValueError(f"{ENV_MB}={raw!r} is not valid: expected a number of MiB from 0 to {MAX_LIMIT_MB:g} "
                         f"(unset for the default {DEFAULT_LIMIT_MB}; 0 stores nothing)")
    return int(mb * 2 ** 20)


def check_settings() -> Path | None:
    """Validate both settings (ValueError naming the variable and the valid range); the directory,
    or None when the cache is off. Call it before any work that would use the cache."""
    root = cache_root()
    limit_bytes()
    return root


# ----------------------------------------------------------------------------------------------
# Digests


def arrays_digest(arrays: Mapping[str, Any], salt: str = "") -> str:
    """SHA-256 over `salt` and each array's name, dtype, shape and the SHA-256 of its bytes (C
    order), in name order; the arrays are hashed on the cores' threads (hashlib releases the GIL)."""
    from bert_ref.model.runtime import map_concurrent

    names = sorted(arrays)

    def one(name: str) -> str:
        a = np.ascontiguousarray(arrays[name])
        return hashlib.sha256(a.reshape(-1).view(np.uint8).data).hexdigest()

    h = hashlib.sha256(f"{salt}|".encode())
    for name, digest in zip(names, map_concurrent(one, names), strict=True):
        a = arrays[name]
        h.update(f"{name}|{a.dtype.str}|{a.dtype.name}|{tuple(a.shape)}|{digest}|".encode())
    return h.hexdigest()


def model_digest(model: Any) -> str:
    """SHA-256 of a `BertBackbone`'s config and weights (see the module docstring): weights from a
    preset directory are hashed once per change of its files, any others at every call.

    Hashing BERT-base's 438 MB takes about 0.2 s (per tensor, on the cores' threads). A model
    declared `derived` from one whose digest is kept (a preset directory's) is named by that digest
    and its number of layers; else its own weights are hashed, as any model's."""
    try:
        parent = _parents.get(model)
    except TypeError:
        parent = None
    if parent is not None and _files_signature(parent[0]) is not None:  # the parent's digest is kept: free
        return hashlib.sha256(f"the first {parent[1]} layers of|{model_digest(parent[0])}".encode()).hexdigest()
    signature = _files_signature(model)
    if signature is not None:
        try:
            known = _digests.get(model)
        except TypeError:
            known = None
        if known is not None and known[0] == signature:
            return known[1]
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    h.update(_weights_digest(model, signature).encode())
    digest = h.hexdigest()
    if signature is not None:
        try:
            _digests[model] = (signature, digest)
        except TypeError:
            pass
    return digest


def _stored_weights(model: Any) -> Mapping[str, Any]:
    """`model.weights` without running a NaN/inf check that `from_preset` deferred: hashing needs only
    the bytes, and a run is stored only after a forward, which runs the check."""
    weights = getattr(model, "_weights", None)
    return model.weights if weights is None else weights


@functools.cache
def _reader_digest() -> str:
    """SHA-256 of the checkpoint readers' source: a changed conversion is other weights."""
    h = hashlib.sha256()
    for p in sorted((Path(__file__).parents[1] / "io" / "checkpoints").glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _files_signature(model: Any) -> str | None:
    """What identifies the files `model`'s weights were read from, or None when that cannot stand
    for the weights (no preset directory, or a weight array that could be changed in place)."""
    source = getattr(model, "source", None)
    weights = _stored_weights(model)
    if not source or not Path(source).is_dir() or any(np.asarray(w).flags.writeable for w in weights.values()):
        return None
    h = hashlib.sha256(f"bert_ref {__version__} {_reader_digest()}|{Path(source).resolve()}|".encode())
    for p in sorted(Path(source).iterdir()):
        try:
            st = p.stat()
        except OSError:
            return None
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}|".encode())
    h.update("|".join(f"{n}:{np.asarray(w).dtype.str}:{np.shape(w)}" for n, w in sorted(weights.items())).encode())
    return h.hexdigest()


def _weights_digest(model: Any, signature: str | None) -> str:
    root = cache_root()
    path = None if signature is None or root is None else root / "digests" / signature
    if path is not None:
        try:
            known = path.read_text(encoding="ascii").strip()
            if re.fullmatch(r"[0-9a-f]{64}", known):
                return known
        except (OSError, UnicodeDecodeError):
            pass
    digest = arrays_digest(_stored_weights(model))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, digest)
        except OSError:  # a read-only cache: hashed again next time
            pass
    return digest


# The modules whose code decides what a forward computes (their source is part of every key),
# relative to the package.
FORWARD_MODULES = ("ops.py", "_erf_table.py", "encoder.py", "model/kernels.py", "model/runtime.py",
                   "model/precision.py", "model/config.py", "oracle/ensemble.py", "oracle/int8.py")


#: The modules whose code decides the statistics of the ensemble kept by `store_record` for a compare
#: (`bert_ref.oracle.compare.FloorSide`): their source is part of those entries' keys.
STATISTICS_MODULES = ("oracle/compare.py", "oracle/verdict.py", "oracle/blocked.py", "oracle/stats.py",
                      "oracle/keys.py", "oracle/report.py")


def _source_digest(names: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (Path(__file__).parents[1] / name).read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def code_digest() -> str:
    """SHA-256 of the source of `FORWARD_MODULES` (read once per process)."""
    return _source_digest(FORWARD_MODULES)


@functools.cache
def statistics_digest() -> str:
    """SHA-256 of the source of `STATISTICS_MODULES` (read once per process)."""
    return _source_digest(STATISTICS_MODULES)


def entry_key(model: Any, inputs: Mapping[str, Any], policy_name: str) -> str:
    """The digest naming one run: model, inputs, policy, bert_ref's version and the forward's source
    (`code_digest`). Not the outputs asked for: an entry holds the union of every output asked of
    that run so far (`bert_ref.oracle.run.oracle_outputs` adds what is missing), so a candidate
    with another set of outputs on the same inputs is a hit."""
    h = hashlib.sha256()
    h.update(f"bert_ref {__version__} {code_digest()}|{model_digest(model)}|{policy_name}|".encode())
    for name in ("token_ids", "segment_ids", "padding_mask"):
        if name in inputs and inputs[name] is not None:
            a = np.ascontiguousarray(np.asarray(inputs[name]))
            a = a.astype(bool) if name == "padding_mask" else a.astype(np.int64)
            h.update(f"|{name}|{a.shape}|".encode())
            h.update(a.data.cast("B"))
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Entries


def load(key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under `key`, verified, or None (absent, disabled, or not what `store` wrote
    for `key`: then removed where the directory allows)."""
    root = cache_root()
    if root is None:
        return None
    path = root / f"{key}{SUFFIX}"
    inode = None
    try:
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            inode = st.st_ino
            data = np.empty(st.st_size, np.uint8)
            view, got = data.data, 0
            while got < st.st_size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != st.st_size:
            raise ValueError(f"{path}: read {got} of {st.st_size} bytes (cut short while being read)")
        out = _verified(data, key, str(path))
    except (FileNotFoundError, ImportError):  # absent, or bfloat16 without ml_dtypes here: a miss, kept
        return None
    except Exception:  # a damaged or unreadable entry is a miss
        if inode is not None:
            _remove(path, inode)
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return out


def _verified(data: np.ndarray, key: str, where: str) -> dict[str, np.ndarray]:
    """The arrays of the entry `data` (a whole file), after checking its format, key and digest;
    ValueError (or another error of the reader) when any of them is wrong."""
    from bert_ref.io.checkpoints.safetensors_io import numpy_dtype, parse_header

    header, metadata, start = parse_header(data, where)
    if metadata.get("format") != FORMAT or metadata.get("key") != key:
        raise ValueError(f"{where}: not the entry for {key}")
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = numpy_dtype(info["dtype"], where)
        out[name] = data[start + begin:start + end].view(dtype).reshape(tuple(info["shape"]))  # no copy
    if arrays_digest(out, key) != metadata.get("sha256"):
        raise ValueError(f"{where}: the arrays do not match their digest")
    return out


def _remove(path: Path, inode: int | None) -> None:
    """Remove the damaged entry `path` if it is still the file read (inode) and the directory lets us."""
    try:
        if inode is None or path.stat().st_ino == inode:
            path.unlink()
    except OSError:  # gone already, or a read-only cache: skipped
        pass


def store(key: str, arrays: Mapping[str, np.ndarray]) -> Path | None:
    """Store `arrays` under `key` (atomically, with their digest), then evict down to
    `limit_bytes()`. Failing to write (a read-only disk, no space) is not an error: the run is
    simply not cached."""
    from bert_ref.io.checkpoints.safetensors_io import SafetensorsError, header_bytes

    root, limit = cache_root(), limit_bytes()
    if root is None:
        return None
    if limit == 0:
        evict(0)
        return None
    path = root / f"{key}{SUFFIX}"
    prepared = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        prepared[name] = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
    try:
        metadata = {"format": FORMAT, "key": key, "sha256": arrays_digest(prepared, key)}
        head, spans = header_bytes({k: (a.dtype, a.shape) for k, a in prepared.items()}, metadata)
    except SafetensorsError:  # a dtype safetensors cannot hold: not cached
        return None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic.open_atomic(path, durable=False) as f:
            f.write(head)
            for name in sorted(spans, key=lambda k: spans[k][0]):
                f.write(prepared[name].reshape(-1).view(np.uint8).data)
    except OSError:
        return None
    evict(limit)
    return path


#: The one array of an entry that holds a JSON record (`store_record`): its bytes, UTF-8.
RECORD = "record.json"


def load_record(key: str) -> Any:
    """The JSON value stored under `key` by `store_record`, verified as every entry is, or None
    (absent, disabled, damaged, or not a record)."""
    arrays = load(key)
    if arrays is None or set(arrays) != {RECORD} or arrays[RECORD].dtype != np.uint8:
        return None
    try:
        return json.loads(arrays[RECORD].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def store_record(key: str, value: Any) -> Path | None:
    """Store a JSON-ready `value` under `key`: an entry like a run's (`store`: atomic, with its
    digest, evicted by the same rule) whose one array `RECORD` holds the JSON text (floats exactly:
    `json` writes the shortest repr that reads back to the same double; NaN and infinities as JSON's
    NaN / Infinity)."""
    text = json.dumps(value, sort_keys=True).encode("utf-8")
    return store(key, {RECORD: np.frombuffer(text, np.uint8)})


def evict(limit: int) -> None:
    """Remove the least recently used entries until the cache holds at most `limit` bytes; also any
    entry of the format before this one (`<key>.npz`, never read), and the temporary file of an
    entry whose writer was killed (`.<key>.safetensors.XXXXXXXX.tmp`, untouched for an hour)."""
    root = cache_root()
    if root is None or not root.is_dir():
        return
    entries = []
    stale = time.time() - STALE_TEMP_S
    for p in root.iterdir():
        if fnmatch.fnmatchcase(p.name, atomic.temp_glob("?" * 64 + SUFFIX)) and _ENTRY.fullmatch(p.name[1:65]):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < stale:
                    _remove(p, None)
            continue
        if not _ENTRY.fullmatch(p.stem) or p.suffix not in (SUFFIX, ".npz"):
            continue
        if p.suffix == ".npz":
            _remove(p, None)
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        _remove(p, None)
        total -= size
