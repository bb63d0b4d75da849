"""Independent reference for tests on graph networks: the exact ``max_x c . y(x)`` over a box by a
big-M mixed-integer program (HiGHS through highspy, a dependency of cvxpy; scipy.optimize.milp's
bundled HiGHS stalled for minutes on 90-binary residual nets that highspy 1.16 solves in well under a
second), one variable per value of every node (Add, Concat,
MaxPool, ReLU). The big-M constants come from bounds computed here, never from lumpver.bounds:
interval arithmetic, then, for every value that a ReLU or max pool reads, the min and max of the
LP relaxation of the program built so far (binaries relaxed to [0, 1]; sound since that LP contains
every feasible point). Uses only the network's forward maps (``op.forward`` on unit vectors)."""
from __future__ import annotations

import highspy
import numpy as np
import scipy.sparse as sp

from lumpver.ir.graph import GraphNetwork
from lumpver.specs.inputset import Box

PAD = 1e-6  # slack on every derived bound (so that float noise of the solver never cuts a point)


class _Program:
    def __init__(self) -> None:
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[np.ndarray, np.ndarray, float, float]] = []  # (cols, vals, lo, hi)

    def var(self, lo, hi, integer: bool = False) -> np.ndarray:
        start = len(self.lo)
        self.lo.extend(np.asarray(lo, dtype=float))
        self.hi.extend(np.asarray(hi, dtype=float))
        self.integer.extend([int(integer)] * len(lo))
        return np.arange(start, start + len(lo))

    def row(self, cols, vals, lo: float, hi: float) -> None:
        self.rows.append((np.asarray(cols, dtype=int), np.asarray(vals, dtype=float), lo, hi))

    def matrix(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        n = len(self.lo)
        if not self.rows:
            return sp.csr_matrix((0, n)), np.zeros(0), np.zeros(0)
        r = np.concatenate([np.full(len(c), i) for i, (c, _, _, _) in enumerate(self.rows)])
        cols = np.concatenate([c for c, _, _, _ in self.rows])
        vals = np.concatenate([v for _, v, _, _ in self.rows])
        A = sp.csr_matrix((vals, (r, cols)), shape=(len(self.rows), n))
        return A, np.array([x[2] for x in self.rows]), np.array([x[3] for x in self.rows])

    def solver(self, cost: np.ndarray, relaxed: bool) -> highspy.Highs:
        """A HiGHS model of the program minimising ``cost`` (binaries continuous if ``relaxed``)."""
        A, rl, rh = self.matrix()
        A = A.tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = len(self.lo), A.shape[0]
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, np.array(self.lo), np.array(self.hi)
        lp.row_lower_, lp.row_upper_ = rl, rh
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
        if not relaxed:
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                               for i in self.integer]
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", 120.0)
        h.setOptionValue("mip_rel_gap", 1e-6)
        h.passModel(lp)
        return h

    def lp_range(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Min and max of each variable in ``cols`` over the LP relaxation."""
        h = self.solver(np.zeros(len(self.lo)), relaxed=True)
        out = np.zeros((2, len(cols)))
        for s, sign in enumerate((1.0, -1.0)):
            for k, v in enumerate(cols):
                h.changeColCost(int(v), sign)
                h.run()
                assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal, h.getModelStatus()
                out[s, k] = sign * h.getInfo().objective_function_value
                h.changeColCost(int(v), 0.0)
        return out[0] - PAD, out[1] + PAD


def _matrix(op) -> np.ndarray:
    return op.forward(np.eye(op.in_features)).T


def _linear(p: _Program, src: np.ndarray, lo: np.ndarray, hi: np.ndarray, W: np.ndarray, b: np.ndarray):
    l = np.maximum(W, 0) @ lo + np.minimum(W, 0) @ hi + b - PAD
    h = np.maximum(W, 0) @ hi + np.minimum(W, 0) @ lo + b + PAD
    v = p.var(l, h)
    for i in range(len(v)):
        nz = np.flatnonzero(W[i])
        p.row(np.r_[v[i], src[nz]], np.r_[-1.0, W[i, nz]], -b[i], -b[i])
    return v, l, h


def _relu(p: _Program, z: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    v = p.var(np.maximum(lo, 0), np.maximum(hi, 0) + PAD)
    for i in range(len(v)):
        if lo[i] >= 0:
            p.row([v[i], z[i]], [1.0, -1.0], 0.0, 0.0)
        elif hi[i] <= 0:
            p.row([v[i]], [1.0], 0.0, 0.0)
        else:
            d = p.var([0.0], [1.0], True)[0]
            p.row([v[i], z[i]], [1.0, -1.0], 0.0, np.inf)  # y >= z
            p.row([v[i], z[i], d], [1.0, -1.0, -lo[i]], -np.inf, -lo[i])  # y <= z - l (1 - d)
            p.row([v[i], d], [1.0, -hi[i]], -np.inf, 0.0)  # y <= u d
    return v, np.maximum(lo, 0), np.maximum(hi, 0)


def _maxpool(p: _Program, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, windows: np.ndarray):
    wins = [[i for i in w if i >= 0] for w in windows]
    l = np.array([lo[w].max() for w in wins])
    h = np.array([hi[w].max() for w in wins])
    v = p.var(l, h + PAD)
    for j, w in enumerate(wins):
        ds = p.var([0.0] * len(w), [1.0] * len(w), True)
        p.row(ds, np.ones(len(w)), 1.0, 1.0)
        for i, d in zip(w, ds):
            big = h[j] - lo[i] + PAD
            p.row([v[j], x[i]], [1.0, -1.0], 0.0, np.inf)
            p.row([v[j], x[i], d], [1.0, -1.0, big], -np.inf, big)  # y <= x + M (1 - d)
    return v, l, h


def graph_milp_max(g: GraphNetwork, c: np.ndarray, box: Box, tighten: bool = True) -> tuple[float, np.ndarray]:
    """``(max c . y, a maximiser x)`` over ``box`` (module docstring)."""
    p = _Program()
    var = {"input": p.var(box.lower, box.upper)}
    lo_b, hi_b = {"input": box.lower.astype(float)}, {"input": box.upper.astype(float)}
    readers = {n.inputs[0] for n in (g.node(i) for i in g.order[1:]) if n.kind in ("act", "maxpool")}
    for nid in g.order[1:]:
        n = g.node(nid)
        src = n.inputs[0]
        if n.kind == "scale":
            s, t = n.affine_of_scale()
            out = _linear(p, var[src], lo_b[src], hi_b[src], np.diag(s), t)
        elif n.kind == "affine":
            out = _linear(p, var[src], lo_b[src], hi_b[src], _matrix(n.op), n.bias)
        elif n.kind == "add":
            a, b = n.inputs
            out = _linear(p, np.r_[var[a], var[b]], np.r_[lo_b[a], lo_b[b]], np.r_[hi_b[a], hi_b[b]],
                          np.hstack([np.eye(n.size), np.eye(n.size)]), np.zeros(n.size))
        elif n.kind == "concat":
            out = tuple(np.concatenate(x) for x in zip(*[(var[i], lo_b[i], hi_b[i]) for i in n.inputs]))
        elif n.kind == "act":
            assert n.activation == "relu", n.activation
            out = _relu(p, var[src], lo_b[src], hi_b[src])
        else:
            out = _maxpool(p, var[src], lo_b[src], hi_b[src], n.pool.windows)
        var[nid], lo_b[nid], hi_b[nid] = out
        if tighten and nid in readers and n.kind != "concat":
            l, h = p.lp_range(var[nid])
            lo_b[nid], hi_b[nid] = np.maximum(lo_b[nid], l), np.minimum(hi_b[nid], h)
            for v, a, b in zip(var[nid], lo_b[nid], hi_b[nid]):
                p.lo[v], p.hi[v] = max(p.lo[v], a), min(p.hi[v], b)  # valid at every feasible point (LP bound)
    cost = np.zeros(len(p.lo))
    np.add.at(cost, var[g.output], -np.asarray(c, dtype=float))
    h = p.solver(cost, relaxed=False)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal, h.getModelStatus()
    return -float(h.getInfo().objective_function_value), np.array(h.getSolution().col_value[:g.n_inputs])
