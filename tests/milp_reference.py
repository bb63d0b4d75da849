"""Independent reference for tests: the exact ``max_x c . (f(x) - g(x))`` over a box by a big-M
mixed-integer program (scipy.optimize.milp / HiGHS). Pre-activation bounds for big-M come from
plain interval arithmetic written here, not from the code under test."""
from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from lumpver.ir.network import Network


class _Program:
    def __init__(self, n_inputs: int, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lo, self.hi, self.integer = list(lo), list(hi), [0] * n_inputs
        self.rows: list[tuple[dict[int, float], float, float]] = []

    def var(self, lo: float, hi: float, integer: bool = False) -> int:
        self.lo.append(lo)
        self.hi.append(hi)
        self.integer.append(int(integer))
        return len(self.lo) - 1

    def row(self, coeffs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coeffs, lo, hi))


def _encode(p: _Program, net: Network, x_vars: list[int], lo: np.ndarray, hi: np.ndarray):
    """Add ``net``; returns the output as (coefficients over variables, constant) per output."""
    scale, shift = net.input_affine()
    # affine expressions: list of (dict var->coef, const)
    h = [({v: s}, t) for v, s, t in zip(x_vars, scale, shift)]
    h_lo, h_hi = np.minimum(scale * lo, scale * hi) + shift, np.maximum(scale * lo, scale * hi) + shift
    for k, layer in enumerate(net.layers):
        W, b = layer.weight, layer.bias
        z_lo = np.maximum(W, 0) @ h_lo + np.minimum(W, 0) @ h_hi + b - 1e-9
        z_hi = np.maximum(W, 0) @ h_hi + np.minimum(W, 0) @ h_lo + b + 1e-9
        exprs = []
        for i in range(layer.width):
            coeffs: dict[int, float] = {}
            const = float(b[i])
            for j, (hc, hk) in enumerate(h):
                for v, c in hc.items():
                    coeffs[v] = coeffs.get(v, 0.0) + W[i, j] * c
                const += W[i, j] * hk
            exprs.append((coeffs, const))
        if layer.activation == "identity":
            h, h_lo, h_hi = exprs, z_lo, z_hi
            continue
        assert layer.activation == "relu"
        new = []
        for i, (zc, zk) in enumerate(exprs):
            l, u = z_lo[i], z_hi[i]
            if u <= 0:
                new.append(({}, 0.0))
            elif l >= 0:
                new.append((zc, zk))
            else:
                y, d = p.var(0.0, u), p.var(0.0, 1.0, integer=True)
                p.row({y: 1.0, **{v: -c for v, c in zc.items()}}, zk, np.inf)  # y >= z
                p.row({y: 1.0, **{v: -c for v, c in zc.items()}, d: -l}, -np.inf, zk - l)  # y <= z - l(1-d)
                p.row({y: 1.0, d: -u}, -np.inf, 0.0)  # y <= u d
                new.append(({y: 1.0}, 0.0))
        h, h_lo, h_hi = new, np.maximum(z_lo, 0), np.maximum(z_hi, 0)
    return h


def max_difference(f: Network, g: Network, lo: np.ndarray, hi: np.ndarray, c: np.ndarray):
    """``(optimal value, maximiser x)`` of ``c . (f(x) - g(x))`` over ``[lo, hi]``."""
    n = f.n_inputs
    p = _Program(n, lo, hi)
    x = list(range(n))
    yf, yg = _encode(p, f, x, lo, hi), _encode(p, g, x, lo, hi)
    obj: dict[int, float] = {}
    const = 0.0
    for cj, (fc, fk), (gc, gk) in zip(c, yf, yg):
        for v, a in fc.items():
            obj[v] = obj.get(v, 0.0) + cj * a
        for v, a in gc.items():
            obj[v] = obj.get(v, 0.0) - cj * a
        const += cj * (fk - gk)
    nv = len(p.lo)
    cost = np.zeros(nv)
    for v, a in obj.items():
        cost[v] = -a
    cons = []
    if p.rows:
        A = np.zeros((len(p.rows), nv))
        for r, (coeffs, _, _) in enumerate(p.rows):
            for v, a in coeffs.items():
                A[r, v] += a
        cons = [LinearConstraint(A, [r[1] for r in p.rows], [r[2] for r in p.rows])]
    res = milp(cost, constraints=cons, integrality=np.array(p.integer), bounds=Bounds(p.lo, p.hi),
               options={"mip_rel_gap": 1e-9})
    assert res.success, res.message
    return -res.fun + const, np.asarray(res.x[:n])


def max_linf_difference(f: Network, g: Network, lo: np.ndarray, hi: np.ndarray):
    """Exact ``max_x ||f(x) - g(x)||_inf`` over the box and a maximiser."""
    best, arg = -np.inf, None
    for j in range(f.n_outputs):
        for s in (1.0, -1.0):
            c = np.zeros(f.n_outputs)
            c[j] = s
            val, x = max_difference(f, g, lo, hi, c)
            if val > best:
                best, arg = val, x
    return best, arg
