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
from lumpver.bounds.intermediate import _upto
from lumpver.bounds.smooth_alpha import SMOOTH_ACTS

#: Adam steps and step size per layer at the root (sigmoid 784-6x200 net, eps 0.006, all rows: 10 steps at
#: 1.0 tightened the 9 disjunct bounds by 0.23-0.27 in 5.8 s, as much as 20 steps at 0.25 in 11.3 s; 5 steps 0.15)
ROOT_ITERS = 10
ROOT_LR = 1.0
#: rows re-bounded per layer: the widest neurons (all 200 of that net: 0.2 tighter; its widest 48: 0.03)
ROOT_ROWS = 256
#: share of the search's timeout the re-bounding may take (the 784-6x200 tanh net: 6-11 s under load)
ROOT_SHARE = 0.25


def refine_root(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
                iters: int = ROOT_ITERS, lr: float = ROOT_LR,
                rows: int = ROOT_ROWS, deadline: float = np.inf) -> Optional[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Bounds ``zl, zu`` of the boxes ``(B, n_in)`` (:func:`layer_bounds`') with the sigmoid/tanh layers
    re-bounded as the module docstring says; None for a chain without such layers. Stops before a layer
    that would end after ``deadline`` (``time.monotonic``; estimated from the previous layer: the later
    layers keep their bounds). Sound for the boxes whatever the optimiser does."""
    if iters <= 0 or not any(a in SMOOTH_ACTS for a in chain.acts):
        return None
    zl, zu = list(zl), list(zu)
    last = 0.0
    for k in range(1, chain.depth):
        t0 = time.monotonic()
        if t0 + 1.3 * last > deadline:
            break
        if chain.acts[k] in SMOOTH_ACTS:
            zl[k], zu[k] = _rebound(chain, k, lo, hi, zl, zu, iters, lr, rows)
            last = time.monotonic() - t0
    return zl, zu


def _rebound(chain: Chain, k: int, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
             iters: int, lr: float, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Layer ``k``'s bounds, its ``rows`` widest neurons (wider than ``SMOOTH_NARROW``) re-bounded with
    optimised lines of layers ``0..k-1``."""
    width = np.where(zu[k] - zl[k] > SMOOTH_NARROW, zu[k] - zl[k], -1.0)  # NaN-safe: infinite widths kept
    kth = -np.sort(-width, axis=1)[:, min(rows, width.shape[1]) - 1: min(rows, width.shape[1])]
    want = (width > 0) & (width >= kth)
    if not np.any(want):
        return zl[k], zu[k]
    order, ok, lam = unit_rows(want)
    R = order.shape[1]
    obj = optimise_alpha(_upto(chain, k), lo, hi, zl[: k + 1], zu[: k + 1], lam, np.zeros(2 * R), iters=iters, lr=lr,
                         stop_closed=False)
    up, low = np.where(ok, obj.upper[:, :R], np.inf), np.where(ok, -obj.upper[:, R:], -np.inf)
    new_u, new_l = zu[k].copy(), zl[k].copy()
    np.put_along_axis(new_u, order, np.minimum(np.take_along_axis(zu[k], order, axis=1), up), axis=1)
    np.put_along_axis(new_l, order, np.maximum(np.take_along_axis(zl[k], order, axis=1), low), axis=1)
    return new_l, new_u
