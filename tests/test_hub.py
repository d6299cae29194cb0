"""bert_ref.io.hub against a real HTTP server on 127.0.0.1 (tests/hub_server.py), with faults injected.

Every failure test also checks that the cache holds nothing half-written afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from safetensors.numpy import save as save_safetensors

from bert_ref import BertConfig
from bert_ref.io import hub
from bert_ref.io.hub import store, transfer
from bert_ref.io.hub.errors import (
    AuthenticationError,
    DownloadError,
    HubError,
    IntegrityError,
    OfflineError,
    RemoteNotFoundError,
    UnsafeArchiveError,
)
from bert_ref.model.presets import PRESETS

from hub_server import assert_cache_clean, assert_nothing_cached, dir_contents, make_hf_cache, tar_gz, zip_bytes

# Every test runs `isolated` (tests/conftest.py): no credentials or proxies, caches under tmp_path.
pytestmark = pytest.mark.usefixtures("isolated")

TINY = BertConfig(vocabulary_size=11, num_layers=1, num_heads=2, hidden_dim=4, intermediate_dim=6,
                  max_sequence_length=8)


# -- fixture presets -----------------------------------------------------------------------------
def native_files(config: BertConfig = TINY, seed: int = 0) -> dict[str, bytes]:
    """A native preset: keras-hub's config.json layout + canonical-name model.safetensors."""
    rng = np.random.default_rng(seed)
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in config.weight_shapes().items()}
    cfg = {"module": "keras_hub.src.models.bert.bert_backbone", "class_name": "BertBackbone",
           "config": {"name": "bert_backbone", "trainable": True, **config.to_dict()},
           "registered_name": "keras_hub>BertBackbone"}
    meta = {"keras_version": "3.15.1", "keras_hub_version": "0.32.0", "parameter_count":
            config.count_params()}
    return {"config.json": json.dumps(cfg).encode(), "metadata.json": json.dumps(meta).encode(),
            "model.safetensors": save_safetensors(weights)}


def hf_config() -> bytes:
    return json.dumps({"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 11,
                       "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 6, "hidden_act": "gelu", "max_position_embeddings": 8,
                       "type_vocab_size": 2, "layer_norm_eps": 1e-12}).encode()


def hf_files(seed: int = 0) -> dict[str, bytes]:
    """A Hugging Face layout repository (weights content is opaque to the hub)."""
    rng = np.random.default_rng(seed)
    tensors = {"embeddings.word_embeddings.weight": rng.standard_normal((11, 4)).astype(np.float32)}
    return {"config.json": hf_config(), "model.safetensors": save_safetensors(tensors),
            "tokenizer.json": b'{"version": "1.0"}', "vocab.txt": b"[PAD]\n[UNK]\n",
            "README.md": b"# not needed", "pytorch_model.bin": b"PICKLE" * 10}


# -- handles and local paths ---------------------------------------------------------------------
@pytest.mark.parametrize("preset", [
    "hf://", "hf://a/b/c", "hf://a/b@", "hf://../b", "hf://a/b@../x", "hf://a--x/b",
    "kaggle://keras/bert/keras", "kaggle://keras/bert/keras/x/0", "kaggle://keras/bert/keras/x/v3",
    "kaggle://keras/bert/keras/x/3/extra", "kaggle://../bert/keras/x", "s3://bucket/model",
])
def test_malformed_handles_are_value_errors_listing_accepted_forms(preset):
    with pytest.raises(ValueError, match=r"accepted forms: .*(hf://owner/name|kaggle://owner)"):
        hub.resolve(preset)


def test_local_directory_is_returned_as_is(tmp_path):
    (tmp_path / "p").mkdir()
    assert hub.resolve(str(tmp_path / "p")) == tmp_path / "p"
    assert hub.resolve(tmp_path / "p") == tmp_path / "p"


def test_missing_local_directory_names_path_and_accepted_forms(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such directory .*Accepted forms: .*hf://"):
        hub.resolve(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"Did you mean the built-in preset 'bert_base_en'"):
        hub.resolve("bert_base_enn")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"is a file"):
        hub.resolve(str(tmp_path / "f"))


# -- Hugging Face ---------------------------------------------------------------------------------
def test_hf_keras_layout_fetches_exactly_the_needed_files(server, cache):
    files = native_files()
    server.add_hf_repo("user/bert_tiny", {**files, "README.md": b"x", "task.weights.h5": b"y"})
    path = hub.resolve("hf://user/bert_tiny")
    assert dir_contents(path) == files
    assert path.is_relative_to(cache)
    assert not server.hits("README.md") and not server.hits("task.weights.h5")
    # The first request is config.json: the layout is decided from it.
    assert server.log[0].path.endswith("/resolve/main/config.json")
    record = store.read_record(path)
    assert record["layout"] == "native"  # keras-hub's config.json layout, safetensors weights
    assert record["files"]["model.safetensors"]["sha256"] == hashlib.sha256(
        files["model.safetensors"]).hexdigest()
    assert_cache_clean(cache)


def test_hf_layout_fetches_weights_and_optional_tokenizer_files(server, cache):
    files = hf_files()
    server.add_hf_repo("org/mini", files)
    path = hub.resolve("hf://org/mini")
    want = {k: files[k] for k in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")}
    assert dir_contents(path) == want
    assert not server.hits("pytorch_model.bin") and not server.hits("README.md")
    # Optional files that are absent (404) were asked for and skipped.
    assert server.hits("tokenizer_config.json")
    assert_cache_clean(cache)


def test_hf_sharded_checkpoint_fetches_index_and_every_shard(server, cache):
    shard1, shard2 = save_safetensors({"a": np.zeros(3, np.float32)}), save_safetensors(
        {"b": np.ones(2, np.float32)})
    index = {"metadata": {"total_size": 20}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {"config.json": hf_config(), "model.safetensors.index.json": json.dumps(index).encode(),
             "model-00001-of-00002.safetensors": shard1, "model-00002-of-00002.safetensors": shard2}
    server.add_hf_repo("org/sharded", files)
    assert dir_contents(hub.resolve("hf://org/sharded")) == files
    assert_cache_clean(cache)


def test_hf_shard_names_escaping_the_directory_are_rejected(server, cache):
    index = {"weight_map": {"a": "../../escape.safetensors"}}
    server.add_hf_repo("org/evil", {"config.json": hf_config(),
                                    "model.safetensors.index.json": json.dumps(index).encode()})
    with pytest.raises(ValueError, match=r"'\.\./\.\./escape\.safetensors'.* not a plain file name"):
        hub.resolve("hf://org/evil")
    assert not server.hits("escape")
    assert_cache_clean(cache)


def test_hf_repo_with_only_pytorch_bin_is_a_clear_error(server, cache):
    server.add_hf_repo("org/old", {"config.json": hf_config(), "pytorch_model.bin": b"PICKLE"})
    with pytest.raises(RemoteNotFoundError, match=r"safetensors .*never unpickles pytorch_model.bin"):
        hub.resolve("hf://org/old")
    assert not server.hits("pytorch_model.bin")
    assert_cache_clean(cache)


def test_hf_unrecognised_config_names_what_was_looked_for(server, cache):
    server.add_hf_repo("org/gpt", {"config.json": b'{"model_type": "gpt2"}'})
    with pytest.raises(ValueError, match=r"config.json: model_type is 'gpt2'; only 'bert'"):
        hub.resolve("hf://org/gpt")
    server.add_hf_repo("org/none", {"config.json": b'{"foo": 1}'})
    with pytest.raises(ValueError, match=r"config.json: not a BERT config; looked for"):
        hub.resolve("hf://org/none")
    assert_cache_clean(cache)


def test_hf_revision_is_pinned_to_the_commit_of_config_json(server, cache):
    commit = server.add_hf_repo("org/mini", hf_files(), revision="v1.0")
    path = hub.resolve("hf://org/mini@v1.0")
    assert server.log[0].path == "/org/mini/resolve/v1.0/config.json"
    later = [r.path for r in server.hits("/resolve/")[1:]]
    assert later and all(f"/resolve/{commit}/" in p for p in later)
    assert store.read_record(path)["commit"] == commit
    assert path.name == "v1.0"


def test_hf_second_resolve_is_served_from_the_cache_without_network(server):
    server.add_hf_repo("org/mini", hf_files())
    first = hub.resolve("hf://org/mini")
    n = len(server.log)
    assert hub.resolve("hf://org/mini") == first
    assert len(server.log) == n


def test_hf_force_download_replaces_the_cached_copy(server):
    server.add_hf_repo("org/mini", hf_files(seed=0))
    path = hub.resolve("hf://org/mini")
    server.add_hf_repo("org/mini", hf_files(seed=1))
    assert hub.download("hf://org/mini", force=True) == path
    assert dir_contents(path)["model.safetensors"] == hf_files(seed=1)["model.safetensors"]


def test_requests_carry_a_bert_ref_user_agent(server):
    server.add_hf_repo("org/mini", hf_files())
    hub.resolve("hf://org/mini")
    assert all(r.headers["User-Agent"].startswith("bert_ref/") for r in server.log)


def test_hf_token_is_sent_as_bearer_and_401_explains_the_fix(server, cache, monkeypatch):
    server.add_hf_repo("org/gated", hf_files())
    server.hf_token = "hf_secret"
    with pytest.raises(AuthenticationError) as err:
        hub.resolve("hf://org/gated")
    msg = str(err.value)
    assert f"{server.url}/org/gated/resolve/main/config.json" in msg
    assert "HTTP 401" in msg and "HF_TOKEN" in msg and "accept the model's terms" in msg
    assert err.value.status == 401 and err.value.attempts == 1
    assert len(server.log) == 1  # no retries on 401
    assert_cache_clean(cache)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert "model.safetensors" in dir_contents(hub.resolve("hf://org/gated"))


def test_hf_token_file_of_huggingface_hub_is_used(server, isolated):
    server.add_hf_repo("org/gated", hf_files())
    server.hf_token = "hf_from_file"
    (isolated / "hf_home").mkdir()
    (isolated / "hf_home" / "token").write_text("hf_from_file\n")
    hub.resolve("hf://org/gated")


def test_hf_403_also_names_the_fix(server, cache):
    server.add_hf_repo("org/mini", hf_files())
    server.fault("config.json", "status", status=403)
    with pytest.raises(AuthenticationError, match=r"HTTP 403.*HF_TOKEN"):
        hub.resolve("hf://org/mini")
    assert_cache_clean(cache)


def test_hf_404_names_url_and_what_to_check(server, cache):
    with pytest.raises(RemoteNotFoundError) as err:
        hub.resolve("hf://org/missing@dev")
    msg = str(err.value)
    assert f"HTTP 404 Not Found from {server.url}/org/missing/resolve/dev/config.json" in msg
    assert "check the repository name, the revision" in msg
    assert_cache_clean(cache)


def test_hf_missing_required_weights_file_is_an_error(server, cache):
    files = native_files()
    del files["model.safetensors"]
    server.add_hf_repo("user/noweights", files)
    with pytest.raises(RemoteNotFoundError, match=r"HTTP 404.*/resolve/[0-9a-f]{40}/model\.safetensors"):
        hub.resolve("hf://user/noweights")
    assert_cache_clean(cache)


# -- retries and faults ---------------------------------------------------------------------------
def test_500_then_success_is_retried(server, cache):
    server.add_hf_repo("org/mini", hf_files())
    server.fault("/cdn/", "status", status=500, times=2)
    path = hub.resolve("hf://org/mini")
    assert dir_contents(path)["model.safetensors"] == hf_files()["model.safetensors"]
    assert len(server.hits("/cdn/")) == 3
    assert_cache_clean(cache)


def test_always_500_gives_up_after_bounded_retries(server, cache):
    server.add_hf_repo("org/mini", hf_files())
    server.fault("config.json", "status", status=503)
    with pytest.raises(DownloadError) as err:
        hub.resolve("hf://org/mini")
    msg = str(err.value)
    assert f"GET {server.url}/org/mini/resolve/main/config.json failed after 3 attempt(s)" in msg
    assert "HTTP 503" in msg and "try again later" in msg
    assert err.value.attempts == 3 and err.value.status == 503
    assert len(server.hits("config.json")) == 3
    assert_cache_clean(cache)


def test_body_cut_mid_file_is_retried_and_leaves_nothing_behind(server, cache):
    server.add_hf_repo("org/mini", hf_files())
    server.fault("/cdn/", "truncate", times=1)
    path = hub.resolve("hf://org/mini")
    assert dir_contents(path)["model.safetensors"] == hf_files()["model.safetensors"]
    assert_cache_clean(cache)


def test_body_always_cut_fails_cleanly(server, cache):
    files = hf_files()
    server.add_hf_repo("org/mini", files)
    server.fault("/cdn/", "truncate")
    with pytest.raises(DownloadError, match=r"failed after 3 attempt\(s\).*(dropped|cut short).*of "
                       + str(len(files["model.safetensors"])) + " bytes"):
        hub.resolve("hf://org/mini")
    assert len(server.hits("/cdn/")) == 3
    assert_nothing_cached(cache)


def test_checksum_mismatch_is_an_integrity_error_and_not_kept(server, cache):
    files = hf_files()
    server.add_hf_repo("org/mini", files)
    server.fault("/cdn/", "corrupt", times=1)
    with pytest.raises(IntegrityError) as err:
        hub.resolve("hf://org/mini")
    msg = str(err.value)
    assert hashlib.sha256(files["model.safetensors"]).hexdigest() in msg
    assert f"checksum mismatch for {server.url}/org/mini/resolve/" in msg and "discarded" in msg
    assert len(server.hits("/cdn/")) == 1  # a mismatch is not retried
    assert_nothing_cached(cache)


def test_size_mismatch_without_lfs_hash_is_detected(server, cache):
    server.add_hf_repo("org/mini", hf_files())
    server.fault("vocab.txt", "truncate")
    with pytest.raises(DownloadError, match=r"vocab.txt failed after 3 attempt"):
        hub.resolve("hf://org/mini")
    assert_cache_clean(cache)


def test_slow_response_times_out_with_bounded_retries(server, cache, monkeypatch):
    monkeypatch.setenv("BERT_REF_HTTP_TIMEOUT", "0.2")
    server.add_hf_repo("org/mini", hf_files())
    server.fault("config.json", "slow", delay=1.0)
    with pytest.raises(DownloadError) as err:
        hub.resolve("hf://org/mini")
    msg = str(err.value)
    assert "timed out after 0.2 s (BERT_REF_HTTP_TIMEOUT)" in msg and "config.json" in msg
    assert err.value.attempts == 3 and err.value.status is None
    assert_cache_clean(cache)


def test_slow_once_then_fast_succeeds(server, cache, monkeypatch):
    monkeypatch.setenv("BERT_REF_HTTP_TIMEOUT", "0.2")
    server.add_hf_repo("org/mini", hf_files())
    server.fault("/cdn/", "stall", delay=1.0, times=1)
    path = hub.resolve("hf://org/mini")
    assert dir_contents(path)["model.safetensors"] == hf_files()["model.safetensors"]
    assert len(server.hits("/cdn/")) == 2
    assert_cache_clean(cache)


def test_stalled_body_times_out(server, cache, monkeypatch):
    monkeypatch.setenv("BERT_REF_HTTP_TIMEOUT", "0.2")
    server.add_hf_repo("org/mini", hf_files())
    server.fault("/cdn/", "stall", delay=1.0)
    with pytest.raises(DownloadError, match=r"timed out .* bytes of the body"):
        hub.resolve("hf://org/mini")
    assert_cache_clean(cache)


def test_connection_refused_names_url_attempts_and_offline_mode(monkeypatch, cache):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError) as err:
        hub.resolve("hf://org/mini")
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/org/mini/resolve/main/config.json" in msg
    assert "3 attempt(s)" in msg and "connection failed" in msg and "BERT_REF_OFFLINE=1" in msg
    assert_cache_clean(cache)


def test_leftovers_of_a_killed_fetch_are_ignored_and_removed(server, cache):
    files = native_files()
    server.add_hf_repo("user/p", files)
    dest = cache / "hf" / "user--p" / "main"
    dest.parent.mkdir(parents=True)
    stale = dest.parent / ".main.partial-99999-deadbeef"
    stale.mkdir()
    (stale / "config.json").write_bytes(files["config.json"])
    (stale / "model.safetensors").write_bytes(files["model.safetensors"][:10])
    (stale / ".model.safetensors.abc.part").write_bytes(b"half")
    path = hub.resolve("hf://user/p")
    assert path == dest and dir_contents(path) == files
    assert not stale.exists()
    assert_cache_clean(cache)


def test_a_process_killed_mid_download_leaves_no_preset_and_the_next_fetch_succeeds(server, cache):
    files = native_files(seed=5)
    server.add_hf_repo("user/p", files)
    script = "from bert_ref.io.hub import resolve; resolve('hf://user/p')"
    child: list[subprocess.Popen] = []
    # Half the weights are sent; the rest waits until the downloading process is dead.
    server.fault("/cdn/", "hold", times=1, until=lambda: child[0].poll() is not None)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.append(proc)
    try:
        for _ in range(3000):  # wait (at most 30 s) until the child is receiving the weights
            if server.hits("/cdn/") or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert server.hits("/cdn/"), "the child never started the weights download"
    finally:
        proc.kill()
        proc.wait()
    dest = cache / "hf" / "user--p" / "main"
    assert not dest.exists()  # only hidden leftovers, never a preset directory
    leftovers = [p for p in dest.parent.iterdir() if not p.name.endswith(".lock")]
    assert leftovers and all(p.name.startswith(".main.partial-") for p in leftovers)
    assert hub.resolve("hf://user/p") == dest and dir_contents(dest) == files
    assert_cache_clean(cache)


def test_directory_without_completion_marker_is_not_trusted(server, cache):
    files = native_files()
    server.add_hf_repo("user/p", files)
    dest = cache / "hf" / "user--p" / "main"
    dest.mkdir(parents=True)
    (dest / "config.json").write_bytes(files["config.json"])  # no weights, no marker
    assert dir_contents(hub.resolve("hf://user/p")) == files
    assert store.is_complete(dest)


# -- Hugging Face cache reuse ---------------------------------------------------------------------
def test_existing_hf_cache_is_reused_read_only_without_network(server, isolated):
    files = {k: v for k, v in hf_files().items() if k in ("config.json", "model.safetensors")}
    snap = make_hf_cache(isolated / "hf_hub", "sentence-transformers/mini", files)
    before = {p: p.lstat().st_mtime_ns for p in (isolated / "hf_hub").rglob("*")}
    assert hub.resolve("hf://sentence-transformers/mini") == snap
    assert server.log == []
    assert {p: p.lstat().st_mtime_ns for p in (isolated / "hf_hub").rglob("*")} == before
    # A commit hash as revision finds the snapshot directly.
    assert hub.resolve(f"hf://sentence-transformers/mini@{snap.name}") == snap


def test_hf_home_locates_the_hf_cache_when_hf_hub_cache_is_unset(server, isolated, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    snap = make_hf_cache(isolated / "hf_home" / "hub", "org/mini",
                         {"config.json": hf_config(), "model.safetensors": b"w"})
    with monkeypatch.context() as m:
        m.setenv("BERT_REF_OFFLINE", "1")
        assert hub.resolve("hf://org/mini") == snap


def test_incomplete_hf_cache_is_not_reused(server, isolated, cache):
    make_hf_cache(isolated / "hf_hub", "org/mini", {"config.json": hf_config()})
    server.add_hf_repo("org/mini", hf_files())
    path = hub.resolve("hf://org/mini")
    assert path.is_relative_to(cache) and "model.safetensors" in dir_contents(path)


# -- Kaggle ---------------------------------------------------------------------------------------
KHANDLE = "keras/bert/keras/bert_tiny_en_uncased"


def test_kaggle_versioned_handle_downloads_and_extracts_the_archive(server, cache):
    files = {**native_files(), "assets/tokenizer/vocabulary.txt": b"[PAD]\n"}
    server.add_kaggle(KHANDLE, 3, tar_gz(files))
    path = hub.resolve(f"kaggle://{KHANDLE}/3")
    assert path == cache / "kaggle" / KHANDLE / "3"
    assert dir_contents(path) == files
    assert [r.path for r in server.log] == [f"/api/v1/models/{KHANDLE}/3/download",
                                            f"/gcs/{KHANDLE}/3"]
    assert_cache_clean(cache)


def test_kaggle_without_version_asks_for_the_latest(server, cache):
    server.add_kaggle(KHANDLE, 1, tar_gz(native_files(seed=1)))
    server.add_kaggle(KHANDLE, 2, tar_gz(native_files(seed=2)))
    path = hub.resolve(f"kaggle://{KHANDLE}")
    assert server.log[0].path == f"/api/v1/models/{KHANDLE}/get"
    assert path.name == "2" and dir_contents(path) == native_files(seed=2)


def test_kaggle_zip_archive_is_accepted(server, cache):
    server.add_kaggle(KHANDLE, 3, zip_bytes(native_files()))
    assert dir_contents(hub.resolve(f"kaggle://{KHANDLE}/3")) == native_files()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_builtin_names_resolve_to_keras_hub_kaggle_handles(server, cache, name):
    version = 5 if name == "bert_tiny_en_uncased_sst2" else 3
    server.add_kaggle(f"keras/bert/keras/{name}", version, tar_gz(native_files()))
    path = hub.resolve(name)
    assert path == cache / "kaggle" / "keras" / "bert" / "keras" / name / str(version)
    assert server.log[0].path == f"/api/v1/models/keras/bert/keras/{name}/{version}/download"


def test_kaggle_basic_auth_from_env_and_kaggle_json(server, isolated, monkeypatch):
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files()))
    server.kaggle_auth = ("alice", "k3y")
    with pytest.raises(AuthenticationError) as err:
        hub.resolve(f"kaggle://{KHANDLE}/3")
    msg = str(err.value)
    assert f"{server.url}/api/v1/models/{KHANDLE}/3/download" in msg
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in msg and "accept the model's license" in msg
    (isolated / "kaggle_config").mkdir()
    (isolated / "kaggle_config" / "kaggle.json").write_text('{"username": "alice", "key": "k3y"}')
    hub.resolve(f"kaggle://{KHANDLE}/3")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "k3y")
    hub.download(f"kaggle://{KHANDLE}/3", force=True)
    assert_cache_clean(isolated / "cache")


def test_kaggle_404_names_the_handle_to_check(server, cache):
    with pytest.raises(RemoteNotFoundError, match=r"HTTP 404.*/1/download: check the handle kaggle://"):
        hub.resolve(f"kaggle://{KHANDLE}/1")
    assert_cache_clean(cache)


def test_kaggle_md5_mismatch_is_an_integrity_error(server, cache):
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files()))
    server.fault("/gcs/", "corrupt")
    with pytest.raises(IntegrityError, match=r"X-Goog-Hash announced md5"):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert_nothing_cached(cache)


def test_kaggle_archive_cut_short_is_retried(server, cache):
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files()))
    server.fault("/gcs/", "truncate", times=2)
    assert dir_contents(hub.resolve(f"kaggle://{KHANDLE}/3")) == native_files()
    assert_cache_clean(cache)


def test_kaggle_archive_without_config_is_not_a_preset(server, cache):
    server.add_kaggle(KHANDLE, 3, tar_gz({"weights.bin": b"x"}))
    with pytest.raises(HubError, match=r"no config.json at its top level \(it holds: weights.bin\)"):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert_cache_clean(cache)


def test_kaggle_non_archive_download_is_a_clear_error(server, cache):
    server.add_kaggle(KHANDLE, 3, b"<html>not an archive</html>")
    with pytest.raises(HubError, match=r"neither a tar nor a zip archive"):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert_cache_clean(cache)


def _file(name: str, data: bytes = b"evil") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


@pytest.mark.parametrize("extra, why", ids=["dotdot", "nested-dotdot", "absolute", "symlink",
                                           "hardlink", "device", "fifo"], argvalues=[
    ([_file("../evil.txt")],
     r"'\.\./evil\.txt' escapes the target directory"),
    ([_file("a/../../evil.txt")],
     r"escapes the target directory"),
    ([_file("/tmp/evil.txt")],
     r"'/tmp/evil\.txt' has an absolute path"),
    ([_member("link", tarfile.SYMTYPE, "/etc/passwd")], r"'link' is a symbolic link to '/etc/passwd'"),
    ([_member("hard", tarfile.LNKTYPE, "config.json")], r"'hard' is a hard link"),
    ([_member("dev", tarfile.CHRTYPE)], r"'dev' is a device file"),
    ([_member("fifo", tarfile.FIFOTYPE)], r"'fifo' is a FIFO"),
])
def test_unsafe_tar_members_are_rejected_before_anything_is_written(server, cache, isolated,
                                                                    extra, why):
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files(), extra=extra))
    with pytest.raises(UnsafeArchiveError, match=why):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert not (isolated / "evil.txt").exists() and not (cache / "kaggle" / "evil.txt").exists()
    assert_nothing_cached(cache)


@pytest.mark.parametrize("archive, why", ids=["dotdot", "symlink", "backslash"], argvalues=[
    (zip_bytes({"config.json": b"{}", "../evil.txt": b"x"}), r"escapes the target directory"),
    (zip_bytes({"config.json": b"{}"}, symlinks={"link": "/etc/passwd"}), r"'link' is not a regular"),
    (zip_bytes({"config.json": b"{}", "a\\..\\..\\evil.txt": b"x"}), r"backslash"),
])
def test_unsafe_zip_members_are_rejected(server, cache, archive, why):
    server.add_kaggle(KHANDLE, 3, archive)
    with pytest.raises(UnsafeArchiveError, match=why):
        hub.resolve(f"kaggle://{KHANDLE}/3")
    assert_cache_clean(cache)


def make_kagglehub_cache(root: Path, handle: str, version: int, files: dict[str, bytes],
                         complete: bool = True) -> Path:
    path = root / "models" / handle / str(version)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    if complete:
        (path.parent / f"{version}.complete").touch()
    return path


def test_existing_kagglehub_cache_is_reused_for_builtin_names(server, isolated):
    path = make_kagglehub_cache(isolated / "kagglehub", KHANDLE, 3, native_files())
    assert hub.resolve("bert_tiny_en_uncased") == path
    assert server.log == []


def test_kagglehub_directory_without_completion_marker_is_not_reused(server, isolated, cache):
    make_kagglehub_cache(isolated / "kagglehub", KHANDLE, 3, {"config.json": b"{}"}, complete=False)
    server.add_kaggle(KHANDLE, 3, tar_gz(native_files()))
    path = hub.resolve("bert_tiny_en_uncased")
    assert path.is_relative_to(cache) and dir_contents(path) == native_files()


# -- offline --------------------------------------------------------------------------------------
@pytest.mark.parametrize("var", ["BERT_REF_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_uncached_hf_is_a_clear_error_without_network(server, isolated, monkeypatch, var):
    server.add_hf_repo("org/mini", hf_files())
    monkeypatch.setenv(var, "1")
    assert hub.is_offline()
    with pytest.raises(OfflineError) as err:
        hub.resolve("hf://org/mini")
    msg = str(err.value)
    assert "hf://org/mini@main is not cached and offline mode is on" in msg
    assert str(isolated / "cache" / "hf" / "org--mini" / "main") in msg
    assert str(isolated / "hf_hub" / "models--org--mini") in msg
    assert server.log == []


def test_offline_uncached_builtin_and_kaggle_are_clear_errors(server, isolated, monkeypatch):
    monkeypatch.setenv("BERT_REF_OFFLINE", "true")
    with pytest.raises(OfflineError) as err:
        hub.resolve("bert_tiny_en_uncased")
    msg = str(err.value)
    assert "built-in preset 'bert_tiny_en_uncased' (kaggle://keras/bert/keras/bert_tiny_en_uncased/3)" in msg
    assert str(isolated / "cache" / "kaggle" / KHANDLE / "3") in msg
    assert str(isolated / "kagglehub" / "models" / KHANDLE / "3") in msg
    with pytest.raises(OfflineError, match=r"no version of it is cached"):
        hub.resolve(f"kaggle://{KHANDLE}")
    assert server.log == []


def test_offline_serves_what_is_cached(server, monkeypatch, isolated):
    server.add_hf_repo("org/mini", hf_files())
    server.add_kaggle(KHANDLE, 2, tar_gz(native_files()))
    hf_path = hub.download("hf://org/mini")
    k_path = hub.download(f"kaggle://{KHANDLE}/2")
    make_kagglehub_cache(isolated / "kagglehub", KHANDLE, 1, native_files())
    n = len(server.log)
    monkeypatch.setenv("BERT_REF_OFFLINE", "1")
    assert hub.resolve("hf://org/mini") == hf_path
    assert hub.resolve(f"kaggle://{KHANDLE}/2") == k_path
    assert hub.resolve(f"kaggle://{KHANDLE}") == k_path  # the highest cached version
    assert len(server.log) == n


# -- concurrency ----------------------------------------------------------------------------------
def test_two_processes_fetching_the_same_preset_both_succeed_and_agree(server, cache, tmp_path):
    files = native_files(TINY, seed=3)
    server.add_hf_repo("user/p", files)
    started = [tmp_path / "started-0", tmp_path / "started-1"]
    # The first weights download stays half-sent until both processes are inside resolve(), so
    # without the lock the second would download the weights too.
    server.fault("/cdn/", "hold", times=1, delay=0.3, until=lambda: all(p.exists() for p in started))
    script = textwrap.dedent("""
        import pathlib, sys
        from bert_ref.io.hub import resolve
        pathlib.Path(sys.argv[1]).touch()
        print(resolve("hf://user/p"))
    """)
    env = {**os.environ, "BERT_REF_HTTP_TIMEOUT": "20"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(marker)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for marker in started]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert paths == {str(cache / "hf" / "user--p" / "main")}
    assert dir_contents(Path(paths.pop())) == files
    assert len(server.hits("/cdn/")) == 1  # the second process waited and reused the first's copy
    assert_cache_clean(cache)


# -- progress and settings ------------------------------------------------------------------------
def test_progress_true_draws_a_bar_on_stderr_and_false_is_silent(server, capfd):
    server.add_hf_repo("org/mini", hf_files())
    hub.resolve("hf://org/mini", progress=False)
    assert capfd.readouterr().err == ""
    hub.download("hf://org/mini", progress=True, force=True)
    assert "org/mini/model.safetensors" in capfd.readouterr().err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_automatic_progress_only_for_large_files_on_a_tty_unless_quiet(monkeypatch):
    big = transfer.PROGRESS_MIN_BYTES
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert transfer._progress_enabled(None, big)
    assert not transfer._progress_enabled(None, big - 1)
    assert not transfer._progress_enabled(False, big)
    monkeypatch.setenv("BERT_REF_QUIET", "1")
    assert not transfer._progress_enabled(None, big)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv("BERT_REF_QUIET")
    assert not transfer._progress_enabled(None, big)


def test_cache_dir_follows_bert_ref_cache_then_xdg_then_home(monkeypatch, tmp_path):
    assert hub.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("BERT_REF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "bert_ref"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "bert_ref"


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("YES", True),
                                            ("0", False), ("", False), ("no", False)])
def test_is_offline_reads_both_variables(monkeypatch, value, offline):
    monkeypatch.setenv("BERT_REF_OFFLINE", value)
    assert hub.is_offline() is offline
    monkeypatch.delenv("BERT_REF_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.is_offline() is offline


@pytest.mark.parametrize("var, value", [("BERT_REF_HTTP_RETRIES", "0"), ("BERT_REF_HTTP_RETRIES", "x"),
                                        ("BERT_REF_HTTP_TIMEOUT", "-1"), ("BERT_REF_HTTP_BACKOFF", "-0.5")])
def test_bad_http_settings_name_the_variable_and_range(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=rf"{var}='{value}' is not valid: expected .* >= "):
        hub.resolve("hf://org/mini")


def test_bad_kaggle_json_names_the_file(server, isolated):
    (isolated / "kaggle_config").mkdir()
    (isolated / "kaggle_config" / "kaggle.json").write_text('{"username": "alice"}')
    with pytest.raises(ValueError, match=r"kaggle.json: expected \{\"username\""):
        hub.resolve(f"kaggle://{KHANDLE}/3")


def _response(history=(), **headers) -> requests.Response:
    resp = requests.Response()
    resp.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    resp.history = list(history)
    return resp


def test_announced_checksums_and_sizes_are_read_from_the_right_headers():
    sha = "ab" * 32
    redirect = _response(X_Linked_Etag=f'"{sha}"', X_Linked_Size="123", ETag='"x"')
    final = _response([redirect], ETag='"d41d8cd98f00b204e9800998ecf8427e"', Content_Length="123")
    assert transfer.expected_sha256(final) == sha and transfer.expected_size(final) == 123
    # A git-blob sha1 ETag (small Hugging Face files) is not a sha256: only the size is checked.
    small = _response(ETag=f'W/"{"c" * 40}"', Content_Length="7")
    assert transfer.expected_sha256(small) is None and transfer.expected_size(small) == 7
    # Content-Length of an encoded body counts encoded bytes: not a size to check.
    assert transfer.expected_size(_response(Content_Length="7", Content_Encoding="gzip")) is None
    gcs = _response(X_Goog_Hash="crc32c=n03x6A==,md5=Ojk9c3dhfxgoKVVHYwFbHQ==")
    assert transfer.expected_md5(gcs) == "Ojk9c3dhfxgoKVVHYwFbHQ=="
