"""Input regions for bound propagation: the bounding box of a region, sound LP minima, and
box splitting (DESIGN.md §3).

:func:`region_box` is the one place a region (a :class:`Box` or a :class:`Polytope`, with or
without an explicit bounding box) becomes a box: a polytope's tightest bounding box by LP, made
sound through the solver's dual (:func:`lp_min_sound`).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from lumpver.bounds.rounding import POLICY
from lumpver.specs.inputset import Box, Polytope

Region = Union[Box, Polytope]


def region_box(region: Region) -> Box:
    """A box containing the region (a polytope's tightest bounding box, by LP, sound).

    ``ValueError`` for an empty box or an unbounded polytope.
    """
    if isinstance(region, Box):
        if region.is_empty():
            raise ValueError("empty input box (lower > upper)")
        return region
    bb = region.bounding_box
    key = (region.A.shape, region.A.tobytes(), region.b.tobytes(),
           None if bb is None else (bb.lower.tobytes(), bb.upper.tobytes()))
    if key not in _BOX_CACHE:
        if len(_BOX_CACHE) >= 256:
            _BOX_CACHE.clear()
        _BOX_CACHE[key] = _polytope_box(region)
    lo, hi = _BOX_CACHE[key]
    return Box(lo.copy(), hi.copy())


#: polytope bytes -> its bounding box (samplers and splitters ask for the same region repeatedly)
_BOX_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _polytope_box(poly: Polytope) -> tuple[np.ndarray, np.ndarray]:
    """The tightest bounding box of the polytope, by LP (sound through the dual)."""
    from scipy.optimize import linprog  # solver: imported where used

    n = poly.dim
    if poly.bounding_box is not None:
        lo, hi = poly.bounding_box.lower.copy(), poly.bounding_box.upper.copy()
    else:
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    out_lo, out_hi = lo.copy(), hi.copy()
    for i in range(n):
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            c[i] = sign
            val = lp_min_sound(linprog, c, poly.A, poly.b, lo, hi)
            if val is None:
                continue
            if sign > 0:
                out_lo[i] = max(out_lo[i], val)
            else:
                out_hi[i] = min(out_hi[i], -val)
    if not (np.all(np.isfinite(out_lo)) and np.all(np.isfinite(out_hi))):
        raise ValueError("polytope input set is unbounded: give it a bounding box")
    if np.any(out_lo > out_hi):
        raise ValueError("polytope input set is empty")
    return out_lo, out_hi


def lp_min_sound(linprog, c, A_ub, b_ub, lb, ub) -> float | None:
    """A sound lower bound of ``min c.v s.t. A_ub v <= b_ub, lb <= v <= ub`` from HiGHS's dual.

    Weak duality: for any ``y <= 0``, ``c.v >= y.b_ub + sum_i min_{v_i in [lb_i, ub_i]} r_i v_i``
    with ``r = c - A_ub^T y``. Needs finite bounds where ``r_i != 0``; returns None when the
    solver fails or a needed bound is infinite (the caller keeps its previous bound). The float64
    evaluation is widened by the rounding policy (:mod:`lumpver.bounds.rounding`).
    """
    return lp_solve_sound(linprog, c, A_ub, b_ub, lb, ub)[0]


def lp_solve_sound(linprog, c, A_ub, b_ub, lb, ub) -> tuple[float | None, np.ndarray | None]:
    """:func:`lp_min_sound` and the solver's primal point (None when the solver failed); the point is
    only a hint (branching, counterexample candidates), never evidence."""
    try:
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=np.column_stack([lb, ub]), method="highs")
    except ValueError:
        return None, None
    if res.status != 0 or getattr(res, "ineqlin", None) is None:
        return None, None
    return dual_bound(c, A_ub, b_ub, lb, ub, np.asarray(res.ineqlin.marginals, dtype=np.float64)), res.x


def dual_bound(c, A_ub, b_ub, lb, ub, marginals: np.ndarray) -> float | None:
    """The weak-duality bound of :func:`lp_min_sound` for given multipliers (clipped to ``<= 0``),
    outward rounded; None when a needed variable bound is infinite. Any multipliers give a sound
    bound: with ``c = 0`` and a positive value this is a Farkas certificate that the system is empty."""
    y = np.minimum(marginals, 0.0)
    r = c - (A_ub.T @ y)
    take = np.where(r > 0, lb, ub)
    need = r != 0
    if np.any(~np.isfinite(take[need])):
        return None
    val = float(y @ b_ub + r[need] @ take[need])
    span = np.where(np.isfinite(lb), np.abs(lb), 0.0) + np.where(np.isfinite(ub), np.abs(ub), 0.0)
    abs_a = abs(A_ub) if hasattr(A_ub, "multiply") else np.abs(A_ub)
    mag = float(np.abs(y) @ np.abs(b_ub) + np.abs(r) @ span + (abs_a.T @ np.abs(y)) @ span + np.abs(c) @ span)
    return val - float(POLICY.margin(mag, A_ub.shape[0] + A_ub.shape[1] + 4))


def bisect_box(box: Box, dim: int | None = None) -> tuple[Box, Box, int, float]:
    """Split ``box`` in two at the midpoint of ``dim`` (default: the widest dimension).

    Returns ``(left, right, dim, at)``; ``left`` and ``right`` share the face ``x_dim = at``,
    so they cover ``box`` exactly.
    """
    if dim is None:
        dim = int(np.argmax(box.upper - box.lower))
    at = float(0.5 * (box.lower[dim] + box.upper[dim]))
    at = min(max(at, float(box.lower[dim])), float(box.upper[dim]))
    lu, rl = box.upper.copy(), box.lower.copy()
    lu[dim], rl[dim] = at, at
    return Box(box.lower.copy(), lu), Box(rl, box.upper.copy()), dim, at


def split_box(box: Box, parts: int | Sequence[int]) -> list[Box]:
    """A grid of sub-boxes covering ``box``: ``parts`` pieces per dimension (an int or per-dim).

    Neighbouring cells share their boundary value exactly, so the union is the box.
    """
    per = [int(parts)] * box.dim if np.isscalar(parts) else [int(p) for p in parts]
    if len(per) != box.dim or min(per) < 1:
        raise ValueError("parts must be positive, one per dimension")
    cuts = [np.linspace(box.lower[i], box.upper[i], per[i] + 1) for i in range(box.dim)]
    for i, c in enumerate(cuts):
        c[0], c[-1] = box.lower[i], box.upper[i]
    out = []
    for idx in np.ndindex(*per):
        lo = np.array([cuts[i][j] for i, j in enumerate(idx)])
        hi = np.array([cuts[i][j + 1] for i, j in enumerate(idx)])
        out.append(Box(lo, hi))
    return out
