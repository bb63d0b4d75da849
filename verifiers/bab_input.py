"""One expansion step of the input-splitting search, and where it runs (DESIGN.md §11).

:func:`expand` takes open input boxes (parents) and returns their open children, everything a round
does to them in one place: the split (every dimension's two halves tried on one-row disjuncts at even
depths, else :func:`lumpver.verifiers.bab_branch.smear_dim`), the batched bounding of the children, on
multi-row (conjunctive) disjuncts the row combination (:func:`joint_close`, :mod:`lumpver.bounds.combine`), the
LP finisher on the deep ones (:func:`lumpver.verifiers.lp_finish.finish_many`) and each open child's
counterexample candidate (the box vertex maximising its hardest row's linear bound). The search keeps
only the frontier, the falsifier and the replay of candidates (:mod:`lumpver.verifiers.bab`).

With worker processes (:class:`Pipeline`) each task is one such expansion of a chunk of parents, sent and
returned as stacked arrays (:class:`Packed`); up to two tasks per worker are in flight, so the workers
keep bounding while the search process merges results, picks the next parents and runs the falsifier
(before: one synchronous round, the workers idle during the serial share; bench/RESULTS.md). Where work
runs changes nothing in what closes a box: the same sound bounds decide.
"""
from __future__ import annotations

import heapq
import itertools
import queue
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from lumpver.bounds.combine import best_weights, joint_upper
from lumpver.verifiers.bab_branch import Batch, Context, Domain, bound, input_split, stack
from lumpver.verifiers.lp_finish import LpNet, finish_many


@dataclass
class Plan:
    """How to expand one chunk: ``try_all`` (one-row disjunct, few inputs: every dimension tried at even depths);
    the LP finisher on open children from depth ``lp_depth`` on (0: off for this chunk), at most ``lp_room``
    boxes (those nearest to closing), ``lp_budget`` LPs each, retried ``lp_retry`` splits deeper."""

    try_all: bool
    lp_depth: int = 0
    lp_budget: int = 8
    lp_retry: int = 2
    lp_room: int = 1
    joint: bool = True  # the row combination on multi-row disjuncts (:func:`joint_close`)


@dataclass
class Packed:
    """Domains of the input-splitting search stacked on a batch axis (what crosses the process boundary:
    a few arrays, not an object per domain). ``lp_bound`` NaN for None; no phases, betas or coefficients
    (input splitting uses none of them)."""

    batch: Batch
    upper: np.ndarray  # (n, m)
    A_x: Optional[np.ndarray]  # (n, m, n_in)
    depth: np.ndarray
    lp_next: np.ndarray
    lp_bound: np.ndarray


def pack(doms: list[Domain]) -> Packed:
    A_x = None if any(d.A_x is None for d in doms) else np.stack([d.A_x for d in doms])
    return Packed(stack(doms), np.stack([d.upper for d in doms]), A_x, np.array([d.depth for d in doms]),
                  np.array([d.lp_next for d in doms]),
                  np.array([np.nan if d.lp_bound is None else d.lp_bound for d in doms]))


def unpack(p: Packed) -> list[Domain]:
    b = p.batch
    out = []
    for i in range(b.lo.shape[0]):
        lp = float(p.lp_bound[i])
        out.append(Domain(b.lo[i], b.hi[i], [a[i] for a in b.zl], [a[i] for a in b.zu],
                          [None if a is None else a[i] for a in b.alpha], p.upper[i],
                          None if p.A_x is None else p.A_x[i], None, int(p.depth[i]), b.start,
                          lp_bound=None if lp != lp else lp, lp_next=int(p.lp_next[i])))
    return out


@dataclass
class Expanded:
    """The outcome of :func:`expand`: the open children (``kids``, or ``packed`` on their way back from a
    worker), counts, the candidate points to replay, and the CPU seconds it took where it ran."""

    kids: list[Domain]
    parents: int
    bounded: int  # children bounded (closed ones included; not the trial halves of try-all)
    closed: int
    vertices: np.ndarray  # (len(kids), n_in)
    lp_points: list[np.ndarray] = field(default_factory=list)  # exact LP leaves
    lps: int = 0
    lp_closed: int = 0
    lp_boxes: int = 0
    lp_seconds: float = 0.0  # CPU seconds in the LP finisher
    joint_closed: int = 0  # closed by a combination of the rows (:func:`joint_close`)
    joint_tries: int = 0  # open boxes of multi-row disjuncts :func:`joint_close` looked at
    seconds: float = 0.0  # CPU seconds of the whole expansion
    packed: Optional[Packed] = None


def vertices(doms: list[Domain]) -> np.ndarray:
    """Per domain the box vertex maximising the linear bound of its hardest row (a counterexample candidate)."""
    if not doms:
        return np.zeros((0, 0))
    pts = []
    for d in doms:
        row = int(np.argmin(d.upper))
        pts.append(np.where(d.A_x[row] > 0, d.hi, d.lo))
    return np.array(pts).reshape(len(doms), -1)


def split_and_bound(ctx: Context, todo: list[Domain], try_all: bool) -> list[Domain]:
    """Children of every domain, bounded. ``try_all``: at even depths every dimension's two halves are bounded
    with the inherited slopes, the dimension whose worse half is best is kept, and its open halves get the slope
    optimisation; at odd depths smear (either alone stalls on some ACAS Xu instances, bench/RESULTS.md)."""
    if try_all:
        smear = [d for d in todo if d.depth % 2 == 1]
        rest = [d for d in todo if d.depth % 2 == 0]
        return split_and_bound(ctx, smear, False) + (_try_all(ctx, rest) if rest else [])
    kids = [k for d in todo for k in input_split(d)]
    return bound(ctx, kids) if kids else []


def _try_all(ctx: Context, todo: list[Domain]) -> list[Domain]:
    n = todo[0].lo.shape[0]
    cands = bound(ctx, [k for d in todo for i in range(n) for k in input_split(d, i)], iters=0)
    worse = np.array([c.score for c in cands]).reshape(len(todo), n, 2).max(axis=2)
    kept = []
    for j, i in enumerate(np.argmin(worse, axis=1)):  # the first dimension whose worse half is best
        kept.extend(cands[2 * (j * n + i): 2 * (j * n + i) + 2])
    closed = [d for d in kept if d.score < 0]
    open_ = [d for d in kept if d.score >= 0]
    return closed + (bound(ctx, open_) if open_ else [])


#: :func:`joint_close` bounds a box's row combination when the rows' linear bounds predict ``phi`` below this
#: share of the box's best single-row bound (``phi < 0``: the combination of the linear bounds closes it); vdp
#: proxy s0_5, sub-problems bounded to decide: share 0: 5,233, 0.3: 4,365, 0.6: 4,025, 1.0: 3,921 (bench/RESULTS.md)
JOINT_SHARE = 1.0
#: Adam steps on the combined row's slopes (from the registry's slopes; 0, 1 and 5 closed the same boxes there)
JOINT_ITERS = 0


#: the search keeps bounding row combinations while at least ``JOINT_RATE`` of the tries closed a box, judged
#: after ``JOINT_PROBE`` tries (ACAS Xu 3_3 prop_2, 4 rows: 1 box closed in 125k, 8 % more CPU per box; vdp
#: proxies: 20-25 % of the tries close, bench/RESULTS.md)
JOINT_PROBE = 2000
JOINT_RATE = 0.02


def joint_pays(tries: int, closed: int) -> bool:
    """Whether the search keeps bounding row combinations (:data:`JOINT_PROBE`, :data:`JOINT_RATE`)."""
    return tries < JOINT_PROBE or closed >= JOINT_RATE * tries


def joint_close(ctx: Context, kids: list[Domain]) -> tuple[int, int]:
    """Close open boxes of a multi-row disjunct by a non-negative combination of the rows
    (:mod:`lumpver.bounds.combine`): weights from the rows' linear bounds, then the combined row bounded by the
    engine; where its sound upper bound ``U`` is below 0, ``lp_bound`` becomes ``-U / sum(weights)`` (a lower
    bound of ``max_i (A_i y - b_i)``: the box is closed). Returns (open boxes looked at, boxes closed)."""
    todo = [d for d in kids if d.score >= 0 and d.A_x is not None] if ctx.lam.shape[0] > 1 else []
    if not todo:
        return 0, 0
    lo, hi = np.stack([d.lo for d in todo]), np.stack([d.hi for d in todo])
    w, phi = best_weights(np.stack([d.A_x for d in todo]), np.stack([d.upper for d in todo]), lo, hi)
    pick = np.flatnonzero(phi < JOINT_SHARE * np.array([d.score for d in todo]))
    if len(pick) == 0:
        return len(todo), 0
    b = stack([todo[i] for i in pick])
    up = joint_upper(ctx.chain, b.lo, b.hi, b.zl, b.zu, ctx.lam, ctx.offset, w[pick], JOINT_ITERS, ctx.lr)
    closed = 0
    for i, u, s in zip(pick, up, w[pick].sum(axis=1)):
        if u < 0:
            todo[i].lp_bound = max(todo[i].lp_bound or 0.0, -u / (s * (1.0 + 1e-9)))
            closed += 1
    return len(todo), closed


def _lp_finish(ctx: Context, kids: list[Domain], plan: Plan, out: Expanded) -> None:
    """The LP finisher on the open children deep enough (sets ``lp_bound`` where it closes them), the boxes
    nearest to closing first; counts and exact LP leaves into ``out``."""
    if plan.lp_depth <= 0:
        return
    todo = [d for d in kids if d.score >= 0 and d.depth >= max(plan.lp_depth, d.lp_next)]
    todo = sorted(todo, key=lambda d: d.score)[:max(1, plan.lp_room)]
    if not todo:
        return
    todo.sort(key=lambda d: tuple(d.lo))  # neighbours together: their LPs start from each other's bases
    c0 = time.process_time()
    rs = finish_many(ctx.chain, LpNet.of(ctx.chain), [(d.lo, d.hi, d.zl, d.zu) for d in todo], -ctx.lam,
                     ctx.offset, plan.lp_budget)  # the boxes step together: their phase children's CROWN batched
    out.lp_seconds, out.lp_boxes = time.process_time() - c0, len(todo)
    for d, r in zip(todo, rs):
        out.lps += r.lps
        if r.closed:
            d.lp_bound = r.bound
            out.lp_closed += 1
        d.lp_next = d.depth + plan.lp_retry
        out.lp_points.extend(r.candidates)


def expand(ctx: Context, parents: list[Domain], plan: Plan) -> Expanded:
    """Split and bound ``parents``, run the LP finisher (``plan``), keep the open children (module docstring)."""
    c0 = time.process_time()
    kids = split_and_bound(ctx, parents, plan.try_all)
    out = Expanded([], len(parents), len(kids), 0, np.zeros((0, 0)))
    if plan.joint:
        out.joint_tries, out.joint_closed = joint_close(ctx, kids)
    _lp_finish(ctx, kids, plan, out)
    out.kids = [d for d in kids if d.score >= 0]
    out.closed = len(kids) - len(out.kids)
    out.vertices = vertices(out.kids)
    out.seconds = time.process_time() - c0
    return out


def expand_packed(ctx: Context, parents: Packed, plan: Plan) -> Expanded:
    """:func:`expand` in a worker: packed parents in, packed open children out."""
    out = expand(ctx, unpack(parents), plan)
    out.packed, out.kids = (pack(out.kids) if out.kids else None), []
    return out


class Local:
    """Expansions run in this process, one at a time (``fn(todo, plan)``); ``seconds`` is wall time, as the
    round pace of the search measured before."""

    capacity = 1

    def __init__(self, fn: Callable[[list[Domain], Plan], Expanded]) -> None:
        self.fn, self.todo = fn, []

    @property
    def pending(self) -> int:
        return len(self.todo)

    def submit(self, todo: list[Domain], plan: Plan) -> None:
        self.todo.append((todo, plan))

    def collect(self, timeout: float) -> Optional[Expanded]:
        t = time.monotonic()
        out = self.fn(*self.todo.pop(0))
        out.seconds = time.monotonic() - t
        return out


class Pipeline:
    """Expansions in a process pool, up to ``capacity`` in flight; :meth:`collect` returns whichever finished
    first (``seconds``: the worker's CPU seconds)."""

    def __init__(self, pool, ctx: Context, capacity: int) -> None:
        self.pool, self.ctx, self.capacity = pool, ctx, capacity
        self.done: queue.Queue = queue.Queue()
        self.pending = 0

    def submit(self, todo: list[Domain], plan: Plan) -> None:
        self.pool.apply_async(expand_packed, (self.ctx, pack(todo), plan), callback=self.done.put,
                              error_callback=self.done.put)
        self.pending += 1

    def collect(self, timeout: float) -> Optional[Expanded]:
        """The next finished expansion, or None when none finished within ``timeout`` seconds."""
        try:
            out = self.done.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        self.pending -= 1
        if isinstance(out, BaseException):
            raise out
        out.kids = unpack(out.packed) if out.packed is not None else []
        out.packed = None
        return out


class Frontier:
    """The open domains, worst score (farthest from closed) first out."""

    def __init__(self, doms: list[Domain]) -> None:
        self._heap: list = []
        self._seq = itertools.count()
        self.extend(doms)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Domain]:
        return (e[2] for e in self._heap)

    def extend(self, doms: list[Domain]) -> None:
        for d in doms:
            heapq.heappush(self._heap, (-d.score, next(self._seq), d))

    def pop_worst(self, k: int) -> list[Domain]:
        return [heapq.heappop(self._heap)[2] for _ in range(min(k, len(self._heap)))]

    def worst_score(self) -> float:
        return -self._heap[0][0] if self._heap else -np.inf

    def worst(self, k: int) -> list[Domain]:
        return [e[2] for e in heapq.nsmallest(k, self._heap)]
