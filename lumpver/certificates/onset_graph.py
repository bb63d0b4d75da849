"""On-set channel removal of graph networks (residual Add, Concat, MaxPool) and its re-check
(DESIGN.md §3, §10).

The claim (one ``on-set-graph`` evidence step) lists, for every node ``n`` of f (by position in f's
topological order), the channels ``R_n`` that g drops; g must be f without them (same nodes and
geometry, the other filters and biases bit-equal). The drops are valid on X under the rule of
:func:`lumpver.certificates.graph_channels.removal_problem`: a dropped channel that a conv/dense node
still reads must be 0 at every position on X. :func:`zero_channels` proves that with the graph
bound engine (:mod:`lumpver.bounds.graph_engine`, CROWN, outward-rounded by the one policy of
:mod:`lumpver.bounds.rounding`) on every region of X: the bounds are ``[0, 0]`` (a ReLU whose
pre-activation upper bound is ``<= 0`` everywhere, a max pool or sum of such channels). Every kept
channel then computes f's value on X, so the discrepancy on X is 0 in real arithmetic of the stored
weights; float32 evaluation by a runtime adds its own rounding to both models. The checker
recomputes the bounds (never reads recorded ones), rebuilds f without the claimed channels and
requires g's file to be exactly that. An optional second step, ``exact-lumping``, lumps channels of
that graph exactly (:mod:`lumpver.certificates.exact_graph`: partition checks and its bound
``a + b ||x||_inf``, taken at the largest ``||x||_inf`` on X), or instead ``on-set-graph-fold``, which
folds stably active channels linearly (:mod:`lumpver.certificates.onset_graph_fold`: claims and bound
recomputed on the graph after the drops). This module must not import
:mod:`lumpver.reductions`; the reducer (:mod:`lumpver.reductions.onset_graph`) imports
:func:`zero_channels` and :func:`set_xmax`.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from lumpver.bounds.graph_engine import prepare_graph, propagate_graph
from lumpver.bounds.region import region_box
from lumpver.certificates.exact_graph import read_claim, verify_partition
from lumpver.certificates.graph_channels import (channels, interface_problem, read_removed, removal_problem, same_graph,
                                                without_channels)
from lumpver.certificates.onset_graph_fold import (FOLD_STEP, claims_problem, graph_fold_discrepancy,
                                                   read_graph_claims)
from lumpver.certificates.format import CheckContext, CheckReport, check_bound, check_equal, confirm_prose
from lumpver.errors import InputError
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_import import load_graph
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet

STEP = "on-set-graph"
STATEMENT = ("for every x in the input set: max_i |f_i(x) - g_i(x)| <= discrepancy_bound (0 when channels are only "
             "dropped: every kept channel computes the original's value), in exact real arithmetic of the stored "
             "float32 weights; float32 evaluation by a runtime adds its own rounding to both models")
_MALFORMED = (KeyError, ValueError, TypeError, IndexError)


def graph_hull(f: GraphNetwork, input_set: InputSet, method: str = "crown",
               progress: Progress = SILENT) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Lower and upper bounds of every node's value of f valid on all of ``input_set`` (the hull of the
    bound engine's bounds on each region; a polytope is bounded by its bounding box)."""
    pg = prepare_graph(f)
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    for k, region in enumerate(input_set.regions):
        gb = propagate_graph(pg, region_box(region), method)
        for n in f.order:
            lo[n] = np.minimum(lo[n], gb.lower[n]) if n in lo else gb.lower[n]
            hi[n] = np.maximum(hi[n], gb.upper[n]) if n in hi else gb.upper[n]
        progress.tick(f"{method} bounds of {len(f.order)} graph nodes, region", k + 1, len(input_set.regions))
    return lo, hi


def zero_channels(f: GraphNetwork, input_set: InputSet, method: str = "crown",
                  progress: Progress = SILENT) -> dict[str, np.ndarray]:
    """Per node of f, per channel: whether the bound engine proves the value 0 at every position on
    every region of ``input_set`` (bounds ``[0, 0]``)."""
    lo, hi = graph_hull(f, input_set, method, progress)
    return {n: ((lo[n] >= 0) & (hi[n] <= 0)).reshape(channels(f.node(n)), -1).all(axis=1) for n in f.order}


# ----- the checks -----------------------------------------------------------------------------
def set_xmax(input_set: InputSet) -> float:
    """``max ||x||_inf`` over the bounding boxes of the regions of X."""
    return max(float(np.max(np.abs(np.concatenate([b.lower, b.upper])))) for b in map(region_box, input_set.regions))


def replay_graph_step(f: GraphNetwork, input_set: InputSet, step: dict[str, Any], target: Optional[GraphNetwork],
                      report: CheckReport) -> Optional[GraphNetwork]:
    """Re-check one ``on-set-graph`` step from f (module docstring): f without the dropped channels,
    required to be ``target`` when given; None when a claim fails."""
    removed = read_removed(f, step["removed"])
    zero = zero_channels(f, input_set, str(step.get("method", "crown")))
    try:
        problem = removal_problem(f, removed, zero)
        h = without_channels(f, removed) if problem is None else None
        problem = problem or (same_graph(h, target) if target is not None else None)
    except (InputError, ValueError) as e:
        problem = str(e)
    if problem is not None:
        report.fail(f"{STEP}: {problem}")
        return None
    n_zero = sum(int(np.sum(zero[n][removed[n]])) for n in f.order)
    n_all = sum(r.size for r in removed.values())
    for key, value in (("n_zero_on_set", n_zero), ("n_removed", n_all)):
        if key in step and step[key] != value:
            report.fail(f"{STEP}: {key} is {step[key]!r}, recomputed {value}")
            return None
    report.ok(f"{STEP}: {n_all} node channel(s) dropped, {n_zero} of them proved 0 on X by recomputed "
              f"{step.get('method', 'crown')} bounds, the others unread" +
              ("; g is f without them (bit-equal weights)" if target is not None else ""))
    return h


def replay_graph_lumping(h: GraphNetwork, input_set: InputSet, step: dict[str, Any], target: GraphNetwork,
                         report: CheckReport) -> Optional[float]:
    """Re-check an ``exact-lumping`` step from h to ``target`` with the exact graph checker's partition
    checks and bound (:mod:`lumpver.certificates.exact_graph`): its bound on X, or None."""
    problem, a, b = verify_partition(h, target, read_claim(h, step["claim"]))
    if problem is not None:
        report.fail(f"exact-lumping step: {problem}")
        return None
    xmax = set_xmax(input_set)
    report.ok(f"exact-lumping step: partition valid, discrepancy on X <= {a:.3e} + {b:.3e} * {xmax:.6g} (recomputed)")
    return float(a + b * xmax)


def _replay(f: GraphNetwork, input_set: InputSet, steps: list, reduced: GraphNetwork,
            report: CheckReport) -> Optional[float]:
    """Replay ``[on-set-graph]`` or ``[on-set-graph, exact-lumping]``: the bound on X, or None."""
    kinds = [s.get("step") if isinstance(s, dict) else None for s in steps]
    if kinds not in ([STEP], [STEP, "exact-lumping"], [STEP, FOLD_STEP]):
        report.fail(f"expected the steps [{STEP}], [{STEP}, exact-lumping] or [{STEP}, {FOLD_STEP}], found {kinds}")
        return None
    h = replay_graph_step(f, input_set, steps[0], reduced if len(steps) == 1 else None, report)
    if h is None or len(steps) == 1:
        return None if h is None else 0.0
    if kinds[1] == FOLD_STEP:
        return replay_graph_fold(h, input_set, steps[1], reduced, report)
    return replay_graph_lumping(h, input_set, steps[1], reduced, report)


def replay_graph_fold(h: GraphNetwork, input_set: InputSet, step: dict[str, Any], target: GraphNetwork,
                      report: CheckReport) -> Optional[float]:
    """Re-check an ``on-set-graph-fold`` step from h (f after the drops) to ``target``
    (:mod:`lumpver.certificates.onset_graph_fold`): its bound on X, or None."""
    lo, hi = graph_hull(h, input_set, str(step.get("method", "crown")))
    claims = read_graph_claims(h, step["folds"])
    try:
        problem = claims_problem(h, claims, lo, hi)
        bound = graph_fold_discrepancy(h, claims, lo, hi, target) if problem is None else 0.0
    except (InputError, ValueError) as e:
        problem = str(e)
    if problem is not None:
        report.fail(f"{FOLD_STEP}: {problem}")
        return None
    report.ok(f"{FOLD_STEP}: {sum(c.folded.size for c in claims.values())} channel(s) of {len(claims)} node(s) linear "
              f"at every position on X (bounds recomputed) folded; on X, max_i |f_i - g_i| <= {bound:.3e} (recomputed)")
    return bound


def check_onset_graph(cert: dict[str, Any], ctx: CheckContext, input_set: InputSet,
                      report: CheckReport) -> CheckReport:
    """Re-verify an ``exact-on-set`` certificate of a graph network on its parsed ``input_set`` (called by
    :func:`lumpver.certificates.onset.check_exact_on_set`, which reports into ``report``)."""
    g = cert["guarantee"]
    f, reduced = load_graph(ctx.original_path), load_graph(ctx.reduced_path)
    if input_set.dim != f.n_inputs:
        return report.fail(f"guarantee.input_set: {input_set.dim} dimensions, the original has {f.n_inputs} inputs")
    if interface_problem(f, reduced):
        return report.fail(interface_problem(f, reduced))
    report.confirm("input_set", f"{len(input_set.regions)} region(s) of dimension {input_set.dim}; every bound "
                   "below is recomputed on it")
    try:
        total = _replay(f, input_set, cert["evidence"] if isinstance(cert["evidence"], list) else [], reduced, report)
    except _MALFORMED as e:
        return report.fail(f"malformed evidence: {e!r}")
    if total is None:
        report.holds = False
        return report
    return confirm_on_set_bound(report, g, total)


def confirm_on_set_bound(report: CheckReport, g: dict[str, Any], total: float) -> CheckReport:
    """Hold the guarantee's epsilon, discrepancy bound, norm and prose against the recomputed bound on X
    (chain and graph on-set checkers)."""
    if not np.isfinite(total):
        return report.fail("the recomputed discrepancy bound is not finite")
    report.ok(f"on X, max_i |f_i - g_i| <= {total:.3e} (real arithmetic of the float32 weights, recomputed)")
    check_bound(report, g, "epsilon", total)
    check_bound(report, g, "float_tolerance.discrepancy_bound", total)
    check_equal(report, g, "norm", "linf", "the norm of the recomputed bound")
    confirm_prose(report, g, ("float_tolerance.statement", "statement"))
    return report
