"""`run --dataset` and `pack`: plan, run and resume a dataset job in a run directory.

**The run directory** (`--out`) holds the shards (`bert_ref.scale.shards`), `manifest.json`, and
`.bert-ref.lock`: a run holds an exclusive lock on it (`flock`) for its whole life, so a second run
on the same directory is refused with a message instead of racing the first. Every file is written
by `bert_ref.io.atomic`; a worker killed mid-shard leaves its temporary file
(`.shard-NNNNN.safetensors.XXXXXXXX.tmp`), which the run removes under its lock, when it starts
and when it ends (no other run can be writing it then); nothing else in the directory is touched.

**manifest.json** holds the job (preset, the weights' and tokenizer's sha256, config, policy,
outputs, the dataset's sha256, record count, shard size, batch tokens, sequence length), the
bert_ref version, the settings, and one entry per finished shard: its record range, file, sha256,
size, worker and timings. It is rewritten (atomically) as shards finish, and bounded: a plan whose
manifest would pass the JSON size limit (`BERT_REF_MAX_JSON_BYTES`) is refused before it starts.
It is read through the same limits, must be a regular file, and every entry must name its own
shard file (`shard-NNNNN.safetensors`, a plain name inside the directory): anything else is an error
naming the field, never a path followed outside the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bert_ref import __version__
from bert_ref.io import atomic
from bert_ref.scale.dataset import DatasetError, open_dataset
from bert_ref.scale.engine import Engine, Progress
from bert_ref.scale.options import OUTPUT_CHOICES, dataset_options
from bert_ref.scale.shards import (
    JOB_FIELDS,
    MANIFEST,
    RUN_FORMAT,
    ScaleJob,
    compute_shard,
    cores,
    ensemble_members,
    shard_name,
    tokenizer_sha256,
    verify_shard,
    weights_sha256,
)

LOCK = ".bert-ref.lock"
#: Bytes a manifest entry takes, at most (what bounds a plan's manifest).
ENTRY_BYTES = 640
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _resolve(preset: str) -> Path:
    from bert_ref.io import hub

    return Path(hub.resolve(preset))


def prepare_job(preset: str, dataset: str | os.PathLike, *, dtype: Any, sequence_length: int | None,
                truncate: bool, outputs: Sequence[str], batch_tokens: int, threads: int | None,
                out: str | None, ensemble: bool = False) -> tuple[ScaleJob, dict[str, Any], Any]:
    """The job (what workers get) and its identity fields (the manifest's "job"); with `ensemble`,
    the job also stores the other members of the ensemble whose floor is the policy's run."""
    from bert_ref.io import checkpoints
    from bert_ref.model.precision import get_policy

    outputs = tuple(outputs)
    bad = [o for o in outputs if o not in OUTPUT_CHOICES]
    if bad:
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
    members: tuple[str, ...] = ()
    if ensemble and outputs:
        found = ensemble_members(policy.name)
        if not found:
            raise ValueError(f"--ensemble: the {policy.name} policy has no ensemble of variants (float16, bfloat16, "
                             "float32, tf32 and int8 have)")
        members = tuple(m.name for m in found[1:])
    ds = open_dataset(dataset)
    job = ScaleJob(str(directory.resolve()), weights_sha256(directory), policy.name, outputs, ds, sequence_length,
                   truncate, batch_tokens, threads, out, tokenizer_sha256(directory), config.vocabulary_size,
                   config.num_segments, members)
    fields = {"preset": preset, "preset_dir": job.preset_dir, "weights_sha256": job.weights_sha256,
              "tokenizer_sha256": job.tokenizer_sha256, "config": config.to_dict(),
              "policy": policy.name if outputs else None, "outputs": list(outputs),
              "dataset": ds.path, "dataset_kind": ds.kind, "dataset_sha256": ds.sha256(),
              "num_records": ds.num_records, "sequence_length": sequence_length, "truncate": truncate,
              "batch_tokens": batch_tokens, "ensemble": list(members)}
    return job, fields, ckpt


# ----------------------------------------------------------------------------------------------
# The manifest


def check_plan(num_records: int, shard_size: int) -> int:
    """The number of shards, after checking that their manifest fits the JSON limit."""
    from bert_ref.model import limits

    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise ValueError(f"--shard-size must be a positive integer, got {shard_size!r}")
    n = -(-num_records // shard_size)
    cap = limits.limit("json_bytes")
    if n * ENTRY_BYTES > cap:
        need = -(-num_records * ENTRY_BYTES // cap)
        raise limits.LimitError(f"{num_records:,} records in shards of {shard_size} make {n:,} shards, whose manifest "
                                f"could reach {n * ENTRY_BYTES:,} bytes, over the limit of {cap:,} bytes; use "
                                f"--shard-size {need} or more (or set {limits.env_name('json_bytes')})")
    return n


def _field(path: Path, what: str, value: Any, ok: bool, want: str) -> None:
    if not ok:
        raise DatasetError(f"{path}: field {what} is {json.dumps(value)[:80]}; expected {want}")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A run directory's manifest, read through the JSON limits and checked (see the module
    docstring). Raises `DatasetError` naming the file and the field."""
    from bert_ref.model import limits

    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise DatasetError(f"{path}: {kind}; a run's manifest is a plain file written by `bert-ref run`")
    limits.check("json_bytes", st.st_size, f"{path}: the manifest", " bytes")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, "rb") as f:
            raw = f.read(limits.limit("json_bytes") + 1)
        manifest = limits.loads(raw, str(path))
    except limits.LimitError:
        raise
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path}: not a bert_ref run manifest ({' '.join(str(e).split())[:200]}); use an empty "
                           "--out directory") from None
    _field(path, "(the document)", type(manifest).__name__, isinstance(manifest, dict), "a JSON object")
    _field(path, "format", manifest.get("format"), manifest.get("format") == RUN_FORMAT,
           f"{RUN_FORMAT!r} (a directory of another bert_ref version or another tool: use an empty --out)")
    job = manifest.get("job")
    _field(path, "job", job, isinstance(job, dict), "an object")
    assert isinstance(job, dict)
    for name in JOB_FIELDS:
        _field(path, f"job.{name}", job.get(name), name in job, "present")
    for name in ("num_records", "shard_size"):
        v = job[name]
        _field(path, f"job.{name}", v, isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1")
    num = -(-job["num_records"] // job["shard_size"])
    shards = manifest.get("shards")
    _field(path, "shards", type(shards).__name__, isinstance(shards, list), "a list of finished shards")
    assert isinstance(shards, list)
    seen = set()
    for i, entry in enumerate(shards):
        where = f"shards[{i}]"
        _field(path, where, entry, isinstance(entry, dict), "an object")
        k = entry.get("shard")
        _field(path, f"{where}.shard", k, isinstance(k, int) and not isinstance(k, bool) and 0 <= k < num
               and k not in seen, f"a shard number in [0, {num}), once")
        seen.add(k)
        a, b = k * job["shard_size"], min((k + 1) * job["shard_size"], job["num_records"])
        _field(path, f"{where}.records", entry.get("records"), entry.get("records") == [a, b], f"[{a}, {b}]")
        _field(path, f"{where}.file", entry.get("file"), entry.get("file") == shard_name(k),
               f"{shard_name(k)!r} (a plain name inside the run directory)")
        _field(path, f"{where}.sha256", entry.get("sha256"), isinstance(entry.get("sha256"), str)
               and bool(_SHA.match(entry["sha256"])), "64 hexadecimal digits")
        size = entry.get("bytes")
        _field(path, f"{where}.bytes", size, isinstance(size, int) and not isinstance(size, bool) and size >= 0,
               "a size in bytes")
    return manifest


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """The manifest, one shard entry per line (atomically)."""
    head = {k: v for k, v in manifest.items() if k != "shards"}
    text = json.dumps(head, indent=1)[:-2]
    lines = [json.dumps(e, separators=(",", ":")) for e in manifest["shards"]]
    text += ',\n "shards": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    atomic.write_text(path, text)


# ----------------------------------------------------------------------------------------------
# The run directory: lock and temporary files


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory `out` (see the module docstring)."""
    path = out / LOCK
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise OSError(f"--out {out}: another bert-ref run is using this directory ({holder}); wait for it to "
                          "finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def remove_partial_shards(out: Path, log: Callable[[str], None] = lambda s: None) -> None:
    """Remove the temporary files that killed workers left in `out`: only the names the atomic
    writer gives a shard's temporary file (`.shard-NNNNN.safetensors.XXXXXXXX.tmp`); called under
    the lock, so no other run is writing them. Nothing else in the directory is touched."""
    gone = []
    for stale in out.glob(atomic.temp_glob(shard_name(0).replace("00000", "[0-9]" * 5))):
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
            gone.append(stale.name)
    if gone:
        log(f"{out}: removed {len(gone)} temporary file(s) of shards whose worker was killed ({gone[0]}"
            + (", ..." if len(gone) > 1 else "") + ")")


# ----------------------------------------------------------------------------------------------
# run


def run_dataset(
    preset: str,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: Any = None,
    outputs: Sequence[str] = ("sequence_output", "pooled_output"),
    ensemble: bool = False,
    log: Callable[[str], None] = lambda s: None,
    **options: Any,
) -> dict[str, Any]:
    """Run `preset` over every record of `dataset`, writing shards and `manifest.json` into `out`.

    Args:
        preset: a built-in name, local directory, `kaggle://...` or `hf://...`.
        dataset: a dataset path (see `bert_ref.scale.dataset`).
        out: the run directory (created; resumed when it holds a manifest of the same job).
        dtype: the policy (default float32; "float64" is the truth).
        outputs: any of "sequence_output", "pooled_output", "hidden_states"; none: the packed
            inputs alone (`pack_dataset`).
        ensemble: also store the outputs of the other members of the policy's ensemble
            (`bert_ref.oracle.ensemble`: for float16, its fused and its wide variant), as
            `sequence_output@float16~fused`, ...: `compare --floor-from` then reads the whole
            ensemble instead of computing it.
        log: called with one line per event (resumed shards, recomputed shards, the summary).
        options: `shard_size`, `scheduler`, `workers`, `threads`, `sequence_length`, `truncate`,
            `batch_tokens`, `progress` (`bert_ref.scale.options.DatasetOptions`, the same for
            `pack_dataset` and `compare_dataset`).

    Returns:
        The manifest (also written to `out/manifest.json`).

    Examples:

    >>> manifest = run_dataset("bert_tiny_en_uncased", "dev.jsonl", "truth/", dtype="float64")  # doctest: +SKIP
    >>> manifest["timings"]["records_per_s"]                                                     # doctest: +SKIP
    """
    o = dataset_options(options, "run_dataset")
    engine = Engine(o["scheduler"], o["workers"], o["threads"])
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    job, fields, _ = prepare_job(preset, dataset, dtype=dtype, sequence_length=o["sequence_length"],
                                 truncate=o["truncate"], outputs=outputs, batch_tokens=o["batch_tokens"],
                                 threads=engine.threads, out=str(out), ensemble=ensemble)
    fields["shard_size"] = o["shard_size"]
    num_shards = check_plan(job.dataset.num_records, o["shard_size"])  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        return _run_locked(engine, job, fields, out, num_shards, o["shard_size"], o["progress"], log)


def _run_locked(engine: Engine, job: ScaleJob, fields: dict[str, Any], out: Path, num_shards: int, shard_size: int,
                progress: bool | None, log: Callable[[str], None]) -> dict[str, Any]:
    manifest_path = out / MANIFEST
    previous = None
    if os.path.lexists(manifest_path):
        previous = read_manifest(manifest_path)
    if previous is not None and not previous["shards"]:
        # A run that never completed a shard (it failed on its first records, or was stopped at
        # once) holds nothing to resume: it does not block its own rerun on a fixed dataset.
        log(f"{manifest_path}: the run there completed no shard; starting afresh")
        previous = None
    if previous is not None:
        for name in (*JOB_FIELDS, "ensemble"):
            if previous["job"].get(name, []) != fields[name]:
                raise ValueError(f"{out} holds a different run: its {name} is {previous['job'].get(name)!r}, "
                                 f"this run's is {fields[name]!r}; use another --out directory or delete {out}")
    elif any(out.glob("shard-*.safetensors")):
        raise ValueError(f"{out} holds shard files but no {MANIFEST}; use another --out directory or delete them")
    remove_partial_shards(out, log)
    n = job.dataset.num_records

    def records(k: int) -> tuple[int, int]:
        return k * shard_size, min((k + 1) * shard_size, n)

    done: dict[int, dict[str, Any]] = {}
    pending = []
    old = {e["shard"]: e for e in (previous or {}).get("shards", [])}
    for k in range(num_shards):
        why = verify_shard(out, old.get(k)) if k in old else "not finished"
        if why is None:
            done[k] = old[k]
        else:
            if k in old or (out / shard_name(k)).exists():
                a, b = records(k)
                log(f"shard {k} (records {a}..{b - 1}): {why}; recomputing")
            pending.append(k)
    skipped = num_shards - len(pending)
    if previous is not None:
        log(f"resuming {out}: {skipped} of {num_shards} shards verified by sha256 and skipped, "
            f"{len(pending)} to compute")
    settings = {"scheduler": engine.scheduler if not engine.distributed else "distributed",
                "address": engine.scheduler if engine.distributed else None,
                "workers": engine.workers, "threads_per_worker": engine.threads,
                "host": socket.gethostname(), "cores": cores()}
    manifest: dict[str, Any] = {"format": RUN_FORMAT, "kind": "run" if job.outputs else "pack",
                                "bert_ref_version": __version__, "job": fields, "settings": settings,
                                "complete": False, "num_shards": num_shards, "shards": [], "timings": {}}
    t0 = time.time()
    last_write = [0.0]

    def save(force: bool = False) -> None:
        if force or time.time() - last_write[0] >= 1.0:
            manifest["shards"] = [done[k] for k in sorted(done)]
            write_manifest(manifest_path, manifest)
            last_write[0] = time.time()

    save(force=True)
    bar = Progress(n, sum(records(k)[1] - records(k)[0] for k in done), progress)
    computed: list[dict[str, Any]] = []

    def finished(i: int, entry: dict[str, Any]) -> None:
        k = pending[i]
        done[k] = entry
        computed.append(entry)
        a, b = entry["records"]
        bar.shard(k, a, b, entry["timings"].get("task_s"))
        save()

    tasks = ((job_for(job, *records(k)), k, *records(k)) for k in pending)
    try:
        engine.run(compute_shard, tasks, finished)
    finally:
        bar.close()
        wall = time.time() - t0
        n_rec = sum(e["records"][1] - e["records"][0] for e in computed)
        manifest["complete"] = len(done) == num_shards
        settings["workers"] = engine.workers
        manifest["timings"] = {"wall_s": round(wall, 3), "shards_computed": len(computed), "shards_skipped": skipped,
                               "records_computed": n_rec,
                               "records_per_s": round(n_rec / wall, 3) if computed and wall > 0 else None,
                               "compute_s": round(sum(e["timings"]["compute_s"] for e in computed), 3)}
        save(force=True)
        remove_partial_shards(out, log)
    log(f"{out}: {n} records in {num_shards} shards; {len(computed)} computed, {skipped} skipped; {wall:.1f} s"
        + (f", {manifest['timings']['records_per_s']:.1f} records/s" if computed else ""))
    return manifest


def pack_dataset(preset: str, dataset: str | os.PathLike, out: str | os.PathLike, *,
                 log: Callable[[str], None] = lambda s: None, **options: Any) -> dict[str, Any]:
    """The packed inputs of `dataset` for a port (`bert-ref pack`): shards with `record_index`,
    `length`, `offsets`, `batch`, `token_ids`, `segment_ids` and `padding_mask`, with the same
    sharding, order and batching as `run_dataset` with the same options, and no model run.
    Takes `run_dataset`'s keyword arguments except `dtype`, `outputs` and `ensemble`."""
    for name in ("dtype", "outputs", "ensemble"):
        if name in options:
            raise TypeError(f"pack_dataset() takes no {name!r}: it runs no model")
    return run_dataset(preset, dataset, out, outputs=(), log=log, **dataset_options(options, "pack_dataset"))


def job_for(job: ScaleJob, start: int, stop: int) -> ScaleJob:
    """`job` carrying only what records `[start, stop)` need."""
    return dataclasses.replace(job, dataset=job.dataset.part(start, stop))
