"""Back-end ``bab`` on graph networks (residual Add, Concat, MaxPool; DESIGN.md §10, §11).

:class:`lumpver.verifiers.bab.BabBackend` hands a query on a :class:`~lumpver.ir.graph.GraphNetwork`
here. After a short falsifier run, a network with more than ``input_split_dims`` inputs (images) is
searched by branch and bound over ReLU phases with alpha/beta-optimised batched bounds
(:mod:`lumpver.verifiers.bab_graph_relu`); a low-dimensional one by input splitting, per region and
unsafe disjunct ``A y <= b``:

1. a short falsifier run (batched APGD, random + PGD through :meth:`GraphNetwork.forward_vjp`); in the ReLU-phase
   search the rest of its budget runs, seeded by the root's linear-bound vertex, once a root bound stays open;
2. CROWN bounds of the graph over the region's box (:mod:`lumpver.bounds.graph_engine`: MaxPool
   relaxation, coefficients summed at branch points): the disjunct is excluded on a box once the
   sound upper bound of some row of ``b - A y`` is negative;
3. open boxes are bisected along the input dimension with the largest ``|a_i| (hi_i - lo_i)`` in the
   linear bound of the row closest to closing (input splitting: complete in the limit for
   low-dimensional inputs, a best effort for images), and the vertex maximising that linear bound
   is tried as a counterexample; a falsifier round seeded by the open boxes runs every few seconds.

Soundness as in :mod:`lumpver.verifiers.bab`: ``proved`` only when every box is closed by bounds
with outward rounding; ``violated`` only with a float32 input inside the region whose violation the
float64 and float32 forward passes reproduce (the command replays it on the ONNX file); timeouts and
the box cap give ``unknown``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lumpver.bounds.graph_engine import PreparedGraph, back_substitute_graph, prepare_graph, propagate_graph
from lumpver.bounds.region import region_box
from lumpver.bounds.rounding import add_hi
from lumpver.specs.inputset import Box
from lumpver.verifiers import falsify
from lumpver.verifiers.bab_graph_relu import ReluSearch, check_points, seeded_falsify, vertex
from lumpver.verifiers.base import Query, Verdict


@dataclass
class _Box:
    """An open sub-box with the linear bounds of its rows (``upper[i]`` bounds ``b_i - A_i y``)."""

    box: Box
    upper: np.ndarray
    A_x: np.ndarray

    @property
    def score(self) -> float:
        return float(np.min(self.upper))


def bound_box(pg: PreparedGraph, box: Box, A: np.ndarray, b: np.ndarray, deadline: Optional[float] = None) -> _Box:
    """Sound upper bounds of every row of ``b - A y`` over ``box`` (intermediate bounds stay interval
    bounds after ``deadline``)."""
    gb = propagate_graph(pg, box, deadline=deadline)
    lb = back_substitute_graph(pg, gb.relax, -A, gb.output)
    return _Box(box, add_hi(lb.upper(box), b), lb.A)


def _halves(d: _Box) -> list[Box]:
    row = int(np.argmin(d.upper))
    width = d.box.upper - d.box.lower
    i = int(np.argmax(np.abs(d.A_x[row]) * width + 1e-12 * width))
    mid = 0.5 * (d.box.lower[i] + d.box.upper[i])
    hi, lo = d.box.upper.copy(), d.box.lower.copy()
    hi[i], lo[i] = mid, mid
    return [Box(d.box.lower.copy(), hi), Box(lo, d.box.upper.copy())]


def check_graph(query: Query, options) -> Verdict:
    """The verdict of ``bab`` on a graph network (module docstring); ``options`` is a ``BabOptions``."""
    t0 = time.monotonic()
    if query.other is not None or query.prop is None:
        return Verdict("unknown", "bab", "bab decides VNN-LIB properties only (no equivalence queries)")
    rng = np.random.default_rng(query.seed)
    relu = query.network.n_inputs > options.input_split_dims
    total, t = min(options.falsify_seconds, 0.1 * query.timeout), time.monotonic()
    split = relu and options.attack is not None and total > options.falsify_first  # as bab.py: the rest when open
    res = falsify.search(query, samples=500, starts=4, steps=30, rng=rng, attack=options.attack,
                         deadline=t + (options.falsify_first if split else total), restarts=0 if split else 10**6)
    if res.counterexample is not None:
        return _done(Verdict("violated", "bab", "falsifier counterexample (float32/float64 replay)",
                             counterexample=res.counterexample), t0)
    pg = prepare_graph(query.network)
    stats: dict = {"splits": "relu" if relu else "input", "boxes": 0, "closed": 0}
    how = ("alpha/beta-CROWN on the graph (batched, MaxPool relaxation)" if relu else "graph CROWN (MaxPool "
           "relaxation)") + ", outward rounding"
    search = ReluSearch(query, options, pg, t0, stats, rng) if relu else None
    if split:
        search.fals_left = total - (time.monotonic() - t)
    for region in query.input_set.regions:
        for d, (A, b) in enumerate(query.prop.disjuncts):
            A, b, what = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64), \
                f"disjunct {d + 1}/{len(query.prop.disjuncts)}"
            v = search.disjunct(region, A, b, what) if search is not None else \
                _disjunct(query, options, pg, region, A, b, t0, stats, rng, what)
            if v is not None:
                v.details = {"stats": stats, "bounds": how}
                return _done(v, t0)
    return _done(Verdict("proved", "bab", "every sub-problem closed by sound graph bounds",
                         details={"stats": stats, "bounds": how}), t0)


def _done(v: Verdict, t0: float) -> Verdict:
    v.seconds = time.monotonic() - t0
    return v


def _disjunct(query: Query, opt, pg: PreparedGraph, region, A, b, t0: float, stats: dict, rng,
              what: str) -> Optional[Verdict]:
    """None when the disjunct is excluded on the region, else a violated/unknown verdict."""
    deadline = t0 + query.timeout
    frontier = [bound_box(pg, region_box(region), A, b, deadline)]
    last_fals = last_beat = time.monotonic()
    while True:
        stats["boxes"] += len(frontier)
        open_ = [d for d in frontier if d.score >= 0]
        stats["closed"] += len(frontier) - len(open_)
        hit = _try_vertices(query, region, open_)
        if hit is not None:
            return hit
        if not open_:
            return None
        now = time.monotonic()
        if now > deadline:
            return Verdict("unknown", "bab", f"timeout after {query.timeout:g} s ({len(open_)} sub-boxes open, {what})")
        if len(open_) > opt.max_domains:
            return Verdict("unknown", "bab", f"more than {opt.max_domains} open sub-boxes ({what})")
        if now - last_beat > opt.heartbeat:
            last_beat = now
            opt.progress.say(f"bab (graph) {what}: {len(open_)} open, {stats['boxes']} bounded, worst bound "
                             f"{-max(d.score for d in open_):.4g}, {deadline - now:.0f} s left")
        if now - last_fals > opt.falsify_every:
            hit = _falsify(query, region, open_, rng, min(deadline, now + opt.falsify_share * opt.falsify_every),
                           opt.attack)
            last_fals = time.monotonic()
            if hit is not None:
                return hit
        open_.sort(key=lambda d: d.score)
        todo, rest = open_[-opt.batch:], open_[:-opt.batch]
        frontier = rest + [bound_box(pg, h, A, b, deadline) for d in todo for h in _halves(d)]


def _try_vertices(query: Query, region, doms: list[_Box]) -> Optional[Verdict]:
    return check_points(query, region, [vertex(d.box.lower, d.box.upper, d.upper, d.A_x) for d in doms],
                        "vertex of a sub-box's linear bound")


def _falsify(query: Query, region, doms: list[_Box], rng, deadline: float,
             attack: Optional[falsify.AttackOptions]) -> Optional[Verdict]:
    worst = sorted(doms, key=lambda d: d.score)[-4:]
    seeds = [vertex(d.box.lower, d.box.upper, d.upper, d.A_x) for d in worst] + \
        [0.5 * (d.box.lower + d.box.upper) for d in worst]
    return seeded_falsify(query, region, seeds, rng, deadline, attack)
