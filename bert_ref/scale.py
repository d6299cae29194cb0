"""Dataset-scale runs on Dask: sharded, checksummed, resumable; from one laptop to a cluster.

    bert-ref run PRESET --dataset IN --out DIR [--dtype float64] [--outputs sequence_output,pooled_output]
        [--shard-size N] [--scheduler local|processes|synchronous|tcp://HOST:8786] [--workers N]
    bert-ref compare PRESET --dataset IN --candidate DIR_OR_FILES [--reference RUN_DIR] [--truth]

**The job.** The dataset (see `bert_ref.dataset`) is cut into shards of `shard_size` consecutive
records. Each shard is one Dask task: the worker reads its records from the dataset path itself,
sorts them by length into batches of at most `batch_tokens` tokens (little padding), runs
`BertBackbone` on each batch and writes the outputs back in record order to
`DIR/shard-{k:05d}.safetensors`. Only a small job description travels through the scheduler:
workers load the preset from its directory (memory-mapped safetensors, so weights stored in the
policy's dtype are never copied; on a cluster the directory must be on storage every worker sees,
at the same path) and check its sha256 once per process.

**A shard file** holds `record_index` [n] (int64, ascending), `length` [n] (int32, real tokens) and
the outputs: `sequence_output` [n, L, H], `pooled_output` [n, H], `hidden_states.{i}` [n, L, H],
with L the longest record of the shard. Positions at or beyond a record's length are not computed
and hold 0. Written to a temporary name, flushed and renamed: a killed run never leaves a partial
file under a shard's name.

**manifest.json** holds the job (preset, the weights' sha256, config, policy, outputs, the dataset's
sha256, record count, shard size, sequence length), the bert_ref version, and per shard its record
range, file, sha256, size, worker and timings. It is rewritten (atomically) as shards finish.

**Resume.** Rerunning the same command skips every shard the manifest lists whose file still has
the recorded sha256; missing, truncated or corrupt shards are recomputed. A different job in the
same directory is an error naming the field that differs.

**Threads.** Each worker runs one shard at a time with `threads` BLAS / bert_ref threads; keep
workers x threads <= cores. `local` runs shards on `workers` threads of this process (default 1,
with every core for its BLAS); `processes` starts `workers` processes (default one per core, 1
thread each); a Dask cluster's workers use `threads` (default 1): start them with `--nthreads 1`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .compare import DEFAULT_ATOL, DEFAULT_RTOL, _json_safe
from .dataset import Dataset, DatasetError, Records, file_sha256, length_batches, open_dataset, pad_batch
from .scale_args import DEFAULT_BATCH_TOKENS, DEFAULT_SHARD_SIZE, OUTPUT_CHOICES

__all__ = ["run_dataset", "compare_dataset", "ScaleJob", "compute_shard", "verify_shard", "MANIFEST",
           "DEFAULT_SHARD_SIZE", "DEFAULT_BATCH_TOKENS", "OUTPUT_CHOICES"]

MANIFEST = "manifest.json"
RUN_FORMAT = "bert_ref dataset run 1"
LOCAL_SCHEDULERS = ("local", "processes", "synchronous")
WEIGHT_SUFFIXES = (".safetensors", ".h5", ".bin", ".pt", ".pth", ".msgpack")
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# The fields of the job that must agree for a run directory to be resumed.
_JOB_FIELDS = ("weights_sha256", "config", "policy", "outputs", "dataset_sha256", "num_records", "shard_size",
               "sequence_length", "truncate")


def _need_dask() -> Any:
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
        outputs: which outputs to write (`OUTPUT_CHOICES`).
        dataset: the dataset, cut down by `Dataset.part` to one shard when sent to a worker.
        max_length: the longest record allowed.
        truncate: cut longer text records instead of failing.
        batch_tokens: records per batch x longest length in it stays below this.
        threads: BLAS / bert_ref threads per worker (None: leave them as they are).
        out: the run directory (None: nothing is written, see `compare_dataset`).
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


def _set_threads(threads: int | None) -> None:
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
    import importlib

    for name in ("bert_ref.kernels", "bert_ref.ops"):  # the fast paths' thread count (batch split, row chunks)
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "THREADS"):
            setattr(module, "THREADS", threads)  # noqa: B010 - not every module of this name has it
    _WORKER["threads"] = threads


def _model(job: ScaleJob) -> tuple[Any, float]:
    """The job's backbone, loaded (and its weights checked) once per process; (model, load seconds)."""
    key = (job.preset_dir, job.policy, job.weights_sha256)
    if key in _WORKER:
        return _WORKER[key], 0.0
    from .backbone import BertBackbone

    t = time.perf_counter()
    found = weights_sha256(job.preset_dir)
    if found != job.weights_sha256:
        raise OSError(f"{job.preset_dir} on {socket.gethostname()}: the weights' sha256 is {found}, but the job "
                      f"was started with {job.weights_sha256}: every worker must see the same preset")
    model = BertBackbone.from_preset(job.preset_dir, dtype=job.policy)
    _WORKER[key] = model
    return model, time.perf_counter() - t


def _tokenizer(job: ScaleJob) -> Any:
    key = ("tokenizer", job.preset_dir)
    if key not in _WORKER:
        from .tokenizer import BertTokenizer

        _WORKER[key] = BertTokenizer.from_preset(job.preset_dir)
    return _WORKER[key]


class _Arrays:
    """Where `compute_outputs` puts the outputs: arrays in memory (see `_ShardFile` for a file)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def open(self, specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        self.arrays = {k: np.zeros(shape, dtype) for k, (dtype, shape) in specs.items()}

    def put(self, key: str, row: int, value: np.ndarray) -> None:
        """Record `row`'s values: [m, H] (its first m positions) or [H]."""
        self.arrays[key][row, : value.shape[0]] = value

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
    rows at their offsets (`os.pwrite`; never-written positions read as 0). `commit` flushes it,
    hashes it and renames it from its temporary name to `path`.

    The arrays are in a fixed order (widest dtype first, so every array is aligned; then by name)
    and there is no `__metadata__`: the same arrays always give the same bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.fd: int | None = None

    def open(self, specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        from .checkpoints.safetensors_io import _code_for

        header, offset = {}, 0
        self.layout: dict[str, tuple[int, int, np.dtype]] = {}  # key -> (data offset, bytes per row, dtype)
        for name in sorted(specs, key=lambda k: (-np.dtype(specs[k][0]).itemsize, k)):
            dtype, shape = np.dtype(specs[name][0]), tuple(specs[name][1])
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _code_for(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.layout[name] = (offset, nbytes // shape[0] if shape and shape[0] else 0, dtype)
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data start 8-byte aligned, as the safetensors writer does
        self.start = 8 + len(text)
        self.size = self.start + offset
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _pwrite(self.fd, len(text).to_bytes(8, "little") + text, 0)
        os.ftruncate(self.fd, self.size)

    def _fd(self) -> int:
        if self.fd is None:
            raise ValueError(f"{self.tmp}: not open")
        return self.fd

    def _at(self, key: str, row: int, value: np.ndarray) -> tuple[np.ndarray, int]:
        offset, row_bytes, dtype = self.layout[key]
        value = np.ascontiguousarray(value, dtype=dtype)
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        return value, self.start + offset + row * row_bytes

    def put(self, key: str, row: int, value: np.ndarray) -> None:
        value, at = self._at(key, row, value)
        _pwrite(self._fd(), value.reshape(-1).view(np.uint8), at)

    def put_all(self, key: str, value: np.ndarray) -> None:
        value, at = self._at(key, 0, value)
        _pwrite(self._fd(), value.reshape(-1).view(np.uint8), at)

    def commit(self) -> tuple[str, int]:
        """Flush, hash (reading the file back) and rename into place; (sha256, bytes)."""
        fd = self._fd()
        os.fsync(fd)
        os.close(fd)
        self.fd = None
        sha = file_sha256(self.tmp)
        os.replace(self.tmp, self.path)
        return sha, self.size

    def close(self) -> None:
        """Remove the temporary file unless committed."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp.exists():
            self.tmp.unlink()


def compute_outputs(job: ScaleJob, start: int, stop: int,
                    sink: Any = None) -> tuple[Records, dict[str, np.ndarray], dict[str, float]]:
    """Records `[start, stop)` through the model: (records, arrays in record order, timings).

    The arrays are `record_index`, `length` and the outputs (see the module docstring). With a
    `sink` (a `_ShardFile`) they are written there as they are computed and the returned dict is
    empty."""
    from .files import flatten_outputs

    _set_threads(job.threads)
    model, t_load = _model(job)
    t0 = time.perf_counter()
    config = model.config
    records = job.dataset.read(start, stop, vocabulary_size=config.vocabulary_size, num_segments=config.num_segments,
                               max_length=job.max_length, tokenizer=lambda: _tokenizer(job), truncate=job.truncate)
    t1 = time.perf_counter()
    n, width, hidden = len(records.index), int(records.lengths.max()), config.hidden_dim
    dtype = model.dtype_policy.compute_dtype
    specs: dict[str, tuple[Any, tuple[int, ...]]] = {"record_index": (np.int64, (n,)), "length": (np.int32, (n,))}
    if "sequence_output" in job.outputs:
        specs["sequence_output"] = (dtype, (n, width, hidden))
    if "pooled_output" in job.outputs:
        specs["pooled_output"] = (dtype, (n, hidden))
    if "hidden_states" in job.outputs:
        specs.update({f"hidden_states.{i}": (dtype, (n, width, hidden)) for i in range(config.num_layers + 1)})
    out = sink if sink is not None else _Arrays()
    out.open(specs)
    out.put_all("record_index", records.index.astype(np.int64))
    out.put_all("length", records.lengths.astype(np.int32))
    for rows in length_batches(records.lengths, job.batch_tokens):
        result = flatten_outputs(model(pad_batch(records, rows), output_hidden_states="hidden_states" in job.outputs))
        for key in specs:
            if key in ("record_index", "length"):
                continue
            value = result[key]  # [b, L_batch, H] or [b, H]
            if value.dtype != np.dtype(dtype):
                raise TypeError(f"{key} came out as {value.dtype}; the {job.policy} policy computes in "
                                f"{np.dtype(dtype)}")
            for j, r in enumerate(rows):
                out.put(key, int(r), value[j, : int(records.lengths[r])] if value.ndim == 3 else value[j])
    t2 = time.perf_counter()
    return records, (out.arrays if sink is None else {}), {"load_s": t_load, "read_s": t1 - t0, "compute_s": t2 - t1}


def _proc_status(field: str) -> int | None:
    """A size field of /proc/self/status (Linux) in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss() -> int | None:
    """This process's resident set size in bytes (Linux), or None."""
    return _proc_status("VmRSS")


def _peak_rss() -> int | None:
    """This process's peak resident set size in bytes (Linux's VmHWM), or None. (Not getrusage's
    ru_maxrss: a spawned process inherits its parent's through fork and exec.)"""
    return _proc_status("VmHWM")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name (a reader never sees a partial file)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def compute_shard(job: ScaleJob, shard: int, start: int, stop: int) -> dict[str, Any]:
    """The Dask task: compute records `[start, stop)` and write `shard-{shard}.safetensors` into
    `job.out` (temporary name, then rename). Returns the manifest entry of the shard."""
    t_start = time.time()
    rss_start = _rss()
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
            "rss_start_bytes": rss_start, "peak_rss_bytes": _peak_rss(),
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


# ----------------------------------------------------------------------------------------------
# Running a job on a scheduler


class _Engine:
    """Runs `fn(*args)` for each task on one of Dask's schedulers and calls `done(index, result)` in
    this process as each finishes. The first task error is raised (the rest are cancelled)."""

    def __init__(self, scheduler: str, workers: int | None, threads: int | None):
        self.scheduler = scheduler
        self.distributed = scheduler not in LOCAL_SCHEDULERS
        if self.distributed and "://" not in scheduler:
            raise ValueError(f"--scheduler {scheduler!r}: use local, processes, synchronous, or a Dask scheduler "
                             "address such as tcp://host:8786")
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        n = cores()
        self.workers: int | None
        if scheduler == "synchronous":
            self.workers = 1
        elif scheduler == "local":
            self.workers = workers or 1
        elif scheduler == "processes":
            self.workers = workers or n
        else:
            self.workers = workers  # the cluster's
        if threads is None and not self.distributed and self.workers is not None:
            threads = max(1, n // self.workers)
        self.threads = threads if threads is not None else (1 if self.distributed else None)

    def describe(self) -> str:
        if self.distributed:
            return f"Dask cluster at {self.scheduler}, {self.threads} thread(s) per task"
        what = {"local": "thread(s)", "processes": "process(es)", "synchronous": "(in this thread)"}[self.scheduler]
        return f"{self.scheduler}: {self.workers} {what}, {self.threads} BLAS thread(s) each"

    def run(self, fn: Callable, tasks: Sequence[tuple], done: Callable[[int, Any], None]) -> None:
        if not tasks:
            return
        if self.distributed:
            return self._run_distributed(fn, tasks, done)
        dask = _need_dask()
        from dask.callbacks import Callback

        names = {}
        delayed = []
        for i, args in enumerate(tasks):
            d = dask.delayed(fn, pure=False)(*args, dask_key_name=f"bert-ref-task-{i}-{uuid.uuid4().hex[:8]}")
            names[d.key] = i
            delayed.append(d)

        def posttask(key: object, result: Any, dsk: object, state: object, worker_id: object) -> None:
            if key in names:
                done(names[key], result)

        options: dict[str, Any] = {"scheduler": {"local": "threads"}.get(self.scheduler, self.scheduler)}
        if self.scheduler != "synchronous":
            options["num_workers"] = self.workers
        if self.scheduler == "processes":
            options["chunksize"] = 1  # one shard per dispatch (dask batches 6 by default: 1 process did all)
        saved = {k: os.environ.get(k) for k in _BLAS_ENV}
        if self.scheduler == "processes":  # spawned workers read these before NumPy starts its BLAS
            os.environ.update({k: str(self.threads) for k in _BLAS_ENV})
        try:
            with Callback(posttask=posttask):
                dask.compute(*delayed, **options)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _run_distributed(self, fn: Callable, tasks: Sequence[tuple], done: Callable[[int, Any], None]) -> None:
        _need_dask()
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise ImportError("a Dask cluster needs dask.distributed: install it with "
                              '`pip install "bert-ref[scale]"`') from None
        client = Client(self.scheduler, timeout="30s")
        try:
            token = uuid.uuid4().hex[:8]
            futures = {client.submit(fn, *args, key=f"bert-ref-task-{i}-{token}", pure=False): i
                       for i, args in enumerate(tasks)}
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                client.cancel(list(futures))
                raise
        finally:
            client.close()


class _Progress:
    """A tqdm bar (records/s, ETA) on a terminal; nothing otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool | None):
        self.bar = None
        if enabled is None:
            quiet = os.environ.get("BERT_REF_QUIET", "").strip().lower() in ("1", "true", "yes", "on")
            enabled = sys.stderr.isatty() and not quiet
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=initial, unit="rec", desc="records", file=sys.stderr, smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------
# run


def _resolve(preset: str) -> Path:
    from . import hub

    return Path(hub.resolve(preset))


def _prepare(preset: str, dataset: str | os.PathLike, *, dtype: Any, sequence_length: int | None,
             truncate: bool, outputs: Sequence[str], batch_tokens: int, threads: int | None,
             out: str | None) -> tuple[ScaleJob, dict[str, Any], Any]:
    from . import checkpoints
    from .precision import get_policy

    outputs = tuple(outputs)
    bad = [o for o in outputs if o not in OUTPUT_CHOICES]
    if bad or not outputs:
        raise ValueError(f"--outputs {','.join(outputs)!r}: choose from {', '.join(OUTPUT_CHOICES)}")
    if batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be >= 1, got {batch_tokens}")
    policy = get_policy(dtype)
    directory = _resolve(preset)
    ckpt = checkpoints.load_preset_dir(directory, load_weights=False)
    config = ckpt.config
    top = config.max_sequence_length
    if sequence_length is None:
        sequence_length = top
    elif not 2 <= sequence_length <= top:
        raise ValueError(f"--sequence-length {sequence_length} is outside [2, {top}]: max_sequence_length is {top}")
    ds = open_dataset(dataset)
    job = ScaleJob(str(directory.resolve()), weights_sha256(directory), policy.name, outputs, ds, sequence_length,
                   truncate, batch_tokens, threads, out)
    fields = {"preset": preset, "preset_dir": job.preset_dir, "weights_sha256": job.weights_sha256,
              "config": config.to_dict(), "policy": policy.name, "outputs": list(outputs),
              "dataset": str(dataset), "dataset_kind": ds.kind, "dataset_sha256": ds.sha256(),
              "num_records": ds.num_records, "sequence_length": sequence_length, "truncate": truncate}
    return job, fields, ckpt


def _write_json_atomic(path: Path, obj: Any) -> None:
    _write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def run_dataset(
    preset: str,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: Any = None,
    outputs: Sequence[str] = ("sequence_output", "pooled_output"),
    shard_size: int = DEFAULT_SHARD_SIZE,
    scheduler: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    sequence_length: int | None = None,
    truncate: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run `preset` over every record of `dataset`, writing shards and `manifest.json` into `out`.

    Args:
        preset: a built-in name, local directory, `kaggle://...` or `hf://...`.
        dataset: a dataset path (see `bert_ref.dataset`).
        out: the run directory (created; resumed when it holds a manifest of the same job).
        dtype: the policy (default float32; "float64" is the truth).
        outputs: any of "sequence_output", "pooled_output", "hidden_states".
        shard_size: records per shard (one task, one file).
        scheduler: "local" (threads), "processes", "synchronous", or a Dask scheduler address.
        workers: threads or processes of the local schedulers.
        threads: BLAS threads per worker (default: cores // workers locally, 1 on a cluster).
        sequence_length: the longest record allowed (default: the model's max_sequence_length).
        truncate: cut text records longer than `sequence_length` instead of failing.
        batch_tokens: records are batched by length with records x longest length <= this.
        progress: a progress bar on stderr (None: when stderr is a terminal).
        log: called with one line per event (resumed shards, recomputed shards, the summary).

    Returns:
        The manifest (also written to `out/manifest.json`).

    Examples:

    >>> manifest = run_dataset("bert_tiny_en_uncased", "dev.jsonl", "truth/", dtype="float64")  # doctest: +SKIP
    >>> manifest["timings"]["records_per_s"]                                                     # doctest: +SKIP
    """
    _need_dask()
    engine = _Engine(scheduler, workers, threads)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    job, fields, _ = _prepare(preset, dataset, dtype=dtype, sequence_length=sequence_length, truncate=truncate,
                              outputs=outputs, batch_tokens=batch_tokens, threads=engine.threads,
                              out=str(out.resolve()))
    fields["shard_size"] = int(shard_size)
    shards = job.dataset.shards(shard_size)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    previous = None
    if manifest_path.exists():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
            if previous.get("format") != RUN_FORMAT:
                raise ValueError(f"format {previous.get('format')!r}")
        except (ValueError, OSError) as e:
            raise ValueError(f"{manifest_path}: not a bert_ref run manifest ({e}); "
                             "use an empty --out directory") from None
        for name in _JOB_FIELDS:
            if previous["job"].get(name) != fields[name]:
                raise ValueError(f"{out} holds a different run: its {name} is {previous['job'].get(name)!r}, "
                                 f"this run's is {fields[name]!r}; use another --out directory or delete {out}")
    elif any(out.glob("shard-*.safetensors")):
        raise ValueError(f"{out} holds shard files but no {MANIFEST}; use another --out directory or delete them")
    for stale in out.glob("*.tmp-*"):  # left by a killed worker
        stale.unlink()
    entries: list[dict[str, Any] | None] = [None] * len(shards)
    pending = []
    old = {e["shard"]: e for e in (previous or {}).get("shards", []) if e}
    for k, (a, b) in enumerate(shards):
        why = verify_shard(out, old.get(k)) if k in old else "not finished"
        if why is None:
            entries[k] = old[k]
        else:
            if k in old or (out / shard_name(k)).exists():
                log(f"shard {k} (records {a}..{b - 1}): {why}; recomputing")
            pending.append(k)
    skipped = len(shards) - len(pending)
    if previous is not None:
        log(f"resuming {out}: {skipped} of {len(shards)} shards verified by sha256 and skipped, "
            f"{len(pending)} to compute")
    manifest: dict[str, Any] = {"format": RUN_FORMAT, "bert_ref_version": __version__, "job": fields,
                "settings": {"scheduler": engine.scheduler if not engine.distributed else "distributed",
                             "workers": engine.workers, "threads_per_worker": engine.threads,
                             "batch_tokens": batch_tokens, "host": socket.gethostname(), "cores": cores()},
                "complete": False, "shards": entries, "timings": {}}
    t0 = time.time()
    last_write = [0.0]

    def save(force: bool = False) -> None:
        if force or time.time() - last_write[0] >= 1.0:
            _write_json_atomic(manifest_path, manifest)
            last_write[0] = time.time()

    save(force=True)
    done_records = sum(b - a for k, (a, b) in enumerate(shards) if entries[k] is not None)
    bar = _Progress(job.dataset.num_records, done_records, progress)

    def done(i: int, entry: dict[str, Any]) -> None:
        k = pending[i]
        entries[k] = entry
        bar.update(entry["records"][1] - entry["records"][0])
        save()

    tasks = [(job_for(job, *shards[k]), k, *shards[k]) for k in pending]
    try:
        engine.run(compute_shard, tasks, done)
    finally:
        bar.close()
        wall = time.time() - t0
        computed = [e for k, e in enumerate(entries) if k in set(pending) and e is not None]
        n_rec = sum(e["records"][1] - e["records"][0] for e in computed)
        manifest["complete"] = all(e is not None for e in entries)
        if manifest["complete"]:
            for stale in out.glob("*.tmp-*"):  # left by a worker killed mid-shard
                stale.unlink()
        manifest["timings"] = {"wall_s": round(wall, 3), "shards_computed": len(computed), "shards_skipped": skipped,
                               "records_computed": n_rec,
                               "records_per_s": round(n_rec / wall, 3) if computed and wall > 0 else None,
                               "compute_s": round(sum(e["timings"]["compute_s"] for e in computed), 3)}
        save(force=True)
    log(f"{out}: {job.dataset.num_records} records in {len(shards)} shards; {len(pending)} computed, "
        f"{skipped} skipped; {wall:.1f} s"
        + (f", {manifest['timings']['records_per_s']:.1f} records/s" if computed else ""))
    return manifest


def job_for(job: ScaleJob, start: int, stop: int) -> ScaleJob:
    """`job` carrying only what records `[start, stop)` need."""
    return dataclasses.replace(job, dataset=job.dataset.part(start, stop))


# ----------------------------------------------------------------------------------------------
# compare


_SEQUENCE_KEYS = ("sequence_output",)


def _key_order(key: str) -> tuple[float, int]:
    if key.startswith("hidden_states."):
        return (int(key.split(".")[1]), 0)
    return (math.inf, 0 if key == "sequence_output" else 1)


def _is_dataset_output(key: str) -> bool:
    if key in ("sequence_output", "pooled_output"):
        return True
    kind, _, idx = key.partition(".")
    return kind == "hidden_states" and idx.isdigit() and str(int(idx)) == idx


def _index_candidate(paths: Sequence[str | os.PathLike],
                     num_records: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(files, keys, file of each record, row of each record) of a candidate's output files."""
    from .dataset import _array_header

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".npz", ".safetensors"))
            if not found:
                raise DatasetError(f"{p}: holds no .npz or .safetensors files of outputs")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or directory")
    rec_file = np.full(num_records, -1, np.int64)
    rec_row = np.full(num_records, -1, np.int64)
    keys: list[str] | None = None
    next_record = 0
    for i, f in enumerate(files):
        header = _array_header(f)
        outs = sorted((k for k in header if k not in ("record_index", "length")), key=_key_order)
        bad = [k for k in outs if not _is_dataset_output(k)]
        if bad:
            raise DatasetError(f"{f}: unexpected key {bad[0]!r}; a candidate file holds record_index (optional) and "
                               "sequence_output, pooled_output, hidden_states.{i} with records on the first axis")
        if not outs:
            raise DatasetError(f"{f}: holds no outputs (sequence_output, pooled_output, hidden_states.{{i}})")
        if keys is None:
            keys = outs
        elif outs != keys:
            raise DatasetError(f"{f}: holds {outs}, but {files[0]} holds {keys}; every candidate file must hold "
                               "the same outputs")
        rows = {header[k][0][0] for k in outs}
        if len(rows) != 1:
            raise DatasetError(f"{f}: outputs have different numbers of records: {sorted(rows)}")
        n = rows.pop()
        if "record_index" in header:
            from .dataset import _ArrayFile, _load_rows

            index = _load_rows(_ArrayFile(str(f), header["record_index"][0][0], 0, ("record_index",)), 0,
                               header["record_index"][0][0])["record_index"].astype(np.int64).reshape(-1)
            if index.shape[0] != n:
                raise DatasetError(f"{f}: record_index has {index.shape[0]} entries but the outputs have {n} records")
        else:
            index = np.arange(next_record, next_record + n)
        out_of_range = np.flatnonzero((index < 0) | (index >= num_records))
        if out_of_range.size:
            j = int(out_of_range[0])
            raise DatasetError(f"{f}: row {j} is record {int(index[j])}, outside the dataset's [0, {num_records})")
        seen = rec_file[index] >= 0
        if seen.any():
            j = int(np.flatnonzero(seen)[0])
            raise DatasetError(f"{f}: row {j} is record {int(index[j])}, which {files[rec_file[index[j]]]} also holds")
        rec_file[index] = i
        rec_row[index] = np.arange(n)
        next_record = int(index.max()) + 1 if n else next_record
    missing = np.flatnonzero(rec_file < 0)
    if missing.size:
        raise DatasetError(f"the candidate has no outputs for {missing.size} of {num_records} records "
                           f"(the first is record {int(missing[0])})")
    return [str(f) for f in files], keys or [], rec_file, rec_row


def _candidate_rows(files: Sequence[str], rec_file: np.ndarray, rec_row: np.ndarray,
                    keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The candidate's outputs for a list of records, in that order."""
    from .dataset import _ArrayFile, _load_rows

    out: dict[str, list] = {k: [None] * len(rec_file) for k in keys}
    for fi in np.unique(rec_file):
        pos = np.flatnonzero(rec_file == fi)
        rows = rec_row[pos]
        a, b = int(rows.min()), int(rows.max()) + 1
        data = _load_rows(_ArrayFile(files[fi], 0, 0, tuple(keys)), a, b)
        for k in keys:
            for p, r in zip(pos, rows, strict=True):
                out[k][p] = data[k][r - a]
    result = {}
    for k, parts in out.items():
        width = max(p.shape[0] for p in parts) if parts[0].ndim >= 2 else None
        if width is None:
            result[k] = np.stack(parts)
        else:
            result[k] = np.stack([np.pad(p, [(0, width - p.shape[0])] + [(0, 0)] * (p.ndim - 1)) for p in parts])
    return result


def compare_shard(job: ScaleJob, shard: int, start: int, stop: int, cand_files: Sequence[str], rec_file: np.ndarray,
                  rec_row: np.ndarray, keys: Sequence[str], atol: float, rtol: float, worst: int,
                  reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Dask task of `compare_dataset`: statistics of one shard (valid positions only)."""
    t0 = time.perf_counter()
    if reference is not None:
        why = verify_shard(reference["dir"], reference["entry"])
        if why is not None:
            raise DatasetError(f"reference shard {shard} ({Path(reference['dir']) / shard_name(shard)}): {why}; "
                               "rerun `bert-ref run` with the same arguments to recompute it")
        from safetensors.numpy import load_file

        ref = load_file(str(Path(reference["dir"]) / reference["entry"]["file"]))
        missing = [k for k in keys if k not in ref]
        if missing:
            raise DatasetError(f"{reference['dir']}: the run holds no {missing[0]}; rerun it with --outputs "
                               "including it")
        sources = None
    else:
        records, ref, _ = compute_outputs(job, start, stop)
        sources = records.sources
    lengths = ref["length"].astype(np.int64)
    cand = _candidate_rows(cand_files, rec_file, rec_row, keys)
    stats = {}
    for key in keys:
        r, c = ref[key], cand[key]
        if key not in _SEQUENCE_KEYS and not key.startswith("hidden_states."):
            valid = np.ones(r.shape[:1], bool)
            if c.shape[1:] != r.shape[1:]:
                raise DatasetError(f"{key}: the candidate's records have shape {c.shape[1:]}, the reference's "
                                   f"{r.shape[1:]}")
            rr, cc, rec_of = r.astype(np.float64), c.astype(np.float64), np.arange(r.shape[0])
            elem_rec = np.repeat(rec_of, int(np.prod(r.shape[1:])))
            pos = None
            rr, cc = rr.reshape(-1), cc.reshape(-1)
        else:
            if c.shape[2:] != r.shape[2:]:
                raise DatasetError(f"{key}: the candidate's positions have shape {c.shape[2:]}, the reference's "
                                   f"{r.shape[2:]}")
            short = np.flatnonzero(lengths > c.shape[1])
            if short.size:
                j = int(short[0])
                raise DatasetError(f"{key}: record {start + j} has {int(lengths[j])} tokens but the candidate gives "
                                   f"{c.shape[1]} positions")
            width = min(r.shape[1], c.shape[1])
            valid = np.arange(width)[None, :] < lengths[:, None]  # [n, L]
            rr, cc = r[:, :width][valid].astype(np.float64), c[:, :width][valid].astype(np.float64)  # [T, H]
            elem_rec = np.repeat(np.nonzero(valid)[0], r.shape[2])
            pos = np.repeat(np.nonzero(valid)[1], r.shape[2])
            rr, cc = rr.reshape(-1), cc.reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(cc - rr)
        finite = np.isfinite(rr) & np.isfinite(cc)
        same = (np.isnan(rr) & np.isnan(cc)) | (rr == cc)
        err = np.where(finite, err, np.where(same, 0.0, np.inf))
        tol = atol + rtol * np.abs(np.where(np.isfinite(rr), rr, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1.0), np.where(err > 0, np.inf, 0.0))
        n = r.shape[0]
        per_max = np.zeros(n)
        per_ratio = np.zeros(n)
        np.maximum.at(per_max, elem_rec, err)
        np.maximum.at(per_ratio, elem_rec, ratio)
        order = np.argsort(-per_ratio, kind="stable")[:worst]
        w = int(np.argmax(ratio)) if ratio.size else 0
        channel = r.shape[-1]
        stats[key] = {
            "count": int(err.size), "sum_sq": float(np.sum(np.square(err))) if np.isfinite(err).all() else math.inf,
            "max_abs": float(err.max()) if err.size else 0.0, "max_ratio": float(ratio.max()) if ratio.size else 0.0,
            "nonfinite_mismatch": int((~finite & ~same).sum()),
            "worst_element": None if not err.size else {
                "record": start + int(elem_rec[w]), "position": None if pos is None else int(pos[w]),
                "channel": int(w % channel), "reference": float(rr[w]), "candidate": float(cc[w])},
            "worst_records": [{"record": start + int(j), "max_abs": float(per_max[j]), "ratio": float(per_ratio[j]),
                               "source": sources[j] if sources else None} for j in order],
        }
    return {"shard": shard, "stats": stats, "seconds": time.perf_counter() - t0}


@dataclasses.dataclass
class DatasetReport:
    """Statistics of a candidate's outputs against the reference over a whole dataset.

    `entries` maps each output key (in computation order) to: count (valid elements), max_abs, rms,
    max_ratio (the worst |c - r| / (atol + rtol*|r|); <= 1 passes), passed, worst_element, and
    worst_records (record index, its max abs error and ratio, and its source)."""

    entries: dict[str, dict[str, Any]]
    atol: float
    rtol: float
    num_records: int
    reference_name: str
    candidate_name: str

    @property
    def passed(self) -> bool:
        return all(e["passed"] for e in self.entries.values())

    @property
    def first_failure(self) -> str | None:
        return next((k for k, e in self.entries.items() if not e["passed"]), None)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({"passed": self.passed, "first_failure": self.first_failure, "atol": self.atol,
                           "rtol": self.rtol, "records": self.num_records, "reference": self.reference_name,
                           "candidate": self.candidate_name, "entries": self.entries})

    def format_table(self) -> str:
        rows = [["key", "elements", "max abs", "rms", "x tol", "worst records (record: max abs)", "result"]]
        for k, e in self.entries.items():
            worst = ", ".join(f"{w['record']}: {w['max_abs']:.2e}" for w in e["worst_records"][:3])
            rows.append([k, f"{e['count']:,}", f"{e['max_abs']:.2e}", f"{e['rms']:.2e}", f"{e['max_ratio']:.3g}",
                         worst, "ok" if e["passed"] else "FAIL"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        rule = f"|candidate - reference| <= atol + rtol*|reference|, atol={self.atol:g}, rtol={self.rtol:g}"
        head = f"{self.candidate_name} vs {self.reference_name}, {self.num_records} records, valid positions"
        if self.passed:
            tail = f"PASS: all {len(self.entries)} outputs within tolerance ({rule})."
        else:
            k = self.first_failure or ""
            e = self.entries[k]
            we = e["worst_element"]
            where = f"record {we['record']}" + (f", position {we['position']}" if we["position"] is not None else "") \
                + f", channel {we['channel']}"
            src = next((w["source"] for w in e["worst_records"] if w["record"] == we["record"] and w["source"]), None)
            tail = (f"FAIL: {sum(not x['passed'] for x in self.entries.values())} of {len(self.entries)} outputs over "
                    f"tolerance ({rule}).\nFirst over tolerance: {k}: max abs error {e['max_abs']:.3e} "
                    f"({e['max_ratio']:.3g}x its tolerance) at {where}" + (f" ({src})" if src else "")
                    + f" (reference {we['reference']:.7g}, candidate {we['candidate']:.7g}).")
        return head + "\n" + "\n".join(lines) + "\n" + tail


def compare_dataset(
    preset: str,
    dataset: str | os.PathLike,
    candidate: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    reference: str | os.PathLike | None = None,
    dtype: Any = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    shard_size: int = DEFAULT_SHARD_SIZE,
    scheduler: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    sequence_length: int | None = None,
    truncate: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    worst: int = 5,
    progress: bool | None = None,
) -> DatasetReport:
    """Compare a candidate's outputs on `dataset` with ours, over every record.

    Args:
        candidate: a directory of `.npz` / `.safetensors` files, or a list of files. Each holds
            outputs with records on the first axis (`sequence_output` [n, S, H] with S at least each
            record's length; `pooled_output` [n, H]; `hidden_states.{i}`) and optionally
            `record_index` [n]; without it, files hold consecutive records in file-name order.
        reference: a `run_dataset` directory to read the reference from (every shard's sha256 is
            checked); None computes it on the fly with policy `dtype`, writing nothing.
        atol, rtol: an element passes when `|c - r| <= atol + rtol * |r|`; only valid positions
            (below each record's length) are compared.
        worst: how many worst records to report per output.
        The other arguments are `run_dataset`'s.

    Returns:
        A `DatasetReport`; `report.passed` is the verdict.
    """
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")
    engine = _Engine(scheduler, workers, threads)
    ref_manifest = None
    if reference is not None:
        path = Path(reference) / MANIFEST
        if not path.is_file():
            raise DatasetError(f"--reference {reference}: no {MANIFEST}; give a `bert-ref run --dataset` directory")
        ref_manifest = json.loads(path.read_text(encoding="utf-8"))
        if not ref_manifest.get("complete"):
            raise DatasetError(f"--reference {reference}: the run is not complete; rerun `bert-ref run` to finish it")
        rj = ref_manifest["job"]
        dtype, shard_size = rj["policy"], int(rj["shard_size"])
        sequence_length, truncate = rj["sequence_length"], rj["truncate"]
    job, fields, _ = _prepare(preset, dataset, dtype=dtype, sequence_length=sequence_length, truncate=truncate,
                              outputs=OUTPUT_CHOICES, batch_tokens=batch_tokens, threads=engine.threads, out=None)
    if ref_manifest is not None:
        for name in ("weights_sha256", "dataset_sha256", "num_records"):
            if ref_manifest["job"].get(name) != fields[name]:
                raise DatasetError(f"--reference {reference}: its {name} is {ref_manifest['job'].get(name)!r}, "
                                   f"but {preset} / {dataset} give {fields[name]!r}")
    paths = [candidate] if isinstance(candidate, (str, os.PathLike)) else list(candidate)
    files, keys, rec_file, rec_row = _index_candidate(paths, job.dataset.num_records)
    layers = fields["config"]["num_layers"]
    for k in keys:
        if k.startswith("hidden_states.") and int(k.split(".")[1]) > layers:
            raise DatasetError(f"the candidate holds {k} but {preset} has {layers} layers "
                               f"(hidden_states.0 .. hidden_states.{layers})")
    wanted = tuple(o for o in OUTPUT_CHOICES if any(k.split(".")[0] == o for k in keys))
    job = dataclasses.replace(job, outputs=wanted)
    shards = job.dataset.shards(shard_size)
    tasks = []
    for i, (a, b) in enumerate(shards):
        ref = None
        if ref_manifest is not None and reference is not None:
            ref = {"dir": str(Path(reference).resolve()), "entry": ref_manifest["shards"][i]}
        tasks.append((job_for(job, a, b), i, a, b, files, rec_file[a:b], rec_row[a:b], keys, atol, rtol, worst, ref))
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    bar = _Progress(job.dataset.num_records, 0, progress)

    def done(i: int, result: dict[str, Any]) -> None:
        results[i] = result
        bar.update(shards[i][1] - shards[i][0])

    try:
        engine.run(compare_shard, tasks, done)
    finally:
        bar.close()
    entries = {}
    for key in keys:
        parts = [r["stats"][key] for r in results if r is not None]
        count = sum(p["count"] for p in parts)
        sum_sq = sum(p["sum_sq"] for p in parts)
        top = max(parts, key=lambda p: p["max_ratio"])
        worst_records = sorted((w for p in parts for w in p["worst_records"]), key=lambda w: -w["ratio"])[:worst]
        if reference is not None:
            for w in worst_records:
                w["source"] = None
        max_ratio = max(p["max_ratio"] for p in parts)
        entries[key] = {"count": count, "max_abs": max(p["max_abs"] for p in parts),
                        "rms": math.sqrt(sum_sq / count) if count else 0.0, "max_ratio": max_ratio,
                        "nonfinite_mismatch": sum(p["nonfinite_mismatch"] for p in parts),
                        "passed": bool(max_ratio <= 1.0), "worst_element": top["worst_element"],
                        "worst_records": worst_records}
    ref_name = f"our {job.policy}" + (f" ({reference})" if reference is not None else "")
    cand_name = Path(paths[0]).name if len(paths) == 1 else f"{len(files)} files"
    return DatasetReport(entries, float(atol), float(rtol), job.dataset.num_records, ref_name, cand_name)


# ----------------------------------------------------------------------------------------------
# The command line (called from bert_ref.cli)


def _say(line: str) -> None:
    print(line, flush=True)


def cli_run(args: Any) -> int:
    if args.out is None:
        raise ValueError("--dataset needs --out DIR (the run directory)")
    if args.input is not None or args.output is not None or args.attentions or args.trace or args.hidden_states:
        raise ValueError("--dataset runs take --out and --outputs, not "
                         "--input/--output/--attentions/--trace/--hidden-states")
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    manifest = run_dataset(args.preset, args.dataset, args.out, dtype=args.dtype, outputs=outputs,
                           shard_size=args.shard_size, scheduler=args.scheduler, workers=args.workers,
                           threads=args.threads, sequence_length=args.sequence_length, truncate=args.truncate,
                           batch_tokens=args.batch_tokens, progress=False if args.no_progress else None, log=_say)
    s = manifest["settings"]
    _say(f"{manifest['job']['policy']} policy, {s['scheduler']} scheduler, {s['workers'] or '?'} worker(s) x "
         f"{s['threads_per_worker']} thread(s); manifest: {Path(args.out) / MANIFEST}")
    return 0


def cli_compare(args: Any) -> int:
    if args.input is not None:
        raise ValueError("give --dataset or --input, not both")
    if args.reference is not None and (args.truth or args.dtype is not None):
        raise ValueError("--reference takes its policy from the run; do not combine it with --truth or --dtype")
    if args.worst < 1:
        raise ValueError(f"--worst must be >= 1, got {args.worst}")
    unsupported = [flag for flag, value in (("--precision", getattr(args, "precision", None)),
                                            ("--floor-ratio", getattr(args, "floor_ratio", None)),
                                            ("--activation", getattr(args, "activation", None)),
                                            ("--layer-norm-epsilon", getattr(args, "layer_norm_epsilon", None)),
                                            ("--junit", getattr(args, "junit", None))) if value is not None]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not available with --dataset (it takes --atol, --rtol, --truth, "
                         "--dtype, --json)")
    tolerances = []
    for name, given, default in (("atol", args.atol, DEFAULT_ATOL), ("rtol", args.rtol, DEFAULT_RTOL)):
        try:
            value = float(given) if given is not None else default
        except (TypeError, ValueError):
            raise ValueError(f"--{name} {given!r}: with --dataset give one number (per-output tolerances are for "
                             "--input)") from None
        tolerances.append(value)
    atol, rtol = tolerances
    dtype = "float64" if args.truth else args.dtype
    report = compare_dataset(args.preset, args.dataset, args.candidate, reference=args.reference, dtype=dtype,
                             atol=atol, rtol=rtol, shard_size=args.shard_size, scheduler=args.scheduler,
                             workers=args.workers, threads=args.threads, sequence_length=args.sequence_length,
                             truncate=args.truncate, batch_tokens=args.batch_tokens, worst=args.worst,
                             progress=False if args.no_progress else None)
    if args.json:
        _say(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        _say(report.format_table())
    return 0 if report.passed else 1
