"""The runtime under the fast kernels: the thread pool (re-made after a fork), row chunks over
threads, concurrent maps and casts, and OpenBLAS's thread count through its C API.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Threads for the elementwise work: the cores this process may run on. Chunks are disjoint and
# each is computed exactly as one sequential loop would, so the results do not depend on THREADS.
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist (a task submitted to it would wait
    forever): start afresh with a new pool on first use. A fork taken while a forward held
    OpenBLAS at one thread gets its thread count back."""
    global POOL, _POOL_LOCK, _BLAS_LOCK, _blas_users
    POOL, _POOL_LOCK, _BLAS_LOCK = None, threading.Lock(), threading.Lock()
    if _blas_users and isinstance(_BLAS, tuple):
        _BLAS[0](_blas_saved)
    _blas_users = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


THREAD_STATE = threading.local()  # .serial: this thread runs one part of a batch split (see `forward`)


def threads() -> int:
    """THREADS, or 1 inside one part of a batch split (its sibling parts use the other cores)."""
    return 1 if getattr(THREAD_STATE, "serial", False) else THREADS


def parallel(fn: Callable[[int, int], None], n: int, min_size: int = 1) -> None:
    """Call `fn(start, stop)` on up to THREADS contiguous slices of `range(n)`, concurrently.

    Runs in the caller's thread when one slice would do (n < 2 * min_size, THREADS == 1, or
    inside one part of a batch split)."""
    parts = min(threads(), n // max(min_size, 1))
    if parts <= 1:
        fn(0, n)
        return
    pool = _pool()
    bounds = [n * i // parts for i in range(parts + 1)]
    run = _in_callers_errstate(fn)
    for future in [pool.submit(run, a, b) for a, b in itertools.pairwise(bounds)]:
        future.result()


def _in_callers_errstate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, to be called in a worker thread under the caller's NumPy error handling (`np.errstate`
    is per thread: a worker would otherwise warn where the caller asked for silence, or the reverse),
    its error callback (`np.seterrcall`, for `"call"`) included."""
    err, call = np.geterr(), np.geterrcall()

    def run(*args: Any) -> Any:
        with np.errstate(call=call, **err):  # type: ignore[arg-type]  # (call may be None: none set)
            return fn(*args)

    return run


def _pool() -> ThreadPoolExecutor:
    global POOL
    with _POOL_LOCK:
        if POOL is None:
            POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="bert_ref")
        return POOL


def map_concurrent(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """`[fn(item) for item in items]`, the calls spread over THREADS threads (for work that releases
    the GIL: NumPy passes, hashing). Results in the order of `items`; an exception is raised as the
    loop would raise it (the first in order), once every call has ended."""
    items = list(items)
    if threads() <= 1 or len(items) <= 1:
        return [fn(item) for item in items]

    run = _in_callers_errstate(fn)

    def call(item: Any) -> Any:
        THREAD_STATE.serial = True  # a `parallel` inside `fn` runs in this thread (the pool is busy)
        try:
            return run(item)
        finally:
            THREAD_STATE.serial = False

    futures = [_pool().submit(call, item) for item in items]
    concurrent.futures.wait(futures)
    return [f.result() for f in futures]


def astype(x: np.ndarray, dtype: Any) -> np.ndarray:
    """`x.astype(dtype, copy=False)`, bit for bit; a large cast is copied in row chunks over THREADS
    threads (casting BERT-base's float32 weights to float64 reads 438 MB and writes 876 MB)."""
    x, dtype = np.asarray(x), np.dtype(dtype)
    if x.dtype == dtype or x.size < (1 << 20) or x.ndim == 0 or not x.flags.c_contiguous:
        return x.astype(dtype, copy=False)
    out = np.empty(x.shape, dtype)
    rows_x, rows_out = x.reshape(x.shape[0], -1), out.reshape(x.shape[0], -1)

    def run(first: int, last: int) -> None:
        np.copyto(rows_out[first:last], rows_x[first:last], casting="unsafe")

    parallel(run, x.shape[0], min_size=1)
    return out



# ----------------------------------------------------------------------------------------------
# Rounding to a half type and back, fast


def _bits_of(value: float, dtype: type) -> int:
    return int(np.array(value, dtype).view(np.uint64 if dtype is np.float64 else np.uint32))


def _rounding_spec(work: np.dtype, half: np.dtype) -> tuple[type, int, int, int] | None:
    """(unsigned type, mantissa bits dropped, low, high) for rounding `work` (float32/float64) values to
    `half` (float16, bfloat16) on their bit patterns: round-to-nearest-even of the kept mantissa
    bits is exact where |x|'s bit pattern lies in [low, high) (the half type's normal range, below
    its overflow threshold); anything else (zeros, the half type's subnormals, overflow, inf, NaN)
    is cast element by element. None: another pair (cast with `astype`)."""
    name = half.name
    if work == np.float32 and name == "float16":  # 10 mantissa bits kept of 23; normal from 2^-14; 65520 -> inf
        return np.uint32, 13, _bits_of(2.0 ** -14, np.float32), _bits_of(65520.0, np.float32)
    if work == np.float32 and name == "bfloat16":  # 7 of 23, float32's exponent range: only inf/NaN aside
        return np.uint32, 16, 0, 0x7F800000
    if work == np.float64 and name == "float16":  # 10 of 52
        return np.uint64, 42, _bits_of(2.0 ** -14, np.float64), _bits_of(65520.0, np.float64)
    if work == np.float64 and name == "bfloat16":  # 7 of 52; normal from 2^-126; 2^128 - 2^119 (half way) -> inf
        return np.uint64, 45, _bits_of(2.0 ** -126, np.float64), _bits_of(2.0 ** 128 - 2.0 ** 119, np.float64)
    return None


# Elements per block of `round_through` (64 Ki: the block and its temporaries stay in the L2 cache).
_ROUND_BLOCK = 1 << 16


def round_through(x: np.ndarray, half: Any, out: np.ndarray | None = None) -> np.ndarray:
    """`x.astype(half).astype(x.dtype)`, bit for bit (NaN stays NaN), for a float32/float64 `x` and
    `half` float16 or bfloat16, computed in cache-sized blocks over THREADS threads: into `out` (a
    C-contiguous array of `x`'s shape and dtype; it may be `x` itself), else a new array.

    NumPy casts float32 to float16 one element at a time (about 6 ns each, measured); on the bit
    pattern, round-to-nearest-even to the half type's 10 (float16) or 7 (bfloat16) mantissa bits is
    five integer passes (the rule of `bert_ref.model.precision.round_to_tf32`). It is exact wherever
    the value is a normal number of the half type below its overflow threshold; the rest (zeros,
    the half type's subnormals, overflow, inf and NaN) is cast with `astype`, element by element.
    Both conversions round once (float64 to float16 directly, not through float32): so does this.
    Other dtypes: `astype` itself."""
    x, half = np.asarray(x), np.dtype(half)
    spec = _rounding_spec(x.dtype, half)
    if spec is None or x.size == 0:
        y = x.astype(half).astype(x.dtype)
        if out is None:
            return y
        out[...] = y
        return out
    uint, drop, low, high = spec
    one, keep = uint(1), uint(~((1 << drop) - 1) & (np.iinfo(uint).max))
    below, sign_off, span = uint((1 << (drop - 1)) - 1), uint(np.iinfo(uint).max >> 1), uint(high - low)
    src = np.ascontiguousarray(x).reshape(-1)
    if out is None:
        out = np.empty(x.shape, x.dtype)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {x.dtype} array of shape {x.shape}")
    bits: np.ndarray = src.view(uint)
    obits: np.ndarray = out.reshape(-1).view(uint)
    shift = uint(drop)

    def run(first: int, last: int) -> None:
        for start in range(first * _ROUND_BLOCK, min(last * _ROUND_BLOCK, src.size), _ROUND_BLOCK):
            b, o = bits[start : start + _ROUND_BLOCK], obits[start : start + _ROUND_BLOCK]
            a = b & sign_off  # |x|'s bits
            a -= uint(low)  # (wraps below `low`)
            odd = a >= span  # outside [low, high): cast as NumPy casts (before `o`, which may be `b`, is written)
            where: np.ndarray | None = None
            fix: np.ndarray | None = None
            if odd.any():  # (zeros, exact as they are, are left to the bit rule: masked attention is full of them)
                where = np.flatnonzero(odd)
                values = src[start + where]
                nonzero = values != 0
                where, values = (where, values) if nonzero.all() else (where[nonzero], values[nonzero])
                fix = values.astype(half).astype(x.dtype).view(uint)
            t = np.right_shift(b, shift)  # the lowest kept bit ...
            t &= one
            t += below  # ... plus just under half the dropped bits' weight: ties go to even
            t += b
            np.bitwise_and(t, keep, out=o)
            if fix is not None:
                o[where] = fix

    parallel(run, -(-src.size // _ROUND_BLOCK), min_size=4)
    return out


# OpenBLAS's thread count, controlled through its C API (as threadpoolctl does): (set, get), or
# False where NumPy's BLAS is not an OpenBLAS we can find (the batch split is then not used).
_BLAS: tuple[Callable[[int], None], Callable[[], int]] | bool | None = None
_BLAS_LOCK = threading.Lock()
_blas_users = 0
_blas_saved = 1


def _find_openblas() -> tuple[Callable[[int], None], Callable[[], int]] | bool:
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    for path in sorted(paths, key=lambda p: ("numpy" not in p, p)):  # NumPy's own OpenBLAS first
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        names = (("openblas", ""), ("scipy_openblas", "64_"), ("openblas", "64_"), ("scipy_openblas", ""))
        for prefix, suffix in names:
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                return setter, getter
    return False


def blas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    global _BLAS
    if _BLAS is None:
        _BLAS = _find_openblas()
    return _BLAS if isinstance(_BLAS, tuple) else None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """OpenBLAS at one thread for the duration (process-wide; nested and concurrent uses share
    one count, and the last one out restores the thread count it found)."""
    global _blas_users, _blas_saved
    api = blas()
    assert api is not None
    with _BLAS_LOCK:
        if _blas_users == 0:
            _blas_saved = api[1]()
            api[0](1)
        _blas_users += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_users -= 1
            if _blas_users == 0:
                api[0](_blas_saved)


# The least activation elements ([tokens, hidden]) one part of a batch split gets. Below it the
# thread is not worth starting, and OpenBLAS may use its small-matrix kernels, whose rounding can
# depend on the number of rows (the split would then not be bit-identical).
MIN_PART = 1 << 14


def batch_parts(batch: int, sequence: int, hidden: int) -> int:
    """How many parts `forward` splits a batch into: one per core, at most one per sequence and
    one per MIN_PART activations; 1 (no split) on one core, inside a split, or where OpenBLAS's
    thread count cannot be set."""
    n = min(threads(), batch, batch * sequence * hidden // MIN_PART)
    return n if n > 1 and blas() is not None else 1


def in_batch_parts(run: Callable[..., Any], *arrays: np.ndarray, hidden: int) -> Any:
    """`run(*arrays)`, with the batch (the first axis of every array) split into `batch_parts` parts,
    each run through `run` by its own thread while OpenBLAS is held at one thread: no fork/join around
    each GEMM, and each part's elementwise work on its own core. The parts' results (an array, or a
    tuple or list of them, nested; None) are concatenated along the batch; an error in a part is raised
    here, once every part has ended. A GEMM's rows do not depend on the other rows, so the result is
    `run(*arrays)`'s, bit for bit (parts are kept above OpenBLAS's small-matrix sizes: MIN_PART)."""
    batch, sequence = arrays[0].shape[:2]
    parts = batch_parts(batch, sequence, hidden)
    if parts == 1:
        return run(*arrays)
    bounds = [batch * i // parts for i in range(parts + 1)]
    results: list[Any] = [None] * parts

    def part(i: int) -> None:
        THREAD_STATE.serial = True
        try:
            results[i] = run(*(a[bounds[i] : bounds[i + 1]] for a in arrays))
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            results[i] = error
        finally:
            THREAD_STATE.serial = False

    with one_blas_thread():
        started = [threading.Thread(target=part, args=(i,), name=f"bert_ref-part{i}") for i in range(1, parts)]
        for t in started:
            t.start()
        part(0)
        for t in started:
            t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return _concatenate(results)


def _concatenate(results: list[Any]) -> Any:
    """The parts' results, joined along the batch: arrays concatenated, tuples and lists element by
    element, None left None."""
    first = results[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(_concatenate(list(r)) for r in zip(*results, strict=True))
    return np.concatenate(results)
