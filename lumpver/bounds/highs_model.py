"""A persistent, warm-started HiGHS model (``highspy``) whose values are made sound through the dual
(DESIGN.md §3 LP tightening, §11 branch and bound).

:class:`SoundLp` holds ``min c.v`` over equality rows ``E v = e``, rows ``A v <= a`` and column bounds
``lb <= v <= ub`` in one HiGHS model: branch-and-bound nodes change column bounds, right-hand sides and
single coefficients, objectives change per query, and the dual simplex restarts from a given basis
(a parent's), which costs a few pivots instead of a rebuild and a cold solve. Nothing the solver says
is trusted: a value is :func:`lumpver.bounds.region.dual_bound` of the solver's row multipliers on the
stored rows written ``A_ub v <= b_ub`` (each equality twice, its multiplier split by sign), outward
rounded; an infeasible model is empty only when its dual ray, checked the same way, is a Farkas
certificate. The stored matrix and the model's agree entry for entry (every change goes to both).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from lumpver.bounds.region import dual_bound


def silent_highs():
    """A ``highspy.Highs`` that prints nothing (its banner goes to the process's C stdout once: kept off
    a CLI's JSON by pointing file descriptor 1 at /dev/null while it is built), presolve off (warm
    starts), one thread."""
    import highspy  # solver: imported where used

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    for name, val in (("output_flag", False), ("presolve", "off"), ("threads", 1)):
        h.setOptionValue(name, val)
    return h


@dataclass
class Solved:
    """``value``: sound lower bound of the minimum (``inf``: the model is certified empty; None: no
    bound); ``x``: the solver's primal point (a hint, never evidence); ``basis``: for warm starts."""

    value: Optional[float]
    x: Optional[np.ndarray] = None
    basis: object = None


def solve_sound(h, cost: np.ndarray, bound: Callable[[np.ndarray, np.ndarray], Optional[float]],
                basis=None) -> Solved:
    """Run the HiGHS model ``h`` from ``basis`` (if given) and bound its minimum soundly: ``bound(c, y)`` is the
    caller's :func:`dual_bound` of the objective ``c`` for the solver's row multipliers ``y``. Optimal: the bound
    of the row duals; infeasible: ``inf`` only when the dual ray (either sign) bounds the zero objective above 0
    (a Farkas certificate), else None; any other status: None. Shared by :class:`SoundLp` and the LP finisher's
    per-box model (verifiers/lp_finish.py)."""
    import highspy  # solver: imported where used

    if basis is not None:
        h.setBasis(basis)
    if h.run() == highspy.HighsStatus.kError and h.getModelStatus() == highspy.HighsModelStatus.kNotset:
        # another HiGHS in this process (a user's, a test's MILP) started the shared thread scheduler with more
        # threads than our one: HiGHS then refuses to run (every LP would give no bound); restart it once
        highspy.Highs.resetThreadScheduler(True)
        h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        _, has, ray = h.getDualRay()
        zero = np.zeros(cost.size)
        for sign in (1.0, -1.0):
            val = bound(zero, sign * np.asarray(ray, np.float64)) if has else None
            if val is not None and val > 0:
                return Solved(np.inf)
        return Solved(None)
    if status != highspy.HighsModelStatus.kOptimal:
        return Solved(None)
    sol = h.getSolution()
    return Solved(bound(cost, np.asarray(sol.row_dual, np.float64)), np.asarray(sol.col_value), h.getBasis())


class SoundLp:
    """The model (module docstring). ``E``, ``A``: scipy sparse matrices over the same columns."""

    def __init__(self, E, e: np.ndarray, A, a: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> None:
        import highspy  # solver: imported where used
        from scipy import sparse

        self.n_eq, self.n_le = E.shape[0], A.shape[0]
        M = sparse.vstack([E, A]).tocsc()
        M.sum_duplicates()
        M.sort_indices()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = M.shape[1], M.shape[0]
        lp.col_cost_ = np.zeros(M.shape[1])
        lp.col_lower_, lp.col_upper_ = np.asarray(lb, np.float64), np.asarray(ub, np.float64)
        lp.row_lower_ = np.concatenate([e, np.full(self.n_le, -highspy.kHighsInf)])
        lp.row_upper_ = np.concatenate([e, a])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = M.indptr, M.indices, M.data
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = M.shape[1], M.shape[0]
        self.model = silent_highs()
        self.model.passModel(lp)
        M = M.tocsr()
        Eo, Ao = M[:self.n_eq], M[self.n_eq:]
        self.A_ub = sparse.vstack([Eo, -Eo, Ao]).tocsr()
        self.A_ub.sort_indices()
        self.b_ub = np.concatenate([e, -np.asarray(e, np.float64), a]).astype(np.float64)
        self.lb, self.ub = np.array(lb, np.float64), np.array(ub, np.float64)
        self.cost = np.zeros(M.shape[1])

    def le_positions(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Positions in ``A_ub.data`` of the entries ``(rows[i], cols[i])`` of the ``<=`` block (entries
        that exist in the matrix: a structural zero cannot be changed)."""
        A, out = self.A_ub, np.empty(len(rows), dtype=np.int64)
        for n, (r, c) in enumerate(zip(np.asarray(rows) + 2 * self.n_eq, cols)):
            seg = A.indices[A.indptr[r]:A.indptr[r + 1]]
            j = int(np.searchsorted(seg, c))
            if j >= seg.size or seg[j] != c:
                raise ValueError(f"no entry ({r - 2 * self.n_eq}, {c}) in the model")
            out[n] = A.indptr[r] + j
        return out

    def set_coeffs(self, rows: np.ndarray, cols: np.ndarray, pos: np.ndarray, vals: np.ndarray) -> None:
        """Change ``<=`` entries (``pos`` from :meth:`le_positions`), where they differ."""
        vals = np.asarray(vals, np.float64)
        diff = self.A_ub.data[pos] != vals
        if not np.any(diff):
            return
        self.A_ub.data[pos[diff]] = vals[diff]
        h = self.model
        for r, c, v in zip((np.asarray(rows)[diff] + self.n_eq).tolist(), np.asarray(cols)[diff].tolist(),
                           vals[diff].tolist()):
            h.changeCoeff(r, c, v)

    def set_rhs(self, rows: np.ndarray, vals: np.ndarray) -> None:
        """Change right-hand sides of ``<=`` rows, where they differ."""
        import highspy  # solver: imported where used

        rows, vals = np.asarray(rows), np.asarray(vals, np.float64)
        at = 2 * self.n_eq + rows
        diff = self.b_ub[at] != vals
        if np.any(diff):
            self.b_ub[at[diff]] = vals[diff]
            r = rows[diff] + self.n_eq
            self.model.changeRowsBounds(r.size, r, np.full(r.size, -highspy.kHighsInf), vals[diff])

    def set_bounds(self, cols: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> None:
        """Change column bounds, where they differ."""
        cols = np.asarray(cols)
        lb, ub = np.asarray(lb, np.float64), np.asarray(ub, np.float64)
        diff = (self.lb[cols] != lb) | (self.ub[cols] != ub)
        if np.any(diff):
            c = cols[diff]
            self.lb[c], self.ub[c] = lb[diff], ub[diff]
            self.model.changeColsBounds(c.size, c, self.lb[c], self.ub[c])

    def set_cost(self, c: np.ndarray) -> None:
        c = np.asarray(c, np.float64)
        diff = np.flatnonzero(c != self.cost)
        if diff.size:
            self.cost[diff] = c[diff]
            self.model.changeColsCost(diff.size, diff, c[diff])

    def _bound(self, c: np.ndarray, y: np.ndarray) -> Optional[float]:
        """dual_bound for HiGHS row multipliers ``y`` (equality multipliers split by sign)."""
        e = self.n_eq
        marg = np.concatenate([np.minimum(y[:e], 0.0), np.minimum(-y[:e], 0.0), np.minimum(y[e:], 0.0)])
        keep = np.isfinite(self.b_ub)
        if np.all(keep):
            return dual_bound(c, self.A_ub, self.b_ub, self.lb, self.ub, marg)
        if np.any(marg[~keep] != 0):  # a free row with a multiplier: no bound
            return None
        return dual_bound(c, self.A_ub[keep], self.b_ub[keep], self.lb, self.ub, marg[keep])

    def solve(self, basis=None) -> Solved:
        """Minimise the current cost from ``basis`` (if given) and bound the value soundly (:func:`solve_sound`)."""
        return solve_sound(self.model, self.cost, self._bound, basis)
