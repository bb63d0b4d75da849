"""Split-refined intermediate bounds of the first hidden layers of deep ReLU chains (DESIGN.md §11; issue 13).

The peers decide mnist_fc 256x4/256x6 with MILP-refined bounds of the first layers' unstable neurons
(alpha-beta-CROWN's ``bab-refine``). A MILP objective bound is not outward rounded, so here each chosen
neuron's bound comes from a small branch and bound of its own: the chain cut at the neuron's layer
(:func:`lumpver.bounds.intermediate.upto`), the objective ``+-z_k[j]``, the earlier layers' unstable neurons
split by BaBSR (:func:`lumpver.verifiers.bab_branch.babsr_candidates`), every leaf bounded by the batched
beta-CROWN engine (:func:`lumpver.bounds.batched.optimise_alpha`, outward rounded). The leaves of a neuron
cover its root box (each split covers its parent), so the largest leaf bound is a sound bound of the neuron;
it is intersected with the given bounds. All neurons' trees grow together: one batched pass per round
bounds the two children of every neuron's worst leaf.

:func:`refine_split_layers` refines layers ``1..layers`` (layer 0 is exact up to rounding) on the neurons
with the largest relaxation gap ``-l u / (u - l)``, re-bounds the later layers by CROWN (intersected), and
stops at a deadline; the result is a valid set of bounds whenever it stops.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lumpver.bounds.batched import infeasible, layer_bounds, optimise_alpha
from lumpver.bounds.engine import Chain
from lumpver.bounds.intermediate import upto
from lumpver.verifiers.bab_branch import Domain, babsr_candidates, root_alpha, split_neuron, stack


@dataclass
class SplitRefine:
    """Knobs of :func:`refine_split_layers` (0 ``layers``: off)."""

    layers: int = 0  # refine hidden layers 1..layers (pre-activations)
    per_layer: int = 256  # at most this many neurons per layer (largest relaxation gap first)
    rounds: int = 8  # splits per neuron and direction (leaves: rounds + 1)
    #: Adam steps per bounding of a round's leaves: on 256x4 prop_2_0.03 (layers 1-2) 4 steps gave the root bounds of
    #: 8 within 0.02 in 6.3 vs 7.5 CPU s
    iters: int = 4
    lr: float = 0.1
    share: float = 0.5  # of the timeout, at most (wall seconds)
    #: also on chains with convolutions: off, since on the oval21 CNNs (3 hidden layers) it decided nothing more
    #: and made proofs 4-6x slower (img2908 3.6 -> 20.9 s, img5303 3.5 -> 20.7 s; bench/RESULTS.md, 2026-12-01)
    conv: bool = False


@dataclass
class _Tree:
    """One neuron-direction's leaves: ``sign * z_k[j] <= max(leaf.upper)``."""

    j: int
    sign: float
    leaves: list[Domain]

    @property
    def bound(self) -> float:
        return max(float(d.upper[0]) for d in self.leaves)


def _bound_leaves(sub: Chain, doms: list[Domain], lams: np.ndarray, iters: int, lr: float) -> list[Domain]:
    """``doms`` bounded on ``lams`` (B, 1, n_k) each (their own objective), one batched pass; empty ones -inf."""
    b = stack(doms)
    obj = optimise_alpha(sub, b.lo, b.hi, b.zl, b.zu, lams, np.zeros(1), b.alpha, iters, lr, b.phase, b.beta,
                         stop_closed=False)
    empty = infeasible(b.zl, b.zu)
    out = []
    for i, d in enumerate(doms):
        up = np.full(1, -np.inf) if empty[i] else obj.upper[i]
        out.append(Domain(d.lo, d.hi, d.zl, d.zu, [None if a is None else a[i] for a in obj.alpha], up,
                          coeffs=[None if a is None else a[i] for a in obj.coeffs], depth=d.depth,
                          start=sub.depth, phase=d.phase, beta=None if obj.beta is None else [a[i] for a in obj.beta]))
    return out


def _lam(n: int, trees: list[_Tree], per_tree: int) -> np.ndarray:
    lam = np.zeros((len(trees) * per_tree, 1, n))
    for t, tr in enumerate(trees):
        lam[t * per_tree:(t + 1) * per_tree, 0, tr.j] = tr.sign
    return lam


def refine_neurons(ch: Chain, k: int, idx: np.ndarray, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray],
                   zu: list[np.ndarray], opt: SplitRefine, deadline: float) -> tuple[np.ndarray, np.ndarray]:
    """Sound ``(upper, lower)`` bounds of the pre-activations ``idx`` of layer ``k`` over the box ``lo, hi``
    (1-D) by the per-neuron branch and bound of the module docstring, on the layer bounds ``zl, zu`` (1-D per
    layer, valid on the box)."""
    sub = upto(ch, k)
    root = Domain(lo, hi, [a.copy() for a in zl[: k + 1]], [a.copy() for a in zu[: k + 1]],
                  root_alpha(sub, zl[: k + 1], zu[: k + 1], 1), np.zeros(1), start=sub.depth)
    trees = [_Tree(int(j), s, [root]) for s in (1.0, -1.0) for j in idx]
    n = zl[k].shape[0]
    firsts = _bound_leaves(sub, [root] * len(trees), _lam(n, trees, 1), opt.iters, opt.lr)
    for tr, d in zip(trees, firsts):
        tr.leaves = [d]
    for _ in range(opt.rounds):
        if time.monotonic() > deadline:
            break
        live = [tr for tr in trees if tr.bound > -np.inf]
        kids, owners = [], []
        for tr in live:
            worst = max(tr.leaves, key=lambda d: float(d.upper[0]))
            cand = babsr_candidates(worst, sub, 1)
            if not cand:
                continue
            tr.leaves = [d for d in tr.leaves if d is not worst]
            kids.extend(split_neuron(worst, *cand[0]))
            owners.append(tr)
        if not kids:
            break
        got = _bound_leaves(sub, kids, _lam(n, owners, 2), opt.iters, opt.lr)
        for t, tr in enumerate(owners):
            tr.leaves.extend(got[2 * t: 2 * t + 2])
    m = len(idx)
    up = np.array([tr.bound for tr in trees[:m]])
    low = -np.array([tr.bound for tr in trees[m:]])
    return up, low


def gap_order(l: np.ndarray, u: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` unstable neurons with the largest triangle gap ``-l u / (u - l)``, largest first."""
    uns = np.flatnonzero((l < 0) & (u > 0))
    gap = -l[uns] * u[uns] / (u[uns] - l[uns])
    return uns[np.argsort(-gap, kind="stable")[:top]]


def refine_split_layers(ch: Chain, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
                        opt: SplitRefine, deadline: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Layer bounds of one box (``lo, hi`` (1, n_in), ``zl, zu`` (1, n_k) per layer) with the unstable neurons of
    layers ``1..opt.layers`` re-bounded by :func:`refine_neurons` (intersected) and the later layers by CROWN."""
    zl, zu = [a.copy() for a in zl], [a.copy() for a in zu]
    for k in range(1, min(opt.layers, ch.depth - 2) + 1):
        if time.monotonic() > deadline:
            break
        idx = gap_order(zl[k][0], zu[k][0], opt.per_layer)
        if idx.size == 0:
            continue
        up, low = refine_neurons(ch, k, idx, lo[0], hi[0], [a[0] for a in zl], [a[0] for a in zu], opt, deadline)
        zu[k][0, idx] = np.minimum(zu[k][0, idx], up)
        zl[k][0, idx] = np.maximum(zl[k][0, idx], low)
        zl, zu = layer_bounds(ch, lo, hi, zl, zu, k + 1)
    return zl, zu
