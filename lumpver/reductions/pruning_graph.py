"""Magnitude pruning of graph networks: residual Add, Concat, MaxPool (DESIGN.md §5, §10).

The hidden layers are the ``affine`` (conv/dense) nodes other than the output node.

* Weight granularity: the rule of :mod:`lumpver.reductions.pruning` over their stored weights (ranked
  in topological order); shapes are kept.
* Channel granularity: per hidden node (``scope="layer"``) or over all of them (``"global"``), the
  channels with the smallest score ``||[filter_t, b_t]||_2`` (``b_t`` the root mean square of the
  channel's bias over its positions; a channel read through an Add or Concat has no single outgoing
  weight) are *pruned*: filter and bias set to 0 (:func:`prune_graph_channels`). Hidden nodes whose
  channels are linked through residual Adds (the stem and the last conv of every branch adding into
  it) form one unit ("layer"): a linked group of channels scores the 2-norm of its members' scores and
  is kept or pruned as a whole, so that pruned residual channels can go. A pruned channel is
  then identically 0 after a ReLU (:func:`zero_flags`), and :func:`remove_zeroed` drops it with the
  machinery of exact graph lumping (:func:`lumpver.reductions.exact_graph.choose_removals`,
  :func:`lumpver.certificates.graph_channels.without_channels`): channels are linked across
  activations, max pools, Adds and Concats, and a linked group goes only as a whole (a residual
  channel only where the stem and every branch adding into it are pruned, or read by nothing), never
  from the input, a normalisation or the output. The other pruned channels stay *zeroed*. The removal
  changes no value for any input (:func:`lumpver.certificates.graph_channels.removal_problem`, checked),
  so the smaller graph computes what the zeroed one computes in real arithmetic (float32 evaluation
  differs by rounding only: the summation order changes).

Certification on an input set (:func:`certify_removed`): the ``graph_diff`` bound of f against the
written graph with its removed channels restored as zeros
(:func:`lumpver.certificates.bounded_graph.restore_channels`, re-checked by ``lumpver check``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from lumpver.certificates.bounded_graph import restore_channels
from lumpver.certificates.graph_channels import channel_views, channels, lumped_input, removal_problem, \
    without_channels
from lumpver.errors import InputError
from lumpver.ir.activations import get_activation
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_import import load_graph
from lumpver.progress import SILENT, Progress
from lumpver.reductions.certify import certify_graph, sampled_error, write_bounded
from lumpver.reductions.channel_conv import stored_weight, with_stored_weight
from lumpver.reductions.exact_graph import _Links, choose_removals
from lumpver.reductions.pruning import keep_sets, masks_of
from lumpver.specs.inputset import InputSet


def graph_hidden_nodes(net: GraphNetwork) -> list[str]:
    """The hidden layers of a graph network: its ``affine`` nodes other than the output node."""
    return [n for n in net.order if net.node(n).kind == "affine" and n != net.output]


def graph_with(net: GraphNetwork, weights: dict[str, np.ndarray], biases: dict[str, np.ndarray]) -> GraphNetwork:
    """A copy of ``net`` with the stored weights (and biases) of the named affine nodes replaced."""
    graph = net.graph.copy()
    for nid, w in weights.items():
        node = net.node(nid)
        graph.nodes[nid]["node"] = dataclasses.replace(node, op=with_stored_weight(node.op, w),
                                                       bias=biases.get(nid, node.bias).copy())
    return dataclasses.replace(net, graph=graph)


def prune_graph_weights(net: GraphNetwork, fraction: float, scope: str = "global") -> GraphNetwork:
    """``net`` with ``fraction`` of its hidden weights zeroed by smallest ``|w|`` (ties by position)."""
    hidden = graph_hidden_nodes(net)
    arrays = [stored_weight(net.node(n).op) for n in hidden]
    masks = masks_of(arrays, fraction, scope)
    return graph_with(net, {n: np.where(m, w, 0.0) for n, w, m in zip(hidden, arrays, masks)}, {})


def graph_channel_scores(net: GraphNetwork) -> list[np.ndarray]:
    """Per hidden node, each output channel's ``||[filter_t, b_t]||_2`` (module docstring)."""
    out = []
    for nid in graph_hidden_nodes(net):
        w = stored_weight(net.node(nid).op)
        b = net.node(nid).bias.reshape(w.shape[0], -1)
        out.append(np.sqrt(np.sum(w.reshape(w.shape[0], -1) ** 2, axis=1) + np.mean(b ** 2, axis=1)))
    return out


def zero_channels_of(net: GraphNetwork, drop: dict[str, np.ndarray]) -> GraphNetwork:
    """``net`` with the filters and biases of channels ``drop[n]`` of affine nodes ``n`` set to 0."""
    weights, biases = {}, {}
    for nid, idx in drop.items():
        w, b = stored_weight(net.node(nid).op).copy(), net.node(nid).bias.reshape(-1).copy()
        w[idx] = 0.0
        b.reshape(w.shape[0], -1)[idx] = 0.0
        weights[nid], biases[nid] = w, b
    return graph_with(net, weights, biases)


@dataclass
class _Unit:
    """Hidden nodes whose channels are linked (through a residual Add), ranked together: ``members[k]``
    lists the (node, channel) pairs of linked group ``k``."""

    nodes: list[str]
    members: list[list[tuple[str, int]]]


def _units(net: GraphNetwork, hidden: list[str]) -> list[_Unit]:
    """The hidden nodes grouped by channel links (module docstring); a node alone where nothing links it."""
    links = _Links.of(net)
    groups: dict[int, list[tuple[str, int]]] = {}
    for n in hidden:
        for t in range(channels(net.node(n))):
            groups.setdefault(int(links.group[links.offset[n] + t]), []).append((n, t))
    linked = nx.Graph()
    linked.add_nodes_from(hidden)
    linked.add_edges_from((members[0][0], n) for members in groups.values() for n, _ in members[1:])
    unit_of = {n: k for k, comp in enumerate(nx.connected_components(linked)) for n in comp}
    units = [_Unit([], []) for _ in set(unit_of.values())]
    for n in hidden:
        units[unit_of[n]].nodes.append(n)
    for members in groups.values():
        units[unit_of[members[0][0]]].members.append(members)
    return units


def prune_graph_channels(net: GraphNetwork, keep: float, scope: str = "layer") -> tuple[GraphNetwork, list[np.ndarray]]:
    """``net`` with all but the ``keep`` fraction of channels (largest scores) zeroed, and the kept sets
    per hidden node; channels linked through residual Adds are ranked and pruned together (module doc)."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError("the keep fraction must lie in [0, 1]")
    hidden = graph_hidden_nodes(net)
    score = dict(zip(hidden, graph_channel_scores(net)))
    units = _units(net, hidden)
    unit_scores = [np.array([math.sqrt(sum(float(score[n][t]) ** 2 for n, t in g)) for g in u.members]) for u in units]
    chosen = {n: [] for n in hidden}
    for u, idx in zip(units, keep_sets(unit_scores, keep, scope)):
        for n, t in (m for k in idx for m in u.members[k]):
            chosen[n].append(t)
    kept = [np.array(sorted(chosen[n]), dtype=np.int64) for n in hidden]
    drop = {nid: np.setdiff1d(np.arange(channels(net.node(nid))), idx) for nid, idx in zip(hidden, kept)}
    return zero_channels_of(net, drop), kept


def zero_flags(net: GraphNetwork) -> dict[str, np.ndarray]:
    """Per node, per channel: whether the value is 0 at every position for *every* input, read off
    the weights: an affine channel whose bias is 0 and whose filter is 0 on every input channel not
    itself identically 0; an activation of such a channel when ``act(0) = 0``; a max pool of one; an
    Add of two; a Concat of its parts' flags. The input and a normalisation are never 0."""
    views = channel_views(net)
    zero: dict[str, np.ndarray] = {}
    for n in net.order:
        node = net.node(n)
        if node.kind in ("input", "scale"):
            z = np.zeros(channels(node), dtype=bool)
        elif node.kind == "affine":
            w3 = views[n]
            live = ~zero[node.inputs[0]] if lumped_input(net, n) else np.ones(w3.shape[1], dtype=bool)
            b = node.bias.reshape(w3.shape[0], -1)
            z = ~np.any(w3[:, live, :] != 0, axis=(1, 2)) & ~np.any(b != 0, axis=1)
        elif node.kind == "act":
            z = zero[node.inputs[0]] & (float(get_activation(node.activation)(np.zeros(1), node.alpha)[0]) == 0.0)
        elif node.kind == "maxpool":
            z = zero[node.inputs[0]].copy()
        elif node.kind == "add":
            z = zero[node.inputs[0]] & zero[node.inputs[1]]
        else:  # concat
            z = np.concatenate([zero[i] for i in node.inputs])
        zero[n] = z
    return zero


@dataclass
class GraphRemoval:
    """Outcome of :func:`remove_zeroed`: the smaller graph and the dropped channels per node."""

    reduced: GraphNetwork
    removed: dict[str, np.ndarray]
    rows: list[list[int]]  # the removed channels per node, topological order (the certificate's ``restored``)

    def count(self, nodes: list[str]) -> int:
        return sum(int(self.removed[n].size) for n in nodes)


def remove_zeroed(net: GraphNetwork, progress: Progress = SILENT) -> GraphRemoval:
    """``net`` without its identically-zero and dead channels, wherever the whole linked group can go
    (module docstring); the removal is checked by the checker's rule before it is returned."""
    try:
        zero = zero_flags(net)
        removed = choose_removals(net, zero, progress)
    except InputError as e:  # a grouped conv or a channel-mixing step: nothing removable there
        progress.say(f"zeroed channels kept (no channel structure to remove them): {e}")
        return GraphRemoval(net, {n: np.zeros(0, dtype=np.int64) for n in net.order}, [[] for _ in net.order])
    problem = removal_problem(net, removed, zero)
    if problem is not None:  # the selection and the rule disagree: a bug, never a smaller model
        raise AssertionError(f"graph channel removal is not valid: {problem}")
    return GraphRemoval(without_channels(net, removed), removed, [removed[n].tolist() for n in net.order])


@dataclass
class GraphPruneResult:
    """Magnitude pruning of a graph: the zeroed graph, the written (smaller) one, and the counts."""

    zeroed: GraphNetwork
    reduced: GraphNetwork
    rows: list[list[int]]  # removed channels per node (:class:`GraphRemoval`)
    pruned: int  # channels of hidden nodes pruned (zeroed by the rule)
    removed: int  # of those, removed from the graph
    extra: int  # other node channels removed (dead or identically 0 in the original)

    def summary(self) -> str:
        return (f"{self.pruned} hidden channel(s) pruned: {self.removed} removed, {self.pruned - self.removed} only "
                f"zeroed (a channel linked through a residual Add or a Concat goes only with its whole group)"
                + (f"; {self.extra} other dead channel(s) removed" if self.extra else ""))


def magnitude_prune_graph(net: GraphNetwork, keep: float, granularity: str = "weight", scope: str = "global",
                          progress: Progress = SILENT) -> GraphPruneResult:
    """Magnitude pruning of a graph network (module docstring): ``weight`` (zeroed in place) or
    ``channel`` (zeroed, then removed where the linked group allows)."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError("the keep fraction must lie in [0, 1]")
    if granularity == "weight":
        g = prune_graph_weights(net, round(1.0 - keep, 12), scope)
        return GraphPruneResult(g, g, [[] for _ in g.order], 0, 0, 0)
    if granularity != "channel":
        raise InputError(f"{granularity} pruning of a graph network: use --granularity weight or channel")
    zeroed, kept = prune_graph_channels(net, keep, scope)
    hidden = graph_hidden_nodes(net)
    rem = remove_zeroed(zeroed, progress)
    pruned = {n: np.setdiff1d(np.arange(channels(net.node(n))), k) for n, k in zip(hidden, kept)}
    n_removed = sum(int(np.intersect1d(pruned[n], rem.removed[n]).size) for n in hidden)
    extra = sum(int(np.setdiff1d(rem.removed[n], pruned[n]).size) for n in hidden)
    return GraphPruneResult(zeroed, rem.reduced, rem.rows, sum(p.size for p in pruned.values()), n_removed, extra)


def certify_removed(model_path: Path, out_path: Path, cert_path: Path, input_set: InputSet, rows: list[list[int]],
                    method: dict[str, Any], seconds: float, timeout: float, progress: Progress = SILENT) -> dict:
    """Certify the written pruned graph against the original on X and write the ``bounded``
    certificate: the ``graph_diff`` bound of f and g with its removed channels restored as zeros
    (:func:`lumpver.certificates.bounded_graph.restore_channels`; f's shapes, so node-wise deltas
    apply), recorded as ``restored`` for the checker."""
    f, g = load_graph(model_path), load_graph(out_path)
    full, _ = restore_channels(g, rows)
    res = certify_graph(f, full, input_set, "linf", timeout)
    res.evidence["restored"] = rows
    sampled = sampled_error(model_path, out_path, input_set, "linf")
    progress.say(f"certified linf error <= {res.epsilon:.6g} on the input set (sampled maximum {sampled:.6g})")
    return write_bounded(model_path, out_path, cert_path, f, g, input_set, res, method, seconds, sampled)
