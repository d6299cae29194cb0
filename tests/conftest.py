"""Fixtures shared by the test modules (helpers that are not fixtures live in needs.py).

Property tests (hypothesis) are deterministic by default: the `bert_ref` profile derives every
example from the test itself (`derandomize=True`) and keeps no example database, so a plain
`pytest` draws the same sample on every run and on every machine, and a failure is never replayed
from an earlier run's saved example. Exploratory fuzzing (new random examples on every run, failures
saved to `.hypothesis/`) is opt-in:

    pytest --hypothesis-profile=explore
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

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
