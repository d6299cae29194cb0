"""Running a job's tasks on one of Dask's schedulers, with progress.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bert_ref.scale.cluster import connect
from bert_ref.scale.shards import BLAS_ENV, LOCAL_SCHEDULERS, cores, need_dask

# ----------------------------------------------------------------------------------------------
# Running a job on a scheduler


class Engine:
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
        dask = need_dask()
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
        saved = {k: os.environ.get(k) for k in BLAS_ENV}
        if self.scheduler == "processes":  # spawned workers read these before NumPy starts its BLAS
            os.environ.update({k: str(self.threads) for k in BLAS_ENV})
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
        need_dask()
        client = connect(self.scheduler)
        from distributed import as_completed

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


class Progress:
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
