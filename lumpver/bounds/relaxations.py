"""Per-operator relaxations for bound propagation (DESIGN.md §3), auto_LiRPA style.

One entry per activation of :data:`lumpver.ir.activations.ACTIVATIONS`, keyed by the same
name. An entry gives, for pre-activation bounds ``[lo, hi]``:

* ``interval(lo, hi, alpha)``: sound bounds of ``act(z)``;
* ``linear(lo, hi, alpha)``: a :class:`LinearRelaxation` ``sl z + tl <= act(z) <= su z + tu``
  (``tight_linear``: tighter lines for sigmoid/tanh on crossing intervals, used by branch and bound);
* ``slopes(lo, hi, alpha)``: bounds ``[s_lo, s_hi]`` on every secant slope
  ``(act(a) - act(b)) / (a - b)`` with ``a, b`` in ``[lo, hi]`` (differential bounds);
* ``lp_lines(lo, hi, alpha)``: the lines an LP may use (the linear relaxation plus, for
  piecewise-linear activations, the second line of the triangle).

The engine (:mod:`lumpver.bounds.engine`) walks the layers and asks this registry; a new
operator (convolution, pooling: the CNN issue) adds an entry here. Rounding follows
:mod:`lumpver.bounds.rounding`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lumpver.bounds.rounding import POLICY
from lumpver.ir.activations import ACTIVATIONS


@dataclass
class LinearRelaxation:
    """Per-neuron lines ``sl z + tl <= act(z) <= su z + tu`` on ``[lo, hi]``.

    ``tmag`` bounds the magnitude of the intercepts' own float64 computation (its rounding is
    covered by the back-substitution margin, :mod:`lumpver.bounds.rounding`).
    """

    sl: np.ndarray
    tl: np.ndarray
    su: np.ndarray
    tu: np.ndarray
    tmag: np.ndarray

    @staticmethod
    def exact(n: int) -> "LinearRelaxation":
        one, zero = np.ones(n), np.zeros(n)
        return LinearRelaxation(one, zero, one.copy(), zero.copy(), zero.copy())

    def concat(self, other: "LinearRelaxation") -> "LinearRelaxation":
        return LinearRelaxation(*(np.concatenate([a, b]) for a, b in zip(self.fields(), other.fields())))

    def fields(self) -> tuple[np.ndarray, ...]:
        return self.sl, self.tl, self.su, self.tu, self.tmag


@dataclass(frozen=True)
class ActivationRelaxation:
    """Registry entry: interval bounds, linear relaxation and LP lines of one activation."""

    name: str
    interval: Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]
    linear: Callable[[np.ndarray, np.ndarray, float], LinearRelaxation]
    slopes: Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]
    piecewise_linear: bool
    tight: Callable[[np.ndarray, np.ndarray, float], LinearRelaxation] | None = None  # see :meth:`tight_linear`

    def tight_linear(self, lo: np.ndarray, hi: np.ndarray, alpha: float) -> LinearRelaxation:
        """The tightest linear relaxation the registry has (sigmoid/tanh: :func:`_through_end` lines on
        crossing intervals where they are better), else :attr:`linear`."""
        return (self.tight or self.linear)(lo, hi, alpha)

    def lp_lines(self, lo: np.ndarray, hi: np.ndarray, alpha: float) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Lines ``(sgn, a, c)``: ``sgn = +1`` is ``h >= a z + c``, ``sgn = -1`` is ``h <= a z + c``.
        Intercepts are widened by their rounding margin so that the lines are exact constraints."""
        r = self.linear(lo, hi, alpha)
        pad = POLICY.margin(np.abs(r.tl) + np.abs(r.tu) + r.tmag, 4)
        lines = [(1.0, r.sl, r.tl - pad), (-1.0, r.su, r.tu + pad)]
        if self.piecewise_linear and self.name != "identity":
            neg = _neg_slope(self.name, alpha)
            uns = (lo < 0) & (hi > 0)
            convex = neg <= 1.0
            base = r.sl if convex else r.su
            other = np.where(uns, np.where(base == 1.0, neg, 1.0), base)
            lines.append((1.0 if convex else -1.0, other, np.zeros(lo.size)))
        return lines


# ----------------------------------------------------------------------------------------
# piecewise linear: identity, relu, leaky_relu
# ----------------------------------------------------------------------------------------
def _neg_slope(name: str, alpha: float) -> float:
    return {"identity": 1.0, "relu": 0.0}.get(name, float(alpha))


def _pwl_interval(name: str) -> Callable:
    def interval(lo: np.ndarray, hi: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        neg = _neg_slope(name, alpha)
        act = ACTIVATIONS[name]
        zero = np.where((lo < 0) & (hi > 0), 0.0, lo)
        cands = [act(lo, alpha), act(hi, alpha), act(zero, alpha)]
        out_lo, out_hi = np.minimum.reduce(cands), np.maximum.reduce(cands)
        if neg not in (0.0, 1.0):  # neg * z is rounded
            out_lo, out_hi = np.nextafter(out_lo, -np.inf), np.nextafter(out_hi, np.inf)
        return out_lo, out_hi

    return interval


def _pwl_slopes(name: str) -> Callable:
    def slopes(lo: np.ndarray, hi: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        neg = _neg_slope(name, alpha)
        s_lo = np.where(lo >= 0, 1.0, np.where(hi <= 0, neg, min(neg, 1.0)))
        s_hi = np.where(lo >= 0, 1.0, np.where(hi <= 0, neg, max(neg, 1.0)))
        return s_lo, s_hi

    return slopes


def _round_slope(s: np.ndarray, up: bool) -> np.ndarray:
    step = POLICY.slope_ulps * POLICY.unit_roundoff * np.abs(s)
    return s + step if up else s - step


def _pwl_linear(name: str) -> Callable:
    def linear(lo: np.ndarray, hi: np.ndarray, alpha: float) -> LinearRelaxation:
        n = lo.size
        if name == "identity":
            return LinearRelaxation.exact(n)
        neg = _neg_slope(name, alpha)
        r = LinearRelaxation.exact(n)
        inactive = hi <= 0
        r.sl[inactive] = r.su[inactive] = neg
        uns = (lo < 0) & (hi > 0)
        if np.any(uns):
            l, u = lo[uns], hi[uns]
            convex = neg <= 1.0
            chord = _round_slope((u - neg * l) / (u - l), up=convex)
            icpt = -l * (chord - neg)  # the line through (l, neg * l); rounding in tmag
            adaptive = np.where(u >= -l, 1.0, neg)
            if convex:  # chord above, a slope in [neg, 1] through 0 below
                r.su[uns], r.tu[uns], r.sl[uns] = chord, icpt, adaptive
            else:  # concave (alpha > 1): chord below, a slope in [1, neg] through 0 above
                r.sl[uns], r.tl[uns], r.su[uns] = chord, icpt, adaptive
            r.tmag[uns] = np.abs(l) * (np.abs(chord) + abs(neg))
        return r

    return linear


# ----------------------------------------------------------------------------------------
# smooth: sigmoid, tanh (convex for z <= 0, concave for z >= 0, derivative peaked at 0)
# ----------------------------------------------------------------------------------------
def _smooth(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and derivative."""
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s, s * (1.0 - s)
    t = np.tanh(z)
    return t, 1.0 - t * t


def _smooth_interval(name: str) -> Callable:
    def interval(lo: np.ndarray, hi: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        fl, fu = _smooth(name, lo)[0], _smooth(name, hi)[0]  # monotone
        return fl - POLICY.elementary_rel * np.abs(fl) - POLICY.tiny, fu + POLICY.elementary_rel * np.abs(fu) + POLICY.tiny

    return interval


def _smooth_slopes(name: str) -> Callable:
    def slopes(lo: np.ndarray, hi: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        # secant slopes are derivative values on [lo, hi]; the derivative is unimodal, peak at 0
        s_lo = np.minimum(_smooth(name, lo)[1], _smooth(name, hi)[1])
        s_hi = _smooth(name, np.clip(0.0, lo, hi))[1]
        pad = POLICY.relax_rel
        return np.maximum(s_lo * (1 - pad) - POLICY.tiny, 0.0), s_hi * (1 + pad) + POLICY.tiny

    return slopes


def _smooth_linear(name: str, tight: bool = False) -> Callable:
    """Chord and midpoint tangent on convex/concave intervals; on crossing ones the lines through an
    end point with slope ``min act'``, or with ``tight`` per neuron the better (by area) of those and
    :func:`_through_end`'s lines (used by branch and bound; the engine keeps the first, which its
    regression tests pin)."""
    def linear(lo: np.ndarray, hi: np.ndarray, alpha: float) -> LinearRelaxation:
        fl, dl = _smooth(name, lo)
        fu, du = _smooth(name, hi)
        mid = 0.5 * (lo + hi)
        fm, dm = _smooth(name, mid)
        width = hi - lo
        narrow = width < 1e-9
        chord = np.where(narrow, 0.0, (fu - fl) / np.where(narrow, 1.0, width))
        # valid everywhere: a slope k <= min act' on [lo, hi] makes act - k z nondecreasing
        k = np.minimum(dl, du)
        al, bl, au, bu = k.copy(), fl - k * lo, k.copy(), fu - k * hi
        convex = (hi <= 0) & ~narrow  # chord above, tangent at the midpoint below
        au[convex], bu[convex] = chord[convex], fl[convex] - chord[convex] * lo[convex]
        al[convex], bl[convex] = dm[convex], fm[convex] - dm[convex] * mid[convex]
        concave = (lo >= 0) & ~narrow  # chord below, tangent at the midpoint above
        al[concave], bl[concave] = chord[concave], fl[concave] - chord[concave] * lo[concave]
        au[concave], bu[concave] = dm[concave], fm[concave] - dm[concave] * mid[concave]
        cross = (lo < 0) & (hi > 0) & ~narrow
        if tight and np.any(cross):  # per neuron the line with the smaller area to the curve (value at the midpoint)
            l, u, m = lo[cross], hi[cross], mid[cross]
            a, b = _through_end(name, l, u, chord[cross], upper=True)
            better = a * m + b < au[cross] * m + bu[cross]
            au[cross], bu[cross] = np.where(better, a, au[cross]), np.where(better, b, bu[cross])
            a, b = _through_end(name, l, u, chord[cross], upper=False)
            better = a * m + b > al[cross] * m + bl[cross]
            al[cross], bl[cross] = np.where(better, a, al[cross]), np.where(better, b, bl[cross])
        bl, bu = widen_lines(al, bl, au, bu, lo, hi)
        return LinearRelaxation(al, bl, au, bu, np.zeros(lo.size))

    return linear


def tangent_point(name: str, lo: np.ndarray, hi: np.ndarray, upper: bool,
                  steps: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """On a crossing interval ``lo < 0 < hi``: the tangent point ``t`` whose tangent is (in float64)
    a valid upper (lower) line over ``[lo, hi]``, nearest the end point found by bisection, and the mask
    where no tangent point qualifies (the chord is valid there).

    Upper line: the tangent at ``t`` in ``[0, hi]`` lies above the activation on ``[0, hi]`` (concave
    there) and, on ``[lo, 0]`` (convex there), as soon as it is above it at ``lo``; its value at ``lo``
    grows with ``t``, so every ``t`` in ``[t*, hi]`` passes that check and bisection keeps a ``t`` that
    passes. The lower line is the mirror image (tangent at ``t`` in ``[lo, 0]``, checked at ``hi``)."""
    end, far = (lo, hi) if upper else (hi, lo)
    f_end = _smooth(name, end)[0]

    def ok(t: np.ndarray) -> np.ndarray:
        ft, dt = _smooth(name, t)
        at_end = ft + dt * (end - t)
        return at_end >= f_end if upper else at_end <= f_end

    good, bad = far.copy(), np.zeros_like(far)  # ``good`` passes (where any t does), ``bad`` at 0 fails
    use_chord = ~ok(far)
    for _ in range(steps):
        mid = 0.5 * (good + bad)
        passed = ok(mid)
        good, bad = np.where(passed, mid, good), np.where(passed, bad, mid)
    return good, use_chord


def _through_end(name: str, lo: np.ndarray, hi: np.ndarray, chord: np.ndarray, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tightest-ish sound line on a crossing interval ``lo < 0 < hi`` (CROWN's sigmoid/tanh rule): the
    tangent at :func:`tangent_point`, or the chord where no tangent qualifies (then the chord is on the
    right side of the activation over ``[lo, hi]``); checked in float64, the caller's intercept widening
    covers the evaluation error. Returns ``(slope, intercept)``."""
    good, use_chord = tangent_point(name, lo, hi, upper)
    ft, dt = _smooth(name, good)
    slope = np.where(use_chord, chord, dt)
    icpt = np.where(use_chord, _smooth(name, lo)[0] - chord * lo, ft - dt * good)
    return slope, icpt


def smooth_derivs(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value, first and second derivative of sigmoid / tanh (float64)."""
    f, d = _smooth(name, z)
    return f, d, d * (1.0 - 2.0 * f) if name == "sigmoid" else -2.0 * f * d


def widen_lines(sl: np.ndarray, tl: np.ndarray, su: np.ndarray, tu: np.ndarray, lo: np.ndarray,
                hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smooth lines' intercepts widened outward by ``relax_rel (|t| + |s| max(|lo|, |hi|)) + tiny``
    (:mod:`lumpver.bounds.rounding`): covers the float64 evaluation of ``act``, ``act'`` and the
    intercept. Returns ``(tl, tu)``."""
    span = np.maximum(np.abs(lo), np.abs(hi))
    return (tl - (POLICY.relax_rel * (np.abs(tl) + np.abs(sl) * span) + POLICY.tiny),
            tu + (POLICY.relax_rel * (np.abs(tu) + np.abs(su) * span) + POLICY.tiny))


def _entry(name: str) -> ActivationRelaxation:
    if ACTIVATIONS[name].piecewise_linear:
        return ActivationRelaxation(name, _pwl_interval(name), _pwl_linear(name), _pwl_slopes(name), True)
    return ActivationRelaxation(name, _smooth_interval(name), _smooth_linear(name), _smooth_slopes(name), False,
                                _smooth_linear(name, tight=True))


#: activation name -> relaxation (one entry per :data:`lumpver.ir.activations.ACTIVATIONS` name).
RELAXATIONS: dict[str, ActivationRelaxation] = {name: _entry(name) for name in ("identity", "relu", "leaky_relu",
                                                                                 "sigmoid", "tanh")}
assert set(RELAXATIONS) == set(ACTIVATIONS), "every activation needs a relaxation"


def get_relaxation(name: str) -> ActivationRelaxation:
    """The registry entry for activation ``name``; ``ValueError`` if there is none."""
    try:
        return RELAXATIONS[name]
    except KeyError:
        raise ValueError(f"no bound relaxation for activation {name!r}") from None


# ----------------------------------------------------------------------------------------
# max pooling (DESIGN.md §10): not element-wise, so not in the activation registry
# ----------------------------------------------------------------------------------------
@dataclass
class MaxPoolRelaxation:
    """Lines for ``y_j = max_{i in W_j} x_i`` on input bounds ``[lo, hi]`` (DeepPoly's max rule with a
    chord for two candidates). Below, ``y_j >= x_{lo_idx[j]}`` (the input ``b`` with the largest lower
    bound: any window input bounds the max from below). Above,
    ``y_j <= up_coef[j] x_b + up_coef2[j] x_{up_idx2[j]} + up_const[j]``:

    * ``y_j = x_b`` where ``b`` dominates (its lower bound is at least every other upper bound);
    * with exactly one other candidate ``a`` (``hi_a > lo_b``; every other input stays below ``x_b``):
      ``y = x_b + relu(x_a - x_b) <= x_b + s (x_a - x_b - l_d)``, the ReLU chord on
      ``d = x_a - x_b in [l_d, u_d]`` (``s = u_d / (u_d - l_d)`` rounded up, ``l_d, u_d`` outward);
    * else the constant ``max_i hi_i``.

    ``tmag`` bounds the magnitude of the intercept's computation (its rounding is covered by the
    back-substitution margin, as for piecewise-linear activations)."""

    lo_idx: np.ndarray  # (out,) flat input index b
    up_coef: np.ndarray  # (out,) coefficient of x_b above
    up_idx2: np.ndarray  # (out,) flat index of the second candidate (b itself where unused)
    up_coef2: np.ndarray  # (out,) its coefficient (0 where unused)
    up_const: np.ndarray  # (out,)
    tmag: np.ndarray  # (out,)
    lower: np.ndarray  # (out,) interval bounds of y
    upper: np.ndarray


def maxpool_relaxation(windows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> MaxPoolRelaxation:
    """The :class:`MaxPoolRelaxation` of windows ``windows`` (``(out, k)`` flat input indices, ``-1``
    on padding, :class:`lumpver.ir.pooling.MaxPool`) for input bounds ``[lo, hi]``."""
    pad = windows < 0
    idx = np.maximum(windows, 0)
    wl = np.where(pad, -np.inf, lo[idx])
    wu = np.where(pad, -np.inf, hi[idx])
    rows = np.arange(windows.shape[0])
    best = wl.argmax(axis=1)
    others = wu.copy()
    others[rows, best] = -np.inf
    best_lo, top = wl[rows, best], wu.max(axis=1)
    second = others.argmax(axis=1)
    dominant = best_lo >= others[rows, second]
    others[rows, second] = -np.inf
    pair = ~dominant & (others.max(axis=1) <= best_lo)  # exactly one other candidate
    b, a = windows[rows, best], windows[rows, second]
    l_d = np.nextafter(lo[a] - hi[b], -np.inf)
    u_d = np.nextafter(hi[a] - lo[b], np.inf)
    width = np.where(pair, u_d - l_d, 1.0)
    s = np.where(pair, np.minimum(1.0, _round_slope(np.where(pair, u_d, 0.0) / width, up=True)), 0.0)
    s = np.where(pair & (l_d >= 0), 1.0, s)
    t = 1.0 - s  # exact for s >= 1/2 (Sterbenz); below, t rounded down and s = 1 - t (exact, not smaller)
    t = np.where(s < 0.5, np.nextafter(t, -np.inf), t)
    s = np.where(s < 0.5, 1.0 - t, s)
    up_coef = np.where(dominant, 1.0, np.where(pair, t, 0.0))
    const = np.where(dominant, 0.0, np.where(pair, -s * np.minimum(l_d, 0.0), top))
    return MaxPoolRelaxation(b, up_coef, np.where(pair, a, b), np.where(pair, s, 0.0), const,
                             np.where(pair, np.abs(s * l_d), 0.0), best_lo, np.where(dominant, wu[rows, best], top))
