"""Draw docs/figures/layer_post_ln_pre_ln.svg: BERT's post-LN encoder layer beside a pre-LN one.

Plain SVG text written by this script (no plotting library), so the file is the same on every run
and every machine. Run from anywhere:

    python tools/figures/make_layer_diagram.py [OUT.svg]

Left, post-LN (BERT, the layer `bert_ref.encoder` composes): each sublayer's output is added to its input,
then normalised; the grey names are the trace's steps (`forward(trace=True)`,
"transformer_layer_{i}/..."). Right, pre-LN (GPT-2 and most later models): each sublayer's input is
normalised and its output added to the un-normalised stream. Colours are from the Okabe-Ito palette.
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "docs" / "figures" / "layer_post_ln_pre_ln.svg"

WIDTH, HEIGHT = 840, 540
BOX_W, BOX_H = 250, 34
FILL = {"attention": "#d4ecf9", "ffn": "#cdeee4", "norm": "#fbe6bf"}  # light Okabe-Ito sky blue, green, orange
STROKE = {"attention": "#0072B2", "ffn": "#009E73", "norm": "#B07800"}
TRACE_X = 185  # right edge of the trace-name labels of the post-LN column


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Drawing:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, x: float, y: float, s: str, *, size: int = 13, anchor: str = "middle", cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f'<text x="{x:g}" y="{y:g}" font-size="{size}" text-anchor="{anchor}"{c}>{_esc(s)}</text>')

    def line(self, points: list[tuple[float, float]], *, arrow: bool = True) -> None:
        d = " ".join(f"{x:g},{y:g}" for x, y in points)
        end = ' marker-end="url(#arrow)"' if arrow else ""
        self.parts.append(f'<polyline points="{d}" fill="none" stroke="#333" stroke-width="1.5"{end}/>')

    def box(self, cx: float, y: float, label: str, kind: str) -> tuple[float, float]:
        """A box centred on cx with its top at y; returns (top, bottom)."""
        self.parts.append(f'<rect x="{cx - BOX_W / 2:g}" y="{y:g}" width="{BOX_W}" height="{BOX_H}" rx="6" '
                          f'fill="{FILL[kind]}" stroke="{STROKE[kind]}" stroke-width="1.5"/>')
        self.text(cx, y + BOX_H / 2 + 4.5, label)
        return y, y + BOX_H

    def add(self, cx: float, cy: float) -> None:
        """The residual sum: a circled plus at (cx, cy), radius 11."""
        self.parts.append(f'<circle cx="{cx:g}" cy="{cy:g}" r="11" fill="#fff" stroke="#333" stroke-width="1.5"/>')
        self.parts.append(f'<path d="M{cx - 6:g},{cy:g}H{cx + 6:g}M{cx:g},{cy - 6:g}V{cy + 6:g}" '
                          'stroke="#333" stroke-width="1.5"/>')

    def trace(self, y: float, name: str) -> None:
        self.text(TRACE_X, y + 4, name, size=11, anchor="end", cls="trace")

    def residual(self, cx: float, y_from: float, y_to: float) -> None:
        """The skip connection: from the stream at y_from, around the right of the boxes, into the
        circled plus at y_to."""
        side = cx + BOX_W / 2 + 24
        self.parts.append(f'<circle cx="{cx:g}" cy="{y_from:g}" r="3" fill="#333"/>')
        self.line([(cx, y_from), (side, y_from), (side, y_to), (cx + 13, y_to)])


def post_ln(d: Drawing, cx: float) -> None:
    d.text(cx, 40, "post-LN: BERT (this code)", size=16)
    d.text(cx, 58, "y = LN(x + Attention(x))", size=12, cls="formula")
    d.text(cx, 74, "out = LN(y + FFN(y))", size=12, cls="formula")
    d.text(cx, 94, "x  [B, S, H]")
    d.text(TRACE_X, 112, "trace step names:", size=11, anchor="end", cls="trace")
    d.line([(cx, 98), (cx, 128)])
    top, bottom = d.box(cx, 130, "multi-head self-attention", "attention")
    d.trace(top + BOX_H / 2, "attention_output")
    d.residual(cx, 112, 195)
    d.line([(cx, bottom), (cx, 182)])
    d.add(cx, 195)
    d.trace(195, "attention_residual")
    d.line([(cx, 206), (cx, 228)])
    top, bottom = d.box(cx, 230, "layer norm", "norm")
    d.trace(top + BOX_H / 2, "self_attention_layer_norm")
    d.line([(cx, bottom), (cx, 298)])
    top, bottom = d.box(cx, 300, "feed-forward: dense, GELU, dense", "ffn")
    d.trace(top + BOX_H / 2, "feedforward_output")
    d.residual(cx, 282, 365)
    d.line([(cx, bottom), (cx, 352)])
    d.add(cx, 365)
    d.trace(365, "feedforward_residual")
    d.line([(cx, 376), (cx, 398)])
    top, bottom = d.box(cx, 400, "layer norm", "norm")
    d.trace(top + BOX_H / 2, "feedforward_layer_norm")
    d.line([(cx, bottom), (cx, 462)])
    d.text(cx, 478, "out  [B, S, H]: the next layer's x")


def pre_ln(d: Drawing, cx: float) -> None:
    d.text(cx, 40, "pre-LN: GPT-2 and later", size=16)
    d.text(cx, 58, "y = x + Attention(LN(x))", size=12, cls="formula")
    d.text(cx, 74, "out = y + FFN(LN(y))", size=12, cls="formula")
    d.text(cx, 94, "x  [B, S, H]")
    d.line([(cx, 98), (cx, 128)])
    _, bottom = d.box(cx, 130, "layer norm", "norm")
    d.residual(cx, 112, 260)
    d.line([(cx, bottom), (cx, 188)])
    _, bottom = d.box(cx, 190, "multi-head self-attention", "attention")
    d.line([(cx, bottom), (cx, 247)])
    d.add(cx, 260)
    d.line([(cx, 271), (cx, 298)])
    _, bottom = d.box(cx, 300, "layer norm", "norm")
    d.residual(cx, 282, 425)
    d.line([(cx, bottom), (cx, 358)])
    _, bottom = d.box(cx, 360, "feed-forward: dense, GELU, dense", "ffn")
    d.line([(cx, bottom), (cx, 412)])
    d.add(cx, 425)
    d.line([(cx, 436), (cx, 462)])
    d.text(cx, 478, "out  [B, S, H]: never normalised here;")
    d.text(cx, 496, "one last layer norm after the final layer")


def svg() -> str:
    d = Drawing()
    post_ln(d, 340)
    pre_ln(d, 670)
    d.text(WIDTH / 2, HEIGHT - 22, "LN: layer norm over H. The lines on the right of each column are the residual "
           "(skip) connections.", size=11, cls="trace")
    d.text(WIDTH / 2, HEIGHT - 6, "Same weights, different functions: BERT's checkpoints were trained post-LN.",
           size=11, cls="trace")
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">\n'
            "<title>A post-LN encoder layer (BERT) beside a pre-LN one</title>\n"
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#333"/></marker>\n'
            "<style>.trace { fill: #666; font-family: DejaVu Sans Mono, Menlo, monospace; } "
            ".formula { fill: #333; font-family: DejaVu Sans Mono, Menlo, monospace; }</style></defs>\n"
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>\n')
    return head + "\n".join(d.parts) + "\n</svg>\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
