"""A fake Hugging Face hub and Kaggle API on 127.0.0.1, with fault injection, for tests/test_hub*.py.

Speaks the URL schemes and headers `bert_ref.io.hub` relies on:

* Hugging Face: `GET /{repo}/resolve/{revision}/{file}`. Small files: 200 with the git-blob sha1 as
  ETag and `X-Repo-Commit`. Large (LFS) files: 302 to `/cdn/{sha256}` carrying `X-Linked-Etag`
  (the sha256), `X-Linked-Size` and `X-Repo-Commit`. Unknown files: 404.
* Kaggle: `GET /api/v1/models/{o}/{m}/{f}/{v}/get` -> `{"versionNumber": latest}`;
  `GET /api/v1/models/{o}/{m}/{f}/{v}/{version}/download` -> 302 to `/gcs/...`, which serves the
  archive with `X-Goog-Hash: md5=...`.

Faults (`FakeHub.fault(match, kind, times=..., ...)`, applied to requests whose path contains
`match`): `status` (any HTTP code), `truncate` (announce the full length, send half, close),
`corrupt` (flip one byte, headers unchanged), `slow` (sleep before the headers) and `stall` (send
half the body, then sleep) and `hold` (send half the body, wait until `until()` is true and
`delay` more seconds, then the rest).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bert_ref.io import atomic
from bert_ref.io.hub import store

LFS_SUFFIXES = (".safetensors", ".h5", ".bin")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass
class Fault:
    match: str
    kind: str
    times: float
    status: int = 500
    delay: float = 0.0
    until: object = None  # for "hold": a callable; the rest of the body waits until it is true
    body: bytes | None = None  # for "gzip" / "unsized": sent instead of the file's own bytes


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict


@dataclasses.dataclass
class Response:
    status: int
    headers: dict
    body: bytes = b""


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"refs": {rev: commit}, "commits": {commit: files}}
        self.kaggle: dict[str, dict[int, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.log: list[Request] = []
        self.hf_token: str | None = None
        self.kaggle_auth: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.handler_errors: list = []

    # -- content ------------------------------------------------------------------------------
    def add_hf_repo(self, repo_id: str, files: dict[str, bytes], *, revision: str = "main",
                    commit: str | None = None) -> str:
        """Publish `files` as `revision` of `repo_id`; returns the commit hash."""
        commit = commit or hashlib.sha1(repr((repo_id, revision, sorted(files.items()))).encode()
                                        ).hexdigest()
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["refs"][revision] = commit
        repo["commits"][commit] = dict(files)
        for name, data in files.items():
            if name.endswith(LFS_SUFFIXES):
                self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def add_kaggle(self, handle: str, version: int, archive: bytes) -> None:
        """Publish `archive` as version `version` of `owner/model/framework/variation`."""
        self.kaggle.setdefault(handle, {})[version] = archive

    def fault(self, match: str, kind: str, *, times: float = math.inf, status: int = 500,
              delay: float = 0.0, until=None, body: bytes | None = None) -> None:
        self.faults.append(Fault(match, kind, times, status, delay, until, body))

    def hits(self, match: str) -> list[Request]:
        with self._lock:
            return [r for r in self.log if match in r.path]

    # -- server -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A client that gives up (timeouts, limits, a fault test) makes the handler's final flush
        # fail; socketserver would print that traceback to stderr, possibly while a later test
        # checks stderr. Record it instead.
        self._server.handle_error = lambda request, address: self.handler_errors.append(address)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- routing ------------------------------------------------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.match in path and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        with self._lock:
            self.log.append(Request("GET", path, dict(h.headers.items())))
        fault = self._take_fault(path)
        if fault is not None and fault.kind == "status":
            return self._send(h, Response(fault.status, {}, f"injected {fault.status}".encode()))
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        resp = self._route(path, h.headers)
        if fault is None or fault.kind == "slow":
            return self._send(h, resp)
        if fault.kind == "gzip":  # a content-encoded body (sent although identity was asked for)
            body = gzip.compress(resp.body if fault.body is None else fault.body)
            return self._send(h, Response(resp.status, {**resp.headers, "Content-Encoding": "gzip"}, body))
        if fault.kind == "unsized":  # no Content-Length: the body ends when the connection closes
            body = resp.body if fault.body is None else fault.body
            h.send_response(resp.status)
            for k, v in {**resp.headers, "Connection": "close"}.items():
                h.send_header(k, v)
            h.end_headers()
            with contextlib.suppress(OSError):
                h.wfile.write(body)
                h.wfile.flush()
            h.close_connection = True
            return None
        if fault.kind == "trickle":  # one byte every `delay` seconds
            self._send_head(h, resp)
            try:
                for i in range(len(resp.body)):
                    h.wfile.write(resp.body[i:i + 1])
                    h.wfile.flush()
                    time.sleep(fault.delay)
            except OSError:
                pass
            h.close_connection = True
            return None
        if fault.kind == "corrupt" and resp.body:
            body = bytearray(resp.body)
            body[len(body) // 2] ^= 0xFF
            return self._send(h, Response(resp.status, resp.headers, bytes(body)))
        if fault.kind in ("truncate", "stall", "hold"):
            half = len(resp.body) // 2
            self._send_head(h, resp)
            h.wfile.write(resp.body[:half])
            h.wfile.flush()
            if fault.kind == "hold":
                deadline = time.monotonic() + 30
                while not fault.until() and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(fault.delay)
            if fault.kind in ("stall", "hold"):
                if fault.kind == "stall":
                    time.sleep(fault.delay)
                try:
                    h.wfile.write(resp.body[half:])
                    h.wfile.flush()
                except OSError:
                    pass
            h.close_connection = True
            return None
        raise AssertionError(f"unknown fault {fault.kind!r}")

    def _send_head(self, h: BaseHTTPRequestHandler, resp: Response) -> None:
        h.send_response(resp.status)
        headers = {"Content-Length": str(len(resp.body)), **resp.headers}
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()

    def _send(self, h: BaseHTTPRequestHandler, resp: Response) -> None:
        try:
            self._send_head(h, resp)
            h.wfile.write(resp.body)
            h.wfile.flush()
        except OSError:  # the client gave up (timeouts)
            h.close_connection = True

    def _route(self, path: str, headers) -> Response:
        if path.startswith("/cdn/"):
            data = self.blobs.get(path[len("/cdn/"):])
            if data is None:
                return Response(404, {}, b"no such blob")
            return Response(200, {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}, data)
        if path.startswith("/gcs/"):
            handle, _, version = path[len("/gcs/"):].rpartition("/")
            data = self.kaggle.get(handle, {}).get(int(version))
            if data is None:
                return Response(404, {}, b"no such object")
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            return Response(200, {"X-Goog-Hash": f"crc32c=AAAAAA==,md5={md5}",
                                  "Content-Type": "application/octet-stream"}, data)
        if path.startswith("/api/v1/models/"):
            return self._kaggle(path[len("/api/v1/models/"):], headers)
        if "/resolve/" in path:
            return self._hf(path, headers)
        return Response(404, {}, b"unknown route")

    def _hf(self, path: str, headers) -> Response:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        revision, name = unquote(revision), unquote(name)
        repo = self.repos.get(repo_id)
        if self.hf_token is not None and headers.get("Authorization") != f"Bearer {self.hf_token}":
            return Response(401, {"X-Error-Code": "GatedRepo"}, b"Access to this repo is restricted")
        if repo is None:
            return Response(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
        commit = repo["refs"].get(revision, revision)
        files = repo["commits"].get(commit)
        if files is None:
            return Response(404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id")
        data = files.get(name)
        if data is None:
            return Response(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit},
                            b"Entry not found")
        if name.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            return Response(302, {"Location": f"/cdn/{sha}", "X-Linked-Etag": f'"{sha}"',
                                  "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"',
                                  "X-Repo-Commit": commit})
        return Response(200, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": commit}, data)

    def _kaggle(self, rest: str, headers) -> Response:
        if self.kaggle_auth is not None:
            want = "Basic " + base64.b64encode(":".join(self.kaggle_auth).encode()).decode()
            if headers.get("Authorization") != want:
                return Response(401, {}, b'{"code":401,"message":"Unauthenticated"}')
        parts = rest.split("/")
        if len(parts) == 5 and parts[4] == "get":
            versions = self.kaggle.get("/".join(parts[:4]))
            if not versions:
                return Response(404, {}, b'{"code":404}')
            body = json.dumps({"id": 1, "versionNumber": max(versions), "slug": parts[3]}).encode()
            return Response(200, {"Content-Type": "application/json"}, body)
        if len(parts) == 6 and parts[5] == "download" and parts[4].isdigit():
            handle = "/".join(parts[:4])
            if int(parts[4]) not in self.kaggle.get(handle, {}):
                return Response(404, {}, b'{"code":404}')
            return Response(302, {"Location": f"/gcs/{handle}/{parts[4]}"})
        return Response(404, {}, b'{"code":404}')


# -- archives -------------------------------------------------------------------------------------
def tar_gz(files: dict[str, bytes], *, extra=()) -> bytes:
    """A gzip tar of `files`, plus raw `tarfile.TarInfo` members in `extra` (for unsafe cases)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


# -- helpers shared by tests/test_hub*.py (the fixtures are in conftest.py) -------------------------------------------
def dir_contents(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != store.MARKER}


def assert_cache_clean(root: Path) -> None:
    """Nothing half-written: no temp files, no staging dirs, and every preset dir is complete."""
    if not root.exists():
        return
    for p in root.rglob("*"):
        name = p.name
        assert not name.endswith((".part", atomic.TEMP_SUFFIX)), f"temp file left behind: {p}"
        assert not any(f".{k}-" in name for k in ("partial", "old", "archive")), f"left: {p}"
    for p in root.rglob("*"):
        if p.is_file() and not p.name.endswith(".lock"):
            assert any(store.is_complete(d) for d in p.relative_to(root).parents
                       for d in [root / d]), f"file outside a complete preset directory: {p}"


def assert_nothing_cached(root: Path) -> None:
    """`assert_cache_clean`, and no file at all but locks: a failed download kept nothing."""
    assert_cache_clean(root)
    assert not any(p.is_file() and not p.name.endswith(".lock") for p in root.rglob("*"))


def make_hf_cache(root: Path, repo: str, files: dict[str, bytes], ref: str = "main") -> Path:
    """The layout huggingface_hub writes: blobs/<hash>, snapshots/<commit>/<file> -> blob symlinks."""
    base = root / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (base / "refs").mkdir(parents=True)
    (base / "refs" / ref).write_text(commit)
    snap = base / "snapshots" / commit
    (base / "blobs").mkdir()
    for name, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(os.path.relpath(blob, (snap / name).parent))
    return snap
