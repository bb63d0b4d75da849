"""Branch and bound over ReLU phases on graph networks (residual Add, Concat, MaxPool; DESIGN.md §10, §11).

The search :mod:`lumpver.verifiers.bab_graph` runs on high-dimensional inputs (CIFAR: 3072), where
splitting the input box is hopeless. Per region and unsafe disjunct ``A y <= b``:

1. the root: graph CROWN bounds of every node (:func:`lumpver.bounds.graph_engine.propagate_graph`),
   then the bound of every row of ``b - A y`` with alpha-optimised lower slopes
   (:func:`lumpver.bounds.graph_batched.optimise_graph`); the disjunct is excluded on a sub-problem
   once one row's sound upper bound is below 0;
2. an open sub-problem (:class:`GDomain`) splits the unstable ReLU with the best BaBSR-like score
   ``max(a, 0) tu + 1e-3 |a| (u - l)`` (``a`` the neuron's coefficient in the bound of the row closest
   to closing, ``tu`` the intercept of its upper line) into ``z <= 0`` and ``z >= 0``: the split
   clamps the neuron's bounds and enters the bound with a multiplier ``beta >= 0`` (beta-CROWN);
   children are bounded ``batch`` at a time in one numpy pass (``workers`` > 1: that many forked
   processes, each a share of the batch), warm-started with their parent's slopes and multipliers;
   on graphs with a max pool and cheap root bounds every child's intermediate bounds are recomputed
   by graph CROWN with the clamps (:func:`recompute_children`), else they stay the root's (sound on
   a sub-problem);
   a sub-problem without unstable ReLU bisects its input box;
3. the box vertex maximising each new open sub-problem's linear bound is tried as a counterexample,
   and a falsifier round seeded by the worst sub-problems runs every ``falsify_every`` seconds.

Soundness as in :mod:`lumpver.verifiers.bab`: ``proved`` only when every sub-problem is closed by a
bound with outward rounding (:mod:`lumpver.bounds.rounding`); ``violated`` only with a float32 input
inside the region whose violation the float64 and float32 forward passes reproduce (the command
replays it on the ONNX file); timeouts, the domain cap and the depth cap give ``unknown``.
"""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lumpver.bounds.blas import one_blas_thread
from lumpver.bounds.graph_batched import GraphBatch, GraphObjective, optimise_graph, relaxed_inputs, splittable
from lumpver.bounds.graph_engine import GraphBounds, PreparedGraph, propagate_graph
from lumpver.bounds.region import region_box
from lumpver.specs.inputset import Box, InputSet
from lumpver.verifiers import falsify
from lumpver.verifiers.base import Query, Verdict

#: keep each sub-problem's own slopes (warm start of its children) below this many values per domain
ALPHA_KEEP = 200_000


@dataclass
class GDomain:
    """One open sub-problem: input box, node bounds (shared with its parent; the splits clamp them when
    bounding, so a split copies no layer), the splits, the multipliers and slopes of its bound, its
    bound per row and the split its children will take."""

    lo: np.ndarray
    hi: np.ndarray
    lower: dict[str, np.ndarray]
    upper: dict[str, np.ndarray]
    bound: np.ndarray  # (m,) sound upper bound of each row of b - A y: closed once one is < 0
    splits: tuple = ()  # ((activation node, neuron, +1 | -1), ...)
    beta: Optional[np.ndarray] = None  # (m, len(splits))
    alpha: Optional[dict] = None  # activation node -> (m, n); None: the root's slopes
    A_x: Optional[np.ndarray] = None  # (m, n_in)
    branch: Optional[tuple[str, int]] = None
    depth: int = 0

    @property
    def score(self) -> float:
        return float(np.min(self.bound))


@dataclass
class SearchContext:
    """What bounding a batch of sub-problems needs."""

    pg: PreparedGraph
    lam: np.ndarray  # (m, n_out): rows of -A
    offset: np.ndarray  # (m,): b
    iters: int
    lr: float
    recompute: bool = False  # recompute intermediate bounds of every child (small graphs)
    deadline: Optional[float] = None
    root_alpha: dict = field(default_factory=dict)  # (1, m, n) per splittable activation
    relaxed: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.relaxed = relaxed_inputs(self.pg)
        self.keep_alpha = self.lam.shape[0] * sum(self.pg.net.node(a).size for a in self.pg.net.order[1:]
                                                  if splittable(self.pg, a)) <= ALPHA_KEEP


# ----------------------------------------------------------------------------------------
# bounding a batch
# ----------------------------------------------------------------------------------------
def _clamp(ctx: SearchContext, splits: tuple, lower: dict, upper: dict, b=None) -> None:
    """Impose the splits on node bounds in place (``b``: the sub-problem's row of stacked arrays):
    ``z_i >= 0`` raises the lower bound to 0, ``z_i <= 0`` lowers the upper bound to 0."""
    for a, i, sign in splits:
        u = ctx.pg.net.node(a).inputs[0]
        at = i if b is None else (b, i)
        if sign > 0:
            lower[u][at] = max(lower[u][at], 0.0)
        else:
            upper[u][at] = min(upper[u][at], 0.0)


def _refresh(ctx: SearchContext, d: GDomain) -> GDomain:
    """Intermediate bounds of ``d`` recomputed by graph CROWN on its box, intersected with its own
    clamped by its splits (so the relaxations after a split see them)."""
    nodes = {ctx.pg.net.node(a).inputs[0] for a, _, _ in d.splits}
    lower = {k: v.copy() if k in nodes else v for k, v in d.lower.items()}
    upper = {k: v.copy() if k in nodes else v for k, v in d.upper.items()}
    _clamp(ctx, d.splits, lower, upper)
    prior = GraphBounds(lower, upper, {}, ctx.pg.net.output, "crown")
    gb = propagate_graph(ctx.pg, Box(d.lo, d.hi), prior=prior, deadline=ctx.deadline)
    d.lower, d.upper = gb.lower, gb.upper
    return d


def _stack(ctx: SearchContext, doms: list[GDomain]) -> tuple[GraphBatch, dict, dict]:
    B, m = len(doms), ctx.lam.shape[0]
    batch = GraphBatch(np.stack([d.lo for d in doms]), np.stack([d.hi for d in doms]),
                       {u: np.stack([d.lower[u] for d in doms]) for u in ctx.relaxed},
                       {u: np.stack([d.upper[u] for d in doms]) for u in ctx.relaxed})
    beta: dict[str, np.ndarray] = {}
    for b, d in enumerate(doms):
        _clamp(ctx, d.splits, batch.lower, batch.upper, b)
        for k, (a, i, s) in enumerate(d.splits):
            if a not in batch.phase:
                n = ctx.pg.net.node(a).size
                batch.phase[a], beta[a] = np.zeros((B, n)), np.zeros((B, m, n))
            batch.phase[a][b, i] = s
            if d.beta is not None and k < d.beta.shape[1]:
                beta[a][b, :, i] = d.beta[:, k]
    alpha = {a: np.stack([d.alpha[a] if d.alpha is not None else v[0] for d in doms])
             for a, v in ctx.root_alpha.items()}
    return batch, alpha, beta


def bound_domains(ctx: SearchContext, doms: list[GDomain], iters: Optional[int] = None) -> list[GDomain]:
    """Bound the domains in one batched pass (bounds, slopes, multipliers and next split filled in)."""
    if ctx.recompute:
        doms = [_refresh(ctx, d) for d in doms]
    batch, alpha, beta = _stack(ctx, doms)
    obj = optimise_graph(ctx.pg, batch, ctx.lam, ctx.offset, alpha, beta, ctx.iters if iters is None else iters, ctx.lr)
    branch = _branching(ctx, batch, obj)
    out = []
    for b, d in enumerate(doms):
        d.bound, d.A_x, d.branch = obj.upper[b], obj.A_x[b], branch[b]
        d.alpha = {a: v[b] for a, v in obj.alpha.items()} if ctx.keep_alpha or not ctx.root_alpha else None
        if d.splits:
            d.beta = np.stack([obj.beta[a][b, :, i] for a, i, _ in d.splits], axis=1)
        out.append(d)
    return out


def _branching(ctx: SearchContext, batch: GraphBatch, obj: GraphObjective) -> list[Optional[tuple[str, int]]]:
    """Per sub-problem the unstable ReLU with the best BaBSR-like score (module docstring), or None."""
    B = batch.size
    row = np.argmin(obj.upper, axis=1)
    best, arg = np.full(B, -np.inf), [None] * B
    for a, coef in obj.coef.items():
        if not splittable(ctx.pg, a):
            continue
        u = ctx.pg.net.node(a).inputs[0]
        lo, hi = batch.lower[u], batch.upper[u]
        uns = (lo < 0) & (hi > 0)
        if not np.any(uns):
            continue
        c = coef[np.arange(B), row]
        width = np.where(uns, hi - lo, 1.0)
        tu = np.where(uns, -lo * hi / width, 0.0)
        s = np.where(uns, np.maximum(c, 0.0) * tu + 1e-3 * np.abs(c) * width + 1e-12 * width, -np.inf)
        i = np.argmax(s, axis=1)
        top = s[np.arange(B), i]
        for b in np.flatnonzero(top > best):
            best[b], arg[b] = top[b], (a, int(i[b]))
    return arg


def split(ctx: SearchContext, d: GDomain) -> list[GDomain]:
    """The two children of ``d``: its ReLU split (clamp + phase), or its input box bisected."""
    kids = []
    if d.branch is None:
        row = int(np.argmin(d.bound))
        width = d.hi - d.lo
        dim = int(np.argmax(np.abs(d.A_x[row]) * width + 1e-12 * width))
        at = 0.5 * (d.lo[dim] + d.hi[dim])
        for side in (0, 1):
            lo, hi = d.lo.copy(), d.hi.copy()
            (hi if side == 0 else lo)[dim] = at
            kids.append(GDomain(lo, hi, dict(d.lower), dict(d.upper), d.bound, d.splits, d.beta, d.alpha, d.A_x,
                                None, d.depth + 1))
        return kids
    a, i = d.branch
    beta = np.zeros((ctx.lam.shape[0], 0)) if d.beta is None else d.beta
    beta = np.concatenate([beta, np.zeros((beta.shape[0], 1))], axis=1)
    for sign in (-1.0, 1.0):  # the clamp is applied from ``splits`` when bounding (bounds stay shared)
        kids.append(GDomain(d.lo, d.hi, d.lower, d.upper, d.bound, d.splits + ((a, i, sign),), beta, d.alpha, d.A_x,
                            None, d.depth + 1))
    return kids


_CTX: Optional[SearchContext] = None  # the context of the forked workers of the current disjunct


def _pool(ctx: SearchContext, workers: int):
    """A fork pool of ``workers`` processes that inherit ``ctx`` (None for one worker)."""
    global _CTX
    if workers <= 1:
        return None
    _CTX = ctx
    return multiprocessing.get_context("fork").Pool(workers, initializer=one_blas_thread)  # no oversubscription


def _bound_chunk(doms: list[GDomain]) -> list[GDomain]:
    assert _CTX is not None
    return bound_domains(_CTX, doms)


def bound_parallel(ctx: SearchContext, doms: list[GDomain], pool, workers: int) -> list[GDomain]:
    """:func:`bound_domains` split into ``workers`` chunks bounded in the pool's processes."""
    if pool is None or len(doms) < 2 * workers:
        return bound_domains(ctx, doms)
    size = -(-len(doms) // workers)
    return [d for part in pool.map(_bound_chunk, [doms[i:i + size] for i in range(0, len(doms), size)]) for d in part]


def recompute_children(pg: PreparedGraph, t_prop: float, batch: int, round_target: float) -> bool:
    """Recompute every child's intermediate bounds only where a max pool reads them (its relaxation
    depends on them, a ReLU split's multiplier does not reach it) and a round of that stays within
    half the round time. On max-pool-free graphs the clamps + beta alone closed the same properties
    in 1.5-3x less time (random residual nets, 12-16 inputs, bench/RESULTS.md)."""
    has_pool = any(pg.net.node(n).kind == "maxpool" for n in pg.net.order)
    return has_pool and t_prop * batch <= 0.5 * round_target


# ----------------------------------------------------------------------------------------
# counterexamples
# ----------------------------------------------------------------------------------------
def vertex(lo: np.ndarray, hi: np.ndarray, bound: np.ndarray, A_x: np.ndarray) -> np.ndarray:
    """The box vertex maximising the linear bound of the row closest to closing."""
    return np.where(A_x[int(np.argmin(bound))] > 0, hi, lo)


def check_points(query: Query, region, pts: list[np.ndarray], how: str) -> Optional[Verdict]:
    """``violated`` for the first point whose float32 rounding inside the region violates the
    property in float64 and float32, else None."""
    if not pts:
        return None
    pts_a = np.array(pts).reshape(len(pts), -1)
    for x, y in zip(pts_a, query.network.forward(pts_a)):
        if query.prop.is_unsafe(y):
            xf = falsify.to_float32_inside(x, region)
            if xf is not None and falsify.confirms(query, xf):
                return Verdict("violated", "bab", f"{how} (float32/float64 replay)", counterexample=xf)
    return None


def seeded_falsify(query: Query, region, seeds: list[np.ndarray], rng, deadline: float,
                   attack: Optional[falsify.AttackOptions], restarts: int = 0) -> Optional[Verdict]:
    """A falsifier run on the region seeded by points of the search (``attack``: its APGD options; ``restarts``:
    restart rounds until the deadline, see :func:`falsify.search`)."""
    q = Query(query.network, InputSet([region]), prop=query.prop, timeout=query.timeout, seed=query.seed)
    res = falsify.search(q, samples=100, starts=2, steps=20, rng=rng, seeds=seeds, deadline=deadline, attack=attack,
                         restarts=restarts)
    if res.counterexample is not None:
        return Verdict("violated", "bab", "falsifier seeded by the search (float32/float64 replay)",
                       counterexample=res.counterexample)
    return None


# ----------------------------------------------------------------------------------------
# the search
# ----------------------------------------------------------------------------------------
class ReluSearch:
    """ReLU-phase branch and bound of one query on a graph network (module docstring)."""

    def __init__(self, query: Query, opt, pg: PreparedGraph, t0: float, stats: dict, rng) -> None:
        self.q, self.opt, self.pg, self.stats, self.rng = query, opt, pg, stats, rng
        self.deadline = t0 + query.timeout
        self._last_fals = self._last_beat = time.monotonic()
        self._roots: dict[int, tuple[GraphBounds, float]] = {}  # per region: node bounds, seconds
        self.fals_left = 0.0  # initial falsifier seconds kept for when a root bound stays open (bab_graph.py)

    def _root_bounds(self, region, box: Box) -> tuple[GraphBounds, float]:
        """Graph CROWN bounds of every node on the region's box, computed once for all disjuncts."""
        if id(region) not in self._roots:
            t = time.monotonic()
            half = t + 0.5 * max(self.deadline - t, 0.0)  # intermediate CROWN may use half the time left
            self.opt.progress.say(f"bab (graph): CROWN bounds of {len(self.pg.net.order)} nodes "
                                  f"({self.pg.net.n_features} values), at most {half - t:.0f} s")
            gb = propagate_graph(self.pg, box, deadline=half)
            self.opt.progress.say(f"bab (graph): root bounds in {time.monotonic() - t:.1f} s, {gb.n_unstable()} "
                                  f"unstable ReLUs{'' if gb.complete else ' (cut by the time limit: interval bounds after it)'}")
            self._roots[id(region)] = (gb, time.monotonic() - t)
        return self._roots[id(region)]

    def disjunct(self, region, A: np.ndarray, b: np.ndarray, what: str) -> Optional[Verdict]:
        """None when the disjunct is excluded on the region, else a violated/unknown verdict."""
        box = region_box(region)
        t_root = time.monotonic()
        gb, t_prop = self._root_bounds(region, box)
        ctx = SearchContext(self.pg, -A, b, self.opt.iters, self.opt.lr, deadline=self.deadline)
        round_target = min(3.0, max(0.3, 0.05 * self.q.timeout))
        ctx.recompute = recompute_children(self.pg, t_prop, self.opt.batch, round_target)
        self.stats["recompute"] = ctx.recompute
        root = GDomain(box.lower.astype(np.float64), box.upper.astype(np.float64),
                       {u: gb.lower[u] for u in (gb.lower if ctx.recompute else ctx.relaxed)},
                       {u: gb.upper[u] for u in (gb.upper if ctx.recompute else ctx.relaxed)}, np.zeros(b.shape))
        recompute, ctx.recompute = ctx.recompute, False  # the root's bounds are fresh
        (root,) = bound_domains(ctx, [root], self.opt.root_iters)
        ctx.recompute = recompute
        if root.score >= 0 and self.fals_left > 0:  # the root stays open: the initial falsifier's rest
            seed = [vertex(root.lo, root.hi, root.bound, root.A_x)]
            hit = seeded_falsify(self.q, region, seed, self.rng, time.monotonic() + self.fals_left, self.opt.attack,
                                 10**6)
            self.fals_left = 0.0
            if hit is not None:
                return hit
        ctx.root_alpha = {a: v[None] for a, v in root.alpha.items()}
        if not ctx.keep_alpha:
            root.alpha = None
        per_dom = max(time.monotonic() - t_root, 1e-3)
        pool = _pool(ctx, self.opt.workers)
        try:
            return self._loop(ctx, region, [root], what, per_dom, round_target, pool)
        finally:
            if pool is not None:
                pool.terminate()

    def _loop(self, ctx: SearchContext, region, frontier: list[GDomain], what: str, per_dom: float,
              round_target: float, pool=None) -> Optional[Verdict]:
        batch, fresh = 1, frontier
        self.stats["bounded"] = self.stats.get("bounded", 0) + 1
        while True:
            frontier = [d for d in frontier if d.score >= 0]
            hit = check_points(self.q, region, [vertex(d.lo, d.hi, d.bound, d.A_x) for d in fresh if d.score >= 0],
                               "vertex of a sub-problem's linear bound")
            if hit is not None or not frontier:
                return hit
            now = time.monotonic()
            if now > self.deadline:
                return Verdict("unknown", "bab", f"timeout after {self.q.timeout:g} s ({len(frontier)} sub-problems "
                               f"open, {what})")
            if len(frontier) > self.opt.max_domains:
                return Verdict("unknown", "bab", f"more than {self.opt.max_domains} open sub-problems ({what})")
            self._heartbeat(frontier, what)
            if now - self._last_fals > self.opt.falsify_every:
                hit = self._falsify(region, frontier)
                if hit is not None:
                    return hit
            frontier.sort(key=lambda d: d.score)
            cap = self.opt.batch * max(1, self.opt.workers)
            batch = int(max(1, min(cap, 2 * batch, round_target / (2 * per_dom))))  # grow gradually
            todo, frontier = frontier[-batch:], frontier[:-batch]
            if any(d.depth >= self.opt.max_depth for d in todo):
                return Verdict("unknown", "bab", f"depth cap {self.opt.max_depth} ({what})")
            t_round = time.monotonic()
            fresh = bound_parallel(ctx, [k for d in todo for k in split(ctx, d)], pool, self.opt.workers)
            per_dom = max((time.monotonic() - t_round) / len(fresh), 1e-4)
            self.stats["rounds"] = self.stats.get("rounds", 0) + 1
            self.stats["bounded"] += len(fresh)
            self.stats["closed"] = self.stats.get("closed", 0) + sum(d.score < 0 for d in fresh)
            self.stats["max_depth"] = max(self.stats.get("max_depth", 0), max(d.depth for d in fresh))
            frontier.extend(fresh)

    def _falsify(self, region, frontier: list[GDomain]) -> Optional[Verdict]:
        worst = sorted(frontier, key=lambda d: d.score)[-4:]
        seeds = [vertex(d.lo, d.hi, d.bound, d.A_x) for d in worst] + [0.5 * (d.lo + d.hi) for d in worst]
        budget = self.opt.falsify_share * self.opt.falsify_every
        hit = seeded_falsify(self.q, region, seeds, self.rng, min(self.deadline, time.monotonic() + budget),
                             self.opt.attack)
        self._last_fals = time.monotonic()
        return hit

    def _heartbeat(self, frontier: list[GDomain], what: str) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.opt.heartbeat:
            return
        self._last_beat = now
        self.opt.progress.say(f"bab (graph, ReLU splits) {what}: {len(frontier)} open, {self.stats['bounded']} "
                              f"bounded, worst bound {-max(d.score for d in frontier):.4g}, depth "
                              f"{self.stats.get('max_depth', 0)}, {self.deadline - now:.0f} s left")
