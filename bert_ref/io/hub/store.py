"""Our cache on disk: per-preset locks, staging directories, and the completion marker.

A preset directory in the cache is built in a hidden staging directory next to it
(`.<name>.partial-<pid>-<random>`), a marker file recording what was fetched is written into it
last, and the whole directory is renamed into place. So a preset directory either does not exist or
is complete; a killed process leaves only a hidden staging directory, which is never mistaken for a
preset and is removed by the next fetch of the same preset (under the lock, so never while in use).

Concurrent fetches of one preset are serialised with `fcntl.flock` on `.<name>.lock`; the second
process waits, then finds the preset complete. Where `fcntl` does not exist the renames alone keep
the cache consistent (both processes download; the first rename wins, the second is discarded).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from bert_ref.io import atomic

try:
    import fcntl

    _HAVE_FLOCK = True
except ImportError:  # pragma: no cover - non-POSIX
    _HAVE_FLOCK = False

#: Written last into a preset directory; its presence means every file is in place.
MARKER = ".bert_ref_complete.json"
_TEMP_KINDS = ("partial", "old", "archive")


def is_complete(directory: Path) -> bool:
    """True when `directory` is a finished preset directory of our cache."""
    return (Path(directory) / MARKER).is_file()


def read_record(directory: Path) -> dict:
    """The marker's record: source, URLs, and size + sha256 of every file fetched."""
    return json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock for fetching `dest` (blocks while another process holds it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not _HAVE_FLOCK:  # pragma: no cover - non-POSIX
        yield
        return
    fd = os.open(dest.parent / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the lock file stays (deleting it would race)


def temp_path(dest: Path, kind: str) -> Path:
    """A fresh hidden sibling of `dest` for `kind` in ("partial", "old", "archive")."""
    assert kind in _TEMP_KINDS
    return dest.parent / f".{dest.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale(dest: Path) -> list[Path]:
    """Delete leftovers of killed fetches of `dest`. Call only while holding `locked(dest)`."""
    if not _HAVE_FLOCK or not dest.parent.is_dir():  # pragma: no cover - without locks we cannot tell
        return []
    removed = []
    for kind in _TEMP_KINDS:
        for path in dest.parent.glob(f".{dest.name}.{kind}-*"):
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A fresh hidden directory to build `dest` in; removed if the block raises."""
    path = temp_path(dest, "partial")
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException:
        _remove(path)
        raise


def commit(stage: Path, dest: Path, record: dict, *, replace: bool = False) -> Path:
    """Write the marker into `stage`, then rename it to `dest`; returns `dest`.

    If `dest` is already complete (another process won a race) the new copy is discarded, unless
    `replace`, in which case the old directory is moved aside and deleted after the swap.
    """
    atomic.write_text(stage / MARKER, json.dumps(record, indent=1, sort_keys=True))
    if dest.exists():
        if is_complete(dest) and not replace:
            _remove(stage)
            return dest
        old = temp_path(dest, "old")
        os.rename(dest, old)
        os.rename(stage, dest)
        _remove(old)
        return dest
    try:
        os.rename(stage, dest)
    except OSError:
        if is_complete(dest):  # lost a race without a lock: keep the winner's copy
            _remove(stage)
            return dest
        raise
    return dest
