"""Optimisable tangent points of sigmoid/tanh relaxations (alpha-CROWN for smooth activations; DESIGN.md §3, §11).

On an interval ``[lo, hi]`` the registry (:mod:`lumpver.bounds.relaxations`) gives one pair of lines per
neuron. Here the line that is a tangent becomes a per-row free parameter, as alpha-CROWN does for
general activations (the tangent point of auto_LiRPA's sigmoid/tanh bounds):

* concave interval (``lo >= 0``): the upper line is the tangent at any ``t`` in ``[lo, hi]`` (the lower
  one stays the chord); convex (``hi <= 0``): the lower line is the tangent at any ``t`` in ``[lo, hi]``;
* crossing (``lo < 0 < hi``): the upper line is the tangent at ``t`` in ``[0, hi]``; it is valid from
  ``t*`` on, the point whose tangent passes through ``(lo, act(lo))`` (the tangent's value at ``lo`` grows
  with ``t``; the start, :func:`lumpver.bounds.relaxations.tangent_point`), and below ``t*`` it is moved
  up to pass through ``(lo, act(lo))``. The lower line mirrors it (``t`` in ``[lo, 0]``). Where even the
  tangent at ``hi`` fails at ``lo`` (the registry takes the chord) and on narrow intervals the
  registry's line stays.

A parameter ``p`` in ``[0, 1]`` maps to ``t = a + p (b - a)`` on the neuron's range ``[a, b]``, so the
same projected Adam as the ReLU slopes (:func:`lumpver.bounds.batched.optimise_alpha`) clips it and a
child of a split re-reads its parent's ``p`` on its own range. Layer ``k``'s parameters are one array
``(B, m, 2 n)``: upper points first, then lower points.

Soundness for every ``p`` (the projection): the tangent at a point of the concave (convex) part lies
above (below) the activation on that part; every line is also checked at the far end point and, where
it is on the wrong side there (``t`` below ``t*``, or by rounding), it is moved to pass through that end
point, which makes it valid on the convex (concave) part too (a line above a convex function
at both ends of an interval is above it in between). Intercepts are then widened outward
(:func:`lumpver.bounds.relaxations.widen_lines`), as every smooth line of the registry is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lumpver.bounds.relaxations import LinearRelaxation, smooth_derivs, tangent_point, widen_lines

#: activations with optimisable tangent points
SMOOTH_ACTS = ("sigmoid", "tanh")
#: step size of the tangent-point parameters relative to the ReLU slopes' (a 10-30-30-30-5 tanh net, 30 steps: of
#: 0.008-4 x, 0.04-0.1 x gave the tightest output bounds; 1 x gained a third as much)
SMOOTH_LR = 0.1
#: intervals narrower than this keep the registry's lines (as the registry does: slope min act')
NARROW = 1e-9


@dataclass
class RowLines:
    """Per-row lines ``sl z + tl <= act(z) <= su z + tu`` of one layer, shape ``(B, m, n)``, and their
    derivatives with respect to the upper / lower parameters (zero where a line is fixed)."""

    sl: np.ndarray
    tl: np.ndarray
    su: np.ndarray
    tu: np.ndarray
    d_su: np.ndarray
    d_tu: np.ndarray
    d_sl: np.ndarray
    d_tl: np.ndarray

    def grad(self, gz: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``d upper / d p`` ``(B, m, 2 n)`` given ``gz`` = d upper / d (coefficient on z) and ``a``, the
        coefficient on ``act(z)`` before relaxation (positive parts take the upper line)."""
        pos, neg = np.maximum(a, 0.0), np.minimum(a, 0.0)
        return np.concatenate([pos * (gz * self.d_su + self.d_tu), neg * (gz * self.d_sl + self.d_tl)], axis=2)

    def intercepts(self, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
        """``sum_n pos tu + neg tl`` per (sub-problem, row)."""
        return np.sum(pos * self.tu + neg * self.tl, axis=2)


@dataclass
class SmoothLayer:
    """One layer's tangent-point ranges ``(B, n)`` (``free_u``/``free_l``: where the line is a parameter)
    and the registry lines used elsewhere."""

    name: str
    lo: np.ndarray
    hi: np.ndarray
    rel: LinearRelaxation
    f_lo: np.ndarray
    f_hi: np.ndarray
    free_u: np.ndarray
    free_l: np.ndarray
    a_u: np.ndarray
    b_u: np.ndarray
    a_l: np.ndarray
    b_l: np.ndarray

    @staticmethod
    def of(name: str, lo: np.ndarray, hi: np.ndarray, rel: LinearRelaxation) -> "SmoothLayer":
        """Ranges: crossing intervals ``[0, hi]`` (upper) and ``[lo, 0]`` (lower), the points short of ``t*``
        giving lines moved by their gap at the far end; the line stays the registry's where even the
        tangent at the end point fails there (the chord is better)."""
        hi = np.maximum(hi, lo)
        wide = hi - lo >= NARROW
        cross = wide & (lo < 0) & (hi > 0)
        (f_lo, d_lo, _), (f_hi, d_hi, _) = smooth_derivs(name, lo), smooth_derivs(name, hi)
        free_u = (wide & (lo >= 0)) | (cross & (f_hi + d_hi * (lo - hi) >= f_lo))
        free_l = (wide & (hi <= 0)) | (cross & (f_lo + d_lo * (hi - lo) <= f_hi))
        return SmoothLayer(name, lo, hi, rel, f_lo, f_hi, free_u, free_l, np.where(cross, 0.0, lo), hi, lo,
                           np.where(cross, 0.0, hi))

    def init(self, m: int) -> np.ndarray:
        """Start: the midpoint tangent on convex/concave intervals (the registry's), ``t*`` on crossing ones
        (:func:`lumpver.bounds.relaxations.tangent_point`)."""
        cross = (self.lo < 0) & (self.hi > 0)
        pu, pl = np.full(self.lo.shape, 0.5), np.full(self.lo.shape, 0.5)
        if np.any(cross):
            l, u = np.where(cross, self.lo, -1.0), np.where(cross, self.hi, 1.0)
            pu = np.where(cross, tangent_point(self.name, l, u, True)[0] / u, pu)
            pl = np.where(cross, 1.0 - tangent_point(self.name, l, u, False)[0] / l, pl)
        return np.repeat(np.concatenate([pu, pl], axis=1)[:, None, :], m, axis=1)

    def lines(self, p: np.ndarray) -> RowLines:
        """The per-row lines for parameters ``p`` ``(B, m, 2 n)`` (module docstring: sound for every ``p``)."""
        n = self.lo.shape[1]
        p = np.minimum(np.maximum(p, 0.0), 1.0)
        su, tu, d_su, d_tu = self._tangent(p[:, :, :n], self.a_u, self.b_u, self.free_u, True)
        sl, tl, d_sl, d_tl = self._tangent(p[:, :, n:], self.a_l, self.b_l, self.free_l, False)
        tl, tu = widen_lines(sl, tl, su, tu, self.lo[:, None, :], self.hi[:, None, :])
        r = self.rel
        keep_u, keep_l = ~self.free_u[:, None, :], ~self.free_l[:, None, :]
        su, tu = np.where(keep_u, r.su[:, None, :], su), np.where(keep_u, r.tu[:, None, :], tu)
        sl, tl = np.where(keep_l, r.sl[:, None, :], sl), np.where(keep_l, r.tl[:, None, :], tl)
        return RowLines(sl, tl, su, tu, d_su, d_tu, d_sl, d_tl)

    def _tangent(self, p: np.ndarray, a: np.ndarray, b: np.ndarray, free: np.ndarray,
                 upper: bool) -> tuple[np.ndarray, ...]:
        """Slope, intercept (moved onto the right side at the far end point: then the line through it)
        and their derivatives in ``p``."""
        width = (b - a)[:, None, :]
        t = a[:, None, :] + p * width
        f, d, d2 = smooth_derivs(self.name, t)
        icpt = f - d * t
        far, f_far = (self.lo, self.f_lo) if upper else (self.hi, self.f_hi)
        far, f_far = far[:, None, :], f_far[:, None, :]
        gap = f_far - (icpt + d * far)  # > 0: below the curve at ``far`` (upper line); < 0: above (lower line)
        moved = gap > 0 if upper else gap < 0
        icpt = np.where(moved, f_far - d * far, icpt)
        on = free[:, None, :]
        return d, icpt, np.where(on, d2 * width, 0.0), np.where(on, -np.where(moved, far, t) * d2 * width, 0.0)

    def envelope(self) -> LinearRelaxation:
        """Magnitude bounds of every line :meth:`lines` can give (slopes: ``act'`` at the point of
        ``[lo, hi]`` nearest 0; intercepts: ``max |act|`` plus four times that slope times ``max(|lo|, |hi|)``),
        for :func:`lumpver.bounds.batched.magnitudes`."""
        r = self.rel
        _, d0, _ = smooth_derivs(self.name, np.clip(0.0, self.lo, self.hi))
        s = np.maximum(np.maximum(np.abs(r.su), np.abs(r.sl)), d0 * (1.0 + 1e-9))
        fmax = np.maximum(*(np.abs(smooth_derivs(self.name, x)[0]) for x in (self.lo, self.hi)))
        t = np.maximum(np.maximum(np.abs(r.tu), np.abs(r.tl)),
                       (fmax + 4.0 * s * np.maximum(np.abs(self.lo), np.abs(self.hi))) * (1.0 + 1e-9))
        return LinearRelaxation(s, -t, s, t, r.tmag)


class SmoothParams:
    """The smooth layers of a chain over a batch: ranges per layer (None for other activations)."""

    def __init__(self, acts: list[str], zl: list[np.ndarray], zu: list[np.ndarray], rel: list[LinearRelaxation]) -> None:
        self.layers: list[Optional[SmoothLayer]] = [
            SmoothLayer.of(a, l, u, r) if a in SMOOTH_ACTS else None for a, l, u, r in zip(acts, zl, zu, rel)]

    def any(self) -> bool:
        return any(s is not None for s in self.layers)

    def fill(self, alpha: list[Optional[np.ndarray]], m: int) -> list[Optional[np.ndarray]]:
        """``alpha`` with the start parameters of every smooth layer that has none (or a stale shape)."""
        out = list(alpha)
        for k, s in enumerate(self.layers):
            if s is not None and (out[k] is None or out[k].shape != (s.lo.shape[0], m, 2 * s.lo.shape[1])):
                out[k] = s.init(m)
        return out

    def strip(self, alpha: list[Optional[np.ndarray]]) -> list[Optional[np.ndarray]]:
        """``alpha`` without the smooth layers' parameters (the registry's lines are used there)."""
        return [a if s is None else None for a, s in zip(alpha, self.layers)]

    def rows(self, alpha: list[Optional[np.ndarray]]) -> list[Optional[RowLines]]:
        return [None if s is None else s.lines(alpha[k]) for k, s in enumerate(self.layers)]

    def envelope(self, rel: list[LinearRelaxation]) -> list[LinearRelaxation]:
        return [r if s is None else s.envelope() for s, r in zip(self.layers, rel)]
