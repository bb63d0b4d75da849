"""Re-check of ``graph_diff`` evidence in ``bounded`` certificates (DESIGN.md §5, §9, §10).

The certified quantity is ``sup_{x in X} ||f(x) - g(x)||`` for two graph networks (residual Add,
Concat, MaxPool; a chain file is read as a graph) in real arithmetic of the stored float32 weights.
The bound is recomputed from the two files and X alone: the product-graph branch and bound of the
``graph_diff`` back-end (:func:`lumpver.verifiers.graph_diff.graph_difference_search`, built on
:mod:`lumpver.bounds.graph_diff`; a back-end, not the reducer) re-runs region by region with the
recorded box cap and threshold, without a clock, so it repeats the reducer's partition (or refines it
further where the reducer's intermediate bounds were cut by its deadline).
"""
from __future__ import annotations

from typing import Optional

from lumpver.certificates.format import CheckReport
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.graph_diff import graph_difference_search

_MALFORMED = (KeyError, ValueError, TypeError, IndexError, AttributeError)
#: seconds the re-run may take per region (a safety limit; the box cap ends it)
RECHECK_SECONDS = 3600.0


def recheck_graph(f, g, input_set: InputSet, norm: str, ev: dict, report: CheckReport) -> Optional[float]:
    """The recomputed bound of one ``graph_diff`` evidence entry, or None (reported) when it is
    malformed or names another norm (registered in :mod:`lumpver.certificates.bounded`)."""
    try:
        caps = [int(c) for c in ev["max_boxes"]]
        threshold = float(ev.get("threshold", 0.0))
        if len(caps) != len(input_set.regions) or min(caps) < 1 or ev.get("norm") != norm:
            raise ValueError("one positive box cap per region and the guarantee's norm expected")
        if input_set.dim != f.n_inputs or (f.n_inputs, f.n_outputs) != (g.n_inputs, g.n_outputs):
            raise ValueError("the input set or the two models' interfaces do not fit")
        bound = max(graph_difference_search(f, g, InputSet([r]), norm, RECHECK_SECONDS, threshold,
                                            max_boxes=cap).upper_bound
                    for r, cap in zip(input_set.regions, caps))
    except _MALFORMED as e:
        report.fail(f"malformed graph_diff evidence: {e!r}")
        return None
    report.ok(f"graph_diff bound recomputed on the product graph of both files: {bound:.6g} ({norm}, real arithmetic)")
    return bound
