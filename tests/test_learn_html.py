"""The interactive attention page (bert_ref.learn.html): its encoding, its size, and a real browser.

The browser test opens the page of the walkthrough's pair (real all-MiniLM-L6-v2 weights) in a
headless Chromium (Debian's `chromium`, driven over the DevTools protocol on a pipe, tests/chromium.py),
picks layer 0 head 2, clicks a token and reads the highlighted keys from the DOM: they must be that
head's largest weights for the clicked query in the traced attention, with the weights the page
shows equal to the trace's rounded to float16 (relative error <= 2**-11, so <= 5e-4 on weights <= 1).
No console error, no request for anything but the page itself. Without Chromium the browser test is
skipped locally and fails under CI (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from bert_ref.learn import html

from chromium import CHROMIUM_INSTALL, Chromium, find_chromium
from needs import missing, run_bert_ref

PAIR = ("The cat sat on the mat.", "It was tired.")
FLOAT16_WEIGHT = 5e-4  # float16 rounding of a weight in [0, 1]: relative 2**-11 (one half-ulp), 4.9e-4 at 1


def _random_attention(layers: int, heads: int, s: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        e = np.exp(rng.standard_normal((heads, s, s), dtype=np.float32) * 3)
        out.append(e / e.sum(-1, keepdims=True))
    return out


def _decode(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def test_short_texts_store_every_weight_as_float16():
    probs = _random_attention(2, 3, 10)
    record = html.encode_attention(probs)
    assert record["format"] == "dense"
    for p, text in zip(probs, record["weight"], strict=True):
        np.testing.assert_array_equal(_decode(text, "<f2").reshape(p.shape), p.astype(np.float16))


def test_long_texts_store_each_rows_largest_weights_in_order():
    probs = _random_attention(6, 12, 200)
    record = html.encode_attention(probs)
    k = record["k"]
    assert record["format"] == "topk" and k == html.TOP_K_MAX
    for p, w_text, i_text in zip(probs, record["weight"], record["index"], strict=True):
        w = _decode(w_text, "<f2").reshape(12, 200, k).astype(np.float32)
        idx = _decode(i_text, "<u2").reshape(12, 200, k)
        np.testing.assert_array_equal(np.take_along_axis(p, idx.astype(np.intp), -1).astype(np.float16), w)
        assert (np.diff(w, axis=-1) <= 0).all()  # largest first
        kth = np.sort(p, axis=-1)[..., -k]  # the k-th largest weight of each row
        np.testing.assert_array_equal(w[..., -1], kth.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("length, limit", [(2 * 64 + 3, 3_000_000), (512, 20_000_000)])
def test_page_size_at_minilm_shapes(length, limit):
    """The issue's size targets; the size depends on the shapes only (the weights are fixed-width)."""
    tokens = [f"tok{i}" for i in range(length)]
    page = html.trace_page(tokens, _random_attention(6, 12, length), np.ones((7, length)))
    assert len(page.encode("utf-8")) < limit


def test_page_is_self_contained_and_escapes_its_text():
    tokens = ["[CLS]", "</script><script>alert(1)</script>", "&amp;", "[SEP]"]
    page = html.trace_page(tokens, _random_attention(1, 2, 4), np.ones((2, 4)), title="<b>t</b>",
                           description="a < b")
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data and the code, nothing else
    assert "<b>t</b>" not in page and "&lt;b&gt;t&lt;/b&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "@import" not in page and "url(" not in page


def test_page_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"hidden_norms has shape \(3, 4\), expected"):
        html.trace_page(["a"] * 4, _random_attention(1, 2, 4), np.ones((3, 4)))
    with pytest.raises(ValueError, match="segment_ids has 3 entries for 4 tokens"):
        html.trace_page(["a"] * 4, _random_attention(1, 2, 4), np.ones((2, 4)), segment_ids=[0, 0, 1])


# ----------------------------------------------------------------------------------------------
# In a real browser


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        missing(f"Chromium is not installed: run `{CHROMIUM_INSTALL}`")
    with Chromium() as b:
        yield b


@pytest.fixture(scope="module")
def traced_page(tmp_path_factory, minilm_dir):
    """`bert-ref trace MiniLM PAIR --html FILE`, and the same pair's attention from `run_text`."""
    from bert_ref.backbone import BertBackbone
    from bert_ref.learn.trace import run_text
    from bert_ref.text.tokenizer import BertTokenizer

    path = tmp_path_factory.mktemp("page") / "trace.html"
    r = run_bert_ref("trace", minilm_dir, *PAIR, "--html", path)
    assert r.returncode == 0 and f"wrote {path}" in r.stderr, r.stderr
    tr = run_text(BertBackbone.from_preset(minilm_dir), BertTokenizer.from_preset(minilm_dir), *PAIR)
    return path, tr.tokens, tr.attention_probs


def _pick(page, select: str, value: int) -> None:
    page.evaluate(f"""(() => {{ const s = document.getElementById({select!r}); s.value = "{value}";
                     s.dispatchEvent(new Event("change")); }})()""")


def _targets(page) -> list[tuple[int, float]]:
    marked = page.evaluate("""[...document.querySelectorAll("#hv g.key.target")]
        .map(g => [+g.dataset.rank, +g.dataset.index, +g.dataset.weight])""")
    return [(j, w) for _, j, w in sorted(marked)]


def _expected_targets(row: np.ndarray) -> list[int]:
    order = np.argsort(-row, kind="stable")
    return [int(j) for r, j in enumerate(order[: html.N_TARGETS]) if r == 0 or row[j] >= html.TARGET_MIN_WEIGHT]


def test_clicking_a_token_highlights_the_heads_top_weights(browser, traced_page):
    path, tokens, probs = traced_page
    page = browser.open(path)
    assert page.evaluate("document.body.dataset.ready") == "1"
    _pick(page, "layer", 0)
    _pick(page, "head", 2)
    query = tokens.index("it")  # layer 0 head 2 splits "it" between [SEP] and itself
    page.click_element(f'#hv g.query[data-index="{query}"]')
    assert page.evaluate("document.getElementById('status').textContent") == f"layer 0 · head 2 · query it@{query}"
    row = probs[0][2, query]
    got = _targets(page)
    assert [j for j, _ in got] == _expected_targets(row) == [tokens.index("[SEP]"), query]
    for j, w in got:
        assert abs(w - row[j]) <= FLOAT16_WEIGHT, (j, w, row[j])
    # The keyboard moves the query: the targets follow, and are again the trace's top weights.
    page.press("ArrowRight", "ArrowRight", 39)
    got = _targets(page)
    assert [j for j, _ in got] == _expected_targets(probs[0][2, query + 1])
    # Another layer and head, picked the same way: layer 5 head 11 puts `it`'s weight on `cat`.
    _pick(page, "layer", 5)
    _pick(page, "head", 11)
    page.click_element(f'#hv g.query[data-index="{query}"]')
    got = _targets(page)
    assert [j for j, _ in got] == _expected_targets(probs[5][11, query]) and got[0][0] == tokens.index("cat")
    assert page.errors == []
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests


def test_long_page_opens_without_errors(browser, tmp_path):
    length = 300
    tokens = [f"w{i}" for i in range(length)]
    probs = _random_attention(6, 12, length, seed=1)
    path = tmp_path / "long.html"
    path.write_text(html.trace_page(tokens, probs, np.ones((7, length))), encoding="utf-8")
    page = browser.open(path)
    _pick(page, "layer", 3)
    _pick(page, "head", 7)
    page.click_element('#hv g.query[data-index="150"]')
    got = _targets(page)
    assert [j for j, _ in got] == _expected_targets(probs[3][7, 150])
    assert page.errors == []
