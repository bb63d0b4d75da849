"""Optimised (alpha-CROWN) pre-activation bounds over a batch of boxes (DESIGN.md §3, §11).

:func:`lumpver.bounds.batched.layer_bounds` bounds each unstable neuron once with the registry's
adaptive lower slopes. On small boxes a handful of neurons stay unstable only because of that
choice, and one of them can carry the whole bound of ``f - g`` (ACAS Xu 1_2 vs its 5 %-pruned
copy, a prop_1 leaf: the last hidden layer's one unstable neuron, CROWN upper 0.067, 5 Adam steps
-0.21, sampled maximum -0.85; the leaf's bound went from 0.005 to the exact 0).

:func:`refine_layers` re-bounds, layer by layer from the first hidden layer on, the unstable
ReLU-like neurons of the boxes with at most ``max_unstable`` of them (a box with more gains little
per second: its bounds are loose for other reasons), each row with its own lower slopes of every
earlier layer optimised by projected Adam (:func:`optimise_rows`). Every iterate is a sound bound
(any slope in ``[neg, 1]`` is), the best is kept and intersected with the given bounds, so the
result is sound whatever the optimiser does; the computation is deterministic (cold start, fixed
step count), so a checker re-running it gets the same bounds up to the last bits.
"""
from __future__ import annotations

import numpy as np

from lumpver.bounds.batched import ALPHA_ACTS, Adam, alpha_free, backsub, neg_slope, relax_batch, unit_rows
from lumpver.bounds.engine import Chain
from lumpver.bounds.relaxations import LinearRelaxation


def optimise_rows(ch: Chain, rel: list[LinearRelaxation], free: list[np.ndarray], lam: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray, iters: int, lr: float, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best sound upper bound of ``lam[b] . h_top`` (``top`` default: the output) over projected-Adam
    iterates of the free lower slopes (started at the registry's adaptive slopes), and its linear
    function in x."""
    top = ch.depth - 1 if top is None else top
    rows = lam.shape[1]
    alpha = [np.repeat(r.sl[:, None, :], rows, axis=1) if fr.any() else None for r, fr in zip(rel, free)]
    opt = Adam(alpha, [neg_slope(ch, k) for k in range(ch.depth)], 1.0, lr)
    best, best_A = None, None
    for it in range(iters + 1):
        bb = backsub(ch, rel, lam, top, True, lo, hi, opt.params, free, grad=it < iters)
        if best is None:
            best, best_A = bb.upper, bb.A_x
        else:
            better = bb.upper < best
            best, best_A = np.where(better, bb.upper, best), np.where(better[:, :, None], bb.A_x, best_A)
        if it == iters or not any(a is not None for a in alpha[: top + 1]):
            break
        opt.step(bb.grads[: top + 1] + [None] * (ch.depth - top - 1))
    return best, best_A


def upto(ch: Chain, k: int) -> Chain:
    """Steps ``0..k`` of ``ch`` with layer ``k``'s activation replaced by the identity (its pre-activation)."""
    return Chain(ch.input, ch.steps[: k + 1], list(ch.acts[:k]) + ["identity"], list(ch.alphas[: k + 1]))


def unstable_count(ch: Chain, zl: list[np.ndarray], zu: list[np.ndarray]) -> np.ndarray:
    """Per box, the number of unstable ReLU-like neurons."""
    return np.asarray(sum(np.sum((a < 0) & (b > 0), axis=1) for a, b, act in zip(zl, zu, ch.acts) if act in ALPHA_ACTS)
                      + np.zeros(zl[0].shape[0], dtype=np.int64))


def refine_layers(ch: Chain, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
                  iters: int, lr: float, max_unstable: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pre-activation bounds of ``ch`` over the boxes, the unstable neurons of boxes with at most
    ``max_unstable`` of them re-bounded with optimised slopes (module docstring)."""
    zl, zu = [a.copy() for a in zl], [a.copy() for a in zu]
    small = unstable_count(ch, zl, zu) <= max_unstable
    if iters <= 0 or not np.any(small):
        return zl, zu
    for k in range(1, ch.depth):
        if ch.acts[k] not in ALPHA_ACTS:
            continue
        want = (zl[k] < 0) & (zu[k] > 0) & small[:, None]
        R = int(np.max(np.sum(want, axis=1), initial=0))
        if R == 0:
            continue
        boxes = np.flatnonzero(np.any(want, axis=1))
        want = want[boxes]
        order, ok, lam = unit_rows(want)
        sub = upto(ch, k)
        rel = [relax_batch(sub, j, zl[j][boxes], zu[j][boxes]) for j in range(k + 1)]
        free = [alpha_free(sub, j, zl[j][boxes], zu[j][boxes]) for j in range(k + 1)]
        up, _ = optimise_rows(sub, rel, free, lam, lo[boxes], hi[boxes], iters, lr)
        cur_u, cur_l = np.take_along_axis(zu[k][boxes], order, axis=1), np.take_along_axis(zl[k][boxes], order, axis=1)
        new_u = np.where(ok, np.minimum(cur_u, up[:, :R]), cur_u)
        new_l = np.where(ok, np.maximum(cur_l, -up[:, R:]), cur_l)
        zu_k, zl_k = zu[k][boxes], zl[k][boxes]
        np.put_along_axis(zu_k, order, new_u, axis=1)
        np.put_along_axis(zl_k, order, new_l, axis=1)
        zu[k][boxes], zl[k][boxes] = zu_k, zl_k
    return zl, zu
