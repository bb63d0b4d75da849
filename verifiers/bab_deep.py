"""ReLU-splitting policy of branch and bound on deep fully connected ReLU chains (DESIGN.md §11; issue 13).

Deep MNIST-like networks (784 inputs, 4-9 hidden layers of 200-256 ReLUs) are decided, by the peers, with
ReLU splitting on *fixed* intermediate bounds: the root's pre-activation bounds are tightened once by
alpha-CROWN (every unstable neuron re-bounded with its own optimised slopes,
:func:`lumpver.bounds.intermediate.refine_layers`), and a child keeps its parent's bounds, the split entering
its bound through the clamp of the split neuron and a beta multiplier (beta-CROWN), so a numpy pass bounds
many more sub-problems than when every child re-bounds every layer after its split. :class:`ReluSearch` holds
the knobs; :func:`root_layer_bounds`, :func:`tighten_root` and :func:`recompute_children` are what ``verifiers/bab.py`` asks.

Sigmoid/tanh chains (ERAN ffnnSIGMOID/ffnnTANH style): the root is re-bounded in two passes
(:func:`refine_smooth`), and the neuron to split and where are chosen by :func:`smooth_candidates` (GenBaB,
Shi et al., TACAS 2025: a split of a general nonlinearity scored by the relaxation it tightens, at an optimised
point, :func:`split_points`, a small grid where GenBaB has a lookup table; the split ``z <= p`` / ``z >= p``
enters the bound through the children's clamped intervals, their own relaxations, and beta multipliers of
``phase * (z - p)``, :func:`lumpver.bounds.batched.backsub`).

Soundness: both only change which sound bounds are used: optimised intermediate bounds are intersected with
CROWN's (any slope in ``[0, 1]`` is sound, outward rounding of :mod:`lumpver.bounds.rounding`), and a child's
parent bounds stay valid on the child (a subset of the parent); the two children of a split at any point cover
the parent (the point belongs to both), and each relaxes the neuron on its own interval.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lumpver.bounds.batched import ALPHA_ACTS, layer_bounds, recompute_pays
from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.engine import Chain
from lumpver.bounds.intermediate import refine_layers
from lumpver.bounds.relaxations import get_relaxation, smooth_derivs
from lumpver.bounds.smooth_alpha import SMOOTH_ACTS
from lumpver.bounds.smooth_intermediate import DEEP_SHARE, ROOT_CHUNKS, ROOT_SHARE, refine_root
from lumpver.ir.operators import DenseOperator
from lumpver.verifiers.bab_branch import Domain, babsr_candidates, input_split, relu_split, split_neuron
from lumpver.verifiers.bab_refine import SplitRefine, refine_split_layers


@dataclass
class ReluSearch:
    """Knobs of the ReLU-splitting search on ReLU chains (measured on the deep MNIST-like proxies,
    bench/RESULTS.md, "Deep MNIST-like ReLU networks")."""

    #: optimised intermediate bounds at a root that CROWN leaves open (alpha-CROWN per unstable neuron; ``Refine()``:
    #: off). 5 Adam steps: on the 256x4 proxy prop_2 root the output bound went 32.4 (CROWN) -> 30.4 (5 steps,
    #: 1.2 s) -> 30.3 (20 steps, 4.4 s)
    root_refine: Refine = field(default_factory=lambda: Refine(5, 0.25, 10**6))
    #: children of a ReLU chain keep their parent's intermediate bounds when it has at least this many hidden
    #: layers (beta-CROWN); shallower chains re-bound the layers after the split (0: never keep)
    fixed_from_depth: int = 3
    #: filtered smart branching (:func:`fsb_split_and_bound`) among this many BaBSR candidates where children keep
    #: their parent's bounds (1: plain BaBSR)
    fsb_top: int = 1
    #: split-refined bounds of the first hidden layers at a root alpha-CROWN leaves open, on chains with at least
    #: ``fixed_from_depth`` hidden layers (:mod:`lumpver.verifiers.bab_refine`; ``SplitRefine()``: off; dense
    #: chains only unless ``conv``). Layers 1-3:
    #: on the 20 digits-proxy instances of 784-256x4/256x6 at 30 s, 14 decided against 11 without (it costs up to
    #: half the timeout at an open root: 19.6 -> 29.0 s summed on the 11 both decide; bench/RESULTS.md, 2026-12-01)
    split_refine: SplitRefine = field(default_factory=lambda: SplitRefine(3))
    #: ReLU-split roots start from the registry's lower slopes, so the root's and the children's Adam steps move
    #: them (False: the root domain has no slopes and the batched engine optimises only the split multipliers;
    #: what every ReLU-split search did before 2026-12-01)
    root_slopes: bool = True


def is_relu_chain(chain: Chain) -> bool:
    """Every hidden activation ReLU-like (what the alpha/beta machinery splits exactly)."""
    return all(a in ALPHA_ACTS for a in chain.acts[:-1])


def recompute_children(chain: Chain, relu: ReluSearch) -> bool:
    """Whether a ReLU-split child re-bounds the layers after its split (see :func:`recompute_pays`), or keeps its
    parent's bounds: kept on deep dense ReLU chains (``relu.fixed_from_depth`` hidden layers or more)."""
    if not recompute_pays(chain):
        return False
    deep = relu.fixed_from_depth > 0 and chain.depth - 1 >= relu.fixed_from_depth and is_relu_chain(chain)
    return not deep


def root_layer_bounds(chain: Chain, lo: np.ndarray, hi: np.ndarray) -> tuple[list, list]:
    """CROWN pre-activation bounds of the root boxes ``(B, n_in)`` (:func:`layer_bounds`)."""
    inf = [np.full((lo.shape[0], step.op.out_features), np.inf) for step in chain.steps]
    return layer_bounds(chain, lo, hi, [-a for a in inf], inf)


def tighten_root(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list, zu: list,
                 refine: Refine) -> Optional[tuple[list, list]]:
    """The root bounds ``zl, zu`` tightened by alpha-CROWN on every unstable neuron (intersected) when
    ``refine.iters > 0`` and the chain is a ReLU chain, else None; the search asks only when its root stays open."""
    if refine.iters > 0 and is_relu_chain(chain):
        return refine_layers(chain, lo, hi, zl, zu, refine.iters, refine.lr, refine.max_unstable)
    return None


def split_refine_root(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list, zu: list, relu: ReluSearch,
                      timeout: float) -> Optional[tuple[list, list]]:
    """The root bounds with the first hidden layers split-refined (:func:`refine_split_layers`, within
    ``relu.split_refine.share`` of the ``timeout``) and every unstable neuron re-bounded by alpha-CROWN on them
    (intersected), or None when off or not a deep ReLU chain."""
    opt = relu.split_refine
    if opt.layers <= 0 or not is_relu_chain(chain) or chain.depth - 1 < max(relu.fixed_from_depth, 2):
        return None
    if not opt.conv and not all(isinstance(step.op, DenseOperator) for step in chain.steps):
        return None
    zl, zu = refine_split_layers(chain, lo, hi, zl, zu, opt, time.monotonic() + opt.share * timeout)
    return tighten_root(chain, lo, hi, zl, zu, relu.root_refine) or (zl, zu)


def refine_smooth(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list, zu: list, done: int, wide: bool,
                  left: float, timeout: float, warm: dict) -> Optional[tuple[list, list]]:
    """Pass ``done`` (0, 1) of the sigmoid/tanh root re-bounding (:func:`refine_root`), None when there is none:
    first ``ROOT_ITERS`` Adam steps per layer within ``ROOT_SHARE`` of the ``timeout``; then, where the search
    splits neurons (``wide`` inputs), warm-started chunks of steps per layer within ``DEEP_SHARE`` of the
    ``left`` seconds (an open root of a 784-6x200 sigmoid net gains more there than from splitting; proofs the
    first pass gives are not delayed). ``warm``: the region's parameters, kept between the passes (the second
    continues the first's Adam runs, :func:`refine_root`)."""
    if done == 0:
        return refine_root(chain, lo, hi, zl, zu, deadline=time.monotonic() + ROOT_SHARE * timeout, warm=warm)
    if done == 1 and wide:
        return refine_root(chain, lo, hi, zl, zu, chunks=ROOT_CHUNKS, deadline=time.monotonic() + DEEP_SHARE * left,
                           warm=warm)
    return None


BoundFn = Callable[[list[Domain], Optional[int]], list[Domain]]


def fsb_split_and_bound(todo: list[Domain], chain: Chain, top: int, bound: BoundFn) -> list[Domain]:
    """Filtered smart branching: per domain the ``top`` BaBSR candidates are split, all trial children bounded
    in one pass without slope steps (``bound(doms, 0)``: the parent's slopes and multipliers, so the trial costs
    one back-substitution), the candidate whose worse child has the lowest bound is kept, and its open children
    are bounded again with the search's steps (``bound(doms, None)``). A domain without an unstable neuron
    is bisected on its input box. Every bound kept is one of ``bound``'s sound bounds."""
    trials, spans, plain = [], [], []
    for d in todo:
        cands = babsr_candidates(d, chain, top)
        if not cands:
            plain.extend(input_split(d))
            continue
        spans.append((len(trials), len(cands)))
        for k, i in cands:
            trials.extend(split_neuron(d, k, i))
    tried = bound(trials, 0) if trials else []
    kept = []
    for at, n in spans:
        pairs = [tried[at + 2 * c: at + 2 * c + 2] for c in range(n)]
        kept.extend(min(pairs, key=lambda p: max(c.score for c in p)))
    closed = [d for d in kept if d.score < 0]
    redo = [d for d in kept if d.score >= 0] + plain
    return closed + (bound(redo, None) if redo else [])


#: points per interval on which :func:`smooth_gap` measures a relaxation's looseness
GAP_POINTS = 9


def is_smooth_chain(chain: Chain) -> bool:
    """Every hidden activation sigmoid/tanh."""
    return all(a in SMOOTH_ACTS for a in chain.acts[:-1])


def smooth_gap(name: str, lo: np.ndarray, hi: np.ndarray, upper: bool, points: int = GAP_POINTS) -> np.ndarray:
    """Mean vertical distance between the registry's (tight) upper (lower) line and the curve on ``points``
    points of ``[lo, hi]``: how much the neuron's relaxation loses (a branching heuristic, not a bound)."""
    r = get_relaxation(name).tight_linear(lo, hi, 0.0)
    z = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, points)
    f = smooth_derivs(name, z)[0]
    line = r.su[:, None] * z + r.tu[:, None] if upper else r.sl[:, None] * z + r.tl[:, None]
    return np.mean(np.abs(line - f), axis=1)


#: fractions of ``[l, u]`` tried as split points of a sigmoid/tanh neuron (with 0 where it crosses): GenBaB's
#: optimised branching points, by a grid instead of its lookup table (``split_points``); the grid is evaluated
#: for the ``GRID_NEURONS`` best neurons of all layers by their upper estimate ``|a| * parent gap``
SPLIT_FRACTIONS = tuple(q / 8 for q in range(1, 8))
GRID_NEURONS = 24
#: points per child interval on which ``split_points`` compares the losses (9 picked points up to 10 % worse
#: than 0 by a 2001-point measure on tanh intervals; tests/test_smooth_split.py)
POINT_GAP_POINTS = 33
#: narrower neurons are not split at non-zero points (their relaxation is already nearly exact)
SPLIT_MIN_WIDTH = 0.05


@dataclass
class SmoothSplit:
    """Where a sigmoid/tanh neuron is split (DESIGN.md §11; GenBaB, Shi et al. TACAS 2025)."""

    #: ``True``: at the point of ``SPLIT_FRACTIONS`` or 0 whose worse child's relaxation loses least, any neuron
    #: wider than ``SPLIT_MIN_WIDTH``; ``False``: crossing neurons only, at 0 (the convex / concave halves)
    points: bool = True


def split_points(name: str, lo: np.ndarray, hi: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron the split point in ``[lo, hi]`` (among ``SPLIT_FRACTIONS`` of it, and 0 where it crosses)
    whose worse child loses least with the upper (``upper``) or lower line (:func:`smooth_gap` on each child's
    own interval), and that loss."""
    cross = (lo < 0) & (hi > 0)
    cands = [lo + (hi - lo) * q for q in SPLIT_FRACTIONS] + [np.where(cross, 0.0, 0.5 * (lo + hi))]
    P = np.stack(cands)  # (C, n)
    L, U = np.broadcast_to(lo, P.shape).ravel(), np.broadcast_to(hi, P.shape).ravel()
    up = np.broadcast_to(upper, P.shape).ravel()
    p = P.ravel()
    kids = np.maximum(_signed_gap(name, L, p, up, POINT_GAP_POINTS),
                      _signed_gap(name, p, U, up, POINT_GAP_POINTS)).reshape(P.shape)
    best = np.argmin(kids, axis=0)
    cols = np.arange(lo.size)
    return P[best, cols], kids[best, cols]


def _signed_gap(name: str, lo: np.ndarray, hi: np.ndarray, upper: np.ndarray, points: int = GAP_POINTS) -> np.ndarray:
    """:func:`smooth_gap` of the upper line where ``upper``, else of the lower line."""
    out = np.zeros(lo.size)
    for want in (True, False):
        sel = upper == want
        if np.any(sel):
            out[sel] = smooth_gap(name, lo[sel], hi[sel], want, points)
    return out


def smooth_candidates(dom: Domain, chain: Chain, top: int,
                      split: Optional[SmoothSplit] = None) -> list[tuple[int, int, float]]:
    """The ``top`` sigmoid/tanh neurons ``(layer, index, split point)`` whose split tightens the bound most by
    a GenBaB-like estimate: ``|a|`` (the neuron's coefficient in the bound of the row closest to closing) times
    the loss of the line that coefficient uses (upper for ``a > 0``) minus the worse child's, best first.
    ``split.points`` (default): any neuron wider than ``SPLIT_MIN_WIDTH`` at its :func:`split_points` point,
    evaluated for the ``GRID_NEURONS`` best of all layers by ``|a|`` times the parent's loss (an upper bound of
    the gain); else crossing neurons at 0."""
    split = SmoothSplit() if split is None else split
    if dom.coeffs is None:
        return []
    row = int(np.argmin(dom.upper))
    layers = []  # (k, neuron indices, a, parent loss)
    for k in range(chain.depth - 1):
        l, u = dom.zl[k], dom.zu[k]
        idx = np.flatnonzero((u - l > SPLIT_MIN_WIDTH) & np.isfinite(u - l) if split.points else (l < 0) & (u > 0))
        if idx.size and dom.coeffs[k] is not None:
            a = dom.coeffs[k][row][idx]
            layers.append((k, idx, a, _signed_gap(chain.acts[k], l[idx], u[idx], a > 0)))
    if split.points and layers:  # the grid only for the best upper estimates
        est = np.concatenate([np.abs(a) * g for _, _, a, g in layers])
        cut = -np.sort(-est)[min(max(GRID_NEURONS, top), est.size) - 1]
        layers = [(k, idx[sel], a[sel], g[sel]) for k, idx, a, g in layers
                  for sel in [np.abs(a) * g >= cut] if np.any(sel)]
    cands: list[tuple[float, int, int, float]] = []
    for k, idx, a, parent in layers:
        li, ui, name = dom.zl[k][idx], dom.zu[k][idx], chain.acts[k]
        if split.points:
            parent = _signed_gap(name, li, ui, a > 0, POINT_GAP_POINTS)  # as finely as the children's
            at, kids = split_points(name, li, ui, a > 0)
        else:
            at = np.zeros(idx.size)
            kids = np.maximum(_signed_gap(name, li, at, a > 0), _signed_gap(name, at, ui, a > 0))
        gain = np.where(a != 0, np.abs(a) * (parent - kids), 0.0)
        cands.extend((float(g), k, int(i), float(p)) for g, i, p in zip(gain, idx, at))
    cands.sort(key=lambda c: -c[0])  # stable: ties keep the lower layer, then the lower index
    return [(k, i, p) for _, k, i, p in cands[:top]]


def neuron_split(dom: Domain, chain: Chain, split: Optional[SmoothSplit] = None) -> Optional[list[Domain]]:
    """The two children of the best neuron split of ``dom`` (sigmoid/tanh chains: :func:`smooth_candidates`,
    else BaBSR, :func:`relu_split`); None when no neuron can be split."""
    if not is_smooth_chain(chain) or dom.coeffs is None:
        return relu_split(dom, chain)
    best = smooth_candidates(dom, chain, 1, split)
    return split_neuron(dom, *best[0]) if best else None
