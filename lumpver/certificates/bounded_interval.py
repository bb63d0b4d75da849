"""Re-check of ``interval`` evidence in ``bounded`` certificates written by :mod:`lumpver.reductions.certify`
(DESIGN.md §5, §9): replays the chain (on-set steps, twin) from the two model files and the input
set and re-runs the differential bound with the recorded box caps; the recomputed bound must not
exceed the certified epsilon. :func:`recheck_interval` is the entry registered in
:mod:`lumpver.certificates.bounded`'s dispatch table (``"interval"``); :func:`check_interval_evidence`
checks one entry on its own (certificate + context), for callers without the dispatcher.
"""
from __future__ import annotations

from typing import Optional

from lumpver.certificates.format import CheckContext, CheckReport
from lumpver.specs.inputset import InputSet

_MALFORMED = (KeyError, ValueError, TypeError, IndexError, AttributeError)


def check_interval_evidence(cert: dict, ctx: CheckContext, ev: dict) -> CheckReport:
    """Verify one ``{"backend": "interval", ...}`` evidence entry of a ``bounded`` certificate."""
    from lumpver.reductions.certify import recheck_chain
    from lumpver.certificates.exact import same_interface
    from lumpver.ir.onnx_import import load_onnx

    report = CheckReport(True)
    try:
        g = cert["guarantee"]
        input_set = InputSet.from_json(g["input_set"])
        norm, eps = str(g["norm"]), float(g["epsilon"])
        f, red = load_onnx(ctx.original_path), load_onnx(ctx.reduced_path)
        if input_set.dim != f.n_inputs:
            return report.fail(f"input set has {input_set.dim} dimensions, the model {f.n_inputs} inputs")
        if not same_interface(f, red, report):
            return report
        total = recheck_chain(f, red, input_set, norm, ev, report)
    except _MALFORMED as e:
        return report.fail(f"malformed interval evidence: {e!r}")
    if total is None:
        report.holds = False
        return report
    if not total <= eps:
        return report.fail(f"recomputed bound {total:.6g} exceeds the certified epsilon {eps:.6g}")
    report.ok(f"sup over X of ||f - g||_{norm} <= {total:.6g} <= certified epsilon {eps:.6g}")
    return report


def recheck_interval(f, g, input_set: InputSet, norm: str, ev: dict, report: CheckReport) -> Optional[float]:
    """Dispatch-table entry of :mod:`lumpver.certificates.bounded`: the recomputed bound of one interval
    evidence entry, or None (reported) when it is malformed or does not fit the models."""
    from lumpver.reductions.certify import recheck_chain
    from lumpver.certificates.exact import same_interface

    try:
        if input_set.dim != f.n_inputs:
            report.fail(f"input set has {input_set.dim} dimensions, the model {f.n_inputs} inputs")
            return None
        if not same_interface(f, g, report):
            return None
        return recheck_chain(f, g, input_set, norm, ev, report)
    except _MALFORMED as e:
        report.fail(f"malformed interval evidence: {e!r}")
        return None
