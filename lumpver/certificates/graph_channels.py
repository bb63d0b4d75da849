"""Channels of graph networks, and dropping them (DESIGN.md §3, §10): helpers shared by the graph
checkers (:mod:`lumpver.certificates.exact_graph`, :mod:`lumpver.certificates.onset_graph`) and,
through them, the graph reducers.

:func:`removal_problem` states when dropping channels ``R_n`` of every node ``n`` leaves every kept
channel's value unchanged on a set X (``zero`` says which channels are proved 0 on X; all False for
"on every input"):

* an element-wise node (activation, max pool, Add) drops exactly what each of its inputs drops,
  and a Concat the union of its parts' drops (so a residual sum loses a channel only where both
  branches do); the input, a normalisation (``scale``) node and the output drop nothing, a node
  read by a ``scale`` node neither, and every node keeps at least one channel;
* wherever an affine (conv/dense) node ``c`` reads a dropped channel ``t`` of ``n``, either
  ``h_n[t] = 0`` on X (``zero``) or the filters of c's kept output channels on ``t`` are all exactly
  zero (a dead channel, read by nothing after the removal).

By induction over the topological order every kept channel then computes f's value (the dropped
terms are ``0 * w`` or ``w * 0``, exactly). :func:`without_channels` builds f without the channels
(filters and biases of the kept ones copied bit for bit) and :func:`same_graph` compares it with a
reduced file. This module must not import :mod:`lumpver.reductions`.
"""
from __future__ import annotations

from typing import Optional

import networkx as nx
import numpy as np

from lumpver.certificates.exact_conv import channel_view, describe, rebuild
from lumpver.errors import InputError
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.onnx_export import out_shape
from lumpver.ir.pooling import MaxPool

ELEMENTWISE = ("act", "maxpool", "add")


def channels(node: GNode) -> int:
    """Channels of a node's value: the first axis of a (C, ...) shape, else one per feature."""
    return int(node.shape[0]) if len(node.shape) >= 2 else node.size


def lumped_input(net: GraphNetwork, nid: str) -> bool:
    """Whether an affine node reads a lumped value (not the raw or normalised input)."""
    return net.node(net.node(nid).inputs[0]).kind not in ("input", "scale")


def resized_node(node: GNode, k: int) -> GNode:
    """A non-affine node (act, add, concat, maxpool) of ``node``'s kind on ``k`` channels."""
    if node.kind == "maxpool":
        mp = node.pool
        pool = MaxPool((k, *mp.in_shape[1:]), mp.kernel, mp.strides, mp.pads)
        return GNode("maxpool", node.inputs, pool.out_shape, pool=pool, source=node.source)
    shape = (k, *node.shape[1:]) if len(node.shape) >= 2 else (k,)
    return GNode(node.kind, node.inputs, shape, activation=node.activation, alpha=node.alpha, source=node.source)


def same_node(a: GNode, b: GNode, ia: list, ib: list) -> Optional[str]:
    """What differs between f's node ``a`` and g's node ``b`` besides channel counts and weights
    (``ia``, ``ib``: their inputs' positions in topological order), or None."""
    if a.kind != b.kind or ia != ib:
        return f"kind or inputs differ ({a.kind} vs {b.kind})"
    if a.kind == "scale" and (len(a.steps) != len(b.steps) or any(
            x.op != y.op or not np.array_equal(x.constant, y.constant) for x, y in zip(a.steps, b.steps))):
        return "input normalisation differs"
    if a.kind == "act" and (a.activation != b.activation or a.alpha != b.alpha):
        return "activation differs"
    if a.kind == "maxpool" and (a.pool.kernel, a.pool.strides, a.pool.pads, a.pool.in_shape[1:]) != (
            b.pool.kernel, b.pool.strides, b.pool.pads, b.pool.in_shape[1:]):
        return "max pool geometry differs"
    if a.kind == "affine" and describe(a.op) != describe(b.op):
        return "operator geometry differs"
    return None


def channel_views(f: GraphNetwork) -> dict[str, np.ndarray]:
    """Filters ``w3[out channel, in channel, k]`` of every affine node; InputError naming the node
    when its operator has no channel structure (grouped conv, a step mixing channels)."""
    out = {}
    for n in f.order:
        node = f.node(n)
        if node.kind == "affine":
            try:
                out[n] = channel_view(node.op, channels(f.node(node.inputs[0])) if lumped_input(f, n) else None).w3
            except InputError as e:
                raise InputError(str(e), None, node.source or n) from None
    return out


def _kept(n: int, removed: np.ndarray) -> np.ndarray:
    return np.setdiff1d(np.arange(n), removed)


def without_channels(f: GraphNetwork, removed: dict[str, np.ndarray]) -> GraphNetwork:
    """f without the channels ``removed[n]`` of each node (module docstring); filters and biases of
    the kept channels are copied bit for bit, nodes without any change are shared."""
    g = nx.DiGraph()
    for n in f.order:
        node, r = f.node(n), removed[n]
        src = node.inputs[0] if node.inputs else None
        if node.kind in ("input", "scale") or not (r.size or (src is not None and removed[src].size)):
            new = node
        elif node.kind == "affine":
            lumped = lumped_input(f, n)
            view = channel_view(node.op, channels(f.node(src)) if lumped else None)
            keep = _kept(view.out_channels, r)
            cols = _kept(view.in_channels, removed[src]) if lumped else np.arange(view.in_channels)
            op = rebuild(view, view.w3[np.ix_(keep, cols)], lumped)
            new = GNode("affine", node.inputs, out_shape(op), op=op, source=node.source, source_op=node.source_op,
                        bias=node.bias.reshape(view.out_channels, -1)[keep].reshape(-1))
        else:
            new = resized_node(node, channels(node) - r.size)
        g.add_node(n, node=new)
        g.add_edges_from((s, n) for s in node.inputs)
    return GraphNetwork(g, f.output, f.input_name, f.output_name, list(f.input_shape), list(f.output_shape),
                        f.output_softmax)


def _node_problem(f: GraphNetwork, n: str, removed: dict[str, np.ndarray]) -> Optional[str]:
    """What is wrong with the drops of node ``n`` given its inputs' drops (structure only)."""
    node, r = f.node(n), removed[n]
    ch = channels(node)
    if r.size and (r.min() < 0 or r.max() >= ch or np.unique(r).size != r.size):
        return f"removed channel indices invalid for {ch} channels"
    if r.size >= ch:
        return "every channel removed (g keeps at least one per node)"
    if r.size and (node.kind in ("input", "scale") or n == f.output
                   or any(f.node(s).kind == "scale" for s in f.graph.successors(n))):
        return "the input, a normalisation, the output and what a normalisation reads keep every channel"
    if node.kind in ELEMENTWISE and any(not np.array_equal(np.sort(removed[i]), np.sort(r)) for i in node.inputs):
        return f"a {node.kind} node must drop exactly the channels its input(s) drop"
    if node.kind == "concat":
        offs = np.cumsum([0] + [channels(f.node(i)) for i in node.inputs])
        want = np.concatenate([removed[i] + o for i, o in zip(node.inputs, offs)])
        if not np.array_equal(np.sort(want), np.sort(r)):
            return "a Concat must drop exactly the channels its parts drop"
    return None


def _read_problem(f: GraphNetwork, n: str, removed: dict[str, np.ndarray], zero: dict[str, np.ndarray],
                  views: dict[str, np.ndarray]) -> Optional[str]:
    """A dropped channel of ``n`` that an affine reader still needs (neither 0 on X nor unread)."""
    r = removed[n]
    for c in f.graph.successors(n):
        if f.node(c).kind != "affine" or not r.size:
            continue
        w3 = views[c][_kept(views[c].shape[0], removed[c])]
        read = np.any(w3[:, r, :] != 0, axis=(0, 2))
        bad = r[read & ~zero[n][r]]
        if bad.size:
            return f"channel {int(bad[0])} is read by node {c} and not proved 0 on X"
    return None


def removal_problem(f: GraphNetwork, removed: dict[str, np.ndarray], zero: dict[str, np.ndarray]) -> Optional[str]:
    """None when dropping ``removed`` leaves every kept channel of f unchanged on X (module docstring);
    ``zero`` from :func:`zero_channels`. Otherwise the first problem, naming the node."""
    views = channel_views(f)
    for k, n in enumerate(f.order):
        problem = _node_problem(f, n, removed) or _read_problem(f, n, removed, zero, views)
        if problem is not None:
            return f"node {k} ({f.node(n).source or n}): {problem}"
    return None


def same_graph(h: GraphNetwork, g: GraphNetwork) -> Optional[str]:
    """None when g is h node for node (topological order): kinds, inputs, shapes, geometry, and
    bit-equal filters and biases."""
    if len(h.order) != len(g.order):
        return f"the reduced graph has {len(g.order)} nodes, the rebuilt one {len(h.order)}"
    hi, gi = {n: k for k, n in enumerate(h.order)}, {n: k for k, n in enumerate(g.order)}
    for k, (nh, ng) in enumerate(zip(h.order, g.order)):
        a, b = h.node(nh), g.node(ng)
        problem = same_node(a, b, [hi[i] for i in a.inputs], [gi[i] for i in b.inputs])
        if problem is None and a.size != b.size:
            problem = f"{b.size} features, expected {a.size}"
        if problem is None and a.kind == "affine" and not (
                np.array_equal(channel_view(a.op, None).w3, channel_view(b.op, None).w3)
                and np.array_equal(a.bias, b.bias)):
            problem = "filters or biases differ from the original's kept ones"
        if problem is not None:
            return f"node {k} ({a.source or nh}): {problem}"
    return None


def read_removed(f: GraphNetwork, rows: list) -> dict[str, np.ndarray]:
    """Claimed drops (one list of channels per node of f, in topological order) keyed by f's node
    ids; ValueError when the list does not match f."""
    if not isinstance(rows, list) or len(rows) != len(f.order):
        raise ValueError(f"the claim lists drops for {len(rows)} nodes, the original graph has {len(f.order)}")
    return {n: np.asarray(r, dtype=np.int64).reshape(-1) for n, r in zip(f.order, rows)}


def interface_problem(f: GraphNetwork, g: GraphNetwork) -> Optional[str]:
    """None when g has f's input and output names and shapes (and final softmax)."""
    if (f.input_name, f.output_name, list(f.input_shape), list(f.output_shape), f.output_softmax) != (
            g.input_name, g.output_name, list(g.input_shape), list(g.output_shape), g.output_softmax):
        return "the reduced model's inputs or outputs differ from the original's"
    return None


