"""`bert-ref trace`: every named step of the forward on real text, and its pictures.

Runs the real all-MiniLM-L6-v2 weights. The traced hidden states are checked against
golden/minilm (transformers' `BertModel`, PyTorch float32) at that golden's float32 tolerance, 5e-5
(float32 vs float32 across libraries through 6 layers; see golden/minilm/manifest.json).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone, BertTokenizer
from bert_ref.cli import main
from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER
from bert_ref.learn.plots import write_plots
from bert_ref.learn.trace import run_text, step_names

from needs import need, run_bert_ref

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "minilm"
PAIR = ("The cat sat on the mat.", "A cat was sitting on a rug.")
MATPLOTLIB_INSTALL = 'pip install "bert-ref[plot]"'


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return BertBackbone.from_preset(minilm_dir), BertTokenizer.from_preset(minilm_dir)


def test_trace_of_a_golden_sentence_matches_transformers(minilm):
    model, tokenizer = minilm
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    with np.load(GOLDEN / "outputs.npz") as g:
        ids = g["inputs/token_ids"][0][g["inputs/padding_mask"][0].astype(bool)]
        golden = [g[f"float32/hidden_states/{i}"][0, : len(ids)] for i in range(6)]
        golden.append(g["float32/last_hidden_state"][0, : len(ids)])
    tr = run_text(model, tokenizer, manifest["sentences"][0])
    assert tr.tokens == [tokenizer.id_to_token(int(i)) for i in ids]  # same packing as transformers'
    assert len(tr.hidden_states) == 7
    for i, (ours, theirs) in enumerate(zip(tr.hidden_states, golden, strict=True)):
        err = np.abs(ours.astype(np.float64) - theirs).max()
        assert err <= manifest["tolerance"]["float32"], (i, err)
    # The summaries of the named steps are of the same arrays the outputs are made of.
    assert list(tr.steps) == step_names(6)
    for name, h in (("transformer_layer_5/feedforward_layer_norm", tr.hidden_states[6]),
                    ("embeddings/layer_norm", tr.hidden_states[0])):
        x = h.astype(np.float64)
        assert (tr.steps[name].mean, tr.steps[name].max) == (x.mean(), x.max())
        np.testing.assert_array_equal(tr.steps[name].norms, np.sqrt((x * x).sum(-1)))
        np.testing.assert_array_equal(tr.hidden_norms()[0 if name.startswith("emb") else 6], tr.steps[name].norms)


def test_trace_keeps_attention_and_hidden_states_only(minilm):
    """Memory: every other step is summarised, not kept (O(layers x heads x S^2) of attention)."""
    model, tokenizer = minilm
    tr = run_text(model, tokenizer, *PAIR)
    assert not hasattr(tr, "trace")
    kept = [a for a in vars(tr).values() if isinstance(a, np.ndarray)]
    kept += [a for v in vars(tr).values() if isinstance(v, list) for a in v if isinstance(a, np.ndarray)]
    kept += [st.norms for st in tr.steps.values() if st.norms is not None]
    s, layers = len(tr.tokens), 6
    attention = layers * 12 * s * s * 4
    assert sum(a.nbytes for a in kept) <= attention + (layers + 1) * s * 384 * 4 + (len(tr.steps) + 1) * s * 8


def test_trace_prints_every_step_labelled_by_token(minilm_dir):
    r = run_bert_ref("trace", minilm_dir, *PAIR, "--per-token")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "loaded from" in lines[0] and "6 layers, 12 heads, hidden 384" in lines[0]
    assert "0:[CLS][0]  1:the[0]  2:cat[0]" in r.stdout and "9:a[1]  10:cat[1]" in r.stdout
    assert "17:[SEP][1]" in r.stdout
    steps = ("embeddings/", "transformer_layer_", "pooled_output")
    names = [line.split()[0] for line in lines if line.startswith(steps)]
    assert names == step_names(6)
    assert len(names) == len(TRACE_EMBEDDINGS) + 6 * len(TRACE_LAYER) + 1
    step = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in names}
    assert "(18, 384)" in step["embeddings/token"]
    assert "(12, 18, 18)" in step["transformer_layer_0/attention_probs"]
    assert "(18, 1536)" in step["transformer_layer_3/feedforward_activation"]
    assert "(384,)" in step["pooled_output"]
    assert sum("[CLS] attends most to: h0 " in line for line in lines) == 6
    # --per-token: one row of 18 labelled norms under each of the per-position steps.
    per_token = [line for line in lines if line.lstrip().startswith("[CLS] ") and " rug " in line
                 and "attends most" not in line]
    assert len(per_token) == len(TRACE_EMBEDDINGS) + 6 * (len(TRACE_LAYER) - 2)


def test_trace_plot_writes_heatmaps_and_norms(minilm_dir, tmp_path):
    need("matplotlib", MATPLOTLIB_INSTALL)
    out = tmp_path / "pictures"
    r = run_bert_ref("trace", minilm_dir, *PAIR, "--plot", out, "--layers", "0,5")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["attention_layer_0.png", "attention_layer_5.png", "hidden_state_norms.png"]  # no temp files
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert width >= 400 and height >= 300, (name, width, height)
    assert f"wrote {out / 'attention_layer_0.png'}" in r.stderr


def test_trace_plots_of_a_long_text_thin_their_labels(minilm, tmp_path):
    """300 tokens: the heatmaps stay CELL_MAX inches a head, with at most LABELS_MAX labels an axis."""
    need("matplotlib", MATPLOTLIB_INSTALL)
    from bert_ref.learn import plots

    _, tokenizer = minilm
    small = BertBackbone(vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_heads=4, hidden_dim=16,
                         intermediate_dim=16, max_sequence_length=512, seed=0)  # quick to run
    tr = run_text(small, tokenizer, " ".join(["word"] * 298))
    assert len(tr.tokens) == 300
    assert list(plots.tick_positions(300)) == list(range(0, 300, 8)) and len(plots.tick_positions(300)) <= 40
    paths = write_plots(tr, tmp_path, dpi=40)
    for path in paths:
        width, height = struct.unpack(">II", path.read_bytes()[16:24])
        assert width <= 40 * (4 * plots.CELL_MAX + 0.8) and height <= 40 * (plots.CELL_MAX + 0.6) + 1, (path, width)


def test_trace_plot_draws_every_layer_by_default(minilm, tmp_path):
    need("matplotlib", MATPLOTLIB_INSTALL)
    _, tokenizer = minilm
    small = BertBackbone(vocabulary_size=tokenizer.vocabulary_size(), num_layers=3, num_heads=2, hidden_dim=8,
                         intermediate_dim=16, max_sequence_length=16, seed=0)  # quick to draw
    paths = write_plots(run_text(small, tokenizer, "short"), tmp_path / "new")
    assert [p.name for p in paths] == ["attention_layer_0.png", "attention_layer_1.png", "attention_layer_2.png",
                                       "hidden_state_norms.png"]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == sorted(p.name for p in paths)


def test_trace_plot_without_matplotlib_says_how_to_install(minilm_dir, tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    assert main(["trace", str(minilm_dir), "text", "--plot", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and MATPLOTLIB_INSTALL in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("args, message", [
    (["--layers", "0"], "--layers chooses the layers to plot: it needs --plot DIR"),
    (["--plot", "{tmp}", "--layers", "6"], "layer 6 is outside [0, 6): the model has 6 layers"),
    (["--layers", "x"], "expected layer numbers separated by commas"),
    (["--html", "{tmp}/missing/page.html"], "/missing does not exist"),
    (["--html", "{tmp}"], "is a directory; give the page's file name"),
])
def test_trace_bad_usage_is_exit_2(minilm_dir, tmp_path, args, message):
    if "--plot" in args:
        need("matplotlib", MATPLOTLIB_INSTALL)
    r = run_bert_ref("trace", minilm_dir, "text", *[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_trace_of_an_empty_text_or_unknown_preset_is_exit_2(minilm_dir, tmp_path):
    r = run_bert_ref("trace", minilm_dir, "  ")
    assert r.returncode == 2 and "TEXT is empty" in r.stderr
    r = run_bert_ref("trace", tmp_path / "nothing", "text")
    assert r.returncode == 2 and "cannot load preset" in r.stderr and "Traceback" not in r.stderr


def test_only_a_model_with_very_many_heads_is_too_large_to_plot():
    from bert_ref.learn.plots import check_plot_size

    check_plot_size(12, 512)  # MiniLM at its longest text is drawn
    with pytest.raises(ValueError, match=r"--plot: 512 tokens make .* plot a shorter text \(at most \d+ tokens with "
                                         r"1200 heads"):
        check_plot_size(1200, 512)
    with pytest.raises(ValueError, match="5000 heads are too many to draw in one picture at any length"):
        check_plot_size(5000, 3)
