"""Downloads and archives are bounded (bert_ref.model.limits): body size, total time, content encoding,
archive bytes, entries and duplicate members; each refusal leaves nothing in the cache."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from bert_ref.io import hub
from bert_ref.io.hub.errors import DownloadError, UnsafeArchiveError

from hub_server import assert_nothing_cached, tar_gz, zip_bytes
from test_hub import KHANDLE, hf_files, native_files

# Every test runs `isolated` (tests/conftest.py): no credentials or proxies, caches under tmp_path.
pytestmark = pytest.mark.usefixtures("isolated")


def test_a_gzip_encoded_body_is_refused_not_inflated(server, cache):
    # 64 MiB of zeros is 64 KiB of gzip. Before, requests inflated it transparently into the file.
    server.add_hf_repo("org/bomb", hf_files())
    server.fault("/org/bomb/resolve/main/config.json", "gzip", body=bytes(64 << 20))
    with pytest.raises(DownloadError, match=r"config\.json: the server sent a body with Content-Encoding 'gzip'"):
        hub.resolve("hf://org/bomb")
    assert_nothing_cached(cache)


def test_a_body_of_unstated_size_is_capped(server, cache, monkeypatch):
    monkeypatch.setenv("BERT_REF_MAX_DOWNLOAD_BYTES", "10000")
    server.add_hf_repo("org/big", hf_files())
    server.fault("/org/big/resolve/main/config.json", "unsized", body=b" " * 200_000)
    with pytest.raises(DownloadError, match=r"config\.json: the body is larger than 10,000 bytes "
                                            r"\(BERT_REF_MAX_DOWNLOAD_BYTES\)"):
        hub.resolve("hf://org/big")
    assert_nothing_cached(cache)


def test_a_body_of_unstated_size_within_the_cap_downloads(server, cache):
    server.add_hf_repo("org/ok", hf_files())
    server.fault("/org/ok/resolve/main/config.json", "unsized")
    assert (hub.resolve("hf://org/ok") / "config.json").read_bytes() == hf_files()["config.json"]


def test_an_announced_size_over_the_limit_is_refused_before_the_body(server, cache, monkeypatch):
    monkeypatch.setenv("BERT_REF_MAX_DOWNLOAD_BYTES", "100")
    server.add_hf_repo("org/huge", hf_files())
    with pytest.raises(DownloadError, match=r"announces \d+ bytes, over the limit of 100 "
                                            r"\(BERT_REF_MAX_DOWNLOAD_BYTES\)"):
        hub.resolve("hf://org/huge")
    assert_nothing_cached(cache)


def test_a_trickling_server_meets_the_per_file_deadline(server, cache, monkeypatch):
    # One byte every 20 ms of a ~300-byte config: 6 s; the deadline stops it after 1 s. Before,
    # only the per-read timeout applied, so 1 byte/s held a download for ever.
    monkeypatch.setenv("BERT_REF_DOWNLOAD_DEADLINE", "1")
    server.add_hf_repo("org/slow", hf_files())
    server.fault("/org/slow/resolve/main/config.json", "trickle", delay=0.02)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"took longer than 1 s \(BERT_REF_DOWNLOAD_DEADLINE\)"):
        hub.resolve("hf://org/slow")
    assert time.monotonic() - start < 5
    assert_nothing_cached(cache)


def test_a_content_encoded_json_response_is_refused(server, cache):
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files()))
    server.fault(f"/api/v1/models/{KHANDLE}/get", "gzip")
    with pytest.raises(DownloadError, match="Content-Encoding"):
        hub.resolve(f"kaggle://{KHANDLE}")


def test_a_json_response_is_depth_limited(server, cache):
    # Before: RecursionError from the JSON parser.
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files()))
    server.fault(f"/api/v1/models/{KHANDLE}/get", "unsized", body=b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DownloadError, match=r"/get: JSON nested 100000 levels deep, over the limit of 64"):
        hub.resolve(f"kaggle://{KHANDLE}")


def test_a_json_response_is_size_limited(server, cache, monkeypatch):
    monkeypatch.setenv("BERT_REF_MAX_JSON_BYTES", "1000")
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files()))
    server.fault(f"/api/v1/models/{KHANDLE}/get", "unsized", body=b'{"a": "' + b"x" * 5000 + b'"}')
    with pytest.raises(DownloadError, match=r"/get: the body is larger than 1,000 bytes \(BERT_REF_MAX_JSON_BYTES\)"):
        hub.resolve(f"kaggle://{KHANDLE}")


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_archive_with_too_many_entries_is_refused(server, cache, monkeypatch):
    monkeypatch.setenv("BERT_REF_MAX_ARCHIVE_ENTRIES", "5")
    files = dict(native_files(), **{f"junk/{i}.txt": b"x" for i in range(10)})
    server.add_kaggle(KHANDLE, 3, tar_gz(files))
    with pytest.raises(UnsafeArchiveError, match=r"more than 5 entries \(set BERT_REF_MAX_ARCHIVE_ENTRIES"):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert_nothing_cached(cache)


@pytest.mark.parametrize("pack", [tar_gz, zip_bytes], ids=["tar", "zip"])
def test_an_archive_that_extracts_to_too_many_bytes_is_refused(server, cache, monkeypatch, pack):
    # 1 MiB of zeros compresses to ~1 KiB: the declared sizes are checked before writing.
    monkeypatch.setenv("BERT_REF_MAX_ARCHIVE_BYTES", str(512 << 10))
    server.add_kaggle(KHANDLE, 3, pack(dict(native_files(), **{"zeros.bin": bytes(1 << 20)})))
    with pytest.raises(UnsafeArchiveError, match=r"passes 524,288 bytes in all \(set BERT_REF_MAX_ARCHIVE_BYTES"):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert_nothing_cached(cache)


def test_an_archive_with_two_entries_for_one_file_is_refused(server, cache):
    # Before, the later config.json silently won.
    files = native_files()
    members = list(files.items()) + [("./config.json", b'{"class_name": "Evil"}')]
    server.add_kaggle(KHANDLE, 3, _tar(members))
    with pytest.raises(UnsafeArchiveError, match=r"members 'config.json' and './config.json' are the same file"):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert_nothing_cached(cache)
