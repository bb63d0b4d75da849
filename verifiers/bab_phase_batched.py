"""Batched ReLU-phase branch and bound on ``f - g`` for aligned pairs inside one input box
(DESIGN.md §5, §11; issue 14: tight certificates on wide inputs such as MNIST's 784, where
bisecting the input box does not pay and an LP per node (:mod:`lumpver.verifiers.bab_phase`) is too slow).

Sub-problems are the box plus fixed phases of some neuron pairs (:mod:`lumpver.bounds.diff_phase`),
bounded many per numpy pass. Best-first on the norm bound: each round takes the ``batch`` worst open
leaves, splits each on the pair its bound chose (BaBSR-style score on the worst row) into the four
phase combinations, and bounds the children together. A leaf is closed when its bound is at most
``threshold()`` (read every round: ``bound`` raises it as witnesses come in) or it is empty. The search
stops when every leaf is closed, at ``max_nodes`` sub-problems (deterministic: certification), or at
the deadline. Candidate points (the vertex maximising each bounded sub-problem's worst linear row)
go to ``witness``.

:func:`lp_refine` runs the LP phase search (:mod:`lumpver.verifiers.bab_phase`) on each region afterwards
and keeps, per region, the tighter of the two trees (bench/RESULTS.md, issue 14: neither wins on every box).

Evidence: the split tree in preorder (:func:`lumpver.bounds.diff_phase.tree_leaves`), replayed by
:func:`lumpver.bounds.diff_phase.replay` in :mod:`lumpver.certificates.bounded_bab`.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np

from lumpver.bounds.blas import blas_single_thread
from lumpver.bounds.diff_batched import ITERS, LR, REFINE, DiffModel, Refine, prepare_diff
from lumpver.bounds.diff_phase import PhaseBounds, expand, root_bounds, row, supported
from lumpver.bounds.region import region_box
from lumpver.bounds.rounding import rounding_policy
from lumpver.ir.network import Network
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.bab_phase import PairNet, finish_leaf
from lumpver.verifiers.interval import point_distance

#: without a threshold the search stops once the bound is within this relative gap of the attained value
GAP_REL = 1e-3


@dataclass
class PhaseOptions:
    """Search knobs (bench/RESULTS.md, "Branch and bound on f - g", MNIST 256x2)."""

    batch: int = 12  # open leaves split per round (4 children each: one numpy pass of 48)
    max_nodes: int = 2000  # sub-problems bounded at most per box
    iters: int = ITERS
    lr: float = LR
    refine: Refine = REFINE  # the root's intermediate bounds (children start from them)
    child_refine: Refine = Refine()
    heartbeat: float = 3.0


@dataclass
class PhaseTreeResult:
    """``upper``: sound bound of the norm on the box; ``tree``: preorder evidence."""

    upper: float
    tree: list[int]
    nodes: int
    open_leaves: int
    stopped: str = ""


class _Nodes:
    def __init__(self) -> None:
        self.ph: list = []  # layer bounds (PairLayers, batch of one) per node
        self.rows: list[np.ndarray] = []  # upper bounds of +-(f - g) per node
        self.value: list[float] = []
        self.split: list[int] = []  # chosen pair (flat), -1 none
        self.kids: dict[int, list[int]] = {}
        self.done: dict[int, int] = {}  # node -> pair it was split on

    def add(self, ph, rows: np.ndarray, value: float, split: int) -> int:
        self.ph.append(ph)
        self.rows.append(rows)
        self.value.append(value)
        self.split.append(split)
        return len(self.ph) - 1

    def leaves(self) -> list[int]:
        out, stack = [], [0]
        while stack:
            i = stack.pop()
            if i in self.kids:
                stack.extend(self.kids[i])
            else:
                out.append(i)
        return out

    def preorder(self) -> list[int]:
        out, stack = [], [0]
        while stack:
            i = stack.pop()
            out.append(self.done.get(i, -1))
            if i in self.kids:
                stack.extend(reversed(self.kids[i]))
        return out


def phase_search(model: DiffModel, lo: np.ndarray, hi: np.ndarray, norm: str, threshold: Callable[[], float],
                 deadline: float, opt: PhaseOptions = PhaseOptions(),
                 witness: Optional[Callable[[np.ndarray], None]] = None,
                 progress: Progress = SILENT) -> PhaseTreeResult:
    """Best-first batched phase branch and bound on the box ``[lo, hi]`` (module docstring)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    nodes = _Nodes()

    def keep(pb: PhaseBounds) -> list[int]:
        if witness is not None:
            witness(np.where(pb.A_x[~pb.empty] > 0, hi, lo))
        return [nodes.add(row(pb.trace, b), pb.rows[b], float(pb.value[b]), int(pb.split[b])) for b in range(pb.value.size)]

    root = keep(root_bounds(model, lo, hi, norm, opt.iters, opt.lr, opt.refine))[0]
    heap = [(-nodes.value[root], root)]
    stopped, beat, t0 = "", time.monotonic(), time.monotonic()
    while heap and -heap[0][0] > threshold():
        if len(nodes.ph) >= opt.max_nodes:
            stopped = f"node cap {opt.max_nodes} reached"
            break
        if time.monotonic() > deadline:
            stopped = "timeout"
            break
        parents, stuck = [], []
        while heap and len(parents) < opt.batch and -heap[0][0] > threshold():
            i = heapq.heappop(heap)[1]
            (parents if nodes.split[i] >= 0 else stuck).append(i)
        if stuck and not parents:
            heap.extend((-nodes.value[i], i) for i in stuck)
            stopped = "an open sub-problem has every pair fixed or stable"
            break
        ids = keep(expand(model, lo, hi, [nodes.ph[p] for p in parents], [nodes.split[p] for p in parents],
                          np.array([nodes.rows[p] for p in parents]), norm, opt.iters, opt.lr, opt.child_refine))
        for n, p in enumerate(parents):
            nodes.done[p], nodes.kids[p] = nodes.split[p], ids[4 * n:4 * n + 4]
        for i in ids + stuck:
            heapq.heappush(heap, (-nodes.value[i], i))
        if time.monotonic() - beat > opt.heartbeat:
            beat = time.monotonic()
            progress.say(f"phase search: worst open {-heap[0][0]:.4g}, {len(nodes.ph)} of {opt.max_nodes} sub-problems, "
                         f"{time.monotonic() - t0:.0f} s, {max(0.0, deadline - time.monotonic()):.0f} s left")
    leaves = nodes.leaves()
    upper = max(nodes.value[i] for i in leaves)
    n_open = sum(nodes.value[i] > threshold() for i in leaves)
    return PhaseTreeResult(upper, nodes.preorder(), len(nodes.ph), n_open, "" if n_open == 0 else stopped)


@dataclass
class PhaseRun:
    """The search on every region of an input set: the certified bound, ``bab_diff`` evidence, the
    largest float64 value of the norm of ``f - g`` reached at a candidate point (a lower bound of the
    true maximum, not a bound) and that point."""

    upper: float
    evidence: dict[str, Any]
    attained: float
    x_best: Optional[np.ndarray]


def phase_difference(f: Network, g: Network, input_set: InputSet, norm: str, threshold: Optional[float],
                     timeout: float, opt: PhaseOptions = PhaseOptions(), progress: Progress = SILENT,
                     model: Optional[DiffModel] = None, known_lower: float = 0.0) -> PhaseRun:
    """The search on every region's box (time shared evenly), as ``bab_diff`` evidence whose regions are
    unsplit boxes carrying a ``phase_batched`` tree (:mod:`lumpver.certificates.bounded_bab` replays it).
    ``threshold`` None: close leaves within :data:`GAP_REL` of the attained value or ``known_lower``
    (``bound``: the falsifier's).
    ValueError for pairs it cannot take."""
    model = model if model is not None else prepare_diff(f, g, "delta")
    if not supported(model):
        raise ValueError("the batched phase search needs an aligned pair of ReLU networks")
    best: list = [0.0, None]
    t_end = time.monotonic() + timeout
    regions = []

    def close() -> float:
        return threshold if threshold is not None else max(best[0], known_lower) * (1 + GAP_REL)

    with blas_single_thread():
        for i, region in enumerate(input_set.regions):
            box = region_box(region)

            def witness(pts: np.ndarray, region=region) -> None:
                pts = pts[[region.contains(p) for p in pts]]
                if len(pts):
                    d = point_distance(f.forward(pts), g.forward(pts), norm)
                    j = int(np.argmax(d))
                    if d[j] > best[0]:
                        best[:] = [float(d[j]), pts[j].copy()]

            deadline = time.monotonic() + (t_end - time.monotonic()) / (len(input_set.regions) - i)
            res = phase_search(model, box.lower, box.upper, norm, close, deadline, opt, witness, progress)
            regions.append({"tree": [-1], "bound": res.upper, "boxes": res.nodes, "open_boxes": res.open_leaves,
                            "phase_batched": res.tree, **({"stopped": res.stopped} if res.stopped else {})})
    upper = max(r["bound"] for r in regions)
    ev = {"pairing": "delta", "iters": opt.iters, "lr": opt.lr, "refine": asdict(opt.refine),
          "child_refine": asdict(opt.child_refine), "rounding": rounding_policy(), "upper_bound": upper,
          "regions": regions, "attained": best[0]}
    return PhaseRun(upper, ev, best[0], best[1])


def lp_refine(run: PhaseRun, model: DiffModel, input_set: InputSet, threshold: float, deadline: float,
              max_lps: int, progress: Progress = SILENT) -> PhaseRun:
    """The LP phase search (:func:`lumpver.verifiers.bab_phase.finish_leaf`: every node an LP over both
    networks, which sees that mixed-phase children are slivers) on each region's box with the time left;
    where it bounds the region lower than the batched tree, the region's evidence becomes an unsplit box
    with that LP tree (``phase``: replayed by :mod:`lumpver.certificates.bounded_bab`) and the bound the
    smaller. Aligned ReLU pairs in linf only (others: ``run`` unchanged). bench/RESULTS.md, issue 14:
    neither search wins on every MNIST box, so both run."""
    net = PairNet.of(model)
    if net is None or run.evidence.get("pairing") != "delta":
        return run
    refine = Refine(**run.evidence["refine"])
    regions = list(run.evidence["regions"])
    with blas_single_thread():
        for i, region in enumerate(input_set.regions):
            left = (deadline - time.monotonic()) / (len(regions) - i)
            if left <= 0.5 or regions[i]["bound"] <= threshold:
                continue
            box = region_box(region)
            lo, hi = np.asarray(box.lower, np.float64), np.asarray(box.upper, np.float64)
            res = finish_leaf(net, model, lo, hi, refine, lambda: threshold, time.monotonic() + left, max_lps)
            progress.say(f"LP phase search: region {i}: {res.upper:.4g} ({res.nodes} nodes, {res.lps} LPs) vs "
                         f"batched {regions[i]['bound']:.4g}")
            if res.upper < regions[i]["bound"]:  # a norm: at least 0 (every node empty gives -inf)
                regions[i] = {"tree": [-1], "bound": max(0.0, res.upper), "boxes": res.nodes,
                              "open_boxes": int(res.upper > threshold), "phase": [[0, res.tree]]}
    upper = max(r["bound"] for r in regions)
    return PhaseRun(upper, {**run.evidence, "regions": regions, "upper_bound": upper}, run.attained, run.x_best)
