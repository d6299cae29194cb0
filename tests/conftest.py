"""Fixtures shared by the test modules (helpers that are not fixtures live in needs.py)."""

from __future__ import annotations

from pathlib import Path

import os

import pytest
from hypothesis import settings

from needs import minilm_model_dir

# Under CI every property test sees the same examples (float rounding bounds are statistical; a
# fixed sample keeps main green). Locally hypothesis explores new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 model directory; skipped when not installed, a failure under CI."""
    return minilm_model_dir()
