"""The one way bert_ref writes a file: whole or not at all.

Every file the package writes (outputs, converted presets, downloads, oracle cache entries, dataset
shards and manifests, JUnit reports, plots) is written like this:

1. a fresh temporary file is created in the target's directory by `tempfile.mkstemp`
   (`O_CREAT | O_EXCL` under a random name `.<name>.<random>.tmp`): it is never an existing file,
   and a symlink planted at a temporary name is not followed (`O_EXCL` refuses it and another name
   is drawn);
2. the data are written to it, flushed and `fsync`ed;
3. it gets the permissions a plain `open(path, "w")` would give (0666 less the umask; `mkstemp`
   creates 0600) and is renamed over the target (`os.replace`, atomic within a directory; a symlink
   at the target is replaced, not written through); the directory is `fsync`ed so the rename lasts.

A failure at any step removes the temporary file, and only that file: nothing half-written is left
and the target is unchanged. OS errors are raised as `OSError` (of the matching subclass) whose
`filename` is the target path, so the message names it.

    >>> from bert_ref.io import atomic
    >>> atomic.write_text("report.xml", text)          # doctest: +SKIP
    >>> with atomic.open_atomic("out.npz") as f:       # doctest: +SKIP
    ...     np.savez(f, **arrays)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Temporary names are `.<target name>.<8 random characters>` + TEMP_SUFFIX (see `temp_glob`).
TEMP_SUFFIX = ".tmp"
# A temporary name must fit NAME_MAX (255 bytes) with its prefix, random part and suffix.
_NAME_ROOM = 200


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode `os.mkdir` gives a new directory: 0777 less the umask."""
    return 0o777 & ~umask()


def temp_glob(target: str | os.PathLike) -> str:
    """The glob matching the temporary names of `target` (for a caller that removes what its own
    killed workers left; `AtomicFile` itself only ever removes the one it created)."""
    return f".{Path(target).name[:_NAME_ROOM]}.????????{TEMP_SUFFIX}"


def _error(e: OSError, path: Path) -> OSError:
    """`e` again (same errno, same subclass) naming `path`, the target, rather than a temporary name:
    `[Errno 28] No space left on device: 'out.npz'`."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened or synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A file being written under a temporary name next to `path`; `commit()` puts it in place,
    `discard()` (or leaving a `with` block by an exception) removes it.

    `fd` is the open descriptor (for `os.pwrite`, `os.ftruncate`), `tmp` the temporary path (for
    writers that insist on a file name; it is this process's own file, created empty), and
    `file(...)` a buffered file object on `fd`."""

    def __init__(self, path: str | os.PathLike, *, durable: bool = True):
        self.path = Path(path)
        self.durable = durable
        directory = self.path.parent
        try:
            fd, name = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name[:_NAME_ROOM]}.",
                                        suffix=TEMP_SUFFIX)
        except OSError as e:
            raise _error(e, self.path) from None
        self.fd: int | None = fd
        self.tmp = Path(name)
        self._file: IO[Any] | None = None

    def file(self, mode: str = "wb", encoding: str | None = None) -> IO[Any]:
        """A file object writing to the temporary file (`"wb"` or `"w"` with `encoding`); closed by
        `commit` / `discard`."""
        if self.fd is None:
            raise ValueError(f"{self.path}: already committed or discarded")
        if self._file is None:
            self._file = os.fdopen(self.fd, mode, encoding=encoding, closefd=False)
        return self._file

    def commit(self) -> Path:
        """Flush, fsync, set the mode, rename over `path`; returns `path`. On failure the temporary
        file is removed and an `OSError` naming `path` is raised."""
        if self.fd is None:
            raise ValueError(f"{self.path}: already committed or discarded")
        try:
            if self._file is not None:
                self._file.flush()
            if self.durable:
                os.fsync(self.fd)
            os.fchmod(self.fd, file_mode())
            self._close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.discard()
            raise _error(e, self.path) from None
        if self.durable:
            _fsync_dir(self.path.parent)
        return self.path

    def _close(self) -> None:
        file, fd, self._file, self.fd = self._file, self.fd, None, None
        try:
            if file is not None:
                file.close()
        finally:
            if fd is not None:
                os.close(fd)

    def discard(self) -> None:
        """Close and remove the temporary file (this process's own; nothing else is touched)."""
        with contextlib.suppress(OSError):
            self._close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            self.commit()
            return
        self.discard()
        if type(value).__module__ == "builtins" and isinstance(value, OSError) and \
                value.filename in (None, str(self.tmp)):  # a write to the file failed: name the target
            raise _error(value, self.path) from None


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                durable: bool = True) -> Iterator[IO[Any]]:
    """A file object for `path` (`"wb"`, or `"w"` with `encoding`): what is written appears at
    `path` when the block ends, or nothing does if it raises.

    `durable=False` skips the fsyncs (for a cache whose entries are verified when read)."""
    with AtomicFile(path, durable=durable) as af:
        f = af.file(mode, "utf-8" if "b" not in mode and encoding is None else encoding)
        try:
            yield f
        except BaseException:
            af.discard()
            raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path for writers that take a file name (the `safetensors` package, ...): it
    exists, empty, created by this process; what the block leaves there is renamed to `path`."""
    with AtomicFile(path, durable=durable) as af:
        try:
            yield af.tmp
        except BaseException:
            af.discard()
            raise
        # The writer replaced or reopened the file by name: flush what it wrote through a fresh
        # descriptor before the rename.
        if af.fd is not None:
            os.close(af.fd)
        try:
            af.fd = os.open(af.tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            af.fd = None
            af.discard()
            raise _error(e, af.path) from None


def write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview, *, durable: bool = True) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with AtomicFile(path, durable=durable) as af:
        view = memoryview(data).cast("B")
        assert af.fd is not None
        try:
            while view:
                view = view[os.write(af.fd, view):]
        except OSError as e:
            af.discard()
            raise _error(e, af.path) from None
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode(encoding), durable=durable)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging directory next to `path` (`.<name>.<random>.tmp`, mode 0777 less the umask)
    to build a directory in (a converted preset). When the block ends the stage is renamed to
    `path`, unless `path` exists by then: the block may have moved the files it wants into an
    existing `path` itself. The stage is removed in any case, and if the block raises nothing else
    changes."""
    path = Path(path)
    try:
        stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name[:_NAME_ROOM]}.", suffix=TEMP_SUFFIX))
        os.chmod(stage, dir_mode())
    except OSError as e:
        raise _error(e, path) from None
    try:
        yield stage
        if stage.exists() and not path.exists():
            try:
                os.rename(stage, path)
            except OSError as e:
                raise _error(e, path) from None
            _fsync_dir(path.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
