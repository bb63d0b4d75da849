"""Checker of ``bounded`` certificates (DESIGN.md §4, §5, §9; registered in lumpver.certificates.format).

The guarantee is ``sup_{x in X} ||f(x) - g(x)|| <= epsilon``. Each evidence entry names the
back-end that established a bound; :data:`EVIDENCE_CHECKERS` maps a back-end name to a
re-check function ``(f, g, input_set, norm, entry, report) -> recomputed bound or None``,
imported lazily. Entries with ``verdict == "info"`` (sampling, reduction method) are shown,
not checked. The certificate holds when every checked entry re-verifies and at least one
recomputed bound is ``<= epsilon`` (relative float allowance :data:`REL_TOL`, stated here).
"""
from __future__ import annotations

import importlib
from typing import Any, Optional

from lumpver.certificates.format import CheckContext, CheckReport

#: back-end name -> "module:function"; extend for new back-ends' evidence.
EVIDENCE_CHECKERS = {
    "sdp": "lumpver.certificates.bounded:_check_sdp",
    "interval": "lumpver.certificates.bounded_interval:recheck_interval",
}
REL_TOL = 1e-9


def check_bounded(cert: dict[str, Any], ctx: CheckContext) -> CheckReport:
    """Re-check a ``bounded`` certificate from its model files, input set and evidence."""
    from lumpver.specs.inputset import InputSet
    from lumpver.ir.onnx_import import load_onnx

    report = CheckReport(True)
    g_ = cert["guarantee"]
    eps, norm = g_.get("epsilon"), g_.get("norm")
    if not isinstance(eps, (int, float)) or g_.get("input_set") is None or ctx.reduced_path is None:
        return report.fail("a bounded certificate needs epsilon, an input set and a reduced model")
    f, g = load_onnx(ctx.original_path), load_onnx(ctx.reduced_path)
    input_set = InputSet.from_json(g_["input_set"])
    best: Optional[float] = None
    for i, ev in enumerate(cert["evidence"]):
        if not isinstance(ev, dict) or ev.get("verdict") == "info":
            continue
        name = ev.get("backend")
        if name not in EVIDENCE_CHECKERS:
            report.fail(f"evidence {i}: no checker for back-end {name!r}")
            continue
        module, func = EVIDENCE_CHECKERS[name].split(":")
        value = getattr(importlib.import_module(module), func)(f, g, input_set, norm, ev, report)
        if value is None:
            report.fail(f"evidence {i} ({name}) does not re-check")
            continue
        report.ok(f"evidence {i} ({name}) re-checked: bound {value:.6g}")
        best = value if best is None else min(best, value)
    if best is None:
        return report.fail("no evidence entry establishes a bound")
    if best > eps * (1 + REL_TOL) + 1e-12:
        return report.fail(f"re-checked bound {best:.9g} exceeds epsilon {eps}")
    return report.ok(f"||f - g||_{norm} <= {best:.6g} <= epsilon {eps} on the input set")


def _check_sdp(f, g, input_set, norm, ev, report) -> Optional[float]:
    from lumpver.verifiers.sdp import recheck_sdp

    if ev.get("norm") != norm:
        report.fail(f"sdp evidence bounds {ev.get('norm')}, the guarantee is about {norm}")
        return None
    return recheck_sdp(f, g, input_set, ev, report)


def _check_interval(f, g, input_set, norm, ev, report) -> Optional[float]:
    from lumpver.reductions.certify import recheck_chain

    return recheck_chain(f, g, input_set, norm, ev, report)
