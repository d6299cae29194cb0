"""`run --dataset`: plan, run and resume a dataset job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bert_ref import __version__
from bert_ref.io import atomic
from bert_ref.scale.dataset import open_dataset
from bert_ref.scale.engine import Engine, Progress
from bert_ref.scale.options import DEFAULT_BATCH_TOKENS, DEFAULT_SHARD_SIZE, OUTPUT_CHOICES
from bert_ref.scale.shards import (
    JOB_FIELDS,
    MANIFEST,
    RUN_FORMAT,
    ScaleJob,
    compute_shard,
    cores,
    need_dask,
    shard_name,
    tokenizer_sha256,
    verify_shard,
    weights_sha256,
)

# ----------------------------------------------------------------------------------------------
# run


def _resolve(preset: str) -> Path:
    from bert_ref.io import hub

    return Path(hub.resolve(preset))


def prepare_job(preset: str, dataset: str | os.PathLike, *, dtype: Any, sequence_length: int | None,
             truncate: bool, outputs: Sequence[str], batch_tokens: int, threads: int | None,
             out: str | None) -> tuple[ScaleJob, dict[str, Any], Any]:
    from bert_ref.io import checkpoints
    from bert_ref.model.precision import get_policy

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
                   truncate, batch_tokens, threads, out, tokenizer_sha256(directory))
    fields = {"preset": preset, "preset_dir": job.preset_dir, "weights_sha256": job.weights_sha256,
              "tokenizer_sha256": job.tokenizer_sha256,
              "config": config.to_dict(), "policy": policy.name, "outputs": list(outputs),
              "dataset": str(dataset), "dataset_kind": ds.kind, "dataset_sha256": ds.sha256(),
              "num_records": ds.num_records, "sequence_length": sequence_length, "truncate": truncate}
    return job, fields, ckpt


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic.write_text(path, json.dumps(obj, indent=1) + "\n")


def remove_partial_shards(out: Path) -> None:
    """Remove the temporary files of shards that killed workers left in `out`: only names the atomic
    writer gives a temporary `shard-NNNNN.safetensors` (`.shard-NNNNN.safetensors.XXXXXXXX.tmp`);
    nothing else in the directory is touched."""
    for stale in out.glob(atomic.temp_glob(shard_name(0).replace("00000", "[0-9]" * 5))):
        stale.unlink(missing_ok=True)


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
        dataset: a dataset path (see `bert_ref.scale.dataset`).
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
    need_dask()
    engine = Engine(scheduler, workers, threads)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    job, fields, _ = prepare_job(preset, dataset, dtype=dtype, sequence_length=sequence_length, truncate=truncate,
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
        if not any(isinstance(e, dict) and e.get("sha256") for e in previous.get("shards") or []):
            # A run that never completed a shard (it failed on its first records, or was stopped at
            # once) holds nothing to resume: it does not block its own rerun on a fixed dataset.
            log(f"{manifest_path}: the run there completed no shard; starting afresh")
            previous = None
        else:
            for name in JOB_FIELDS:
                if previous["job"].get(name) != fields[name]:
                    raise ValueError(f"{out} holds a different run: its {name} is {previous['job'].get(name)!r}, "
                                     f"this run's is {fields[name]!r}; use another --out directory or delete {out}")
    elif any(out.glob("shard-*.safetensors")):
        raise ValueError(f"{out} holds shard files but no {MANIFEST}; use another --out directory or delete them")
    remove_partial_shards(out)
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
            write_json_atomic(manifest_path, manifest)
            last_write[0] = time.time()

    save(force=True)
    done_records = sum(b - a for k, (a, b) in enumerate(shards) if entries[k] is not None)
    bar = Progress(job.dataset.num_records, done_records, progress)

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
            remove_partial_shards(out)  # left by a worker killed mid-shard
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
