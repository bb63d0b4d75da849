"""Optimised intermediate bounds of sigmoid/tanh layers at the root of branch and bound (DESIGN.md §3, §11).

:func:`lumpver.bounds.batched.layer_bounds` bounds each hidden neuron by CROWN with the registry's lines.
On sigmoid/tanh chains the search then stalls at the root (bench/RESULTS.md, "Sigmoid and tanh
networks"): the loose intermediate bounds widen every later relaxation. When the root stays open,
branch and bound calls :func:`refine_root` once per region: it re-bounds, layer by layer from the
second hidden one on, the sigmoid/tanh neurons wider than ``SMOOTH_NARROW`` (the ``ROOT_ROWS`` widest
per layer), each row (its upper and its lower bound) with its own tangent points and ReLU slopes
of every earlier layer optimised by projected Adam (:func:`lumpver.bounds.batched.optimise_alpha` on the
chain cut after the layer, alpha-CROWN's intermediate-layer optimisation). The first iterate uses the
registry's lines and every iterate is sound (:mod:`lumpver.bounds.smooth_alpha`), the best is kept and
intersected with CROWN's, so the bounds are never looser; the result is deterministic up to the
deadline, which ends the re-bounding early (the search gives it ``ROOT_SHARE`` of its timeout).

Chains without sigmoid/tanh layers are left alone (ReLU chains: :mod:`lumpver.bounds.intermediate`).
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from lumpver.bounds.batched import SMOOTH_NARROW, unit_rows, optimise_alpha
from lumpver.bounds.engine import Chain
from lumpver.bounds.intermediate import upto
from lumpver.bounds.smooth_alpha import SMOOTH_ACTS

#: Adam steps and step size per layer at the root (sigmoid 784-6x200 net, eps 0.006, all rows: 10 steps at
#: 1.0 tightened the 9 disjunct bounds by 0.23-0.27 in 5.8 s, as much as 20 steps at 0.25 in 11.3 s; 5 steps 0.15)
ROOT_ITERS = 10
ROOT_LR = 1.0
#: rows re-bounded per layer: the widest neurons (all 200 of that net: 0.2 tighter; its widest 48: 0.03)
ROOT_ROWS = 256
#: share of the search's timeout the re-bounding may take (the 784-6x200 tanh net: 6-11 s under load)
ROOT_SHARE = 0.25
#: where the search splits neurons (wide inputs: splitting below the root hardly moves the bound of a 784-6x200
#: sigmoid net, 1.223 -> 1.189 over 563 sub-problems in 60 s), more Adam steps per layer pay more: the share of the
#: timeout the re-bounding may take there, in chunks of ``iters`` steps per layer, at most ``ROOT_CHUNKS`` chunks,
#: while a chunk narrows the layer by more than ``ROOT_GAIN`` (relative mean width; bench/RESULTS.md, "Trained
#: sigmoid and tanh proxies": sigmoid prop_5, 10 vs 30 steps per layer, open disjuncts 2.04 / 0.16 -> 1.80 / -0.02)
DEEP_SHARE = 0.6
ROOT_CHUNKS = 6
ROOT_GAIN = 0.003


def refine_root(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
                iters: int = ROOT_ITERS, lr: float = ROOT_LR,
                rows: int = ROOT_ROWS, deadline: float = np.inf,
                chunks: int = 1, warm: Optional[dict] = None) -> Optional[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Bounds ``zl, zu`` of the boxes ``(B, n_in)`` (:func:`layer_bounds`') with the sigmoid/tanh layers
    re-bounded as the module docstring says; None for a chain without such layers. Stops before a layer
    that would end after ``deadline`` (``time.monotonic``; estimated from the previous layer: the later
    layers keep their bounds). With ``chunks > 1`` a layer gets up to that many runs of ``iters`` Adam steps
    (each warm-started from the previous one's best parameters) while they fit its share of the time left
    (layer ``k`` weighs ``k + 1``: its back-substitution is that long) and narrow it by more than
    ``ROOT_GAIN``. ``warm`` (a dict, filled by the call): each layer's rows and best parameters, from which a
    later call on the same boxes continues (the rows and steps of the earlier call are not repeated). Sound
    for the boxes whatever the optimiser does."""
    if iters <= 0 or not any(a in SMOOTH_ACTS for a in chain.acts):
        return None
    zl, zu = list(zl), list(zu)
    last = 0.0
    todo = [k for k in range(1, chain.depth) if chain.acts[k] in SMOOTH_ACTS]
    for n, k in enumerate(todo):
        t0 = time.monotonic()
        if t0 + 1.3 * last > deadline:
            break
        until = t0 + (deadline - t0) * (k + 1) / sum(j + 1 for j in todo[n:]) if np.isfinite(deadline) else np.inf
        zl[k], zu[k] = _rebound(chain, k, lo, hi, zl, zu, iters, lr, rows, chunks, until, {} if warm is None else warm)
        last = time.monotonic() - t0
    return zl, zu


def _rebound(chain: Chain, k: int, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
             iters: int, lr: float, rows: int, chunks: int, until: float, warm: dict) -> tuple[np.ndarray, np.ndarray]:
    """Layer ``k``'s bounds, its ``rows`` widest neurons (wider than ``SMOOTH_NARROW``) re-bounded with
    optimised lines of layers ``0..k-1`` (``chunks`` runs of ``iters`` steps while they fit before ``until``
    and gain; ``warm[k]``: rows and parameters to continue from, updated; :func:`refine_root`)."""
    if k in warm:
        order, ok, lam, alpha = warm[k]
    else:
        width = np.where(zu[k] - zl[k] > SMOOTH_NARROW, zu[k] - zl[k], -1.0)  # NaN-safe: infinite widths kept
        kth = -np.sort(-width, axis=1)[:, min(rows, width.shape[1]) - 1: min(rows, width.shape[1])]
        want = (width > 0) & (width >= kth)
        if not np.any(want):
            return zl[k], zu[k]
        order, ok, lam = unit_rows(want)
        alpha = None
    R = order.shape[1]
    new_l, new_u = zl[k].copy(), zu[k].copy()
    for c in range(chunks):
        t0, before = time.monotonic(), _mean_width(new_l, new_u, order, ok)
        obj = optimise_alpha(upto(chain, k), lo, hi, zl[:k] + [new_l], zu[:k] + [new_u], lam, np.zeros(2 * R), alpha,
                             iters=iters, lr=lr, stop_closed=False)
        alpha = obj.alpha
        up, low = np.where(ok, obj.upper[:, :R], np.inf), np.where(ok, -obj.upper[:, R:], -np.inf)
        np.put_along_axis(new_u, order, np.minimum(np.take_along_axis(new_u, order, axis=1), up), axis=1)
        np.put_along_axis(new_l, order, np.maximum(np.take_along_axis(new_l, order, axis=1), low), axis=1)
        after = _mean_width(new_l, new_u, order, ok)
        if not after < (1.0 - ROOT_GAIN) * before or time.monotonic() + (time.monotonic() - t0) > until:
            break
    warm[k] = (order, ok, lam, alpha)
    return new_l, new_u


def _mean_width(zl: np.ndarray, zu: np.ndarray, order: np.ndarray, ok: np.ndarray) -> float:
    """Mean width of the re-bounded neurons (``order`` where ``ok``)."""
    w = np.take_along_axis(zu, order, axis=1) - np.take_along_axis(zl, order, axis=1)
    return float(np.mean(w[ok]))
