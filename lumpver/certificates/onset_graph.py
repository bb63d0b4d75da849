"""On-set channel removal of graph networks (residual Add, Concat, MaxPool) and its re-check
(DESIGN.md §3, §10).

The claim lists, for every node ``n`` of f (by position in f's topological order), the channels
``R_n`` that g drops; g is f without them (same nodes and geometry, the other filters and biases
bit-equal). g's kept channels compute f's values at every x in X, in real arithmetic of the stored
weights, when:

* an element-wise node (activation, max pool, Add) drops exactly what each of its inputs drops,
  and a Concat the union of its parts' drops (so a residual sum loses a channel only where both
  branches do); the input, a normalisation (``scale``) node and the output drop nothing, a node
  read by a ``scale`` node neither, and every node keeps at least one channel;
* wherever an affine (conv/dense) node ``c`` reads a dropped channel ``t`` of ``n``, either
  ``h_n[t] = 0`` at every position on X (its bounds, recomputed here with the graph bound engine
  :mod:`lumpver.bounds.graph_engine` on every region of X, are ``[0, 0]``: a ReLU whose
  pre-activation upper bound is ``<= 0`` everywhere, a max pool or sum of such channels) or the
  filters of c's kept output channels on ``t`` are all exactly zero (a dead channel, read by
  nothing after the removal).

By induction over the topological order every kept channel of g equals f's on X (the dropped terms
are ``0 * w`` or ``w * 0``), so the discrepancy on X is 0 in real arithmetic; float32 evaluation by
a runtime adds its own rounding to both models. The engine's bounds are outward-rounded by the one
policy of :mod:`lumpver.bounds.rounding`, so ``u <= 0`` holds in real arithmetic. The checker
recomputes the bounds (never reads recorded ones), rebuilds f without the claimed channels with
:func:`without_channels` and requires g's file to be exactly that. This module must not import
:mod:`lumpver.reductions`; the reducer (:mod:`lumpver.reductions.onset_graph`) imports
:func:`zero_channels`, :func:`channel_views` and :func:`without_channels`.
"""
from __future__ import annotations

from typing import Any, Optional

import networkx as nx
import numpy as np

from lumpver.bounds.graph_engine import prepare_graph, propagate_graph
from lumpver.bounds.region import region_box
from lumpver.certificates.exact_conv import channel_view, rebuild
from lumpver.certificates.exact_graph import channels, lumped_input, resized_node, same_node
from lumpver.certificates.format import CheckContext, CheckReport, check_bound, check_equal, confirm_prose
from lumpver.errors import InputError
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.onnx_export import out_shape
from lumpver.ir.onnx_import import load_graph
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet

STEP = "on-set-graph"
ELEMENTWISE = ("act", "maxpool", "add")
STATEMENT = ("for every x in the input set: max_i |f_i(x) - g_i(x)| <= discrepancy_bound (0: every kept channel "
             "computes the original's value), in exact real arithmetic of the stored float32 weights; float32 "
             "evaluation by a runtime adds its own rounding to both models")
_MALFORMED = (KeyError, ValueError, TypeError, IndexError)


def zero_channels(f: GraphNetwork, input_set: InputSet, method: str = "crown",
                  progress: Progress = SILENT) -> dict[str, np.ndarray]:
    """Per node of f, per channel: whether the bound engine proves the value 0 at every position on
    every region of ``input_set`` (bounds ``[0, 0]``; a polytope is bounded by its bounding box)."""
    pg = prepare_graph(f)
    zero = {n: np.ones(channels(f.node(n)), dtype=bool) for n in f.order}
    for k, region in enumerate(input_set.regions):
        gb = propagate_graph(pg, region_box(region), method)
        for n in f.order:
            z = (gb.lower[n] >= 0) & (gb.upper[n] <= 0)
            zero[n] &= z.reshape(zero[n].size, -1).all(axis=1)
        progress.tick(f"{method} bounds of {len(f.order)} graph nodes, region", k + 1, len(input_set.regions))
    return zero


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
                raise InputError(f"on-set graph reduction: {e}", None, node.source or n) from None
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


# ----- the checks -----------------------------------------------------------------------------
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


def read_removed(f: GraphNetwork, step: dict[str, Any]) -> dict[str, np.ndarray]:
    """The claimed drops keyed by f's node ids (ValueError when the list does not match f)."""
    rows = step["removed"]
    if not isinstance(rows, list) or len(rows) != len(f.order):
        raise ValueError(f"the claim lists removals for {len(rows)} nodes, the original graph has {len(f.order)}")
    return {n: np.asarray(r, dtype=np.int64).reshape(-1) for n, r in zip(f.order, rows)}


def replay_graph_step(f: GraphNetwork, input_set: InputSet, step: dict[str, Any], target: GraphNetwork,
                      report: CheckReport) -> bool:
    """Re-check one ``on-set-graph`` step from f to ``target`` (module docstring)."""
    removed = read_removed(f, step)
    zero = zero_channels(f, input_set, str(step.get("method", "crown")))
    try:
        problem = removal_problem(f, removed, zero)
        problem = problem or same_graph(without_channels(f, removed), target)
    except (InputError, ValueError) as e:
        problem = str(e)
    if problem is not None:
        report.fail(f"{STEP}: {problem}")
        return False
    n_zero = sum(int(np.sum(zero[n][removed[n]])) for n in f.order)
    n_all = sum(r.size for r in removed.values())
    for key, value in (("n_zero_on_set", n_zero), ("n_removed", n_all)):
        if key in step and step[key] != value:
            report.fail(f"{STEP}: {key} is {step[key]!r}, recomputed {value}")
            return False
    report.ok(f"{STEP}: {n_all} node channel(s) dropped, {n_zero} of them proved 0 on X by recomputed "
              f"{step.get('method', 'crown')} bounds, the others unread; g is f without them (bit-equal weights)")
    return True


def check_onset_graph(cert: dict[str, Any], ctx: CheckContext) -> CheckReport:
    """Re-verify an ``exact-on-set`` certificate of a graph network (called by
    :func:`lumpver.certificates.onset.check_exact_on_set`)."""
    report = CheckReport(True)
    g = cert["guarantee"]
    try:
        input_set = InputSet.from_json(g["input_set"])
    except (*_MALFORMED, AttributeError) as e:
        return report.fail(f"guarantee.input_set: not an input set: {e!r}")
    f, reduced = load_graph(ctx.original_path), load_graph(ctx.reduced_path)
    if input_set.dim != f.n_inputs:
        return report.fail(f"guarantee.input_set: {input_set.dim} dimensions, the original has {f.n_inputs} inputs")
    if (f.input_name, f.output_name, list(f.input_shape), list(f.output_shape), f.output_softmax) != (
            reduced.input_name, reduced.output_name, list(reduced.input_shape), list(reduced.output_shape),
            reduced.output_softmax):
        return report.fail("the reduced model's inputs or outputs differ from the original's")
    steps = cert["evidence"] if isinstance(cert["evidence"], list) else []
    if len(steps) != 1 or not isinstance(steps[0], dict) or steps[0].get("step") != STEP:
        return report.fail(f"expected one {STEP} step as evidence")
    report.confirm("input_set", f"{len(input_set.regions)} region(s) of dimension {input_set.dim}; every bound "
                   "below is recomputed on it")
    try:
        holds = replay_graph_step(f, input_set, steps[0], reduced, report)
    except _MALFORMED as e:
        return report.fail(f"{STEP}: malformed: {e!r}")
    if not holds:
        return report
    report.ok("on X, max_i |f_i - g_i| = 0 (real arithmetic of the float32 weights)")
    check_bound(report, g, "epsilon", 0.0)
    check_bound(report, g, "float_tolerance.discrepancy_bound", 0.0)
    check_equal(report, g, "norm", "linf", "the norm of the recomputed bound")
    confirm_prose(report, g, ("float_tolerance.statement", "statement"))
    return report
