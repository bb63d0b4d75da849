"""The bound engine on graph networks (DESIGN.md §3, §10): interval and CROWN bounds of every node
of a :class:`~lumpver.ir.graph.GraphNetwork` over a raw input box, auto_LiRPA style.

* :func:`propagate_graph` visits the nodes in topological order: interval bounds of each node from
  its inputs' bounds (:func:`lumpver.bounds.engine.interval_affine` for ``scale``/``affine`` nodes,
  the activation registry of :mod:`lumpver.bounds.relaxations`, outward-rounded sums for ``add``,
  :func:`lumpver.bounds.relaxations.maxpool_relaxation` for ``maxpool``), intersected for
  ``crown`` with back-substituted bounds wherever a node feeds a relaxation (an activation: its
  unstable rows; a max pool: every row) and is not an affine function of the input, and at the output.
* :func:`back_substitute_graph` (the graph form of :func:`lumpver.bounds.engine.back_substitute`)
  walks the nodes in reverse topological order from a target node: coefficients reaching a branch
  point from several consumers are added there (an ``add`` passes its coefficients to both inputs,
  a ``concat`` splits them), relaxations replace activations and max pools, and the result is a
  :class:`~lumpver.bounds.engine.LinearBound` in the raw input with the magnitudes of every step,
  so :meth:`LinearBound.upper` applies the one rounding policy (:mod:`lumpver.bounds.rounding`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import networkx as nx
import numpy as np
import scipy.sparse as sp

from lumpver.bounds.engine import AffineStep, LinearBound, apply_relaxation, interval_affine
from lumpver.bounds.relaxations import LinearRelaxation, MaxPoolRelaxation, get_relaxation, maxpool_relaxation
from lumpver.bounds.rounding import add_hi, add_lo
from lumpver.ir.conv import DiagonalOperator
from lumpver.ir.graph import GraphNetwork
from lumpver.specs.inputset import Box

_ROW_VALUES = 1 << 22  # coefficient values per array in a chunk of back-substituted rows


@dataclass
class PreparedGraph:
    """A graph network with ``|op|`` of every linear node computed once (reuse for many boxes)."""

    net: GraphNetwork
    steps: dict[str, AffineStep]
    #: nodes whose value is an affine function of the input (interval bounds are exact there)
    affine_of_input: set[str]
    chain: dict[str, int] = field(default_factory=dict)

    def chain_length(self, target: str) -> int:
        """Accumulation length bound of a back-substitution from ``target``: every operator's dot
        products on any path, the additions at branch points, the target's rows and the input."""
        if target not in self.chain:
            nodes = nx.ancestors(self.net.graph, target) | {target}
            self.chain[target] = sum(self.steps[n].op.in_features + 4 if n in self.steps else 4 for n in nodes) + \
                self.net.node(target).size + 8
        return self.chain[target]


def prepare_graph(net: GraphNetwork) -> PreparedGraph:
    """The :class:`PreparedGraph` of ``net`` (ValueError for an activation without a relaxation)."""
    steps: dict[str, AffineStep] = {}
    exact = {"input"}
    for nid in net.order[1:]:
        node = net.node(nid)
        if node.kind == "act":
            get_relaxation(node.activation)
        elif node.kind == "scale":
            s, t = node.affine_of_scale()
            steps[nid] = AffineStep.of(DiagonalOperator((s.size,), s), t)
        elif node.kind == "affine":
            steps[nid] = AffineStep.of(node.op, node.bias)
        if node.kind in ("scale", "affine") and node.inputs[0] in exact:
            exact.add(nid)
    return PreparedGraph(net, steps, exact)


@dataclass
class GraphBounds:
    """Sound bounds of every node's value over a box, and the relaxations they give."""

    lower: dict[str, np.ndarray]
    upper: dict[str, np.ndarray]
    relax: dict[str, LinearRelaxation | MaxPoolRelaxation]
    output: str
    method: str
    complete: bool = True  # every intermediate node was back-substituted (no deadline cut)

    @property
    def output_lower(self) -> np.ndarray:
        return self.lower[self.output]

    @property
    def output_upper(self) -> np.ndarray:
        return self.upper[self.output]

    def n_unstable(self) -> int:
        """Activation inputs with ``l < 0 < u``."""
        return int(sum(np.sum((r.sl != r.su)) for r in self.relax.values() if isinstance(r, LinearRelaxation)))


# ----------------------------------------------------------------------------------------
# back-substitution
# ----------------------------------------------------------------------------------------
def back_substitute_graph(pg: PreparedGraph, relax: dict, lam: np.ndarray, target: str) -> LinearBound:
    """Linear upper bound of ``lam . v_target`` in the raw input (module docstring)."""
    net = pg.net
    A = np.array(lam, dtype=np.float64, ndmin=2)
    coef: dict[str, tuple[np.ndarray, np.ndarray]] = {target: (A, np.abs(A))}
    c, c_mag = np.zeros(A.shape[0]), np.zeros(A.shape[0])
    for nid in reversed(net.order[1:]):
        if nid not in coef:
            continue
        A, A_mag = coef.pop(nid)
        node = net.node(nid)
        if nid in pg.steps:
            step = pg.steps[nid]
            c, c_mag = c + A @ step.bias, c_mag + A_mag @ np.abs(step.bias)
            parts = [(step.op.backward(A), step.abs_op.backward(A_mag))]
        elif node.kind == "act":
            A, A_mag, c, c_mag = apply_relaxation(relax[nid], A, A_mag, c, c_mag)
            parts = [(A, A_mag)]
        elif node.kind == "maxpool":
            A, A_mag, c, c_mag = _through_maxpool(relax[nid], node.pool.in_features, A, A_mag, c, c_mag)
            parts = [(A, A_mag)]
        elif node.kind == "add":
            parts = [(A, A_mag), (A, A_mag)]
        else:  # concat
            cuts = np.cumsum([net.node(i).size for i in node.inputs])[:-1]
            parts = list(zip(np.split(A, cuts, axis=1), np.split(A_mag, cuts, axis=1)))
        for src, (a, m) in zip(node.inputs, parts):
            if src in coef:
                a0, m0 = coef[src]
                a, m = a0 + a, m0 + m
            coef[src] = (a, m)
    A, A_mag = coef.get("input", (np.zeros((A.shape[0], net.n_inputs)),) * 2)
    return LinearBound(A, c, A_mag, c_mag, pg.chain_length(target))


def _through_maxpool(r: MaxPoolRelaxation, n_in: int, A, A_mag, c, c_mag):
    """Coefficients on a max pool's outputs -> on its inputs (upper-bound direction)."""
    n_out = r.lo_idx.size
    rows = np.arange(n_out)
    up = sp.csr_matrix((np.r_[r.up_coef, r.up_coef2], (np.r_[rows, rows], np.r_[r.lo_idx, r.up_idx2])),
                       shape=(n_out, n_in))  # duplicate entries are summed
    lo = sp.csr_matrix((np.ones(n_out), (rows, r.lo_idx)), shape=(n_out, n_in))
    pos, neg = np.maximum(A, 0.0), np.minimum(A, 0.0)
    new = np.asarray((up.T @ pos.T).T + (lo.T @ neg.T).T)
    mag = np.asarray((abs(up).T @ A_mag.T).T + (lo.T @ A_mag.T).T)
    return new, mag, c + pos @ r.up_const, c_mag + A_mag @ (np.abs(r.up_const) + r.tmag)


def graph_objective_bounds(pg: PreparedGraph, gb: GraphBounds, lam: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Sound ``(lower, upper)`` of ``lam . y`` (network outputs) over ``box`` (``gb`` on that box)."""
    lam = np.array(lam, dtype=np.float64, ndmin=2)
    up = back_substitute_graph(pg, gb.relax, np.vstack([lam, -lam]), gb.output).upper(box)
    m = lam.shape[0]
    return np.maximum(-up[m:], -np.inf), up[:m]


# ----------------------------------------------------------------------------------------
# node bounds
# ----------------------------------------------------------------------------------------
def propagate_graph(pg: PreparedGraph, box: Box, method: str = "crown", prior: Optional[GraphBounds] = None,
                    deadline: Optional[float] = None) -> GraphBounds:
    """Bounds of every node of ``pg.net`` over the raw ``box`` (module docstring); ``prior`` (bounds
    on the same or a larger box) are intersected in. After ``deadline`` (``time.monotonic()``)
    intermediate nodes keep their interval bounds (still sound; ``complete`` turns False); the
    output is always back-substituted."""
    net = pg.net
    out = GraphBounds({"input": box.lower.astype(np.float64)}, {"input": box.upper.astype(np.float64)}, {},
                      net.output, method)
    for nid in net.order[1:]:
        lo, hi = _interval(pg, out, nid)
        if method == "crown" and nid not in pg.affine_of_input:
            rows = _crown_rows(pg, nid, lo, hi)
            late = deadline is not None and nid != net.output and time.monotonic() > deadline
            out.complete = out.complete and not (late and rows is not None and rows.size)
            if rows is not None and rows.size and not late:
                lo, hi = _tighten(pg, out, nid, rows, box, lo, hi, None if nid == net.output else deadline)
        if prior is not None:
            lo, hi = np.maximum(lo, prior.lower[nid]), np.minimum(hi, prior.upper[nid])
        out.lower[nid], out.upper[nid] = lo, np.maximum(hi, lo)
    return out


def _interval(pg: PreparedGraph, gb: GraphBounds, nid: str) -> tuple[np.ndarray, np.ndarray]:
    node = pg.net.node(nid)
    los, his = [gb.lower[i] for i in node.inputs], [gb.upper[i] for i in node.inputs]
    if nid in pg.steps:
        return interval_affine(pg.steps[nid], los[0], his[0])
    if node.kind == "act":  # the relaxation from the input's final bounds (set before this node's CROWN rows)
        rel = get_relaxation(node.activation)
        gb.relax[nid] = rel.linear(los[0], his[0], node.alpha)
        return rel.interval(los[0], his[0], node.alpha)
    if node.kind == "add":
        return add_lo(los[0], los[1]), add_hi(his[0], his[1])
    if node.kind == "concat":
        return np.concatenate(los), np.concatenate(his)
    r = maxpool_relaxation(node.pool.windows, los[0], his[0])
    gb.relax[nid] = r
    return r.lower.copy(), r.upper.copy()


def _crown_rows(pg: PreparedGraph, nid: str, lo: np.ndarray, hi: np.ndarray) -> Optional[np.ndarray]:
    """Rows of node ``nid`` worth back-substituting: all of the output, the unstable rows of an
    activation's input, the contested inputs of a max pool; None when no relaxation reads the node,
    and for an activation node (the interval of its input's bounds is exact for a monotone activation)."""
    net = pg.net
    if net.node(nid).kind == "act":  # act.interval of its input's bounds is as tight as CROWN here
        return None
    if nid == net.output:
        return np.arange(lo.size)
    readers = [net.node(s) for s in net.graph.successors(nid) if net.node(s).kind in ("act", "maxpool")]
    if not readers:
        return None
    rows = np.zeros(lo.size, dtype=bool)
    for r in readers:
        rows |= _contested(r.pool.windows, lo, hi) if r.kind == "maxpool" else (lo < 0) & (hi > 0)
    return np.flatnonzero(rows)


def _contested(windows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inputs that can be the maximum of a window no single input dominates (only their bounds
    change the max pool's relaxation)."""
    pad = windows < 0
    wl = np.where(pad, -np.inf, lo[np.maximum(windows, 0)])
    wu = np.where(pad, -np.inf, hi[np.maximum(windows, 0)])
    cand = wu > wl.max(axis=1, keepdims=True)
    open_ = cand.sum(axis=1) > 1
    out = np.zeros(lo.size, dtype=bool)
    out[windows[open_][cand[open_]]] = True
    return out


def _tighten(pg: PreparedGraph, gb: GraphBounds, nid: str, rows: np.ndarray, box: Box, lo: np.ndarray,
             hi: np.ndarray, deadline: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi]`` intersected on ``rows`` with back-substituted bounds (in chunks of rows, until
    ``deadline``)."""
    lo, hi = lo.copy(), hi.copy()
    widest = max(pg.net.node(n).size for n in pg.net.order)
    step = max(8, _ROW_VALUES // (2 * widest))  # rows and their negations
    for s in range(0, rows.size, step):
        if deadline is not None and time.monotonic() > deadline:
            gb.complete = False
            break
        r = rows[s:s + step]
        sel = np.zeros((r.size, lo.size))
        sel[np.arange(r.size), r] = 1.0
        up = back_substitute_graph(pg, gb.relax, np.vstack([sel, -sel]), nid).upper(box)
        lo[r], hi[r] = np.maximum(lo[r], -up[r.size:]), np.minimum(hi[r], up[:r.size])
    return lo, hi
