"""Back-end ``graph_diff``: equivalence of two graph networks (residual Add, Concat, MaxPool;
DESIGN.md §5, §10).

Per region of X, the product-graph bounds of :mod:`lumpver.bounds.graph_diff` (CROWN through both
graphs, outward rounding) give a certified bound of ``||f - g||`` (``linf``, ``l1``, ``l2`` from
per-output intervals; ``top1``: 0 where the argmax is provably the same, else 1). With at most
:data:`SPLIT_MAX_INPUTS` inputs the region is bisected (the branch and bound of
:func:`lumpver.verifiers.interval.branch_and_bound`, split along the input with the largest
``|coefficient| x width``) until every sub-box is within epsilon, the time or the box cap runs out;
a larger input (an image) gets the root bound only, and the falsifier (PGD through
:meth:`GraphNetwork.forward_vjp`) looks for a violation with part of the time left.

``proved`` only when every sub-box's sound bound is ``<= epsilon``; ``violated`` only at a float32
input inside X whose violation the float64 and float32 forward passes both show (the command replays
it with onnxruntime on the files); otherwise ``unknown`` with the best certified ``upper_bound``.
A chain network is compared through :meth:`GraphNetwork.from_chain`. Evidence: the leaf sub-boxes
with their bounds (capped).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from lumpver.bounds.graph_diff import GraphPair, as_graph, graph_difference_bounds, prepare_graph_pair, same_argmax_on_box
from lumpver.bounds.region import region_box
from lumpver.bounds.rounding import rounding_policy
from lumpver.specs.inputset import Box, InputSet
from lumpver.verifiers import falsify
from lumpver.verifiers.base import Query, Verdict
from lumpver.verifiers.interval import SearchResult, branch_and_bound, norm_of_bounds, point_distance

#: regions with at most this many inputs are bisected; larger ones get the root bound only
SPLIT_MAX_INPUTS = 64
MAX_BOXES = 5000
MAX_EVIDENCE_BOXES = 2000
#: share of the time left after bounding that the falsifier may use (unsplit regions)
FALSIFY_SHARE = 0.5


@dataclass
class GraphDiffRun:
    """The outcome of :func:`graph_difference_search` over all regions of X."""

    results: list[SearchResult]
    split: bool

    @property
    def upper_bound(self) -> float:
        return max(r.upper_bound for r in self.results)

    @property
    def lower_bound(self) -> float:
        return max(r.lower_bound for r in self.results)

    @property
    def proved(self) -> bool:
        return all(r.proved for r in self.results)

    @property
    def counterexample(self) -> Optional[np.ndarray]:
        return next((r.counterexample for r in self.results if r.counterexample is not None), None)

    def evidence(self, norm: str) -> dict[str, Any]:
        leaves = [leaf for r in self.results for leaf in r.leaves]
        ev: dict[str, Any] = {"norm": norm, "bounds": "product graph CROWN (lumpver.bounds.graph_diff)",
                              "input_splitting": self.split, "boxes_processed": sum(r.boxes for r in self.results),
                              "open_boxes": sum(r.open_boxes for r in self.results), "leaves": len(leaves),
                              "rounding": rounding_policy(), "upper_bound": self.upper_bound}
        if len(leaves) <= MAX_EVIDENCE_BOXES:
            ev["sub_boxes"] = [{"lower": lo, "upper": hi, "bound": b} for lo, hi, b in leaves]
        stops = sorted({r.stopped for r in self.results if r.stopped})
        if stops:
            ev["stopped"] = stops
        return ev


def _evaluator(gp: GraphPair, f, norm: str, deadline: float):
    """Box -> (certified bound of the norm, split influence)."""

    def evaluate(lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
        box = Box(lo, hi)
        if norm == "top1":
            j = int(np.argmax(f.forward((lo + hi) / 2.0)[0]))
            return (0.0 if same_argmax_on_box(gp, box, j, deadline) else 1.0), hi - lo
        d = graph_difference_bounds(gp, box, deadline)
        return norm_of_bounds(d.lower, d.upper, norm), d.influence

    return evaluate


def _witness(f, g, region, norm: str, epsilon: float, stop: bool):
    """Sampled points (rounded to float32) -> (largest float64 distance, a point violating
    ``epsilon`` in float64 and float32 evaluation, or None)."""

    def witness(pts: np.ndarray):
        pts = pts.astype(np.float32).astype(np.float64)
        pts = pts[[region.contains(p) for p in pts]]
        if not len(pts):
            return 0.0, None
        d64 = point_distance(f.forward(pts), g.forward(pts), norm)
        d32 = point_distance(*(n.forward(pts, np.float32).astype(np.float64) for n in (f, g)), norm)
        bad = np.minimum(d64, d32) > epsilon + 1e-9 * (1.0 + abs(epsilon))
        hit = pts[int(np.argmax(np.where(bad, d64, -np.inf)))] if stop and np.any(bad) else None
        return float(np.max(d64)), hit

    return witness


def graph_difference_search(f, g, input_set: InputSet, norm: str, timeout: float, threshold: float = 0.0,
                            epsilon: float = np.inf, max_boxes: int = MAX_BOXES) -> GraphDiffRun:
    """Certified bounds of ``sup_X ||f - g||`` for graph (or chain) networks (module docstring):
    sub-boxes whose bound is ``<= threshold`` are final; a sampled point beyond ``epsilon`` (float64
    and float32) ends the search with it as counterexample."""
    f, g = as_graph(f), as_graph(g)
    gp = prepare_graph_pair(f, g)
    deadline = time.perf_counter() + timeout
    mono_deadline = time.monotonic() + timeout
    split = f.n_inputs <= SPLIT_MAX_INPUTS
    cap = max(1, max_boxes // len(input_set.regions)) if split else 1
    results = []
    for region in input_set.regions:
        witness = _witness(f, g, region, norm, epsilon, np.isfinite(epsilon))
        results.append(branch_and_bound(region_box(region), _evaluator(gp, f, norm, mono_deadline), threshold,
                                        witness, deadline, cap))
        if not split and results[-1].open_boxes:
            results[-1].stopped = f"root bound only ({f.n_inputs} inputs > {SPLIT_MAX_INPUTS}: no input splitting)"
        if results[-1].counterexample is not None:
            break
    return GraphDiffRun(results, split)


class GraphDiffBackend:
    """Product-graph bounds with input splitting, plus the falsifier (sound, incomplete)."""

    name = "graph_diff"

    def check(self, query: Query) -> Verdict:
        t0 = time.perf_counter()
        if query.other is None or query.prop is not None:
            return Verdict("unknown", self.name, "graph_diff decides equivalence queries only")
        try:
            v = self._equivalence(query, t0)
        except ValueError as exc:  # interface mismatch, unbounded polytope, activation without relaxation
            v = Verdict("unknown", self.name, str(exc))
        v.seconds = time.perf_counter() - t0
        return v

    def _equivalence(self, q: Query, t0: float) -> Verdict:
        eps = float(q.epsilon)
        run = graph_difference_search(q.network, q.other, q.input_set, q.norm, q.timeout,
                                      0.0 if q.norm == "top1" else eps, eps)
        ub, details = run.upper_bound, run.evidence(q.norm)
        cex = run.counterexample
        if cex is None and not run.proved:
            cex = self._falsify(q, t0)
        if cex is not None:
            return Verdict("violated", self.name, f"point exceeds epsilon={eps:g} (float64 and float32 forward pass)",
                           counterexample=cex, upper_bound=ub, lower_bound=run.lower_bound, details=details)
        if run.proved and ub <= eps:
            return Verdict("proved", self.name, f"certified {q.norm} bound {ub:.6g} <= {eps:.6g}",
                           upper_bound=ub, lower_bound=run.lower_bound, details=details)
        why = "; ".join(details.get("stopped", [])) or "bound above epsilon"
        return Verdict("unknown", self.name, f"certified bound {ub:.6g} > epsilon {eps:.6g} ({why})",
                       upper_bound=ub, lower_bound=run.lower_bound, details=details)

    def _falsify(self, q: Query, t0: float) -> Optional[np.ndarray]:
        left = q.timeout - (time.perf_counter() - t0)
        if left <= 0.05:
            return None
        res = falsify.search(q, samples=256, starts=4, steps=30, restarts=10**6,
                             deadline=time.monotonic() + FALSIFY_SHARE * left)
        return res.counterexample


BACKEND = GraphDiffBackend()
