"""Checker side of confident pruning of graph networks (residual Add, Concat, MaxPool; DESIGN.md §7,
§10): every candidate of the pruning family rebuilt from the original graph and the stated rule
alone. This module must not import :mod:`lumpver.reductions` (the reducer is not trusted).

* weight family: the ``floor(level * N)`` hidden weights of smallest ``|w|`` zeroed, ``N`` the
  entries of the stored filters/matrices of the hidden ``affine`` nodes (all but the output node),
  ranked by ``(|w|, position)`` with positions running through the nodes in topological order, each
  row-major; biases kept.
* channel family: per hidden node the ``max(1, ceil(round(keep * C, 9)))`` channels with the largest
  score ``sqrt(sum filter_t^2 + mean over positions of b_t^2)`` are kept (``keep = round(1 - level,
  12)``, ties by index); the others get a zero filter and a zero bias. The result ``z`` may then lose
  *dead* channels: the evidence names, per level, the channels dropped per node (``removed``, one list
  per node in topological order) and whether the readers' weights on structurally zero channels were
  zeroed first (``zero_reads``). Both are checked, never trusted: a channel is structurally zero when
  its filter and bias are exactly zero, or it is an activation with ``act(0) = 0``, a max pool, a sum
  or a concatenation of structurally zero channels (its value is exactly 0 for every finite input);
  zeroing a weight that multiplies such a channel changes nothing in real arithmetic, and
  :func:`~lumpver.certificates.graph_channels.removal_problem` (with these zero channels) proves the
  drops leave every kept channel's value unchanged. The rebuilt candidate is therefore ``z`` in real
  arithmetic; the chosen level's must equal the reduced file bit for bit.
"""
from __future__ import annotations

import math
from typing import Optional

import networkx as nx
import numpy as np

from lumpver.certificates.exact_conv import channel_view, rebuild
from lumpver.certificates.graph_channels import (channels, lumped_input, read_removed, removal_problem,
                                                 without_channels)
from lumpver.ir.activations import get_activation
from lumpver.ir.graph import GNode, GraphNetwork


def hidden_nodes(f: GraphNetwork) -> list[str]:
    """The affine nodes other than the output node, in topological order."""
    return [n for n in f.order if f.node(n).kind == "affine" and n != f.output]


def _with_filters(f: GraphNetwork, new: dict[str, tuple[np.ndarray, np.ndarray]]) -> GraphNetwork:
    """``f`` with the filters ``w3`` (same shape) and biases of the named affine nodes replaced."""
    g = nx.DiGraph()
    for n in f.order:
        node = f.node(n)
        if n in new:
            view = channel_view(node.op, None)
            w3, bias = new[n]
            node = GNode("affine", node.inputs, node.shape, op=rebuild(view, w3.reshape(view.w3.shape), False),
                         bias=bias, source=node.source, source_op=node.source_op)
        g.add_node(n, node=node)
        g.add_edges_from((s, n) for s in node.inputs)
    return GraphNetwork(g, f.output, f.input_name, f.output_name, list(f.input_shape), list(f.output_shape),
                        f.output_softmax)


def weight_pruned(f: GraphNetwork, level: float) -> GraphNetwork:
    """The weight family at ``level`` (module docstring)."""
    hidden = hidden_nodes(f)
    arrays = [channel_view(f.node(n).op, None).w3 for n in hidden]
    flat = np.concatenate([np.abs(w).reshape(-1) for w in arrays]) if arrays else np.zeros(0)
    n_zero = int(math.floor(round(level * flat.size, 9)))
    keep = np.ones(flat.size, dtype=bool)
    keep[np.lexsort((np.arange(flat.size), flat))[:n_zero]] = False  # by |w|, then by position
    parts = np.split(keep, np.cumsum([w.size for w in arrays])[:-1]) if arrays else []
    return _with_filters(f, {n: (np.where(m.reshape(w.shape), w, 0.0), f.node(n).bias.copy())
                             for n, w, m in zip(hidden, arrays, parts)})


def channel_zeroed(f: GraphNetwork, level: float) -> GraphNetwork:
    """The channel family at ``level`` before any removal: dropped channels zeroed (module docstring)."""
    keep, new = round(1.0 - level, 12), {}
    for n in hidden_nodes(f):
        node = f.node(n)
        w3 = channel_view(node.op, None).w3
        c = w3.shape[0]
        b = node.bias.reshape(c, -1)
        score = np.sqrt(np.sum(w3.reshape(c, -1) ** 2, axis=1) + np.mean(b ** 2, axis=1))
        n_keep = max(1, math.ceil(round(keep * c, 9)))
        order = sorted(range(c), key=lambda t: (-score[t], t))  # largest first, ties by index
        drop = np.array(sorted(order[n_keep:]), dtype=np.int64)
        w3, b = w3.copy(), b.copy()
        w3[drop], b[drop] = 0.0, 0.0
        new[n] = (w3, b.reshape(-1))
    return _with_filters(f, new)


def structural_zeros(f: GraphNetwork) -> dict[str, np.ndarray]:
    """Per node, the channels whose value is exactly 0 for every finite input (module docstring)."""
    out: dict[str, np.ndarray] = {}
    for n in f.order:
        node = f.node(n)
        ins = [out[i] for i in node.inputs]
        if node.kind == "affine":
            w3 = channel_view(node.op, None).w3
            b = node.bias.reshape(w3.shape[0], -1)
            z = np.all(w3.reshape(w3.shape[0], -1) == 0, axis=1) & np.all(b == 0, axis=1)
        elif node.kind == "act":
            z = ins[0] & bool(get_activation(node.activation)(np.zeros(1), node.alpha)[0] == 0)
        elif node.kind == "maxpool":
            z = ins[0].copy()
        elif node.kind == "add":
            z = ins[0] & ins[1]
        elif node.kind == "concat":
            z = np.concatenate(ins)
        else:  # input, normalisation
            z = np.zeros(channels(node), dtype=bool)
        out[n] = z
    return out


def zero_reads(f: GraphNetwork, zero: dict[str, np.ndarray]) -> GraphNetwork:
    """``f`` with every affine node's weights on structurally zero input channels set to 0."""
    new = {}
    for n in f.order:
        node = f.node(n)
        if node.kind == "affine" and lumped_input(f, n) and zero[node.inputs[0]].any():
            w3 = channel_view(node.op, channels(f.node(node.inputs[0]))).w3.copy()
            w3[:, zero[node.inputs[0]], :] = 0.0
            new[n] = (w3, node.bias.copy())
    return _with_filters(f, new) if new else f


def channel_candidate(f: GraphNetwork, level: float, removed: list, reads_zeroed: bool) -> GraphNetwork:
    """The channel family's model at ``level`` with the recorded drops; ValueError when the drops
    are not proved harmless (module docstring)."""
    z = channel_zeroed(f, level)
    zero = structural_zeros(z)
    if reads_zeroed:
        z = zero_reads(z, zero)
    drops = read_removed(z, removed)
    problem = removal_problem(z, drops, zero)
    if problem is not None:
        raise ValueError(f"the channels dropped at level {level} are not dead: {problem}")
    return without_channels(z, drops)


def rebuilt_candidate(f: GraphNetwork, level: float, family: str, structure: Optional[dict]) -> GraphNetwork:
    """The family's candidate at ``level`` (``structure``: the level's drops for the channel family)."""
    if family == "weight":
        return weight_pruned(f, level)
    if family != "channel":
        raise ValueError(f"unknown pruning family {family!r} for a graph network")
    if not isinstance(structure, dict):
        raise ValueError(f"no channel structure recorded for level {level}")
    return channel_candidate(f, level, structure.get("removed"), bool(structure.get("zero_reads")))
