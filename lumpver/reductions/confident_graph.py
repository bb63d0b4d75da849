"""Confident pruning of graph networks (residual Add, Concat, MaxPool; DESIGN.md §7, §10): the
candidate family and how each candidate is described to the checker.

The family at ``level`` zeroes all but ``1 - level`` of each hidden node's channels, ranked per node
(the channel family, for CNNs; the stated rule is :data:`GRAPH_CHANNEL_RULE`), then removes the zeroed
channels whose whole linked group goes (:func:`~lumpver.reductions.pruning_graph.remove_zeroed`), or
:func:`~lumpver.reductions.pruning_graph.prune_graph_weights` zeroes ``level`` of the hidden weights (the
weight family); both are functions of the network and the level only, never of the calibration data. For
the checker (:mod:`lumpver.certificates.statistical_graph`) each channel candidate is described as
the rule's zeroed graph ``z`` without some dead channels: the drops per node and whether the readers'
weights on zero channels were zeroed; the description is confirmed here by rebuilding the candidate
and comparing it bit for bit, and the checker confirms it again from the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lumpver.certificates.graph_channels import channels, removal_problem, same_graph, without_channels
from lumpver.certificates.statistical_graph import channel_zeroed, hidden_nodes, structural_zeros, zero_reads
from lumpver.ir.graph import GraphNetwork
from lumpver.reductions.exact_graph import choose_removals
from lumpver.reductions.pruning import sparsity
from lumpver.reductions.pruning_graph import prune_graph_weights, remove_zeroed

GRAPH_WEIGHT_RULE = {
    "method": "global magnitude pruning of a graph network",
    "granularity": "weight",
    "scope": "global",
    "pruned": "stored weights of the hidden affine nodes (all but the output node); biases kept",
    "count": "floor(level * N) of the N hidden weights, smallest |w| first",
    "ties": "by position (hidden nodes in topological order, each row-major)",
}
GRAPH_CHANNEL_RULE = {
    "method": "magnitude channel pruning of a graph network",
    "granularity": "channel",
    "scope": "layer",
    "pruned": "output channels of every hidden affine node (filter and bias zeroed; dead channels may then be "
              "removed, as each level's 'structures' entry states); the output node keeps its outputs",
    "score": "sqrt(sum filter_t^2 + mean over positions of b_t^2), in float64 as written",
    "count": "max(1, ceil(round(round(1 - level, 12) * C, 9))) of the C channels kept per hidden node, "
             "largest scores first",
    "ties": "by index",
}


@dataclass
class GraphCandidate:
    """One level's model and, for the channel family, its description for the checker."""

    model: GraphNetwork
    structure: Optional[dict]
    pruned_fraction: float  # hidden weights zeroed (weight family) or hidden channels pruned (channel family)


def _described(net: GraphNetwork, level: float, g: GraphNetwork) -> dict:
    """``g`` as the rule's zeroed graph without dead channels (module docstring); RuntimeError if no
    description reproduces it bit for bit."""
    z = channel_zeroed(net, level)
    zero = structural_zeros(z)
    kept_all = [channels(z.node(n)) for n in z.order] == [channels(g.node(n)) for n in g.order]
    none = {n: np.zeros(channels(z.node(n)), dtype=bool) for n in z.order}
    for reads in (False, True):
        zz = zero_reads(z, zero) if reads else z
        tries = ([lambda: {n: np.zeros(0, dtype=np.int64) for n in z.order}] if kept_all else
                 [lambda: choose_removals(zz, zero), lambda: choose_removals(zz, none)])
        for attempt in tries:
            drops = attempt()
            if removal_problem(zz, drops, zero) is None and same_graph(without_channels(zz, drops), g) is None:
                return {"removed": [drops[n].tolist() for n in z.order], "zero_reads": reads}
    raise RuntimeError(f"confident pruning: the channel-pruned graph at level {level} is not the stated rule's "
                       "zeroed graph without dead channels")


def _channel_fraction(net: GraphNetwork, g: GraphNetwork) -> float:
    """Hidden channels pruned (removed, or left with a zero filter and bias) over all hidden channels."""
    zero = structural_zeros(g)
    total = sum(channels(net.node(n)) for n in hidden_nodes(net))
    left = sum(int(np.count_nonzero(~zero[n])) for n in hidden_nodes(g))
    return 1.0 - left / max(1, total)


def graph_candidate(net: GraphNetwork, level: float, family: str) -> GraphCandidate:
    """The family's model at ``level`` (module docstring)."""
    if family == "weight":
        g = prune_graph_weights(net, level)
        return GraphCandidate(g, None, sparsity(g))
    # the stated per-node rule (GRAPH_CHANNEL_RULE), not magnitude pruning's joint ranking of channels
    # linked by residual Adds, then every zeroed channel whose whole linked group goes is removed
    g = remove_zeroed(channel_zeroed(net, level)).reduced
    return GraphCandidate(g, _described(net, level, g), _channel_fraction(net, g))
