"""int8 recipes: how runtimes quantise BERT dynamically, as schemes our int8 floor can follow.

A dynamically quantised port rounds each dense layer's kernel once and each dense layer's input on
every call; some also quantise the embedding tables. How they round decides the size *and* the
pattern of their error, so the floor a port is judged against has to follow its recipe. A scheme
has four parts (`Int8Scheme`):

- `weights`: `s8` symmetric int8 in [-127, 127], scale max|w|/127 (onnxruntime `QInt8`, our
  default); `s8r` symmetric int8 in [-128, 127], scale max|w|/127.5 (torch's
  `per_tensor_symmetric` qint8); `s7` symmetric 7-bit in [-64, 64], scale max|w|/64 (onnxruntime
  `reduce_range=True`); `u8` asymmetric uint8 in [0, 255] with a zero point (onnxruntime `QUInt8`).
- `per`: `tensor` (one scale per kernel) or `channel` (one per output column: `per_channel=True`).
- `act` (each dense layer's input): `s8` symmetric int8 [-127, 127], scale max|x|/127 (our
  default); `u8` asymmetric uint8 [0, 255], scale (max(x, 0) - min(x, 0))/255 (onnxruntime
  `DynamicQuantizeLinear`); `u7` asymmetric uint8 with `reduce_range`, [0, 127] (torch
  `quantize_dynamic` on x86/fbgemm).
- `embeddings`: `float` (tables kept in float32) or `u8` (each table quantised to asymmetric
  uint8: onnxruntime quantises the Gathers unless `op_types_to_quantize` leaves them out).

Activation scales are per tensor over the whole [B, S, H] input, padded positions included, as both
runtimes compute them; the attention products (q k^T, probabilities x v), softmax, layer norm and
GELU stay float32 (onnxruntime's dynamic quantisation leaves the attention MatMuls of two
activations alone; torch quantises only `Linear`). Values are quantised, de-quantised and
multiplied in float32 ("fake quantisation"), which differs from int32 accumulation only by float32
rounding. Rounding is to nearest, ties to even (`np.rint`), as both runtimes do.

**Grammar** (`--int8-scheme`, `parse_int8_scheme`): a preset name, optionally followed by
`,key=value` overrides, or `key=value` pairs alone (the rest from `symmetric`):

    symmetric              weights=s8,per=tensor,act=s8,embeddings=float   (our int8 floor until now)
    torch                  weights=s8r,per=tensor,act=u7,embeddings=float  (torch.ao quantize_dynamic, x86)
    ort                    weights=s8,per=tensor,act=u8,embeddings=u8      (onnxruntime quantize_dynamic)
    ort-matmul             weights=s8,per=tensor,act=u8,embeddings=float   (op_types_to_quantize=["MatMul"])
    ort,per=channel        ... per_channel=True
    ort,weights=s7         ... reduce_range=True
    ort-matmul,weights=u8  ... weight_type=QUInt8

Measured on all-MiniLM-L6-v2 (tools/golden/make_port_suite.py): the error of each onnxruntime and
torch recipe correlates 0.99-1.00 with our run of its scheme at the first layer's output, and at
most 0.92 with any other scheme's, so `detect_scheme` can tell them apart.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from bert_ref.model.precision import Policy

#: The values each part of a scheme may take.
PARTS: dict[str, tuple[str, ...]] = {
    "weights": ("s8", "s8r", "s7", "u8"),
    "per": ("tensor", "channel"),
    "act": ("s8", "u8", "u7"),
    "embeddings": ("float", "u8"),
}


@dataclasses.dataclass(frozen=True)
class Int8Scheme:
    """One dynamic-quantisation recipe (see the module docstring for each part's meaning)."""

    weights: str = "s8"
    per: str = "tensor"
    act: str = "s8"
    embeddings: str = "float"

    def __post_init__(self) -> None:
        for part, allowed in PARTS.items():
            value = getattr(self, part)
            if value not in allowed:
                raise ValueError(f"int8 scheme: {part}={value!r} is not one of {', '.join(allowed)}")

    @property
    def spec(self) -> str:
        """The canonical spelling: a preset name, or a preset with overrides, or key=value pairs."""
        mine = dataclasses.asdict(self)
        best = None
        for name, preset in PRESETS.items():
            diff = [f"{k}={v}" for k, v in mine.items() if dataclasses.asdict(preset)[k] != v]
            if best is None or len(diff) < len(best[1]):
                best = (name, diff)
        assert best is not None
        return ",".join([best[0], *best[1]])

    def __str__(self) -> str:
        return self.spec


PRESETS: dict[str, Int8Scheme] = {
    "symmetric": Int8Scheme("s8", "tensor", "s8", "float"),
    "torch": Int8Scheme("s8r", "tensor", "u7", "float"),
    "ort": Int8Scheme("s8", "tensor", "u8", "u8"),
    "ort-matmul": Int8Scheme("s8", "tensor", "u8", "float"),
}
DEFAULT_SCHEME = PRESETS["symmetric"]

GRAMMAR = ("PRESET[,key=value...] or key=value[,...]; presets " + ", ".join(PRESETS) + "; keys "
           + "; ".join(f"{k}={'|'.join(v)}" for k, v in PARTS.items()))


def parse_int8_scheme(text: str | Int8Scheme) -> Int8Scheme:
    """An `Int8Scheme` from its spelling (see the module docstring's grammar).

    Raises:
        ValueError: an unknown preset, key or value; the message gives the grammar.
    """
    if isinstance(text, Int8Scheme):
        return text
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--int8-scheme is empty; expected {GRAMMAR}")
    base = DEFAULT_SCHEME
    if "=" not in parts[0]:
        if parts[0] not in PRESETS:
            raise ValueError(f"--int8-scheme: unknown preset {parts[0]!r}; expected {GRAMMAR}")
        base = PRESETS[parts[0]]
        parts = parts[1:]
    values = dataclasses.asdict(base)
    for p in parts:
        key, sep, value = p.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in PARTS:
            raise ValueError(f"--int8-scheme: {p!r} is not key=value with a key of {', '.join(PARTS)}; "
                             f"expected {GRAMMAR}")
        if value not in PARTS[key]:
            raise ValueError(f"--int8-scheme: {key}={value!r} is not one of {', '.join(PARTS[key])}")
        values[key] = value
    return Int8Scheme(**values)


# ----------------------------------------------------------------------------------------------
# The quantisers (all return de-quantised float32 values of the input's shape)


def _scale(top: np.ndarray, levels: float) -> np.ndarray:
    """float32 scale top / levels; 1 where top is 0 (an all-zero tensor quantises exactly)."""
    scale = (np.asarray(top, dtype=np.float32) / np.float32(levels)).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0))


def quantize_weight(w: np.ndarray, scheme: Int8Scheme) -> np.ndarray:
    """A dense kernel [in, out] quantised as `scheme.weights` / `scheme.per` say. [in, out] -> [in, out]."""
    w = np.asarray(w, dtype=np.float32)
    axis = 0 if scheme.per == "channel" else None  # one scale per output column
    if scheme.weights == "u8":
        return quantize_asymmetric(w, 255, axis=axis)
    levels, low, high = {"s8": (127.0, -127, 127), "s8r": (127.5, -128, 127), "s7": (64.0, -64, 64)}[scheme.weights]
    top = np.max(np.abs(w), axis=axis, keepdims=axis is not None)
    scale = _scale(top, levels)
    return (np.clip(np.rint(w / scale), low, high) * scale).astype(np.float32)


def quantize_asymmetric(x: np.ndarray, qmax: int, *, axis: int | None = None,
                        dither: np.ndarray | None = None) -> np.ndarray:
    """Asymmetric unsigned quantisation to [0, qmax] with a zero point, over the range
    [min(x, 0), max(x, 0)] (per tensor, or per slice along `axis`'s complement): scale =
    (max - min) / qmax, zero point round(-min / scale). `dither` ([0, 1) uniforms of x's shape)
    replaces round-to-nearest by stochastic rounding. [...] -> [...]"""
    x = np.asarray(x, dtype=np.float32)
    keep = axis is not None
    lo = np.minimum(np.min(x, axis=axis, keepdims=keep), 0).astype(np.float32)
    hi = np.maximum(np.max(x, axis=axis, keepdims=keep), 0).astype(np.float32)
    scale = _scale(hi - lo, float(qmax))
    zero = np.clip(np.rint(-lo / scale), 0, qmax)
    y = x / scale
    q = np.rint(y) if dither is None else np.floor(y + dither)
    return ((np.clip(q + zero, 0, qmax) - zero) * scale).astype(np.float32)


def quantize_symmetric_activation(x: np.ndarray, dither: np.ndarray | None = None) -> np.ndarray:
    """Symmetric int8 [-127, 127] per tensor, scale max|x| / 127 (`bert_ref.model.precision.
    quantize_symmetric`, with optional stochastic rounding by `dither`). [...] -> [...]"""
    x = np.asarray(x, dtype=np.float32)
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if top == 0.0 or not np.isfinite(top):
        return x
    scale = np.float32(top / 127.0)
    y = x / scale
    q = np.rint(y) if dither is None else np.floor(y + dither)
    return (np.clip(q, -127, 127) * scale).astype(np.float32)


def quantize_activation(x: np.ndarray, scheme: Int8Scheme, dither: np.ndarray | None = None) -> np.ndarray:
    """A dense layer's input as `scheme.act` quantises it (per tensor). [...] -> [...]"""
    if scheme.act == "s8":
        return quantize_symmetric_activation(x, dither)
    return quantize_asymmetric(x, 255 if scheme.act == "u8" else 127, dither=dither)


# ----------------------------------------------------------------------------------------------
# The policy


@dataclasses.dataclass(frozen=True)
class Int8SchemePolicy(Policy):
    """float32 everywhere, with dense kernels, dense inputs and (with `embeddings=u8`) the embedding
    tables quantised as `scheme` says; the attention products stay float32.

    With `seed`, each dense input is rounded *stochastically* (up with probability equal to the
    fraction) instead of to nearest: another realisation of the same recipe's rounding error, of the
    same size, for the ensemble of `bert_ref.oracle.ensemble`. The random numbers are drawn from
    the seed and the input's bytes, so a run is reproducible."""

    scheme: Int8Scheme = DEFAULT_SCHEME
    seed: int | None = None

    def kernel(self, w: np.ndarray) -> np.ndarray:
        return quantize_weight(self.weight(w), self.scheme)

    def embedding_table(self, name: str, w: np.ndarray) -> np.ndarray:
        """An embedding table [rows, H] as the lookups use it: quantised to uint8 per table with
        `embeddings=u8` (onnxruntime's quantised Gather), else the float32 weight."""
        w = self.weight(w)
        return quantize_asymmetric(w, 255) if self.scheme.embeddings == "u8" else w

    def dense_input(self, x: np.ndarray) -> np.ndarray:
        dither = None
        if self.seed is not None:
            x32 = np.ascontiguousarray(x, dtype=np.float32)
            digest = zlib.crc32(x32.data.cast("B")[: 1 << 16])
            dither = np.random.default_rng([self.seed, digest, x32.size]).random(x32.shape, dtype=np.float32)
        return quantize_activation(x, self.scheme, dither)

    @property
    def rounds_matmul_inputs(self) -> bool:
        return True


def scheme_policy(scheme: Int8Scheme | str, seed: int | None = None) -> Policy:
    """The policy of an int8 scheme: for `symmetric` without a seed, the `int8` policy of
    `bert_ref.model.precision` itself (the same run, and the same entries in the oracle cache)."""
    from bert_ref.model.precision import get_policy

    scheme = parse_int8_scheme(scheme)
    if scheme == DEFAULT_SCHEME and seed is None:
        return get_policy("int8")
    f32 = np.dtype(np.float32)
    name = f"int8[{scheme.spec}]" + ("" if seed is None else f"~sr{seed}")
    return Int8SchemePolicy(name, f32, f32, f32, scheme, seed)


# ----------------------------------------------------------------------------------------------
# Detection

#: Recipes `detect_scheme` tries: the presets and their per-channel, reduce_range and uint8-weight
#: variants (onnxruntime's options, torch's per-channel qconfig).
CANDIDATE_SCHEMES: tuple[Int8Scheme, ...] = tuple(dict.fromkeys([
    *PRESETS.values(),
    Int8Scheme("s8", "channel", "u8", "u8"), Int8Scheme("s8", "channel", "u8", "float"),
    Int8Scheme("s7", "tensor", "u8", "u8"), Int8Scheme("s7", "tensor", "u8", "float"),
    Int8Scheme("u8", "tensor", "u8", "u8"), Int8Scheme("u8", "tensor", "u8", "float"),
    Int8Scheme("u8", "channel", "u8", "float"), Int8Scheme("s8r", "channel", "u7", "float"),
]))

#: A scheme is named as the candidate's when its error correlates at least this much with the
#: candidate's at the first output after the embeddings: the matching recipe measured 0.99-1.00
#: there for every onnxruntime and torch port of the suite, the best non-matching one at most 0.92.
MATCH_CORRELATION = 0.95

#: Below a match, the closest recipe still *explains* the candidate's error when the correlation is at
#: least this (the unexplained part at most 1.7x the explained one): a correct port of that recipe
#: plus something more, which the `recipe` statistic then measures. Lower, the closest recipe is no
#: model of the candidate, and only the statistics against its ensemble judge it.
EXPLAIN_CORRELATION = 0.5


@dataclasses.dataclass(frozen=True)
class Detection:
    """Which scheme's errors look like the candidate's: `scheme` (the best), `correlation` (of its
    error with the candidate's, at `key`), `matched` (correlation >= MATCH_CORRELATION) and the
    runner-up."""

    scheme: Int8Scheme
    correlation: float
    key: str
    matched: bool
    runner_up: Int8Scheme | None = None
    runner_up_correlation: float | None = None
    early: bool = True  # `key` is the first output after the embeddings (not a final output)

    @property
    def explains(self) -> bool:
        """Whether the recipe is known well enough for the `recipe` statistic: matched, or (at the
        first layer, where float-level drift is negligible) explaining most of the error."""
        return self.matched or (self.early and self.correlation >= EXPLAIN_CORRELATION)

    def note(self) -> str:
        if self.matched:
            head = f"int8 scheme {self.scheme.spec} detected from the candidate's errors"
        elif self.explains:
            head = (f"int8 scheme {self.scheme.spec} explains most of the candidate's errors but not all (a correct "
                    f"port of it correlates >= {MATCH_CORRELATION} there): a bug on top of it, or another recipe")
        else:
            head = (f"no modelled int8 recipe matches the candidate's errors (a bug, or another recipe); "
                    f"judged against the closest, {self.scheme.spec}")
        tail = f" (correlation {self.correlation:.3f} at {self.key}"
        if self.runner_up is not None and self.runner_up_correlation is not None:
            tail += f"; next {self.runner_up.spec}, {self.runner_up_correlation:.3f}"
        return head + tail + "; --int8-scheme overrides)"


def error_correlation(candidate: np.ndarray, ours: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> float:
    """Pearson correlation of `candidate - truth` with `ours - truth` over the valid elements
    (0 when either error is constant)."""
    return correlation_with(centered_error(candidate, truth, valid), ours, truth, valid)


def centered_error(x: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """`x - truth` over the valid elements, flat, minus its mean (float64): one side of
    `error_correlation`, computed once for a candidate compared with several schemes. [...] -> [n]"""
    e = np.asarray(x, dtype=np.float64) - truth  # [...]
    if valid is not None:
        e = e[np.broadcast_to(valid, e.shape)]  # [n]: the valid elements
    e = e.ravel()
    return e - e.mean()


def correlation_with(c: np.ndarray, ours: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> float:
    """`error_correlation` from the candidate's `centered_error` `c`. [n], [...] x2 -> a number"""
    o = centered_error(ours, truth, valid)  # [n]
    denom = float(np.sqrt(np.dot(c, c) * np.dot(o, o)))
    return float(np.dot(c, o)) / denom if denom > 0 else 0.0


def rank_schemes(scores: Mapping[Int8Scheme, float], key: str, early: bool = True) -> Detection:
    """The `Detection` of per-scheme correlations (scores: scheme -> correlation at `key`)."""
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    best, corr = ranked[0]
    second: tuple[Any, Any] = ranked[1] if len(ranked) > 1 else (None, None)
    return Detection(best, corr, key, corr >= MATCH_CORRELATION, second[0], second[1], early)
