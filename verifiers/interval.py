"""The ``interval`` back-end: differential bound propagation with input splitting (DESIGN.md §5).

Equivalence queries: branch and bound over the input box. Each sub-box gets sound per-output
bounds of ``f - g`` (:mod:`lumpver.bounds.diff`); boxes whose norm bound exceeds epsilon are
split along the input with the largest influence (|symbolic coefficient| x width). ``proved``
when every sub-box is within epsilon; otherwise ``unknown`` with the best certified
``upper_bound``. ``violated`` only when a sampled point shows a violation in both float64 and
float32 evaluation (the caller replays it on the ONNX files). Property queries (one network,
VNN-LIB unsafe set): a box is safe when, for every disjunct ``A y <= b``, some row has a
certified lower bound ``> b``. The method is incomplete: it never proves what it cannot bound.

Evidence for certificates: the leaf sub-boxes with their bounds (capped, see ``details``).
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from lumpver.specs.norms import norm_value
from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.ir.network import Network
from lumpver.verifiers.base import Query, Verdict
from lumpver.verifiers import falsify
from lumpver.bounds.diff import NetworkPair, difference_bounds, prepare_pair
from lumpver.bounds.engine import Chain, objective_bounds, prepare, propagate
from lumpver.bounds.region import region_box
from lumpver.bounds.rounding import norm_hi, rounding_policy

MAX_EVIDENCE_BOXES = 2000
DEFAULT_MAX_SPLITS = 5000
SAMPLES_PER_BOX = 4
#: a property query whose first region is not closed by the root bounds runs the falsifier (PGD
#: through the operator interface) for at most this many seconds and this share of the timeout
#: before splitting: counterexamples of a CNN are found by gradients, not by sampled witnesses
FALSIFY_SECONDS = 5.0
FALSIFY_SHARE = 0.2
MIN_SPLIT_BOXES = 8


@dataclass(order=True)
class _Item:
    priority: float
    seq: int
    lo: np.ndarray = field(compare=False)
    hi: np.ndarray = field(compare=False)
    depth: int = field(compare=False, default=0)


@dataclass
class SearchResult:
    """Outcome of a branch-and-bound run on one region."""

    upper_bound: float  # certified sup of the measure over the region (inf if none)
    proved: bool
    leaves: list[tuple[list[float], list[float], float]]  # (lo, hi, bound) of processed leaves
    open_boxes: int
    boxes: int
    counterexample: Optional[np.ndarray] = None
    lower_bound: float = 0.0
    stopped: str = ""


# ----- measures ----------------------------------------------------------------------------
#: relative outward margin on every reported bound, on top of the propagation's own rounding margins
#: (a reported bound was once seen 1e-16 relative below a float64-evaluated difference)
REPORT_MARGIN = 1e-12


def norm_of_bounds(lower: np.ndarray, upper: np.ndarray, norm: str) -> float:
    """Upper bound of ``||d||`` from per-output bounds ``lower <= d <= upper`` (rounded up by REPORT_MARGIN)."""
    return _norm_of_bounds(lower, upper, norm) * (1.0 + REPORT_MARGIN)


def _norm_of_bounds(lower: np.ndarray, upper: np.ndarray, norm: str) -> float:
    return float(norm_hi(np.maximum(np.abs(lower), np.abs(upper)), norm))


def point_distance(yf: np.ndarray, yg: np.ndarray, norm: str) -> np.ndarray:
    """Observed ``||f(x) - g(x)||`` per row (top1: 1.0 where the argmaxes differ)."""
    if norm == "top1":
        return (np.argmax(yf, axis=1) != np.argmax(yg, axis=1)).astype(float)
    return norm_value(yf - yg, norm)


# ----- per-box evaluators ------------------------------------------------------------------
def _equivalence_box(pair: NetworkPair, norm: str, fnet: Network):
    """Box -> (certified measure bound, split influence)."""

    def evaluate(lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
        if norm == "top1":
            return _top1_box(pair, fnet, lo, hi)
        d = difference_bounds(pair, Box(lo, hi))
        return norm_of_bounds(d.lower, d.upper, norm), d.influence

    return evaluate


def _top1_box(pair: NetworkPair, fnet: Network, lo: np.ndarray, hi: np.ndarray):
    """0.0 when on the box argmax f and argmax g are provably the same unique output, else 1.0."""
    j = int(np.argmax(fnet.forward((lo + hi) / 2.0)[0]))
    m = fnet.n_outputs
    lam = np.delete(np.eye(m), j, axis=0)
    lam[:, j] = -1.0  # rows y_k - y_j, k != j: need upper < 0 for both networks
    influence = np.zeros_like(lo)
    box = Box(lo, hi)
    for chain in (pair.f, pair.g):
        _, up = objective_bounds(chain, propagate(chain, box), lam, box)
        if m > 1 and not np.all(up < 0):
            return 1.0, hi - lo
    return 0.0, influence


def _property_box(f: Chain, prop: OutputProperty):
    """Box -> (0.0 when no x in the box reaches any unsafe disjunct, else 1.0, influence)."""
    rows = np.vstack([A for A, _ in prop.disjuncts])
    rhs = np.concatenate([b for _, b in prop.disjuncts])
    owner = np.concatenate([np.full(len(b), i) for i, (_, b) in enumerate(prop.disjuncts)])

    def evaluate(lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
        box = Box(lo, hi)
        low, _ = objective_bounds(f, propagate(f, box), rows, box)
        excluded = low > rhs  # row i certifies: A_i y > b_i on the whole box
        safe = all(np.any(excluded[owner == i]) for i in range(len(prop.disjuncts)))
        return (0.0 if safe else 1.0), hi - lo

    return evaluate


# ----- branch and bound --------------------------------------------------------------------
def branch_and_bound(
    box: Box,
    evaluate: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]],
    threshold: float,
    witness: Callable[[np.ndarray], tuple[float, Optional[np.ndarray]]],
    deadline: float,
    max_boxes: int,
    root: Optional[tuple[float, np.ndarray]] = None,
) -> SearchResult:
    """Split ``box`` until every leaf's bound is ``<= threshold``, time runs out or the box cap
    is reached. ``witness(points)`` returns (best observed value, violating point or None).
    ``root`` is ``evaluate(box)`` when the caller already has it. A split whose children cannot
    both be evaluated before the deadline is not started."""
    seq = 0
    t_root = time.perf_counter()
    bound, infl = root if root is not None else evaluate(box.lower, box.upper)
    cost = time.perf_counter() - t_root if root is None else 0.0
    heap = [_Item(-bound, seq, box.lower.copy(), box.upper.copy())]
    leaves: list[tuple[list[float], list[float], float]] = []
    boxes, best_seen, stopped = 1, 0.0, ""
    infl_of = {0: infl}
    rng = np.random.default_rng(0)
    while heap:
        item = heapq.heappop(heap)
        b = -item.priority
        if b <= threshold:
            leaves.append((item.lo.tolist(), item.hi.tolist(), b))
            continue
        pts = np.vstack([(item.lo + item.hi) / 2.0, rng.uniform(item.lo, item.hi, (SAMPLES_PER_BOX, item.lo.size))])
        seen, cex = witness(pts)
        best_seen = max(best_seen, seen)
        if cex is not None:
            heapq.heappush(heap, item)
            return _finish(heap, leaves, boxes, best_seen, cex, "counterexample")
        if time.perf_counter() + 2 * cost > deadline or boxes + 2 > max_boxes:
            heapq.heappush(heap, item)
            stopped = "timeout" if boxes + 2 <= max_boxes else f"box cap {max_boxes} reached"
            break
        dim = _split_dim(infl_of.pop(item.seq, None), item.lo, item.hi)
        if dim is None:  # a point box that still fails: nothing left to split
            heapq.heappush(heap, item)
            stopped = "cannot split further"
            break
        mid = (item.lo[dim] + item.hi[dim]) / 2.0
        for lo, hi in ((item.lo, _set(item.hi, dim, mid)), (_set(item.lo, dim, mid), item.hi)):
            t_box = time.perf_counter()
            sub_bound, sub_infl = evaluate(lo, hi)
            cost = max(cost, time.perf_counter() - t_box)
            seq += 1
            boxes += 1
            infl_of[seq] = sub_infl
            heapq.heappush(heap, _Item(-min(sub_bound, b), seq, lo, hi, item.depth + 1))
    return _finish(heap, leaves, boxes, best_seen, None, stopped)


def _finish(heap, leaves, boxes, best_seen, cex, stopped) -> SearchResult:
    """Leaves = the final partition of the region: certified boxes and still-open boxes."""
    leaves = leaves + [(it.lo.tolist(), it.hi.tolist(), -it.priority) for it in heap]
    ub = max(lb for _, _, lb in leaves) if leaves else 0.0
    return SearchResult(ub, not heap and cex is None, leaves, len(heap), boxes, cex, best_seen, stopped)


def _set(v: np.ndarray, i: int, value: float) -> np.ndarray:
    w = v.copy()
    w[i] = value
    return w


def _split_dim(influence: Optional[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> Optional[int]:
    width = hi - lo
    splittable = width > 0
    if not np.any(splittable):
        return None
    score = influence if influence is not None and np.any(influence[splittable] > 0) else width
    return int(np.argmax(np.where(splittable, score, -np.inf)))


# ----- witnesses (sampled points, float64 and float32) ----------------------------------------
def _equivalence_witness(f: Network, g: Network, region, norm: str, epsilon: float):
    def witness(pts: np.ndarray):
        pts = pts[[region.contains(p) for p in pts]]
        if not len(pts):
            return 0.0, None
        d64 = point_distance(f.forward(pts), g.forward(pts), norm)
        d32 = point_distance(f.forward(pts, np.float32).astype(np.float64),
                             g.forward(pts, np.float32).astype(np.float64), norm)
        margin = 1e-9 * (1.0 + abs(epsilon))
        bad = (d64 > epsilon + margin) & (d32 > epsilon + margin)
        best = float(np.max(d64))
        return best, (pts[int(np.argmax(np.where(bad, d64, -np.inf)))] if np.any(bad) else None)

    return witness


def _property_witness(f: Network, region, prop: OutputProperty):
    def witness(pts: np.ndarray):
        pts = pts[[region.contains(p) for p in pts]]
        for x in pts:
            if prop.is_unsafe(f.forward(x)[0], tol=-1e-9) and prop.is_unsafe(f.forward(x, np.float32)[0].astype(float)):
                return 1.0, x
        return 0.0, None

    return witness


# ----- public API --------------------------------------------------------------------------
def _evidence(results: list[SearchResult]) -> dict[str, Any]:
    leaves = [leaf for r in results for leaf in r.leaves]
    ev: dict[str, Any] = {
        "boxes_processed": sum(r.boxes for r in results),
        "open_boxes": sum(r.open_boxes for r in results),
        "leaves": len(leaves),
        "rounding": rounding_policy(),
    }
    if len(leaves) <= MAX_EVIDENCE_BOXES:
        ev["sub_boxes"] = [{"lower": lo, "upper": hi, "bound": b} for lo, hi, b in leaves]
    else:
        ev["sub_boxes_omitted"] = f"{len(leaves)} leaves exceed the evidence cap {MAX_EVIDENCE_BOXES}"
    stops = sorted({r.stopped for r in results if r.stopped})
    if stops:
        ev["stopped"] = stops
    return ev


def certified_difference_bound(
    f: Network,
    g: Network,
    input_set: InputSet,
    norm: str = "linf",
    timeout: float = 60.0,
    max_splits: int = DEFAULT_MAX_SPLITS,
    epsilon: float = 0.0,
) -> tuple[float, dict[str, Any]]:
    """Certified ``U >= sup_{x in X} ||f(x) - g(x)||`` (real arithmetic, DESIGN.md §4-5).

    Splits until the bound is ``<= epsilon`` (default 0: refine until time or the box cap runs
    out). ``details`` holds the evidence (sub-boxes and bounds) and the observed lower bound.
    For ``top1`` the bound is 0.0 (argmax provably equal) or 1.0.
    """
    res = _run_equivalence(f, g, input_set, norm, epsilon, timeout, max_splits, stop_on_cex=False)
    details = _evidence(res)
    details["lower_bound"] = max((r.lower_bound for r in res), default=0.0)
    return max(r.upper_bound for r in res), details


def _run_equivalence(f, g, input_set, norm, epsilon, timeout, max_splits, stop_on_cex=True) -> list[SearchResult]:
    if f.n_inputs != g.n_inputs or f.n_outputs != g.n_outputs:
        raise ValueError(f"networks differ in interface: {f.n_inputs}->{f.n_outputs} vs {g.n_inputs}->{g.n_outputs}")
    deadline = time.perf_counter() + timeout
    evaluate = _equivalence_box(prepare_pair(f, g), norm, f)
    results = []
    box_cap = max(1, max_splits // len(input_set.regions))
    for region in input_set.regions:
        witness = _equivalence_witness(f, g, region, norm, epsilon)
        if not stop_on_cex:
            witness = _no_stop(witness)
        results.append(branch_and_bound(region_box(region), evaluate, epsilon, witness, deadline, box_cap))
        if results[-1].counterexample is not None:
            break
    return results


def _no_stop(witness):
    def wrapped(pts):
        seen, _ = witness(pts)
        return seen, None

    return wrapped


class IntervalBackend:
    """Differential bound propagation (incomplete; sound)."""

    name = "interval"

    def check(self, query: Query) -> Verdict:
        t0 = time.perf_counter()
        try:
            if query.prop is not None:
                v = self._property(query)
            else:
                v = self._equivalence(query)
        except ValueError as exc:  # unbounded polytope, size mismatch
            v = Verdict("unknown", self.name, reason=str(exc))
        v.seconds = time.perf_counter() - t0
        return v

    def _equivalence(self, q: Query) -> Verdict:
        assert q.other is not None, "an equivalence query needs `other`"
        eps = 0.0 if q.norm == "top1" else float(q.epsilon)
        res = _run_equivalence(q.network, q.other, q.input_set, q.norm, eps, q.timeout, DEFAULT_MAX_SPLITS)
        ub = max(r.upper_bound for r in res)
        lb = max(r.lower_bound for r in res)
        details = _evidence(res)
        details["norm"] = q.norm
        cex = next((r.counterexample for r in res if r.counterexample is not None), None)
        if cex is not None:
            return Verdict("violated", self.name, reason=f"sampled point exceeds epsilon={q.epsilon}",
                           counterexample=cex, upper_bound=ub, lower_bound=lb, details=details)
        if all(r.proved for r in res) and ub <= eps:
            return Verdict("proved", self.name, reason=f"certified {q.norm} bound {ub:.6g} <= {eps:.6g}",
                           upper_bound=ub, lower_bound=lb, details=details)
        why = "; ".join(sorted({r.stopped for r in res if r.stopped})) or "bound above epsilon"
        return Verdict("unknown", self.name, reason=f"certified bound {ub:.6g} > epsilon {eps:.6g} ({why})",
                       upper_bound=ub, lower_bound=lb, details=details)

    def _property(self, q: Query) -> Verdict:
        assert q.prop is not None
        deadline = time.perf_counter() + q.timeout
        evaluate = _property_box(prepare(q.network), q.prop)
        roots = []
        for region in q.input_set.regions:
            box = region_box(region)
            t_root = time.perf_counter()
            roots.append(evaluate(box.lower, box.upper))
            cost = time.perf_counter() - t_root
            if roots[-1][0] > 0.0 and len(roots) == 1:
                left = deadline - time.perf_counter()
                # splitting that cannot evaluate a few boxes (a CNN's bounds on a wide input) leaves
                # the whole time to the falsifier
                hopeless = MIN_SPLIT_BOXES * cost > left
                budget = left if hopeless else min(FALSIFY_SECONDS, FALSIFY_SHARE * q.timeout)
                res = falsify.search(q, samples=256, starts=4, steps=30, restarts=10**6 if hopeless else 2,
                                     deadline=time.monotonic() + budget)
                if res.counterexample is not None:
                    return Verdict("violated", self.name, counterexample=res.counterexample,
                                   reason="falsifier counterexample (float32 and float64 forward pass)")
        results = []
        for region, root in zip(q.input_set.regions, roots):
            witness = _property_witness(q.network, region, q.prop)
            r = branch_and_bound(region_box(region), evaluate, 0.0, witness, deadline, DEFAULT_MAX_SPLITS, root)
            results.append(r)
            if r.counterexample is not None:
                return Verdict("violated", self.name, reason="sampled point reaches the unsafe set",
                               counterexample=r.counterexample, details=_evidence(results))
            if not r.proved:
                return Verdict("unknown", self.name, reason=f"unsafe set not excluded ({r.stopped or 'bounds too loose'})",
                               details=_evidence(results))
        return Verdict("proved", self.name, reason="bounds exclude every unsafe disjunct", details=_evidence(results))


BACKEND = IntervalBackend()
