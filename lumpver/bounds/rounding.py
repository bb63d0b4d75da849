"""The one rounding-margin policy of the bound engine (DESIGN.md §3, §5).

Bounds hold for the *real-arithmetic* network on the stored weights (float32 values are held
exactly in float64). Every float64 computation is widened outward:

* accumulations (dot products, sums): next to each computed quantity the engine carries a
  magnitude bound ``M`` (the same computation on absolute values); the result is widened by
  ``2 gamma_K M + tiny`` with ``gamma_K = K u / (1 - K u)``, ``u = 2^-53`` and ``K`` the length of
  the longest accumulation chain (Higham, *Accuracy and Stability of Numerical Algorithms*,
  §3.1 and §3.5); ``tiny`` covers underflow and is added only where ``M > 0``;
* elementary functions (``exp``, ``tanh``) in interval bounds: relative ``elementary_rel``;
* relaxation lines of smooth activations (tangent/chord slopes computed with rounding):
  intercepts widened by ``relax_rel * (|intercept| + |slope| * max(|l|, |u|))``; chord slopes of
  piecewise-linear activations are rounded outward by ``8 u`` relative instead, and the rounding of
  their intercepts goes into ``M``.

:func:`rounding_policy` is the JSON description that certificates record.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

UNIT_ROUNDOFF = 2.0**-53


@dataclass(frozen=True)
class RoundingPolicy:
    """Outward margins for float64 bound arithmetic (see the module docstring)."""

    unit_roundoff: float = UNIT_ROUNDOFF
    tiny: float = 1e-300
    elementary_rel: float = 16 * UNIT_ROUNDOFF
    relax_rel: float = 1e-12
    slope_ulps: int = 8

    def gamma(self, k: int) -> float:
        """Higham's ``gamma_k``: relative error bound of a length-``k`` float64 accumulation."""
        ku = k * self.unit_roundoff
        if ku >= 0.5:
            raise ValueError(f"accumulation chain {k} too long for the gamma_K margin")
        return ku / (1.0 - ku)

    def margin(self, mag: np.ndarray | float, k: int) -> np.ndarray:
        """Outward margin ``2 gamma_k M + tiny`` of a quantity computed with magnitude bound ``mag``."""
        mag = np.asarray(mag, dtype=np.float64)
        return 2.0 * self.gamma(k) * mag + np.where(mag > 0, self.tiny, 0.0)

    def outward(self, lo: np.ndarray, hi: np.ndarray, mag: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``[lo, hi]`` widened by :meth:`margin`."""
        m = self.margin(mag, k)
        return lo - m, hi + m

    def describe(self) -> dict:
        """JSON-able description, recorded in certificates as the bounds' rounding policy."""
        return {
            "name": "higham-gamma-magnitude",
            "accumulation": "2*gamma_K*M + tiny, gamma_K = K*u/(1-K*u), M = magnitude bound, K = chain length",
            "elementary_functions": "relative elementary_rel on exp/tanh values",
            "relaxation_lines": "smooth: intercepts widened by relax_rel*(|b|+|a|*max(|l|,|u|)); "
                                "piecewise-linear: chord slopes rounded outward by slope_ulps*u",
            **asdict(self),
        }


#: The policy every bound of :mod:`lumpver.bounds` uses.
POLICY = RoundingPolicy()


def rounding_policy() -> dict:
    """JSON description of :data:`POLICY` (for certificate evidence)."""
    return POLICY.describe()


def add_hi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sound upper bound of ``a + b`` (one float64 addition)."""
    s = a + b
    return s + POLICY.margin(np.abs(a) + np.abs(b), 2)


def add_lo(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sound lower bound of ``a + b`` (one float64 addition)."""
    s = a + b
    return s - POLICY.margin(np.abs(a) + np.abs(b), 2)


def exact_where(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise: ``a - b`` is finite and exact in float64 (Knuth's TwoSum error term is zero)."""
    s = a - b
    bb = s - a
    return ((a - (s - bb)) + (-b - bb) == 0.0) & np.isfinite(s)


def exact_difference(a: np.ndarray, b: np.ndarray) -> Optional[np.ndarray]:
    """``a - b`` when float64 computes it exactly everywhere, else None: the delta chains of two
    networks (``W^f - W^g``, ``b^f - b^g``) use differences as exact coefficients."""
    return a - b if np.all(exact_where(a, b)) else None


def norm_hi(magnitudes: np.ndarray, norm: str) -> np.ndarray:
    """Sound upper bound of ``||v||`` (linf, l1, l2) for every ``v`` with ``|v_i| <= magnitudes[..., i]``,
    one value per row of the last axis (DESIGN.md §5): sums widened by :data:`POLICY`'s accumulation
    margin, ``sqrt`` by one rounding."""
    a = np.asarray(magnitudes, dtype=np.float64)
    if norm == "linf":
        return a.max(axis=-1, initial=0.0)
    k = a.shape[-1] + 1
    if norm == "l1":
        s = a.sum(axis=-1)
        return s + POLICY.margin(s, k)
    if norm == "l2":
        q = (a * a).sum(axis=-1)
        r = np.sqrt(q + POLICY.margin(q, k + 1))
        return r + POLICY.margin(r, 2)
    raise ValueError(f"norm {norm!r} has no bound from per-output magnitudes")
