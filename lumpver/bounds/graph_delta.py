"""Node-wise difference intervals of two graph networks with the same structure (DESIGN.md §5, §10):
ReluDiff's interval deltas on an operator graph.

When g has f's graph (same topological order of node kinds, inputs and shapes: a quantised or
weight-pruned copy), every node's ``delta = v^f - v^g`` is bounded in topological order from the
node bounds of both networks (the product graph's :class:`~lumpver.bounds.graph_engine.GraphBounds`):

* ``scale``/``affine``: ``delta z = W^f delta h + (W^f - W^g) h^g + (b^f - b^g)`` by interval
  arithmetic (:func:`lumpver.bounds.engine.interval_affine`, outward rounding). ``W^f - W^g`` and
  ``b^f - b^g`` are formed only for operators of the same kind and geometry (dense, diagonal,
  convolution) whose float64 differences are exact (checked); otherwise the node falls back to
  ``[l^f - u^g, u^f - l^g]``;
* ``act``: ``delta h = s delta z`` with the secant slope ``s`` in the activation's slope range on the
  hull of both pre-activation bounds (:func:`lumpver.bounds.diff.delta_interval`);
* ``add``: the sum (rounded outward); ``concat``: the parts;
* ``maxpool``: ``max_W a - max_W b`` lies in ``[min_W (a - b), max_W (a - b)]`` over each window.

Every node's interval is intersected with the difference of the two networks' own bounds, so it is
never looser than that. The error of these intervals grows with the size of the change, not with
the networks' relaxation slack: for a small perturbation they are far tighter than the symbolic
product-graph bound they are intersected with (:mod:`lumpver.bounds.graph_diff`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lumpver.bounds.diff import delta_interval
from lumpver.bounds.engine import AffineStep, interval_affine
from lumpver.bounds.graph_engine import GraphBounds, PreparedGraph
from lumpver.bounds.relaxations import get_relaxation
from lumpver.bounds.rounding import add_hi, add_lo, exact_difference
from lumpver.ir.conv import ConvOperator, DiagonalOperator
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.operators import DenseOperator, LinearOperator

Interval = tuple[np.ndarray, np.ndarray]


def aligned_nodes(f: GraphNetwork, g: GraphNetwork) -> Optional[dict[str, str]]:
    """f's node ids -> g's, position by position in topological order, when both graphs have the
    same structure (kinds, inputs, shapes, activations, pools); None otherwise."""
    if len(f.order) != len(g.order):
        return None
    match = dict(zip(f.order, g.order))
    for a, b in match.items():
        na, nb = f.node(a), g.node(b)
        same = (na.kind == nb.kind and na.shape == nb.shape and tuple(match.get(i) for i in na.inputs) == nb.inputs
                and na.activation == nb.activation and (na.kind != "act" or na.alpha == nb.alpha)
                and (na.pool is None) == (nb.pool is None)
                and (na.pool is None or np.array_equal(na.pool.windows, nb.pool.windows)))
        if not same:
            return None
    return match if match[f.output] == g.output else None


def delta_op(a: LinearOperator, b: LinearOperator) -> Optional[LinearOperator]:
    """The operator ``a - b`` for two operators of the same kind and geometry whose float64
    difference is exact; None otherwise."""
    if isinstance(a, DenseOperator) and isinstance(b, DenseOperator) and a.weight.shape == b.weight.shape:
        d = exact_difference(a.weight, b.weight)
        return None if d is None else DenseOperator(d)
    if isinstance(a, DiagonalOperator) and isinstance(b, DiagonalOperator) and a.scale.shape == b.scale.shape:
        d = exact_difference(a.scale, b.scale)
        return None if d is None else DiagonalOperator(a.in_shape, d)
    if isinstance(a, ConvOperator) and isinstance(b, ConvOperator) and a.weight.shape == b.weight.shape and \
            (a.in_shape, a.strides, a.pads, a.dilations, a.groups) == (b.in_shape, b.strides, b.pads, b.dilations, b.groups):
        d = exact_difference(a.weight, b.weight)
        return None if d is None else a.with_weight(d)
    return None


TAGS = ("f/", "g/")


def delta_steps(pg: PreparedGraph, match: dict[str, str]) -> dict[str, Optional[AffineStep]]:
    """Per aligned linear node of f (product-graph id), the step ``(W^f - W^g, b^f - b^g)`` or None
    (computed once per pair; :func:`node_deltas` reads it)."""
    out: dict[str, Optional[AffineStep]] = {}
    for fid, gid in match.items():
        pf, pq = TAGS[0] + fid, TAGS[1] + gid
        if pf in pg.steps:
            dop = delta_op(pg.steps[pf].op, pg.steps[pq].op)
            dbias = exact_difference(pg.steps[pf].bias, pg.steps[pq].bias)
            out[pf] = None if dop is None or dbias is None else AffineStep.of(dop, dbias)
    return out


def node_deltas(pg: PreparedGraph, gb: GraphBounds, match: dict[str, str],
                steps: Optional[dict[str, Optional[AffineStep]]] = None) -> dict[str, Interval]:
    """Interval of ``v^f - v^g`` of every aligned node (module docstring); keys are f's node ids,
    ``pg``/``gb`` the product graph and its bounds (f's nodes prefixed ``f/``, g's ``g/``), ``steps``
    the :func:`delta_steps` of the pair."""
    net, tags = pg.net, TAGS
    steps = delta_steps(pg, match) if steps is None else steps
    deltas: dict[str, Interval] = {"input": (np.zeros(net.n_inputs), np.zeros(net.n_inputs))}
    for fid, gid in match.items():
        if fid == "input":
            continue
        pf, pq = tags[0] + fid, tags[1] + gid
        node = net.node(pf)
        ins = [deltas[i.removeprefix(tags[0])] for i in node.inputs]
        hull = (add_lo(gb.lower[pf], -gb.upper[pq]), add_hi(gb.upper[pf], -gb.lower[pq]))
        d = _node_delta(pg, gb, pf, pq, ins, steps.get(pf))
        deltas[fid] = hull if d is None else (np.maximum(d[0], hull[0]), np.minimum(d[1], hull[1]))
    return deltas


def _node_delta(pg: PreparedGraph, gb: GraphBounds, pf: str, pq: str, ins: list[Interval],
                dstep: Optional[AffineStep]) -> Optional[Interval]:
    node = pg.net.node(pf)
    if pf in pg.steps:
        if dstep is None:
            return None
        sf = pg.steps[pf]
        src_g = pg.net.node(pq).inputs[0]
        a = interval_affine(AffineStep(sf.op, sf.abs_op, np.zeros_like(sf.bias)), *ins[0])
        b = interval_affine(dstep, gb.lower[src_g], gb.upper[src_g])
        return add_lo(a[0], b[0]), add_hi(a[1], b[1])
    if node.kind == "act":
        src_f, src_g = node.inputs[0], pg.net.node(pq).inputs[0]
        lo = np.minimum(gb.lower[src_f], gb.lower[src_g])
        hi = np.maximum(gb.upper[src_f], gb.upper[src_g])
        s_lo, s_hi = get_relaxation(node.activation).slopes(lo, hi, node.alpha)
        return delta_interval(s_lo, s_hi, ins[0][0], ins[0][1], (gb.lower[pf], gb.upper[pf]),
                              (gb.lower[pq], gb.upper[pq]))
    if node.kind == "add":
        return add_lo(ins[0][0], ins[1][0]), add_hi(ins[0][1], ins[1][1])
    if node.kind == "concat":
        return np.concatenate([i[0] for i in ins]), np.concatenate([i[1] for i in ins])
    windows = node.pool.windows
    pad = windows < 0
    idx = np.maximum(windows, 0)
    return (np.where(pad, np.inf, ins[0][0][idx]).min(axis=1), np.where(pad, -np.inf, ins[0][1][idx]).max(axis=1))
