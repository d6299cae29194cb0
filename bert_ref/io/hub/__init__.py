"""From a preset string to a local directory: built-in names, `kaggle://`, `hf://`, local paths.

    >>> from bert_ref.io.hub import resolve
    >>> resolve("bert_tiny_en_uncased")                      # doctest: +SKIP
    PosixPath('/home/me/.cache/bert_ref/kaggle/keras/bert/keras/bert_tiny_en_uncased/3')

Accepted forms:

* a local directory (`"./my_preset"`, a `pathlib.Path`): returned as is once it is known to exist;
* a built-in name (`bert_ref.model.presets.PRESETS`), which means keras-hub's Kaggle handle for it;
* `kaggle://owner/model/framework/variation[/version]` (latest version when omitted);
* `hf://owner/name[@revision]` (revision `main` when omitted), holding either a keras-hub preset or
  a Hugging Face `BertModel` checkpoint.

A built-in name wins over a directory of the same name; write `./bert_base_en` for the directory.
Downloads go to our cache (`BERT_REF_CACHE`, see `bert_ref.io.hub.settings` for every environment
variable), complete and verified or not at all; existing Hugging Face and kagglehub caches are reused
read-only. In offline mode (`BERT_REF_OFFLINE=1` or `HF_HUB_OFFLINE=1`) nothing touches the network.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from bert_ref.io.hub import huggingface, kaggle
from bert_ref.io.hub.errors import (
    AuthenticationError,
    DownloadError,
    HubError,
    IntegrityError,
    OfflineError,
    RemoteNotFoundError,
    UnsafeArchiveError,
)
from bert_ref.io.hub.settings import cache_dir, is_offline
from bert_ref.model.presets import PRESETS

__all__ = [
    "resolve", "download", "cache_dir", "is_offline", "AuthenticationError", "DownloadError",
    "HubError", "IntegrityError", "OfflineError", "RemoteNotFoundError", "UnsafeArchiveError",
]

FORMS = (
    "a local directory, a built-in preset name (" + ", ".join(PRESETS) + "), "
    f"{kaggle.FORMS}, or {huggingface.FORMS}"
)


def resolve(preset: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """A local directory holding the files of `preset`, downloading them if needed.

    Args:
        preset: a local directory, a built-in name, `kaggle://...` or `hf://...` (see the module
            docstring).
        progress: progress bars on stderr for large downloads. None (default): only when stderr
            is a terminal and `BERT_REF_QUIET` is not set; True: always (needs tqdm); False: never.

    Returns:
        The directory's `pathlib.Path`: the local directory itself, a directory of our cache, or
        a directory of an existing Hugging Face / kagglehub cache (never to be written to).

    Raises:
        ValueError: a malformed handle or unknown scheme (the message lists the accepted forms).
        FileNotFoundError / NotADirectoryError: a local path that is not a directory.
        OfflineError: offline mode is on and the preset is not cached.
        AuthenticationError, RemoteNotFoundError, IntegrityError, DownloadError: HTTP failures,
            each naming the URL and the likely fix.
        UnsafeArchiveError: a Kaggle archive with absolute paths, `..` or links.
    """
    return _resolve(preset, progress=progress, force=False)


def download(preset: str | os.PathLike, *, progress: bool | None = None,
             force: bool = False) -> Path:
    """Fetch `preset` into the cache ahead of time; same result as `resolve`.

    With `force=True` the remote files are fetched again even if cached, and replace our cached
    copy (use it to refresh a branch such as `hf://owner/name@main`).
    """
    return _resolve(preset, progress=progress, force=force)


def _resolve(preset: object, *, progress: bool | None, force: bool) -> Path:
    if isinstance(preset, os.PathLike):
        return _local(os.fspath(preset), preset)
    if not isinstance(preset, str):
        raise TypeError(f"preset must be a str or os.PathLike, got {type(preset).__name__}")
    if "://" in preset:
        scheme, rest = preset.split("://", 1)
        if scheme == "hf":
            return huggingface.fetch(huggingface.parse(rest, preset), progress=progress, force=force)
        if scheme == "kaggle":
            return kaggle.fetch(kaggle.parse(rest, preset), progress=progress, force=force)
        raise ValueError(f"{preset!r}: unknown scheme {scheme + '://'!r}; accepted forms: {FORMS}")
    if preset in PRESETS:
        handle = PRESETS[preset]["kaggle_handle"]
        prefix = "kaggle://"
        assert handle.startswith(prefix), handle
        return kaggle.fetch(kaggle.parse(handle[len(prefix):], handle), progress=progress,
                            force=force, label=f"built-in preset {preset!r}")
    return _local(preset, preset)


def _local(text: str, original: str | os.PathLike) -> Path:
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"preset {original!r}: {path} is a file; a preset is a directory "
                                 "holding config.json and the weights")
    hint = ""
    close = difflib.get_close_matches(text, list(PRESETS), n=1)
    if close:
        hint = f" Did you mean the built-in preset {close[0]!r}?"
    raise FileNotFoundError(f"preset {original!r}: no such directory ({path.absolute()}), and it is "
                            f"not a built-in preset name. Accepted forms: {FORMS}.{hint}")
