"""From a failing verdict to its likely cause: `bert-ref compare --diagnose`.

A failing port made a mistake; ports make the same few mistakes again and again
(`bert_ref.oracle.variants` lists them). For each, our forward is run *with* that mistake, and the
candidate is judged against that variant instead of BERT, by the verdict's own rule: the same
statistics, each with its own K, against an ensemble of legitimate runs of the variant. The
mistake that makes the candidate most likely is the likely cause; it *explains* the failure when
the verdict would pass the candidate against it.

**Where.** Which outputs pass is the verdict's (`compare_to_truth`: five statistics against the
ensemble of `bert_ref.oracle.ensemble`): a port the verdict passes gets no cause, and one it fails
is diagnosed at the first output the diagnosis compares (`hidden_states.{i}`, `sequence_output`,
`pooled_output`) that the verdict fails. With per-layer outputs the diagnosis is local: from our own
hidden state at the last passing output before it (or from the token ids, when none passes before
it) through the layers up to it, or the pooler alone when only `pooled_output` fails. Only that
segment is run, and only the mistakes that can happen in it (an embedding mistake cannot explain a
layer's output computed from our own input). Without per-layer outputs the segment is the whole
network. Attention probabilities and trace outputs are not compared (where only they fail, the
segment ends at the first compared output after their layer).

**The verdict against a mistake.** The mistake's truth T_H is the variant run in float64 for
float32, float64 and tf32 candidates, in float32 for the others (whose floors are thousands of times
larger than float32's rounding). Its ensemble is the precision's (`ensemble.members`: for float16
our policy, fused, wide, split-K and float16 accumulation; for float32 the fast kernels, the plain
ops and wide; the int8 recipe's; ggml's emulation and its exact-sum twin), each member run *with the
mistake*, from that member's own hidden state where the segment starts: each mistake has its own
floor, since a mistake can change how rounding errors grow (a float16 table or float16 arithmetic
rounds more; without the attention scale the softmax is sharper and amplifies them; pre-LN layers
let the residual stream grow). The candidate's statistics against T_H (`verdict.statistics`: max
abs, RMS, mean and worst cosine deficit, per-channel mean error, at valid positions) are checked by
`verdict.make_checks` against the largest each member reaches, with the verdict's K per statistic
(`verdict.LIMITS`, max abs's K the floor ratio). A mistake's ratio is the largest statistic in units
of its limit (value / (K x reference)) over the compared outputs: it explains at ratio <= 1. As in
the verdict, the max-abs reference is at least one rounding of the output's largest value at the
candidate's precision; for a mistake that rounds to float16 where the candidate's precision does not
(a float16 table, float16 arithmetic), an error of float16's unit roundoff on every value, of random
sign, joins the ensemble: our runs of such a variant may round alike where a port's own order of
additions makes it round one float16 step apart. Under a ggml precision, whose policy reads every
tanh GELU from ggml's table, the tanh GELU and the table are the same port, tried once.

**Ranking.** Mistakes are ranked by how likely each makes the candidate's error, modelled as
Gaussian noise of the size of the mistake's own ensemble around the variant: the score is, averaged
over the compared outputs, `rms_ratio**2 / 2 + ln(rms(f_H) / rms(f_BERT))` (a negative
log-likelihood per element, up to a constant; `rms_ratio` is the RMS error over the largest RMS
error of the mistake's ensemble, rms(f_H), and rms(f_BERT) BERT's), smallest first. For mistakes
that keep BERT's floor this is the RMS ratio's order; the logarithm charges a rounding mistake for
its larger floor, so that a float16 layer norm, whose float16 noise is large enough to cover many
errors, does not outrank the mistake that leaves exactly its own noise. The ranking uses the RMS
alone, not every statistic of the verdict: the RMS is the one statistic with a likelihood to rank
by, and measured over the suite it puts the planted cause first in every case (the explaining test
uses all five); ranking by the ratio would not (a mistake with a wider ensemble, such as ggml's
float16 table, leaves a smaller ratio than a plain tanh GELU port's own mistake without fitting it).
The first mistake in this order that explains is the likely cause. When none does, the mistakes that
lessen the failure's ratio at all (at most `POOL`, in ranking order) are tried in pairs of different
kinds (tanh GELU plus a wrong epsilon, token types plus ggml's GELU table), and the first pair that
explains is the cause; when no pair explains, the pairs are ranked after the single mistakes (a
second mistake that does not explain the failure is not named). When none explains but the best one
takes away most of the failure (its ratio is at most the square root of BERT's, and K times smaller,
both in units of the limits), it is named as the cause of most of it ("but not all of it").
Otherwise: "none of the N known mistakes explains it".

**Ties.** Two mistakes can explain a segment equally, differing only where it does not look: a
mask ignored and a mask laid on the queries give the same first layer at valid positions (they
differ at padded positions, which later layers read as keys). When several explain the segment
with scores within `TIE` of the best and the candidate has a later output, they are run again from
the same input through the next output it gives, and that ranking decides.

**Rows.** Batch rows do not interact, so on a batch of more than `SAMPLE_TOKENS` tokens the
mistakes are run on the rows where the failure is largest (as many as fit), which keeps the cost
of a diagnosis near that of a few layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bert_ref.model import runtime
from bert_ref.model.config import BertConfig
from bert_ref.model.precision import PRECISIONS, UNIT_ROUNDOFF, get_policy
from bert_ref.oracle import ensemble, int8, verdict
from bert_ref.oracle.blocked import as_flat
from bert_ref.oracle.int8 import Int8Scheme
from bert_ref.oracle.keys import try_parse_key, valid_mask
from bert_ref.oracle.report import Report
from bert_ref.oracle.run import (
    DEFAULT_FLOOR_RATIO,
    compare_to_truth,
    detect_int8_scheme,
    detect_precision,
    oracle_outputs,
)
from bert_ref.oracle.variants import Hypothesis, catalogue, combine
from bert_ref.oracle.variants import run as run_variant

__all__ = ["Diagnosis", "Finding", "diagnose", "POOL"]

#: At most this many single mistakes are combined in pairs when none explains alone.
POOL = 6
#: Below this many tokens the runs use one BLAS thread (`_blas_for`).
SMALL_BATCH = 512
#: Mistakes whose scores are within this of the best's are tied (`rms_ratio**2 / 2` units).
TIE = 0.25
#: The mistakes run on at most this many tokens: the batch rows where the failure is largest.
SAMPLE_TOKENS = 128
_BERT = "no mistake (BERT as the checkpoint defines it)"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One hypothesis (a mistake, a pair of mistakes, or "none") and what it leaves.

    `ratio` is the verdict's largest statistic against the hypothesis' ensemble, in units of its
    limit (value / (K x reference)), over the compared outputs (`worst` names the output and the
    statistic); `explains`: ratio <= 1, the verdict would pass the candidate against the variant.
    `max_ratio` and `rms_ratio` are the largest max abs and RMS ratios (value / reference, "x
    floor"); `score`: the ranking's negative log-likelihood (see the module docstring)."""

    ids: tuple[str, ...]
    what: str
    ratio: float
    max_ratio: float
    rms_ratio: float
    worst: str
    explains: bool
    score: float

    @property
    def name(self) -> str:
        return " + ".join(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "what": self.what, "ratio": _finite(self.ratio),
                "max_ratio": _finite(self.max_ratio), "rms_ratio": _finite(self.rms_ratio), "worst": self.worst,
                "explains": self.explains, "score": _finite(self.score)}


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` found: where it looked, what it tried, ranked best first, and the cause."""

    precision: str
    floor_ratio: float
    segment: str
    compared: tuple[str, ...]
    baseline: Finding
    ranked: tuple[Finding, ...]
    tested: int
    combinations: int
    cause: Finding | None

    def likely_cause(self) -> str:
        """The report's one line beginning `Likely cause:`."""
        limits = f"the verdict's limits (against the variant's own ensemble, at {self.precision})"
        if self.cause is not None and self.cause.explains:
            c = self.cause
            return (f"Likely cause: {c.what} ({c.name}): against it the candidate is at {_x(c.ratio)} {limits} "
                    f"(against BERT {_x(self.baseline.ratio)} of them, at {self.baseline.worst}).")
        if self.cause is not None:
            c = self.cause
            return (f"Likely cause: {c.what} ({c.name}), but not all of it: against it the candidate is still at "
                    f"{_x(c.ratio)} {limits}, at {c.worst} (against BERT {_x(self.baseline.ratio)}); "
                    "something else differs too.")
        if not self.ranked:
            return (f"Likely cause: none: the verdict passes every output compared ({', '.join(self.compared)}).")
        best = f"; the closest, {self.ranked[0].name}, leaves {_x(self.ranked[0].ratio)} {limits}"
        return f"Likely cause: none of the {self.tested} known mistakes explains it{best}."

    def format(self, rows: int = 5) -> str:
        """`likely_cause()`, where the diagnosis looked, and the first `rows` of the ranking."""
        lines = [self.likely_cause(),
                 f"Diagnosis of {self.segment} ({', '.join(self.compared)} compared), {self.precision}, K = "
                 f"{self.floor_ratio:g}: {self.tested} known mistakes tried"
                 + (f", {self.combinations} pairs" if self.combinations else "") + "; ranked by likelihood; x limit"
                 " = the verdict's largest statistic over its limit against each variant's ensemble (max x, rms x:"
                 " those errors over the ensemble's largest):"]
        shown = list(self.ranked[:rows]) + [self.baseline]
        width = max(len(f.name) for f in shown)
        lines.append(f"  {'rank':>4}  {'hypothesis':<{width}}  {'x limit':>9}  {'max x':>9}  {'rms x':>9}  explains")
        for i, f in enumerate(shown):
            rank = str(i + 1) if i < len(shown) - 1 else "-"
            lines.append(f"  {rank:>4}  {f.name:<{width}}  {_x(f.ratio):>9}  {_x(f.max_ratio):>9}  "
                         f"{_x(f.rms_ratio):>9}  {'yes' if f.explains else 'no'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        return {"likely_cause": None if self.cause is None else self.cause.to_dict(),
                "line": self.likely_cause(), "precision": self.precision, "floor_ratio": self.floor_ratio,
                "segment": self.segment, "compared": list(self.compared), "tested": self.tested,
                "combinations": self.combinations, "baseline": self.baseline.to_dict(),
                "ranked": [f.to_dict() for f in self.ranked]}


def _x(r: float) -> str:
    if not math.isfinite(r):
        return "inf" if r > 0 else "nan"
    if r < 0.1:
        return f"{r:.2g}x"
    return f"{r:.2f}x" if r < 1000 else f"{r:.3g}x".replace("e+0", "e").replace("e+", "e")


def _finite(r: float) -> float | None:
    return r if math.isfinite(r) else None


# ----------------------------------------------------------------------------------------------
# Where to look


@dataclasses.dataclass(frozen=True)
class _Segment:
    """Run from our hidden state `first` (None: from the token ids) through the layers up to
    hidden state `last`, and the pooler when `pooler`; compare `keys`."""

    first: int | None
    last: int
    pooler: bool
    keys: tuple[str, ...]

    @property
    def parts(self) -> frozenset[str]:
        parts = set()
        if self.first is None:
            parts.add("embeddings")
        if (self.first or 0) < self.last:
            parts.add("layers")
        if self.pooler:
            parts.add("pooler")
        return frozenset(parts)

    def describe(self, num_layers: int) -> str:
        if self.first is None and self.last == num_layers and self.pooler:
            return "the whole network"
        if self.first is None and self.last == 0:
            return "the embeddings"
        if self.first == self.last and self.pooler:
            return "the pooler (from our sequence_output)"
        start = "the token ids" if self.first is None else f"our hidden_states.{self.first}"
        layers = f"layer {self.first or 0}" if self.last - (self.first or 0) == 1 else \
            f"layers {self.first or 0}-{self.last - 1}"
        return f"{layers} (from {start})" + (" and the pooler" if self.pooler else "")


def _index(key: str, num_layers: int) -> int | None:
    """The hidden-state index of an output key (the pooler: num_layers + 1); None if not used."""
    if key == "sequence_output":
        return num_layers
    if key == "pooled_output":
        return num_layers + 1
    parsed = try_parse_key(key)
    return parsed.index if parsed is not None and parsed.name == "hidden_states" and not parsed.trace else None


def _segment(first_failing: int | None, passing: Sequence[int], keys: Mapping[int, str], num_layers: int) -> _Segment:
    """The segment that explains the first failing output (`keys`: index -> candidate key; the
    pooler's index is num_layers + 1)."""
    if first_failing is None:  # nothing the diagnosis compares fails: look at everything
        return _Segment(None, num_layers, num_layers + 1 in keys, tuple(keys[i] for i in sorted(keys)))
    pooler = first_failing == num_layers + 1
    if pooler and num_layers in passing:
        return _Segment(num_layers, num_layers, True, (keys[first_failing],))
    end = min(first_failing, num_layers)
    before = [i for i in passing if i < end]
    start = max(before) if before else None
    chosen = tuple(keys[i] for i in sorted(keys) if (start is None or i > start) and i <= first_failing)
    return _Segment(start, end, pooler, chosen)


# ----------------------------------------------------------------------------------------------
# Running a segment under a hypothesis


def _sub_model(config: BertConfig, weights: Mapping[str, np.ndarray], seg: _Segment,
               inputs: Mapping[str, np.ndarray]) -> tuple[BertConfig, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The part of the model the segment runs: its layers renumbered from 0 (at least one, a
    neighbour's when the segment runs none, which `run_variant(no_layers=True)` then leaves out);
    when it starts from the token ids, the token table's rows the inputs use (ids renumbered; rows
    are looked up, and quantised, one by one) and the position rows they can reach (two more for
    the shifted-position mistakes), else 1-row zero tables and zero ids: the segment's input is
    injected in place of the embeddings."""
    first = seg.first or 0
    n = max(1, seg.last - first)
    src = [min(first + i, config.num_layers - 1) for i in range(n)]
    out: dict[str, np.ndarray] = {}
    for i, j in enumerate(src):
        prefix = f"transformer_layer_{j}/"
        out.update({f"transformer_layer_{i}/" + k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    out["pooled_dense/kernel"], out["pooled_dense/bias"] = weights["pooled_dense/kernel"], weights["pooled_dense/bias"]
    out["embeddings_layer_norm/gamma"] = weights["embeddings_layer_norm/gamma"]
    out["embeddings_layer_norm/beta"] = weights["embeddings_layer_norm/beta"]
    if seg.first is None:
        used, ids = np.unique(inputs["token_ids"], return_inverse=True)
        rows = min(config.max_sequence_length, inputs["token_ids"].shape[1] + 2)
        out["token_embedding/embeddings"] = weights["token_embedding/embeddings"][used]
        out["position_embedding/embeddings"] = weights["position_embedding/embeddings"][:rows]
        out["segment_embedding/embeddings"] = weights["segment_embedding/embeddings"]
        sub = dataclasses.replace(config, num_layers=n, vocabulary_size=len(used), max_sequence_length=rows)
        return sub, out, {**inputs, "token_ids": ids.reshape(inputs["token_ids"].shape)}
    s, h = inputs["token_ids"].shape[1], config.hidden_dim
    dtype = weights["token_embedding/embeddings"].dtype
    for k, rows in (("token_embedding/embeddings", 1), ("position_embedding/embeddings", s),
                    ("segment_embedding/embeddings", 1)):
        out[k] = np.zeros((rows, h), dtype)
    sub = dataclasses.replace(config, num_layers=n, vocabulary_size=1, num_segments=1, max_sequence_length=s)
    zeros = np.zeros_like(inputs["token_ids"])
    return sub, out, {"token_ids": zeros, "segment_ids": zeros, "padding_mask": inputs["padding_mask"]}


def _run(model: Any, seg: _Segment, hyp: Hypothesis | None, dtype: Any, hidden: np.ndarray | None,
         inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The segment's outputs (by candidate key) under `hyp` (None: BERT) at policy `dtype`: the
    forward over the sub-model, computing with a `VariantPolicy` (`hidden`, ours, injected in place
    of the embeddings when the segment starts from a hidden state)."""
    config, weights, sub_inputs = _sub_model(model.config, model.weights, seg, inputs)
    replaced: Mapping[str, Any] = {}
    if hyp is not None:
        config, weights, sub_inputs, replaced = hyp.apply(config, weights, sub_inputs)
    first = seg.first or 0
    out = run_variant(weights, config, sub_inputs, dtype=dtype, steps=replaced, inject=hidden,
                      no_layers=seg.last == first)
    got = {f"hidden_states.{first + i}": h for i, h in enumerate(out["hidden_states"])}
    if seg.last == model.config.num_layers:
        got["sequence_output"] = got[f"hidden_states.{seg.last}"]
        got["pooled_output"] = out["pooled_output"]
    return got


# ----------------------------------------------------------------------------------------------
# Scoring: the verdict's statistics against a hypothesis' ensemble


@dataclasses.dataclass(frozen=True)
class _Member:
    """One run of a hypothesis' ensemble: an ensemble member's `policy` (a name or a `Policy`), and
    the `scale` its error is multiplied by (float64's modelled floor: the float32 run x 2^-29)."""

    name: str
    policy: Any
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Reference:
    """Per compared key: the valid-position selector, the truth's rows, the ensemble's statistics
    (`bert_ref.oracle.verdict.statistics` of each member's rows against the truth's) and the max-abs
    reference (`floor_scale`: the members' largest max abs, at least one rounding of the output's
    largest value at the unit roundoff `u`)."""

    valid: dict[str, np.ndarray | None]
    truth: dict[str, np.ndarray]
    members: dict[str, list[dict[str, float]]]
    scale: dict[str, float]

    def rms(self, key: str) -> float:
        return max(max(m["rms"] for m in self.members[key]), np.finfo(np.float64).tiny)


def _reference(truth: Mapping[str, np.ndarray], runs: Sequence[tuple[Mapping[str, np.ndarray], float]],
               keys: Sequence[str], u: float, mask: np.ndarray | None, half: bool = False) -> _Reference:
    """The `_Reference` of `runs` (outputs, scale) against `truth`. `half`: the hypothesis rounds to
    float16 (a table or float16 arithmetic) where the candidate's precision does not: our runs of it
    may round alike where a port's own order of additions lands one float16 step away, so an error of
    float16's unit roundoff on every value, of random sign, joins the ensemble."""
    valid, t_rows, members, scale = {}, {}, {}, {}
    for k in keys:
        t = np.asarray(truth[k], np.float64)
        valid[k] = sel = valid_mask(k, t.shape, mask)
        t_rows[k] = tr = verdict.rows(t, k, sel)
        stats = []
        for run, s in runs:
            m = verdict.rows(run[k], k, sel)
            stats.append(verdict.statistics(tr + (m - tr) * s if s != 1.0 else m, tr))
        if half:  # an error of float16's unit roundoff on every value, of random sign
            signs = np.random.default_rng(0).choice(np.array([-1.0, 1.0]), tr.shape)
            stats.append(verdict.statistics(tr + UNIT_ROUNDOFF["float16"] * np.abs(tr) * signs, tr))
        members[k] = stats
        top = float(np.max(np.abs(tr))) if tr.size else 0.0
        scale[k] = max(max(m["max_abs"] for m in stats), (UNIT_ROUNDOFF["float16"] if half else u) * top,
                       np.finfo(np.float64).tiny)
    return _Reference(valid, t_rows, members, scale)


def _finding(ids: tuple[str, ...], what: str, cand: Mapping[str, np.ndarray], ref: _Reference, keys: Sequence[str],
             limits: Mapping[str, float], base: _Reference | None = None) -> Finding:
    """What the hypothesis `ids` leaves: the verdict's checks (`verdict.make_checks`) of the
    candidate against the hypothesis' truth and ensemble `ref`, and the score (`base`: BERT's
    reference, for the score's penalty; None: the same as `ref`)."""
    base = ref if base is None else base
    worst_limit, worst_max, worst_rms, worst, nll = -1.0, 0.0, 0.0, keys[0], 0.0
    for key in keys:
        c = verdict.rows(cand[key], key, ref.valid[key])
        if c.size == 0:
            continue
        mine = verdict.statistics(c, ref.truth[key])
        checks = verdict.make_checks(mine, ref.members[key], floor_scale=ref.scale[key], limits=limits)
        if not all(math.isfinite(v) for v in mine.values()):  # a NaN or inf where the variant has none
            m = r = over = math.inf
            which = "max_abs"
        else:
            m, r = mine["max_abs"] / ref.scale[key], mine["rms"] / ref.rms(key)
            over, which = max((ch.ratio / ch.limit, ch.statistic) for ch in checks)
        if over > worst_limit:
            worst_limit, worst = over, f"{key} {which}"
        worst_max, worst_rms = max(worst_max, m), max(worst_rms, r)
        nll += ((r * r / 2 if r < 1e150 else math.inf) + math.log(ref.rms(key) / base.rms(key))) / len(keys)
    return Finding(ids, what, worst_limit, worst_max, worst_rms, worst, worst_limit <= 1.0, nll)


# ----------------------------------------------------------------------------------------------
# The diagnosis


def diagnose(model: Any, inputs: Mapping[str, Any], candidate: Mapping[str, Any], *, precision: str | None = None,
             floor_ratio: float | None = None, cache: bool = False, pairs: bool = True, report: Report | None = None,
             int8_scheme: str | Int8Scheme | None = None, limits: Mapping[str, float] | None = None
             ) -> Diagnosis | None:
    """Rank the known mistakes (`bert_ref.oracle.variants.catalogue`) by how well each explains the
    candidate's error (see the module docstring).

    Args:
        model: a `BertBackbone` (its weights and config).
        inputs: the inputs the candidate was run on (token ids, segment ids, padding mask).
        candidate: the candidate's outputs by our output keys (`hidden_states.{i}`,
            `sequence_output`, `pooled_output` are used).
        precision: the candidate's precision (`PRECISIONS`; default: from its dtypes).
        floor_ratio: K of the max abs statistic, the verdict's floor ratio (default `DEFAULT_FLOOR_RATIO`).
        cache: read our runs through the oracle cache.
        pairs: try pairs of mistakes when none explains alone.
        report: the verdict (`compare_to_truth`'s report of this candidate, in the floor-ratio mode);
            None: computed here. Which outputs pass is the verdict's: a passing report gets no cause.
        int8_scheme: for int8, the recipe (None: detected, as the verdict does).
        limits: K per statistic (default `bert_ref.oracle.verdict.LIMITS`; `floor_ratio` sets max_abs's).

    Returns:
        A `Diagnosis` (with no cause and nothing ranked when the verdict passes), or None when the
        candidate has none of the outputs the diagnosis compares.
    """
    flat = as_flat(candidate, "candidate")
    precision = detect_precision(flat) if precision is None else precision
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    k = DEFAULT_FLOOR_RATIO if floor_ratio is None else float(floor_ratio)
    lim = {**(verdict.default_limits() if limits is None else dict(limits)), "max_abs": k}
    config: BertConfig = model.config
    num_layers = config.num_layers
    by_index = {i: key for key in flat if (i := _index(key, num_layers)) is not None}
    if num_layers in by_index and f"hidden_states.{num_layers}" in flat and "sequence_output" in flat:
        by_index[num_layers] = "sequence_output"
    if not by_index:
        return None
    full_inputs = _full_inputs(inputs)
    mask = full_inputs["padding_mask"]
    scheme = int8.parse_int8_scheme(int8_scheme) if int8_scheme is not None else None
    if report is None:
        report = compare_to_truth(model, full_inputs, flat, precision=precision, floor_ratio=k, cache=cache,
                                  int8_scheme=scheme, limits=lim)
    u = UNIT_ROUNDOFF[precision]
    ref = "float64" if precision in ("float32", "float64", "tf32") else "float32"
    keys = [by_index[i] for i in sorted(by_index)]
    need = sorted({f"hidden_states.{i}" for i in by_index if i <= num_layers} | set(keys))
    truth = oracle_outputs(model, full_inputs, need, dtype="float64", cache=cache)
    if precision == "int8" and scheme is None:
        scheme = detect_int8_scheme(model, full_inputs, flat, truth, cache=cache).scheme
    members = [_Member(m.name, m.policy) for m in ensemble.members(precision, scheme)] or [
        _Member("float32", "float32", UNIT_ROUNDOFF["float64"] / UNIT_ROUNDOFF["float32"])]  # float64's model
    runs = {m.name: oracle_outputs(model, full_inputs, need, dtype=m.policy, cache=cache) for m in members}
    for d in (truth, *runs.values()):
        _alias(d, num_layers)

    # 1. Which output fails first: the verdict's; the segment before it.
    failed = {e.key for e in report if not e.passed}
    passing = [i for i in sorted(by_index) if by_index[i] not in failed]
    failing = next((i for i in sorted(by_index) if i not in passing), None)
    if report.passed:  # a passing port gets no cause
        base = _reference(truth, [(runs[m.name], m.scale) for m in members], keys, u, mask)
        none = _finding(("none",), _BERT, flat, base, keys, lim)
        return Diagnosis(precision, k, "nothing (the verdict passes)", tuple(keys), none, (), 0, 0, None)
    if failing is None:  # the verdict fails where the diagnosis does not compare (attention): look at every output
        failing = _first_after(report, by_index, num_layers)
    seg = _segment(failing, passing, by_index, num_layers)
    rows = _rows(flat, truth, runs, seg.keys, mask)
    if rows is not None:  # rows are independent: run the mistakes where the failure is largest
        full_inputs = {name: v[rows] for name, v in full_inputs.items()}
        flat, truth = ({key: v[rows] for key, v in d.items()} for d in (flat, truth))
        runs = {n: {key: v[rows] for key, v in d.items()} for n, d in runs.items()}
    with _blas_for(int(full_inputs["padding_mask"].size)):  # the mistakes run on few tokens
        return _rank(_Context(model, full_inputs, flat, ref, tuple(members), u, lim, truth, runs), seg, by_index,
                     pairs, precision)


def _first_after(report: Report, by_index: Mapping[int, str], num_layers: int) -> int:
    """The first compared output at or after the layer of the verdict's first failing output."""
    layer = next((e.layer for e in report if not e.passed and e.layer is not None), 0)
    return next((i for i in sorted(by_index) if i >= layer), max(by_index))


def _rows(candidate: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
          runs: Mapping[str, Mapping[str, np.ndarray]], keys: Sequence[str], mask: np.ndarray) -> np.ndarray | None:
    """The batch rows to run the mistakes on when the batch holds more than `SAMPLE_TOKENS` tokens:
    those whose largest error in floors (the ensemble's largest error, over `keys`) is largest, as
    many as fit (at least one); None to run them all."""
    b, s = mask.shape
    if b * s <= SAMPLE_TOKENS:
        return None
    worst = np.zeros(b)
    for key in keys:
        t = np.asarray(truth[key], np.float64)
        valid = valid_mask(key, t.shape, mask)
        sel = None if valid is None else np.broadcast_to(valid, t.shape)
        floor = max(float(np.max(np.abs(np.asarray(r[key], np.float64) - t)[sel] if sel is not None else
                                 np.abs(np.asarray(r[key], np.float64) - t))) for r in runs.values())
        e = np.abs(np.asarray(candidate[key], np.float64) - t) / max(floor, np.finfo(np.float64).tiny)
        if sel is not None:
            e = np.where(sel, e, 0)
        worst = np.maximum(worst, np.nan_to_num(e, nan=np.inf).reshape(b, -1).max(axis=1))
    order = np.argsort(-worst, kind="stable")
    return np.sort(order[: max(1, SAMPLE_TOKENS // s)])


def _blas_for(tokens: int) -> contextlib.AbstractContextManager[Any]:
    """OpenBLAS at one thread for few tokens: the segments' products are then small, and threads
    cost more than they bring (5x slower measured on 14 tokens of a busy 2-core machine)."""
    if tokens < SMALL_BATCH and runtime.blas() is not None:
        return runtime.one_blas_thread()
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every run of one diagnosis shares: the model, the inputs, the candidate, the dtype of the
    variants' truths (`ref`), the ensemble's members at the candidate's precision, its unit
    roundoff, the verdict's limits, and our BERT runs (the truth and each member)."""

    model: Any
    inputs: dict[str, np.ndarray]
    candidate: Mapping[str, np.ndarray]
    ref: str
    members: tuple[_Member, ...]
    u: float
    limits: Mapping[str, float]
    truth: Mapping[str, np.ndarray]
    runs: Mapping[str, Mapping[str, np.ndarray]]


def _rank(ctx: _Context, seg: _Segment, by_index: Mapping[int, str], pairs: bool, precision: str) -> Diagnosis:
    """Steps 2 and 3 of `diagnose`: every mistake over the segment, pairs, and the tie-break."""
    config, k = ctx.model.config, ctx.limits["max_abs"]
    num_layers = config.num_layers
    # 2. Every mistake that can happen in the segment; then pairs, when none explains alone.
    run = _Runner(ctx, seg)
    singles = _distinct([h for h in catalogue(config, ctx.inputs) if h.parts & seg.parts], ctx.members[0].policy)
    found = sorted(((run.evaluate(h), h) for h in singles), key=lambda fh: fh[0].score)
    tried = 0
    if not any(f.explains for f, _ in found) and pairs:
        pool = [h for f, h in found if f.ratio < run.baseline.ratio][:POOL]
        combos = [c for a, b in itertools.combinations(pool, 2) if (c := combine(a, b)) is not None]
        tried = len(combos)
        paired = sorted(((run.evaluate(c), c) for c in combos), key=lambda fh: fh[0].score)
        # A pair that explains nothing is no better a hypothesis than its parts: listed after them.
        found = sorted(found + paired, key=lambda fh: fh[0].score) if any(f.explains for f, _ in paired) \
            else found + paired
    best = next((f.score for f, _ in found if f.explains), math.inf)
    explaining = [h for f, h in found if f.explains and f.score <= best + TIE][:POOL]
    # 3. Several explain the segment equally (they differ only where it does not look): the next
    # output the candidate gives decides.
    later = [i for i in sorted(by_index) if i > seg.last]
    end = min(later[0], num_layers) if later else seg.last
    wider = _Segment(seg.first, end, bool(later) and later[0] == num_layers + 1,
                     tuple(by_index[i] for i in sorted(by_index) if (seg.first is None or i > seg.first)
                           and i <= (later[0] if later else seg.last)))
    if len(explaining) > 1 and set(wider.keys) - set(seg.keys):
        wide = _Runner(ctx, wider)
        decided = sorted(((wide.evaluate(h), h) for h in explaining), key=lambda fh: fh[0].score)
        rest = [fh for fh in found if fh[1] not in explaining]
        if decided[0][0].explains:  # reported over the wider segment
            run, found = wide, decided + rest
        else:  # none explains the later outputs within K: they still order those that explain the segment
            local = {id(h): f for f, h in found}
            found = [(local[id(h)], h) for _, h in decided] + rest
    ranked = [f for f, _ in found]
    cause = next((f for f in ranked if f.explains), None)
    if cause is None and ranked and _partial(ranked[0], run.baseline, k):
        cause = ranked[0]
    return Diagnosis(precision, k, run.seg.describe(num_layers), run.seg.keys, run.baseline, tuple(ranked),
                     len(singles), tried, cause)


def _distinct(hypotheses: list[Hypothesis], policy: Any) -> list[Hypothesis]:
    """`hypotheses` less those the candidate's precision computes as another one: a ggml policy
    computes every tanh GELU from ggml's float16 table (`GGMLPolicy.activation`), so a port of a
    tanh-GELU checkpoint and one with the table are the same port there; the table's name says it."""
    p = get_policy(policy)
    acts = {h.config.get("activation") for h in hypotheses}
    return [h for h in hypotheses if (a := h.config.get("activation")) is None or p.activation(a) == a
            or p.activation(a) not in acts]


class _Runner:
    """Runs hypotheses over one segment and scores them (see the module docstring): the segment's
    input is ours (the truth for the variant's truth, each member's own run for that member's run
    of the variant), and BERT's own runs on it give the baseline and BERT's reference."""

    def __init__(self, ctx: _Context, seg: _Segment) -> None:
        self.ctx, self.seg = ctx, seg
        self.mask = ctx.inputs["padding_mask"]
        self.hidden: dict[str, np.ndarray | None] = {"truth": None, **{m.name: None for m in ctx.members}}
        if seg.first is not None:
            key = f"hidden_states.{seg.first}"
            self.hidden = {"truth": ctx.truth[key], **{m.name: ctx.runs[m.name][key] for m in ctx.members}}
        self.reference = self._reference(None)
        self.baseline = _finding(("none",), _BERT, ctx.candidate, self.reference, seg.keys, ctx.limits)

    def _reference(self, h: Hypothesis | None) -> _Reference:
        """The segment under `h`: its truth, and each member's run, as a `_Reference`."""
        c = self.ctx
        truth = _run(c.model, self.seg, h, c.ref, self.hidden["truth"], c.inputs)
        runs = [(_run(c.model, self.seg, h, m.policy, self.hidden[m.name], c.inputs), m.scale) for m in c.members]
        half = h is not None and h.unit_roundoff > c.u
        return _reference(truth, runs, self.seg.keys, c.u, self.mask, half)

    def evaluate(self, h: Hypothesis) -> Finding:
        c = self.ctx
        return _finding(h.ids, h.what, c.candidate, self._reference(h), self.seg.keys, c.limits, self.reference)



def _partial(best: Finding, baseline: Finding, k: float) -> bool:
    """Whether a mistake that does not explain the failure still accounts for most of it: it takes
    away more than half of the orders of magnitude by which the candidate is over the verdict's
    limits (ratio <= sqrt(BERT's ratio), both in units of the limits) and at least a factor K."""
    return best.ratio <= math.sqrt(baseline.ratio) and best.ratio * k <= baseline.ratio


def _alias(outputs: dict[str, np.ndarray], num_layers: int) -> None:
    """Make `sequence_output` and `hidden_states.{num_layers}` name the same array when one is there."""
    last = f"hidden_states.{num_layers}"
    if last in outputs and "sequence_output" not in outputs:
        outputs["sequence_output"] = outputs[last]
    elif "sequence_output" in outputs and last not in outputs:
        outputs[last] = outputs["sequence_output"]


def _full_inputs(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    ids = np.asarray(inputs["token_ids"])
    seg = inputs.get("segment_ids")
    mask = inputs.get("padding_mask")
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids) if seg is None else np.asarray(seg),
            "padding_mask": np.ones(ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)}
