#!/usr/bin/env python3
"""Regenerates the GELU's polynomial coefficients in src/model/fastmath.rs.

Both fit g(t) = erfcx(x)/t = exp(x^2) erfc(x)/t with t = 1/(1 + x/2), x >= 0, t in (0, 1]:
then erfc(x) = t g(t) exp(-x^2), and the GELU's Phi and phi share exp(-x^2).

- f32 (ERFCX_T): degree 10 in powers of t, relative least squares at 4,000 Chebyshev nodes
  reweighted towards minimax (Lawson). Needs numpy and scipy.
- f64 (ERFCX_CHEB): the degree-26 Chebyshev interpolant in u = 2t - 1 at 27 Chebyshev
  nodes, computed with mpmath at 40 digits. Needs mpmath.

Usage: python3 scripts/erfcx_fit.py [f32|f64]
"""
import sys


def f32_fit():
    import numpy as np
    from scipy.special import erfcx

    def g(t):
        return erfcx(2.0 * (1.0 / t - 1.0)) / t

    deg, n = 10, 4000
    u = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    t = 0.5 * (u + 1) * (1 - 1e-12) + 1e-12
    y = g(t)
    w = np.ones(n)
    for _ in range(60):
        v = np.vander(t, deg + 1, increasing=True)
        c, *_ = np.linalg.lstsq(v / y[:, None] * np.sqrt(w)[:, None], np.sqrt(w), rcond=None)
        w = w * np.abs(v @ c - y) / y
        w /= w.sum()
    tt = np.linspace(1e-9, 1, 2_000_001)
    rel = np.max(np.abs(np.polyval(c[::-1], tt) - g(tt)) / g(tt))
    print(f"relative error {rel:.2e}")
    for x in c.astype(np.float32):
        print(f"    {float(x)!r},")


def f64_fit():
    import mpmath as mp

    mp.mp.dps = 40

    def g(t):
        x = 2 * (1 / t - 1)
        return mp.erfc(x) * mp.exp(x * x) / t

    n = 26
    nodes = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / (n + 1)) for k in range(n + 1)]
    vals = [g((u + 1) / 2) for u in nodes]
    c = []
    for j in range(n + 1):
        s = mp.fsum(vals[k] * mp.cos(mp.pi * j * (k + mp.mpf(1) / 2) / (n + 1)) for k in range(n + 1))
        c.append(2 * s / (n + 1))
    c[0] /= 2
    for x in c:
        print(f"    {float(x)!r},")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "f64"
    f32_fit() if which == "f32" else f64_fit()
