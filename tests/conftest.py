"""Fixtures shared by the test modules (helpers that are not fixtures live in needs.py).

Property tests (hypothesis) are deterministic by default: the `bert_ref` profile derives every
example from the test itself (`derandomize=True`) and keeps no example database, so a plain
`pytest` draws the same sample on every run and on every machine, and a failure is never replayed
from an earlier run's saved example. Exploratory fuzzing (new random examples on every run, failures
saved to `.hypothesis/`) is opt-in:

    pytest --hypothesis-profile=explore
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from hub_server import FakeHub
from needs import minilm_model_dir

settings.register_profile("bert_ref", derandomize=True, database=None, deadline=None)
# The name CI used before; the same deterministic sample.
settings.register_profile("ci", settings.get_profile("bert_ref"))
settings.register_profile("explore", derandomize=False, deadline=None,
                          database=DirectoryBasedExampleDatabase(".hypothesis/examples"))
settings.load_profile("bert_ref")


def pytest_configure(config: pytest.Config) -> None:
    # hypothesis' plugin loads `--hypothesis-profile` itself; without it, ours stays the default
    # even if a plugin loaded another profile after this module was imported.
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("bert_ref")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 model directory; skipped when not installed, a failure under CI."""
    return minilm_model_dir()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for `bert-ref` subprocesses: offline, quiet, with empty caches of their own."""
    root = tmp_path_factory.mktemp("caches")
    e = dict(os.environ)
    e.update(BERT_REF_OFFLINE="1", BERT_REF_CACHE=str(root / "bert_ref"), HF_HOME=str(root / "hf"),
             HF_HUB_CACHE=str(root / "hf" / "hub"), KAGGLEHUB_CACHE=str(root / "kagglehub"), BERT_REF_QUIET="1")
    return e


# -- the hub tests (tests/test_hub*.py) ------------------------------------------------------------
# Each hub test module applies `isolated` to all of its tests with
# `pytestmark = pytest.mark.usefixtures("isolated")`; the other modules do not use it.
@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials, proxies or limits from the caller's environment; every cache under tmp_path."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY",
                "BERT_REF_OFFLINE", "HF_HUB_OFFLINE", "BERT_REF_QUIET", "XDG_CACHE_HOME",
                "HF_TOKEN_PATH", "BERT_REF_HTTP_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY",
                "http_proxy", "https_proxy", "BERT_REF_MAX_DOWNLOAD_BYTES", "BERT_REF_DOWNLOAD_DEADLINE",
                "BERT_REF_MAX_ARCHIVE_BYTES", "BERT_REF_MAX_ARCHIVE_ENTRIES", "BERT_REF_MAX_JSON_BYTES",
                "BERT_REF_MAX_JSON_DEPTH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("BERT_REF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle_config"))
    monkeypatch.setenv("BERT_REF_HTTP_RETRIES", "3")
    monkeypatch.setenv("BERT_REF_HTTP_BACKOFF", "0.01")
    return tmp_path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake hub (tests/hub_server.py), with HF_ENDPOINT and KAGGLE_API_ENDPOINT pointing at it."""
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", fake.url)
    yield fake
    fake.stop()


@pytest.fixture
def cache(isolated: Path) -> Path:
    """BERT_REF_CACHE of an `isolated` test."""
    return isolated / "cache"
