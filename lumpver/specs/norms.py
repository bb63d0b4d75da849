"""The difference norms of an equivalence claim ``sup_X ||f(x) - g(x)|| <= epsilon`` (DESIGN.md §4).

``linf``, ``l1``, ``l2`` are vector norms of ``f(x) - g(x)``; ``top1`` is the top-1 disagreement
(1 when ``argmax f(x) != argmax g(x)``, else 0). Every module names, evaluates and converts these
norms through this one place.
"""
from __future__ import annotations

import math

import numpy as np

from lumpver.errors import InputError
from lumpver.specs.norm_names import NORMS

#: relative outward rounding of a norm summed in float64 (n terms, n << 1e4: far above n * 2^-53)
_ROUND_UP = 1 + 1e-12


def check_norm(norm: str) -> str:
    """``norm`` when it is one of :data:`NORMS`; InputError otherwise."""
    if norm not in NORMS:
        raise InputError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    return norm


def norm_value(d: np.ndarray, norm: str) -> np.ndarray:
    """Row-wise vector norm (linf, l1, l2) of output differences ``d`` of shape ``(n, m)``."""
    if norm == "linf":
        return np.max(np.abs(d), axis=1)
    if norm == "l1":
        return np.sum(np.abs(d), axis=1)
    if norm == "l2":
        return np.sqrt(np.sum(d * d, axis=1))
    raise ValueError(f"not a vector norm: {norm!r}")


def difference_rows(yf: np.ndarray, yg: np.ndarray, norm: str) -> np.ndarray:
    """Row-wise ``||yf - yg||`` for outputs of shape ``(n, m)``; top1: 1.0 where the argmax differs."""
    yf, yg = np.atleast_2d(yf), np.atleast_2d(yg)
    if norm == "top1":
        return (np.argmax(yf, axis=1) != np.argmax(yg, axis=1)).astype(float)
    return norm_value(yf.astype(np.float64) - yg.astype(np.float64), norm)


def from_max_abs(v: float, n: int, norm: str) -> float:
    """A bound on ``||d||`` for ``d`` in R^n from ``max_i |d_i| <= v`` (rounded up)."""
    if norm == "l1":
        return v * n * _ROUND_UP
    if norm == "l2":
        return v * math.sqrt(n) * _ROUND_UP
    return v


def upper_norm(v: np.ndarray, norm: str) -> float:
    """An upper bound on ``||d||`` from per-output bounds ``|d_i| <= v_i`` (rounded up; linf otherwise)."""
    v = np.abs(np.asarray(v, dtype=np.float64))
    if norm == "l1":
        return float(v.sum() * _ROUND_UP)
    if norm == "l2":
        return float(np.sqrt((v * v).sum()) * _ROUND_UP)
    return float(v.max(initial=0.0))
