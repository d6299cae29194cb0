"""Fit the polynomial Q of bert_ref's float32 exact GELU (`kernels._GELU_LOGIT_Q`), and check it.

    pip install -e ".[golden]"    # or just scipy and mpmath
    python tools/fit/fit_gelu_logit.py [--degree 6] [--u-max 36] [--nodes 1500]

The float32 exact GELU of `bert_ref.model.kernels` computes `gelu(x) = max(x, 0) - |x| * Phi(-|x|)`
with `Phi(-w) = 1 / (1 + exp(w * Q(w^2)))`: `w * Q(w^2)` stands for `logit(Phi(w))`, which is odd
in w, so Q is a polynomial in u = w^2 (u clipped at `--u-max`, where Phi(-w) < 1e-9 already).

The fit is a weighted minimax (linear programme, scipy's HiGHS) on Chebyshev nodes of u in
[0, u_max], in the Chebyshev basis (well conditioned), against `logit(Phi(w)) / w` from mpmath at
40 digits. Each node is weighted by `w^2 * Phi(w) * Phi(-w) / max(w, 1)`: an error dQ in Q moves
the GELU by `w^2 * Phi(w) * Phi(-w) * dQ`, and the GELU's error is measured relative to
max(|x|, 1). The result is converted to monomials in u and rounded to float32.

It then runs the kernel's own block function (`kernels._gelu_logit_block`) with the new
coefficients on the grid of tests/test_kernels.py (400001 float32 points of [-10, 10], against
x * Phi(x) in float64 from math.erfc) and prints its three error measures beside the plain op's
(`ops.gelu`, the erf table), and the coefficients as a Python literal for kernels.py.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bert_ref import ops  # noqa: E402
from bert_ref.model import kernels


def fit(degree: int, u_max: float, nodes: int) -> tuple[np.ndarray, float]:
    """Monomial coefficients of Q in u (lowest first, float64) and the weighted minimax error."""
    import mpmath
    from scipy.optimize import linprog

    mpmath.mp.dps = 40
    t = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)  # Chebyshev nodes in [-1, 1]
    u = (t + 1) / 2 * u_max
    w = np.sqrt(u)
    target, weight = [], []
    for wi in w.tolist():
        m = mpmath.mpf(wi)
        if m == 0:
            target.append(float(4 * mpmath.npdf(0)))  # the limit of logit(Phi(w)) / w
        else:
            target.append(float(mpmath.log(mpmath.ncdf(m) / mpmath.ncdf(-m)) / m))
        weight.append(float(m * m * mpmath.ncdf(m) * mpmath.ncdf(-m)) / max(wi, 1.0))
    f = np.array(target)
    scale = 1e7  # the LP's numbers near 1
    wt = np.maximum(np.array(weight), 1e-12) * scale
    basis = np.polynomial.chebyshev.chebvander(t, degree)  # [nodes, degree + 1]
    # minimise e subject to |wt * (basis @ c - f)| <= e
    a_ub = np.vstack([np.hstack([wt[:, None] * basis, -np.ones((nodes, 1))]),
                      np.hstack([-wt[:, None] * basis, -np.ones((nodes, 1))])])
    b_ub = np.concatenate([wt * f, -wt * f])
    cost = np.zeros(degree + 2)
    cost[-1] = 1
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (degree + 1) + [(0, None)],
                     method="highs", options={"primal_feasibility_tolerance": 1e-10,
                                              "dual_feasibility_tolerance": 1e-10})
    if not result.success:
        raise SystemExit(f"the linear programme failed: {result.message}")
    in_t = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(result.x[:-1]))
    in_u = in_t(np.polynomial.Polynomial([-1.0, 2.0 / u_max]))  # t = 2u / u_max - 1
    return in_u.coef, float(result.x[-1] / scale)


def grid_errors(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, max abs error / max(|x|, 1), max abs error where |gelu| < 1e-3), as in
    tests/test_kernels.py."""
    xd = x.astype(np.float64)
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in xd.tolist()])
    err = np.abs(y.astype(np.float64) - ref)
    return float(err.max()), float((err / np.maximum(np.abs(xd), 1)).max()), float(err[np.abs(ref) < 1e-3].max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--degree", type=int, default=6)
    parser.add_argument("--u-max", type=float, default=float(kernels._GELU_LOGIT_U_MAX))
    parser.add_argument("--nodes", type=int, default=1500)
    args = parser.parse_args(argv)
    coefficients, weighted = fit(args.degree, args.u_max, args.nodes)
    q = coefficients.astype(np.float32)
    grid = np.linspace(-10, 10, 400_001).astype(np.float32)
    saved = kernels._GELU_LOGIT_Q, kernels._GELU_LOGIT_U_MAX
    try:
        kernels._GELU_LOGIT_Q, kernels._GELU_LOGIT_U_MAX = q, np.float32(args.u_max)
        out = np.empty_like(grid)
        kernels._gelu_logit_block(grid.copy(), out)
    finally:
        kernels._GELU_LOGIT_Q, kernels._GELU_LOGIT_U_MAX = saved
    new, plain = grid_errors(out, grid), grid_errors(ops.gelu(grid), grid)
    print(f"degree {args.degree}, u in [0, {args.u_max:g}], {args.nodes} nodes: weighted minimax error {weighted:.3g}")
    names = ("max abs error", "max abs error / max(|x|, 1)", "max abs error where |gelu| < 1e-3")
    for name, a, b in zip(names, new, plain, strict=True):
        print(f"  {name:36s} {a:.3g}  (ops.gelu: {b:.3g}){'' if a <= b else '  WORSE than the plain op'}")
    print("_GELU_LOGIT_Q = np.array([")
    print("    " + ", ".join(repr(float(c)) for c in q) + ",")
    print("], np.float32)")


if __name__ == "__main__":
    main()
