"""Linear folding of stably active channels of graph networks on an input set, and its re-check
(DESIGN.md §3, §10).

As in a chain (:mod:`lumpver.certificates.onset_conv`): an activation node R whose input is an affine
(conv/dense) node A read by R alone, with channel ``c`` linear at every position over X (ReLU lower bound
``>= 0``, identity), computes ``h_c = s_c z_c``; when ``s_c [W_c E, b_c] = sum_j C_cj s_j [W_j E, b_j]``
over basis channels ``j`` of the same node, ``h_c = sum_j C_cj h_j`` on X. Channel ``c`` then leaves A and
R, and every reader of R adds ``C_cj`` times its filter slice on ``c`` to its slice on ``j``. Only where
this algebra holds: R is not the output and every reader of R is an affine node taking R's channels
through channel-wise steps (:func:`foldable`); a max pool, an Add (followed by a ReLU or not) or a
Concat reading R blocks it.

The step ``on-set-graph-fold`` follows ``on-set-graph`` (the drops) and records, per folded activation
node (its position in the topological order), ``basis``, ``folded`` and ``coefficients``. The checker
recomputes the graph bounds of the graph after the drops on every region of X, confirms every claim on
them and bounds ``max_i |f_i - g_i|`` on X by walking the graph in topological order with the chain's
affine and residual steps (:func:`lumpver.certificates.onset_conv.affine_gap`, ``residual_bound``):
an activation multiplies the gap by its Lipschitz constant, a max pool takes the window maximum of the
gaps, an Add sums them and a Concat concatenates them. g's filters are used as they are. This module
must not import :mod:`lumpver.reductions`.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from lumpver.certificates.exact_conv import channel_view
from lumpver.certificates.graph_channels import channels, lumped_input, same_node
from lumpver.certificates.onset_conv import (AffineMag, ChannelClaim, FoldState, affine_gap, channel_slopes, g_filters,
                                             residual_bound)
from lumpver.errors import InputError
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.network import Layer, activation_lipschitz

FOLD_STEP = "on-set-graph-fold"
_U = 2.0**-53


def foldable(h: GraphNetwork, r: str) -> Optional[str]:
    """None when activation node ``r``'s channels may be folded (module docstring), else why not."""
    node = h.node(r)
    if node.kind != "act" or h.node(node.inputs[0]).kind != "affine":
        return "not an activation of an affine node"
    if list(h.graph.successors(node.inputs[0])) != [r]:
        return "its affine input is read by another node too"
    readers = list(h.graph.successors(r))
    if r == h.output or not readers or any(h.node(c).kind != "affine" for c in readers):
        return "a reader is not a conv/dense node (max pool, Add, Concat) or it is the output"
    try:
        for c in readers:
            channel_view(h.node(c).op, channels(node))
    except InputError as e:
        return f"a reader mixes channels before its weights: {e}"
    return None


def act_step(h: GraphNetwork, r: str) -> tuple[str, AffineMag, Layer]:
    """(affine input id, its AffineMag, its layer with R's activation) of a foldable activation node."""
    a = h.node(r).inputs[0]
    node, act = h.node(a), h.node(r)
    layer = Layer(node.op, node.bias, act.activation, act.alpha)
    return a, AffineMag(layer, channels(h.node(node.inputs[0])) if lumped_input(h, a) else None), layer


def claims_to_json(h: GraphNetwork, claims: dict[str, ChannelClaim]) -> list[dict[str, Any]]:
    pos = {n: k for k, n in enumerate(h.order)}
    return [{"node": pos[r], "basis": c.basis.tolist(), "folded": c.folded.tolist(), "coefficients": c.coeffs.tolist()}
            for r, c in claims.items()]


def read_graph_claims(h: GraphNetwork, rows: list) -> dict[str, ChannelClaim]:
    """The claims of a step keyed by node id (KeyError/ValueError/TypeError/IndexError if malformed)."""
    out = {}
    for d in rows:
        basis, folded = (np.asarray(d[key], dtype=np.int64).reshape(-1) for key in ("basis", "folded"))
        coeffs = np.asarray(d["coefficients"], dtype=np.float64).reshape(folded.size, basis.size)
        out[h.order[int(d["node"])]] = ChannelClaim(np.zeros(0, np.int64), basis, folded, coeffs)
    return out


def claims_problem(h: GraphNetwork, claims: dict[str, ChannelClaim], lo: dict, hi: dict) -> Optional[str]:
    """Why the claims are malformed or not confirmed by the bounds ``lo``/``hi`` of h on X (None if they hold)."""
    for r, c in claims.items():
        why = foldable(h, r)
        if why is not None:
            return f"node {r}: cannot fold: {why}"
        n = channels(h.node(r))
        ids = np.concatenate([c.basis, c.folded])
        if ids.size != np.unique(ids).size or np.any(ids < 0) or np.any(ids >= n) or not np.all(np.isfinite(c.coeffs)):
            return f"node {r}: channel indices repeat or leave the node, or coefficients are not finite"
        a, _, layer = act_step(h, r)
        s = channel_slopes(layer, lo[a], hi[a])
        bad = [int(j) for j in ids if not (np.isfinite(s[j]) and s[j] != 0)]
        if bad:
            return f"node {r} channel {bad[0]}: claimed linear (stably active) on X, the recomputed bounds disagree"
    return None


def _claim_of_affine(h: GraphNetwork, a: str, claims: dict[str, ChannelClaim]) -> Optional[ChannelClaim]:
    succ = list(h.graph.successors(a))
    return claims.get(succ[0]) if len(succ) == 1 else None


def _affine_state(h, g_node: GNode, a: str, claims, states, mag) -> FoldState:
    node = h.node(a)
    c, p = _claim_of_affine(h, a, claims), node.inputs[0]
    lf = AffineMag(Layer(node.op, node.bias, "identity"), channels(h.node(p)) if lumped_input(h, a) else None)
    ps = states[p]
    if lf.first:  # the network input or its normalisation: nothing folded
        ps = FoldState(ps.m, ps.d, None, np.eye(lf.view.in_channels))
    rows = c.kept(lf.view.out_channels) if c is not None else np.arange(lf.view.out_channels)
    wg = g_filters(lf, g_node.op, rows.size, ps.emb.shape[1])
    if g_node.bias.size != g_node.op.out_features:
        raise ValueError("reduced node's bias does not match its operator")
    d = affine_gap(lf, rows, wg, g_node.bias, ps)
    return FoldState(mag.reshape(lf.view.out_channels, -1)[rows].reshape(-1), d, None, np.eye(rows.size))


def _act_state(h, r: str, claims, states, mag, lo, hi) -> FoldState:
    node = h.node(r)
    a = node.inputs[0]
    d = activation_lipschitz(node.activation, node.alpha) * states[a].d * (1 + 2 * _U)
    c = claims.get(r)
    if c is None:
        return FoldState(mag, d, None, np.eye(channels(node)))
    _, lf, layer = act_step(h, r)
    p = h.node(a).inputs[0]
    ps = states[p] if not lf.first else FoldState(states[p].m, states[p].d, None, np.eye(lf.view.in_channels))
    e = residual_bound(lf, c, channel_slopes(layer, lo[a], hi[a]), ps)
    n = channels(node)
    return FoldState(mag.reshape(n, -1)[c.kept(n)].reshape(-1), d, e, c.embedding(n))


def graph_fold_discrepancy(h: GraphNetwork, claims: dict[str, ChannelClaim], lo: dict, hi: dict,
                           g: GraphNetwork) -> float:
    """A sound bound of ``max_i |h_i(x) - g_i(x)|`` over X (module docstring). ``lo``/``hi`` must be valid
    on X and confirm the claims; ValueError when g does not have h's structure with the claimed channels."""
    if len(g.order) != len(h.order):
        raise ValueError(f"the reduced graph has {len(g.order)} nodes, the original {len(h.order)}")
    gid, hi_pos, gi_pos = dict(zip(h.order, g.order)), {n: k for k, n in enumerate(h.order)}, \
        {n: k for k, n in enumerate(g.order)}
    states: dict[str, FoldState] = {}
    for n in h.order:
        node, gn = h.node(n), g.node(gid[n])
        problem = same_node(node, gn, [hi_pos[i] for i in node.inputs], [gi_pos[i] for i in gn.inputs])
        if problem is not None:
            raise ValueError(f"node {hi_pos[n]} ({node.source or n}): {problem}")
        mag = np.maximum(np.abs(lo[n]), np.abs(hi[n]))
        if node.kind in ("input", "scale"):
            st = FoldState(mag, np.zeros(node.size), None, np.eye(channels(node)))
        elif node.kind == "affine":
            st = _affine_state(h, gn, n, claims, states, mag)
        elif node.kind == "act":
            st = _act_state(h, n, claims, states, mag, lo, hi)
        else:  # max pool, Add, Concat: their inputs are never folded (foldable), the gaps combine
            d = gn.apply([states[i].d[None, :] for i in node.inputs], np.float64)[0] * (1 + 4 * _U)
            st = FoldState(mag, d, None, np.eye(channels(node)))
        if st.d.size != gn.size:
            raise ValueError(f"node {hi_pos[n]} ({node.source or n}): {gn.size} features, the claims give {st.d.size}")
        states[n] = st
    return float(np.max(states[h.output].d))
