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
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from needs import minilm_model_dir, need

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"


def _examples_of(markdown: str) -> str:
    """The Markdown with its code-fence lines blanked: a closing fence right after an output would
    otherwise read as part of the expected output. Line numbers are kept for the failure reports."""
    return "\n".join("" if line.strip().startswith("```") else line for line in markdown.split("\n"))


def test_walkthrough_runs_and_prints_what_it_shows(monkeypatch):
    minilm_model_dir()
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
                for name in ("attention_layer_0.png", "attention_layer_5.png", "hidden_state_norms.png",
                             "trace_page.png", "layer_post_ln_pre_ln.svg")]
    for p in pictures:
        assert f"(figures/{p.name})" in text, f"the walkthrough does not show {p.name}"
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
    assert sum(p.stat().st_size for p in pictures) < 1_000_000


def test_layer_diagram_is_what_its_tool_draws(tmp_path):
    """docs/figures/layer_post_ln_pre_ln.svg is reproducible: the tool writes the same bytes."""
    out = tmp_path / "layer.svg"
    subprocess.run([sys.executable, str(ROOT / "tools" / "figures" / "make_layer_diagram.py"), str(out)], check=True,
                   capture_output=True, timeout=60)
    svg = (ROOT / "docs" / "figures" / "layer_post_ln_pre_ln.svg").read_bytes()
    assert out.read_bytes() == svg
    root = ET.fromstring(svg)  # well-formed XML, an SVG root
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert labels.count("layer norm") == 4 and "feedforward_layer_norm" in labels
