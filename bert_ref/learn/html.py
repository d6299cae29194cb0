"""The interactive attention view: one self-contained HTML page from a trace's arrays.

`trace_page(tokens, attention_probs, hidden_norms)` returns one HTML string with its JavaScript and
CSS inline: no network, no CDN, no fonts to fetch; it opens from disk in any current browser. The
page has

- a layer picker and a head picker;
- a head view in the manner of bertviz: the tokens twice, queries on the left and keys on the
  right, a line from each query to the keys it attends to, as opaque as the weight;
- a matrix view: the head's [S, S] probabilities as a heatmap (viridis), queries down, keys across;
- a token panel: the token's L2 norm after the embeddings and after each layer (the walkthrough's
  numbering: "emb", then layer 0, 1, ...), its top keys in every head of the layer, and the [CLS]
  row (what [CLS] attends to, and how much of its weight stays on itself in each head).

Hovering a token highlights its row; clicking selects it. The selected query's top keys (at most
`N_TARGETS`, each with at least `TARGET_MIN_WEIGHT`) are marked as targets, with their weights in
`data-weight`. Keys: left/right move along the tokens, up/down change head, PageUp/PageDown (or
[ and ]) change layer, Home/End jump, Escape clears. Colours are the Okabe-Ito palette and viridis,
both readable with the common colour-vision deficiencies.

Attention is stored compactly, base64 in the page: float16 for every weight when all of them fit
in `DENSE_BUDGET` bytes (e.g. MiniLM's 6 x 12 heads up to about 100 tokens); beyond that, each
query row's `top_k(...)` largest weights (float16) and their key positions (uint16). Weights are
rounded to float16 there (a relative error <= 2**-11), which is what the page shows.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.io import atomic
from bert_ref.learn.trace import TextTrace

#: Largest float16 [L, h, S, S] attention stored whole, in bytes (base64 makes it 4/3 larger).
DENSE_BUDGET = 3 << 19  # 1.5 MiB
#: Bytes aimed at for the top-k rows beyond that (4 bytes per weight: uint16 key, float16 weight).
TOP_K_BUDGET = 12 << 20  # 12 MiB
#: Weights kept per query row beyond DENSE_BUDGET: at most this many, at least TOP_K_MIN.
TOP_K_MAX, TOP_K_MIN = 32, 8
#: The selected query's highlighted keys: at most N_TARGETS, each with weight >= TARGET_MIN_WEIGHT.
N_TARGETS, TARGET_MIN_WEIGHT = 5, 0.01


def top_k(num_probs: int, length: int) -> int | None:
    """How many weights per query row the page keeps: None (all of them) when `num_probs` heads in
    all of [S, S] float16 fit in DENSE_BUDGET, else the most that fit in TOP_K_BUDGET, clamped to
    [TOP_K_MIN, TOP_K_MAX] and to S."""
    if num_probs * length * length * 2 <= DENSE_BUDGET:
        return None
    k = TOP_K_BUDGET // (num_probs * length * 4)
    return int(min(length, TOP_K_MAX, max(TOP_K_MIN, k)))


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def encode_attention(attention_probs: Sequence[np.ndarray]) -> dict[str, Any]:
    """The page's attention record: per layer, base64 float16 weights (and uint16 key positions).

    Args:
        attention_probs: num_layers arrays [h, S, S] (query rows, key columns).

    Returns:
        `{"format": "dense", "weight": [...]}`, each string [h, S, S] little-endian float16; or
        `{"format": "topk", "k": k, "weight": [...], "index": [...]}`, each [h, S, k]: per query
        row its k largest weights in decreasing order (equal float16 weights by key position) and
        their key positions.
    """
    probs = [np.asarray(p) for p in attention_probs]
    heads, s, s2 = probs[0].shape
    if s != s2 or any(p.shape != (heads, s, s) for p in probs):
        raise ValueError(f"attention_probs must be num_layers arrays [h, S, S] of one shape, got "
                         f"{[p.shape for p in probs]}")
    if s > np.iinfo(np.uint16).max:
        raise ValueError(f"attention over {s} tokens: at most {np.iinfo(np.uint16).max} positions fit a uint16")
    k = top_k(heads * len(probs), s)
    if k is None:
        return {"format": "dense", "weight": [_b64(p.astype("<f2")) for p in probs]}
    weights, indices = [], []
    for p in probs:  # [h, S, S] -> [h, S, k]
        idx = np.sort(np.argpartition(-p, k - 1, axis=-1)[..., :k], axis=-1)  # the k largest, by position
        w = np.take_along_axis(p, idx, axis=-1).astype("<f2")
        order = np.argsort(-w.astype(np.float32), axis=-1, kind="stable")  # by weight; ties by position
        weights.append(_b64(np.take_along_axis(w, order, axis=-1)))
        indices.append(_b64(np.take_along_axis(idx, order, axis=-1).astype("<u2")))
    return {"format": "topk", "k": k, "weight": weights, "index": indices}


def trace_page(tokens: Sequence[str], attention_probs: Sequence[np.ndarray], hidden_norms: np.ndarray, *,
               segment_ids: Sequence[int] | None = None, title: str = "bert-ref trace", description: str = "") -> str:
    """One self-contained HTML page showing a text's attention (see the module docstring).

    Args:
        tokens: the S token labels.
        attention_probs: num_layers arrays [h, S, S], query rows, key columns.
        hidden_norms: [num_layers + 1, S]: each token's L2 norm after the embeddings, then after
            each layer.
        segment_ids: S segment ids (0 for the text, 1 for the pair); default all 0.
        title: the page's title and heading (escaped here).
        description: a line under the heading (escaped here), e.g. the preset and the text.

    Returns:
        The page, as a string (write it with UTF-8).
    """
    s = len(tokens)
    norms = np.asarray(hidden_norms, dtype=np.float64)
    if norms.shape != (len(attention_probs) + 1, s):
        raise ValueError(f"hidden_norms has shape {norms.shape}, expected (num_layers + 1, S) = "
                         f"({len(attention_probs) + 1}, {s})")
    segments = [0] * s if segment_ids is None else [int(g) for g in segment_ids]
    if len(segments) != s:
        raise ValueError(f"segment_ids has {len(segments)} entries for {s} tokens")
    attention = encode_attention(attention_probs)
    if attention_probs[0].shape[-1] != s:
        raise ValueError(f"attention is over {attention_probs[0].shape[-1]} positions but there are {s} tokens")
    data = {
        "tokens": [str(t) for t in tokens],
        "segments": segments,
        "layers": len(attention_probs),
        "heads": int(attention_probs[0].shape[0]),
        "norms": [[float(f"{v:.4g}") for v in row] for row in norms],
        "attention": attention,
        "targets": N_TARGETS,
        "targetMinWeight": TARGET_MIN_WEIGHT,
    }
    # "<" escaped inside the JSON: no "</script>" in a token can close the data element.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    note = ("every weight, rounded to float16" if attention["format"] == "dense" else
            f"each query's {attention['k']} largest weights (float16); the rest are left out")
    return PAGE.format(title=html.escape(title), description=html.escape(description), note=html.escape(note),
                       css=CSS, data=payload, script=SCRIPT)


def page_for(tr: TextTrace, *, title: str = "bert-ref trace", description: str = "") -> str:
    """`trace_page` of a `run_text` result: its tokens, segments, attention and hidden-state norms."""
    return trace_page(tr.tokens, tr.attention_probs, tr.hidden_norms(), segment_ids=[int(g) for g in tr.segment_ids],
                      title=title, description=description)


def write_page(tr: TextTrace, path: str | os.PathLike, *, title: str = "bert-ref trace",
               description: str = "") -> Path:
    """Write `page_for(tr)` to `path` (UTF-8, through `bert_ref.io.atomic`: whole or not at all)."""
    return atomic.write_text(Path(path), page_for(tr, title=title, description=description))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="description">{description}</p>
</header>
<nav id="controls" aria-label="layer and head">
<label>Layer <select id="layer"></select></label>
<label>Head <select id="head"></select></label>
<span id="status" aria-live="polite"></span>
<span class="help">Keys: &larr; &rarr; token &middot; &uarr; &darr; head &middot; PgUp PgDn or [ ] layer
&middot; Home End &middot; Esc clears. Attention stored: {note}.</span>
</nav>
<main>
<section id="headview-section" aria-label="head view">
<h2>Head view <span class="hint">(queries left, keys right; hover or click a token)</span></h2>
<div id="headview" tabindex="0"><svg id="hv" xmlns="http://www.w3.org/2000/svg" role="img"></svg></div>
</section>
<section id="matrix-section" aria-label="matrix view">
<h2>Matrix <span class="hint">(rows: queries, columns: keys)</span></h2>
<div id="matrix"><canvas id="mx"></canvas><div id="mxrow"></div></div>
<p id="mxinfo">&nbsp;</p>
<div id="scale"><span>0</span><canvas id="scalebar" width="160" height="10"></canvas><span>1</span></div>
</section>
<section id="panel" aria-label="token panel">
<h2 id="panel-title">Token</h2>
<h3>L2 norm through the layers <span class="hint">(<span style="color:#D55E00">&#9473; this token</span>,
<span style="color:#0072B2">&#9476; [CLS]</span>, grey: the others)</span></h3>
<svg id="norms" xmlns="http://www.w3.org/2000/svg" width="320" height="170" role="img"></svg>
<h3 id="heads-title">Top keys per head</h3>
<table id="heads-table"></table>
<h3 id="cls-title">The [CLS] row</h3>
<div id="cls"></div>
</section>
</main>
<script type="application/json" id="data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.2em 2em; color: #222; background: #fff;
  overflow-anchor: none; }
header h1 { font-size: 1.35em; margin: 0.6em 0 0.1em; }
.description { margin: 0 0 0.6em; color: #444; }
#controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; padding: 0.4em 0;
  border-bottom: 1px solid #ddd; position: sticky; top: 0; background: #fff; z-index: 2; }
#controls select { font-size: 1em; }
#status { font-weight: 600; }
.help, .hint { color: #666; font-size: 0.85em; font-weight: normal; }
main { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; margin-top: 0.8em; }
h2 { font-size: 1.05em; margin: 0.2em 0 0.4em; }
h3 { font-size: 0.95em; margin: 0.9em 0 0.3em; }
#headview { max-height: 80vh; overflow: auto; border: 1px solid #ddd; outline-offset: 2px; }
#headview:focus { outline: 2px solid #0072B2; }
#hv text { font: 12px ui-monospace, monospace; cursor: pointer; dominant-baseline: middle; }
#hv text.seg1 { fill: #8a5a00; }
#hv rect.bg { fill: transparent; pointer-events: all; }
#hv .selected rect.bg { fill: none; stroke: #D55E00; stroke-width: 2; }
#hv .selected text { font-weight: bold; }
#hv .target rect.bg { fill: #009E73; }
#hv line { stroke: #0072B2; }
#matrix { position: relative; display: inline-block; }
#mx { image-rendering: pixelated; cursor: crosshair; display: block; }
#mxrow { position: absolute; left: 0; pointer-events: none; outline: 2px solid #D55E00; display: none; }
#mxinfo { font: 12px ui-monospace, monospace; min-height: 1.4em; margin: 0.3em 0; }
#scale { display: flex; gap: 0.4em; align-items: center; font-size: 0.8em; color: #555; }
#panel { min-width: 330px; max-width: 420px; }
#panel table { border-collapse: collapse; font: 12px ui-monospace, monospace; }
#panel td { padding: 1px 6px 1px 0; vertical-align: top; }
#panel tr.current { background: #F0E442; }
#panel tr { cursor: pointer; }
#cls { font: 12px ui-monospace, monospace; }
.bar { display: inline-block; height: 0.7em; background: #0072B2; vertical-align: middle; margin-right: 4px; }
#norms .others { stroke: #bbb; fill: none; stroke-width: 1; }
#norms .cls { stroke: #0072B2; fill: none; stroke-width: 2; stroke-dasharray: 5 3; }
#norms .this { stroke: #D55E00; fill: none; stroke-width: 2.5; }
#norms text { font: 10px system-ui, sans-serif; fill: #444; }
#norms line.axis { stroke: #888; }
"""

SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const S = D.tokens.length, L = D.layers, H = D.heads, A = D.attention;
const SVGNS = "http://www.w3.org/2000/svg";
// hover: the token under the pointer; pinned: true from a click or a navigation key until the pointer
// really moves (a scroll or a layout change that slides another token under a still pointer does not
// take the highlight from the selected one).
const state = {layer: 0, head: 0, selected: null, hover: null, pinned: false};

// float16 -> float32, by table; base64 little-endian uint16 -> Uint16Array.
const F16 = new Float32Array(65536);
for (let b = 0; b < 65536; b++) {
  const sign = b & 0x8000 ? -1 : 1, e = (b >> 10) & 31, f = b & 1023;
  F16[b] = e === 0 ? sign * f * 2 ** -24
    : e === 31 ? (f ? NaN : sign * Infinity) : sign * (1 + f / 1024) * 2 ** (e - 15);
}
function u16(text) {
  const bin = atob(text), out = new Uint16Array(bin.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
  return out;
}
const decoded = new Map();
function layerData(l) {
  if (!decoded.has(l)) {
    const raw = u16(A.weight[l]), w = new Float32Array(raw.length);
    for (let i = 0; i < raw.length; i++) w[i] = F16[raw[i]];
    decoded.set(l, {w, index: A.format === "topk" ? u16(A.index[l]) : null});
  }
  return decoded.get(l);
}
// Query i's weights in (layer l, head h) as [key, weight] pairs, largest first (ties: lower key first).
function row(l, h, i) {
  const {w, index} = layerData(l), out = [];
  if (index) {
    const k = A.k, base = (h * S + i) * k;
    for (let r = 0; r < k; r++) out.push([index[base + r], w[base + r]]);
  } else {
    const base = (h * S + i) * S;
    for (let j = 0; j < S; j++) out.push([j, w[base + j]]);
    out.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  }
  return out;
}
let lastMatrix = null;
function matrix(l, h) {  // [S * S] weights (0 where the page keeps none)
  if (lastMatrix && lastMatrix.l === l && lastMatrix.h === h) return lastMatrix.m;
  const {w, index} = layerData(l);
  let m;
  if (!index) m = w.subarray(h * S * S, (h + 1) * S * S);
  else {
    m = new Float32Array(S * S);
    const k = A.k;
    for (let i = 0; i < S; i++) for (let r = 0; r < k; r++) {
      const p = (h * S + i) * k + r;
      m[i * S + index[p]] = w[p];
    }
  }
  lastMatrix = {l, h, m};
  return m;
}
function targets(l, h, i) {
  return row(l, h, i).filter((e, r) => r < D.targets && (r === 0 || e[1] >= D.targetMinWeight));
}
const label = i => `${D.tokens[i]}@${i}`;
const fmt = w => w.toFixed(w >= 0.01 || w === 0 ? 2 : 3);

// Colours: viridis (heatmap) and Okabe-Ito (marks).
const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
                 "#7ad151", "#bddf26", "#fde725"].map(c => [1, 3, 5].map(o => parseInt(c.slice(o, o + 2), 16)));
function viridis(v) {
  const x = Math.min(1, Math.max(0, v)) * 10, i = Math.min(9, Math.floor(x)), t = x - i;
  return VIRIDIS[i].map((c, n) => Math.round(c + (VIRIDIS[i + 1][n] - c) * t));
}

// ---- controls
const layerSelect = document.getElementById("layer"), headSelect = document.getElementById("head");
for (let l = 0; l < L; l++) layerSelect.add(new Option(`${l}`, `${l}`));
for (let h = 0; h < H; h++) headSelect.add(new Option(`${h}`, `${h}`));
layerSelect.addEventListener("change", () => { state.layer = +layerSelect.value; render(); });
headSelect.addEventListener("change", () => { state.head = +headSelect.value; render(); });

// ---- head view
const RH = 16, HV_W = 380, LX = 150, RX = 230;
const hv = document.getElementById("hv");
hv.setAttribute("width", HV_W);
hv.setAttribute("height", S * RH + 8);
hv.setAttribute("aria-label", `attention lines between ${S} tokens`);
const linesGroup = document.createElementNS(SVGNS, "g");
hv.appendChild(linesGroup);
const queryEls = [], keyEls = [];
function tokenEl(i, side) {
  const g = document.createElementNS(SVGNS, "g"), bg = document.createElementNS(SVGNS, "rect");
  const t = document.createElementNS(SVGNS, "text"), y = i * RH + 4 + RH / 2;
  g.setAttribute("class", side);
  g.dataset.index = i;
  bg.setAttribute("class", "bg");
  bg.setAttribute("x", side === "query" ? 2 : RX - 2);
  bg.setAttribute("y", y - RH / 2 + 1);
  bg.setAttribute("width", LX - 2 - 2 + 4);
  bg.setAttribute("height", RH - 2);
  bg.setAttribute("rx", 3);
  t.textContent = D.tokens[i];
  t.setAttribute("x", side === "query" ? LX - 4 : RX + 2);
  t.setAttribute("y", y);
  t.setAttribute("text-anchor", side === "query" ? "end" : "start");
  if (D.segments[i]) t.classList.add("seg1");
  const title = document.createElementNS(SVGNS, "title");
  title.textContent = `${label(i)}, segment ${D.segments[i]}`;
  g.append(bg, t, title);
  g.addEventListener("mouseenter", () => setHover(i));
  g.addEventListener("mouseleave", () => setHover(null));
  g.addEventListener("click", () => select(i));
  hv.appendChild(g);
  return g;
}
for (let i = 0; i < S; i++) { queryEls.push(tokenEl(i, "query")); keyEls.push(tokenEl(i, "key")); }
hv.addEventListener("mouseleave", () => setHover(null));

function drawLines() {
  linesGroup.replaceChildren();
  const focus = state.hover ?? state.selected, rows = focus === null ? [...Array(S).keys()] : [focus];
  const floor = focus === null ? (S > 96 ? 0.2 : 0.05) : 0.002;
  const frag = document.createDocumentFragment();
  for (const i of rows) for (const [j, w] of row(state.layer, state.head, i)) {
    if (w < floor) break;
    const line = document.createElementNS(SVGNS, "line");
    line.setAttribute("x1", LX);
    line.setAttribute("y1", i * RH + 4 + RH / 2);
    line.setAttribute("x2", RX - 4);
    line.setAttribute("y2", j * RH + 4 + RH / 2);
    line.setAttribute("stroke-opacity", (focus === null ? 0.6 : 1) * w);
    line.setAttribute("stroke-width", focus === null ? 1.5 : 1 + 3 * w);
    frag.appendChild(line);
  }
  linesGroup.appendChild(frag);
  const marked = focus === null ? [] : targets(state.layer, state.head, focus);
  queryEls.forEach((g, i) => g.classList.toggle("selected", i === focus));
  for (const g of keyEls) {
    g.classList.remove("target");
    delete g.dataset.rank;
    delete g.dataset.weight;
    g.querySelector("rect").removeAttribute("fill-opacity");
  }
  marked.forEach(([j, w], r) => {
    const g = keyEls[j];
    g.classList.add("target");
    g.dataset.rank = r;
    g.dataset.weight = w;
    g.querySelector("rect").setAttribute("fill-opacity", 0.25 + 0.75 * w);
  });
}

// ---- matrix view (token labels in a margin when the cells are large enough to read them)
const mx = document.getElementById("mx"), mxrow = document.getElementById("mxrow");
const CELL = Math.max(1, Math.min(22, Math.floor(440 / S))), M = CELL >= 9 ? 64 : 0, MW = S * CELL;
mx.width = mx.height = MW + M;
function drawMatrix() {
  const m = matrix(state.layer, state.head), ctx = mx.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, mx.width, mx.height);
  const img = ctx.createImageData(MW, MW), px = img.data;
  for (let i = 0; i < S; i++) for (let j = 0; j < S; j++) {
    const [r, g, b] = viridis(m[i * S + j]);
    for (let y = i * CELL; y < (i + 1) * CELL; y++) for (let x = j * CELL; x < (j + 1) * CELL; x++) {
      const p = (y * MW + x) * 4;
      px[p] = r; px[p + 1] = g; px[p + 2] = b; px[p + 3] = 255;
    }
  }
  ctx.putImageData(img, M, M);
  if (!M) return;
  ctx.fillStyle = "#222";
  ctx.font = `${Math.min(12, CELL - 1)}px monospace`;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let i = 0; i < S; i++) ctx.fillText(D.tokens[i].slice(0, 8), M - 3, M + (i + 0.5) * CELL);
  ctx.textAlign = "left";
  for (let j = 0; j < S; j++) {
    ctx.save();
    ctx.translate(M + (j + 0.5) * CELL, M - 3);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(D.tokens[j].slice(0, 8), 0, 0);
    ctx.restore();
  }
}
function drawMatrixRow() {
  const focus = state.hover ?? state.selected;
  mxrow.style.display = focus === null ? "none" : "block";
  if (focus !== null) {
    mxrow.style.left = `${M}px`;
    mxrow.style.top = `${M + focus * CELL}px`;
    mxrow.style.width = `${MW}px`;
    mxrow.style.height = `${Math.max(CELL, 2)}px`;
  }
}
const mxinfo = document.getElementById("mxinfo");
function cellAt(event) {  // [query, key] under the pointer, or null in the label margin
  const r = mx.getBoundingClientRect(), scale = mx.width / r.width;
  const x = (event.clientX - r.left) * scale - M, y = (event.clientY - r.top) * scale - M;
  if (x < 0 || y < 0) return null;
  return [Math.min(S - 1, Math.floor(y / CELL)), Math.min(S - 1, Math.floor(x / CELL))];
}
mx.addEventListener("mousemove", e => {
  const at = cellAt(e);
  if (at === null) { mxinfo.textContent = "\u00a0"; setHover(null); return; }
  const [i, j] = at, w = matrix(state.layer, state.head)[i * S + j];
  mxinfo.textContent = `query ${label(i)} \u2192 key ${label(j)}: ${fmt(w)}`;
  setHover(i);
});
mx.addEventListener("mouseleave", () => { mxinfo.textContent = "\u00a0"; setHover(null); });
mx.addEventListener("click", e => { const at = cellAt(e); if (at !== null) select(at[0]); });
{
  const bar = document.getElementById("scalebar"), ctx = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    ctx.fillStyle = `rgb(${viridis(x / (bar.width - 1))})`;
    ctx.fillRect(x, 0, 1, bar.height);
  }
}

// ---- token panel
const normsSvg = document.getElementById("norms");
function drawNorms(i) {
  normsSvg.replaceChildren();
  const W = 320, Hh = 170, left = 34, right = 10, top = 10, bottom = 34, n = L + 1;
  let max = 0;
  for (const r of D.norms) for (const v of r) max = Math.max(max, v);
  const X = s => left + (W - left - right) * s / (n - 1), Y = v => top + (Hh - top - bottom) * (1 - v / max);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    normsSvg.appendChild(e);
    return e;
  };
  const path = t => D.norms.map((r, s) => `${X(s).toFixed(1)},${Y(r[t]).toFixed(1)}`).join(" ");
  add("line", {class: "axis", x1: left, y1: Hh - bottom, x2: W - right, y2: Hh - bottom});
  add("line", {class: "axis", x1: left, y1: top, x2: left, y2: Hh - bottom});
  for (let s = 0; s < n; s++) {
    add("text", {x: X(s), y: Hh - bottom + 12, "text-anchor": "middle"}, s === 0 ? "emb" : `${s - 1}`);
  }
  add("text", {x: (left + W - right) / 2, y: Hh - 4, "text-anchor": "middle"},
      "after the embeddings, then after layer i");
  for (const v of [0, max / 2, max]) add("text", {x: left - 3, y: Y(v) + 3, "text-anchor": "end"}, v.toFixed(0));
  for (let t = 0; t < S; t++) if (t !== i && t !== 0) add("polyline", {class: "others", points: path(t)});
  const titled = (cls, t) => {
    add("polyline", {class: cls, points: path(t)}).appendChild(document.createElementNS(SVGNS, "title")).textContent =
      label(t);
  };
  titled("cls", 0);
  if (i !== null && i !== 0) titled("this", i);
}
function cell(tr, html) { const td = tr.insertCell(); td.innerHTML = html; return td; }
const esc = t => t.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"})[c]);
function drawPanel() {
  const i = state.selected, l = state.layer;
  document.getElementById("panel-title").textContent = i === null ? "Token (click one)" :
    `Token ${label(i)}, segment ${D.segments[i]}`;
  drawNorms(i);
  const table = document.getElementById("heads-table");
  table.replaceChildren();
  document.getElementById("heads-title").textContent = i === null ? `Top keys per head (layer ${l})` :
    `${label(i)}: top keys per head (layer ${l})`;
  if (i !== null) for (let h = 0; h < H; h++) {
    const tr = table.insertRow();
    tr.classList.toggle("current", h === state.head);
    cell(tr, `h${h}`);
    cell(tr, row(l, h, i).slice(0, 3).map(([j, w]) => `${esc(label(j))} ${fmt(w)}`).join(", "));
    tr.addEventListener("click", () => { state.head = h; render(); });
  }
  const cls = document.getElementById("cls");
  document.getElementById("cls-title").textContent = `The [CLS] row (layer ${l})`;
  const top = row(l, state.head, 0).slice(0, 5);
  let text = `<div>head ${state.head}: [CLS] attends to</div>` + top.map(([j, w]) =>
    `<div><span class="bar" style="width:${(100 * w).toFixed(0)}px"></span>${esc(label(j))} ${fmt(w)}</div>`).join("");
  const self = [];
  for (let h = 0; h < H; h++) { const e = row(l, h, 0).find(([j]) => j === 0); self.push(e ? e[1] : 0); }
  text += `<div style="margin-top:0.5em">weight [CLS] keeps on itself, per head:</div><div>` +
    self.map((w, h) => `h${h} ${fmt(w)}`).join(" &middot; ") + "</div>";
  cls.innerHTML = text;
}

// ---- state changes
function status() {
  const focus = state.selected;
  document.getElementById("status").textContent = `layer ${state.layer} \u00b7 head ${state.head}` +
    (focus === null ? "" : ` \u00b7 query ${label(focus)}`);
}
function render() {
  layerSelect.value = `${state.layer}`;
  headSelect.value = `${state.head}`;
  drawLines(); drawMatrix(); drawMatrixRow(); drawPanel(); status();
}
document.addEventListener("mousemove", e => { if (e.movementX || e.movementY) state.pinned = false; });
function setHover(i) {
  if (state.pinned) i = null;
  if (state.hover === i) return;
  state.hover = i;
  drawLines(); drawMatrixRow();
}
function select(i) {
  state.selected = i;
  state.pinned = true;
  state.hover = null;
  if (i !== null) queryEls[i].scrollIntoView({block: "nearest"});
  drawLines(); drawMatrixRow(); drawPanel(); status();
}
document.addEventListener("keydown", e => {
  if (e.target instanceof HTMLSelectElement || e.altKey || e.ctrlKey || e.metaKey) return;
  const here = state.selected ?? -1, wrap = (v, n) => (v + n) % n;
  const moves = {
    ArrowRight: () => select(Math.min(S - 1, here + 1)), ArrowLeft: () => select(Math.max(0, here - 1)),
    Home: () => select(0), End: () => select(S - 1), Escape: () => select(null),
    ArrowDown: () => { state.head = wrap(state.head + 1, H); render(); },
    ArrowUp: () => { state.head = wrap(state.head - 1, H); render(); },
    PageDown: () => { state.layer = wrap(state.layer + 1, L); render(); },
    PageUp: () => { state.layer = wrap(state.layer - 1, L); render(); },
  };
  moves["]"] = moves.PageDown;
  moves["["] = moves.PageUp;
  if (moves[e.key]) {
    e.preventDefault();
    moves[e.key]();
  }
});
render();
document.body.dataset.ready = "1";
"""
