"""Re-check of ``graph_diff`` evidence in ``bounded`` certificates (DESIGN.md §5, §9, §10).

The certified quantity is ``sup_{x in X} ||f(x) - g(x)||`` for two graph networks (residual Add,
Concat, MaxPool; a chain file is read as a graph) in real arithmetic of the stored float32 weights.
The bound is recomputed from the two files and X alone: the product-graph branch and bound of the
``graph_diff`` back-end (:func:`lumpver.verifiers.graph_diff.graph_difference_search`, built on
:mod:`lumpver.bounds.graph_diff`; a back-end, not the reducer) re-runs region by region with the
recorded box cap and threshold, without a clock, so it repeats the reducer's partition (or refines it
further where the reducer's intermediate bounds were cut by its deadline).

When g is a pruned copy of f with channels *removed* (:mod:`lumpver.reductions.pruning_graph`), the
evidence may carry ``restored``: per node of g (topological order) the channel positions g lacks.
:func:`restore_channels` rebuilds g with those channels put back as zero filters, zero biases and
zero reader weights (so g's shapes are f's and the node-wise deltas of
:mod:`lumpver.bounds.graph_delta` apply); the checker accepts it only when dropping the positions
again is a valid removal (:func:`lumpver.certificates.graph_channels.removal_problem`: every restored
channel is read by nothing) and gives g's file node for node (``same_graph``), so the restored graph
computes g's outputs for every input and its bound is g's.
"""
from __future__ import annotations

from typing import Optional

import networkx as nx
import numpy as np

from lumpver.certificates.exact_conv import channel_view, rebuild
from lumpver.certificates.format import CheckReport
from lumpver.certificates.graph_channels import (channels, lumped_input, read_removed, removal_problem, resized_node,
                                                same_graph, without_channels)
from lumpver.errors import InputError
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.onnx_export import out_shape
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.graph_diff import graph_difference_search

_MALFORMED = (KeyError, ValueError, TypeError, IndexError, AttributeError, InputError)
#: seconds the re-run may take per region (a safety limit; the box cap ends it)
RECHECK_SECONDS = 3600.0


def _full(kept_count: int, removed: np.ndarray) -> np.ndarray:
    """Positions of the kept channels among ``kept_count + len(removed)``."""
    return np.setdiff1d(np.arange(kept_count + removed.size), removed)


def restore_channels(g: GraphNetwork, rows: list) -> tuple[GraphNetwork, dict[str, np.ndarray]]:
    """g with the channels ``rows`` (per node of g, topological order) put back as zeros (module
    docstring), and the rows keyed by node id; ValueError when they do not fit g."""
    removed = read_removed(g, rows)
    graph = nx.DiGraph()
    for n in g.order:
        node, r = g.node(n), removed[n]
        if node.kind == "affine":
            src = node.inputs[0]
            lumped = lumped_input(g, n)
            view = channel_view(node.op, channels(g.node(src)) if lumped else None)
            rows_at = _full(view.out_channels, r)
            cols_at = _full(view.in_channels, removed[src]) if lumped else np.arange(view.in_channels)
            n_in = cols_at.size + (removed[src].size if lumped else 0)
            w3 = np.zeros((rows_at.size + r.size, n_in, view.w3.shape[2]))
            w3[np.ix_(rows_at, cols_at)] = view.w3
            bias = np.zeros((w3.shape[0], node.bias.size // view.out_channels))
            bias[rows_at] = node.bias.reshape(view.out_channels, -1)
            op = rebuild(view, w3, lumped)
            new = GNode("affine", node.inputs, out_shape(op), op=op, bias=bias.reshape(-1), source=node.source,
                        source_op=node.source_op)
        elif node.kind in ("input", "scale"):
            new = node
        else:
            new = resized_node(node, channels(node) + r.size)
        graph.add_node(n, node=new)
        graph.add_edges_from((s, n) for s in node.inputs)
    full = GraphNetwork(graph, g.output, g.input_name, g.output_name, list(g.input_shape), list(g.output_shape),
                        g.output_softmax)
    return full, dict(zip(full.order, (removed[n] for n in g.order)))


def restored_problem(g: GraphNetwork, full: GraphNetwork, removed: dict[str, np.ndarray]) -> str | None:
    """None when ``full`` computes g's outputs for every input (module docstring)."""
    no_zero = {n: np.zeros(channels(full.node(n)), dtype=bool) for n in full.order}
    return removal_problem(full, removed, no_zero) or same_graph(without_channels(full, removed), g)


def recheck_graph(f, g, input_set: InputSet, norm: str, ev: dict, report: CheckReport) -> Optional[float]:
    """The recomputed bound of one ``graph_diff`` evidence entry, or None (reported) when it is
    malformed or names another norm (registered in :mod:`lumpver.certificates.bounded`)."""
    try:
        caps = [int(c) for c in ev["max_boxes"]]
        threshold = float(ev.get("threshold", 0.0))
        if len(caps) != len(input_set.regions) or min(caps) < 1 or ev.get("norm") != norm:
            raise ValueError("one positive box cap per region and the guarantee's norm expected")
        if input_set.dim != f.n_inputs or (f.n_inputs, f.n_outputs) != (g.n_inputs, g.n_outputs):
            raise ValueError("the input set or the two models' interfaces do not fit")
        if "restored" in ev:
            full, removed = restore_channels(g, ev["restored"])
            problem = restored_problem(g, full, removed)
            if problem is not None:
                raise ValueError(f"the restored channels do not leave g unchanged: {problem}")
            report.ok(f"g with its {sum(r.size for r in removed.values())} removed channel(s) restored as zeros "
                      "computes g (every restored channel is read by nothing)")
            g = full
        bound = max(graph_difference_search(f, g, InputSet([r]), norm, RECHECK_SECONDS, threshold,
                                            max_boxes=cap).upper_bound
                    for r, cap in zip(input_set.regions, caps))
    except _MALFORMED as e:
        report.fail(f"malformed graph_diff evidence: {e!r}")
        return None
    report.ok(f"graph_diff bound recomputed on the product graph of both files: {bound:.6g} ({norm}, real arithmetic)")
    return bound
