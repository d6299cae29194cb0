"""Safe extraction of Kaggle model archives (tar, optionally compressed, or zip).

Only regular files and directories are extracted, each under the target directory. Absolute paths,
`..` components, backslashes, links (symbolic or hard), devices and FIFOs raise
`UnsafeArchiveError` naming the member, before anything is written. Permissions and owners in the
archive are ignored (files are created 0644 under the caller's umask).

Bounded (see `bert_ref.model.limits`): at most BERT_REF_MAX_ARCHIVE_ENTRIES members and
BERT_REF_MAX_ARCHIVE_BYTES extracted bytes (declared sizes are checked before anything is written,
and the bytes actually produced are counted while writing). Two members with the same path are
refused: which one "wins" would otherwise depend on their order.
"""

from __future__ import annotations

import functools
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from bert_ref.io.hub.errors import HubError, UnsafeArchiveError
from bert_ref.model import limits


def safe_relpath(name: str, where: str) -> PurePosixPath:
    """`name` as a relative path that stays inside its root, or `UnsafeArchiveError`."""
    if not name or "\\" in name or "\x00" in name:
        raise UnsafeArchiveError(f"{where}: unsafe member name {name!r} (empty, backslash or NUL)")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{where}: member {name!r} has an absolute path")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise UnsafeArchiveError(f"{where}: member {name!r} escapes the target directory ('..')")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    return f"an unsupported tar member (type {member.type!r})"


def extract(archive: Path, target: Path, *, source: str) -> list[str]:
    """Extract `archive` into the existing directory `target`; returns the files written.

    `source` (a URL) is named in error messages.
    """
    archive, target = Path(archive), Path(target)
    if tarfile.is_tarfile(archive):
        return _extract_tar(archive, target, source)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, target, source)
    with open(archive, "rb") as f:
        head = f.read(16)
    raise HubError(f"{source}: the download is neither a tar nor a zip archive "
                   f"(first bytes {head!r})")


class _Budget:
    """Counts entries and bytes against the archive limits; errors name the archive's source."""

    def __init__(self, source: str):
        self.where = f"archive from {source}"
        self.entries, self.bytes = 0, 0
        self.max_entries, self.max_bytes = limits.limit("archive_entries"), limits.limit("archive_bytes")
        self.seen: dict[str, str] = {}

    def entry(self, name: str, rel: PurePosixPath, size: int, is_file: bool) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise UnsafeArchiveError(f"{self.where}: more than {self.max_entries:,} entries "
                                     f"(set {limits.env_name('archive_entries')} to raise the limit)")
        self.add(size, name)
        if is_file:
            key = rel.as_posix()
            if key in self.seen:
                raise UnsafeArchiveError(f"{self.where}: members {self.seen[key]!r} and {name!r} are the same "
                                         f"file {key!r}; an archive must hold each file once")
            self.seen[key] = name

    def add(self, size: int, name: str) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise UnsafeArchiveError(f"{self.where}: extracting {name!r} passes {self.max_bytes:,} bytes "
                                     f"in all (set {limits.env_name('archive_bytes')} to raise the limit)")


def _copy(src: IO[bytes], dst: IO[bytes], budget: _Budget, name: str) -> None:
    """Copy at most what the budget allows (a member may inflate beyond its declared size)."""
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            return
        budget.add(len(chunk), name)
        dst.write(chunk)


#: A member to extract: (its name in the archive, its path under the target, whether it is a
#: directory, how to open its bytes).
_Member = tuple[str, PurePosixPath, bool, Callable[[], IO[bytes]]]


def _write_members(plan: list[_Member], target: Path, source: str) -> list[str]:
    """Make the planned directories and copy the planned files under `target`, within the byte
    limit (counted on what is read: a member may inflate beyond its declared size)."""
    written, copied = [], _Budget(source)
    for name, rel, is_dir, open_member in plan:
        out = target / rel
        if is_dir:
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(out, "wb") as dst:
            _copy(src, dst, copied, name)
        written.append(rel.as_posix())
    return written


def _tar_file(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    src = tar.extractfile(member)
    assert src is not None  # a regular file (checked when planned)
    return src


def _extract_tar(archive: Path, target: Path, source: str) -> list[str]:
    planned, where = _Budget(source), f"archive from {source}"
    with tarfile.open(archive, "r:*") as tar:
        plan: list[_Member] = []
        for m in tar:  # one member at a time: the entry limit holds before the whole index is read
            rel = safe_relpath(m.name, where)
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{where}: member {m.name!r} is {_kind(m)}; only regular "
                                         "files and directories are extracted")
            planned.entry(m.name, rel, m.size if m.isfile() else 0, m.isfile())
            plan.append((m.name, rel, m.isdir(), functools.partial(_tar_file, tar, m)))
        return _write_members(plan, target, source)


def _extract_zip(archive: Path, target: Path, source: str) -> list[str]:
    planned, where = _Budget(source), f"archive from {source}"
    with zipfile.ZipFile(archive) as zf:
        plan: list[_Member] = []
        for info in zf.infolist():
            rel = safe_relpath(info.filename, where)
            mode = info.external_attr >> 16
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeArchiveError(f"{where}: member {info.filename!r} is not a regular file "
                                         f"or directory (mode {oct(mode)}); links are not extracted")
            planned.entry(info.filename, rel, info.file_size, not info.is_dir())
            plan.append((info.filename, rel, info.is_dir(), functools.partial(zf.open, info)))
        return _write_members(plan, target, source)
