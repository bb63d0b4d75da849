"""Back-end ``bab``: branch and bound over ReLU phases and input boxes with optimised bounds (DESIGN.md §11).

Decides VNN-LIB properties (no x of a region maps into an unsafe polytope ``A y <= b``):

1. a short falsifier run (batched targeted APGD, random + PGD, :mod:`lumpver.verifiers.falsify`), continued with
   restart rounds for the rest of its budget once a root bound (step 2) stays open (input splitting: once the
   search has run ``falsify_defer`` seconds without deciding);
2. per region and unsafe disjunct, the root sub-problem is bounded by batched CROWN with
   alpha-optimised lower slopes (:mod:`lumpver.bounds.batched`): a sound upper bound ``U_i`` of
   ``b_i - A_i y`` for every row; the disjunct is excluded on a sub-problem once some ``U_i < 0``
   (sigmoid/tanh chains: tangent points optimised too; a root left open gets its intermediate bounds
   re-bounded per region, :mod:`lumpver.bounds.smooth_intermediate`, in a second, longer pass where neurons
   are split: :func:`lumpver.verifiers.bab_deep.refine_smooth`);
3. open sub-problems are split (:mod:`lumpver.verifiers.bab_branch`): the input box when the
   input is low-dimensional (``<= input_split_dims``, e.g. ACAS Xu), else the unstable neuron with the
   best BaBSR-like score (a ReLU fixed to its phase: identity / zero; on sigmoid/tanh chains a neuron cut at
   the point that removes the most relaxation loss, chosen with the neuron by the loss the cut removes,
   :func:`lumpver.verifiers.bab_deep.smooth_candidates`, ``smooth``; its bound clamped to the split for later
   layers); children are
   bounded ``batch`` at a time (fewer when a round would exceed ~5 % of the timeout: :class:`_Pace`)
   in one numpy pass, warm-started with their parent's slopes, optionally in ``workers`` processes,
   with one OpenBLAS thread each (input splitting: each worker expands whole chunks of parents, split, bound,
   LP finisher and candidates, two chunks per worker in flight, :mod:`lumpver.verifiers.bab_input`); on deep
   ReLU chains the children keep their parent's intermediate bounds, which start from alpha-CROWN root bounds
   (optionally, when the root stays open, from split-refined bounds of the first hidden layers:
   :mod:`lumpver.verifiers.bab_refine`), optionally branching by filtered smart branching
   (:mod:`lumpver.verifiers.bab_deep`); a ReLU-split root starts from the registry's lower slopes, which the
   Adam steps of the root and the children then optimise;
4. each open child's candidate point (the box vertex maximising its linear bound) is evaluated,
   and a falsifier round seeded by the worst sub-problems runs every ``falsify_every`` seconds;
5. input splitting on ReLU chains: once the search has used ``lp_after`` of the timeout (at most ``lp_after_max``)
   in CPU seconds (all processes': independent of the load and the workers), open boxes from depth ``lp_depth``
   on go to the LP finisher (:mod:`lumpver.verifiers.lp_finish`: an elastic triangle LP and a small ReLU-phase
   branch and bound, each LP bound made sound through the dual), at most ``lp_budget`` LPs per box,
   retried ``lp_retry`` splits deeper when left open;
6. input splitting, optional (``refine``, off by default: measured mixed on the last three ACAS Xu
   instances, bench/RESULTS.md): boxes left open from depth ``refine_depth`` on with few unstable ReLUs are
   bounded again on alpha-optimised intermediate bounds (:func:`lumpver.bounds.intermediate.refine_layers`,
   intersected with CROWN's), which their children inherit (:func:`layer_bounds` intersects).

Soundness: ``proved`` only when every sub-problem is closed by a bound computed with the outward
rounding of :mod:`lumpver.bounds.rounding` (or found empty: crossing sound bounds), or by the LP
finisher's dual bound re-checked with outward rounding (Farkas for empty phase sets); ``violated``
only with a float32 input inside the region whose violation the float64 and float32 forward
passes reproduce (the command layer replays it on the ONNX file); timeouts, the domain cap, the
depth cap, equivalence queries: ``unknown``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Optional

import numpy as np

from lumpver.bounds.blas import blas_single_thread as _blas_single_thread
from lumpver.bounds.blas import one_blas_thread as _one_blas_thread
from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.engine import prepare
from lumpver.bounds.region import region_box
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet
from lumpver.ir.graph import GraphNetwork
from lumpver.verifiers import falsify
from lumpver.verifiers.falsify import AttackOptions
from lumpver.verifiers.bab_graph import check_graph
from lumpver.verifiers.bab_branch import (Context, Domain, bound, bound_batch, input_split, root_alpha, stack,
                                         unstack)
from lumpver.verifiers.bab_input import (Expanded, Frontier, Local, Pipeline, Plan, expand, joint_close, joint_pays,
                                        vertices)
from lumpver.verifiers.bab_deep import (ReluSearch, SmoothSplit, fsb_split_and_bound, neuron_split,
                                       recompute_children, refine_smooth, root_layer_bounds, split_refine_root,
                                       tighten_root)
from lumpver.verifiers.lp_finish import LpNet
from lumpver.verifiers.base import Query, Verdict


@dataclass
class BabOptions:
    """Search knobs (defaults measured on ACAS Xu and mnist-net_256x2, bench/RESULTS.md)."""

    batch: int = 64  # sub-problems split and bounded per round (per worker), ReLU splitting
    root_iters: int = 30  # Adam steps on the slopes at the root
    iters: int = 6  # Adam steps per bounding of a batch of children, ReLU splitting
    #: the same where children keep their parent's layer bounds (conv chains, ``recompute_pays``): oval21
    #: img5303 at 60 s, same load: 9629 bounded, 1253 closed, worst open bound 0.0084 with 3 steps vs 6683,
    #: 873, 0.0098 with 6 (bench/RESULTS.md)
    fixed_iters: int = 3
    #: Adam step size there: a child starts from its parent's slopes and multipliers, where a first Adam step
    #: of 0.25 overshoots (oval21 img5303, the 8 worst open sub-problems after 30 s, 3 steps: bounds
    #: 0.0051-0.0108 with 0.05 vs 0.0082-0.0108 with 0.25, which needs 40 steps to reach 0.0045-0.0105); the
    #: root bounds of oval21 do not depend on it (0.25, 0.1, 0.05 agree to 1e-3)
    fixed_lr: float = 0.05
    #: the same for input splitting: on ACAS Xu 1_1 prop_3 the closed count did not depend on the Adam
    #: steps (5447 sub-problems for 0-6 steps) and larger batches halved the CPU time
    input_batch: int = 256  # per round in one process
    #: parents per chunk a worker expands (input splitting with ``workers > 1``; two chunks per worker in flight):
    #: total CPU to decide 3_3 prop_2 with 2 workers 72-73 s with chunks of 256, 63 s with 96, 66 s with 64 (the
    #: larger chunks gave the LP finisher more, harder boxes: 2.5 vs 2.3 LPs per box); 4_2 prop_2 35.0 vs 35.4 s
    #: (bench/RESULTS.md, "The parallel search's serial share")
    worker_batch: int = 96
    input_iters: int = 1
    lr: float = 0.25
    input_split_dims: int = 10  # split the input box when the network has at most this many inputs
    #: up to this many inputs and for a one-row disjunct, every other split bounds both halves of every
    #: dimension and keeps the best (smear alone stalled on ACAS Xu prop_1; on the multi-row prop_3/4 smear
    #: over the open rows was 4x faster than alternating, bench/RESULTS.md)
    try_all_dims: int = 8
    max_domains: int = 40000  # open sub-problems kept at most (memory); beyond: unknown
    max_depth: int = 400
    falsify_seconds: float = 1.0  # initial falsifier budget (at most 10 % of the timeout)
    #: with ``attack`` and ReLU splitting: the first ``falsify_first`` seconds of that budget go to a short run before
    #: any bound (one APGD round, sampling and PGD: no restart rounds), the rest to restart rounds once a root bound
    #: stays open, so an instance whose root bound decides it does not pay the whole budget (bench/bench_falsify.py:
    #: unsat verivital/mnist 2.5-3x faster). With input splitting the root bound rarely decides but a short search
    #: often does: the first ``falsify_first`` seconds run with restart rounds (they find the narrow counterexamples
    #: in few dimensions: ACAS Xu 3_2 prop_2 in 0.17 s), the rest once the search has run ``falsify_defer`` seconds
    #: without deciding (with worker processes they keep bounding meanwhile): most unsat ACAS Xu instances are
    #: decided by the search within that second and no longer wait for the whole budget (bench/RESULTS.md)
    falsify_first: float = 0.3
    falsify_defer: float = 1.0
    #: the falsifier's batched targeted APGD rounds (:class:`lumpver.verifiers.falsify.AttackOptions`; None: the
    #: falsifier before them, the baseline of bench/bench_falsify.py)
    attack: Optional[AttackOptions] = field(default_factory=AttackOptions)
    falsify_every: float = 3.0  # seconds between falsifier rounds during the search
    falsify_share: float = 0.15
    heartbeat: float = 3.0  # seconds between progress lines
    #: LP finisher (verifiers/lp_finish.py, one warm-started HiGHS model per box) on open input boxes of ReLU
    #: chains from this depth on (0: off), once ``lp_after`` of the timeout has passed, at most ``lp_budget`` LPs
    #: per box; a box left open is tried again ``lp_retry`` splits deeper. Measured with CPU budgets
    #: (bench/RESULTS.md, "A persistent, warm-started LP per box"): 14/8 decides 4_2 prop_2 (51 s CPU; open at 60 s
    #: without), halves 1_1 prop_5 (6.0 vs 12.3 s CPU), leaves 3_3 prop_9 level; the gate keeps it off 1_1 prop_3
    #: (3.4 vs 2.5 s CPU when forced from the start). ``lp_after`` counts search seconds (CPU seconds, the
    #: workers' added: :meth:`_Search._search_seconds`), not wall seconds, so load does not move the gate.
    #: Depth 20 since the CROWN core got 2.5x faster (CPU to decide, one process, 14 vs 20: 1_1 prop_6 20.1 vs
    #: 15.7 s, 4_2 prop_2 59.9 vs 58.1, 1_1 prop_5 9.0 vs 9.0, 3_3 prop_9 6.7 vs 6.7; bench/RESULTS.md)
    lp_depth: int = 20
    lp_after: float = 0.15
    #: ... but never later than this many search seconds: the gate scaled with the timeout, so a longer timeout made
    #: the same instance slower (one process, CPU s to decide at VNN-COMP's ACAS Xu timeout of 116 s, gate 17.4 s
    #: -> 4.5 s: 3_3 prop_2 99.0 -> 49.8, 4_2 prop_2 75.5 -> 34.7; gates 3 / 4.5 / 9 s at a 30 s timeout: 3_3 prop_2
    #: 60.5 / 49.7-57.0 / 61.2, 4_2 prop_2 30.2 / 34.8 / 52.8; bench/RESULTS.md)
    lp_after_max: float = 4.5
    #: 3 LPs per box (was 8): a box the first LPs leave open rarely closes within the next five, and splitting it
    #: is cheaper (one process, CPU s to decide, budgets 2/3/4/5/8: 3_3 prop_2 110/98/106/115/125-129, 4_2 prop_2
    #: -/59/56/54/55, 1_1 prop_5, 1_1 prop_6, 3_3 prop_9 the same at 3 and 8; bench/RESULTS.md)
    lp_budget: int = 3
    lp_retry: int = 2
    #: input splitting: optimised intermediate bounds (:func:`lumpver.bounds.intermediate.refine_layers`) on the
    #: boxes from depth ``refine_depth`` on with at most ``refine.max_unstable`` unstable ReLUs, inherited by
    #: their children (intersected with their own); ``Refine()`` turns it off. Off by default: per CPU second it
    #: closed more of 3_3 prop_2 and 1_1 prop_6 but less of 4_2 prop_2, decided none of them, and made 1_1 prop_3
    #: 1.4-2x slower (bench/RESULTS.md, "Optimised intermediate bounds in the input-splitting search")
    refine: Refine = field(default_factory=Refine)
    refine_depth: int = 0
    #: ReLU splitting on ReLU chains: root alpha-CROWN intermediate bounds, fixed child bounds on deep chains
    #: (verifiers/bab_deep.py)
    relu: ReluSearch = field(default_factory=ReluSearch)
    #: sigmoid/tanh chains: where a neuron is split (GenBaB's optimised points, or 0; verifiers/bab_deep.py)
    smooth: SmoothSplit = field(default_factory=SmoothSplit)
    workers: int = 1
    progress: Progress = field(default=SILENT, repr=False)




def _timed(fn, ctx: Context, doms: list[Domain], arg) -> tuple[list, float]:
    """``fn(ctx, doms, arg)`` in a worker, with the CPU seconds it took there."""
    c0 = time.process_time()
    out = fn(ctx, doms, arg)
    return out, time.process_time() - c0


@dataclass
class _Stats:
    bounded: int = 0
    closed: int = 0
    rounds: int = 0
    max_depth: int = 0
    splits: str = ""
    lp_closed: int = 0
    lps: int = 0
    lp_boxes: int = 0
    lp_from: int = -1  # sub-problems bounded when the LP finisher first ran
    joint_closed: int = 0  # closed by a combination of a conjunction's rows (bab_input.joint_close)
    joint_tries: int = 0


@dataclass
class _Pace:
    """Sub-problems split per round: the configured batch, cut so that a round takes about ``target``
    seconds on big networks (a 6x200 sigmoid net on 784 inputs: ~0.2 s per sub-problem, so a full batch
    ran 10-20 s past the timeout). The first estimate is the root's time per sub-problem."""

    base: int
    target: float
    root_seconds: float

    def __post_init__(self) -> None:
        self.batch = self._fit(self.root_seconds)

    def _fit(self, per_domain: float) -> int:
        return int(min(self.base, max(1, self.target / max(per_domain, 1e-6))))

    def observe(self, seconds: float, n: int) -> None:
        fit = self._fit(seconds / max(n, 1))
        self.batch = min(fit, 2 * self.batch)  # grow gradually, shrink at once


class BabBackend:
    """Back-end ``bab``: see the module docstring."""

    name = "bab"

    def __init__(self, options: Optional[BabOptions] = None) -> None:
        self.options = options or BabOptions()

    def check(self, query: Query) -> Verdict:
        t0 = time.monotonic()
        if query.other is not None or query.prop is None:
            return Verdict("unknown", self.name, "bab decides VNN-LIB properties only (no equivalence queries)")
        if isinstance(query.network, GraphNetwork):  # residual/concat/max-pool networks: their own search
            return check_graph(query, self.options)
        pool = None
        if self.options.workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork").Pool(self.options.workers, initializer=_one_blas_thread)
        try:
            with _blas_single_thread():
                v = _Search(query, self.options, t0, pool).run()
        except MemoryError:
            v = Verdict("unknown", self.name, "out of memory")
        finally:
            if pool is not None:
                pool.terminate()
        v.seconds = time.monotonic() - t0
        return v


class _Search:
    def __init__(self, query: Query, opt: BabOptions, t0: float, pool) -> None:
        self.q, self.opt, self.pool = query, opt, pool
        self.deadline = t0 + query.timeout
        self.chain = prepare(query.network)
        self.stats = _Stats()
        self.rng = np.random.default_rng(query.seed)
        self.doubts: list[str] = []
        self._last_fals = self._last_beat = time.monotonic()
        self._fals_left = 0.0  # initial falsifier seconds kept for when a root bound stays open
        self._input_mode = query.network.n_inputs <= opt.input_split_dims
        self._roots: dict = {}
        self._lp_net = LpNet.of(self.chain) if self._input_mode else None  # dense maps: conv chains would not fit
        self._lp_box_seconds = 0.05  # seconds of LP finisher per box (estimate, updated as they run)
        self._cpu0, self._worker_cpu = time.process_time(), 0.0  # for the LP finisher's gate (_search_seconds)

    # ----- verdicts ---------------------------------------------------------------------------
    def _details(self) -> dict:
        return {"stats": dict(self.stats.__dict__), "bounds": "batched CROWN, alpha-optimised lower slopes, "
                "outward rounding (lumpver.bounds.rounding)", "options": {k: asdict(v) if is_dataclass(v) else v
                                                                          for k, v in self.opt.__dict__.items()
                                                                          if k != "progress"}}

    def _violated(self, x: np.ndarray, how: str) -> Verdict:
        return Verdict("violated", "bab", how, counterexample=x, details=self._details())

    def _unknown(self, reason: str) -> Verdict:
        return Verdict("unknown", "bab", reason, details=self._details())

    # ----- search -----------------------------------------------------------------------------
    def run(self) -> Verdict:
        total, t = min(self.opt.falsify_seconds, 0.1 * self.q.timeout), time.monotonic()
        split = self.opt.attack is not None and total > self.opt.falsify_first
        restarts = 10**6 if self._input_mode or not split else 0
        out = self._first_falsify(min(total, self.opt.falsify_first) if split else total, restarts)
        if out is not None:
            return out
        self._fals_left = total - (time.monotonic() - t) if split else 0.0
        for region in self.q.input_set.regions:
            box = region_box(region)
            for d, (A, b) in enumerate(self.q.prop.disjuncts):
                ctx = Context(self.chain, -np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64),
                              *self._steps(), *self._refine(), self._recompute())
                out = self._disjunct(region, box, ctx, f"disjunct {d + 1}/{len(self.q.prop.disjuncts)}")
                if out is not None:
                    return out
        if self.doubts:
            return self._unknown(self.doubts[0])
        return Verdict("proved", "bab", "every sub-problem closed by sound bounds", details=self._details())

    def _steps(self) -> tuple[int, float]:
        """Adam steps and step size per bounding of children."""
        if self._input_mode:
            return self.opt.input_iters, self.opt.lr
        return (self.opt.iters, self.opt.lr) if self._recompute() else (self.opt.fixed_iters, self.opt.fixed_lr)

    def _recompute(self) -> bool:
        return self._input_mode or recompute_children(self.chain, self.opt.relu)

    def _refine(self) -> tuple[Refine, int]:
        """Intermediate-bound refinement of the search (input splitting of ReLU chains only)."""
        return (self.opt.refine, self.opt.refine_depth) if self._input_mode else (Refine(), 0)

    def _disjunct(self, region, box, ctx: Context, what: str) -> Optional[Verdict]:
        """None when the disjunct is excluded on the region, else a verdict (violated/unknown)."""
        lo, hi = box.lower.astype(np.float64), box.upper.astype(np.float64)
        key = (lo.tobytes(), hi.tobytes())
        if key not in self._roots:  # the root's layer bounds do not depend on the disjunct: once per region
            self._roots = {key: (root_layer_bounds(self.chain, lo[None], hi[None]), 0, {})}
        t_root = time.monotonic()
        frontier = bound(ctx, [self._root(key, lo, hi, ctx)], self.opt.root_iters)
        while frontier[0].score >= 0 and self._tighten(key, lo, hi):  # open: root layers tightened, once per pass
            t_root = time.monotonic()
            frontier = bound(ctx, [self._root(key, lo, hi, ctx)], self.opt.root_iters)
        self.stats.bounded += 1
        self.stats.splits = "input" if self._input_mode else "relu"
        if frontier[0].score >= 0 and not self._input_mode:  # the root bound stays open: the falsifier's rest
            out = self._falsify_rest([d for d in frontier if d.score >= 0])
            if out is not None:
                return out
        return self._search(region, ctx, [d for d in frontier if d.score >= 0], time.monotonic() - t_root, what)

    def _tighten(self, key, lo: np.ndarray, hi: np.ndarray) -> bool:
        """The region's root layer bounds tightened by the next pass (ReLU chains: alpha-CROWN, one pass;
        sigmoid/tanh layers: :func:`refine_smooth`); False when no pass is left."""
        (zl, zu), done, warm = self._roots[key]
        tight = None
        if done == 0 and not self._input_mode:
            tight = tighten_root(self.chain, lo[None], hi[None], zl, zu, self.opt.relu.root_refine)
        elif done == 1 and not self._input_mode:
            tight = split_refine_root(self.chain, lo[None], hi[None], zl, zu, self.opt.relu, self.q.timeout)
        if tight is None:
            tight = refine_smooth(self.chain, lo[None], hi[None], zl, zu, done, not self._input_mode,
                                  self.deadline - time.monotonic(), self.q.timeout, warm)
        self._roots[key] = (tight or (zl, zu), done + 1 if tight is not None else -1, warm)
        return tight is not None

    def _runner(self, ctx: Context):
        """Where expansions run: input splitting in the worker pool when there is one (a pipeline of whole
        expansions), else in this process (ReLU splitting: its batches bounded in the pool, :meth:`_bound_all`)."""
        if not self._input_mode:
            return Local(lambda todo, plan: self._relu_round(ctx, todo))
        if self.pool is None:
            return Local(lambda todo, plan: expand(ctx, todo, plan))
        return Pipeline(self.pool, ctx, 2 * self.opt.workers)

    def _search(self, region, ctx: Context, roots: list[Domain], root_seconds: float, what: str) -> Optional[Verdict]:
        """Expand the worst open domains until none is left (None), a counterexample (violated) or the deadline
        or the domain cap (unknown)."""
        runner = self._runner(ctx)
        if runner.capacity > 1:  # chunks of a worker pipeline
            base = self.opt.worker_batch
        else:
            base = (self.opt.input_batch if self._input_mode else self.opt.batch) * max(1, self.opt.workers)
        pace = _Pace(base, self._round_target(), root_seconds)
        frontier, got = Frontier([]), Expanded(roots, 0, 0, 0, vertices(roots))
        t_search = time.monotonic()
        while True:
            out = self._merge(region, got, frontier)
            if out is not None:
                return out
            if not frontier and not runner.pending:
                return None
            now = time.monotonic()
            if now > self.deadline:
                return self._unknown(f"timeout after {self.q.timeout:g} s ({len(frontier)} sub-problems open, {what})")
            if len(frontier) > self.opt.max_domains:
                return self._unknown(f"more than {self.opt.max_domains} open sub-problems ({what})")
            self._heartbeat(frontier, what)
            while runner.pending < runner.capacity and frontier:
                todo = [d for d in frontier.pop_worst(pace.batch) if self._below_cap(d, what)]
                if todo:
                    runner.submit(todo, self._plan(ctx))
            if self._fals_left > 0 and now - t_search > self.opt.falsify_defer:  # input splitting (falsify_first)
                out = self._falsify_rest([])
                if out is not None:
                    return out
            if now - self._last_fals > self.opt.falsify_every:  # while the workers bound
                out = self._falsify(region, frontier)
                if out is not None:
                    return out
            got = runner.collect(self.deadline - time.monotonic()) if runner.pending else None
            if got is not None:
                pace.observe(got.seconds, got.parents)
                self.stats.rounds += 1

    def _merge(self, region, got: Optional[Expanded], frontier: Frontier) -> Optional[Verdict]:
        """Counts and open children of an expansion into the search; its candidate points replayed."""
        if got is None:
            return None
        s = self.stats
        s.bounded, s.closed, s.lps, s.lp_closed = (s.bounded + got.bounded, s.closed + got.closed,
                                                   s.lps + got.lps, s.lp_closed + got.lp_closed)
        s.joint_closed, s.joint_tries = s.joint_closed + got.joint_closed, s.joint_tries + got.joint_tries
        if got.lp_boxes:
            s.lp_boxes += got.lp_boxes
            s.lp_from = s.bounded if s.lp_from < 0 else s.lp_from
            self._lp_box_seconds = 0.5 * self._lp_box_seconds + 0.5 * got.lp_seconds / got.lp_boxes
        self._worker_cpu += got.seconds if self.pool is not None and self._input_mode else 0.0
        out = self._replay(region, list(got.vertices), "vertex of a sub-problem's linear bound")
        if out is None:
            out = self._replay(region, got.lp_points, "exact LP leaf of the LP finisher")
        frontier.extend(got.kids)
        return out

    def _plan(self, ctx: Context) -> Plan:
        """How the next chunk is expanded: try-all splitting on one-row disjuncts with few inputs; the LP finisher
        once the search has used ``lp_after`` of the timeout, at most ``lp_after_max``, in CPU seconds (under load
        the wall gate let it start early on easy instances: 1_1 prop_3 7.2 vs 3.8 s), as many boxes as fit the
        round target."""
        try_all = self.q.network.n_inputs <= self.opt.try_all_dims and ctx.lam.shape[0] == 1
        lp_on = (self._input_mode and self.opt.lp_depth > 0 and self._lp_net is not None
                 and self._search_seconds() >= min(self.opt.lp_after * self.q.timeout, self.opt.lp_after_max))
        s = self.stats
        return Plan(try_all, self.opt.lp_depth if lp_on else 0, self.opt.lp_budget, self.opt.lp_retry,
                    int(self._round_target() / self._lp_box_seconds), joint_pays(s.joint_tries, s.joint_closed))

    def _root(self, key, lo: np.ndarray, hi: np.ndarray, ctx: Context) -> Domain:
        zl, zu = self._roots[key][0]
        zl, zu, m = [a[0] for a in zl], [a[0] for a in zu], ctx.lam.shape[0]
        slopes = not self._input_mode and self.opt.relu.root_slopes
        return Domain(lo, hi, zl, zu, root_alpha(self.chain, zl, zu, m) if slopes else [None] * self.chain.depth,
                      np.zeros(m), start=self.chain.depth)

    def _round_target(self) -> float:
        """Seconds one round of splitting and bounding may take (the deadline is checked between rounds)."""
        return min(3.0, max(0.3, 0.05 * self.q.timeout))

    def _below_cap(self, d: Domain, what: str) -> bool:
        if d.depth >= self.opt.max_depth:
            self.doubts.append(f"depth cap {self.opt.max_depth} ({what})")
            return False
        self.stats.max_depth = max(self.stats.max_depth, d.depth + 1)
        return True

    def _relu_round(self, ctx: Context, todo: list[Domain]) -> Expanded:
        """ReLU splitting: children of every domain (the best-scored unstable neuron, or filtered smart branching;
        a domain without unstable neurons splits its input box), bounded; the open ones kept."""
        if not ctx.recompute and self.opt.relu.fsb_top > 1:
            kids = fsb_split_and_bound(todo, self.chain, self.opt.relu.fsb_top,
                                       lambda ds, it: self._bound_all(ctx, ds, it))
        else:
            children = []
            for d in todo:
                split = neuron_split(d, self.chain, self.opt.smooth)
                children.extend(split if split is not None else input_split(d))
            kids = self._bound_all(ctx, children)
        s = self.stats  # multi-row disjuncts: the rows' combination (sound on the sub-problem's clamped bounds too)
        tries, joint = joint_close(ctx, kids) if joint_pays(s.joint_tries, s.joint_closed) else (0, 0)
        open_ = [d for d in kids if d.score >= 0]
        return Expanded(open_, len(todo), len(kids), len(kids) - len(open_),
                        vertices(open_), joint_closed=joint, joint_tries=tries)

    def _bound_all(self, ctx: Context, doms: list[Domain], iters: Optional[int] = None) -> list[Domain]:
        if self.pool is None or len(doms) < 2 or (ctx.refine.iters > 0 and iters != 0):
            return self._map(bound, ctx, doms, iters)
        chunks = self._chunks(doms, 1)  # workers get and return stacked arrays (cheap to pickle)
        parts = self._starmap(bound_batch, ctx, [stack(c) for c in chunks], iters)
        return [d for c, r in zip(chunks, parts) for d in unstack(ctx, c, r)]

    def _map(self, fn, ctx: Context, doms: list[Domain], arg) -> list:
        """``fn(ctx, doms, arg)`` (a list per domain), in the worker pool when there is one."""
        if self.pool is None or len(doms) < 2:
            return fn(ctx, doms, arg)
        return [d for p in self._starmap(fn, ctx, self._chunks(doms, 1), arg) for d in p]

    def _chunks(self, doms: list, per_worker: int) -> list[list]:
        size = -(-len(doms) // (self.opt.workers * per_worker))
        return [doms[i:i + size] for i in range(0, len(doms), size)]

    def _starmap(self, fn, ctx: Context, chunks: list, arg) -> list:
        """``fn(ctx, chunk, arg)`` per chunk in the pool; the workers' CPU seconds are counted."""
        parts = self.pool.starmap(_timed, [(fn, ctx, c, arg) for c in chunks])
        self._worker_cpu += sum(cpu for _, cpu in parts)
        return [p for p, _ in parts]

    def _search_seconds(self) -> float:
        """Seconds of search work, independent of the load and of the workers: this process's CPU seconds plus
        the workers' (per worker, the gate let 2 workers bound 33 % more sub-problems of 4_2 prop_2 than one
        process, 50.2k vs 37.8k: the finisher started after twice the work; bench/RESULTS.md)."""
        return time.process_time() - self._cpu0 + self._worker_cpu

    # ----- counterexamples ----------------------------------------------------------------------
    def _replay(self, region, pts: list[np.ndarray], how: str) -> Optional[Verdict]:
        """A violated verdict for the first point whose float32 copy inside the region is unsafe in the
        float32 and float64 forward passes."""
        if not pts:
            return None
        ys = self.q.network.forward(np.array(pts))
        near = np.zeros(len(pts), dtype=bool)  # a superset of the unsafe ones, tested exactly below
        for A, b in self.q.prop.disjuncts:
            A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
            near |= np.all(ys @ A.T <= b + 1e-9 * (1.0 + np.abs(b) + np.abs(ys) @ np.abs(A).T), axis=1)
        for i in np.flatnonzero(near):
            x, y = pts[i], ys[i]
            if self.q.prop.is_unsafe(y):
                xf = falsify.to_float32_inside(x, region)
                if xf is not None and falsify.confirms(self.q, xf):
                    return self._violated(xf, f"{how} (float32/float64 replay)")
        return None

    def _first_falsify(self, budget: float, restarts: int, seeds: Optional[list] = None) -> Optional[Verdict]:
        """The falsifier on the whole query for ``budget`` seconds (``restarts``, ``seeds``: see
        :func:`falsify.search`)."""
        res = falsify.search(self.q, samples=500, starts=4, steps=30, deadline=time.monotonic() + budget, rng=self.rng,
                             restarts=restarts, attack=self.opt.attack, seeds=seeds)
        if res.counterexample is not None:
            return self._violated(res.counterexample, "falsifier counterexample (float32/float64 replay)")
        return None

    def _falsify_rest(self, open_doms: list[Domain]) -> Optional[Verdict]:
        """The rest of the initial falsifier budget (``falsify_first``), seeded by the vertices of the open
        domains' linear bounds (none given: unseeded, as its first part); afterwards none is left."""
        if self._fals_left <= 0:
            return None
        seeds = list(vertices(open_doms)) if open_doms else None
        budget = min(self._fals_left, max(0.0, self.deadline - time.monotonic()))  # never past the timeout
        out, self._fals_left = self._first_falsify(budget, 10**6, seeds), 0.0
        return out

    def _falsify(self, region, frontier: Frontier) -> Optional[Verdict]:
        worst = frontier.worst(4)
        seeds = list(vertices(worst)) + [0.5 * (d.lo + d.hi) for d in worst]
        q = Query(self.q.network, InputSet([region]), prop=self.q.prop, timeout=self.q.timeout, seed=self.q.seed)
        budget = self.opt.falsify_share * self.opt.falsify_every
        res = falsify.search(q, samples=100, starts=2, steps=20, rng=self.rng, seeds=seeds, attack=self.opt.attack,
                             deadline=min(self.deadline, time.monotonic() + budget))
        self._last_fals = time.monotonic()
        if res.counterexample is not None:
            return self._violated(res.counterexample, "falsifier seeded by the search (float32/float64 replay)")
        return None

    def _heartbeat(self, frontier: Frontier, what: str) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.opt.heartbeat:
            return
        self._last_beat = now
        worst = frontier.worst_score()
        self.opt.progress.say(f"bab {what}: {len(frontier)} open, {self.stats.bounded} bounded, worst bound "
                              f"{-worst:.4g}, depth {self.stats.max_depth}, {self.deadline - now:.0f} s left")


BACKEND = BabBackend()
