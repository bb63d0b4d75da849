"""Batched bounds on ``f - g`` under fixed ReLU phases of aligned neuron pairs (DESIGN.md §5, §11;
issue 14: the beta-CROWN idea on the differential chain).

A *sub-problem* is the input box restricted by phase splits ``(p^f, p^g)`` in ``{-, +}^2`` of some
neuron pairs of the aligned pair (:func:`lumpver.bounds.diff_batched.prepare_diff`, kind ``delta``):
``+`` keeps the points where ``z >= 0``, ``-`` where ``z <= 0``. It is represented by valid layer
bounds (f's, g's pre-activations and ``delta z``, :class:`PairLayers`): its parent's, with the split
pair clamped (``zl = max(zl, 0)`` / ``zu = min(zu, 0)``). Many sub-problems are bounded per numpy
pass by the batched differential bounds (:func:`lumpver.bounds.diff_batched._delta_layers` with these
bounds as ``init``: every layer is re-bounded and intersected with them, so the clamps reach every
later layer). A fixed pair's relaxation becomes its linear piece: both active ``delta h = delta z``,
``h^g = z^g`` (secant slope range ``{1}``); both inactive ``delta h = 0``; mixed phases fix the sign
of ``delta z``, so ``delta h`` lies between 0 and ``delta z`` (:func:`lumpver.bounds.diff.delta_relax`).

Soundness: a sub-problem's bounds hold for every point of the box whose phases match (the parent's
bounds hold there, the clamps are true there, the relaxations are valid on the clamped bounds,
outward rounding as in the batched bounds). A sub-problem whose bounds cross somewhere (``l > u`` for
f, g or ``delta z``) is empty. The four children of a split pair cover their parent (a point on
``z = 0`` lies in both halves), so the largest leaf bound of a split tree bounds the box.

Trees (search: :mod:`lumpver.verifiers.bab_phase_batched`; checker:
:mod:`lumpver.certificates.bounded_bab`): preorder, ``-1`` a leaf, ``p >= 0`` the node's pair of
flat index ``p`` (over the hidden layers) is split into the four children of :data:`COMBOS`, in
order. :func:`replay` rebuilds and re-bounds every node from the box and the tree alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lumpver.bounds.batched import backsub
from lumpver.bounds.diff_batched import (ITERS, LR, DiffModel, PairLayers, Refine, _delta_layers, _objective)
from lumpver.bounds.intermediate import optimise_rows
from lumpver.bounds.rounding import add_hi, norm_hi

#: the children of a split pair, in tree order: (p^f, p^g)
COMBOS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
#: sub-problems bounded per numpy pass
CHUNK = 48
#: leaves a recorded tree may have (a larger tree is refused as malformed)
MAX_LEAVES = 200_000


FIELDS = ("fl", "fu", "gl", "gu", "dl", "du")


def stack(items: list[PairLayers]) -> PairLayers:
    """One batch of layer bounds from single sub-problems' (each of batch size 1)."""
    return PairLayers(*[[np.concatenate([getattr(t, n)[k] for t in items]) for k in range(len(items[0].fl))]
                        for n in FIELDS])


def row(t: PairLayers, b: int) -> PairLayers:
    """Sub-problem ``b`` of a batch, as a batch of one (copies)."""
    return PairLayers(*[[a[b:b + 1].copy() for a in getattr(t, n)] for n in FIELDS])


@dataclass
class PhaseBounds:
    """Per sub-problem: ``rows[b, r]`` upper bounds of ``f_r - g_r`` (``r < m``) and ``g_r - f_r``
    (``-inf`` when empty), the norm bound ``value`` (0 when empty), the worst row's linear bound in x
    (``A_x``, for candidate points), the pair to split next (flat index, -1: none left) and the layer
    bounds (``trace``: f's, g's, ``delta z``'s; its children start from them)."""

    rows: np.ndarray  # (B, 2m)
    value: np.ndarray  # (B,)
    empty: np.ndarray  # (B,) bool
    A_x: np.ndarray  # (B, n_in), worst row
    split: np.ndarray  # (B,) int
    trace: PairLayers


def hidden_widths(model: DiffModel) -> list[int]:
    assert model.g is not None
    return [s.op.out_features for s in model.g.steps[:-1]]


def supported(model: DiffModel) -> bool:
    """Aligned (``delta``) pairs of ReLU hidden layers."""
    return model.kind == "delta" and model.g is not None and all(a == "relu" for a in model.g.acts[:-1])


def _norms(rows: np.ndarray, m: int, norm: str) -> np.ndarray:
    """Rounded-up norm of per-output bounds ``max(f_r - g_r, g_r - f_r)``."""
    return norm_hi(np.maximum(np.maximum(rows[:, :m], rows[:, m:]), 0.0), norm) * (1 + 1e-12)


def _crossing(t: PairLayers) -> np.ndarray:
    out = np.zeros(t.fl[0].shape[0], dtype=bool)
    for lo, hi in ((t.fl, t.fu), (t.gl, t.gu), (t.dl, t.du)):
        for a, b in zip(lo, hi):
            out |= np.any(a > b, axis=1)
    return out


def phase_bounds(model: DiffModel, lo: np.ndarray, hi: np.ndarray, init: Optional[PairLayers], norm: str = "linf",
                 iters: int = ITERS, lr: float = LR, refine: Refine = Refine()) -> PhaseBounds:
    """Sound bounds of ``f - g`` on each sub-problem: box ``[lo[b], hi[b]]`` where the layer bounds
    ``init`` (a parent's, clamped by the split; None: the whole box) hold."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    B, m = lo.shape[0], model.n_outputs
    trace = PairLayers([], [], [], [], [], [])
    rel, free, (out_lo, out_hi), _ = _delta_layers(model, lo, hi, refine, trace, init)
    lam = _objective(model, B)
    up, A_x = optimise_rows(model.joint, rel, free, lam, lo, hi, iters, lr)
    rows = np.concatenate([np.minimum(up[:, :m], out_hi), np.minimum(up[:, m:], add_hi(-out_lo, 0.0))], axis=1)
    empty = _crossing(trace)
    rows[empty] = -np.inf
    value = np.where(empty, 0.0, _norms(np.where(empty[:, None], 0.0, rows), m, norm))
    worst = np.argmax(rows, axis=1)
    split = _choose(model, rel, lam[np.arange(B), worst][:, None, :], lo, hi, trace)
    return PhaseBounds(rows, value, empty, A_x[np.arange(B), worst], np.where(empty, -1, split), trace)


def _choose(model: DiffModel, rel, lam: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: PairLayers) -> np.ndarray:
    """BaBSR-style choice per sub-problem: among the free pairs with an unstable neuron, the one whose
    relaxation intercepts add most to the worst row's bound (coefficient x intercept, both halves of
    the stacked chain), ties to the widest relaxation gap; -1 when none is left (a split pair is clamped
    stable in both networks, so it is never a candidate again)."""
    bb = backsub(model.joint, rel, lam, model.joint.depth - 1, True, lo, hi, record=True)
    scores = []
    for k, w in enumerate(hidden_widths(model)):
        A, r = bb.coeffs[k + 1][:, 0, :], rel[k + 1]
        contrib = np.maximum(A, 0) * r.tu + np.minimum(A, 0) * r.tl
        gap = (r.tu - r.tl)[:, :w] + (r.tu - r.tl)[:, w:]
        cand = ((t.fl[k] < 0) & (t.fu[k] > 0)) | ((t.gl[k] < 0) & (t.gu[k] > 0))
        scores.append(np.where(cand, np.abs(contrib[:, :w] + contrib[:, w:]) + 1e-9 * np.abs(gap) + 1e-300, -1.0))
    s = np.concatenate(scores, axis=1)
    best = np.argmax(s, axis=1)
    return np.where(s[np.arange(s.shape[0]), best] > 0, best, -1)


def unflat(widths: list[int], flat: int) -> tuple[int, int]:
    """(layer, neuron) of a flat pair index; ValueError beyond the hidden layers."""
    if flat < 0:
        raise ValueError(f"pair index {flat}")
    for k, w in enumerate(widths):
        if flat < w:
            return k, flat
        flat -= w
    raise ValueError("pair index beyond the hidden layers")


def clamp(t: PairLayers, widths: list[int], flat: int, pf: int, pg: int) -> PairLayers:
    """The layer bounds of the child ``(pf, pg)`` of splitting pair ``flat``: the parent's, with
    ``z^f`` and ``z^g`` of the pair clamped to the sign of their phase."""
    k, j = unflat(widths, flat)
    out = row(t, 0)
    for lo, hi, p in ((out.fl, out.fu, pf), (out.gl, out.gu, pg)):
        if p > 0:
            lo[k][0, j] = max(lo[k][0, j], 0.0)
        else:
            hi[k][0, j] = min(hi[k][0, j], 0.0)
    if pf != pg:  # z^f >= 0 >= z^g: delta z >= 0 (and the reverse)
        if pf > 0:
            out.dl[k][0, j] = max(out.dl[k][0, j], 0.0)
        else:
            out.du[k][0, j] = min(out.du[k][0, j], 0.0)
    return out


def expand(model: DiffModel, lo: np.ndarray, hi: np.ndarray, parents: list[PairLayers], flats: list[int],
           parent_rows: np.ndarray, norm: str, iters: int, lr: float, refine: Refine) -> PhaseBounds:
    """The four children (:data:`COMBOS` order) of each parent split on its pair, bounded
    :data:`CHUNK` per numpy pass and concatenated; each child's rows intersected with its parent's
    (``parent_rows``, (P, 2m): they hold on the parent, so on the child)."""
    widths = hidden_widths(model)
    inits = [clamp(t, widths, p, a, c) for t, p in zip(parents, flats) for a, c in COMBOS]
    m, B = model.n_outputs, len(inits)
    out = PhaseBounds(np.full((B, 2 * m), -np.inf), np.zeros(B), np.ones(B, dtype=bool), np.zeros((B, lo.size)),
                      np.full(B, -1), stack(inits))
    todo = np.flatnonzero(~_crossing(out.trace))  # the others are empty by the clamped bounds alone
    for s in range(0, todo.size, CHUNK):
        idx = todo[s:s + CHUNK]
        pb = phase_bounds(model, np.repeat(lo[None], idx.size, 0), np.repeat(hi[None], idx.size, 0),
                          stack([inits[i] for i in idx]), norm, iters, lr, refine)
        for name in ("rows", "empty", "A_x", "split"):
            getattr(out, name)[idx] = getattr(pb, name)
        for name in FIELDS:
            for k, a in enumerate(getattr(pb.trace, name)):
                getattr(out.trace, name)[k][idx] = a
    out.rows = np.minimum(out.rows, np.repeat(np.asarray(parent_rows, np.float64), 4, axis=0))
    out.value = np.where(out.empty, 0.0, _norms(np.where(out.empty[:, None], 0.0, out.rows), m, norm))
    return out


def root_bounds(model: DiffModel, lo: np.ndarray, hi: np.ndarray, norm: str, iters: int, lr: float,
                refine: Refine) -> PhaseBounds:
    """The whole box as a sub-problem."""
    if not supported(model):
        raise ValueError("phase splits need an aligned pair of ReLU networks")
    return phase_bounds(model, lo[None], hi[None], None, norm, iters, lr, refine)


def parse(tree: list[int]) -> tuple[list[int], dict[int, list[int]]]:
    """``(code, children)`` of a preorder split tree: per node its code, per split node its four
    children in :data:`COMBOS` order (ValueError when malformed)."""
    code: list[int] = []
    kids: dict[int, list[int]] = {}
    todo, pos = [-1], 0
    while todo:
        if pos >= len(tree):
            raise ValueError("phase tree ends early")
        p, c = todo.pop(), int(tree[pos])
        pos += 1
        code.append(c)
        if p >= 0:
            kids[p].append(len(code) - 1)
        if len(code) > 4 * MAX_LEAVES:
            raise ValueError(f"phase tree has more than {MAX_LEAVES} leaves")
        if c >= 0:
            kids[len(code) - 1] = []
            todo.extend([len(code) - 1] * 4)
    if pos != len(tree):
        raise ValueError("phase tree has trailing entries")
    return code, kids


def replay(model: DiffModel, lo: np.ndarray, hi: np.ndarray, tree: list[int], norm: str, iters: int = ITERS,
           lr: float = LR, refine: Refine = Refine(), child_refine: Refine = Refine()) -> float:
    """The checker's bound of a recorded split tree on the box ``[lo, hi]``: the root bounded, then
    level by level every split node's four children from its recomputed layer bounds; the largest
    leaf bound (ValueError when the tree is malformed). Nothing of the search is used."""
    widths = hidden_widths(model)
    code, kids = parse(tree)
    for c in code:
        if c >= 0:
            unflat(widths, c)
    root = root_bounds(model, lo, hi, norm, iters, lr, refine)
    if code[0] < 0:
        return float(root.value[0])
    level, worst = [(0, row(root.trace, 0), root.rows[0])], 0.0
    while level:
        pb = expand(model, lo, hi, [t for _, t, _ in level], [code[i] for i, _, _ in level],
                    np.array([r for _, _, r in level]), norm, iters, lr, child_refine)
        nxt = []
        for n, (i, _, _) in enumerate(level):
            for c, ci in enumerate(kids[i]):
                if code[ci] < 0:
                    worst = max(worst, float(pb.value[4 * n + c]))
                else:
                    nxt.append((ci, row(pb.trace, 4 * n + c), pb.rows[4 * n + c]))
        level = nxt
    return worst
