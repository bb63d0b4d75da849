"""Back-end ``bab_diff``: branch and bound on ``f - g`` with batched, optimised differential bounds
(DESIGN.md §5, §11; issue 13 item 4, issue 14 item 1).

Per region, the region's box is bisected along input dimensions; every box gets sound per-output
bounds of ``f - g`` from :func:`lumpver.bounds.diff_batched.bound_boxes` (NeuroDiff's delta chain
of the aligned pair, or the product network ``[f; g]`` for unlike pairs and where it bounds small boxes
tighter, :func:`choose_pairing`: retrained or distilled copies; alpha-optimised slopes,
on boxes with few unstable ReLUs alpha-optimised intermediate bounds too; outward rounding), many
boxes per numpy pass, with one OpenBLAS thread (:mod:`lumpver.bounds.blas`). The worst open boxes
(largest norm bound) are split first: with a low-dimensional input (``<= try_all_dims``), at depths
that are multiples of ``try_all_every`` both halves of every dimension get plain bounds (no
refinement: cheap), the dimension whose worse half is best wins and its two halves are re-bounded
as the checker will; otherwise the dimension with the largest ``|linear coefficient| x width`` of
the open rows.
A box is closed when its bound is ``<= threshold`` (``compare``: epsilon; ``bound``: the best
attained value, which rises during the search, so ``bound`` never stops while time is left and
the gap is open).

Lower bound: on clock runs a falsifier on ``||f - g||`` (sampling and PGD restarts) once the search is
still open after a few per cent of its time; and each bounded box's candidate points (per row whose bound exceeds the best attained
value, the vertex maximising its linear bound; and the centre) are evaluated in float64 and the best is kept; a counterexample for
``epsilon`` needs a float32 point inside the region whose violation the float64 and float32
forward passes both show (the command layer replays it on the ONNX files).

Evidence (certificates): per region the bisection tree in preorder (``-1`` a leaf, ``d >= 0`` the
node is bisected at the midpoint of dimension ``d``), the bound settings (Adam steps, the
intermediate-bound refinement), and the claimed bound;
:mod:`lumpver.certificates.bounded_bab` rebuilds the leaves and re-bounds each one.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Optional

import numpy as np

from lumpver.bounds.blas import blas_single_thread, fork_pool
from lumpver.bounds.diff_batched import ITERS, LR, REFINE, DiffModel, Refine, bound_boxes, halves, prepare_diff
from lumpver.bounds.region import region_box
from lumpver.bounds.rounding import norm_hi, rounding_policy
from lumpver.ir.network import Network
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import Box, InputSet
from lumpver.bounds.diff_phase import supported
from lumpver.verifiers.bab_phase import PairNet, PhaseResult, Tighten, finish_leaf, worker_init, worker_leaf
from lumpver.verifiers.bab_phase_batched import phase_difference
from lumpver.verifiers.base import Query, Verdict
from lumpver.verifiers.falsify import search as falsify_search
from lumpver.verifiers.falsify import to_float32_inside
from lumpver.verifiers.interval import REPORT_MARGIN, point_distance

NORMS = ("linf", "l1", "l2")
#: without epsilon the search stops once the bound is within this relative gap of the attained value
GAP_REL = 1e-3
#: inputs wider than this (MNIST) are searched by ReLU-phase splits of aligned ReLU pairs (_phase_regions)
PHASE_DIMS = 64
#: LPs a phase-split leaf costs at least (its tightening and root LPs on ACAS Xu: 60-110): with a target, the
#: phase stage is skipped when its budget cannot pay this for every open leaf
PHASE_LEAF_MIN_LPS = 60
#: a leaf bisected ``phase_bisect`` times gets this many times ``phase_leaf_lps`` before the stage gives up on it
PHASE_LAST_BOOST = 4
#: leaves in flight per phase-stage worker (DiffOptions.workers > 1): a worker that finishes takes a queued leaf
#: while the main process waits for the oldest; and seconds past the deadline the main process waits for one
PHASE_IN_FLIGHT, PHASE_GRACE = 2, 5.0


@dataclass
class DiffOptions:
    """Search knobs (measured on ACAS Xu pairs, bench/bench_diff.py)."""

    batch: int = 24  # open boxes split per round
    try_all_dims: int = 8  # bound both halves of every dimension up to this many inputs
    try_all_every: int = 3  # ... at depths that are multiples of this (3: least work on the ACAS Xu pairs)
    max_boxes: int = 400_000  # boxes bounded at most per region (memory); beyond: stop
    #: rounds of ``batch`` parents whatever the time, so that a box cap (not the clock) ends the search and
    #: the same pair gets the same bound twice (certification of a reduction, then of the written file)
    deterministic: bool = False
    #: optimised intermediate bounds where the plain bound leaves a box open (recorded in the evidence)
    refine: Refine = REFINE
    #: pairs with fewer hidden neurons (f's) search without refinement and try all dimensions every second
    #: depth: on 100 random 3-input pairs of 8-14 neurons at 0.2 s, 97 of 200 compare queries decided
    #: (median bound / exact 1.32) vs 66 (1.78) with refinement and 98 (1.45) every third depth
    small_pair: int = 64
    #: ReLU-phase branch and bound with LP nodes (:mod:`lumpver.verifiers.bab_phase`) on the worst open
    #: leaves of aligned ReLU pairs in linf: share of the region's time (clock), or with ``deterministic``
    #: LPs per region (0: none; certification of reductions keeps its box cap), and LPs per leaf at most
    phase_share: float = 0.3
    phase_lps: int = 0
    phase_leaf_lps: int = 300
    #: LP-tightened root bounds per phase-split leaf (recorded in the evidence: the checker repeats it); "live":
    #: not the neurons that feed nothing (a pruned twin's dropped ones) nor their pairs (bab_phase.TIGHTEN_MODES)
    phase_tighten: Tighten = True
    #: bisections of a leaf the phase search leaves open, before the stage gives up on it (3 left one leaf of
    #: the 2_3 candidate at 62 neurons open, 6 certified it: bench/RESULTS.md 2026-12-01)
    phase_bisect: int = 6
    #: boxes the phase stage may add by those bisections beyond ``max_boxes``
    phase_boxes: int = 4000
    #: processes of the phase stage (> 1: a fork pool, one BLAS thread each; the leaves are independent). The
    #: trees then differ from one process's (leaves start before earlier ones' witnesses and bisections are in)
    #: but not from run to run; the evidence is what the checker replays either way
    workers: int = 1
    #: share of each region's time (clock runs only) for a falsifier on ``||f - g||``: sampling, then
    #: rounds of momentum PGD from fresh starts (:func:`lumpver.verifiers.falsify.search` with restarts),
    #: until a confirmed counterexample or the share is spent; it runs once the search is still open after
    #: ``falsify_after`` of the time (quick proofs, e.g. 1_1 vs its on-set reduction in ~1 s, pay nothing;
    #: refutations come early; the attained value it reaches closes boxes of ``bound`` sooner)
    falsify_share: float = 0.1
    falsify_after: float = 0.03
    heartbeat: float = 3.0
    progress: Progress = field(default=SILENT, repr=False)


@dataclass
class DiffResult:
    """Outcome on one region (see the module docstring)."""

    upper: float  # certified sup of the norm over the region's box
    lower: float  # best attained float64 value
    x_best: Optional[np.ndarray]
    proved: bool  # every leaf <= threshold
    tree: list[int]
    boxes: int
    open_boxes: int
    stopped: str = ""
    counterexample: Optional[np.ndarray] = None
    phase: list = field(default_factory=list)  # [leaf index in preorder, phase tree] of the leaves phase-split


class _Tree:
    """The bisection tree: node boxes, split dimensions, bounds."""

    def __init__(self, box: Box) -> None:
        self.lo, self.hi = [box.lower.astype(np.float64)], [box.upper.astype(np.float64)]
        self.split: list[int] = [-1]
        self.kids: list[tuple[int, int]] = [(-1, -1)]
        self.bound: list[float] = [np.inf]
        self.depth: list[int] = [0]
        self.infl: list[np.ndarray] = [np.ones(box.dim)]

    def add(self, lo: np.ndarray, hi: np.ndarray, depth: int) -> int:
        self.lo.append(lo)
        self.hi.append(hi)
        self.split.append(-1)
        self.kids.append((-1, -1))
        self.bound.append(np.inf)
        self.depth.append(depth)
        self.infl.append(np.ones(lo.size))
        return len(self.lo) - 1

    def leaf_ids(self) -> list[int]:
        """The leaves of the tree (try-all candidates of dimensions not chosen are not in it), in the
        order :func:`lumpver.bounds.diff_batched.leaves_of` rebuilds them."""
        out, stack = [], [0]
        while stack:
            i = stack.pop()
            if self.split[i] < 0:
                out.append(i)
            else:
                stack.extend(reversed(self.kids[i]))
        return out

    def preorder(self) -> list[int]:
        out, stack = [], [0]
        while stack:
            i = stack.pop()
            out.append(self.split[i])
            if self.split[i] >= 0:
                stack.extend(reversed(self.kids[i]))
        return out


def norm_bounds(lower: np.ndarray, upper: np.ndarray, norm: str) -> np.ndarray:
    """Per box, the rounded-up norm bound of ``f - g`` from per-output bounds (rows of ``lower``/``upper``)."""
    return norm_hi(np.maximum(np.abs(lower), np.abs(upper)), norm) * (1.0 + REPORT_MARGIN)


@dataclass
class _PhaseState:
    """The phase stage's LP budget left, bisections per leaf, open leaves (heap), whether it has a target, and
    the phase trees per leaf."""

    budget: int
    extra: dict[int, int]
    heap: list[tuple[float, int]]
    target: bool  # a fixed threshold to meet (epsilon or close_at): stop at the first leaf that cannot
    trees: dict[int, list[int]] = field(default_factory=dict)
    searched: int = 0  # leaves whose phase search returned (for the heartbeat)
    lps: int = 0  # LPs those searches used


class _Search:
    def __init__(self, f: Network, g: Network, model: DiffModel, region, norm: str, epsilon: Optional[float],
                 deadline: float, opt: DiffOptions, known_lower: float = 0.0, close_at: float = 0.0) -> None:
        self.f, self.g, self.model, self.region, self.norm = f, g, model, region, norm
        self.eps, self.deadline, self.opt, self.close_at = epsilon, deadline, opt, close_at
        self.box = region_box(region)
        self.tree = _Tree(self.box)
        self.lower, self.x_best = float(known_lower), None
        self.cex: Optional[np.ndarray] = None
        self._beat = self._beat0 = time.monotonic()
        use = norm == "linf" and opt.phase_share > 0 and (opt.phase_lps > 0 or not opt.deterministic)
        self.phase_net = PairNet.of(model) if use else None
        self.box_deadline = deadline if self.phase_net is None else \
            self._beat + (1.0 - opt.phase_share) * (deadline - self._beat)
        self.phase: list = []
        self._per_box = 0.0  # seconds per bounded box (largest seen), to end rounds before the deadline
        self._falsify_at = None if opt.falsify_share <= 0 or opt.deterministic else \
            self._beat + opt.falsify_after * (deadline - self._beat)

    @property
    def threshold(self) -> float:
        return self.eps if self.eps is not None else max(self.lower * (1.0 + GAP_REL), self.close_at)

    # ----- bounding ---------------------------------------------------------------------------
    def _bound(self, ids: list[int], iters: int, refine: Optional[Refine] = None) -> np.ndarray:
        """Bound the boxes ``ids``: plain bounds, refined (``refine``, default the options') where they
        exceed the threshold. The checker re-bounds every leaf with ``iters`` = ITERS, refined where
        the plain bound exceeds the claimed bound, which is at least the threshold of any leaf the
        search left plain, so it finds every leaf within the claim."""
        t = self.tree
        lo, hi = np.stack([t.lo[i] for i in ids]), np.stack([t.hi[i] for i in ids])
        t0 = time.monotonic()
        bb = bound_boxes(self.model, lo, hi, iters, refine=self.opt.refine if refine is None else refine,
                         done=lambda b: norm_bounds(b.lower, b.upper, self.norm) <= self.threshold)
        self._per_box = max(self._per_box, (time.monotonic() - t0) / len(ids))
        vals = norm_bounds(bb.lower, bb.upper, self.norm)
        rows = np.concatenate([bb.upper, -bb.lower], axis=1)  # (B, 2m) upper bounds of +-(f - g)
        for j, i in enumerate(ids):
            t.bound[i] = float(vals[j])
            t.infl[i] = np.max(np.abs(bb.A_x[j]), axis=0) * (hi[j] - lo[j])
        b, r = np.nonzero(rows > self.lower)  # the vertex maximising each row's linear bound that could beat it
        self._witness(np.vstack([np.where(bb.A_x[b, r] > 0, hi[b], lo[b]), 0.5 * (lo + hi)]))
        return vals

    def _witness(self, pts: np.ndarray) -> None:
        inside = np.array([self.region.contains(p) for p in pts], dtype=bool)
        pts = pts[inside]
        if not len(pts):
            return
        d = point_distance(self.f.forward(pts), self.g.forward(pts), self.norm)
        j = int(np.argmax(d))
        if d[j] > self.lower:
            xf = to_float32_inside(pts[j], self.region)
            self.lower, self.x_best = float(d[j]), (pts[j] if xf is None else xf).copy()
        if self.eps is not None and self.cex is None and d[j] > self.eps:
            xf = to_float32_inside(pts[j], self.region)
            if xf is not None and all(
                    point_distance(self.f.forward(xf, dt).astype(np.float64), self.g.forward(xf, dt).astype(np.float64),
                                   self.norm)[0] > self.eps for dt in (np.float64, np.float32)):
                self.cex = xf

    # ----- splitting --------------------------------------------------------------------------
    def _split(self, parents: list[int]) -> list[int]:
        t, n = self.tree, self.box.dim
        try_all = [p for p in parents if n <= self.opt.try_all_dims and t.depth[p] % self.opt.try_all_every == 0]
        dims = {p: int(np.argmax(t.infl[p])) if np.max(t.infl[p]) > 0 else int(np.argmax(t.hi[p] - t.lo[p]))
                for p in parents if p not in set(try_all)}
        if try_all:
            cands = [(p, d, h) for p in try_all for d in range(n) for h in halves(t.lo[p], t.hi[p], d)]
            ids = [t.add(lo, hi, t.depth[p] + 1) for p, _, (lo, hi) in cands]
            vals = self._bound(ids, 0, Refine()).reshape(len(try_all), n, 2).max(axis=2)
            for j, p in enumerate(try_all):
                dims[p] = int(np.argmin(vals[j]))
            chosen = {(p, dims[p]) for p in try_all}
            made = {}
            for (p, d, _), i in zip(cands, ids):
                if (p, d) in chosen:
                    made.setdefault(p, []).append(i)
        else:
            made = {}
        fresh = []
        for p in parents:
            d = dims[p]
            if p not in made:
                made[p] = [t.add(lo, hi, t.depth[p] + 1) for lo, hi in halves(t.lo[p], t.hi[p], d)]
                fresh.extend(made[p])
            elif self.opt.refine.iters > 0:  # open chosen candidates get the refined bound the checker computes
                fresh.extend(i for i in made[p] if t.bound[i] > self.threshold)
            t.split[p], t.kids[p] = d, (made[p][0], made[p][1])
        if fresh:  # without refinement try-all children keep their plain bound (slope optimisation: ~2 % on ACAS Xu)
            self._bound(fresh, ITERS)
        return [i for p in parents for i in made[p]]

    # ----- the loop ---------------------------------------------------------------------------
    def run(self) -> DiffResult:
        t = self.tree
        self._bound([0], ITERS)  # the checker re-bounds every leaf, the root included, with ITERS
        heap = [(-t.bound[0], 0)]
        stopped = ""
        while heap and self.cex is None:
            if -heap[0][0] <= self.threshold:
                break
            if time.monotonic() > self.box_deadline:
                stopped = "timeout"
                break
            if self._target_missed():
                stopped = self._missed_reason()
                break
            if len(t.lo) > self.opt.max_boxes:
                stopped = f"box cap {self.opt.max_boxes} reached"
                break
            parents, cap = [], self._affordable()
            if cap == 0:
                stopped = "timeout"
                break
            while heap and len(parents) < cap and -heap[0][0] > self.threshold:
                parents.append(heapq.heappop(heap)[1])
            parents, flat = [p for p in parents if np.any(t.hi[p] > t.lo[p])], [p for p in parents if not np.any(t.hi[p] > t.lo[p])]
            if flat:  # a point box that stays open: nothing left to split
                heap.extend((-t.bound[p], p) for p in flat)
                heapq.heapify(heap)
                stopped = "cannot split a point box"
                break
            for i in self._split(parents):
                heapq.heappush(heap, (-t.bound[i], i))
            self._heartbeat(heap)
            if self._falsify_at is not None and time.monotonic() > self._falsify_at:
                self._falsify()
        if self.phase_net is not None and self.cex is None and not self._target_missed() and \
                (not heap or -heap[0][0] > self.threshold):
            self._phase_stage()
            stopped = self._missed_reason() if self._target_missed() else stopped
        return self._result(heap, stopped)

    def _target_missed(self) -> bool:
        """A value above the target ``close_at`` was attained (no epsilon): no bound can meet it."""
        return self.eps is None and 0 < self.close_at < self.lower

    def _missed_reason(self) -> str:
        return f"attained {self.lower:.6g} above the target {self.close_at:.6g}"

    def _falsify(self) -> None:
        """The falsifier on the region for ``falsify_share`` of its time (once)."""
        start, self._falsify_at = time.monotonic(), None
        eps = self.eps if self.eps is not None else np.inf
        q = Query(self.f, InputSet([self.region]), other=self.g, epsilon=eps, norm=self.norm)
        res = falsify_search(q, deadline=start + self.opt.falsify_share * (self.deadline - self._beat0), restarts=1 << 20)
        if res.best_x is not None and res.best_value > self.lower:
            self.lower, self.x_best = float(res.best_value), np.asarray(res.best_x, dtype=np.float64).copy()
        if res.counterexample is not None and self.eps is not None:
            self.cex = np.asarray(res.counterexample, dtype=np.float64)
        self.opt.progress.say(f"bab_diff: falsifier {time.monotonic() - start:.1f} s, attained {self.lower:.4g}")

    def _phase_stage(self) -> None:
        """Phase branch and bound (:mod:`lumpver.verifiers.bab_phase`) on the open leaves, worst first (the
        least closeable: the bound is the max over leaves, so a target that cannot be met fails early),
        until the deadline or the LP budget; each leaf's bound becomes the smaller of the two. A leaf the
        phase search leaves open is bisected (up to ``phase_bisect`` times, the halves bounded as in the
        box search) and its halves phase-searched in turn: halving a hard ACAS Xu leaf cut its LPs 2-4x.
        With a target (``epsilon`` or ``close_at``) the stage stops at the first leaf it cannot close.
        With ``workers`` > 1 up to ``PHASE_IN_FLIGHT x workers`` leaves run in a fork pool (:func:`_submit`)."""
        t, opt = self.tree, self.opt
        extra = {i: 0 for i in t.leaf_ids()}
        st = _PhaseState(opt.phase_lps if opt.deterministic else 1 << 40, extra,
                         [(-t.bound[i], i) for i in extra if t.bound[i] > self.threshold],
                         self.eps is not None or self.close_at >= self.threshold)
        if st.target and len(st.heap) * PHASE_LEAF_MIN_LPS > st.budget:
            return  # the budget cannot close every open leaf: the target fails anyway
        heapq.heapify(st.heap)
        with ExitStack() as stack:
            pool = None if opt.workers <= 1 else stack.enter_context(
                fork_pool(opt.workers, worker_init, (self.phase_net, self.model, opt.refine, opt.phase_tighten)))
            flight: deque = deque()
            while True:
                self._submit(pool, flight, st)
                if not flight:
                    break
                leaf, allotted, job = flight.popleft()
                res = self._wait(job) if pool is not None else job()
                if res is None:  # a worker past the deadline
                    break
                st.budget += allotted - res.lps
                if not self._phase_result(leaf, res, st):
                    break
        pos = {leaf: n for n, leaf in enumerate(t.leaf_ids())}
        self.phase = [[pos[leaf], tree] for leaf, tree in sorted(st.trees.items(), key=lambda it: pos[it[0]])]

    def _submit(self, pool, flight: deque, st: "_PhaseState") -> None:
        """Pop open leaves, worst first, into ``flight`` while it has room (1 leaf without a pool, else
        PHASE_IN_FLIGHT per worker), each with the current threshold (a value: it only rises, and a tree that
        closes at a lower one closes at a higher one) and its LPs debited from the budget up front (the unused
        ones are given back with its result). Results are taken in submission order and leaves are submitted
        only then, so the trees do not depend on which worker finishes first (``deterministic`` runs repeat)."""
        t, opt = self.tree, self.opt
        room = 1 if pool is None else PHASE_IN_FLIGHT * opt.workers
        while len(flight) < room and st.heap and st.budget > 0 and time.monotonic() < self.deadline and \
                self.cex is None:
            leaf = heapq.heappop(st.heap)[1]
            if t.bound[leaf] <= self.threshold:
                continue
            last = st.extra[leaf] >= opt.phase_bisect  # no bisection left: the leaf's last chance
            lps = min(st.budget, opt.phase_leaf_lps * (PHASE_LAST_BOOST if last else 1))
            st.budget -= lps
            args = (t.lo[leaf], t.hi[leaf], self.threshold, self.deadline, lps)
            job = pool.apply_async(worker_leaf, args) if pool is not None else partial(self._finish, *args)
            flight.append((leaf, lps, job))

    def _finish(self, lo: np.ndarray, hi: np.ndarray, threshold: float, deadline: float, lps: int) -> PhaseResult:
        return finish_leaf(self.phase_net, self.model, lo, hi, self.opt.refine, lambda: threshold, deadline, lps,
                           self.opt.phase_tighten)

    def _wait(self, job) -> Optional[PhaseResult]:
        """A worker's result (its exception re-raised here), None once PHASE_GRACE s past the deadline."""
        import multiprocessing

        try:
            return job.get(max(0.0, self.deadline + PHASE_GRACE - time.monotonic()))
        except multiprocessing.TimeoutError:
            return None

    def _phase_result(self, leaf: int, res: PhaseResult, st: "_PhaseState") -> bool:
        """Take one leaf's phase search: witnesses, its bound and tree, bisection of a leaf left open. False:
        the stage stops (a target it cannot meet)."""
        t, opt = self.tree, self.opt
        if res.points:
            self._witness(np.clip(np.array(res.points), t.lo[leaf], t.hi[leaf]))
        st.searched, st.lps = st.searched + 1, st.lps + res.lps
        self._heartbeat_phase(res, st)
        if res.upper < t.bound[leaf]:
            t.bound[leaf], st.trees[leaf] = res.upper, res.tree
        if self._target_missed() or (self.eps is not None and self.lower > self.eps):
            return False  # a witness above the target (also one found after the stage started without a fixed
            # target, the attained value then being within GAP_REL below close_at): no leaf left can change that
        if t.bound[leaf] <= self.threshold:
            return True
        if st.budget > 0 and st.extra[leaf] < opt.phase_bisect and np.any(t.hi[leaf] > t.lo[leaf]) and \
                len(t.lo) < opt.max_boxes + opt.phase_boxes:
            st.trees.pop(leaf, None)
            for kid in self._split([leaf]):
                st.extra[kid] = st.extra[leaf] + 1
                if t.bound[kid] > self.threshold:
                    heapq.heappush(st.heap, (-t.bound[kid], kid))
            return True
        return not st.target

    def _affordable(self) -> int:
        """Parents one round can split before the deadline (at most ``batch``)."""
        if self.opt.deterministic:
            return self.opt.batch
        per_parent = (2 * self.box.dim + 2 if self.box.dim <= self.opt.try_all_dims else 2) * self._per_box
        left = self.deadline - time.monotonic()
        return int(min(self.opt.batch, left / per_parent if per_parent > 0 else self.opt.batch))

    def _result(self, heap, stopped: str) -> DiffResult:
        t = self.tree
        upper = max(t.bound[i] for i in t.leaf_ids())
        proved = self.cex is None and upper <= self.threshold
        n_open = sum(t.bound[i] > self.threshold for i in t.leaf_ids())
        return DiffResult(upper, self.lower, self.x_best, proved, t.preorder(), len(t.lo), n_open,
                          "" if proved else stopped, self.cex, self.phase)

    def _heartbeat_phase(self, res: PhaseResult, st: "_PhaseState") -> None:
        """At most one line per ``heartbeat`` seconds: leaves searched and still open, LPs, worst open bound."""
        now = time.monotonic()
        if now - self._beat < self.opt.heartbeat:
            return
        self._beat = now
        worst = max(-st.heap[0][0] if st.heap else -np.inf, res.upper)
        self.opt.progress.say(f"bab_diff phase stage: {st.searched} leaves searched ({st.lps} LPs, {st.budget} left), "
                              f"{len(st.heap)} queued, worst open bound {worst:.4g} (target {self.threshold:.4g}), "
                              f"attained {self.lower:.4g}, {self.deadline - now:.0f} s left")

    def _heartbeat(self, heap) -> None:
        now = time.monotonic()
        if now - self._beat < self.opt.heartbeat:
            return
        self._beat = now
        self.opt.progress.say(f"bab_diff: {len(heap)} open boxes, {len(self.tree.lo)} bounded, worst bound "
                              f"{-heap[0][0]:.4g}, attained {self.lower:.4g}, {self.deadline - now:.0f} s left")


# ----- public API ----------------------------------------------------------------------------
def difference_search(f: Network, g: Network, input_set: InputSet, norm: str = "linf", timeout: float = 60.0,
                      epsilon: Optional[float] = None, known_lower: float = 0.0, options: Optional[DiffOptions] = None,
                      model: Optional[DiffModel] = None, close_at: float = 0.0
                      ) -> tuple[list[DiffResult], dict[str, Any]]:
    """Run the search on every region (time shared evenly among the regions still to do); with
    ``epsilon`` stop at a counterexample or once every box is within it, else refine until the bound
    meets the attained value (or ``close_at``, if larger) or time runs out. Returns the per-region
    results and the evidence (which covers the input set unless a counterexample ended the search)."""
    if norm not in NORMS:
        raise ValueError(f"bab_diff bounds the norms {NORMS}, not {norm!r}")
    opt = options or DiffOptions()
    model = model or choose_pairing(f, g, input_set, norm)
    if sum(layer.width for layer in f.layers[:-1]) < opt.small_pair:
        opt = replace(opt, refine=Refine(), try_all_every=2)
    if not opt.deterministic and norm == "linf" and input_set.dim > PHASE_DIMS and supported(model):
        return _phase_regions(f, g, input_set, epsilon if epsilon is not None else (close_at or None), timeout, opt,
                              model, known_lower)
    t_end = time.monotonic() + timeout
    results: list[DiffResult] = []
    with blas_single_thread():
        for i, region in enumerate(input_set.regions):
            deadline = time.monotonic() + (t_end - time.monotonic()) / (len(input_set.regions) - i)
            lower = max([known_lower] + [r.lower for r in results])
            results.append(_Search(f, g, model, region, norm, epsilon, deadline, opt, lower, close_at).run())
            if results[-1].counterexample is not None:
                break
    return results, evidence(model, results, opt.refine, opt.phase_tighten)


def _phase_regions(f: Network, g: Network, input_set: InputSet, threshold: Optional[float], timeout: float,
                   opt: DiffOptions, model: DiffModel, known_lower: float) -> tuple[list[DiffResult], dict[str, Any]]:
    """Wide inputs of an aligned ReLU pair: the batched ReLU-phase search on each region's box
    (:mod:`lumpver.verifiers.bab_phase_batched`; bisecting 784 inputs does not pay), as results of this
    search (no counterexample search: the falsifier of ``compare`` runs first)."""
    run = phase_difference(f, g, input_set, "linf", threshold, timeout, progress=opt.progress, model=model,
                           known_lower=known_lower)
    res = [DiffResult(r["bound"], run.attained, run.x_best, threshold is not None and r["bound"] <= threshold, [-1],
                      r["boxes"], r["open_boxes"], r.get("stopped", "")) for r in run.evidence["regions"]]
    return res, run.evidence


#: boxes per region on which :func:`choose_pairing` compares the pairings (with the region's box), their
#: width (share of the region's box per dimension), and the regions used at most
PAIRING_BOXES, PAIRING_WIDTH, PAIRING_REGIONS = 16, 1 / 8, 8


def choose_pairing(f: Network, g: Network, input_set: InputSet, norm: str = "linf") -> DiffModel:
    """The joint chain that bounds ``f - g`` tighter where the search spends its time: NeuroDiff's delta
    chain when the pair aligns, unless the product network ``[f; g]`` has the smaller median bound over
    each region's box and ``PAIRING_BOXES`` sub-boxes of ``PAIRING_WIDTH`` of its width per dimension at
    fixed random places (retrained or distilled copies of f's shape, whose neurons do not correspond;
    the root box alone misleads: on 1_1 vs its on-set reduction the product is 10 % tighter there and
    far looser on small boxes). Inputs wider than ``PHASE_DIMS`` are never bisected that far, so there
    the regions' boxes alone decide (mnist 8-bit prop_2: the sub-boxes chose the product, 1.08 at the
    root against 0.145 for the delta chain). Deterministic (fixed seed): certification, then the written
    file, get the same choice; the certificate records it (``pairing``). DESIGN.md §11."""
    model = prepare_diff(f, g)
    if model.kind != "delta":
        return model
    product = prepare_diff(f, g, "product")
    rng = np.random.default_rng(0)
    los, his = [], []
    for region in input_set.regions[:PAIRING_REGIONS]:
        box = region_box(region)
        w = PAIRING_WIDTH * (box.upper - box.lower)
        n_sub = PAIRING_BOXES if box.dim <= PHASE_DIMS else 0
        lo = box.lower + rng.uniform(0, 1, (n_sub, box.dim)) * (box.upper - box.lower - w)
        los.append(np.vstack([box.lower, lo]))
        his.append(np.vstack([box.upper, lo + w]))
    lo, hi = np.vstack(los), np.vstack(his)
    med = [float(np.median(norm_bounds(b.lower, b.upper, norm))) for b in (bound_boxes(m, lo, hi) for m in (model, product))]
    return product if med[1] < med[0] else model


def evidence(model: DiffModel, results: list[DiffResult], refine: Refine = Refine(),
             phase_tighten: Tighten = False) -> dict[str, Any]:
    """What :mod:`lumpver.certificates.bounded_bab` needs to re-bound every leaf."""
    tight = {"phase_tighten": phase_tighten} if phase_tighten and any(r.phase for r in results) else {}
    return {"pairing": model.kind, "iters": ITERS, "lr": LR, "refine": asdict(refine), "rounding": rounding_policy(), **tight,
            "upper_bound": max(r.upper for r in results),
            "regions": [{"tree": r.tree, "bound": r.upper, "boxes": r.boxes, "open_boxes": r.open_boxes,
                         **({"stopped": r.stopped} if r.stopped else {}), **({"phase": r.phase} if r.phase else {})}
                        for r in results]}


class BabDiffBackend:
    """Back-end ``bab_diff`` (module docstring): equivalence queries in linf, l1, l2."""

    name = "bab_diff"

    def __init__(self, options: Optional[DiffOptions] = None) -> None:
        self.options = options or DiffOptions()

    def check(self, query: Query) -> Verdict:
        t0 = time.monotonic()
        v = self._check(query)
        v.seconds = time.monotonic() - t0
        return v

    def _check(self, q: Query) -> Verdict:
        if q.other is None or q.norm not in NORMS:
            return Verdict("unknown", self.name, f"bab_diff decides equivalence in {', '.join(NORMS)} only")
        opt = self.options if q.quiet else DiffOptions(**{**self.options.__dict__, "progress": Progress(False)})
        try:
            res, ev = difference_search(q.network, q.other, q.input_set, q.norm, q.timeout, float(q.epsilon),
                                        options=opt)
        except ValueError as exc:  # unpairable networks, unbounded polytope
            return Verdict("unknown", self.name, str(exc))
        ub, lb = max(r.upper for r in res), max(r.lower for r in res)
        cex = next((r.counterexample for r in res if r.counterexample is not None), None)
        if cex is not None:
            return Verdict("violated", self.name, f"a point exceeds epsilon={q.epsilon} (float64 and float32)",
                           counterexample=cex, lower_bound=lb, details=ev)
        if len(res) == len(q.input_set.regions) and all(r.proved for r in res):
            return Verdict("proved", self.name, f"certified {q.norm} bound {ub:.6g} <= {q.epsilon:.6g} "
                           f"({sum(r.boxes for r in res)} boxes)", upper_bound=ub, lower_bound=lb, details=ev)
        why = "; ".join(sorted({r.stopped for r in res if r.stopped})) or "bound above epsilon"
        return Verdict("unknown", self.name, f"certified bound {ub:.6g} > epsilon {q.epsilon:.6g} ({why})",
                       upper_bound=ub, lower_bound=lb, details=ev)


BACKEND = BabDiffBackend()
