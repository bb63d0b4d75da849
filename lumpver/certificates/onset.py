"""Re-checking an ``exact-on-set`` certificate from the model files alone (DESIGN.md §3, §9).

The evidence is an ordered list of steps, replayed from the original network:

* ``on-set``: the checker recomputes bounds itself (:func:`lumpver.bounds.engine.compute_bounds` on
  the leaves of the recorded split trees of the certificate's input set, never the recorded
  bounds), confirms every claim (removed neurons have ``u <= 0``, basis and folded neurons
  are linear on their whole range), rebuilds the reduced layers from the coefficients and
  recomputes the float discrepancy bound on X itself;
* ``exact-lumping``: :func:`lumpver.certificates.exact.replay_quotient` and its discrepancy bound.

The last network must equal the reduced file (within one float32 ulp per weight; the
discrepancy is computed with the file's own weights), and the sum of the recomputed
discrepancies must not exceed the certificate's ``float_tolerance.discrepancy_bound``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from lumpver.bounds.region import region_box
from lumpver.bounds.split import replay_set_bounds
from lumpver.certificates.format import CheckContext, CheckReport
from lumpver.specs.inputset import InputSet
from lumpver.ir.network import Network
from lumpver.reductions.onset_fold import LayerFold, fold_discrepancy, fold_network, linear_slopes

_MALFORMED = (KeyError, ValueError, TypeError, IndexError)


def check_exact_on_set(cert: dict, ctx: CheckContext) -> CheckReport:
    """Re-verify an ``exact-on-set`` certificate (module docstring)."""
    from lumpver.ir.onnx_import import load_onnx

    report = CheckReport(True)
    try:
        g = cert["guarantee"]
        input_set = InputSet.from_json(g["input_set"])
        claimed = float(g.get("float_tolerance", {}).get("discrepancy_bound", g.get("epsilon")))
        steps = list(cert["evidence"])
    except (*_MALFORMED, AttributeError) as e:
        return report.fail(f"malformed exact-on-set guarantee: {e!r}")
    if not steps:
        return report.fail("the certificate has no reduction steps")
    cur = load_onnx(ctx.original_path)
    reduced_file = load_onnx(ctx.reduced_path)
    if input_set.dim != cur.n_inputs:
        return report.fail(f"input set has {input_set.dim} dimensions, the original {cur.n_inputs} inputs")
    report.ok(f"input set: {len(input_set.regions)} region(s) of dimension {input_set.dim}")
    total = 0.0
    for i, step in enumerate(steps):
        target = reduced_file if i == len(steps) - 1 else None
        try:
            kind = step.get("step")
            if kind == "on-set":
                cur, d = replay_onset_step(cur, input_set, step, target, report)
            elif kind == "exact-lumping":
                cur, d = _replay_lumping(cur, input_set, step, target, report)
            else:
                return report.fail(f"step {i}: unknown step kind {kind!r}")
        except _MALFORMED as e:
            return report.fail(f"step {i} ({step.get('step') if isinstance(step, dict) else '?'}): malformed: {e!r}")
        if cur is None:
            return report
        total += d
    if not np.isfinite(total) or total > claimed * (1 + 1e-9) + 1e-300:
        return report.fail(f"recomputed discrepancy bound {total:.3e} exceeds the certified {claimed:.3e}")
    report.ok(f"on X, max_i |f_i - g_i| <= {total:.3e} (certified {claimed:.3e}), real arithmetic of the float32 weights")
    return report


def _slope_claims_hold(net: Network, folds: list[LayerFold], nb, report: CheckReport) -> bool:
    """Every claimed neuron is stable on X according to the recomputed bounds."""
    for f in folds:
        k = f.layer
        layer = net.layers[k]
        lo, hi = nb.pre_lower[k], nb.pre_upper[k]
        s = linear_slopes(layer, lo, hi)
        for j in f.inactive:
            if not s[j] == 0:
                report.fail(f"layer {k} neuron {j} claimed stably inactive, recomputed bounds [{lo[j]:.6g}, {hi[j]:.6g}]")
                return False
        for j in np.concatenate([f.basis, f.folded]):
            if not (np.isfinite(s[j]) and s[j] != 0):
                report.fail(f"layer {k} neuron {j} claimed linear (stable), recomputed bounds [{lo[j]:.6g}, {hi[j]:.6g}]")
                return False
    return True


def _well_formed(net: Network, folds: list[LayerFold], report: CheckReport) -> bool:
    if [f.layer for f in folds] != list(range(len(net.layers) - 1)):
        report.fail(f"claims cover layers {[f.layer for f in folds]}, the network has {len(net.layers) - 1} hidden layers")
        return False
    for f in folds:
        ids = np.concatenate([f.inactive, f.basis, f.folded])
        w = net.layers[f.layer].width
        if ids.size != np.unique(ids).size or np.any(ids < 0) or np.any(ids >= w) or not np.all(np.isfinite(f.coeffs)):
            report.fail(f"layer {f.layer}: neuron indices repeat, leave the layer, or coefficients are not finite")
            return False
    return True


def replay_onset_step(net: Network, input_set: InputSet, step: dict[str, Any], target: Optional[Network],
                      report: CheckReport) -> tuple[Optional[Network], float]:
    """Replay one on-set step on ``net``: (reduced network or None on failure, discrepancy)."""
    method, lp = str(step["method"]), bool(step["lp"])
    try:
        sb = replay_set_bounds(net, input_set, step["split_trees"], method, lp)
    except ValueError as e:
        report.fail(f"on-set step: {e}")
        return None, 0.0
    folds = [LayerFold.from_json(d) for d in step["layers"]]
    if not (_well_formed(net, folds, report) and _slope_claims_hold(net, folds, sb.bounds, report)):
        return None, 0.0
    n_claims = sum(f.inactive.size + f.basis.size + f.folded.size for f in folds)
    report.ok(f"on-set step: {n_claims} stability claims confirmed by recomputed {method}{'+lp' if lp else ''} "
              f"bounds over {sb.n_leaves} leaf region(s)")
    replay = fold_network(net, folds)
    if target is not None:
        from lumpver.certificates.exact import same_weights

        if not same_weights(replay, target, report):
            return None, 0.0
    try:
        disc = fold_discrepancy(net, folds, sb.bounds, target if target is not None else replay)
    except ValueError as e:
        report.fail(f"on-set step: {e}")
        return None, 0.0
    report.ok(f"on-set step: folded weights rebuilt from the coefficients; discrepancy on X <= {np.max(disc):.3e}")
    return (target if target is not None else replay), float(np.max(disc))


def _replay_lumping(net: Network, input_set: InputSet, step: dict[str, Any], target: Optional[Network],
                    report: CheckReport) -> tuple[Optional[Network], float]:
    from lumpver.certificates.exact import discrepancy_bound, replay_quotient, same_weights

    quotient, classes, sub = replay_quotient(net, step["claim"])
    report.lines.extend(sub.lines)
    if not sub.holds:
        report.holds = False
        return None, 0.0
    if target is not None and not same_weights(quotient, target, report):
        return None, 0.0
    g = target if target is not None else quotient
    a, b = discrepancy_bound(net, g, classes, float(step["claim"]["tolerance"]))
    xmax = max(float(np.max(np.abs(np.concatenate([bx.lower, bx.upper])))) for bx in map(region_box, input_set.regions))
    return g, float(a + b * xmax)
