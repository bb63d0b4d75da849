"""Linear folding of stably active channels of a graph network on an input set (DESIGN.md §3, §10).

After the on-set drops (:mod:`lumpver.reductions.onset_graph`), every activation node R that may be
folded (:func:`lumpver.certificates.onset_graph_fold.foldable`: its affine input A is read by R alone,
every reader of R is a conv/dense node taking R's channels) gets, in topological order, the pivoted-QR
choice of the chain (:func:`lumpver.reductions.onset_fold_conv.split_rows`) over the augmented filters
``s_c [W_c E, b_c]`` of its channels that are linear at every position on X (``E``: the embedding of
A's input when that is itself folded). The folded channels leave A and R, and every affine reader of R
takes ``W E`` (rounded to float32). The claim, its re-check and the discrepancy bound are
:mod:`lumpver.certificates.onset_graph_fold`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import networkx as nx
import numpy as np

from lumpver.certificates.exact_conv import channel_view, rebuild
from lumpver.certificates.graph_channels import channels, lumped_input, resized_node
from lumpver.certificates.onset_conv import ChannelClaim, channel_slopes
from lumpver.certificates.onset_graph import graph_hull
from lumpver.certificates.onset_graph_fold import act_step, foldable, graph_fold_discrepancy
from lumpver.errors import InputError
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.onnx_export import out_shape
from lumpver.progress import SILENT, Progress
from lumpver.reductions.onset_fold import QR_TOL
from lumpver.reductions.onset_fold_conv import augmented_rows, split_rows
from lumpver.specs.inputset import InputSet


def choose_graph_folds(h: GraphNetwork, lo: dict, hi: dict, qr_tol: float = QR_TOL) -> dict[str, ChannelClaim]:
    """Per foldable activation node of h that folds something, its claim (bounds ``lo``/``hi`` valid on X)."""
    claims: dict[str, ChannelClaim] = {}
    for r in h.order:
        if h.node(r).kind != "act" or foldable(h, r) is not None:
            continue
        try:
            a, lf, layer = act_step(h, r)
        except InputError:  # A has no channel structure (grouped conv, a step mixing channels)
            continue
        s = channel_slopes(layer, lo[a], hi[a])
        lin = np.flatnonzero(np.isfinite(s) & (s != 0))
        if lin.size < 2:
            continue
        p = h.node(a).inputs[0]
        emb = claims[p].embedding(channels(h.node(p))) if p in claims else np.eye(lf.view.in_channels)
        w3e = np.einsum("tsk,sj->tjk", lf.view.w3[lin], emb)
        b, f, coeffs = split_rows(augmented_rows(w3e, layer.bias.reshape(lf.view.out_channels, -1)[lin], s[lin]), qr_tol)
        if f.size:
            claims[r] = ChannelClaim(np.zeros(0, np.int64), lin[b], lin[f], coeffs)
    return claims


def _folded_affine(h: GraphNetwork, a: str, claims: dict[str, ChannelClaim]) -> GNode:
    """Affine node ``a`` with the kept rows of its own claim and its filters on its input's kept channels."""
    node, p = h.node(a), h.node(a).inputs[0]
    succ = list(h.graph.successors(a))
    own = claims.get(succ[0]) if len(succ) == 1 else None
    lumped = lumped_input(h, a)
    view = channel_view(node.op, channels(h.node(p)) if lumped else None)
    rows = own.kept(view.out_channels) if own is not None else np.arange(view.out_channels)
    w3 = view.w3[rows]
    if p in claims:
        w3 = np.einsum("tsk,sj->tjk", w3, claims[p].embedding(view.in_channels))
    op = rebuild(view, w3.astype(np.float32).astype(np.float64), lumped)
    return GNode("affine", node.inputs, out_shape(op), op=op, source=node.source, source_op=node.source_op,
                 bias=node.bias.reshape(view.out_channels, -1)[rows].reshape(-1))


def fold_graph(h: GraphNetwork, claims: dict[str, ChannelClaim]) -> GraphNetwork:
    """The reduced graph the claims describe (nodes without any change are shared)."""
    g = nx.DiGraph()
    touched = set(claims) | {h.node(r).inputs[0] for r in claims}
    for n in h.order:
        node = h.node(n)
        if node.kind == "affine" and (n in touched or node.inputs[0] in claims):
            new = _folded_affine(h, n, claims)
        elif n in claims:
            new = resized_node(node, int(claims[n].kept(channels(node)).size))
        else:
            new = node
        g.add_node(n, node=new)
        g.add_edges_from((s, n) for s in node.inputs)
    return GraphNetwork(g, h.output, h.input_name, h.output_name, list(h.input_shape), list(h.output_shape),
                        h.output_softmax)


@dataclass
class GraphFold:
    """The folds of a graph h on X: claims per activation node, the folded graph, the bound on X."""

    claims: dict[str, ChannelClaim]
    reduced: GraphNetwork
    discrepancy: float


def fold_graph_on_set(h: GraphNetwork, input_set: InputSet, method: str = "crown", qr_tol: float = QR_TOL,
                      progress: Progress = SILENT) -> Optional[GraphFold]:
    """Fold the stably active channels of h on ``input_set`` (module docstring); None when nothing folds."""
    if not any(h.node(r).kind == "act" and foldable(h, r) is None for r in h.order):
        return None  # e.g. every activation is read by a max pool or an Add: no bounds needed
    lo, hi = graph_hull(h, input_set, method, progress)
    claims = choose_graph_folds(h, lo, hi, qr_tol)
    if not claims:
        return None
    reduced = fold_graph(h, claims)
    disc = graph_fold_discrepancy(h, claims, lo, hi, reduced)
    progress.say(f"on-set: folded {sum(c.folded.size for c in claims.values())} stably linear channel(s) of "
                 f"{len(claims)} activation node(s); discrepancy on X <= {disc:.3e}")
    return GraphFold(claims, reduced, disc)
