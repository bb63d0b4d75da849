"""``lumpver verify --reduce``: verify one VNN-LIB case by splitting, on-set reduction per open
sub-box, and a back-end on each reduced network (DESIGN.md §3, §5).

Per case (input region R, unsafe set U):

1. a short falsifier run on the ORIGINAL network over R (a replayed counterexample ends it);
2. branch and bound over input boxes with sound bounds (``lumpver.verifiers.smt_spec``): a sub-box whose
   bounds exclude every unsafe disjunct is closed; splitting stops at ``max_open`` open leaves
   (widest ``width * |gradient|`` dimension first, as the SMT back-end);
3. each open leaf is reduced on itself (``lumpver.reductions.onset.reduce_on_set``: on a small box most
   neurons are stable, so the reduced network is much smaller than one reduced on all of R) and
   the back-end checks the reduced network against U widened by the leaf's certified
   discrepancy ``delta`` (row ``a . y <= b`` becomes ``a . y <= b + ||a||_1 delta``), so its
   ``proved`` transfers to the original;
4. a counterexample of a reduced network is replayed on the original (float64 and float32); if it
   does not replay, it seeds a falsifier run on the ORIGINAL network in that leaf (PGD from that
   point) before the leaf counts as ``unknown``.

Soundness: ``proved`` only when every leaf is closed by bounds or proved by the back-end on the
widened set; ``violated`` only with a point inside R replayed on the original network (the caller
replays it once more with onnxruntime on the file). Anything else is ``unknown``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.ir.network import Network
from lumpver.verifiers.base import Query, SearchStats, Verdict
from lumpver.bounds.region import bisect_box, region_box
from lumpver.reductions.onset import reduce_on_set
from lumpver.verifiers import falsify
from lumpver.verifiers.falsify import confirms, to_float32_inside
from lumpver.verifiers.smt import split_dim
from lumpver.verifiers.smt_spec import build_spec, open_disjuncts, region_with_box, spec_bounds


@dataclass
class ReduceOptions:
    """Knobs of the split-and-reduce pipeline."""

    max_open: int = 128  # stop splitting once this many leaves are open
    max_boxes: int = 2000  # bound-propagation calls before giving up on closing more leaves
    falsify_seconds: float = 1.0  # initial falsifier budget (capped at 5 % of the timeout)
    seed_seconds: float = 0.3  # falsifier budget seeded by a non-replaying counterexample
    reduce_leaves: int = 1  # input splits inside reduce_on_set on each leaf
    max_refine: int = 6  # a leaf left unknown (timeout, non-replaying counterexample) is halved up to this often
    min_leaf_seconds: float = 1.0  # least back-end time per leaf (Marabou counts whole seconds)


@dataclass
class LeafRecord:
    lower: list[float]
    upper: list[float]
    kept: int
    delta: float
    verdict: str
    seconds: float
    reason: str = ""


@dataclass
class PipelineStats(SearchStats):
    open_leaves: int = 0
    refined: int = 0
    seconds_falsify: float = 0.0
    seconds_split: float = 0.0
    seconds_reduce: float = 0.0
    seconds_backend: float = 0.0
    leaves: list[LeafRecord] = field(default_factory=list)


def widen(unsafe: OutputProperty, delta: float) -> OutputProperty:
    """The unsafe set grown by ``delta`` per output (max norm): ``a . y <= b + ||a||_1 delta``."""
    return OutputProperty([(A, b + np.sum(np.abs(A), axis=1) * delta) for A, b in unsafe.disjuncts])


def replays(net: Network, region, unsafe: OutputProperty, x: np.ndarray) -> Optional[np.ndarray]:
    """``x`` rounded to float32 inside ``region`` if it is unsafe for ``net`` in float64 and
    float32, else None."""

    xf = to_float32_inside(x, region)
    if xf is None:
        return None
    q = Query(net, InputSet([region]), prop=unsafe)
    return xf if confirms(q, xf) else None


def verify_case_reduced(net: Network, region, unsafe: OutputProperty, backend, timeout: float,
                        options: Optional[ReduceOptions] = None, seed: int = 0) -> tuple[Verdict, dict[str, Any]]:
    """The verdict on one case for the ORIGINAL network ``net`` and a note (module docstring)."""
    opt = options or ReduceOptions()
    t0 = time.monotonic()
    deadline = t0 + timeout
    st = PipelineStats()
    rng = np.random.default_rng(seed)
    q = Query(net, InputSet([region]), prop=unsafe, timeout=timeout, seed=seed)
    x = _falsify(q, min(opt.falsify_seconds, 0.05 * timeout), rng, st)
    if x is not None:
        return _violated(x, "falsifier on the original network", st, t0), _note(st)
    leaves, why = _open_leaves(net, region, unsafe, opt, deadline, st)
    if why:
        return _unknown(why, st, t0), _note(st)
    undecided = []
    work = [(leaf, 0) for leaf in leaves]
    while work:
        if time.monotonic() > deadline:
            undecided.append(f"timeout after {timeout:g} s ({len(work)} leaves open)")
            break
        leaf, depth = work.pop(0)
        cap = max(opt.min_leaf_seconds, 2.0 * (deadline - time.monotonic()) / (len(work) + 1))
        v = _leaf(net, region, leaf, unsafe, backend, min(deadline, time.monotonic() + cap), opt, rng, st)
        if v.verdict == "violated":
            return _violated(v.counterexample, v.reason, st, t0), _note(st)
        if v.verdict == "unknown":
            if depth < opt.max_refine and float(np.max(leaf.upper - leaf.lower)) > 0.0:
                st.refined += 1
                a, b = _halves(net, region, leaf, unsafe)
                work += [(a, depth + 1), (b, depth + 1)]
            else:
                undecided.append(v.reason)
                break
    if undecided:
        return _unknown("; ".join(undecided[:2]), st, t0), _note(st)
    used = sum(r.verdict == "proved" for r in st.leaves)
    v = Verdict("proved", backend.name if used else "bounds", f"{st.closed_by_bounds} sub-boxes closed by bounds, {used} "
                f"reduced leaves proved by {backend.name} on the widened unsafe set", seconds=time.monotonic() - t0,
                details={"pipeline": st.as_dict()})
    return v, _note(st)


def _note(st: PipelineStats) -> dict[str, Any]:
    kept = [r.kept for r in st.leaves]
    return {"open_leaves": st.open_leaves, "closed_by_bounds": st.closed_by_bounds,
            "reduced_to": kept, "reduction_discrepancy": max([r.delta for r in st.leaves], default=0.0),
            "seconds_split_reduce_backend": [round(st.seconds_split, 3), round(st.seconds_reduce, 3), round(st.seconds_backend, 3)]}


def _violated(x, how: str, st: PipelineStats, t0: float) -> Verdict:
    return Verdict("violated", "reduce", how, counterexample=np.asarray(x), seconds=time.monotonic() - t0,
                   details={"pipeline": st.as_dict()})


def _unknown(why: str, st: PipelineStats, t0: float) -> Verdict:
    return Verdict("unknown", "reduce", why, seconds=time.monotonic() - t0, details={"pipeline": st.as_dict()})


def _falsify(q: Query, budget: float, rng, st: PipelineStats, seeds=None) -> Optional[np.ndarray]:
    t = time.monotonic()
    res = falsify.search(q, samples=500, starts=4, steps=30, deadline=t + budget, rng=rng, seeds=seeds, restarts=10**6)
    st.seconds_falsify += time.monotonic() - t
    return res.counterexample


def _open_leaves(net, region, unsafe, opt: ReduceOptions, deadline: float, st: PipelineStats):
    """Leaves of a bounds-driven split of ``region`` not closed by bounds, at most ``max_open``
    of them (the widest first when the cap is reached), or a reason to give up."""

    t = time.monotonic()
    q = Query(net, InputSet([region]), prop=unsafe)

    spec = build_spec(q)
    todo: list[tuple[Box, int]] = [(region_box(region), 0)]
    done: list[Box] = []
    while todo and len(todo) + len(done) < opt.max_open and st.boxes < opt.max_boxes:
        if time.monotonic() > deadline:
            st.seconds_split += time.monotonic() - t
            return [], "timeout while splitting"
        todo.sort(key=lambda b: -float(np.sum(np.log(np.maximum(b[0].upper - b[0].lower, 1e-300)))))
        box, depth = todo.pop(0)
        st.boxes += 1
        live = open_disjuncts(spec, spec_bounds([net], spec, region_with_box(region, box)))
        if not live:
            st.closed_by_bounds += 1
            continue
        if float(np.max(box.upper - box.lower)) <= 0.0:
            done.append(box)
            continue
        # alternate the bound-driven and the gradient choice of dimension, as the SMT back-end
        left, right, _, _ = bisect_box(box, split_dim([net], spec, box, live, region, by_bounds=depth % 2 == 0))
        todo += [(left, depth + 1), (right, depth + 1)]
    st.seconds_split += time.monotonic() - t
    leaves = done + [b for b, _ in todo]
    st.open_leaves = len(leaves)
    return leaves, ""


def _halves(net, region, box: Box, unsafe) -> tuple[Box, Box]:
    spec = build_spec(Query(net, InputSet([region]), prop=unsafe))
    left, right, _, _ = bisect_box(box, split_dim([net], spec, box, list(range(len(spec.disjuncts)))))
    return left, right


def _leaf(net, region, box: Box, unsafe, backend, deadline: float, opt: ReduceOptions, rng, st: PipelineStats) -> Verdict:
    sub = region_with_box(region, box)
    t = time.monotonic()
    spec = build_spec(Query(net, InputSet([sub]), prop=unsafe))
    if not open_disjuncts(spec, spec_bounds([net], spec, sub)):
        st.closed_by_bounds += 1
        st.seconds_split += time.monotonic() - t
        return Verdict("proved", "bounds", "closed by bounds")
    r = reduce_on_set(net, InputSet([sub]), max_leaves=opt.reduce_leaves)
    delta = float(r.discrepancy)
    st.seconds_reduce += time.monotonic() - t
    t = time.monotonic()
    v = backend.check(Query(r.reduced, InputSet([sub]), prop=widen(unsafe, delta), timeout=max(0.01, deadline - t)))
    st.seconds_backend += time.monotonic() - t
    rec = LeafRecord(box.lower.tolist(), box.upper.tolist(), r.reduced.n_hidden, delta, v.verdict, round(v.seconds, 3), v.reason)
    st.leaves.append(rec)
    if v.verdict != "violated":
        return v
    x = replays(net, sub, unsafe, v.counterexample)
    if x is not None:
        return Verdict("violated", backend.name, f"{backend.name} on a reduced leaf, replayed on the original", counterexample=x)
    q = Query(net, InputSet([sub]), prop=unsafe, seed=int(rng.integers(1 << 30)))
    left = max(0.0, min(opt.seed_seconds, deadline - time.monotonic()))
    x = _falsify(q, left, rng, st, seeds=[np.asarray(v.counterexample, dtype=np.float64)])
    if x is not None:
        return Verdict("violated", backend.name, "falsifier on the original, seeded by the reduced leaf's counterexample",
                       counterexample=x)
    rec.verdict, rec.reason = "unknown", "reduced counterexample not reproduced on the original"
    return Verdict("unknown", backend.name, rec.reason)
