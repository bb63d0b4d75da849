"""Coreset filter pruning of graph networks: residual Add, Concat, MaxPool (DESIGN.md §6, §10;
Mussay et al., arXiv 2008.08316, whose unit on CNNs is the filter).

Sampled nodes: the hidden conv/dense nodes ``c`` whose output channels, through activations and max
pools only, are read by conv/dense nodes only (never by an Add, a Concat, a normalisation or as the
output): there each channel ``t`` has its own outgoing weights ``v_t`` (every reader's filter slice
on ``t``), as in the chain version (:func:`lumpver.reductions.coreset.coreset_prune_filters`). Every
other node is kept as it is (a residual or concatenated channel has no outgoing weight of its own).

For a sampled node, in topological order on the graph as already pruned: ``p_t = [filter_t, b_t]``
(``b_t`` the root mean square of its bias over positions), sensitivity ``s_t = max |v_t| *
act(beta ||p_t||)`` (``act`` the activations between ``c`` and its readers, ``beta`` a bound on the
2-norm of c's input over X from the graph bound engine, 1 without a set); filters are drawn with
probabilities ``q_t = s_t / sum s`` until ``ceil(keep * channels)`` distinct ones are in
(:func:`lumpver.reductions.coreset.sample_layer`); a kept filter's outgoing slices are multiplied by
``count_t / (m q_t)``, an unsampled one is zeroed (filter, bias and outgoing slices) and then removed
with the graph machinery (:func:`lumpver.reductions.pruning_graph.remove_zeroed`). Weights are stored
in float32. The error is certified on X by the graph back-end, not by the sampling bound.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lumpver.bounds.graph_engine import prepare_graph, propagate_graph
from lumpver.bounds.region import region_box
from lumpver.certificates.exact_conv import channel_view, rebuild
from lumpver.certificates.graph_channels import channel_views, channels, lumped_input
from lumpver.ir.activations import get_activation
from lumpver.ir.graph import GraphNetwork
from lumpver.progress import SILENT, Progress
from lumpver.reductions.coreset import LayerCoreset, sample_filters
from lumpver.reductions.pruning_graph import graph_hidden_nodes, remove_zeroed


@dataclass
class GraphCoresetResult:
    """The pruned graph, what happened at each sampled node, and the hidden nodes kept as they are."""

    reduced: GraphNetwork
    rows: list[list[int]] = field(default_factory=list)  # removed channels per node (pruning_graph.GraphRemoval)
    layers: dict[str, LayerCoreset] = field(default_factory=dict)
    untouched: list[str] = field(default_factory=list)

    def to_json(self, net: GraphNetwork) -> list[dict]:
        return [{"node": net.node(n).source or n, **lc.to_json()} for n, lc in self.layers.items()]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def sampled_readers(net: GraphNetwork, nid: str) -> Optional[tuple[list[str], list[str]]]:
    """(activations on the way, conv/dense readers) of a hidden node whose channels reach only
    conv/dense readers through activations and max pools (module docstring); None otherwise."""
    acts, readers, todo = [], [], [nid]
    while todo:
        n = todo.pop()
        for s in net.graph.successors(n):
            kind = net.node(s).kind
            if s == net.output and kind != "affine" or kind not in ("act", "maxpool", "affine"):
                return None
            if kind == "affine":
                readers.append(s)
                continue
            acts += [s] if kind == "act" else []
            todo.append(s)
    return (acts, readers) if readers and nid != net.output else None


def input_norms(net: GraphNetwork, input_set) -> dict[str, float]:
    """Per node, a bound on the 2-norm of its value over the input set (CROWN on every region)."""
    pg = prepare_graph(net)
    out: dict[str, float] = {}
    for region in input_set.regions:
        gb = propagate_graph(pg, region_box(region))
        for n in net.order:
            v = float(np.linalg.norm(np.maximum(np.abs(gb.lower[n]), np.abs(gb.upper[n]))))
            out[n] = max(out.get(n, 0.0), v)
    return out


def _replaced(net: GraphNetwork, nid: str, w3: np.ndarray, bias: Optional[np.ndarray] = None) -> None:
    """Set the filters (channel view) and optionally the bias of affine node ``nid`` in place."""
    node = net.node(nid)
    view = channel_view(node.op, channels(net.node(node.inputs[0])) if lumped_input(net, nid) else None)
    op = rebuild(view, _f32(w3), lumped_input(net, nid))
    net.graph.nodes[nid]["node"] = dataclasses.replace(node, op=op, bias=_f32(node.bias if bias is None else bias))


def _sample_node(net: GraphNetwork, nid: str, acts: list[str], readers: list[str], keep: float, beta: float,
                 rng: np.random.Generator, delta: float) -> LayerCoreset:
    """Sample the filters of ``nid`` and rewrite it and its readers in place (module docstring)."""
    views = channel_views(net)
    w3, node = views[nid], net.node(nid)
    bias = node.bias.reshape(w3.shape[0], -1)
    p_norm = np.sqrt(np.sum(w3.reshape(w3.shape[0], -1) ** 2, axis=1) + np.mean(bias ** 2, axis=1))
    act = beta * p_norm
    for a in acts:
        act = get_activation(net.node(a).activation)(act, net.node(a).alpha)
    s = np.max([np.max(np.abs(views[r]), axis=(0, 2)) for r in readers], axis=0) * np.abs(act)
    lc, scale = sample_filters(s, keep, rng, delta)
    kept = lc.kept
    full = np.zeros(s.size)
    full[kept] = scale
    drop = np.setdiff1d(np.arange(s.size), kept)
    w_new, b_new = w3.copy(), bias.copy()
    w_new[drop], b_new[drop] = 0.0, 0.0
    _replaced(net, nid, w_new, b_new.reshape(-1))
    for r in dict.fromkeys(readers):
        _replaced(net, r, views[r] * full[None, :, None])
    return lc


def coreset_prune_graph(net: GraphNetwork, keep: float, norms: Optional[dict[str, float]] = None, seed: int = 0,
                        delta: float = 0.1, progress: Progress = SILENT) -> GraphCoresetResult:
    """Keep ``ceil(keep * channels)`` filters of every sampled node (module docstring); ``norms``
    from :func:`input_norms` (None: beta = 1)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError("the keep fraction must lie in (0, 1]")
    work = dataclasses.replace(net, graph=net.graph.copy())
    rng = np.random.default_rng(seed)
    res = GraphCoresetResult(work)
    for nid in graph_hidden_nodes(net):
        route = sampled_readers(net, nid)
        if route is None:
            res.untouched.append(nid)
            continue
        beta = 1.0 if norms is None else norms[net.node(nid).inputs[0]]
        res.layers[nid] = _sample_node(work, nid, *route, keep, beta, rng, delta)
        progress.say(f"coreset: node {net.node(nid).source or nid} keeps {res.layers[nid].kept.size} of "
                     f"{channels(net.node(nid))} filters")
    rem = remove_zeroed(work, progress)
    res.reduced, res.rows = rem.reduced, rem.rows
    return res
