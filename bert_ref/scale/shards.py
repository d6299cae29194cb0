"""The job and the worker side: a job description, the weights' and tokenizer's identity, one
shard computed and written, a shard read back and verified.

**A shard file** (`shard-{k:05d}.safetensors`) holds records `[a, b)` of the dataset in record
order; with n records of L_i real tokens each, T = sum L_i, L = max L_i:

* `record_index` [n] int64 (a, a+1, ..., b-1), `length` [n] int32 (L_i), `offsets` [n+1] int64
  (the running sum of `length`: record i's positions are rows `offsets[i]:offsets[i+1]` of the
  position arrays), `batch` [n] int32 (the length-sorted batch each record was computed in,
  numbered in the order they ran: `--batch-tokens`);
* the inputs, as the model saw them: `token_ids`, `segment_ids`, `padding_mask` [n, L] int32,
  right-padded (`bert-ref pack` writes these alone);
* the outputs, valid positions only: `sequence_output` and `hidden_states.{i}` [T, H] (ragged,
  rows by `offsets`), `pooled_output` [n, H]; with `run --ensemble`, the same arrays of each other
  member of the policy's ensemble, named `member_key(output, member)` (`sequence_output@float16~fused`).

The policy's outputs are computed at the valid positions alone (`bert_ref.encoder.forward_valid`,
bit for bit what a padded forward gives there).

So the stored bytes are the valid elements' bytes plus the small inputs, whatever the padding.
The arrays are in a fixed order with no `__metadata__`: the same records give the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io import atomic
from bert_ref.io.errors import file_error
from bert_ref.scale.dataset import Dataset, DatasetError, Records, file_sha256, length_batches, pad_batch
from bert_ref.scale.memory import peak_rss, rss
from bert_ref.scale.options import DEFAULT_BATCH_TOKENS

MANIFEST = "manifest.json"
RUN_FORMAT = "bert_ref dataset run 2"
#: The arrays of a shard that describe its records and inputs (the rest are outputs).
RECORD_KEYS = ("record_index", "length", "offsets", "batch")
INPUT_KEYS = ("token_ids", "segment_ids", "padding_mask")
#: Separates an output from the ensemble member that computed it in a shard's array names
#: (`sequence_output@float16~fused`; `member_key`).
MEMBER_SEP = "@"


def member_key(key: str, member: str) -> str:
    """The shard array of output `key` of ensemble member `member` (`bert_ref.oracle.ensemble`)."""
    return f"{key}{MEMBER_SEP}{member}"


def ragged(key: str) -> bool:
    """Outputs stored by valid position ([T, H], rows by `offsets`): `sequence_output` and
    `hidden_states.{i}` (by the one key grammar, `bert_ref.oracle.keys`), of the run's policy or of
    an ensemble member (`member_key`)."""
    from bert_ref.oracle.keys import try_parse_key

    parsed = try_parse_key(key.partition(MEMBER_SEP)[0])
    return parsed is not None and not parsed.trace and parsed.name in ("sequence_output", "hidden_states")

LOCAL_SCHEDULERS = ("local", "processes", "synchronous")
WEIGHT_SUFFIXES = (".safetensors", ".h5", ".bin", ".pt", ".pth", ".msgpack")
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# The fields of the job that must agree for a run directory to be resumed.
JOB_FIELDS = ("weights_sha256", "tokenizer_sha256", "config", "policy", "outputs", "dataset_sha256", "num_records",
              "shard_size", "batch_tokens", "sequence_length", "truncate")


def need_dask() -> Any:
    try:
        import dask
    except ImportError:
        raise ImportError('dataset runs need Dask: install it with `pip install "bert-ref[scale]"`') from None
    return dask


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"





# ----------------------------------------------------------------------------------------------
# The job and the worker side


@dataclasses.dataclass(frozen=True)
class ScaleJob:
    """What a worker needs to compute shards: small and picklable (no weights, no record data).

    Attributes:
        preset_dir: the preset's local directory (the same path on every worker).
        weights_sha256: sha256 of the preset's weight files; each worker checks it once.
        policy: the dtype policy name.
        outputs: which outputs to write (`OUTPUT_CHOICES`); none: the inputs alone (`pack`), and
            no model is loaded.
        dataset: the dataset, cut down by `Dataset.part` to one shard when sent to a worker.
        max_length: the longest record allowed.
        truncate: cut longer text records instead of failing.
        batch_tokens: records per batch x longest length in it stays below this.
        threads: BLAS / bert_ref threads per worker (None: leave them as they are).
        out: the run directory (None: nothing is written, see `compare_dataset`).
        tokenizer_sha256: `tokenizer_sha256` of the preset (None: it has no vocabulary); each
            worker checks it before tokenizing.
        vocabulary_size, num_segments: the model's, to check ids against.
    """

    preset_dir: str
    weights_sha256: str
    policy: str
    outputs: tuple
    dataset: Dataset
    max_length: int
    truncate: bool = False
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    threads: int | None = None
    out: str | None = None
    tokenizer_sha256: str | None = None
    vocabulary_size: int = 0
    num_segments: int = 0
    members: tuple = ()  # ensemble members stored besides the policy's run (`run --ensemble`)


def ensemble_members(policy: str) -> tuple[Any, ...]:
    """The ensemble (`bert_ref.oracle.ensemble.members`) whose floor is the run of `policy`: () for
    a policy that is no precision's floor, or one without variants (float64)."""
    from bert_ref.model.precision import PRECISIONS
    from bert_ref.oracle import ensemble

    precision = next((p for p, row in PRECISIONS.items() if row.policy == policy), None)
    if precision is None or precision == "float64":
        return ()
    found = ensemble.members(precision)
    return found if found and found[0].policy.name == policy else ()


_WORKER: dict[Any, Any] = {}  # per-process cache: models, tokenizers, the thread setting


def weight_files(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)


def weights_sha256(directory: str | os.PathLike) -> str:
    """sha256 of a preset's weight files (names and bytes); of all its files if none is a weight file."""
    d = Path(directory)
    files = weight_files(d) or sorted(p for p in d.rglob("*") if p.is_file())
    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(d)).encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()


def tokenizer_sha256(directory: str | os.PathLike) -> str | None:
    """sha256 of what the preset's tokenizer does: its settings and the bytes of every file they
    were read from (`bert_ref.text.tokenizer.preset_tokenizer_settings`); None without a vocabulary."""
    from bert_ref.text.tokenizer import preset_tokenizer_settings

    try:
        settings = preset_tokenizer_settings(directory)
    except FileNotFoundError:
        return None
    h = hashlib.sha256(json.dumps(settings.options(), sort_keys=True).encode() + b"\n")
    for f in settings.files:
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def _trim_freed_memory() -> None:
    """Have glibc return freed memory above 64 KiB to the system at once (what Dask's nanny sets for
    its workers with MALLOC_TRIM_THRESHOLD_): batches of varying shapes otherwise leave the heap
    fragmented, and a worker's peak RSS grows by about one activation (measured: 482 -> 414 MiB
    for BERT-small float64 shards). Linux/glibc only; elsewhere nothing happens."""
    if _WORKER.get("trim") or not sys.platform.startswith("linux"):
        return
    _WORKER["trim"] = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-1, 65536)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def set_threads(threads: int | None) -> None:
    """BLAS threads (threadpoolctl, when installed; else the *_NUM_THREADS variables the worker was
    started with) and bert_ref's own elementwise threads, once per process."""
    _trim_freed_memory()
    if threads is None or _WORKER.get("threads") == threads:
        return
    try:
        from threadpoolctl import threadpool_limits

        _WORKER["limits"] = threadpool_limits(limits=threads)
    except ImportError:
        pass
    from bert_ref.model import runtime

    runtime.THREADS = threads  # the fast paths' thread count (batch split, row chunks)
    _WORKER["threads"] = threads


def worker_model(job: ScaleJob) -> tuple[Any, float]:
    """The job's backbone, loaded (and its weights checked) once per process; (model, load seconds)."""
    key = (job.preset_dir, job.policy, job.weights_sha256)
    if key in _WORKER:
        return _WORKER[key], 0.0
    from bert_ref.backbone import BertBackbone

    t = time.perf_counter()
    found = weights_sha256(job.preset_dir)
    if found != job.weights_sha256:
        raise OSError(f"{job.preset_dir} on {socket.gethostname()}: the weights' sha256 is {found}, but the job "
                      f"was started with {job.weights_sha256}: every worker must see the same preset")
    model = BertBackbone.from_preset(job.preset_dir, dtype=job.policy)
    _WORKER[key] = model
    return model, time.perf_counter() - t


def worker_tokenizer(job: ScaleJob) -> Any:
    key = ("tokenizer", job.preset_dir, job.tokenizer_sha256)
    if key not in _WORKER:
        from bert_ref.text.tokenizer import BertTokenizer

        found = tokenizer_sha256(job.preset_dir)
        if found != job.tokenizer_sha256:
            raise OSError(f"{job.preset_dir} on {socket.gethostname()}: the tokenizer's sha256 is {found}, but the "
                          f"job was started with {job.tokenizer_sha256}: its vocabulary or settings changed")
        _WORKER[key] = BertTokenizer.from_preset(job.preset_dir)
    return _WORKER[key]


class _Layout:
    """Where each record's values go: rows of `[n, ...]` arrays, or `offsets` rows of ragged ones."""

    def __init__(self, specs: Mapping[str, tuple[Any, tuple[int, ...]]], offsets: np.ndarray):
        self.specs = {k: (np.dtype(d), tuple(shape)) for k, (d, shape) in specs.items()}
        self.offsets = offsets

    def start_row(self, key: str, row: int) -> int:
        return int(self.offsets[row]) if ragged(key) else row


class _Arrays:
    """Where `compute_outputs` puts the arrays: in memory (see `_ShardFile` for a file)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def open(self, layout: _Layout) -> None:
        self.layout = layout
        self.arrays = {k: np.zeros(shape, dtype) for k, (dtype, shape) in layout.specs.items()}

    def put(self, key: str, row: int, value: np.ndarray) -> None:
        """Record `row`'s values: [m, H] (its m valid positions) or [H]."""
        at = self.layout.start_row(key, row)
        if ragged(key):
            self.arrays[key][at:at + value.shape[0]] = value
        else:
            self.arrays[key][at] = value

    def put_all(self, key: str, value: np.ndarray) -> None:
        self.arrays[key][...] = value


def _pwrite(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _ShardFile:
    """A safetensors file written in place as the outputs are computed, so that no shard-sized
    buffer is held in memory: the header first (shapes are known in advance), then each record's
    rows at their offsets (`os.pwrite`), into a temporary file of `bert_ref.io.atomic`. `commit`
    hashes it and renames it into place (flushed and fsynced by the atomic writer); `close` removes
    the temporary file unless committed.

    The arrays are in a fixed order (widest dtype first, so every array is aligned; then by name)
    and there is no `__metadata__`: the same arrays always give the same bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.file: atomic.AtomicFile | None = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """`os.pwrite` / `os.ftruncate` errors name no file: give them the shard's path (ENOSPC, EFBIG)."""
        try:
            yield
        except OSError as e:
            raise (file_error(e, self.path, "write") if e.filename is None else e) from None

    def open(self, layout: _Layout) -> None:
        with self._writing():
            self._open(layout)

    def _open(self, layout: _Layout) -> None:
        from bert_ref.io.checkpoints.safetensors_io import header_bytes

        self.layout_ = layout
        specs = layout.specs
        prefix, spans = header_bytes(specs)
        self.places: dict[str, tuple[int, int, np.dtype]] = {}  # key -> (data offset, bytes per row, dtype)
        for name, (begin, end) in spans.items():
            rows = specs[name][1][:1]
            self.places[name] = (begin, (end - begin) // rows[0] if rows and rows[0] else 0, specs[name][0])
        self.start = len(prefix)
        self.size = self.start + max((end for _, end in spans.values()), default=0)
        self.file = atomic.AtomicFile(self.path)
        _pwrite(self._fd(), prefix, 0)
        os.ftruncate(self._fd(), self.size)

    def _fd(self) -> int:
        if self.file is None or self.file.fd is None:
            raise ValueError(f"{self.path}: not open")
        return self.file.fd

    def _at(self, key: str, row: int, value: np.ndarray) -> tuple[np.ndarray, int]:
        offset, row_bytes, dtype = self.places[key]
        value = np.ascontiguousarray(value, dtype=dtype)
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        return value, self.start + offset + row * row_bytes

    def put(self, key: str, row: int, value: np.ndarray) -> None:
        value, at = self._at(key, self.layout_.start_row(key, row), value)
        with self._writing():
            _pwrite(self._fd(), value.reshape(-1).view(np.uint8), at)

    def put_all(self, key: str, value: np.ndarray) -> None:
        value, at = self._at(key, 0, value)
        with self._writing():
            _pwrite(self._fd(), value.reshape(-1).view(np.uint8), at)

    def commit(self) -> tuple[str, int]:
        """Hash (reading the file back), flush and rename into place; (sha256, bytes)."""
        self._fd()
        assert self.file is not None
        sha = file_sha256(self.file.tmp)
        self.file.commit()
        self.file = None
        return sha, self.size

    def close(self) -> None:
        """Remove the temporary file unless committed."""
        if self.file is not None:
            self.file.discard()
            self.file = None


def shard_specs(job: ScaleJob, records: Records, hidden: int, num_layers: int,
                dtype: Any) -> tuple[_Layout, list[np.ndarray]]:
    """The arrays of a shard of `records` (see the module docstring) and its length batches."""
    n, width = len(records.index), int(records.lengths.max())
    total = int(records.lengths.sum())
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(records.lengths, out=offsets[1:])
    specs: dict[str, tuple[Any, tuple[int, ...]]] = {
        "record_index": (np.int64, (n,)), "length": (np.int32, (n,)), "offsets": (np.int64, (n + 1,)),
        "batch": (np.int32, (n,)), **{k: (np.int32, (n, width)) for k in INPUT_KEYS}}
    if "sequence_output" in job.outputs:
        specs["sequence_output"] = (dtype, (total, hidden))
    if "pooled_output" in job.outputs:
        specs["pooled_output"] = (dtype, (n, hidden))
    if "hidden_states" in job.outputs:
        specs.update({f"hidden_states.{i}": (dtype, (total, hidden)) for i in range(num_layers + 1)})
    if job.members:
        policies = {m.name: m.policy for m in ensemble_members(job.policy)}
        outputs = [k for k in specs if k not in RECORD_KEYS and k not in INPUT_KEYS]
        for name in job.members:
            specs.update({member_key(k, name): (policies[name].compute_dtype, specs[k][1]) for k in outputs})
    return _Layout(specs, offsets), length_batches(records.lengths, job.batch_tokens)


def compute_outputs(job: ScaleJob, start: int, stop: int,
                    sink: Any = None) -> tuple[Records, dict[str, np.ndarray], dict[str, float]]:
    """Records `[start, stop)` through the model: (records, the shard's arrays, timings).

    The arrays are the shard file's (see the module docstring). With a `sink` (a `_ShardFile`)
    they are written there as they are computed and the returned dict is empty. A job without
    outputs (`pack`) loads no model."""
    from bert_ref.encoder import forward_valid

    set_threads(job.threads)
    model, t_load = worker_model(job) if job.outputs else (None, 0.0)
    t0 = time.perf_counter()
    records = job.dataset.read(start, stop, vocabulary_size=job.vocabulary_size, num_segments=job.num_segments,
                               max_length=job.max_length, tokenizer=lambda: worker_tokenizer(job),
                               truncate=job.truncate)
    t1 = time.perf_counter()
    if model is not None:
        config, dtype = model.config, model.dtype_policy.compute_dtype
        layout, batches = shard_specs(job, records, config.hidden_dim, config.num_layers, dtype)
    else:
        layout, batches = shard_specs(job, records, 0, 0, np.float32)
    out = sink if sink is not None else _Arrays()
    out.open(layout)
    batch_of = np.zeros(len(records.index), np.int32)
    for b, rows in enumerate(batches):
        batch_of[rows] = b
    padded = pad_batch(records, np.arange(len(records.index)))  # [n, L] each
    out.put_all("record_index", records.index.astype(np.int64))
    out.put_all("length", records.lengths.astype(np.int32))
    out.put_all("offsets", layout.offsets)
    out.put_all("batch", batch_of)
    for key in INPUT_KEYS:
        out.put_all(key, padded[key].astype(np.int32))
    outputs = [k for k in layout.specs if k not in RECORD_KEYS and k not in INPUT_KEYS and MEMBER_SEP not in k]
    policies = {m.name: m.policy for m in ensemble_members(job.policy)} if job.members else {}
    for rows in batches if outputs else []:
        assert model is not None
        batch = pad_batch(records, rows)
        # The valid positions alone (`encoder.forward_valid`: no work on padding, the same bits).
        valid = forward_valid(model.prepared_weights(), model.config, batch, dtype=model.dtype_policy,
                              output_hidden_states="hidden_states" in job.outputs)
        offsets = valid["offsets"]
        result = {"sequence_output": valid["sequence_output"], "pooled_output": valid["pooled_output"],
                  **{f"hidden_states.{i}": h for i, h in enumerate(valid["hidden_states"] or [])}}
        runs = [("", result)]
        for name in job.members:  # the ensemble's other runs, as `bert-ref compare` computes them
            from bert_ref.oracle.run import oracle_outputs

            runs.append((name, oracle_outputs(model, batch, outputs, dtype=policies[name])))
        for name, values in runs:
            for key in outputs:
                value = values[key]  # [b, L_batch, H], [T_batch, H] (valid positions) or [b, H]
                where = member_key(key, name) if name else key
                want = layout.specs[where][0]
                if value.dtype != want:
                    raise TypeError(f"{key} came out as {value.dtype}; the {name or job.policy} policy computes in "
                                    f"{want}")
                for j, r in enumerate(rows):
                    if value.ndim == 3:
                        part = value[j, : int(records.lengths[r])]
                    elif ragged(key) and not name:
                        part = value[int(offsets[j]):int(offsets[j + 1])]
                    else:
                        part = value[j]
                    out.put(where, int(r), part)
    t2 = time.perf_counter()
    return records, (out.arrays if sink is None else {}), {"load_s": t_load, "read_s": t1 - t0, "compute_s": t2 - t1}


def compute_shard(job: ScaleJob, shard: int, start: int, stop: int) -> dict[str, Any]:
    """The task: compute records `[start, stop)` and write `shard-{shard}.safetensors` into
    `job.out` (temporary name, then rename). Returns the manifest entry of the shard."""
    t_start = time.time()
    rss_start = rss()
    if job.out is None:
        raise ValueError("compute_shard needs a job with an output directory (job.out)")
    path = Path(job.out) / shard_name(shard)
    sink = _ShardFile(path)
    try:
        _, _, timings = compute_outputs(job, start, stop, sink)
        t = time.perf_counter()
        sha, size = sink.commit()
        timings["commit_s"] = time.perf_counter() - t
    finally:
        sink.close()
    timings["task_s"] = time.time() - t_start
    return {"shard": shard, "records": [start, stop], "file": path.name, "sha256": sha, "bytes": size,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "started": t_start,
            "rss_start_bytes": rss_start, "peak_rss_bytes": peak_rss(),
            "timings": {k: round(v, 6) for k, v in timings.items()}}


def verify_shard(directory: str | os.PathLike, entry: Mapping[str, Any] | None) -> str | None:
    """None when the shard `entry` describes is on disk with its sha256; else why not."""
    if not entry or not entry.get("sha256"):
        return "not finished"
    path = Path(directory) / entry["file"]
    if not path.is_file():
        return "file missing"
    size = path.stat().st_size
    if size != entry.get("bytes"):
        return f"size {size} bytes, manifest says {entry.get('bytes')} (truncated or corrupt)"
    if file_sha256(path) != entry["sha256"]:
        return "sha256 differs from the manifest's (corrupt)"
    return None


@dataclasses.dataclass
class Shard:
    """A shard file read back (memory-mapped): its records and arrays (see the module docstring)."""

    path: Path
    arrays: dict[str, np.ndarray]

    @property
    def index(self) -> np.ndarray:
        return self.arrays["record_index"]

    @property
    def lengths(self) -> np.ndarray:
        return self.arrays["length"].astype(np.int64)

    @property
    def offsets(self) -> np.ndarray:
        return self.arrays["offsets"]

    def record(self, key: str, j: int) -> np.ndarray:
        """Row `j`'s values of `key`: [L_j, H] for a ragged output, else its row."""
        if ragged(key):
            return self.arrays[key][int(self.offsets[j]):int(self.offsets[j + 1])]
        return self.arrays[key][j]

    def padded(self, key: str, rows: Sequence[int] | np.ndarray, width: int | None = None) -> np.ndarray:
        """`key` for rows `rows` as a [b, W, H] array padded with zeros (W: their longest length, or
        `width`); non-ragged arrays as [b, ...]."""
        rows = np.asarray(rows, np.int64)
        arr = self.arrays[key]
        if not ragged(key):
            return arr[rows]
        w = int(self.lengths[rows].max()) if width is None else width
        out = np.zeros((len(rows), w, arr.shape[1]), arr.dtype)
        for i, j in enumerate(rows):
            n = min(int(self.lengths[j]), w)
            out[i, :n] = arr[int(self.offsets[j]):int(self.offsets[j]) + n]
        return out


def read_shard(path: str | os.PathLike, start: int | None = None, stop: int | None = None) -> Shard:
    """A shard file, checked to hold records `[start, stop)` in order with consistent offsets (a
    swapped or foreign shard whose manifest entry agrees is caught here).

    Raises:
        DatasetError: naming the file and what is inconsistent.
    """
    from bert_ref.io.checkpoints.safetensors_io import read_safetensors

    path = Path(path)
    try:
        arrays, _ = read_safetensors(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read the shard ({' '.join(str(e).split())})") from None
    missing = [k for k in RECORD_KEYS if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: not a {RUN_FORMAT!r} shard (no {missing[0]}); rerun `bert-ref run` into an "
                           "empty --out")
    index, lengths, offsets = arrays["record_index"], arrays["length"], arrays["offsets"]
    n = index.shape[0]
    expected = None if start is None or stop is None else np.arange(start, stop)
    if expected is not None and (n != len(expected) or not np.array_equal(index, expected)):
        first = int(index[0]) if n else None
        raise DatasetError(f"{path}: holds records starting at {first} ({n} records), but the manifest places it at "
                           f"records [{start}, {stop}): a swapped or foreign shard; rerun `bert-ref run` to "
                           "recompute it")
    if offsets.shape != (n + 1,) or offsets[0] != 0 or not np.array_equal(np.diff(offsets), lengths):
        raise DatasetError(f"{path}: offsets do not match length: a corrupt shard")
    for k, v in arrays.items():
        rows = int(offsets[-1]) if ragged(k) else (n + 1 if k == "offsets" else n)
        if v.shape[:1] != (rows,):
            raise DatasetError(f"{path}: {k} has shape {v.shape}, expected {rows} rows: a corrupt shard")
    return Shard(path, arrays)
