"""Fixtures shared by the test modules (helpers that are not fixtures live in needs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from needs import minilm_model_dir


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 model directory; skipped when not installed, a failure under CI."""
    return minilm_model_dir()
