"""Running a job's tasks on this machine or a Dask cluster, a bounded window at a time, with progress.

Tasks are submitted a window at a time (twice the workers' slots) and the next one as each
finishes, so 10^6 records (4,000 shards) cost the client the same memory and time per shard as 40:
there is never one graph of every task. The local schedulers are Python's own executors, as
Dask's local schedulers are: `local` a thread pool in this process, `processes` a process pool
(spawned, or Dask's `multiprocessing.context`), `synchronous` a loop in this thread. A `tcp://` or
`tls://` address is a Dask cluster, reached through `bert_ref.scale.cluster.connect` (probed and
bounded by `BERT_REF_CONNECT_TIMEOUT`: a port that refuses, never answers, or answers with
something other than a Dask handshake gives a message naming the address, never a hang); a cluster
without a worker after `BERT_REF_WORKER_TIMEOUT` seconds (default 60) says so.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bert_ref.scale.shards import BLAS_ENV, LOCAL_SCHEDULERS, cores, need_dask

#: Seconds to wait for a cluster's first worker (BERT_REF_WORKER_TIMEOUT overrides).
WORKER_TIMEOUT = 60.0


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{env}={raw!r}: expected a positive number of seconds")
    return value


class Engine:
    """Runs `fn(*args)` for each task and calls `done(index, result)` in this process as each
    finishes; at most `window` tasks are submitted at a time. The first task error is raised
    (tasks not started are cancelled)."""

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
            self.workers = workers  # the cluster's, counted when it is reached
        if threads is None and not self.distributed and self.workers is not None:
            threads = max(1, n // self.workers)
        self.threads = threads if threads is not None else (1 if self.distributed else None)
        self.window = 2 * (self.workers or 1)

    def describe(self) -> str:
        if self.distributed:
            return (f"Dask cluster at {self.scheduler}, {self.workers} worker(s), {self.threads} thread(s) per task"
                    if self.workers else f"Dask cluster at {self.scheduler}, {self.threads} thread(s) per task")
        what = {"local": "thread(s)", "processes": "process(es)", "synchronous": "(in this thread)"}[self.scheduler]
        return f"{self.scheduler}: {self.workers} {what}, {self.threads} BLAS thread(s) each"

    def run(self, fn: Callable, tasks: Iterable[tuple], done: Callable[[int, Any], None]) -> None:
        """Run every task of `tasks` (consumed lazily, a window ahead)."""
        it = enumerate(tasks)
        if self.distributed:
            return self._run_distributed(fn, it, done)
        if self.scheduler == "synchronous":
            for i, args in it:
                done(i, fn(*args))
            return
        saved = {k: os.environ.get(k) for k in BLAS_ENV}
        try:
            if self.scheduler == "processes":  # spawned workers read these before NumPy starts its BLAS
                os.environ.update({k: str(self.threads) for k in BLAS_ENV})
                import multiprocessing

                context = "spawn"
                try:
                    import dask

                    context = dask.config.get("multiprocessing.context", "spawn")
                except ImportError:
                    pass
                pool: concurrent.futures.Executor = concurrent.futures.ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context(context))
            else:
                pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="bert_ref.scale")
            try:
                self._windowed(lambda args: pool.submit(fn, *args), it, done, concurrent.futures.wait)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _windowed(self, submit: Callable[[tuple], Any], it: Iterator[tuple[int, tuple]],
                  done: Callable[[int, Any], None], wait: Callable[..., Any]) -> None:
        pending: dict[Any, int] = {}

        def fill() -> None:
            while len(pending) < self.window:
                nxt = next(it, None)
                if nxt is None:
                    return
                pending[submit(nxt[1])] = nxt[0]

        fill()
        while pending:
            finished, _ = wait(list(pending), return_when="FIRST_COMPLETED")
            for future in finished:
                i = pending.pop(future)
                done(i, future.result())
            fill()

    def _run_distributed(self, fn: Callable, it: Iterator[tuple[int, tuple]],
                         done: Callable[[int, Any], None]) -> None:
        need_dask()
        from bert_ref.scale.cluster import connect

        client = connect(self.scheduler)
        from distributed import as_completed

        try:
            waiting = _seconds("BERT_REF_WORKER_TIMEOUT", WORKER_TIMEOUT)
            try:
                client.wait_for_workers(1, timeout=waiting)
            except (TimeoutError, OSError):
                raise OSError(f"--scheduler {self.scheduler}: no worker joined within {waiting:g} s; start workers "
                              f"with `dask worker {self.scheduler}`") from None
            workers = client.scheduler_info().get("workers", {})
            self.workers = len(workers)
            slots = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
            self.window = max(4, 2 * slots)
            token = uuid.uuid4().hex[:8]
            pending: dict[Any, int] = {}
            queue: Any = None

            def fill() -> None:
                while len(pending) < self.window:
                    nxt = next(it, None)
                    if nxt is None:
                        return
                    future = client.submit(fn, *nxt[1], key=f"bert-ref-task-{nxt[0]}-{token}", pure=False)
                    pending[future] = nxt[0]
                    if queue is not None:
                        queue.add(future)

            try:
                fill()
                if not pending:
                    return
                queue = as_completed(list(pending), loop=client.loop)
                for future in queue:
                    i = pending.pop(future)
                    done(i, future.result())
                    fill()
            except BaseException:
                client.cancel(list(pending))
                raise
        finally:
            client.close()


class Progress:
    """Progress on stderr: a tqdm bar (records/s, ETA) on a terminal; otherwise one line per shard
    (its records and records/s, the total done, the overall rate and the time left), so a CI log
    shows the job moving. Nothing with `enabled=False` or `BERT_REF_QUIET=1`."""

    def __init__(self, total: int, initial: int, enabled: bool | None, what: str = "records"):
        self.bar = None
        self.lines = False
        self.total, self.done, self.what = total, initial, what
        self.start = time.time()
        self.first = initial
        quiet = os.environ.get("BERT_REF_QUIET", "").strip().lower() in ("1", "true", "yes", "on")
        if enabled is False or (enabled is None and quiet):
            return
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                self.lines = True
                return
            self.bar = tqdm(total=total, initial=initial, unit="rec", desc=what, file=sys.stderr, smoothing=0.1)
        else:
            self.lines = True

    def shard(self, k: int, start: int, stop: int, seconds: float | None = None, count: int | None = None) -> None:
        """Shard `k` (records `[start, stop)`, of which `count` counted; default all) finished, taking
        `seconds` in its task."""
        n = stop - start if count is None else count
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if not self.lines:
            return
        elapsed = time.time() - self.start
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        own = f", {n / seconds:.1f} records/s" if seconds else ""
        eta = "" if left is None else f", {_duration(left)} left"
        print(f"shard {k} (records {start}..{stop - 1}) done in {seconds or 0:.1f} s{own}; {self.done:,} of "
              f"{self.total:,} {self.what} ({rate:.1f} records/s overall{eta})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
