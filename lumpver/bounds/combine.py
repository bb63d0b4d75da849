"""Closing a box of a conjunctive unsafe set by a non-negative combination of its rows (DESIGN.md §11).

An unsafe disjunct is a conjunction ``r_i(y) = b_i - A_i y >= 0`` for all rows ``i``. The search closes a box when
one row's sound upper bound is below 0; on low-dimensional control benchmarks (reach_prob_density: ``|x_1| <= rad``,
``|x_2| <= rad``, ``log rho >= p``) no single row may be infeasible on a box while their conjunction is. For any
``lambda >= 0`` with ``sum lambda = 1``, ``max_i (A_i y - b_i) >= -sum_i lambda_i r_i(y)``, so a sound upper bound
``U < 0`` of ``sum_i lambda_i r_i(f(x))`` over the box proves that no point of the box is unsafe, and ``-U`` is a
lower bound of ``max_i (A_i y - b_i)`` there (the Lagrangian relaxation of the conjunction).

Two steps, only the second of which must be sound:

1. :func:`best_weights` picks ``lambda`` per box from the rows' linear bounds in ``x`` (``upper_i`` and its
   gradient ``A_x[i]``, from the batched CROWN pass): it minimises ``phi(lambda) = max_x sum_i lambda_i g_i(x)``
   over the simplex (``g_i`` the linear upper bound of row ``i``, tight at its maximising vertex) by exponentiated
   subgradient steps, vectorised over the boxes; ``phi(lambda) < 0`` predicts that the combination closes
   the box (the LP dual of ``{x in box: g_i(x) >= 0 for all i}`` being empty);
2. :func:`joint_upper` bounds the combined row ``sum_i lambda_i (b_i - A_i y)`` by the engine's alpha-optimised
   batched CROWN (:func:`lumpver.bounds.batched.optimise_alpha`, its outward rounding, :mod:`.rounding`): one
   back-substitution of the combined objective, whose relaxation per neuron follows the sign of the combined
   coefficient (tighter than combining the rows' bounds).
"""
from __future__ import annotations

import numpy as np

from lumpver.bounds.batched import optimise_alpha
from lumpver.bounds.engine import Chain
from lumpver.bounds.rounding import POLICY


def best_weights(A_x: np.ndarray, upper: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 steps: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Per box ``lambda`` on the simplex (B, m) minimising ``phi`` (module docstring, step 1) and that ``phi``
    (B,); a heuristic (not sound: the bound of the combination is :func:`joint_upper`'s). ``A_x`` (B, m, n_in),
    ``upper`` (B, m), ``lo``/``hi`` (B, n_in); rows with a non-finite bound get weight 0."""
    finite = np.isfinite(upper)
    u = np.where(finite, upper, 0.0)
    a = np.where(finite[:, :, None], A_x, 0.0)
    x_star = np.where(a > 0, hi[:, None, :], lo[:, None, :])
    e = u - np.einsum("bmn,bmn->bm", a, x_star)  # g_i(x) = a_i . x + e_i
    lam = np.where(finite, 1.0, 0.0)
    lam /= np.maximum(lam.sum(axis=1, keepdims=True), 1.0)
    best_lam, best_phi = lam.copy(), np.full(len(u), np.inf)
    for t in range(steps):
        w = np.einsum("bm,bmn->bn", lam, a)
        x_hat = np.where(w > 0, hi, lo)
        grad = e + np.einsum("bmn,bn->bm", a, x_hat)
        phi = np.einsum("bm,bm->b", lam, grad)
        better = phi < best_phi
        best_phi = np.where(better, phi, best_phi)
        best_lam = np.where(better[:, None], lam, best_lam)
        scale = np.maximum(np.max(np.abs(grad), axis=1, keepdims=True), 1e-300)
        lam = lam * np.exp(-np.clip(2.0 * grad / scale * (1.0 - t / steps), -30.0, 30.0))
        lam = np.where(finite, np.maximum(lam, 1e-12), 0.0)
        lam /= np.maximum(lam.sum(axis=1, keepdims=True), 1e-300)
    return best_lam, best_phi


def joint_upper(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
                lam_rows: np.ndarray, offset: np.ndarray, weights: np.ndarray, iters: int, lr: float) -> np.ndarray:
    """Sound upper bound (B,) of ``sum_i weights_i (lam_rows_i . y + offset_i)`` over each box (``lam_rows``
    (m, n_out), ``offset`` (m,), ``weights`` (B, m) >= 0; layer bounds ``zl``/``zu`` (B, n_k) per layer valid on
    the boxes). Any ``weights >= 0`` give a sound bound: the combined row is one more linear objective
    of the engine, and the rounding of forming it is added outward: the offset's by its magnitude, the
    objective's by its magnitude times the output bounds ``zl[-1]``, ``zu[-1]`` (an identity last layer; else,
    or with unbounded outputs, the bound is ``inf``)."""
    lam = np.einsum("bm,mn->bn", weights, lam_rows)
    off = weights @ offset
    m = len(offset)
    if chain.acts[-1] != "identity":
        return np.full(len(lo), np.inf)
    y_mag = np.maximum(np.abs(zl[-1]), np.abs(zu[-1]))  # (B, n_out)
    lam_err = np.einsum("bm,mn,bn->b", np.abs(weights), np.abs(lam_rows), y_mag)
    off_hi = off + POLICY.margin(np.abs(weights) @ np.abs(offset), m + 1)
    up = optimise_alpha(chain, lo, hi, zl, zu, lam[:, None, :], off_hi[:, None], None, iters, lr).upper[:, 0]
    with np.errstate(invalid="ignore"):
        err = POLICY.margin(lam_err, m + 1)
    return np.where(np.isfinite(err), up + err + POLICY.margin(np.abs(up) + err, 2), np.inf)
