"""The verdict of a low-precision port: several statistics per output, each against an ensemble.

The largest absolute error alone (the floor ratio) throws away what many elements say together: a
wrong layer-norm epsilon in float16 moves every normalised value by a few 1e-4, which hides below
float16's rounding element by element but doubles the RMS error and shifts each channel's mean.
So each output (its valid positions) is summarised by five statistics of its error against the
float64 truth,

- `max_abs`: the largest |candidate - truth|;
- `rms`: the root mean square of candidate - truth;
- `mean_cos`: the mean over rows of 1 - cos(candidate row, truth row) (rows are positions; for
  attention, (query, head) rows over the keys);
- `worst_cos`: the largest 1 - cos over rows;
- `channel`: the RMS over channels of each channel's mean signed error over rows (a systematic shift
  is a bug's signature; rounding noise averages out), given at least `CHANNEL_MIN_ROWS` rows;
- `recipe` (int8, when the recipe is known: given, or detected; at the embeddings and the first
  layer): the RMS of candidate - our run of that recipe, over the RMS of our run's own error.
  Dynamic quantisation is deterministic: a correct port of the same recipe rounds the same values
  to the same integers, so its error coincides with ours but for a few roundings that float-level
  differences flip; its reference is our float64-math variant of the recipe (at least
  `RECIPE_SLACK`);

and each is compared with the largest value the ensemble of our own legitimate runs reaches
(`bert_ref.oracle.ensemble`): the output fails when any statistic exceeds its own limit K times
that reference. The limits and the measurements behind them are `LIMITS` (docs/conformance.md has
the tables). `power` says, per output, how small a systematic deviation the checks still catch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bert_ref.oracle.keys import ATTENTION_NAMES, parse_key
from bert_ref.oracle.report import Check, Power

STATISTICS = ("max_abs", "rms", "mean_cos", "worst_cos", "channel", "recipe")

#: The `recipe` statistic's reference is at least this fraction of the floor's own error: a correct
#: port of the same int8 recipe may round a handful of values to the neighbouring level where its
#: float arithmetic differs from ours (measured: our float64-math variant of each recipe stays within
#: 1.7% of the floor's error at the first layer, and correct ports within it).
RECIPE_SLACK = 0.02

#: The `recipe` statistic is checked up to this `hidden_states` index (0: the embeddings, 1: the first
#: layer). Later, one value rounded to the other integer level cascades through every following
#: quantisation: measured at the last layer, our float64-math variant of a recipe was 0.0006x to 0.4x
#: of the floor's error away from the floor, depending on the recipe — too erratic a reference.
RECIPE_LAYERS = 1

#: The channel statistic needs this many rows (positions) to average over: with fewer (a pooled
#: output of a few sentences) a channel's mean is as noisy as one element.
CHANNEL_MIN_ROWS = 16


@dataclasses.dataclass(frozen=True)
class Limit:
    """K of one statistic, and why."""

    k: float
    reason: str


#: K per statistic: a candidate passes an output when each statistic is at most K x the largest of
#: the ensemble. Set from the port suite (tools/golden/make_port_suite.py, judged by
#: tools/golden/judge_port_suite.py on two batches, every output): the largest ratio any correct
#: port reached, and the smallest a planted bug reached where the precision can show it
#: (docs/conformance.md, "The statistics and their limits").
LIMITS: dict[str, Limit] = {
    "max_abs": Limit(4.0, "one element, heavy-tailed: correct ports reach at most 2.6x the ensemble's largest "
                          "(bfloat16 attention); K = 4, the limit since the floor was one run, keeps a factor 1.5"),
    "rms": Limit(2.0, "correct ports reach at most 1.35x (bfloat16; float16 1.17x); float16 ports with a wrong "
                      "epsilon or unbiased variance 2.7x-3.3x where first caught: K = 2 sits between"),
    "mean_cos": Limit(3.0, "correct ports reach at most 1.63x (float32; the half types 1.39x); a tanh GELU in float16 "
                           "3.3x-3.7x where first caught, an ignored mask in int8 21x (a scale change leaves "
                           "cosines alone: the RMS and channel checks see it)"),
    "worst_cos": Limit(8.0, "one position: correct bfloat16 ports reach 4.3x (an attention row); K = 8 keeps a "
                            "factor 1.9 and still fails rows that attend to padding (11x-10^5x)"),
    "channel": Limit(4.0, "correct ports reach at most 2.9x (bfloat16; float16 2.0x); the float16 bugs 4.8x-6.6x "
                          "where first caught"),
    "recipe": Limit(2.0, "correct int8 ports of the six recipes reach at most 1.11x the reference (0-1.7% of the "
                         "floor's error at the first layer); an ignored mask 37x: K = 2"),
}


def default_limits() -> dict[str, float]:
    return {k: v.k for k, v in LIMITS.items()}


# ----------------------------------------------------------------------------------------------
# Statistics


def rows(x: Any, key: str, valid: np.ndarray | None) -> np.ndarray:
    """The valid rows of one output as a float64 [n, channels] array: positions x channels;
    pooled outputs' sentences x channels; attention [B, heads, S, S] as (query, head) x keys.
    `valid` is `bert_ref.oracle.keys.valid_mask`'s (None: all valid)."""
    a = np.asarray(x)
    if parse_key(key).name in ATTENTION_NAMES and a.ndim == 4:  # [B, h, S, S] -> [B, S, h, S]: rows by query
        a = a.transpose(0, 2, 1, 3)
        if valid is not None:
            valid = valid.transpose(0, 2, 1, 3)
    n = a.shape[-1] if a.ndim else 1
    if valid is not None:
        sel = np.broadcast_to(valid, a.shape)[..., 0] if a.ndim > 1 else np.broadcast_to(valid, a.shape)
        a = a[sel] if a.ndim > 1 else a[sel][None]
    return np.asarray(a, dtype=np.float64).reshape(-1, n)


def statistics(cand: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The five statistics of `cand - truth` over rows ([n, C] float64 each; see the module
    docstring). A non-finite candidate value makes every statistic NaN."""
    e = cand - truth  # [n, C]
    if e.size == 0:
        return dict.fromkeys(STATISTICS, 0.0)
    a = np.abs(e)  # [n, C], reused below
    top = float(a.max())  # NaN or inf when any error is (NaN propagates through max)
    if not math.isfinite(top):
        return dict.fromkeys(STATISTICS, math.nan)
    out = {"max_abs": top, "rms": float(np.sqrt(np.mean(np.multiply(e, e, out=a))))}
    channel = None
    if e.shape[0] >= CHANNEL_MIN_ROWS:
        m = e.mean(axis=0)  # [C]
        channel = float(np.sqrt(np.mean(m * m)))
    deficit = cosine_deficits(cand, truth, out=(a, e))  # [n] (e's and a's memory reused)
    out["mean_cos"], out["worst_cos"] = float(deficit.mean()), float(deficit.max())
    if channel is not None:
        out["channel"] = channel
    return out


def cosine_deficits(cand: np.ndarray, truth: np.ndarray,
                    out: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """1 - cos(candidate row, truth row) for each row, computed as |c/|c| - t/|t||^2 / 2 (exact to
    float64's precision even when cos is within 1e-16 of 1, unlike 1 - c.t / (|c||t|)). Two zero
    rows: 0; one zero row: 1. [n, C] -> [n]. `out`: two float64 [n, C] scratch arrays to use."""
    nc = np.linalg.norm(cand, axis=1, keepdims=True)  # [n, 1]
    nt = np.linalg.norm(truth, axis=1, keepdims=True)
    both = (nc > 0) & (nt > 0)
    first, second = out if out is not None else (None, None)
    d = np.divide(cand, np.where(nc > 0, nc, 1.0), out=first)
    d -= np.divide(truth, np.where(nt > 0, nt, 1.0), out=second)
    deficit = 0.5 * np.einsum("ij,ij->i", d, d)
    return np.where(both[:, 0], deficit, np.where((nc == 0) & (nt == 0), 0.0, 1.0)[:, 0])


def recipe_distance(cand: np.ndarray, floor: np.ndarray, truth: np.ndarray) -> float:
    """RMS of cand - floor over RMS of floor - truth (rows; see `recipe`). NaN for a non-finite
    candidate; 0 when the floor is exact and the candidate equals it, inf when only the floor is."""
    d = cand - floor
    if not np.isfinite(d).all():
        return math.nan
    own = float(np.sqrt(np.mean((floor - truth) ** 2))) if floor.size else 0.0
    dist = float(np.sqrt(np.mean(d * d))) if d.size else 0.0
    return dist / own if own > 0 else (0.0 if dist == 0 else math.inf)


def make_checks(mine: Mapping[str, float], theirs: Sequence[Mapping[str, float]], *, floor_scale: float,
                limits: Mapping[str, float]) -> tuple[Check, ...]:
    """The checks of one output from the `statistics` of the candidate (`mine`) and of each ensemble
    member (`theirs`, the floor first). `floor_scale` is the max-abs reference (the members' largest
    max abs, at least one rounding of the output's largest value); the other references are the
    members' largest value of their statistic."""
    out = []
    for s in STATISTICS:
        if s == "recipe" or s not in limits or s not in mine or not theirs or any(s not in t for t in theirs):
            continue
        values = tuple(t[s] for t in theirs)
        reference = floor_scale if s == "max_abs" else max(values)
        out.append(Check(s, mine[s], values, reference, float(limits[s])))
    return tuple(out)


def recipe_check(cand: np.ndarray, floor: np.ndarray, truth: np.ndarray, variants: Sequence[np.ndarray],
                 limit: float) -> Check:
    """The `recipe` check of one output (rows): the candidate's distance from the floor against the
    largest of the exact variants' distances, at least `RECIPE_SLACK`."""
    return recipe_check_of(recipe_distance(cand, floor, truth),
                           tuple(recipe_distance(v, floor, truth) for v in variants), limit)


def recipe_check_of(distance: float, variants: Sequence[float], limit: float) -> Check:
    """The `recipe` check from the candidate's distance and the exact variants' (`recipe_distance`
    each; the dataset compare sums them over batches)."""
    values = tuple(variants)
    return Check("recipe", distance, values, max([RECIPE_SLACK, *values]), float(limit))


def power(truth: np.ndarray, floor: Mapping[str, float], found: Sequence[Check]) -> Power:
    """The smallest systematic deviation (relative to the RMS value R of the truth's rows) that fails
    at least one of `found`, added to errors like the floor's (`floor`: its statistics):

    * a *shift* of every position by the same per-channel offset, of RMS delta R: the channel
      statistic grows to sqrt(floor^2 + (delta R)^2), the RMS error likewise;
    * a *scatter* of RMS delta R that varies between elements: the RMS error grows as above; each
      row's cosine deficit by (delta R)^2 C / (2 |t_row|^2); the max abs error by up to delta R.

    Both solve "statistic = K x reference" in closed form (the deviation uncorrelated with the
    rounding error), each the smallest over the statistics that see it. [n, C] truth rows."""
    return power_of(*truth_rows(truth), floor, found)


def truth_rows(truth: np.ndarray) -> tuple[int, int, float, float]:
    """What `power_of` needs of the truth's rows ([n, C]): n, C, their RMS value and the mean over
    rows of nonzero norm of 1 / |t_row|^2."""
    n, c = truth.shape
    r = float(np.sqrt(np.mean(truth * truth))) if truth.size else 0.0
    norms = np.einsum("ij,ij->i", truth, truth)  # [n]
    inv = float(np.mean(1.0 / norms[norms > 0])) if (norms > 0).any() else 0.0
    return n, c, r, inv


def power_of(n: int, c: int, r: float, inv: float, floor: Mapping[str, float], found: Sequence[Check]) -> Power:
    """`power` from what it needs of the truth's rows: their number `n` and width `c`, their RMS
    value `r`, and `inv`, the mean over rows of nonzero norm of 1 / |t_row|^2 (the dataset compare
    sums these over batches)."""
    if r == 0 or n == 0:
        return Power(math.inf, math.inf)
    by = {k.statistic: k for k in found}

    def quadratic(s: str) -> float:  # sqrt(stat_floor^2 + (delta R)^2) = K ref
        k = by.get(s)
        if k is None or s not in floor:
            return math.inf
        room = (k.limit * k.reference) ** 2 - floor[s] ** 2
        return math.sqrt(max(room, 0.0)) / r

    def cosine() -> float:  # mean over rows of (delta R)^2 C / (2 |t_i|^2) = K ref - floor
        k = by.get("mean_cos")
        if k is None:
            return math.inf
        room = k.limit * k.reference - floor["mean_cos"]
        return math.sqrt(max(room, 0.0) * 2.0 / (r * r * c * inv)) if inv > 0 else math.inf

    def peak() -> float:  # max abs grows by up to delta R
        k = by.get("max_abs")
        if k is None:
            return math.inf
        return max(k.limit * k.reference - floor["max_abs"], 0.0) / r

    def recipe() -> float:  # the floor is at distance 0 from itself: delta R = K ref x floor's RMS error
        k = by.get("recipe")
        if k is None or "rms" not in floor:
            return math.inf
        return k.limit * k.reference * floor["rms"] / r

    rms, cos, top, own = quadratic("rms"), cosine(), peak(), recipe()
    return Power(shift=min(quadratic("channel"), rms, top, own), scatter=min(rms, cos, top, own))
