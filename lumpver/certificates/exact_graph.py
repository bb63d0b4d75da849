"""Re-checking an exact channel-lumping claim of a graph network (DAG: MaxPool, residual Add,
Concat; DESIGN.md §2, §10). The chain case is :mod:`lumpver.certificates.exact_conv`.

The claim gives every node ``n`` of f (by its index in f's topological order) a channel partition
``P_n``: channel ``t`` is ``c_t`` times channel ``cls(t)`` of g's node ``n`` at every position
(``c_t > 0``, or 1 where an activation admits no other scale), or a constant (class -1, values per
position). Every class is kept: g's node ``n`` has one channel per class, in class order.

:func:`graph_discrepancy_bound` recomputes from the two model files alone, in real arithmetic of the
stored weights, ``max_i |f_i(x) - g_i(x)| <= a + b ||x||_inf``. It carries per feature of f's node the
error ``E_n >= |h_n - L_n|`` between f's value and the lifted g value ``L_n[t] = c_t g_n[cls(t)]``
(or the constant), and per feature of g's node a magnitude ``M_n >= |g_n|``, both as rows
``(constant, coefficient of ||x||_inf)``:

* affine ``z = W h + b``: ``z_t - c_t z^g_cls(t) = [R g_p]_t + [W d]_t + (b_eff_t - c_t b^g_cls(t))``
  with the residual filters ``R[t, C] = A[t, C] - c_t W^g[cls(t), C]`` of the class-aggregated filters
  ``A[t, C] = sum_{s in C} w[t, s] c_s`` and ``|d| <= E_p``: ``E <= |R| M_p + |W| E_p + |gap|``;
* activation: ``E <= Lip E_in`` (``act(c z) = c act(z)`` for the admitted scales) plus, for a
  constant, ``|act(v_in) - v|``; max pool: window maxima of ``E_in`` (``max`` commutes with ``c > 0``
  and ``|max a - max b| <= max |a - b|``); Add: ``P`` must be the partition of both inputs, and
  ``E <= E_1 + E_2 + |a_t - c_t| M_1 + |b_t - c_t| M_2`` where ``a, b`` are the inputs' scales; Concat:
  the parts' partitions side by side, classes of the second after those of the first.

The output node's partition must be the identity. The check's own float64 rounding is covered by
the one policy of :mod:`lumpver.bounds.rounding` (``2 gamma_K M``, with ``M`` the same computation on
magnitudes and ``K`` the longest accumulation: an operator's dot products plus the class sums;
elementary functions relative ``elementary_rel``).
This module never imports :mod:`lumpver.reductions`; the reducer imports its helpers.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from lumpver.bounds.rounding import POLICY
from lumpver.certificates.exact_conv import ChannelPartition, aggregate, channel_view, rebuild
from lumpver.certificates.format import CheckContext, CheckReport, confirm_discrepancy
from lumpver.certificates.graph_channels import (channels, interface_problem, lumped_input, read_removed,
                                                removal_problem, same_node, without_channels)
from lumpver.certificates.partition import partition_problem
from lumpver.errors import InputError
from lumpver.ir.activations import get_activation
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.network import activation_lipschitz
from lumpver.ir.onnx_import import load_graph

GRAPH_UNIT = "graph-channel"
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


# ----- shared helpers (the reducer uses them too) --------------------------------------------
def identity(n: int) -> ChannelPartition:
    return ChannelPartition(np.arange(n), np.ones(n), np.arange(n), np.ones(n, dtype=bool), {})


def n_classes(p: ChannelPartition) -> int:
    return int(p.rep.size)


def is_identity(p: ChannelPartition) -> bool:
    n = p.cls.size
    return not p.constant and np.array_equal(p.cls, np.arange(n)) and bool(np.all(p.scale == 1.0))


def constant_features(p: ChannelPartition, size: int) -> np.ndarray:
    """The node's features with its constant channels' values (zero elsewhere)."""
    out = np.zeros((p.cls.size, size // p.cls.size))
    for t, vals in p.constant.items():
        out[t] = vals
    return out.reshape(-1)


def affine_terms(net: GraphNetwork, nid: str, prev: ChannelPartition):
    """``(view, A, b_eff)``: the channel view of an affine node, its class-aggregated filters and
    its bias plus the constant channels, ``(channels, positions)``. InputError naming the node when
    the operator has no usable channel structure."""
    node = net.node(nid)
    lumped = lumped_input(net, nid)
    try:
        view = channel_view(node.op, prev.cls.size if lumped else None)
    except InputError as e:
        raise InputError(str(e), None, node.source or nid) from None
    agg = aggregate(view.w3, prev if lumped else None)
    bias = node.bias
    if lumped and prev.constant:
        bias = bias + node.op.forward(constant_features(prev, node.op.in_features)[None, :])[0]
    return view, agg, bias.reshape(view.out_channels, -1)


def pool_constants(node: GNode, prev: ChannelPartition) -> dict[int, np.ndarray]:
    """A max pool's output values on the constant channels of its input."""
    if not prev.constant:
        return {}
    out = node.pool.forward(constant_features(prev, node.pool.in_features)[None, :])[0].reshape(prev.cls.size, -1)
    return {t: out[t] for t in prev.constant}


def concat_partition(parts: list[ChannelPartition]) -> ChannelPartition:
    """Partitions of Concat parts side by side (classes of later parts numbered after earlier ones)."""
    cls, scale, rep, const, off_c, off_t = [], [], [], {}, 0, 0
    for p in parts:
        cls.append(np.where(p.cls >= 0, p.cls + off_c, -1))
        scale.append(p.scale)
        rep.append(p.rep + off_t)
        const.update({t + off_t: v for t, v in p.constant.items()})
        off_c, off_t = off_c + n_classes(p), off_t + p.cls.size
    r = np.concatenate(rep).astype(np.int64)
    return ChannelPartition(np.concatenate(cls).astype(np.int64), np.concatenate(scale), r,
                            np.ones(r.size, dtype=bool), const)


# ----- structure ------------------------------------------------------------------------------
def _expected(f: GraphNetwork, nid: str, claimed: dict[str, ChannelPartition]) -> Optional[str]:
    """What is wrong with the claimed partition of a non-affine node given its inputs' partitions."""
    node, p = f.node(nid), claimed[nid]
    ins = [claimed[i] for i in node.inputs]
    if node.kind == "scale" and node.inputs != ("input",):
        return "an element-wise scale inside the graph is not supported by graph lumping"
    if node.kind in ("input", "scale"):
        return None if is_identity(p) else "the input is never lumped"
    if node.kind == "affine":
        return partition_problem(channels(node), "relu", p)
    if node.kind == "concat":
        want = concat_partition(ins)
    else:
        want = ins[0]
        if node.kind == "add" and not (np.array_equal(ins[0].cls, ins[1].cls) and np.array_equal(ins[0].rep, ins[1].rep)):
            return "the two branches of the Add have different channel classes"
    if not (np.array_equal(p.cls, want.cls) and np.array_equal(p.rep, want.rep)) or sorted(p.constant) != sorted(want.constant):
        return "classes differ from those of its input(s)"
    act = node.activation if node.kind == "act" else "relu"
    return partition_problem(channels(node), act, p)


def structure_problem(f: GraphNetwork, g: GraphNetwork, claimed: dict[str, ChannelPartition]) -> Optional[str]:
    """None when g has f's graph with one channel per class of the claim and the claim is coherent."""
    if len(f.order) != len(g.order):
        return f"the reduced graph has {len(g.order)} nodes, the original {len(f.order)}"
    fi, gi = {n: k for k, n in enumerate(f.order)}, {n: k for k, n in enumerate(g.order)}
    for nf, ng in zip(f.order, g.order):
        a, b = f.node(nf), g.node(ng)
        where = f"node {fi[nf]} ({a.source or nf})"
        problem = same_node(a, b, [fi[i] for i in a.inputs], [gi[i] for i in b.inputs])
        if problem is None and a.kind == "act" and a.activation not in ACTIVATIONS:
            problem = f"activation {a.activation} is not supported by graph lumping"
        p = claimed[nf]
        if problem is None and (p.cls.size != channels(a) or not p.kept.all()):
            problem = "the claimed partition does not cover the node's channels"
        if problem is None and any(v.size != a.size // channels(a) or not np.all(np.isfinite(v)) for v in p.constant.values()):
            problem = "constant values do not match the node's positions"
        if problem is None and sorted(p.constant) != sorted(np.flatnonzero(p.cls < 0).tolist()):
            problem = "constant channels do not match class -1"
        if problem is None and n_classes(p) == 0:
            problem = "a node without any class (g needs one channel)"
        problem = problem or _expected(f, nf, claimed)
        if problem is None and (channels(b) != n_classes(p) or b.size != channels(b) * (a.size // channels(a))):
            problem = f"the reduced node has {channels(b)} channels, the claim {n_classes(p)} classes"
        if problem is not None:
            return f"{where}: {problem}"
    if not is_identity(claimed[f.output]):
        return "the output node is lumped"
    return None


# ----- the bound ------------------------------------------------------------------------------
def _lift(p: ChannelPartition, m: np.ndarray) -> np.ndarray:
    """Rows over g's channels -> rows over f's channels (class of each channel, zero for constants)."""
    k = m.shape[1] // max(1, n_classes(p))
    per = m.reshape(2, -1, k)[:, np.maximum(p.cls, 0), :]
    per[:, p.cls < 0, :] = 0.0
    return per.reshape(2, -1)


def _affine(f, g, nf, ng, parts, err, mag):
    node, gnode = f.node(nf), g.node(ng)
    src = node.inputs[0]
    prev, cur = parts[src], parts[nf]
    view, agg, b_eff = affine_terms(f, nf, prev)
    wg = channel_view(gnode.op, n_classes(prev) if lumped_input(f, nf) else None).w3
    bg = gnode.bias.reshape(wg.shape[0], -1)
    live = cur.cls >= 0
    c = np.where(live, cur.scale, 1.0)
    wq = np.zeros_like(agg)
    bq = np.zeros_like(b_eff)
    wq[live], bq[live] = wg[cur.cls[live]], bg[cur.cls[live]]
    for t, vals in cur.constant.items():
        bq[t] = vals
    lumped = lumped_input(f, nf)
    w_abs = node.op.abs()
    resid = rebuild(view, np.abs(agg - c[:, None, None] * wq), lumped).abs()
    gap = np.abs(b_eff - c[:, None] * bq).reshape(-1)
    e = resid.forward(mag[src]) + w_abs.forward(err[src])
    e[0] += gap
    # magnitudes of every float64 step above (positive scales: |agg| <= the aggregate of |w|)
    agg_abs = aggregate(np.abs(view.w3), prev if lumped else None)
    size = rebuild(view, agg_abs + np.abs(c)[:, None, None] * np.abs(wq), lumped)
    e_mag = size.abs().forward(mag[src]) + w_abs.forward(err[src])
    e_mag[0] += np.abs(node.bias) + np.abs(c[:, None] * bq).reshape(-1)
    if lumped and prev.constant:
        e_mag[0] += w_abs.forward(np.abs(constant_features(prev, node.op.in_features))[None, :])[0]
    k = node.op.in_features + prev.cls.size + 8
    m = gnode.op.abs().forward(mag[src])
    m[0] += np.abs(gnode.bias)
    return e + POLICY.margin(e_mag, k), m + POLICY.margin(m, k)


def _act(node: GNode, p: ChannelPartition, prev: ChannelPartition, err_in: np.ndarray, mag_in: np.ndarray):
    """Error and magnitude rows after an activation (module docstring)."""
    lip = activation_lipschitz(node.activation, node.alpha)
    act = get_activation(node.activation)
    e = lip * err_in
    per = e.reshape(2, p.cls.size, -1)
    for t, v in p.constant.items():
        want = act(prev.constant[t], node.alpha)
        per[0, t] += np.abs(want - v) + POLICY.elementary_rel * (np.abs(want) + np.abs(v))
    m = lip * mag_in
    if node.activation in ("sigmoid", "tanh"):
        m = np.vstack([np.ones(m.shape[1]), np.zeros(m.shape[1])])
    return e + POLICY.margin(e, 2), m + POLICY.margin(m, 2)


def _add(node: GNode, p: ChannelPartition, a: ChannelPartition, b: ChannelPartition, err: list, mag: list):
    """Error and magnitude rows after a residual Add (module docstring)."""
    da, db = np.abs(a.scale - p.scale), np.abs(b.scale - p.scale)
    k = node.size // p.cls.size
    e = err[0] + err[1] + np.repeat(da, k) * _lift(p, mag[0]) + np.repeat(db, k) * _lift(p, mag[1])
    e_mag = e.copy()
    per, per_mag = e.reshape(2, p.cls.size, -1), e_mag.reshape(2, p.cls.size, -1)
    for t, v in p.constant.items():
        per[0, t] += np.abs(a.constant[t] + b.constant[t] - v)
        per_mag[0, t] += np.abs(a.constant[t]) + np.abs(b.constant[t]) + np.abs(v)
    m = mag[0] + mag[1]
    return e + POLICY.margin(e_mag, 8), m + POLICY.margin(m, 2)


def graph_discrepancy_bound(f: GraphNetwork, g: GraphNetwork, claimed: dict[str, ChannelPartition]) -> tuple[float, float]:
    """Sound ``(a, b)`` (module docstring); ``claimed`` must have passed :func:`structure_problem`.
    ``mag`` holds g's magnitudes keyed by f's node ids (g's nodes in the same order)."""
    gid = dict(zip(f.order, g.order))
    err: dict[str, np.ndarray] = {}
    mag: dict[str, np.ndarray] = {}
    for nf in f.order:
        node, ng = f.node(nf), gid[nf]
        p = claimed[nf]
        ins = list(node.inputs)
        if node.kind == "input":
            e, m = np.zeros((2, node.size)), np.vstack([np.zeros(node.size), np.ones(node.size)])
        elif node.kind == "scale":
            s, t = node.affine_of_scale()
            e, m = np.zeros((2, node.size)), np.abs(s) * mag[ins[0]]
            m[0] += np.abs(t)
        elif node.kind == "affine":
            e, m = _affine(f, g, nf, ng, claimed, err, mag)
        elif node.kind == "act":
            e, m = _act(node, p, claimed[ins[0]], err[ins[0]], mag[ins[0]])
        elif node.kind == "maxpool":
            e = np.vstack([node.pool.forward(err[ins[0]][i:i + 1])[0] for i in range(2)])
            want = pool_constants(node, claimed[ins[0]])
            per = e.reshape(2, p.cls.size, -1)
            for t, v in p.constant.items():
                per[0, t] += np.abs(want[t] - v)
            gp = g.node(ng).pool
            m = np.vstack([gp.forward(mag[ins[0]][i:i + 1])[0] for i in range(2)])
        elif node.kind == "add":
            e, m = _add(node, p, claimed[ins[0]], claimed[ins[1]], [err[i] for i in ins], [mag[i] for i in ins])
        else:  # concat
            e = np.hstack([err[i] for i in ins])
            m = np.hstack([mag[i] for i in ins])
        err[nf], mag[nf] = e, m
    out = err[f.output]
    return float(np.max(out[0])), float(np.max(out[1]))


# ----- the claim and the checker --------------------------------------------------------------
def _hidden_affine(f: GraphNetwork) -> list[int]:
    return [k for k, n in enumerate(f.order) if f.node(n).kind == "affine" and n != f.output]


def claim_of(f: GraphNetwork, parts: dict[str, ChannelPartition], tolerance: float) -> dict[str, Any]:
    """The certificate claim: partitions by position in f's topological order (``nodes``), and those
    of the hidden affine nodes again as ``layers`` (what reports count; the checker requires equality)."""
    nodes = [parts[n].to_json() for n in f.order]
    return {"unit": GRAPH_UNIT, "tolerance": tolerance, "nodes": nodes, "layers": [nodes[k] for k in _hidden_affine(f)]}


def read_claim(f: GraphNetwork, claim: dict[str, Any]) -> dict[str, ChannelPartition]:
    """The claimed partitions keyed by f's node ids (ValueError/KeyError/TypeError if malformed)."""
    nodes = claim["nodes"]
    if claim.get("unit") != GRAPH_UNIT or len(nodes) != len(f.order):
        raise ValueError(f"the claim names {len(nodes)} nodes, the original graph has {len(f.order)}")
    if claim.get("layers") != [nodes[k] for k in _hidden_affine(f)]:
        raise ValueError("the claim's layers are not its hidden affine nodes")
    return {n: ChannelPartition.from_json(d) for n, d in zip(f.order, nodes)}


def verify_partition(f: GraphNetwork, g: GraphNetwork,
                     claimed: dict[str, ChannelPartition]) -> tuple[Optional[str], float, float]:
    """``(problem, a, b)``: :func:`structure_problem` and, when there is none, :func:`graph_discrepancy_bound`."""
    try:
        problem = structure_problem(f, g, claimed)
        a, b = graph_discrepancy_bound(f, g, claimed) if problem is None else (np.inf, np.inf)
    except (InputError, ValueError, IndexError, KeyError) as e:
        problem, a, b = str(e), np.inf, np.inf
    return problem, a, b


def _without_dead(f: GraphNetwork, rows: Optional[list], report: CheckReport) -> GraphNetwork:
    """f without the claimed dead channels (none when ``rows`` is None), after checking that nothing
    reads them (:func:`lumpver.certificates.graph_channels.removal_problem` with no channel 0 on a
    set); ValueError when the claim is wrong."""
    if rows is None:
        return f
    dead = read_removed(f, rows)
    problem = removal_problem(f, dead, {n: np.zeros(channels(f.node(n)), dtype=bool) for n in f.order})
    if problem is not None:
        raise ValueError(f"dead channels: {problem}")
    report.ok(f"{sum(r.size for r in dead.values())} dead node channel(s) read by nothing: dropping them "
              "changes no output for any input")
    return without_channels(f, dead)


def check_exact_graph(cert: dict[str, Any], ctx: CheckContext) -> CheckReport:
    """Checker for ``exact`` certificates of graph networks (called by :func:`lumpver.certificates.exact.check_exact`)."""
    report = CheckReport(True)
    f, g = load_graph(ctx.original_path), load_graph(ctx.reduced_path)
    ev = next((e for e in cert["evidence"] if isinstance(e, dict) and e.get("backend") == "lumping"), None)
    try:
        f = _without_dead(f, ev["claim"].get("dead"), report)
        claimed, tol = read_claim(f, ev["claim"]), float(ev["claim"]["tolerance"])
    except (KeyError, ValueError, TypeError, AttributeError, InputError) as e:
        return report.fail(f"no well-formed graph lumping evidence in the certificate: {e}")
    if interface_problem(f, g):
        return report.fail(interface_problem(f, g))
    problem, a, b = verify_partition(f, g, claimed)
    if problem is not None:
        return report.fail(problem)
    report.ok(f"graph partition valid: {sum(n_classes(claimed[n]) for n in f.order)} classes over "
              f"{len(f.order)} nodes, g has one channel per class with f's geometry")
    return confirm_discrepancy(report, cert["guarantee"], a, b, tol)
