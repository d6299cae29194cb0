"""Operating-system errors said in the project's one error style: the path, what went wrong, and
what to do about it.

`os.pwrite`, `os.fsync` and reads of a pipe raise `OSError`s that name no file ("[Errno 28] No
space left on device"); `file_error` gives them the path and a remedy:

    >>> import errno
    >>> print(file_error(OSError(errno.ENOSPC, "No space left on device"), "out/a.npz", "write"))
    out/a.npz: cannot write: no space left on device (ENOSPC); free space on its file system or write somewhere else
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

#: errno -> (what happened, what to do)
_REMEDIES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space on its file system or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write somewhere else"),
    errno.EFBIG: ("file too large", "the file size limit is reached (`ulimit -f`, or the file system's largest "
                  "file): raise the limit or write to another file system"),
    errno.EACCES: ("permission denied", "choose a path you may use, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a path you may use, or change its permissions"),
    errno.EROFS: ("read-only file system", "write somewhere else"),
    errno.ESPIPE: ("not seekable (a pipe or a terminal)", "save the stream to a regular file first and give "
                   "that file (e.g. `cat data > data.jsonl`)"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.ENOTDIR: ("a part of the path is not a directory", "check the path"),
    errno.EISDIR: ("is a directory", "give a file"),
    errno.EMFILE: ("too many open files", "raise the open-files limit (`ulimit -n`)"),
    errno.EIO: ("input/output error", "the storage reported a fault: check the device"),
}


#: Errors that only writing gives: `describe` says "cannot write" for them.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def file_error(exc: OSError, path: str | os.PathLike, action: str | None) -> OSError:
    """`exc` as an `OSError` of the same errno whose message names `path`, says what went wrong and
    what to do: "PATH: cannot ACTION: WHAT (ECODE); REMEDY" ("PATH: WHAT ..." without an action).
    Its `filename` is `path`."""
    code = exc.errno
    what, remedy = _REMEDIES.get(code or -1, (None, None))
    reason = what or (exc.strerror or str(exc) or type(exc).__name__).strip()
    name = errno.errorcode.get(code or -1)
    text = (f"{path}: " + (f"cannot {action}: " if action else "") + reason + (f" ({name})" if name else "")
            + (f"; {remedy}" if remedy else ""))
    return _Described(code, text, os.fspath(path))


class _Described(OSError):
    """An `OSError` whose `str()` is its whole message (no "[Errno N]" prefix, no repeated path)."""

    def __init__(self, code: int | None, text: str, path: str | None = None):
        if code is None:
            super().__init__(text)
        else:
            super().__init__(code, text)
        self.filename = path
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple[type, tuple[int | None, str, str | None]]:  # raised in a Dask worker
        return (type(self), (self.errno, self.text, self.filename))


def writer_error(exc: Exception, path: str | os.PathLike) -> OSError:
    """An error of a writer that is not Python's own (the `safetensors` package's SafetensorError,
    whose message ends "(os error 28)" for an OS error) as `file_error(..., "write")`."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    found = re.search(r"\(os error (\d+)\)", text)
    err = OSError(int(found.group(1)), text) if found else OSError(text)
    return file_error(err, path, "write")


def describe(exc: OSError) -> str:
    """The one-line message of an `OSError` raised anywhere: already described ones as they are;
    others with their `filename` and a remedy when they have one."""
    if isinstance(exc, _Described) or exc.filename is None or exc.errno is None:
        return str(exc)
    return str(file_error(exc, exc.filename, "write" if exc.errno in _WRITE_ERRORS else None))


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` if it is a regular file (symlinks followed); else an `OSError` that says what it is and
    what to give instead. `what` names the argument ("--dataset", "inputs file")."""
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        mode = os.stat(p).st_mode
    except OSError as e:
        raise file_error(e, label, "read") from None
    if stat.S_ISREG(mode):
        return p
    kind = ("a directory" if stat.S_ISDIR(mode) else
            "a pipe (e.g. a process substitution <(...))" if stat.S_ISFIFO(mode) else
            "a character device" if stat.S_ISCHR(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise _Described(errno.ESPIPE if stat.S_ISFIFO(mode) else errno.EINVAL,
                     f"{label}: is {kind}, not a regular file; it is read more than once and at byte offsets: "
                     f"save it to a file first (e.g. `cat ... > data.jsonl`) and give that file", str(p))
