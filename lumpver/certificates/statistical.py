"""Checker for certificates of kind ``statistical`` (confident pruning, DESIGN.md §7, §9).

Trusts nothing the reducer computed. From the original model, the reduced model and the
calibration file named in the certificate (SHA-256 checked) it

1. recomputes the pruned network for the chosen level (deterministic magnitude pruning) and
   requires the reduced file to hold exactly those weights (and the same interface);
2. recomputes every level's losses on the calibration data with the recorded evaluator (the
   chosen level from the reduced file itself), the p-values, the rejected set and the choice;
3. requires them to match the certificate (p-values within the stated relative tolerance,
   the rejected set and the choice exactly) and the guarantee block to state the same
   alpha and confidence.
"""
from __future__ import annotations

import math

import numpy as np

from lumpver.reductions import ltt
from lumpver.certificates.format import CheckContext, CheckReport
from lumpver.errors import InputError


def _evidence(cert: dict, where: str) -> dict:
    for ev in cert.get("evidence", []):
        if isinstance(ev, dict) and ev.get("backend") == "learn-then-test":
            return ev
    raise InputError("statistical certificate has no learn-then-test evidence", where, "evidence")


def _same_weights(a, b) -> str | None:
    """None if the two networks have identical layers and interface, else what differs."""
    if len(a.layers) != len(b.layers):
        return f"{len(a.layers)} layers vs {len(b.layers)}"
    for k, (la, lb) in enumerate(zip(a.layers, b.layers)):
        if la.activation != lb.activation:
            return f"layer {k} activation {la.activation} vs {lb.activation}"
        if la.weight.shape != lb.weight.shape:
            return f"layer {k} weight shape {la.weight.shape} vs {lb.weight.shape}"
        if not np.array_equal(la.weight, lb.weight):
            n = int(np.count_nonzero(la.weight != lb.weight))
            return f"layer {k}: {n} weights differ"
        if not np.array_equal(la.bias, lb.bias):
            return f"layer {k}: biases differ"
    if (a.input_name, a.output_name) != (b.input_name, b.output_name):
        return "input/output names differ"
    return None


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-300)


def check_statistical(cert: dict, ctx: CheckContext) -> CheckReport:
    """Re-check a confident-pruning certificate from the files alone (see the module doc)."""
    from lumpver.specs.calibration import load_calibration
    from lumpver.reductions.confident import RISK_ATOL, PVALUE_RTOL, config_from_evidence, loss_matrix
    from lumpver.fileio import sha256_file
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.reductions.pruning import prune_weights

    rep = CheckReport(True)
    where = str(ctx.cert_path)
    ev = _evidence(cert, where)
    try:
        cfg = config_from_evidence(ev)
        chosen = ev["chosen_index"]
        cal_ref = ev["calibration"]
        cal_ref["path"], cal_ref["sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed learn-then-test evidence: {e}", where, "evidence") from None
    if chosen is None or not (isinstance(chosen, int) and 0 <= chosen < len(cfg.levels)):
        return rep.fail(f"chosen_index {chosen!r} is not a level of the grid")
    g = cert["guarantee"]
    if g.get("confidence") is None or not _close(float(g["confidence"]), 1.0 - cfg.delta, 1e-12):
        rep.fail(f"guarantee confidence {g.get('confidence')} is not 1 - delta = {1.0 - cfg.delta}")
    if g.get("risk_bound") is not None and float(g["risk_bound"]) != cfg.alpha:
        rep.fail(f"guarantee risk_bound {g['risk_bound']} differs from alpha {cfg.alpha}")

    cal_path = ctx.resolve(cal_ref["path"])
    if not cal_path.exists():
        raise InputError(f"the calibration file named by the certificate is missing: {cal_path}", where)
    digest = sha256_file(cal_path)
    if digest != cal_ref["sha256"]:
        return rep.fail(f"calibration file {cal_path} has SHA-256 {digest[:16]}..., certificate says "
                        f"{cal_ref['sha256'][:16]}...")
    rep.ok(f"calibration file {cal_path.name} matches its SHA-256")

    original = load_onnx(ctx.original_path)
    reduced = load_onnx(ctx.reduced_path)
    expected = prune_weights(original, cfg.levels[chosen])
    diff = _same_weights(expected, reduced)
    if diff is not None:
        return rep.fail(f"reduced model is not the magnitude pruning of the original at level "
                        f"{cfg.levels[chosen]}: {diff}")
    rep.ok(f"reduced model equals the original pruned at level {cfg.levels[chosen]}")

    calib = load_calibration(cal_path, original.n_inputs, original.n_outputs, need_labels=cfg.loss == "zero-one")
    if calib.n != ev.get("n"):
        rep.fail(f"calibration has {calib.n} samples, certificate says {ev.get('n')}")
    losses = loss_matrix(original, ctx.original_path, calib, cfg, chosen_file=(chosen, ctx.reduced_path))
    sel = ltt.select(losses, cfg.alpha, cfg.delta, cfg.pvalue_method, cfg.procedure)
    _compare(rep, ev, sel, PVALUE_RTOL, RISK_ATOL)
    if sel.chosen != chosen:
        rep.fail(f"recomputed choice is level index {sel.chosen}, certificate says {chosen}")
    else:
        rep.ok(f"recomputed {cfg.procedure} choice is level {cfg.levels[chosen]} "
               f"(p = {sel.pvalues[chosen]:.3g} < delta = {cfg.delta}; risk {sel.risks[chosen]:.4g}, alpha {cfg.alpha})")
    return rep


def _compare(rep: CheckReport, ev: dict, sel: ltt.Selection, rtol: float, atol: float) -> None:
    pv, risks = ev.get("pvalues"), ev.get("risks")
    if not isinstance(pv, list) or len(pv) != len(sel.pvalues):
        rep.fail("certificate p-values missing or of the wrong length")
        return
    bad = [k for k, (a, b) in enumerate(zip(pv, sel.pvalues)) if not _close(float(a), b, rtol)]
    if bad:
        k = bad[0]
        rep.fail(f"p-value of level index {k}: certificate {pv[k]}, recomputed {sel.pvalues[k]}")
    else:
        rep.ok(f"all {len(pv)} p-values recomputed (rtol {rtol})")
    if not isinstance(risks, list) or len(risks) != len(sel.risks) or any(
        abs(float(a) - b) > atol for a, b in zip(risks, sel.risks)
    ):
        rep.fail("empirical risks differ from the recomputed ones")
    else:
        rep.ok("empirical risks recomputed")
    if list(ev.get("rejected", [])) != sel.rejected:
        rep.fail(f"rejected set {ev.get('rejected')} differs from recomputed {sel.rejected}")
