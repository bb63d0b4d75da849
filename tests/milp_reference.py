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

    def matrix(self) -> np.ndarray:
        """The rows' coefficients as a dense matrix over all variables."""
        A = np.zeros((len(self.rows), len(self.lo)))
        for r, (coeffs, _, _) in enumerate(self.rows):
            for v, a in coeffs.items():
                A[r, v] += a
        return A


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


def _program(f: Network, g: Network, lo: np.ndarray, hi: np.ndarray):
    """The program of ``f`` and ``g`` on one shared input and their outputs' affine expressions."""
    p = _Program(f.n_inputs, lo, hi)
    x = list(range(f.n_inputs))
    return p, _encode(p, f, x, lo, hi), _encode(p, g, x, lo, hi)


def _objective(p: _Program, yf, yg, c: np.ndarray) -> tuple[np.ndarray, float]:
    """``(a, k)`` with ``c . (f - g) = a . v + k`` over the program's variables ``v``."""
    a, const = np.zeros(len(p.lo)), 0.0
    for cj, (fc, fk), (gc, gk) in zip(c, yf, yg):
        for v, w in fc.items():
            a[v] += cj * w
        for v, w in gc.items():
            a[v] -= cj * w
        const += cj * (fk - gk)
    return a, const


def _solve(p: _Program, a: np.ndarray, const: float, at_least: float = -np.inf, relax: bool = False):
    """``(max of a . v + const, maximiser's x)`` over the program (its LP relaxation with ``relax``), with
    the extra row ``a . v + const >= at_least``; ``(None, None)`` when that makes it infeasible."""
    rows = [LinearConstraint(p.matrix(), [r[1] for r in p.rows], [r[2] for r in p.rows])] if p.rows else []
    if np.isfinite(at_least):
        rows.append(LinearConstraint(a[None], at_least - const, np.inf))
    integrality = np.zeros(len(p.lo)) if relax else np.array(p.integer)
    res = milp(-a, constraints=rows, integrality=integrality, bounds=Bounds(p.lo, p.hi),
               options={"mip_rel_gap": 1e-9})
    if res.status == 2:  # infeasible
        return None, None
    assert res.success, res.message
    return -res.fun + const, np.asarray(res.x)


def max_difference(f: Network, g: Network, lo: np.ndarray, hi: np.ndarray, c: np.ndarray):
    """``(optimal value, maximiser x)`` of ``c . (f(x) - g(x))`` over ``[lo, hi]``."""
    p, yf, yg = _program(f, g, lo, hi)
    value, x = _solve(p, *_objective(p, yf, yg, c))
    return value, x[:f.n_inputs]


def max_linf_difference(f: Network, g: Network, lo: np.ndarray, hi: np.ndarray):
    """Exact ``max_x ||f(x) - g(x)||_inf`` over the box and a maximiser: the rows ``+-(f_j - g_j)`` in
    decreasing order of their LP relaxation's bound; a row is skipped when that bound is not above the
    best so far, and solved with the extra row ``objective >= best so far`` otherwise (an infeasible
    program then says it cannot beat it, at little cost)."""
    p, yf, yg = _program(f, g, lo, hi)
    rows = [_objective(p, yf, yg, s * np.eye(f.n_outputs)[j]) for j in range(f.n_outputs) for s in (1.0, -1.0)]
    relaxed = [_solve(p, a, k, relax=True)[0] for a, k in rows]
    best, arg = -np.inf, None
    for r in np.argsort(relaxed)[::-1]:
        if relaxed[r] + 1e-7 * (1 + abs(relaxed[r])) <= best:
            break
        value, x = _solve(p, *rows[r], at_least=best)
        if value is not None and value > best:
            best, arg = value, x[:f.n_inputs]
    return best, arg
