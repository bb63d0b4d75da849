"""Tolerance-robust grouping of proportional rows in O(n d + n log n) (DESIGN.md §2).

Rows are normalised to unit length and projected on a fixed random direction; members of
one group have projections within ``tol`` of their representative, so sorting the
projections and cutting at gaps larger than ``tol`` never separates a group (no rounding
boundary can split a class, unlike hashing rounded values). Inside each run, a greedy pass
in index order compares full vectors with the run's representatives; large runs are first
split again along further random directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumpver.ir.activations import ACTIVATIONS

_RUN_LIMIT = 48
_MAX_DEPTH = 4


@dataclass
class Grouping:
    """``label[i]`` = group number (groups numbered by first member); ``rep[g]`` = first member."""

    label: np.ndarray
    rep: np.ndarray


def group_rows(rows: np.ndarray, mode: str, tol: float, seed: int = 20240601) -> Grouping:
    """Group rows that are equal up to the factor allowed by ``mode`` within relative ``tol``.

    ``mode`` (an activation's ``lumping_scales``, :mod:`lumpver.ir.activations`): ``positive`` (rho > 0), ``nonzero`` (rho != 0), ``sign`` (rho = +-1), ``one`` (rho = 1).
    Two rows u, t match when ``||u/|u| -+ t/|t| ||_2 <= tol`` (sign flip only for any/sign)
    and, for sign/one, ``|log|u| - log|t|| <= tol``. Rows must be nonzero.
    """
    n = rows.shape[0]
    norms = np.linalg.norm(rows, axis=1)
    keys = rows / norms[:, None]
    lognorm = np.log(norms)
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((_MAX_DEPTH + 1, rows.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    signed = mode in ("nonzero", "sign")
    label = np.full(n, -1, dtype=np.int64)
    reps: list[int] = []

    def project(idx: np.ndarray, depth: int) -> np.ndarray:
        p = keys[idx] @ dirs[depth]
        return np.abs(p) if signed else p

    def matches(cand: np.ndarray, i: int) -> np.ndarray:
        """Which rows in ``cand`` match row ``i`` (vectorised over cand)."""
        d = np.linalg.norm(keys[cand] - keys[i], axis=1)
        if signed:
            d = np.minimum(d, np.linalg.norm(keys[cand] + keys[i], axis=1))
        ok = d <= tol
        if mode in ("sign", "one"):
            ok &= np.abs(lognorm[cand] - lognorm[i]) <= tol
        return ok

    def greedy(idx: np.ndarray) -> None:
        idx = np.sort(idx)
        if matches(idx, int(idx[0])).all():  # the common case: the run is one group
            label[idx] = len(reps)
            reps.append(int(idx[0]))
            return
        near = _near(keys[idx], signed, tol) if idx.size <= 4 * _RUN_LIMIT else None  # n^2 entries: small runs
        local = np.zeros(idx.size, dtype=bool)  # this run's representatives (positions in idx)
        for a, i in enumerate(idx.tolist()):
            cand = np.flatnonzero(local if near is None else local & near[a])  # the exact test only for these
            hit = np.flatnonzero(matches(idx[cand], i)) if cand.size else ()
            if len(hit):
                label[i] = label[idx[cand[hit[0]]]]
            else:
                label[i] = len(reps)
                reps.append(i)
                local[a] = True

    def split(idx: np.ndarray, depth: int) -> None:
        if idx.size == 1:
            label[idx[0]] = len(reps)
            reps.append(int(idx[0]))
            return
        if idx.size <= _RUN_LIMIT or depth > _MAX_DEPTH:
            greedy(idx)
            return
        p = project(idx, depth)
        order = np.argsort(p, kind="stable")
        cuts = np.flatnonzero(np.diff(p[order]) > tol * 1.0001) + 1
        if cuts.size == 0 and depth > 0:
            greedy(idx) if idx.size <= 4 * _RUN_LIMIT else split(idx, depth + 1)
            return
        bounds, ordered = [0, *cuts.tolist(), idx.size], idx[order]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b - a == 1:  # a row alone in its run: a group of its own
                label[ordered[a]] = len(reps)
                reps.append(int(ordered[a]))
            else:
                split(ordered[a:b], depth + 1)

    split(np.arange(n), 0)
    return _renumber(label, np.array(reps, dtype=np.int64))


def _near(keys: np.ndarray, signed: bool, tol: float) -> np.ndarray:
    """Pairs of unit rows that may be within ``tol`` (up to sign when ``signed``), from one Gram matrix:
    ``|u -+ t|^2 = 2 -+ 2 u.t`` up to rounding of ``8 d`` units (d = row length), which the slack covers,
    so every pair the exact test in :func:`group_rows` accepts is among them."""
    gram = keys @ keys.T
    dist2 = 2.0 - 2.0 * (np.abs(gram) if signed else gram)
    return dist2 <= tol * tol + 16 * (keys.shape[1] + 2) * np.finfo(float).eps


def classify_signatures(sig: np.ndarray, activation: str, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group nonzero signature rows into lumpable classes (DESIGN.md §2): ``(label, rep, scale)`` with
    ``rep`` indexing the representative row of each class and ``scale[i]`` the ratio of row ``i`` to
    its representative that the activation admits (1 for representatives)."""
    act = ACTIVATIONS[activation]
    g = group_rows(sig, act.lumping_scales, tol)
    rep_rows = sig[g.rep[g.label]]
    if act.positively_homogeneous:
        scale = np.einsum("ij,ij->i", sig, rep_rows) / np.einsum("ij,ij->i", rep_rows, rep_rows)
    elif act.lumping_scales == "sign":
        scale = np.sign(np.einsum("ij,ij->i", sig, rep_rows))
    else:
        scale = np.ones(sig.shape[0])
    scale[g.rep] = 1.0
    return g.label, g.rep, scale


def _renumber(label: np.ndarray, reps: np.ndarray) -> Grouping:
    """Number groups by their first member (deterministic, independent of the split order)."""
    order = np.argsort(reps, kind="stable")
    new_of_old = np.empty_like(order)
    new_of_old[order] = np.arange(order.size)
    return Grouping(new_of_old[label], reps[order])


def pairwise_group_rows(rows: np.ndarray, mode: str, tol: float) -> Grouping:
    """The O(n^2) reference: compare each row with every representative so far (benchmark baseline)."""
    n = rows.shape[0]
    norms = np.linalg.norm(rows, axis=1)
    keys = rows / norms[:, None]
    lognorm = np.log(norms)
    signed = mode in ("nonzero", "sign")
    label = np.empty(n, dtype=np.int64)
    reps: list[int] = []
    for i in range(n):
        for g, r in enumerate(reps):
            d = np.linalg.norm(keys[r] - keys[i])
            if signed:
                d = min(d, np.linalg.norm(keys[r] + keys[i]))
            if d <= tol and (mode not in ("sign", "one") or abs(lognorm[r] - lognorm[i]) <= tol):
                label[i] = g
                break
        else:
            label[i] = len(reps)
            reps.append(i)
    return Grouping(label, np.array(reps, dtype=np.int64))
