"""Checker of ``bounded`` certificates (DESIGN.md §4, §5, §9; registered in lumpver.certificates.format).

The guarantee is ``sup_{x in X} ||f(x) - g(x)|| <= epsilon``. Each evidence entry names the
back-end that established a bound; :data:`EVIDENCE_CHECKERS` maps a back-end name to a
re-check ``(f, g, input_set, norm, entry, report) -> recomputed bound or None``:

* ``interval``: :func:`lumpver.certificates.bounded_interval.recheck_interval` (chain replayed here);
* ``bab_diff``: :func:`lumpver.certificates.bounded_bab.recheck_bab` (leaves rebuilt and re-bounded);
* ``graph_diff``: :func:`lumpver.certificates.bounded_graph.recheck_graph` (graph networks: the
  product-graph bound re-run with the recorded box caps); the only checker for graph files;
* ``sdp``: the SDP back-end's solver-free re-check :func:`lumpver.verifiers.sdp.recheck_sdp`
  (stored multipliers, LMIs re-checked with float64 eigenvalues via
  :mod:`lumpver.verifiers.sdp_certify`; a back-end, not the reducer).

Entries with ``verdict == "info"`` (sampling, reduction method) are shown, not checked. Every
guarantee field is then compared with the recomputation: ``epsilon`` at least the smallest
recomputed bound, ``norm`` the norm every checked entry bounds, ``input_set`` the set the
bounds were recomputed on, ``float_tolerance.float32_rounding_bound`` at least the recomputed
float32 evaluation error of both models.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from lumpver.bounds.graph_diff import as_graph
from lumpver.certificates.bounded_bab import recheck_bab
from lumpver.certificates.bounded_graph import recheck_graph
from lumpver.certificates.bounded_interval import float32_term, recheck_interval
from lumpver.certificates.format import CheckContext, CheckReport, check_bound, confirm_prose
from lumpver.ir.network import Network
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_import import load_model
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.sdp import recheck_sdp


def _check_sdp(f: Network, g: Network, input_set: InputSet, norm: str, ev: dict, report: CheckReport
               ) -> Optional[float]:
    if ev.get("norm") != norm:
        report.fail(f"sdp evidence bounds {ev.get('norm')}, the guarantee is about {norm}")
        return None
    return recheck_sdp(f, g, input_set, ev, report)


#: back-end name -> re-check function; extend for new back-ends' evidence.
EVIDENCE_CHECKERS: dict[str, Callable[..., Optional[float]]] = {"sdp": _check_sdp, "interval": recheck_interval,
                                                                "bab_diff": recheck_bab, "graph_diff": recheck_graph}
NORMS = ("linf", "l1", "l2", "top1")


def check_bounded(cert: dict[str, Any], ctx: CheckContext) -> CheckReport:
    """Re-check a ``bounded`` certificate from its model files, input set and evidence."""
    report = CheckReport(True)
    g_ = cert["guarantee"]
    norm = g_.get("norm")
    try:
        input_set = InputSet.from_json(g_["input_set"])
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        return report.fail(f"guarantee.input_set: not an input set: {e!r}")
    if norm not in NORMS or ctx.reduced_path is None:
        return report.fail(f"guarantee.norm: {norm!r} is not one of {NORMS} (or no reduced model)")
    f, g = load_model(ctx.original_path), load_model(ctx.reduced_path)
    graph = isinstance(f, GraphNetwork) or isinstance(g, GraphNetwork)
    if graph:
        f, g = as_graph(f), as_graph(g)
    best: Optional[float] = None
    for i, ev in enumerate(cert["evidence"]):
        if not isinstance(ev, dict) or ev.get("verdict") == "info":
            continue
        name = ev.get("backend")
        if name not in EVIDENCE_CHECKERS or (graph and name != "graph_diff"):
            report.fail(f"evidence {i}: no checker for back-end {name!r}" + (" on graph networks" if graph else ""))
            continue
        value = EVIDENCE_CHECKERS[name](f, g, input_set, norm, ev, report)
        if value is None:
            report.fail(f"evidence {i} ({name}) does not re-check")
            continue
        report.ok(f"evidence {i} ({name}) re-checked: bound {value:.6g}")
        best = value if best is None else min(best, value)
    if best is None:
        return report.fail("no evidence entry establishes a bound")
    if not report.holds:
        return report
    report.confirm("input_set", f"{len(input_set.regions)} region(s); the bounds were recomputed on it")
    report.confirm("norm", f"{norm}, the norm every checked evidence entry bounds")
    check_bound(report, g_, "epsilon", best)
    ft = g_.get("float_tolerance")
    if isinstance(ft, dict) and ft.get("float32_rounding_bound") is not None:
        check_bound(report, g_, "float_tolerance.float32_rounding_bound", float32_term(f, g, input_set, norm))
    confirm_prose(report, g_, ("statement", "float_tolerance.statement"))
    return report
