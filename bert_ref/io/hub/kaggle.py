"""`kaggle://owner/model/framework/variation[/version]` and the built-in preset names.

A model-instance version is one archive, from
`{KAGGLE_API_ENDPOINT}/api/v1/models/{owner}/{model}/{framework}/{variation}/{version}/download`
(a tar, usually gzip-compressed, or a zip), extracted safely into a staging directory and renamed
into place. Without a version, `.../{variation}/get` is asked for the latest (`versionNumber`).

Lookup order: our cache (`<cache>/kaggle/<owner>/<model>/<framework>/<variation>/<version>`), then
an existing kagglehub cache used read-only (`<KAGGLEHUB_CACHE>/models/<owner>/<model>/<framework>/
<variation>/<version>`, complete when kagglehub's marker `<variation>/<version>.complete` exists),
then the network. Offline, an unversioned handle resolves to the highest cached version.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from bert_ref.io.hub import settings, store
from bert_ref.io.hub.archive import extract
from bert_ref.io.hub.errors import DownloadError, HubError, OfflineError

if TYPE_CHECKING:  # transfer imports requests: only a download needs it
    from bert_ref.io.hub.transfer import Fetcher

FORMS = "kaggle://owner/model/framework/variation or kaggle://owner/model/framework/variation/version"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The field of Kaggle's GetModelInstance response holding the latest version number.
VERSION_FIELD = "versionNumber"


@dataclasses.dataclass(frozen=True)
class KaggleHandle:
    owner: str
    model: str
    framework: str
    variation: str
    version: int | None = None

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.owner, self.model, self.framework, self.variation)

    def with_version(self, version: int) -> KaggleHandle:
        return dataclasses.replace(self, version=version)

    def __str__(self) -> str:
        tail = "" if self.version is None else f"/{self.version}"
        return "kaggle://" + "/".join(self.parts) + tail


def parse(rest: str, original: str) -> KaggleHandle:
    """Parse what follows `kaggle://`; ValueError naming the accepted forms otherwise."""
    parts = rest.split("/")
    if len(parts) not in (4, 5) or not all(_PART.fullmatch(p) and ".." not in p for p in parts[:4]):
        raise ValueError(f"{original!r} is not a Kaggle model handle; accepted forms: {FORMS}")
    version = None
    if len(parts) == 5:
        if not parts[4].isdigit() or int(parts[4]) < 1:
            raise ValueError(f"{original!r}: version {parts[4]!r} must be a positive integer; "
                             f"accepted forms: {FORMS}")
        version = int(parts[4])
    owner, model, framework, variation = parts[:4]
    return KaggleHandle(owner, model, framework, variation, version)


def _api(h: KaggleHandle) -> str:
    return f"{settings.kaggle_endpoint()}/api/v1/models/" + "/".join(h.parts)


def cache_path(h: KaggleHandle) -> Path:
    assert h.version is not None
    return settings.cache_dir() / "kaggle" / Path(*h.parts) / str(h.version)


def kagglehub_path(h: KaggleHandle) -> Path:
    assert h.version is not None
    return settings.kagglehub_cache() / "models" / Path(*h.parts) / str(h.version)


def _kagglehub_complete(h: KaggleHandle) -> bool:
    path = kagglehub_path(h)
    return path.is_dir() and (path.parent / f"{h.version}.complete").is_file()


def cached(h: KaggleHandle) -> Path | None:
    """A complete local copy of a versioned handle, from our cache or kagglehub's."""
    if store.is_complete(cache_path(h)):
        return cache_path(h)
    if _kagglehub_complete(h):
        return kagglehub_path(h)
    return None


def _cached_versions(h: KaggleHandle) -> list[int]:
    versions: set[int] = set()
    for root in (settings.cache_dir() / "kaggle", settings.kagglehub_cache() / "models"):
        base = root / Path(*h.parts)
        if base.is_dir():
            versions.update(int(p.name) for p in base.iterdir() if p.name.isdigit())
    return sorted((v for v in versions if cached(h.with_version(v)) is not None), reverse=True)


def latest_version(h: KaggleHandle, fetcher: Fetcher) -> int:
    url = f"{_api(h)}/get"
    data = fetcher.get_json(url)
    version = data.get(VERSION_FIELD)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DownloadError(f"{url}: expected a positive integer {VERSION_FIELD!r} in the response, "
                            f"got {version!r}", url=url)
    return version


def fetch(h: KaggleHandle, *, progress: bool | None = None, force: bool = False,
          label: str | None = None) -> Path:
    """A local directory holding the files of this model-instance version."""
    label = label or str(h)
    offline = settings.is_offline()
    if h.version is None:
        if offline:
            versions = _cached_versions(h)
            if not versions:
                raise _offline_error(h, label)
            h = h.with_version(versions[0])
        else:
            with _fetcher(progress) as fetcher:
                h = h.with_version(latest_version(h, fetcher))
    if not force:
        found = cached(h)
        if found is not None:
            return found
    if offline:
        raise _offline_error(h, label)
    dest = cache_path(h)
    with store.locked(dest):
        if not force and store.is_complete(dest):
            return dest
        store.remove_stale(dest)
        url = f"{_api(h)}/{h.version}/download"
        download_dir = store.temp_path(dest, "archive")
        archive = download_dir / "archive"
        try:
            with _fetcher(progress) as fetcher:
                got = fetcher.download(url, archive, label=f"{h.variation} v{h.version}")
            with store.staging(dest) as stage:
                files = extract(archive, stage, source=url)
                if not (stage / "config.json").is_file():
                    raise HubError(f"the archive from {url} has no config.json at its top level "
                                   f"(it holds: {', '.join(sorted(files)[:10]) or 'nothing'}); "
                                   "it is not a preset")
                record = {"source": str(h), "url": url, "archive_size": got.size,
                          "archive_sha256": got.sha256, "files": sorted(files)}
                return store.commit(stage, dest, record, replace=force)
        finally:
            shutil.rmtree(download_dir, ignore_errors=True)


def _fetcher(progress: bool | None) -> Fetcher:
    from bert_ref.io.hub.transfer import Fetcher

    return Fetcher("kaggle", basic=settings.kaggle_credentials(), progress=progress)


def _offline_error(h: KaggleHandle, label: str) -> OfflineError:
    if h.version is None:
        what = "no version of it is cached"
        ours = settings.cache_dir() / "kaggle" / Path(*h.parts) / "<version>"
        theirs = settings.kagglehub_cache() / "models" / Path(*h.parts) / "<version>"
    else:
        what = "it is not cached"
        ours, theirs = cache_path(h), kagglehub_path(h)
    shown = label if label == str(h) else f"{label} ({h})"
    return OfflineError(
        f"{shown}: {what} and offline mode is on (BERT_REF_OFFLINE / HF_HUB_OFFLINE). Looked in "
        f"{ours} and in the kagglehub cache {theirs}. Unset offline mode to download it, or run "
        "`bert_ref.io.hub.download` while online")
