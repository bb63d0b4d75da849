"""Sub-problems of the branch-and-bound search and how they split (DESIGN.md §11).

A :class:`Domain` is an input box plus pre-activation bounds of every layer (ReLU splits are
clamps of those bounds, see :mod:`lumpver.bounds.batched`), the lower slopes that gave its bound
(warm start for its children) and its bound per property row. Two ways to split:

* :func:`relu_split`: the unstable neuron (``l < 0 < u``; ReLU-like, or sigmoid/tanh: split at 0
  into the convex and the concave part; sigmoid/tanh chains split at other points too,
  :func:`split_neuron` with ``at``, chosen in :mod:`lumpver.verifiers.bab_deep`) with the largest BaBSR-like score
  ``max(a, 0) * tu + eps * |a| * (u - l)`` (``a`` the coefficient of the neuron in the back-substituted
  bound of the row closest to closing, ``tu`` the intercept of the upper line) into ``z <= 0`` and
  ``z >= 0``;
* :func:`input_split`: bisect an input dimension: the caller tries every dimension on low-dimensional
  inputs (both halves bounded, the best worst half wins), else :func:`smear_dim` (the linear bounds'
  sensitivity times the box width).

Both children cover the parent exactly (the split point belongs to both), so closing both closes
the parent. :func:`bound` bounds a list of domains in one batched pass (:class:`Context`: what it needs,
shared with worker processes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lumpver.bounds.batched import ALPHA_ACTS, Objective, infeasible, init_alpha, layer_bounds, optimise_alpha
from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.engine import Chain
from lumpver.bounds.intermediate import refine_layers, unstable_count

#: activations split at ``z = 0``: ReLU-like (each side linear) and sigmoid/tanh (each side convex or
#: concave, so the relaxation of the neuron tightens: chord and tangent, relaxations.py)
SPLIT_ACTS = ALPHA_ACTS + ("sigmoid", "tanh")


@dataclass
class Domain:
    """One open sub-problem (see the module docstring)."""

    lo: np.ndarray  # (n_in,)
    hi: np.ndarray
    zl: list[np.ndarray]  # per layer (n_k,)
    zu: list[np.ndarray]
    alpha: list[Optional[np.ndarray]]  # per layer (m, n_k) or None
    upper: np.ndarray  # (m,) sound upper bound of each row of -(A y - b): closed once one is < 0
    A_x: Optional[np.ndarray] = None  # (m, n_in), the linear bound of each row in x
    coeffs: Optional[list[Optional[np.ndarray]]] = None  # per layer (m, n_k)
    depth: int = 0
    start: int = 0  # first layer whose bounds must be recomputed
    phase: Optional[list[np.ndarray]] = None  # per layer (n_k,): +1 split active, -1 inactive, 0 free
    beta: Optional[list[np.ndarray]] = None  # per layer (m, n_k): split multipliers of the bound
    #: per layer (n_k,): the split point of each split neuron (sigmoid/tanh: GenBaB's, not 0); None: all at 0
    cut: Optional[list[np.ndarray]] = None
    #: sound lower bound of ``max_i (A_i y - b_i)`` over the box from the LP finisher or the rows' combination
    #: (bab_input.joint_close; None: neither ran or closed)
    lp_bound: Optional[float] = None
    lp_next: int = 0  # depth from which the LP finisher may (again) be tried on this box's descendants
    _cache: tuple = field(default=(None, None, 0.0), init=False, repr=False, compare=False)

    @property
    def score(self) -> float:
        """How far from closed (the best row's bound; < 0 means closed; the LP finisher's bound counts).
        Cached until ``upper`` or ``lp_bound`` is reassigned (the search sorts its frontier by it every round);
        a NaN row never closes the domain."""
        up, lp, val = self._cache
        if up is not self.upper or lp != self.lp_bound:
            best = min((v for v in self.upper.tolist() if v == v), default=np.inf)
            val = best if self.lp_bound is None else min(best, -self.lp_bound)
            self._cache = (self.upper, self.lp_bound, val)
        return val


@dataclass
class Batch:
    """Domains stacked on a batch axis."""

    lo: np.ndarray
    hi: np.ndarray
    zl: list[np.ndarray]
    zu: list[np.ndarray]
    alpha: Optional[list[Optional[np.ndarray]]]
    start: int
    phase: Optional[list[np.ndarray]]  # None when no domain of the batch has a split
    beta: Optional[list[np.ndarray]]
    cut: Optional[list[np.ndarray]] = None  # None when every split of the batch is at 0


def _stack(arrs: list[np.ndarray]) -> np.ndarray:
    """``np.stack`` of equal-shaped arrays (one domain's field each), 3-4x faster on thousands of small ones."""
    return np.concatenate(arrs).reshape((len(arrs),) + arrs[0].shape)


def stack(doms: list[Domain]) -> Batch:
    depth = len(doms[0].zl)
    alpha = [None if doms[0].alpha[k] is None else _stack([d.alpha[k] for d in doms]) for k in range(depth)]
    phase = beta = None
    if any(d.phase is not None for d in doms):
        phase = [_stack([np.zeros(d.zl[k].shape) if d.phase is None else d.phase[k] for d in doms])
                 for k in range(depth)]
        if all(d.beta is not None for d in doms):
            beta = [_stack([d.beta[k] for d in doms]) for k in range(depth)]
    cut = None
    if any(d.cut is not None for d in doms):
        cut = [_stack([np.zeros(d.zl[k].shape) if d.cut is None else d.cut[k] for d in doms]) for k in range(depth)]
    return Batch(_stack([d.lo for d in doms]), _stack([d.hi for d in doms]),
                 [_stack([d.zl[k] for d in doms]) for k in range(depth)],
                 [_stack([d.zu[k] for d in doms]) for k in range(depth)], alpha, min(d.start for d in doms),
                 phase, beta, cut)


def root_alpha(ch: Chain, zl: list[np.ndarray], zu: list[np.ndarray], m: int) -> list:
    """A root domain's starting lower slopes, ``(m, n_k)`` per layer (the registry's adaptive ones): with None
    everywhere the batched engine has nothing to optimise and the root keeps its CROWN slopes."""
    return [None if a is None else a[0] for a in init_alpha(ch, [z[None] for z in zl], [z[None] for z in zu], m)]


def _child(dom: Domain, **changes) -> Domain:
    base = dict(lo=dom.lo, hi=dom.hi, zl=list(dom.zl), zu=list(dom.zu), alpha=dom.alpha, upper=dom.upper,
                depth=dom.depth + 1, start=dom.start, beta=dom.beta, lp_next=dom.lp_next,
                phase=None if dom.phase is None else list(dom.phase), cut=None if dom.cut is None else list(dom.cut))
    base.update(changes)
    return Domain(**base)


def relu_split(dom: Domain, chain: Chain) -> Optional[list[Domain]]:
    """Split the unstable neuron with the best score; None if there is none."""
    best = babsr_candidates(dom, chain, 1)
    return split_neuron(dom, *best[0]) if best else None


def babsr_candidates(dom: Domain, chain: Chain, top: int) -> list[tuple[int, int]]:
    """The ``top`` unstable neurons ``(layer, index)`` with the best BaBSR-like scores (module docstring), best
    first."""
    row = int(np.argmin(dom.upper))
    cands: list[tuple[float, int, int]] = []
    for k in range(chain.depth - 1):
        if chain.acts[k] not in SPLIT_ACTS:
            continue
        l, u = dom.zl[k], dom.zu[k]
        uns = (l < 0) & (u > 0)
        if not np.any(uns):
            continue
        a = dom.coeffs[k][row] if dom.coeffs is not None and dom.coeffs[k] is not None else np.ones_like(l)
        width = np.where(uns, u - l, 1.0)
        tu = np.where(uns, -l * u / width, 0.0)
        s = np.where(uns, np.maximum(a, 0.0) * tu + 1e-3 * np.abs(a) * width + 1e-12 * width, -np.inf)
        idx = np.argsort(-s, kind="stable")[: min(top, int(np.sum(uns)))]
        cands.extend((float(s[i]), k, int(i)) for i in idx)
    cands.sort(key=lambda c: -c[0])  # stable: ties keep the lower layer, then the lower index
    return [(k, i) for _, k, i in cands[:top]]


def split_neuron(dom: Domain, k: int, i: int, at: float = 0.0) -> list[Domain]:
    """The two children of ``dom`` with neuron ``i`` of layer ``k`` cut at ``at`` (ReLU: 0): ``z <= at``
    (inactive) and ``z >= at`` (active); a cut other than 0 is recorded in ``cut`` (the beta term's constant)."""
    hi_zu = dom.zu[k].copy()
    hi_zu[i] = at  # inactive: z <= at
    act_zl = dom.zl[k].copy()
    act_zl[i] = at  # active: z >= at
    kids = []
    for sign in (-1.0, 1.0):
        kid = _child(dom, start=k + 1)
        if sign < 0:
            kid.zu[k] = hi_zu
        else:
            kid.zl[k] = act_zl
        if kid.phase is None:
            kid.phase = [np.zeros(a.shape) for a in dom.zl]
            kid.beta = None
        kid.phase[k] = kid.phase[k].copy()
        kid.phase[k][i] = sign
        if at != 0.0 or (kid.cut is not None and kid.cut[k][i] != 0.0):
            kid.cut = [np.zeros(a.shape) for a in dom.zl] if kid.cut is None else kid.cut
            kid.cut[k] = kid.cut[k].copy()
            kid.cut[k][i] = at
        kids.append(kid)
    return kids


def smear_dim(dom: Domain) -> int:
    """The input dimension with the largest ``max_row |A_x| * width`` over the open rows (widest on ties)."""
    width = dom.hi - dom.lo
    live = dom.upper >= 0  # rows not yet closed; any of them closing closes the domain
    sens = np.max(np.abs(dom.A_x[live]), axis=0) if dom.A_x is not None and np.any(live) else np.ones_like(width)
    score = sens * width
    return int(np.argmax(score)) if np.max(score) > 0 else int(np.argmax(width))


def input_split(dom: Domain, dim: Optional[int] = None) -> list[Domain]:
    """Bisect the box along ``dim`` (default :func:`smear_dim`)."""
    dim = smear_dim(dom) if dim is None else dim
    at = min(max(0.5 * (dom.lo[dim] + dom.hi[dim]), dom.lo[dim]), dom.hi[dim])
    left_hi, right_lo = dom.hi.copy(), dom.lo.copy()
    left_hi[dim] = right_lo[dim] = at
    return [_child(dom, hi=left_hi, start=0), _child(dom, lo=right_lo, start=0)]


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
                         ctx.iters if iters is None else iters, ctx.lr, b.phase, b.beta, cut=b.cut)
    return Bounded(zl, zu, obj, infeasible(zl, zu))


def unstack(ctx: Context, doms: list[Domain], r: Bounded) -> list[Domain]:
    """The bounded domains (their arrays: views into ``r``'s)."""
    out, obj = [], r.obj
    for i, d in enumerate(doms):
        upper = np.full_like(obj.upper[i], -np.inf) if r.empty[i] else obj.upper[i]
        out.append(Domain(d.lo, d.hi, [a[i] for a in r.zl], [a[i] for a in r.zu],
                          [None if a is None else a[i] for a in obj.alpha], upper, obj.A_x[i],
                          [None if a is None else a[i] for a in obj.coeffs], d.depth, ctx.chain.depth,
                          d.phase, None if obj.beta is None else [a[i] for a in obj.beta], lp_next=d.lp_next,
                          cut=d.cut))
    return out
