"""SDP back-end: certified worst-case error bounds of two networks (DESIGN.md §5, SDP).

After Li, Drummond and Duncan (arXiv 2012.00138): lift both networks into
``zeta = [x; unstable activations of f; of g; 1]`` (:mod:`lumpver.verifiers.sdp_lift`), describe the
input set and every activation by quadratic constraints, and find S-procedure multipliers
that make ``target(zeta) <= t`` follow from them (one LMI per target, :mod:`lumpver.verifiers.sdp_solve`).
Targets: for L-inf/L1 the linear functions ``+-(f_i - g_i)`` (two LMIs per output; linear
targets are never looser than the squared ones), for L2 ``||f - g||^2``. Every solver answer is
re-checked without a solver (:mod:`lumpver.verifiers.sdp_certify`) and widened soundly, or refused
(``unknown``). The float32 evaluation error (:mod:`lumpver.bounds.float_error`) is added, so the bound
holds for the float32 models as run by onnxruntime. Unions of regions: the maximum.

Scaling and tightness: each region is covered by bisected sub-boxes (*leaves*,
:mod:`lumpver.verifiers.sdp_split`); a leaf gets a cheap interval bound and an SDP only when its
matrix is small (``max_d``) and its cheap bound could raise the total; the worst leaf is
bisected while time and ``max_leaves`` allow (branch and bound). The evidence stores, per
leaf, its path and per target either ``"method": "sdp"`` with the multipliers or
``"method": "interval"`` (recomputed by the checker).

``BACKEND.check(query)``: falsifier first (``violated`` if it finds ``||f - g|| > epsilon``),
then ``proved`` iff the certified bound is ``<= epsilon``, else ``unknown``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from lumpver.bounds.region import region_box
from lumpver.bounds.rounding import rounding_policy
from lumpver.ir.network import Network
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.base import Query, Verdict
from lumpver.verifiers.falsify import BACKEND as FALSIFY
from lumpver.verifiers.sdp_certify import certify
from lumpver.verifiers.sdp_problem import NORMS, LeafProblem, SdpOptions, combine, region_problem, target_key, targets_for
from lumpver.verifiers.sdp_split import leaf_region, paths_cover, refine_region

@dataclass
class SdpBound:
    """Result of :func:`sdp_bound`. ``upper_bound`` is None when not certified."""

    certified: bool
    upper_bound: Optional[float]
    norm: str
    reason: str = ""
    seconds: float = 0.0
    solver_seconds: float = 0.0
    max_matrix_size: int = 0
    evidence: dict[str, Any] = field(default_factory=dict)


def sdp_bound(f: Network, g: Network, input_set: InputSet, norm: str = "linf",
              options: Optional[SdpOptions] = None, timeout: float = 60.0,
              stop_below: Optional[float] = None, log=None) -> SdpBound:
    """Certified ``sup_{x in X} ||f(x) - g(x)||`` (float32 models), or ``certified=False``.

    Refinement stops early once the bound is ``<= stop_below`` (when given). A time limit
    during refinement still returns the sound bound reached so far."""
    options = options or SdpOptions()
    t0 = time.perf_counter()
    if norm not in NORMS:
        return SdpBound(False, None, norm, f"the SDP back-end bounds {', '.join(NORMS)} only, not {norm}")
    if f.n_inputs != g.n_inputs or f.n_outputs != g.n_outputs:
        raise ValueError(f"networks differ in shape: {f.n_inputs}->{f.n_outputs} vs {g.n_inputs}->{g.n_outputs}")
    out = SdpBound(False, None, norm)
    regions_ev, bound, reasons = [], -np.inf, []
    n = len(input_set.regions)
    for k, region in enumerate(input_set.regions):
        deadline = time.perf_counter() + (timeout - (time.perf_counter() - t0)) / (n - k)
        rr = refine_region(f, g, region, norm, options, deadline, stop_below, log)
        out.solver_seconds += rr.solver_seconds
        out.max_matrix_size = max([out.max_matrix_size] + [lf.d for lf in rr.leaves])
        bound = max(bound, rr.bound)
        n_sdp = sum(1 for lf in rr.leaves for t in lf.evidence["targets"] if t["method"] == "sdp")
        reasons.append(f"region {k}: {len(rr.leaves)} leaves, {n_sdp} SDP targets kept ({rr.n_sdp} solved), "
                       f"stop: {rr.stop_reason}")
        regions_ev.append({"region": k, "region_bound": rr.bound, "sampled_lower": rr.lower,
                           "stop": rr.stop_reason, "leaves": [lf.evidence for lf in rr.leaves]})
    if not np.isfinite(bound):
        return _fail(out, t0, "no finite bound; " + "; ".join(reasons))
    out.certified, out.upper_bound = True, float(bound)
    out.reason = "; ".join(reasons)
    out.seconds = time.perf_counter() - t0
    out.evidence = {"norm": norm, "options": options.to_json(), "upper_bound": out.upper_bound, "regions": regions_ev,
                    "rounding": rounding_policy(),
                    "matrix_size": out.max_matrix_size, "solver_seconds": round(out.solver_seconds, 4)}
    return out


def _fail(out: SdpBound, t0: float, reason: str) -> SdpBound:
    out.certified, out.upper_bound, out.reason = False, None, reason
    out.seconds = time.perf_counter() - t0
    return out


class SdpBackend:
    """Back-end ``sdp`` (verifiers/base.py interface)."""

    name = "sdp"

    def __init__(self, options: Optional[SdpOptions] = None, falsify_fraction: float = 0.1) -> None:
        self.options = options or SdpOptions()
        self.falsify_fraction = falsify_fraction

    def check(self, query: Query) -> Verdict:
        t0 = time.perf_counter()
        if query.other is None:
            return Verdict("unknown", self.name, "the SDP back-end answers equivalence queries only")
        lower, fals = self._falsify(query)
        if fals is not None and fals.verdict == "violated":
            return Verdict("violated", self.name, "falsifier: " + fals.reason, counterexample=fals.counterexample,
                           lower_bound=fals.lower_bound, seconds=time.perf_counter() - t0)
        remaining = query.timeout - (time.perf_counter() - t0)
        try:
            res = sdp_bound(query.network, query.other, query.input_set, query.norm, self.options, remaining,
                            stop_below=query.epsilon)
        except ValueError as e:
            return Verdict("unknown", self.name, str(e), lower_bound=lower, seconds=time.perf_counter() - t0)
        details = dict(res.evidence)
        details.setdefault("matrix_size", res.max_matrix_size)
        secs = time.perf_counter() - t0
        if not res.certified:
            return Verdict("unknown", self.name, res.reason, lower_bound=lower, seconds=secs, details=details)
        if res.upper_bound <= query.epsilon:
            return Verdict("proved", self.name, f"certified bound {res.upper_bound:.6g} <= epsilon {query.epsilon:g}",
                           upper_bound=res.upper_bound, lower_bound=lower, seconds=secs, details=details)
        return Verdict("unknown", self.name, f"certified bound {res.upper_bound:.6g} > epsilon {query.epsilon:g}",
                       upper_bound=res.upper_bound, lower_bound=lower, seconds=secs, details=details)

    def _falsify(self, query: Query):
        q = replace(query, timeout=max(1.0, self.falsify_fraction * query.timeout))
        v = FALSIFY.check(q)
        return v.lower_bound, v


BACKEND = SdpBackend()


# ----- solver-free re-check of stored evidence (used by lumpver.certificates.bounded) -------------
def recheck_sdp(f: Network, g: Network, input_set: InputSet, ev: dict, report) -> Optional[float]:
    """Re-verify SDP evidence ``ev`` from the networks, X and the stored multipliers, without a
    solver: check that each region's leaf paths partition it, rebuild every leaf, re-check each
    stored LMI (:func:`lumpver.verifiers.sdp_certify.certify`) or recompute the cheap value, recombine.
    Returns the recomputed bound, or None (with the reason in ``report``) when it fails."""
    norm = ev.get("norm")
    regions = ev.get("regions")
    if norm not in NORMS or not isinstance(regions, list) or len(regions) != len(input_set.regions):
        report.fail("sdp evidence: norm or one entry per input region missing")
        return None
    options = SdpOptions.from_json(ev.get("options", {}))
    bound, n_lmi = -np.inf, 0
    for k, (region, rev) in enumerate(zip(input_set.regions, regions)):
        leaves = rev.get("leaves")
        if leaves is None and "targets" in rev:  # evidence of the unsplit format: one leaf
            leaves = [{"path": "", "targets": [{"method": "sdp", **t} for t in rev["targets"]]}]
        if not isinstance(leaves, list) or not paths_cover([str(lf.get("path")) for lf in leaves]):
            report.fail(f"sdp evidence: region {k}: the leaves do not partition the region")
            return None
        root, rb = region_box(region), -np.inf
        for lf in leaves:
            has_lmi = any(isinstance(t, dict) and t.get("method") == "sdp" for t in lf.get("targets", []))
            prob = region_problem(f, g, leaf_region(region, root, lf["path"]), options, np.inf if has_lmi else -1)
            value, used = _recheck_leaf(f, prob, norm, lf, report, f"region {k} leaf '{lf['path']}'")
            if value is None:
                return None
            n_lmi += used
            rb = max(rb, value)
        report.ok(f"sdp region {k}: {len(leaves)} leaves re-built, bound {rb:.6g}")
        bound = max(bound, rb)
    report.ok(f"sdp: {n_lmi} LMIs re-checked (float64 eigenvalues), the other targets by interval bounds")
    claimed = ev.get("upper_bound")
    if not isinstance(claimed, (int, float)) or bound > claimed * (1 + 1e-9) + 1e-12:
        report.fail(f"sdp evidence: recomputed bound {bound:.9g} exceeds the stated {claimed}")
        return None
    return float(bound)


def _recheck_leaf(f: Network, prob: LeafProblem, norm: str, lf: dict, report, where: str):
    """``(leaf bound, number of LMIs checked)`` or ``(None, 0)`` after reporting the failure."""
    stored = {target_key(t["target"]): t for t in lf.get("targets", [])}
    values, used = {}, 0
    for tgt in targets_for(norm, f.n_outputs):
        key = target_key(tgt)
        t = stored.get(key)
        if t is None:
            report.fail(f"sdp evidence: {where} lacks the target {tgt}")
            return None, 0
        if t.get("method") == "sdp":
            maps = prob.maps()
            cert = certify(prob.lift, maps, tgt, float(t["t"]), t["lam"], t["mu"])
            if not cert.ok:
                report.fail(f"sdp evidence: {where} target {tgt}: {cert.reason}")
                return None, 0
            values[key], used = cert.value, used + 1
        else:
            values[key] = prob.cheap[key]
    return combine(norm, f.n_outputs, values, prob.ferr), used
