"""The S-procedure matrix and its solver-free re-check (DESIGN.md §5, SDP; §9 evidence).

For a :class:`~lumpver.verifiers.sdp_lift.Lift` and a *target*, the LMI is

    M(t, lam, mu) = t E11 - T - sum_j lam_j Q_j - sum_k mu_k P_k  >= 0   (PSD),

in scaled coordinates ``y = zeta / r`` (``r`` = per-coordinate radius), where ``E11`` selects the
constant coordinate, ``Q_j = sym(c1 c2^T)`` are the nonnegative families (``lam >= 0``), ``P_k``
the equality families (``mu`` free), and the target ``T`` is

* ``{"kind": "linear", "output": i, "sign": s}``: ``T = sym(s e_i e1^T)``; then ``s (f_i - g_i) <= t``;
* ``{"kind": "l2"}``: ``T = E^T E``; then ``||f - g||_2^2 <= t``.

If ``M >= -delta I`` then for every feasible ``y``: ``target(y) <= t + delta ||y||^2 + sum_j lam_j
slack_j`` and ``||y||^2 <= R^2 = sum_k (max(|lo_k|, |hi_k|) / r_k)^2``. :func:`certify` computes
``delta`` from a float64 eigenvalue decomposition plus stated margins: ``KAPPA`` times the matrix
of absolute values covers the float64 rounding of the forms and of the matrix, and
``EIG_FACTOR * d * 2^-53 * ||M||`` covers the eigenvalue error of LAPACK's symmetric solver.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from lumpver.verifiers.sdp_lift import Lift

KAPPA = 1e-10  # relative rounding allowance of every matrix entry (>> n * 2^-53 for these sizes)
EIG_FACTOR = 8.0
U64 = 2.0**-53
#: widening above this fraction of |t| (plus DOUBT_ABS) is a numerical doubt -> unknown.
DOUBT_REL = 0.25
DOUBT_ABS = 1e-7


@dataclass
class Maps:
    """Sparse linear maps from multipliers to vec(M) (column-major, d*d rows), in y coordinates."""

    d: int
    r: np.ndarray
    nonneg: sp.csc_matrix
    free: sp.csc_matrix
    slack: np.ndarray  # slack of each nonneg multiplier's constraint
    names: list[tuple[str, int]]  # (family name, size) in order, nonneg families first then free


def _sym_columns(c1: np.ndarray, c2: np.ndarray, d: int) -> sp.csc_matrix:
    """Columns vec(sym(c1_j c2_j^T)) for every row j."""
    rows, cols, vals = [], [], []
    for j in range(c1.shape[0]):
        i1 = np.flatnonzero(c1[j])
        i2 = np.flatnonzero(c2[j])
        v = 0.5 * np.outer(c1[j, i1], c2[j, i2])
        a = (i1[:, None] + d * i2[None, :]).ravel()
        b = (i2[None, :] + d * i1[:, None]).ravel()
        rows += [a, b]
        vals += [v.ravel(), v.ravel()]
        cols.append(np.full(2 * a.size, j))
    if not rows:
        return sp.csc_matrix((d * d, c1.shape[0]))
    m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(d * d, c1.shape[0]))
    return m.tocsc()


def build_maps(lift: Lift) -> Maps:
    """The constraint maps of ``lift`` (deterministic: the checker rebuilds the same)."""
    r = lift.radius()
    d = lift.d
    nn = [f for f in lift.families if f.sign == "nonneg"]
    fr = [f for f in lift.families if f.sign == "free"]

    def stack(fams):
        if not fams:
            return sp.csc_matrix((d * d, 0))
        return sp.hstack([_sym_columns(f.c1 * r, f.c2 * r, d) for f in fams]).tocsc()

    slack = np.concatenate([f.slack for f in nn]) if nn else np.zeros(0)
    names = [(f.name, f.size) for f in nn] + [(f.name, f.size) for f in fr]
    return Maps(d, r, stack(nn), stack(fr), slack, names)


def target_matrix(lift: Lift, target: dict, r: np.ndarray) -> np.ndarray:
    """The target matrix ``T`` (dense, y coordinates); see the module docstring."""
    d = lift.d
    diff = lift.output_diff() * r
    if target["kind"] == "linear":
        e = float(target["sign"]) * diff[int(target["output"])]
        one = np.zeros(d)
        one[-1] = 1.0
        return 0.5 * (np.outer(e, one) + np.outer(one, e))
    if target["kind"] == "l2":
        return diff.T @ diff
    raise ValueError(f"unknown SDP target {target!r}")


def radius_sq(lift: Lift, r: np.ndarray) -> float:
    """``R^2``: a bound of ``||y||^2`` over all feasible points."""
    return float(np.sum((np.maximum(np.abs(lift.lo), np.abs(lift.hi)) / r) ** 2))


@dataclass
class Certified:
    """Outcome of re-checking one LMI: the sound value ``t + widening`` or a doubt."""

    ok: bool
    value: float  # sound bound on the target (inf when not ok)
    t: float
    lambda_min: float
    delta: float
    widening: float
    reason: str = ""

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in self.__dict__.items()}


def lmi_matrix(maps: Maps, T: np.ndarray, t: float, lam: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M`` and the matrix of absolute values of its terms (for the rounding margin)."""
    d = maps.d
    m = -T - (maps.nonneg @ lam + maps.free @ mu).reshape(d, d, order="F")
    m[-1, -1] += t
    a = np.abs(T) + (abs(maps.nonneg) @ np.abs(lam) + abs(maps.free) @ np.abs(mu)).reshape(d, d, order="F")
    a[-1, -1] += abs(t)
    return 0.5 * (m + m.T), a


def certify(lift: Lift, maps: Maps, target: dict, t: float, lam, mu) -> Certified:
    """Re-check ``M(t, lam, mu)`` without a solver; ``lam`` is projected onto ``lam >= 0``."""
    lam = np.maximum(np.asarray(lam, dtype=np.float64).reshape(-1), 0.0)
    mu = np.asarray(mu, dtype=np.float64).reshape(-1)
    if lam.size != maps.nonneg.shape[1] or mu.size != maps.free.shape[1]:
        return Certified(False, np.inf, t, np.nan, np.nan, np.inf, "multiplier count does not match the constraints")
    if not (np.isfinite(t) and np.all(np.isfinite(lam)) and np.all(np.isfinite(mu))):
        return Certified(False, np.inf, t, np.nan, np.nan, np.inf, "non-finite multipliers")
    T = target_matrix(lift, target, maps.r)
    m, a = lmi_matrix(maps, T, float(t), lam, mu)
    eig = np.linalg.eigvalsh(m)
    lmin = float(eig[0])
    norm_m = float(np.max(np.abs(eig)))
    round_margin = KAPPA * float(np.linalg.norm(a, 2)) + EIG_FACTOR * maps.d * U64 * norm_m
    delta = max(0.0, -lmin) + round_margin
    widening = delta * radius_sq(lift, maps.r) + float(lam @ maps.slack)
    value = float(t) + widening
    if not np.isfinite(value):
        return Certified(False, np.inf, t, lmin, delta, widening, "non-finite bound")
    if widening > DOUBT_REL * abs(float(t)) + DOUBT_ABS:
        return Certified(False, np.inf, t, lmin, delta, widening,
                         f"numerical doubt: the LMI fails by {max(0.0, -lmin):.3g} (widening {widening:.3g} vs t={t:.6g})")
    return Certified(True, value, float(t), lmin, delta, widening)
