"""Every third-party module the package imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the check is the same on every version


def _imported_modules() -> dict[str, str]:
    """Top-level module -> a file importing it, for every import in bert_ref/ (lazy ones too)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "bert_ref").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    # Before: bert_ref/hub/transfer.py imported urllib3, which pyproject did not declare.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].strip().lower().replace("-", "_") for d in declared}
    third_party = {m: f for m, f in _imported_modules().items()
                   if m not in sys.stdlib_module_names and m != "bert_ref"}
    assert third_party, "no third-party imports found: the scan is broken"
    undeclared = {m: f for m, f in third_party.items() if m.lower() not in names}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
