"""Draw the pictures of docs/walkthrough.md: the walkthrough's sentence pair through the real
all-MiniLM-L6-v2 weights, plotted by `bert-ref trace --plot`.

Run from the repository root (needs the README's install and matplotlib, `pip install "bert-ref[plot]"`):

    python tools/figures/make_walkthrough_figures.py

It is the same as

    bert-ref trace <all-MiniLM-L6-v2 directory> "The cat sat on the mat." "It was tired." \\
        --plot docs/figures --layers 0,5

and writes docs/figures/attention_layer_0.png, attention_layer_5.png and hidden_state_norms.png
(about 0.3 MB in all). Re-running with the same matplotlib writes identical files.

The walkthrough's other pictures have their own tools here: make_layer_diagram.py (the post-LN and
pre-LN layers, SVG) and make_trace_page_figure.py (a screenshot of `bert-ref trace --html`).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bert_ref.cli import main  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from _minilm import minilm_dir  # noqa: E402

PAIR = ("The cat sat on the mat.", "It was tired.")
LAYERS = "0,5"  # layer 0: the previous-token head (2); layer 5: `it` -> `cat` (head 11)
OUT = ROOT / "docs" / "figures"


if __name__ == "__main__":
    sys.exit(main(["trace", str(minilm_dir()), *PAIR, "--plot", str(OUT), "--layers", LAYERS]))
