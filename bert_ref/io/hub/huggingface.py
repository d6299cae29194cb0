"""`hf://owner/name[@revision]`: files from a Hugging Face hub (or any server speaking its URLs).

Files come from `{HF_ENDPOINT}/{owner}/{name}/resolve/{revision}/{file}`. config.json is fetched
first; its layout (keras-hub or Hugging Face) decides which other files are fetched. Once config.json
arrives, the rest is fetched at the commit the server reported for it (`X-Repo-Commit`), so a branch
that moves mid-download cannot mix two revisions.

Lookup order: our cache (`<cache>/hf/<owner>--<name>/<revision>`), then an existing Hugging Face
cache used read-only (`models--<owner>--<name>/refs/<revision>` -> `snapshots/<commit>/`), then
the network. A branch name is fetched once and then served from the cache; pin a commit hash, or use
`download(..., force=True)`, to refresh.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from bert_ref.io.hub import layout, settings, store
from bert_ref.io.hub.archive import safe_relpath
from bert_ref.io.hub.errors import HubError, OfflineError, RemoteNotFoundError
from bert_ref.model import limits

if TYPE_CHECKING:  # transfer imports requests: only a download needs it
    from bert_ref.io.hub.transfer import Fetcher

FORMS = "hf://owner/name or hf://owner/name@revision"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclasses.dataclass(frozen=True)
class HfHandle:
    owner: str | None
    name: str
    revision: str

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.name}" if self.owner else self.name

    def __str__(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}"


def parse(rest: str, original: str) -> HfHandle:
    """Parse what follows `hf://`; ValueError naming the accepted form otherwise."""
    repo, sep, revision = rest.partition("@")
    if sep and not revision:
        raise ValueError(f"{original!r}: empty revision after '@'; accepted forms: {FORMS}")
    revision = revision or "main"
    if any(part in ("", ".", "..") for part in revision.split("/")) or "\\" in revision:
        raise ValueError(f"{original!r}: malformed revision {revision!r}; accepted forms: {FORMS}")
    parts = repo.split("/")
    if not 1 <= len(parts) <= 2 or not all(_NAME.fullmatch(p) and "--" not in p and ".." not in p
                                            for p in parts):
        raise ValueError(
            f"{original!r} is not a Hugging Face repository handle; accepted forms: {FORMS} "
            "(owner and name use letters, digits, '.', '_' and '-')")
    owner, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return HfHandle(owner, name, revision)


def cache_path(h: HfHandle) -> Path:
    """Our cache directory for this repository and revision."""
    repo = f"{h.owner}--{h.name}" if h.owner else h.name
    return settings.cache_dir() / "hf" / repo / quote(h.revision, safe="")


def hf_cache_snapshot(h: HfHandle) -> Path | None:
    """The snapshot directory of a Hugging Face cache for this revision, if it exists."""
    repo = "--".join(["models", *filter(None, [h.owner, h.name])])
    root = settings.hf_hub_cache() / repo
    if _COMMIT.fullmatch(h.revision):
        commit = h.revision
    else:
        try:
            commit = (root / "refs" / h.revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    if not _COMMIT.fullmatch(commit):
        return None
    snapshot = root / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


class _Incomplete(Exception):
    pass


class _LocalSource:
    """Checks that a directory (a Hugging Face snapshot) holds everything the layout needs."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, name: str, *, required: bool) -> Path | None:
        path = self.root / safe_relpath(name, str(self.root))
        if path.is_file():
            return path
        if required:
            raise _Incomplete(name)
        return None

    def read_json(self, name: str) -> dict:
        try:
            return limits.load_file(self.root / name)
        except (OSError, ValueError):
            raise _Incomplete(name) from None

    def describe(self, name: str) -> str:
        return str(self.root / name)

    def missing(self, message: str) -> Exception:
        return _Incomplete(message)


class _RemoteSource:
    """Downloads files of one repository revision into a staging directory."""

    def __init__(self, h: HfHandle, fetcher: Fetcher, stage: Path):
        self.h, self.fetcher, self.stage = h, fetcher, stage
        self.revision = h.revision
        self.files: dict[str, dict] = {}
        self.commit: str | None = None

    def url(self, name: str) -> str:
        return (f"{settings.hf_endpoint()}/{self.h.repo_id}/resolve/"
                f"{quote(self.revision, safe='')}/{quote(name)}")

    def get(self, name: str, *, required: bool) -> Path | None:
        dest = self.stage / safe_relpath(name, self.url(name))
        got = self.fetcher.download(self.url(name), dest, optional=not required,
                                    label=f"{self.h.repo_id}/{name}")
        if got is None:
            return None
        self.files[name] = {"url": got.url, "size": got.size, "sha256": got.sha256}
        if name == "config.json" and got.commit and _COMMIT.fullmatch(got.commit):
            self.commit = self.revision = got.commit
        return dest

    def read_json(self, name: str) -> dict:
        try:
            data = limits.load_file(self.stage / name, self.files[name]["url"])
        except ValueError as exc:
            raise HubError(f"{self.files[name]['url']}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise HubError(f"{self.files[name]['url']}: expected a JSON object")
        return data

    def describe(self, name: str) -> str:
        return self.url(name)

    def missing(self, message: str) -> Exception:
        return RemoteNotFoundError(message, url=self.url("config.json"), status=404)


def cached(h: HfHandle) -> Path | None:
    """A complete local copy, from our cache or a Hugging Face cache, without any network."""
    ours = cache_path(h)
    if store.is_complete(ours):
        return ours
    snapshot = hf_cache_snapshot(h)
    if snapshot is not None:
        try:
            layout.gather(_LocalSource(snapshot))
        except (_Incomplete, ValueError):
            return None
        return snapshot
    return None


def fetch(h: HfHandle, *, progress: bool | None = None, force: bool = False) -> Path:
    """A local directory holding this repository revision's preset files."""
    if not force:
        found = cached(h)
        if found is not None:
            return found
    dest = cache_path(h)
    if settings.is_offline():
        repo = "--".join(["models", *filter(None, [h.owner, h.name])])
        raise OfflineError(
            f"{h} is not cached and offline mode is on (BERT_REF_OFFLINE / HF_HUB_OFFLINE). "
            f"Looked in {dest} and in the Hugging Face cache "
            f"{settings.hf_hub_cache() / repo} (refs/{h.revision} -> snapshots/<commit>). "
            "Unset offline mode to download it, or run `bert_ref.io.hub.download` while online")
    with store.locked(dest):
        if not force and store.is_complete(dest):
            return dest
        store.remove_stale(dest)
        from bert_ref.io.hub.transfer import Fetcher

        with Fetcher("hf", bearer=settings.hf_token(), progress=progress) as fetcher:
            with store.staging(dest) as stage:
                source = _RemoteSource(h, fetcher, stage)
                found_layout, names = layout.gather(source)
                record = {
                    "source": str(h),
                    "endpoint": settings.hf_endpoint(),
                    "revision": h.revision,
                    "commit": source.commit,
                    "layout": found_layout,
                    "files": {n: source.files[n] for n in names},
                }
                return store.commit(stage, dest, record, replace=force)
