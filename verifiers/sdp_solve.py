"""Solving one S-procedure LMI with cvxpy (DESIGN.md §5, SDP).

``minimise t  s.t.  M(t, lam, mu) - tau I >= 0, lam >= 0`` with ``M`` from
:mod:`lumpver.verifiers.sdp_certify`. The small margin ``tau`` pushes the numerical solution to the
strict interior so that the solver-free re-check usually needs no widening. The answer is
*not* trusted: :func:`lumpver.verifiers.sdp_certify.certify` re-checks it.

Solvers: ``clarabel`` (interior point; dense PSD blocks, accurate, best for small matrices),
``scs`` (first order; scales to larger matrices, less accurate) and ``mosek`` if installed;
``auto`` picks Clarabel (slow but reliable; SCS failed the re-check at d=67 in the benchmark) up to :data:`AUTO_CLARABEL_MAX_D` and SCS above.
Clarabel is called directly (:func:`solve_clarabel`, no cvxpy canonicalisation: about 30 %
faster at d = 36 in a measurement); SCS and MOSEK go through cvxpy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lumpver.verifiers.sdp_certify import Maps

AUTO_CLARABEL_MAX_D = 100
SOLVERS = ("auto", "clarabel", "scs", "mosek")


@dataclass
class Solution:
    status: str  # cvxpy status, or "error: ..."
    t: float
    lam: np.ndarray
    mu: np.ndarray
    seconds: float
    solver: str


def pick_solver(name: str, d: int) -> str:
    name = (name or "auto").lower()
    if name not in SOLVERS:
        raise ValueError(f"unknown SDP solver {name!r}; expected one of {', '.join(SOLVERS)}")
    if name == "auto":
        return "clarabel" if d <= AUTO_CLARABEL_MAX_D else "scs"
    return name


def solve_lmi(maps: Maps, T: np.ndarray, solver: str = "auto", timeout: float = 60.0, tau: float | None = None) -> Solution:
    """Minimise ``t`` for one target matrix ``T``; never raises on solver failure."""
    import cvxpy as cp

    d = maps.d
    name = pick_solver(solver, d)
    tau = (1e-7 if name != "scs" else 1e-6) if tau is None else tau
    if name == "clarabel":
        return solve_clarabel(maps, T, timeout, tau)
    t = cp.Variable()
    lam = cp.Variable(maps.nonneg.shape[1], nonneg=True)
    mu = cp.Variable(maps.free.shape[1]) if maps.free.shape[1] else None
    e11 = np.zeros(d * d)
    e11[-1] = 1.0
    vec = t * e11 - (T - tau * np.eye(d)).reshape(-1, order="F") - maps.nonneg @ lam
    if mu is not None:
        vec = vec - maps.free @ mu
    m = cp.reshape(vec, (d, d), order="F")
    prob = cp.Problem(cp.Minimize(t), [0.5 * (m + m.T) >> 0])
    kwargs = _solver_kwargs(name, timeout)
    t0 = time.perf_counter()
    try:
        prob.solve(solver=name.upper(), **kwargs)
    except Exception as e:  # solver errors are an answer ("unknown"), not a crash
        return Solution(f"error: {type(e).__name__}: {e}", np.inf, np.zeros(0), np.zeros(0), time.perf_counter() - t0, name)
    secs = time.perf_counter() - t0
    if t.value is None or lam.value is None:
        return Solution(str(prob.status), np.inf, np.zeros(0), np.zeros(0), secs, name)
    mu_v = np.zeros(0) if mu is None else np.asarray(mu.value, dtype=float)
    return Solution(str(prob.status), float(t.value), np.asarray(lam.value, dtype=float), mu_v, secs, name)


def _solver_kwargs(name: str, timeout: float) -> dict:
    timeout = max(1.0, float(timeout))
    if name == "clarabel":
        # 1e-7: tighter tolerances stall on these degenerate relaxations; the re-check absorbs the rest
        return {"time_limit": timeout, "tol_gap_abs": 1e-7, "tol_gap_rel": 1e-7, "tol_feas": 1e-7, "max_iter": 150}
    if name == "scs":
        return {"time_limit_secs": timeout, "eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 50_000}
    if name == "mosek":
        return {"mosek_params": {"MSK_DPAR_OPTIMIZER_MAX_TIME": timeout}}
    return {}


def svec_selector(d: int):
    """Sparse map vec(S) (column-major) -> Clarabel's svec(S): upper triangle by columns,
    off-diagonal entries times sqrt(2) (so that <A, B> = svec(A) . svec(B))."""
    import scipy.sparse as sp

    jj, ii = np.triu_indices(d)[1], np.triu_indices(d)[0]
    order = np.lexsort((ii, jj))  # by column, then row
    ii, jj = ii[order], jj[order]
    scale = np.where(ii == jj, 1.0, np.sqrt(2.0))
    return sp.csr_matrix((scale, (np.arange(ii.size), ii + d * jj)), shape=(ii.size, d * d))


def solve_clarabel(maps: Maps, T: np.ndarray, timeout: float = 60.0, tau: float = 1e-7) -> Solution:
    """``minimise t`` over ``x = (t, lam, mu)`` in Clarabel's form ``A x + s = b``, ``s`` in
    ``R_+^n1 x PSD(d)`` with ``s_psd = svec(M(t, lam, mu) - tau I)``."""
    import clarabel
    import scipy.sparse as sp

    d = maps.d
    n1, n2 = maps.nonneg.shape[1], maps.free.shape[1]
    S = svec_selector(d)
    e11 = sp.csc_matrix(([1.0], ([d * d - 1], [0])), shape=(d * d, 1))
    a_psd = sp.hstack([-(S @ e11), S @ maps.nonneg, S @ maps.free])
    a_nn = sp.hstack([sp.csc_matrix((n1, 1)), -sp.identity(n1), sp.csc_matrix((n1, n2))])
    A = sp.vstack([a_nn, a_psd]).tocsc()
    b = np.concatenate([np.zeros(n1), S @ (tau * np.eye(d) - T).reshape(-1, order="F")])
    q = np.zeros(1 + n1 + n2)
    q[0] = 1.0
    st = clarabel.DefaultSettings()
    st.verbose = False
    for k, v in _solver_kwargs("clarabel", timeout).items():
        setattr(st, k, v)
    t0 = time.perf_counter()
    try:
        sol = clarabel.DefaultSolver(sp.csc_matrix((q.size, q.size)), q, A, b,
                                     ([clarabel.NonnegativeConeT(n1)] if n1 else []) + [clarabel.PSDTriangleConeT(d)],
                                     st).solve()
    except Exception as e:  # solver errors are an answer ("unknown"), not a crash
        return Solution(f"error: {type(e).__name__}: {e}", np.inf, np.zeros(0), np.zeros(0), time.perf_counter() - t0, "clarabel")
    secs = time.perf_counter() - t0
    x = np.asarray(sol.x, dtype=float)
    if x.size != q.size or not np.all(np.isfinite(x)):
        return Solution(str(sol.status), np.inf, np.zeros(0), np.zeros(0), secs, "clarabel")
    return Solution(str(sol.status), float(x[0]), x[1:1 + n1], x[1 + n1:], secs, "clarabel")
