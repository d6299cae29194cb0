"""HTTP for the hub: one `requests.Session`, timeouts, bounded retries, verified streaming downloads.

A download streams into a temporary file next to its destination (`bert_ref.io.atomic`) and is
renamed into place only after its size and checksum are verified, so the destination is either
absent or complete:

* sha256 from Hugging Face's `X-Linked-Etag` (or `ETag`) when it is a 64-hex LFS hash;
* md5 from Google Cloud Storage's `X-Goog-Hash` (Kaggle redirects there);
* the byte count from `X-Linked-Size` or `Content-Length` otherwise.

Retried (bounded, exponential backoff): HTTP 408/429/5xx, connection errors, timeouts and bodies
cut short. Not retried: 401/403/404 and other 4xx, and checksum mismatches.

Bounded (see `bert_ref.model.limits`): a body is never longer than the size the server announced, or
than BERT_REF_MAX_DOWNLOAD_BYTES when it announces none; one file's download stops after
BERT_REF_DOWNLOAD_DEADLINE seconds in all, however slowly the bytes arrive; JSON responses are
size- and depth-limited; content-encoded (gzip, ...) bodies are refused, never decoded.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import requests
import urllib3

from bert_ref import __version__
from bert_ref.io import atomic
from bert_ref.io.hub import settings
from bert_ref.io.hub.errors import AuthenticationError, DownloadError, IntegrityError, RemoteNotFoundError
from bert_ref.model import limits

USER_AGENT = (
    f"bert_ref/{__version__} (+https://pypi.org/project/bert-ref/) requests/{requests.__version__} "
    f"python/{platform.python_version()}"
)
CHUNK_SIZE = 1 << 20
#: Files at least this large get a progress bar when progress is automatic.
PROGRESS_MIN_BYTES = 4 << 20
MAX_BACKOFF = 60.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RETRY_STATUS = {408, 429}

T = TypeVar("T")


class _Retryable(Exception):
    """A failure worth another attempt; `describe` says what happened."""

    def __init__(self, describe: str, status: int | None = None):
        super().__init__(describe)
        self.describe = describe
        self.status = status


@dataclasses.dataclass(frozen=True)
class Downloaded:
    """A file that arrived complete and verified."""

    path: Path
    url: str
    size: int
    sha256: str
    commit: str | None  # Hugging Face's X-Repo-Commit, when sent


def _headers_chain(resp: requests.Response) -> list:
    return [r.headers for r in (*resp.history, resp)]


def _first(resp: requests.Response, name: str) -> str | None:
    for headers in _headers_chain(resp):
        if name in headers:
            return headers[name]
    return None


def _clean_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def expected_sha256(resp: requests.Response) -> str | None:
    """The LFS sha256 announced by Hugging Face (`X-Linked-Etag`, else `ETag`), if any."""
    for name in ("X-Linked-Etag", "ETag"):
        for headers in _headers_chain(resp):
            value = _clean_etag(headers.get(name))
            if value and _SHA256.fullmatch(value):
                return value
    return None


def expected_size(resp: requests.Response) -> int | None:
    """The body size announced by `X-Linked-Size`, else by the final `Content-Length` (unless the
    body is content-encoded, when Content-Length counts the encoded bytes)."""
    encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    length = None if encoded else resp.headers.get("Content-Length")
    for raw in (_first(resp, "X-Linked-Size"), length):
        if raw is not None and raw.strip().isdigit():
            return int(raw)
    return None


def expected_md5(resp: requests.Response) -> str | None:
    """The base64 md5 of a Google Cloud Storage body (`X-Goog-Hash: crc32c=...,md5=...`)."""
    value = resp.headers.get("X-Goog-Hash")
    if not value:
        return None
    for part in value.split(","):
        name, _, digest = part.strip().partition("=")
        if name == "md5" and digest:
            return digest
    return None


def _progress_enabled(progress: bool | None, total: int | None) -> bool:
    if progress is False:
        return False
    if progress is None:
        if settings.is_quiet() or total is None or total < PROGRESS_MIN_BYTES:
            return False
        try:
            if not sys.stderr.isatty():
                return False
        except (AttributeError, ValueError):
            return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _progress_bar(progress: bool | None, total: int | None, label: str) -> contextlib.AbstractContextManager[Any]:
    """A tqdm bar (its `update(n)`), or a context yielding None when progress is off."""
    if not _progress_enabled(progress, total):
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                file=sys.stderr, leave=False)


class Fetcher:
    """Makes the requests of one resolve: a shared session, credentials, retry policy, progress.

    Args:
        site: "hf" or "kaggle"; selects the advice in error messages.
        bearer: a token sent as `Authorization: Bearer ...` (Hugging Face).
        basic: (username, key) for HTTP basic auth (Kaggle).
        progress: None (automatic), True or False.
    """

    def __init__(self, site: str, *, bearer: str | None = None,
                 basic: tuple[str, str] | None = None, progress: bool | None = None):
        self.site = site
        self.progress = progress
        self.timeout = settings.http_timeout()
        self.retries = settings.http_retries()
        self.backoff = settings.http_backoff()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # Sizes are checked against Content-Length, so bodies must arrive unencoded.
        self.session.headers["Accept-Encoding"] = "identity"
        if bearer:
            # requests drops this header when a redirect leaves the host (e.g. to a CDN).
            self.session.headers["Authorization"] = f"Bearer {bearer}"
        if basic:
            self.session.auth = basic

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- advice -------------------------------------------------------------------------------
    def _auth_hint(self) -> str:
        if self.site == "hf":
            return ("the repository is private or gated, or does not exist. Set HF_TOKEN to a token "
                    "with read access (https://huggingface.co/settings/tokens) and accept the "
                    "model's terms on its page")
        return ("set KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json) to your Kaggle API "
                "credentials and accept the model's license on its Kaggle page")

    def _not_found_hint(self) -> str:
        if self.site == "hf":
            return "check the repository name, the revision (after '@') and the file name"
        return "check the handle kaggle://owner/model/framework/variation[/version] and the version"

    def _network_hint(self) -> str:
        env = "HF_ENDPOINT" if self.site == "hf" else "KAGGLE_API_ENDPOINT"
        return (f"check your network connection and {env}, or set BERT_REF_OFFLINE=1 to use only "
                f"cached presets")

    # -- core ---------------------------------------------------------------------------------
    def _check_status(self, resp: requests.Response, url: str) -> None:
        code = resp.status_code
        if 200 <= code < 300:
            return
        what = f"HTTP {code} {resp.reason or ''}".rstrip() + f" from {url}"
        if code in (401, 403):
            raise AuthenticationError(f"{what}: {self._auth_hint()}", url=url, status=code)
        if code == 404:
            raise RemoteNotFoundError(f"{what}: {self._not_found_hint()}", url=url, status=code)
        if code in _RETRY_STATUS or code >= 500:
            raise _Retryable(f"HTTP {code} {resp.reason or ''}".rstrip(), status=code)
        raise DownloadError(f"{what}: unexpected response", url=url, status=code)

    def _with_retries(self, url: str, op: Callable[[], T]) -> T:
        last: _Retryable | None = None
        for attempt in range(1, self.retries + 1):
            try:
                return op()
            except _Retryable as exc:
                last = exc
            except DownloadError as exc:
                exc.attempts = attempt
                raise
            if attempt < self.retries:
                time.sleep(min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1)))
        assert last is not None
        if last.status is not None:
            advice = "the server is failing; try again later"
        else:
            advice = self._network_hint()
        raise DownloadError(
            f"GET {url} failed after {self.retries} attempt(s) (BERT_REF_HTTP_RETRIES): "
            f"{last.describe}; {advice}",
            url=url, status=last.status, attempts=self.retries,
        )

    def _get(self, url: str, *, stream: bool) -> requests.Response:
        try:
            return self.session.get(url, stream=stream, timeout=self.timeout)
        except requests.exceptions.Timeout:
            raise _Retryable(f"timed out after {self.timeout:g} s (BERT_REF_HTTP_TIMEOUT)") from None
        except requests.exceptions.ConnectionError as exc:
            raise _Retryable(f"connection failed ({_short(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise DownloadError(f"request to {url} failed: {exc}", url=url) from None

    def get_json(self, url: str) -> dict:
        """GET a JSON object, with retries; a clear error if the body is not a JSON object."""

        def op() -> dict:
            with self._get(url, stream=True) as resp:
                self._check_status(resp, url)
                body = self._read_capped(resp, url, limits.limit("json_bytes"), limits.env_name("json_bytes"))
                try:
                    data = limits.loads(body, url)
                except limits.LimitError as exc:
                    raise DownloadError(str(exc), url=url, status=resp.status_code) from None
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    raise DownloadError(f"{url} did not return a JSON object: {body[:200]!r}",
                                        url=url, status=resp.status_code)
                return data

        return self._with_retries(url, op)

    @overload
    def download(self, url: str, dest: Path, *, optional: Literal[False] = False,
                 label: str | None = None) -> Downloaded: ...

    @overload
    def download(self, url: str, dest: Path, *, optional: bool,
                 label: str | None = None) -> Downloaded | None: ...

    def download(self, url: str, dest: Path, *, optional: bool = False,
                 label: str | None = None) -> Downloaded | None:
        """Stream `url` into `dest` (verified, atomic). Returns None for a 404 when `optional`."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def op() -> Downloaded | None:
            with self._get(url, stream=True) as resp:
                if optional and resp.status_code == 404:
                    return None
                self._check_status(resp, url)
                return self._stream(resp, url, dest, label or dest.name)

        return self._with_retries(url, op)

    def _body(self, resp: requests.Response, url: str, cap: int, cap_env: str,
              start: float) -> Iterator[bytes]:
        """The body's bytes as sent (never transparently decoded), at most `cap` of them, within
        the per-file deadline (BERT_REF_DOWNLOAD_DEADLINE) counted from `start`."""
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # We ask for identity: sizes and checksums are of the file itself, and a compressed
            # body could expand without bound (1 MB of gzip is 1 GB of zeros).
            raise DownloadError(f"{url}: the server sent a body with Content-Encoding {encoding!r} although "
                                "the request asked for 'identity'; refusing to decode it", url=url,
                                status=resp.status_code)
        deadline = limits.limit("download_deadline")
        raw = resp.raw
        got = 0
        while True:
            # read1 returns what has arrived (up to CHUNK_SIZE), so the deadline is checked even
            # when a server sends one byte at a time.
            chunk = raw.read1(CHUNK_SIZE, decode_content=False)
            if not chunk:
                return
            got += len(chunk)
            if got > cap:
                raise DownloadError(f"{url}: the body is larger than {cap:,} bytes ({cap_env}); the download "
                                    "was stopped and discarded", url=url, status=resp.status_code)
            yield chunk
            if time.monotonic() - start > deadline:
                raise DownloadError(f"{url}: the download took longer than {deadline:,} s "
                                    f"({limits.env_name('download_deadline')}) after {got:,} bytes; it was "
                                    "stopped and discarded", url=url, status=resp.status_code)

    def _read_capped(self, resp: requests.Response, url: str, cap: int, cap_env: str) -> bytes:
        return b"".join(self._body(resp, url, cap, cap_env, time.monotonic()))

    def _stream(self, resp: requests.Response, url: str, dest: Path, label: str) -> Downloaded:
        want_sha, want_size, want_md5 = expected_sha256(resp), expected_size(resp), expected_md5(resp)
        start = time.monotonic()
        hard_cap, cap_env = limits.limit("download_bytes"), limits.env_name("download_bytes")
        if want_size is not None and want_size > hard_cap:
            raise DownloadError(f"{url}: the server announces {want_size:,} bytes, over the limit of "
                                f"{hard_cap:,} ({cap_env}); not downloaded", url=url, status=resp.status_code)
        # The stated size when there is one (a longer body is not the file announced), else the limit.
        cap = want_size if want_size is not None else hard_cap
        if want_size is not None:
            cap_env = "the size the server announced"
        with atomic.AtomicFile(dest) as part:
            sha, md5, got = hashlib.sha256(), hashlib.md5() if want_md5 else None, 0
            with _progress_bar(self.progress, want_size, label) as bar:
                out = part.file()
                try:
                    for chunk in self._body(resp, url, cap, cap_env, start):
                        out.write(chunk)
                        sha.update(chunk)
                        if md5 is not None:
                            md5.update(chunk)
                        got += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                    if isinstance(exc, (requests.exceptions.Timeout,
                                        urllib3.exceptions.ReadTimeoutError)) or "timed out" in str(exc):
                        raise _Retryable(f"timed out after {self.timeout:g} s (BERT_REF_HTTP_TIMEOUT) "
                                         f"after {got} bytes of the body") from None
                    raise _Retryable(f"connection dropped after {got}"
                                     + (f" of {want_size}" if want_size is not None else "")
                                     + f" bytes ({_short(exc)})") from None
            if want_size is not None and got != want_size:
                raise _Retryable(f"body cut short: received {got} of {want_size} bytes")
            digest = sha.hexdigest()
            if want_sha is not None and digest != want_sha:
                raise IntegrityError(
                    f"checksum mismatch for {url}: the server announced sha256 {want_sha}, the "
                    f"{got} bytes received hash to {digest}; the file was discarded. Retry later; "
                    f"if it persists the remote file or a proxy in between is corrupt",
                    url=url, status=resp.status_code)
            if md5 is not None:
                got_md5 = base64.b64encode(md5.digest()).decode("ascii")
                if got_md5 != want_md5:
                    raise IntegrityError(
                        f"checksum mismatch for {url}: X-Goog-Hash announced md5 {want_md5}, the "
                        f"{got} bytes received hash to {got_md5}; the file was discarded",
                        url=url, status=resp.status_code)
        commit = _first(resp, "X-Repo-Commit")
        return Downloaded(path=dest, url=url, size=got, sha256=digest,
                          commit=commit.strip() if commit else None)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
