"""Bounds on ``f(x) - g(x)`` for two graph networks over one raw-input box (DESIGN.md §5, §10).

The *product graph* of f and g is one :class:`~lumpver.ir.graph.GraphNetwork`: both operator graphs
(node ids prefixed ``f/`` and ``g/``) read the one shared ``input`` node, a ``concat`` node ``pair``
stacks their outputs ``(y^f, y^g)``, and an ``affine`` node ``diff`` with the matrix ``[I, -I]``
(exact in floating point) gives ``y^f - y^g``. :func:`lumpver.bounds.graph_engine.propagate_graph`
then bounds every node of both graphs (CROWN through conv, MaxPool, Add and Concat, outward rounding
of :mod:`lumpver.bounds.rounding`), and back-substituting the output rows ``±e_i`` of ``diff`` through
``pair`` into both graphs sums their coefficients at the shared input, so the input terms cancel
(the symbolic difference of DESIGN.md §5, the graph form of :mod:`lumpver.bounds.diff`). The output
bounds are intersected with the interval difference of the two graphs' own output bounds and, when
g has f's structure (a quantised or weight-pruned copy), with the node-wise delta intervals of
:mod:`lumpver.bounds.graph_delta` (tight for small changes, where the symbolic bound carries the
relaxation slack of both networks).

``top1``: the argmax of both networks is provably the same output ``j`` on a box when every row
``y_k - y_j`` (``k != j``) of f and of g has a negative sound upper bound, back-substituted from
``pair``. Models ending in Softmax are bounded on their logits (the caller translates, as on chains).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import networkx as nx
import numpy as np

from lumpver.bounds.diff import DiffBounds
from lumpver.bounds.engine import AffineStep
from lumpver.bounds.graph_delta import aligned_nodes, delta_steps, node_deltas
from lumpver.bounds.graph_engine import PreparedGraph, back_substitute_graph, prepare_graph, propagate_graph
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.network import Network
from lumpver.ir.operators import DenseOperator
from lumpver.specs.inputset import Box

PAIR, DIFF = "pair", "diff"


def as_graph(net: Union[Network, GraphNetwork]) -> GraphNetwork:
    """``net`` as a graph network (a chain through :meth:`GraphNetwork.from_chain`)."""
    return net if isinstance(net, GraphNetwork) else GraphNetwork.from_chain(net)


def product_graph(f: Union[Network, GraphNetwork], g: Union[Network, GraphNetwork]) -> GraphNetwork:
    """The product graph of f and g on their logits (module docstring); ValueError when the
    interfaces differ."""
    f, g = as_graph(f), as_graph(g)
    if (f.n_inputs, f.n_outputs) != (g.n_inputs, g.n_outputs):
        raise ValueError(f"networks differ in interface: {f.n_inputs}->{f.n_outputs} vs {g.n_inputs}->{g.n_outputs}")
    graph = nx.DiGraph()
    graph.add_node("input", node=f.node("input"))
    for tag, net in (("f", f), ("g", g)):
        for nid in net.order[1:]:
            node = net.node(nid)
            ins = tuple(_renamed(tag, i) for i in node.inputs)
            graph.add_node(_renamed(tag, nid), node=dataclasses.replace(node, inputs=ins))
            graph.add_edges_from((i, _renamed(tag, nid)) for i in ins)
    m = f.n_outputs
    outs = (_renamed("f", f.output), _renamed("g", g.output))
    graph.add_node(PAIR, node=GNode("concat", outs, (2 * m,), source="product graph"))
    graph.add_edges_from((o, PAIR) for o in outs)
    diff = DenseOperator(np.hstack([np.eye(m), -np.eye(m)]))
    graph.add_node(DIFF, node=GNode("affine", (PAIR,), (m,), op=diff, bias=np.zeros(m), source="f - g"))
    graph.add_edge(PAIR, DIFF)
    return GraphNetwork(graph, DIFF, f.input_name, f.output_name, list(f.input_shape), [1, m], False)


def _renamed(tag: str, nid: str) -> str:
    return nid if nid == "input" else f"{tag}/{nid}"


@dataclass
class GraphPair:
    """The prepared product graph of f and g (operators' ``|op|`` computed once for every box)."""

    pg: PreparedGraph
    n_outputs: int
    match: Optional[dict[str, str]] = None  # f's node ids -> g's when the structures agree
    f_output: str = ""
    steps: Optional[dict[str, Optional[AffineStep]]] = None  # delta steps of the aligned linear nodes

    @property
    def net(self) -> GraphNetwork:
        return self.pg.net


def prepare_graph_pair(f: Union[Network, GraphNetwork], g: Union[Network, GraphNetwork]) -> GraphPair:
    """The :class:`GraphPair` of f and g (ValueError for an activation without a relaxation)."""
    f, g = as_graph(f), as_graph(g)
    pg = prepare_graph(product_graph(f, g))
    match = aligned_nodes(f, g)
    return GraphPair(pg, pg.net.n_outputs, match, f.output, None if match is None else delta_steps(pg, match))


def graph_difference_bounds(gp: GraphPair, box: Box, deadline: Optional[float] = None) -> DiffBounds:
    """Sound per-output bounds of ``f - g`` on the raw ``box`` and each input's split influence
    (``|coefficient| x width`` summed over the rows); intermediate nodes keep interval bounds after
    ``deadline`` (``time.monotonic()``; still sound)."""
    gb = propagate_graph(gp.pg, box, deadline=deadline)
    m = gp.n_outputs
    lin = back_substitute_graph(gp.pg, gb.relax, np.vstack([np.eye(m), -np.eye(m)]), DIFF)
    up = lin.upper(box)
    lower, upper = np.maximum(gb.output_lower, -up[m:]), np.minimum(gb.output_upper, up[:m])
    if gp.match is not None:
        d_lo, d_hi = node_deltas(gp.pg, gb, gp.match, gp.steps)[gp.f_output]
        lower, upper = np.maximum(lower, d_lo), np.minimum(upper, d_hi)
    influence = np.abs(lin.A).sum(axis=0) * (box.upper - box.lower)
    return DiffBounds(lower, np.maximum(upper, lower), influence)


def same_argmax_on_box(gp: GraphPair, box: Box, j: int, deadline: Optional[float] = None) -> bool:
    """Whether ``argmax f = argmax g = j`` (unique) on the whole box, soundly (module docstring)."""
    m = gp.n_outputs
    if m == 1:
        return True
    rows = np.delete(np.eye(m), j, axis=0)
    rows[:, j] = -1.0
    zero = np.zeros_like(rows)
    lam = np.vstack([np.hstack([rows, zero]), np.hstack([zero, rows])])
    gb = propagate_graph(gp.pg, box, deadline=deadline)
    return bool(np.all(back_substitute_graph(gp.pg, gb.relax, lam, PAIR).upper(box) < 0))
