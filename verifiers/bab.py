"""Back-end ``bab``: branch and bound over ReLU phases and input boxes with optimised bounds (DESIGN.md §11).

Decides VNN-LIB properties (no x of a region maps into an unsafe polytope ``A y <= b``):

1. a short falsifier run (random + PGD, :mod:`lumpver.verifiers.falsify`);
2. per region and unsafe disjunct, the root sub-problem is bounded by batched CROWN with
   alpha-optimised lower slopes (:mod:`lumpver.bounds.batched`): a sound upper bound ``U_i`` of
   ``b_i - A_i y`` for every row; the disjunct is excluded on a sub-problem once some ``U_i < 0``
   (sigmoid/tanh chains: tangent points optimised too; a root left open gets its intermediate bounds
   re-bounded once per region, :mod:`lumpver.bounds.smooth_intermediate`);
3. open sub-problems are split (:mod:`lumpver.verifiers.bab_branch`): the input box when the
   input is low-dimensional (``<= input_split_dims``, e.g. ACAS Xu), else the unstable neuron with the
   best BaBSR-like score (a ReLU fixed to its phase: identity / zero; a sigmoid/tanh neuron cut at 0
   into its convex and concave part; its bound clamped to the split for later layers); children are
   bounded ``batch`` at a time (fewer when a round would exceed ~5 % of the timeout: :class:`_Pace`)
   in one numpy pass, warm-started with their parent's slopes, optionally in ``workers`` processes,
   with one OpenBLAS thread each; on deep ReLU chains the children keep their parent's intermediate bounds,
   which start from alpha-CROWN root bounds, optionally branching by filtered smart branching
   (:mod:`lumpver.verifiers.bab_deep`);
4. each open child's candidate point (the box vertex maximising its linear bound) is evaluated,
   and a falsifier round seeded by the worst sub-problems runs every ``falsify_every`` seconds;
5. input splitting on ReLU chains: once the search has used ``lp_after`` of the timeout in CPU seconds (per
   worker; load-independent), open boxes from depth
   ``lp_depth`` on go to the LP finisher (:mod:`lumpver.verifiers.lp_finish`: an elastic triangle LP and
   a small ReLU-phase branch and bound, each LP bound made sound through the dual), at most ``lp_budget``
   LPs per box, retried ``lp_retry`` splits deeper when left open;
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

from lumpver.bounds.batched import Objective, infeasible, layer_bounds, optimise_alpha
from lumpver.bounds.blas import blas_single_thread as _blas_single_thread
from lumpver.bounds.blas import one_blas_thread as _one_blas_thread
from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.intermediate import refine_layers, unstable_count
from lumpver.bounds.smooth_intermediate import ROOT_SHARE, refine_root
from lumpver.bounds.engine import Chain, prepare
from lumpver.bounds.region import region_box
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet
from lumpver.ir.graph import GraphNetwork
from lumpver.verifiers import falsify
from lumpver.verifiers.bab_graph import check_graph
from lumpver.verifiers.bab_branch import Batch, Domain, input_split, relu_split, stack
from lumpver.verifiers.bab_deep import ReluSearch, fsb_split_and_bound, recompute_children, root_layer_bounds, tighten_root
from lumpver.verifiers.lp_finish import LpNet, finish_many
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
    input_batch: int = 256
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
    falsify_every: float = 3.0  # seconds between falsifier rounds during the search
    falsify_share: float = 0.15
    heartbeat: float = 3.0  # seconds between progress lines
    #: LP finisher (verifiers/lp_finish.py, one warm-started HiGHS model per box) on open input boxes of ReLU
    #: chains from this depth on (0: off), once ``lp_after`` of the timeout has passed, at most ``lp_budget`` LPs
    #: per box; a box left open is tried again ``lp_retry`` splits deeper. Measured with CPU budgets
    #: (bench/RESULTS.md, "A persistent, warm-started LP per box"): 14/8 decides 4_2 prop_2 (51 s CPU; open at 60 s
    #: without), halves 1_1 prop_5 (6.0 vs 12.3 s CPU), leaves 3_3 prop_9 level; the gate keeps it off 1_1 prop_3
    #: (3.4 vs 2.5 s CPU when forced from the start). ``lp_after`` counts search seconds (CPU seconds, the
    #: workers' per worker: :meth:`_Search._search_seconds`), not wall seconds, so load does not move the gate.
    #: Depth 20 since the CROWN core got 2.5x faster (CPU to decide, one process, 14 vs 20: 1_1 prop_6 20.1 vs
    #: 15.7 s, 4_2 prop_2 59.9 vs 58.1, 1_1 prop_5 9.0 vs 9.0, 3_3 prop_9 6.7 vs 6.7; bench/RESULTS.md)
    lp_depth: int = 20
    lp_after: float = 0.15
    lp_budget: int = 8
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
    workers: int = 1
    progress: Progress = field(default=SILENT, repr=False)


@dataclass
class Context:
    """What bounding a batch needs (shared with worker processes once)."""

    chain: Chain
    lam: np.ndarray  # (m, n_out): rows of -A
    offset: np.ndarray  # (m,): b
    iters: int
    lr: float
    refine: Refine = field(default_factory=Refine)
    refine_depth: int = 0
    recompute: bool = True  # ReLU-split children re-bound the layers after their split (bab_deep.recompute_children)


def bound(ctx: Context, doms: list[Domain], iters: Optional[int] = None) -> list[Domain]:
    """Bound the domains in one batched pass; ``upper`` is ``-inf`` for an empty domain. Those left open
    from ``ctx.refine_depth`` on with at most ``ctx.refine.max_unstable`` unstable ReLUs are bounded again
    on optimised intermediate bounds (:func:`refine_layers`, intersected with CROWN's: only tighter;
    DESIGN.md §3, §11), except the trial halves of try-all splitting (``iters == 0``)."""
    out = _bound(ctx, doms, iters, False)
    r = ctx.refine
    if iters == 0 or r.iters <= 0:
        return out
    redo = [i for i, d in enumerate(out) if d.score >= 0 and d.depth >= ctx.refine_depth
            and _unstable(ctx.chain, d) <= r.max_unstable]
    if redo:
        for i, d in zip(redo, _bound(ctx, [out[i] for i in redo], iters, True)):
            d.upper = np.minimum(d.upper, out[i].upper)  # both sound: the better of the two
            out[i] = d
    return out


def _unstable(chain: Chain, d: Domain) -> int:
    return int(unstable_count(chain, [a[None] for a in d.zl], [a[None] for a in d.zu])[0])


def _bound(ctx: Context, doms: list[Domain], iters: Optional[int], refine: bool) -> list[Domain]:
    return unstack(ctx, doms, bound_batch(ctx, stack(doms), iters, refine))


@dataclass
class Bounded:
    """Bounds of a batch of domains, stacked on the batch axis (what a worker sends back: a few arrays, not
    an object per domain, whose pickling cost more than the bounding once that got fast)."""

    zl: list[np.ndarray]
    zu: list[np.ndarray]
    obj: Objective
    empty: np.ndarray


def bound_batch(ctx: Context, b: Batch, iters: Optional[int], refine: bool = False) -> Bounded:
    """The batched bounding of :func:`bound` (without the second, refined pass) on stacked domains."""
    start = b.start if b.start == 0 or ctx.recompute else ctx.chain.depth
    # the output layer's CROWN bounds serve only to find empty sub-problems, and a box without splits is not empty
    zl, zu = layer_bounds(ctx.chain, b.lo, b.hi, b.zl, b.zu, start, output=b.phase is not None)
    if refine:
        zl, zu = refine_layers(ctx.chain, b.lo, b.hi, zl, zu, ctx.refine.iters, ctx.refine.lr, ctx.refine.max_unstable)
    lam = np.broadcast_to(ctx.lam, (b.lo.shape[0],) + ctx.lam.shape)
    obj = optimise_alpha(ctx.chain, b.lo, b.hi, zl, zu, lam, ctx.offset, b.alpha,
                         ctx.iters if iters is None else iters, ctx.lr, b.phase, b.beta)
    return Bounded(zl, zu, obj, infeasible(zl, zu))


def unstack(ctx: Context, doms: list[Domain], r: Bounded) -> list[Domain]:
    """The bounded domains (their arrays: views into ``r``'s)."""
    out, obj = [], r.obj
    for i, d in enumerate(doms):
        upper = np.full_like(obj.upper[i], -np.inf) if r.empty[i] else obj.upper[i]
        out.append(Domain(d.lo, d.hi, [a[i] for a in r.zl], [a[i] for a in r.zu],
                          [None if a is None else a[i] for a in obj.alpha], upper, obj.A_x[i],
                          [None if a is None else a[i] for a in obj.coeffs], d.depth, ctx.chain.depth,
                          d.phase, None if obj.beta is None else [a[i] for a in obj.beta], lp_next=d.lp_next))
    return out


@dataclass
class LpOutcome:
    """What the LP finisher returns for one domain (:func:`lumpver.verifiers.lp_finish.finish_many`)."""

    bound: Optional[float]  # sound, > 0: the disjunct is excluded on the box; None: left open
    lps: int
    candidates: list[np.ndarray]


def lp_close(ctx: Context, boxes: list[tuple], budget: int) -> list[LpOutcome]:
    """Run the LP finisher on each box ``(lo, hi, zl, zu)`` with its CROWN intermediate bounds (``budget`` LPs
    each). Boxes, not domains, go to the workers: a domain's slopes and coefficients (~75 kB) are not needed."""
    rs = finish_many(ctx.chain, LpNet.of(ctx.chain), boxes, -ctx.lam, ctx.offset,
                     budget)  # the boxes step together: their phase children's CROWN in shared batches
    return [LpOutcome(r.bound if r.closed else None, r.lps, r.candidates) for r in rs]


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
        self._input_mode = query.network.n_inputs <= opt.input_split_dims
        self._roots: dict = {}
        self._lp_net = LpNet.of(self.chain)
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
        budget = min(self.opt.falsify_seconds, 0.1 * self.q.timeout)
        res = falsify.search(self.q, samples=500, starts=4, steps=30, deadline=time.monotonic() + budget, rng=self.rng,
                             restarts=10**6)
        if res.counterexample is not None:
            return self._violated(res.counterexample, "falsifier counterexample (float32/float64 replay)")
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
            self._roots = {key: (root_layer_bounds(self.chain, lo[None], hi[None]), False)}
        t_root = time.monotonic()
        frontier = bound(ctx, [self._root(key, lo, hi, ctx)], self.opt.root_iters)
        if frontier[0].score >= 0 and not self._roots[key][1]:  # open: root layers tightened once per region
            zl, zu = self._roots[key][0]
            tight = None if self._input_mode else tighten_root(self.chain, lo[None], hi[None], zl, zu,
                                                               self.opt.relu.root_refine)  # ReLU chains: alpha-CROWN
            if tight is None:  # sigmoid/tanh chains (None: no such layer)
                tight = refine_root(self.chain, lo[None], hi[None], zl, zu,
                                    deadline=time.monotonic() + ROOT_SHARE * self.q.timeout)
            self._roots[key] = (tight or (zl, zu), True)
            if tight is not None:
                t_root = time.monotonic()
                frontier = bound(ctx, [self._root(key, lo, hi, ctx)], self.opt.root_iters)
        self.stats.bounded += 1
        input_mode = self._input_mode
        self.stats.splits = "input" if input_mode else "relu"
        base = (self.opt.input_batch if input_mode else self.opt.batch) * max(1, self.opt.workers)
        pace = _Pace(base, self._round_target(), time.monotonic() - t_root)
        fresh = frontier = [d for d in frontier if d.score >= 0]
        while True:
            out = self._check_candidates(region, fresh)
            if out is not None:
                return out
            if not frontier:
                return None
            now = time.monotonic()
            if now > self.deadline:
                return self._unknown(f"timeout after {self.q.timeout:g} s ({len(frontier)} sub-problems open, {what})")
            if len(frontier) > self.opt.max_domains:
                return self._unknown(f"more than {self.opt.max_domains} open sub-problems ({what})")
            self._heartbeat(frontier, what)
            if now - self._last_fals > self.opt.falsify_every:
                out = self._falsify(region, frontier)
                if out is not None:
                    return out
            frontier.sort(key=lambda d: d.score)
            take = pace.batch
            todo, frontier = frontier[-take:], frontier[:-take]
            todo = [d for d in todo if self._below_cap(d, what)]
            if not todo:
                continue
            t_round = time.monotonic()
            bounded = self._split_and_bound(ctx, todo, input_mode)
            out = self._lp_finish(ctx, region, bounded)
            if out is not None:
                return out
            pace.observe(time.monotonic() - t_round, len(todo))
            self.stats.rounds += 1
            self.stats.bounded += len(bounded)
            self.stats.closed += sum(d.score < 0 for d in bounded)
            fresh = [d for d in bounded if d.score >= 0]
            frontier.extend(fresh)

    def _root(self, key, lo: np.ndarray, hi: np.ndarray, ctx: Context) -> Domain:
        zl, zu = self._roots[key][0]
        return Domain(lo, hi, [a[0] for a in zl], [a[0] for a in zu], [None] * self.chain.depth,
                      np.zeros(ctx.lam.shape[0]), start=self.chain.depth)

    def _round_target(self) -> float:
        """Seconds one round of splitting and bounding may take (the deadline is checked between rounds)."""
        return min(3.0, max(0.3, 0.05 * self.q.timeout))

    def _below_cap(self, d: Domain, what: str) -> bool:
        if d.depth >= self.opt.max_depth:
            self.doubts.append(f"depth cap {self.opt.max_depth} ({what})")
            return False
        self.stats.max_depth = max(self.stats.max_depth, d.depth + 1)
        return True

    def _split_and_bound(self, ctx: Context, todo: list[Domain], input_mode: bool, try_all: bool = True) -> list[Domain]:
        """Children of every domain, bounded. Low-dimensional input: every dimension's two halves are
        bounded with the inherited slopes, the dimension whose worse half is best is kept, and its open
        halves get the slope optimisation (intermediate bounds are not recomputed for them)."""
        try_all = try_all and input_mode and self.q.network.n_inputs <= self.opt.try_all_dims and ctx.lam.shape[0] == 1
        if try_all:  # alternate with smear by depth: either alone stalls on some ACAS Xu instances
            smear = [d for d in todo if d.depth % 2 == 1]
            todo = [d for d in todo if d.depth % 2 == 0]
            return (self._split_and_bound(ctx, smear, True, False) if smear else []) + \
                (self._try_all(ctx, todo) if todo else [])
        if not input_mode and not ctx.recompute and self.opt.relu.fsb_top > 1:
            return fsb_split_and_bound(todo, self.chain, self.opt.relu.fsb_top, lambda ds, it: self._bound_all(ctx, ds, it))
        children = []
        for d in todo:
            kids = None if input_mode else relu_split(d, self.chain)
            children.extend(kids if kids is not None else input_split(d))
        return self._bound_all(ctx, children)

    def _try_all(self, ctx: Context, todo: list[Domain]) -> list[Domain]:
        n = self.q.network.n_inputs
        cands = [k for d in todo for i in range(n) for k in input_split(d, i)]
        cands = self._bound_all(ctx, cands, iters=0)
        worse = np.array([c.score for c in cands]).reshape(len(todo), n, 2).max(axis=2)
        kept = []
        for j, i in enumerate(np.argmin(worse, axis=1)):  # the first dimension whose worse half is best
            kept.extend(cands[2 * (j * n + i): 2 * (j * n + i) + 2])
        closed = [d for d in kept if d.score < 0]
        open_ = [d for d in kept if d.score >= 0]
        return closed + (self._bound_all(ctx, open_) if open_ else [])

    def _bound_all(self, ctx: Context, doms: list[Domain], iters: Optional[int] = None) -> list[Domain]:
        if self.pool is None or len(doms) < 2 or (ctx.refine.iters > 0 and iters != 0):
            return self._map(bound, ctx, doms, iters)
        chunks = self._chunks(doms, 1)  # workers get and return stacked arrays (cheap to pickle)
        parts = self._starmap(bound_batch, ctx, [stack(c) for c in chunks], iters)
        return [d for c, r in zip(chunks, parts) for d in unstack(ctx, c, r)]

    def _map(self, fn, ctx: Context, doms: list[Domain], arg, chunks_per_worker: int = 1) -> list:
        """``fn(ctx, doms, arg)`` (a list per domain), in the worker pool when there is one."""
        if self.pool is None or len(doms) < 2:
            return fn(ctx, doms, arg)
        return [d for p in self._starmap(fn, ctx, self._chunks(doms, chunks_per_worker), arg) for d in p]

    def _chunks(self, doms: list, per_worker: int) -> list[list]:
        size = -(-len(doms) // (self.opt.workers * per_worker))
        return [doms[i:i + size] for i in range(0, len(doms), size)]

    def _starmap(self, fn, ctx: Context, chunks: list, arg) -> list:
        """``fn(ctx, chunk, arg)`` per chunk in the pool; the workers' CPU seconds are counted."""
        parts = self.pool.starmap(_timed, [(fn, ctx, c, arg) for c in chunks])
        self._worker_cpu += sum(cpu for _, cpu in parts)
        return [p for p, _ in parts]

    def _search_seconds(self) -> float:
        """Seconds of search work, load-independent: this process's CPU seconds plus the workers' CPU
        seconds per worker (on an idle machine about the wall seconds since the start)."""
        return time.process_time() - self._cpu0 + self._worker_cpu / max(1, self.opt.workers)

    def _lp_finish(self, ctx: Context, region, doms: list[Domain]) -> Optional[Verdict]:
        """The LP finisher on the open input boxes deep enough (sets their ``lp_bound`` when it closes them);
        a violated verdict when an exact LP leaf gives a replayed counterexample."""
        if not self._input_mode or self.opt.lp_depth <= 0 or self._lp_net is None:
            return None
        if self._search_seconds() < self.opt.lp_after * self.q.timeout:  # CPU, not wall: under load the
            return None  # wall gate let the finisher start early on easy instances (1_1 prop_3: 7.2 vs 3.8 s)
        todo = [d for d in doms if d.score >= 0 and d.depth >= max(self.opt.lp_depth, d.lp_next)]
        # the round's LP work fits the round target: the boxes nearest to closing first
        room = self._round_target() * max(1, self.opt.workers) / self._lp_box_seconds
        todo = sorted(todo, key=lambda d: d.score)[:max(1, int(room))]
        if not todo:
            return None
        todo.sort(key=lambda d: tuple(d.lo))  # neighbours in one chunk: their LPs start from each other's bases
        t = time.monotonic()
        outs = self._map(lp_close, ctx, [(d.lo, d.hi, d.zl, d.zu) for d in todo], self.opt.lp_budget,
                         chunks_per_worker=2)  # uneven work per box
        self._lp_box_seconds = 0.5 * self._lp_box_seconds + 0.5 * (time.monotonic() - t) * max(1, self.opt.workers) / len(todo)
        for d, o in zip(todo, outs):
            self.stats.lps += o.lps
            if o.bound is not None:
                d.lp_bound = o.bound
                self.stats.lp_closed += 1
            d.lp_next = d.depth + self.opt.lp_retry
        return self._replay(region, [x for o in outs for x in o.candidates], "exact LP leaf of the LP finisher")

    # ----- counterexamples ----------------------------------------------------------------------
    def _candidates(self, doms: list[Domain]) -> np.ndarray:
        """Per domain the box vertex maximising the linear bound of its hardest row."""
        pts = []
        for d in doms:
            row = int(np.argmin(d.upper))
            pts.append(np.where(d.A_x[row] > 0, d.hi, d.lo))
        return np.array(pts).reshape(len(doms), -1)

    def _check_candidates(self, region, doms: list[Domain]) -> Optional[Verdict]:
        if not doms:
            return None
        return self._replay(region, list(self._candidates(doms)), "vertex of a sub-problem's linear bound")

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

    def _falsify(self, region, frontier: list[Domain]) -> Optional[Verdict]:
        worst = sorted(frontier, key=lambda d: d.score)[-4:]
        seeds = list(self._candidates(worst)) + [0.5 * (d.lo + d.hi) for d in worst]
        q = Query(self.q.network, InputSet([region]), prop=self.q.prop, timeout=self.q.timeout, seed=self.q.seed)
        budget = self.opt.falsify_share * self.opt.falsify_every
        res = falsify.search(q, samples=100, starts=2, steps=20, rng=self.rng, seeds=seeds,
                             deadline=min(self.deadline, time.monotonic() + budget))
        self._last_fals = time.monotonic()
        if res.counterexample is not None:
            return self._violated(res.counterexample, "falsifier seeded by the search (float32/float64 replay)")
        return None

    def _heartbeat(self, frontier: list[Domain], what: str) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.opt.heartbeat:
            return
        self._last_beat = now
        worst = max(d.score for d in frontier)
        self.opt.progress.say(f"bab {what}: {len(frontier)} open, {self.stats.bounded} bounded, worst bound "
                              f"{-worst:.4g}, depth {self.stats.max_depth}, {self.deadline - now:.0f} s left")


BACKEND = BabBackend()
