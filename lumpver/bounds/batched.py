"""Batched CROWN with optimisable lower slopes: the hot loop of branch and bound (DESIGN.md §3, §5, §11).

Many sub-problems are bounded in one numpy pass: sub-problem ``b`` is a raw input box
``[lo[b], hi[b]]`` plus pre-activation bounds ``zl[k][b], zu[k][b]`` of every layer (a ReLU split
``z_j >= 0`` / ``z_j <= 0`` is the clamp ``zl_j = max(zl_j, 0)`` / ``zu_j = min(zu_j, 0)``; bounds
of a child are intersected with its parent's, so clamps persist). Coefficient arrays have shape
``(batch, rows, features)`` and pass through ``op.backward`` reshaped to ``(batch*rows, features)``
(the operator interface of :mod:`lumpver.ir.operators`, so convolutions plug in unchanged).

* :func:`layer_bounds` recomputes the pre-activation bounds of layers ``start..`` (interval for
  layer 0; for later layers interval bounds from the previous layer first, then one CROWN schedule
  with the registry's adaptive slopes only for each sub-problem's rows the interval leaves unstable,
  padded to the batch's largest count), intersected with the given ones;
* :func:`objective_upper` returns a sound upper bound of ``lam . y`` per sub-problem and row, with
  the lower-bound slopes of unstable ReLU-like neurons taken from ``alpha`` (any value in
  ``[neg, 1]`` is sound), plus the gradient of the bound with respect to ``alpha`` (by hand:
  reverse mode through the back-substitution) and the coefficients on every layer (branching);
* :func:`optimise_alpha` runs projected Adam on ``alpha`` (alpha-CROWN) and keeps the best bound.

Soundness: relaxations come from :mod:`lumpver.bounds.relaxations`; every returned bound carries
the outward margin of :mod:`lumpver.bounds.rounding` (magnitudes carried next to the values, as in
:func:`lumpver.bounds.engine.back_substitute`). A bound with ``zl > zu`` somewhere marks an empty
sub-problem (:func:`infeasible`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lumpver.bounds.engine import AffineStep, Chain
from lumpver.bounds.relaxations import LinearRelaxation, get_relaxation
from lumpver.bounds.rounding import POLICY
from lumpver.bounds.smooth_alpha import SMOOTH_LR, RowLines, SmoothParams
from lumpver.ir.conv import AvgPoolOperator, ConvOperator
from lumpver.ir.operators import DenseOperator

#: activations whose lower slope on an unstable neuron is a free parameter (value: its negative slope)
ALPHA_ACTS = ("relu", "leaky_relu")
#: other activations: neurons whose known bounds are at most this wide are not re-bounded by CROWN (their
#: relaxation is already nearly exact; a 6x200 sigmoid net: most rows skipped below the root)
SMOOTH_NARROW = 0.05


def neg_slope(chain: Chain, k: int) -> float:
    return 0.0 if chain.acts[k] == "relu" else float(chain.alphas[k])


def relax_batch(chain: Chain, k: int, zl: np.ndarray, zu: np.ndarray) -> LinearRelaxation:
    """Layer ``k``'s registry relaxation (the tight variant) for a batch ``(B, n)`` of bounds (fields of shape ``(B, n)``)."""
    r = get_relaxation(chain.acts[k]).tight_linear(zl.reshape(-1), np.maximum(zu, zl).reshape(-1), chain.alphas[k])
    return LinearRelaxation(*(f.reshape(zl.shape) for f in r.fields()))


def alpha_free(chain: Chain, k: int, zl: np.ndarray, zu: np.ndarray) -> np.ndarray:
    """Mask ``(B, n)`` of the neurons of layer ``k`` whose lower slope is a free parameter."""
    if chain.acts[k] not in ALPHA_ACTS or neg_slope(chain, k) > 1.0:
        return np.zeros(zl.shape, dtype=bool)
    return (zl < 0) & (zu > 0)


def recompute_pays(chain: Chain) -> bool:
    """Whether a ReLU-split child should re-bound the layers after its split (:func:`layer_bounds` from
    ``start``) or keep its parent's bounds (the split reaches the objective through beta, beta-CROWN).
    Not for a chain with a convolution: its rows are re-bounded through every convolution below (oval21
    cifar_base_kw, 30 s, same load: 2843 vs 499 sub-problems bounded on img5303, 2967 vs 711 on img6638,
    with the same share closed, bench/RESULTS.md)."""
    ops = [o for step in chain.steps for o in getattr(step.op, "ops", [step.op])]
    return not any(isinstance(o, (ConvOperator, AvgPoolOperator)) for o in ops)


def infeasible(zl: list[np.ndarray], zu: list[np.ndarray]) -> np.ndarray:
    """Sub-problems with crossing bounds somewhere: empty (the bounds are sound on the sub-problem)."""
    out = np.zeros(zl[0].shape[0], dtype=bool)
    for lo, hi in zip(zl, zu):
        out |= np.any(lo > hi, axis=1)
    return out


# ----------------------------------------------------------------------------------------
# back-substitution over a batch
# ----------------------------------------------------------------------------------------
@dataclass
class BatchBound:
    """Upper bounds ``upper[b, i]`` of row ``i`` of sub-problem ``b`` and the linear function in x."""

    upper: np.ndarray  # (B, m)
    A_x: np.ndarray  # (B, m, n_in): upper <= A_x . x + const over the box
    coeffs: list[np.ndarray]  # coefficient on h_j, (B, m, n_j), j = 0..top (recorded if asked)
    grads: list[Optional[np.ndarray]]  # d upper / d alpha_j, (B, m, n_j) or None


def _rows(a: np.ndarray, fn) -> np.ndarray:
    B, m, n = a.shape
    out = fn(a.reshape(B * m, n))
    return out.reshape(B, m, out.shape[-1])


def backsub(chain: Chain, rel: list[LinearRelaxation], lam: np.ndarray, top: int, post: bool, lo: np.ndarray,
            hi: np.ndarray, alpha: Optional[list[Optional[np.ndarray]]] = None, free: Optional[list[np.ndarray]] = None,
            record: bool = False, grad: bool = False, phase: Optional[list[np.ndarray]] = None,
            beta: Optional[list[np.ndarray]] = None, mag: Optional[tuple] = None,
            rows: Optional[list[Optional[RowLines]]] = None, cut: Optional[list[np.ndarray]] = None) -> BatchBound:
    """Sound upper bound of ``lam[b] . h_top`` (``post``) or ``lam[b] . z_top`` over box ``b``.

    ``lam``: (B, m, n_top). ``alpha[j]`` (B, m, n_j) replaces the lower slope where ``free[j]``.
    Split constraints (beta-CROWN): ``phase[j]`` (B, n_j) is +1 where ``z_j >= 0`` is imposed, -1 where
    ``z_j <= 0`` is, 0 elsewhere; ``beta[j] >= 0`` (B, m, n_j) adds ``beta * phase * z_j`` to the bounded
    function, which is ``>= 0`` on the sub-problem, so the result still bounds ``lam . y`` there.
    ``cut[j]`` (B, n_j): split points other than 0 (sigmoid/tanh, GenBaB): the constraint is then
    ``phase * (z_j - cut_j) >= 0`` and the added term ``beta * phase * (z_j - cut_j)``, its constant summed
    apart and covered by its own length in the margin (:func:`_cut_shift`).
    ``mag``: :func:`magnitudes` of the same call (it depends on neither ``alpha`` nor ``beta``: reused
    across the steps of :func:`optimise_alpha`), computed here when None.
    ``rows[j]``: per-row lines of a sigmoid/tanh layer (:mod:`lumpver.bounds.smooth_alpha`) replacing ``rel[j]``;
    then ``mag`` must come from ``SmoothParams.envelope(rel)`` (it bounds every such line's magnitudes).
    """
    B, m, _ = lam.shape
    A = np.asarray(lam, dtype=np.float64)  # never written in place
    c = np.zeros((B, m))
    saved: list = [None] * (top + 1)  # (a before relaxation j, slopes and intercepts used)
    for j in range(top, -1, -1):
        if post or j < top:
            r, row = rel[j], None if rows is None else rows[j]
            sl = r.sl[:, None, :]
            if row is not None:
                sl = row.sl
            elif alpha is not None and alpha[j] is not None:
                sl = np.where(free[j][:, None, :], alpha[j], sl)
            su, tu, tl = (r.su[:, None, :], r.tu[:, None, :], r.tl[:, None, :]) if row is None else (row.su, row.tu, row.tl)
            saved[j] = (A, sl, su, tu, tl)
            if row is None:
                c, A = _relax_step(A, c, r, sl)
            else:
                pos, neg = np.maximum(A, 0.0), np.minimum(A, 0.0)
                c = c + row.intercepts(pos, neg)
                A = pos * su + neg * sl
            if beta is not None:
                A = A + beta[j] * phase[j][:, None, :]
        step = chain.steps[j]
        c = c + A @ step.bias
        A = _rows(A, step.op.backward)
    step = chain.input
    c = c + A @ step.bias
    A_x = _rows(A, step.op.backward)
    centre, radius = 0.5 * (lo + hi), 0.5 * (hi - lo)
    val = np.einsum("bmn,bn->bm", A_x, centre) + np.einsum("bmn,bn->bm", np.abs(A_x), radius) + c
    V, Vz = magnitudes(chain, rel, top, post, lo, hi, free) if mag is None else mag
    mag = np.einsum("bmn,bn->bm", np.abs(lam), V) + np.abs(val)
    if beta is not None:
        mag = mag + sum(np.einsum("bmn,bn->bm", beta[j] * np.abs(phase[j])[:, None, :], Vz[j]) for j in range(top + 1))
    length = chain.chain_length(top) + 2 * (top + 1) + lo.shape[1] + 4  # + alpha/beta steps
    if beta is not None and cut is not None:
        shift, smag, slen = _cut_shift(beta, phase, cut, top)
        val, mag, length = val + shift, mag + smag + np.abs(val + shift), length + slen
    upper = val + POLICY.margin(mag, length)
    coeffs = [s[0] if s is not None else None for s in saved] if record else []
    grads = _alpha_grads(chain, saved, A_x, centre, radius, top, free, phase, rows, cut) if grad else []
    return BatchBound(upper, A_x, coeffs, grads)


def _cut_shift(beta: list[np.ndarray], phase: list[np.ndarray], cut: list[np.ndarray],
               top: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The constant ``-sum_j beta_j . (phase_j cut_j)`` of the split terms at non-zero points ``(B, m)``, the
    magnitude of its terms and the length of its accumulation (one product and one sum per layer; the caller
    adds it to the back-substitution's, whose margin then covers both)."""
    shift, smag, length = 0.0, 0.0, 0
    for j in range(top + 1):
        pc = phase[j] * cut[j]  # exact: phase is +1, -1 or 0
        shift = shift - np.einsum("bmn,bn->bm", beta[j], pc)
        smag = smag + np.einsum("bmn,bn->bm", beta[j], np.abs(pc))
        length += pc.shape[1] + 3
    return shift, smag, length


def _relax_step(A: np.ndarray, c: np.ndarray, r: LinearRelaxation, sl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``c + pos . tu + neg . tl`` and ``pos * su + neg * sl`` (``pos``, ``neg`` the parts of ``A`` of each
    sign), bit-identical to that formula with fewer passes over ``A``: ``A * where(A > 0, su, sl)`` (one of
    the two products is an exact zero), and the ``neg . tl`` sum skipped when ``tl`` is zero (ReLU-like)."""
    pos = np.maximum(A, 0.0)
    c = c + np.einsum("bmn,bn->bm", pos, r.tu)
    if np.any(r.tl):
        c = c + np.einsum("bmn,bn->bm", np.minimum(A, 0.0), r.tl)
    S = np.where(A > 0, r.su[:, None, :], sl)
    return c, np.multiply(A, S, out=S)


def magnitudes(chain: Chain, rel: list[LinearRelaxation], top: int, post: bool, lo: np.ndarray, hi: np.ndarray,
               free: Optional[list[np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """``V`` (B, n_top) with ``|lam| . V`` bounding the magnitude of every term of the back-substitution
    (what :func:`lumpver.bounds.engine.back_substitute` carries as ``A_mag``, ``c_mag``), computed
    forward on one vector per sub-problem instead of per row: ``V`` goes through ``|op|`` plus
    ``|bias|`` and each relaxation's largest slope magnitude (1 for a free slope) plus intercepts.
    Also ``Vz[j]``, the magnitude of ``z_j`` (for the split terms ``beta * z_j``)."""
    centre, radius = 0.5 * (lo + hi), 0.5 * (hi - lo)
    V = chain.input.abs_op.forward(np.abs(centre) + radius) + np.abs(chain.input.bias)
    Vz = []
    for j in range(top + 1):
        V = chain.steps[j].abs_op.forward(V) + np.abs(chain.steps[j].bias)
        Vz.append(V)
        if post or j < top:
            r = rel[j]
            s = np.maximum(np.abs(r.su), np.abs(r.sl))
            if free is not None and free[j] is not None:
                s = np.where(free[j], np.maximum(s, 1.0), s)
            V = s * V + np.maximum(np.abs(r.tu), np.abs(r.tl)) + r.tmag
    return V, Vz


def _alpha_grads(chain: Chain, saved: list, A_x: np.ndarray, centre: np.ndarray, radius: np.ndarray, top: int,
                 free: Optional[list[np.ndarray]], phase: Optional[list[np.ndarray]],
                 rows: Optional[list[Optional[RowLines]]] = None, cut: Optional[list[np.ndarray]] = None) -> list:
    """``d upper / d alpha_j`` by reverse mode through :func:`backsub` (margins ignored: any alpha is
    sound), followed (when ``phase`` is given) by ``d upper / d beta_j`` for every layer (with ``cut``: of
    ``beta * phase * (z_j - cut_j)``)."""
    G = centre[:, None, :] + np.sign(A_x) * radius[:, None, :]  # d upper / d A_x
    G = G * chain.input.op.backward(np.ones((1, A_x.shape[2])))[0] + chain.input.bias  # diagonal input step
    grads: list[Optional[np.ndarray]] = [None] * (top + 1)
    bgrads: list[Optional[np.ndarray]] = [None] * (top + 1)
    for j in range(top + 1):
        step = chain.steps[j]
        Gz = _rows(G, step.op.forward) + step.bias  # d upper / d (coefficient on z_j)
        if saved[j] is None:
            break
        if phase is not None:
            bgrads[j] = (Gz if cut is None else Gz - cut[j][:, None, :]) * phase[j][:, None, :]
        a, sl, su, tu, tl = saved[j]
        if free is not None and free[j] is not None and chain.acts[j] in ALPHA_ACTS:
            grads[j] = np.where(free[j][:, None, :], Gz * np.minimum(a, 0.0), 0.0)
        elif rows is not None and rows[j] is not None:
            grads[j] = rows[j].grad(Gz, a)
        if j == top:
            break
        G = np.where(a > 0, Gz * su + tu, Gz * sl + tl)  # d upper / d (coefficient on h_j)
    return grads + (bgrads if phase is not None else [])


# ----------------------------------------------------------------------------------------
# layer bounds
# ----------------------------------------------------------------------------------------
def interval_step(step, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound ``[lo', hi']`` of ``op(h) + bias`` for a batch of boxes ``(B, n)`` (as
    :func:`lumpver.bounds.engine.interval_affine`, one box per row)."""
    centre, radius = 0.5 * (lo + hi), 0.5 * (hi - lo)
    mid = step.op.forward(centre) + step.bias
    rad = step.abs_op.forward(radius)
    mag = step.abs_op.forward(np.abs(centre) + radius) + np.abs(step.bias)
    return POLICY.outward(mid - rad, mid + rad, mag + np.abs(mid) + rad, step.op.in_features + 4)


def first_layer(chain: Chain, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``z_0`` over the boxes ``(B, n_in)`` (interval arithmetic, exact up to rounding)."""
    return interval_step(chain.steps[0], *interval_step(chain.input, lo, hi))


def layer_bounds(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
                 start: int = 0, output: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pre-activation bounds of every layer over the batch, recomputed from layer ``start`` on and
    intersected with ``zl, zu`` (valid bounds of the same sub-problems: parents', split clamps).
    ``output=False``: an affine (identity) last layer gets interval bounds only, for callers that use its
    bounds for nothing else than emptiness (its relaxation does not depend on them)."""
    zl, zu = [a.copy() for a in zl], [a.copy() for a in zu]
    fields: list[np.ndarray] = []  # layer j's relaxation as one array (5, B, n_j): sliced once per group
    nz: list[Optional[np.ndarray]] = []  # layer j's neurons with a nonzero line (ReLU layers)
    for k in range(start, chain.depth):
        if k == 0:
            nl, nu = first_layer(chain, lo, hi)
            zl[0], zu[0] = np.maximum(zl[0], nl), np.minimum(zu[0], nu)
            continue
        il, iu = interval_step(chain.steps[k], *get_relaxation(chain.acts[k - 1]).interval(
            zl[k - 1], np.maximum(zu[k - 1], zl[k - 1]), chain.alphas[k - 1]))
        zl[k], zu[k] = np.maximum(zl[k], il), np.minimum(zu[k], iu)  # CROWN rows only where interval leaves doubt
        want = (zl[k] < 0) & (zu[k] > 0) if chain.acts[k] in ALPHA_ACTS else ~(zu[k] - zl[k] <= SMOOTH_NARROW)
        if not np.any(want) or (not output and k == chain.depth - 1 and chain.acts[k] == "identity"):
            continue
        for j in range(len(fields), k):  # layer j's bounds are final from here on
            r = relax_batch(chain, j, zl[j], zu[j])
            # a ReLU with both slopes 0 is inactive: its intercepts are 0 too (relaxations.py)
            nz.append((r.su != 0) | (r.sl != 0) if chain.acts[j] == "relu" else None)
            fields.append(np.stack(r.fields()))
        for sub in _groups(np.sum(want, axis=1)):
            _crown_rows(*_drop_dead(chain, fields, nz, k, sub), k, lo[sub], hi[sub], want[sub], zl[k], zu[k], sub)
    return zl, zu


def _groups(counts: np.ndarray, size: int = 48) -> list[np.ndarray]:
    """Sub-problems with rows to bound, sorted by their row count and cut into groups of about ``size``:
    each group is padded to its own largest count, not the batch's (ACAS Xu: 2-3x fewer padded rows)."""
    idx = np.flatnonzero(counts)
    idx = idx[np.argsort(counts[idx], kind="stable")]
    n = max(1, round(len(idx) / size))
    return [g for g in np.array_split(idx, n) if len(g)]


@dataclass
class _Pruned(Chain):
    """A dense chain with some neurons removed; margins are those of the full chain (``full``)."""

    full: Optional[Chain] = None

    def chain_length(self, top: int) -> int:
        assert self.full is not None
        return self.full.chain_length(top)


def _drop_dead(chain: Chain, fields: list[np.ndarray], nz: list[Optional[np.ndarray]], k: int,
               sub: np.ndarray) -> tuple[Chain, list[LinearRelaxation]]:
    """The dense chain up to layer ``k`` without the ReLU neurons of layers ``< k`` that are inactive (both
    lines zero: ``nz`` false) on every sub-problem ``sub``, and the relaxations (``fields``: the stacked
    :class:`LinearRelaxation` fields of each layer) of ``sub``: a back-substitution multiplies the dropped
    columns by exact zeros, so dropping them leaves the same sums with fewer terms (same margins; ACAS Xu
    groups: 40-50 % of the columns)."""
    live = [None if m is None or len(sub) < 16 else np.flatnonzero(np.any(m[sub], axis=0)) for m in nz]
    # small groups (the LP finisher's pairs) and groups with few dead neurons: the bookkeeping would cost more
    if sum(f.shape[2] if a is None else len(a) for f, a in zip(fields, live)) > 0.9 * sum(f.shape[2] for f in fields) \
            or not all(isinstance(chain.steps[j].op, DenseOperator) for j in range(k + 1)):
        return chain, [LinearRelaxation(*f[:, sub]) for f in fields]
    live = [np.arange(f.shape[2]) if a is None else a for f, a in zip(fields, live)]
    steps = []
    for j in range(k + 1):
        ix = np.ix_(live[j] if j < k else np.arange(chain.steps[j].bias.size),
                    live[j - 1] if j > 0 else np.arange(chain.steps[0].op.in_features))
        st = chain.steps[j]
        steps.append(AffineStep(DenseOperator(st.op.weight[ix]), DenseOperator(st.abs_op.weight[ix]),  # type: ignore
                                st.bias[ix[0][:, 0]]))
    sub_chain = _Pruned(chain.input, steps, chain.acts[:k + 1], chain.alphas[:k + 1], chain)
    return sub_chain, [LinearRelaxation(*f[:, sub[:, None], a]) for f, a in zip(fields, live)]


def unit_rows(want: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objective rows ``+e_i`` then ``-e_i`` for the neurons ``want`` (B, n) of each sub-problem, padded to the
    largest count ``R``: neuron indices ``order`` (B, R), valid where ``ok``, and ``lam`` (B, 2R, n)."""
    R = int(np.max(np.sum(want, axis=1), initial=0))
    order = np.argsort(~want, axis=1, kind="stable")[:, :R]
    ok = np.take_along_axis(want, order, axis=1)
    B, n = want.shape
    lam = np.zeros((B, 2 * R, n))
    b_idx, r_idx = np.arange(B)[:, None], np.arange(R)[None, :]
    lam[b_idx, r_idx, order] = 1.0
    lam[b_idx, R + r_idx, order] = -1.0
    return order, ok, lam


def _crown_rows(chain: Chain, rel: list[LinearRelaxation], k: int, lo: np.ndarray, hi: np.ndarray,
                want: np.ndarray, zl_k: np.ndarray, zu_k: np.ndarray, sub: np.ndarray) -> None:
    """CROWN bounds of the neurons ``want`` (G, n) of layer ``k`` of the sub-problems ``sub``, intersected
    into ``zl_k[sub], zu_k[sub]`` in place (each sub-problem's rows, padded to the group's largest count)."""
    order, ok, lam = unit_rows(want)
    R = order.shape[1]
    up = backsub(chain, rel, lam, k, False, lo, hi).upper
    rows = sub[:, None]
    zu_k[rows, order] = np.minimum(zu_k[rows, order], np.where(ok, up[:, :R], np.inf))
    zl_k[rows, order] = np.maximum(zl_k[rows, order], np.where(ok, -up[:, R:], -np.inf))


# ----------------------------------------------------------------------------------------
# optimised objective bound (alpha-CROWN)
# ----------------------------------------------------------------------------------------
@dataclass
class Objective:
    """Best bound found for ``lam . y + offset`` per sub-problem and row, and what produced it."""

    upper: np.ndarray  # (B, m), sound
    A_x: np.ndarray  # (B, m, n_in)
    coeffs: list[np.ndarray]  # (B, m, n_j)
    alpha: list[Optional[np.ndarray]]  # (B, m, n_j), the slopes of the best bound
    beta: Optional[list[np.ndarray]] = None  # (B, m, n_j), the split multipliers of the best bound


def init_alpha(chain: Chain, zl: list[np.ndarray], zu: list[np.ndarray], m: int) -> list[Optional[np.ndarray]]:
    """The registry's adaptive lower slopes, one copy per row."""
    out: list[Optional[np.ndarray]] = []
    for k in range(chain.depth):
        if chain.acts[k] not in ALPHA_ACTS:
            out.append(None)
            continue
        r = relax_batch(chain, k, zl[k], zu[k])
        out.append(np.repeat(r.sl[:, None, :], m, axis=1))
    return out


class Adam:
    """Projected Adam on a list of parameter arrays (None entries skipped), box ``[low_j, high]``; ``lr``
    one step size or one per entry."""

    def __init__(self, params: list, lows: list[float], high: float, lr: float | list[float]) -> None:
        self.params, self.lows, self.high, self.t = params, lows, high, 0
        self.lr = lr if isinstance(lr, list) else [lr] * len(params)
        self.m = [None if p is None else np.zeros_like(p) for p in params]
        self.v = [None if p is None else np.zeros_like(p) for p in params]

    def step(self, grads: list) -> None:
        self.t += 1
        for j, g in enumerate(grads):
            if g is None or self.params[j] is None:
                continue
            self.m[j] = 0.9 * self.m[j] + 0.1 * g
            self.v[j] = 0.999 * self.v[j] + 0.001 * g * g
            mh, vh = self.m[j] / (1 - 0.9 ** self.t), self.v[j] / (1 - 0.999 ** self.t)
            self.params[j] = np.clip(self.params[j] - self.lr[j] * mh / (np.sqrt(vh) + 1e-8), self.lows[j], self.high)


def _keep(best: list, new: list, better: np.ndarray) -> list:
    return [b if n is None else np.where(better[:, :, None], n, b) for b, n in zip(best, new)]


def optimise_alpha(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
                   lam: np.ndarray, offset: np.ndarray, alpha: Optional[list[Optional[np.ndarray]]] = None,
                   iters: int = 10, lr: float = 0.2, phase: Optional[list[np.ndarray]] = None,
                   beta: Optional[list[np.ndarray]] = None, stop_closed: bool = True,
                   cut: Optional[list[np.ndarray]] = None) -> Objective:
    """Minimise the sound upper bound of ``lam[b] . y + offset`` over the lower slopes (and, with
    ``phase``, the split multipliers ``beta >= 0``, beta-CROWN) by projected Adam; every iterate is
    sound, the best per (sub-problem, row) is kept; the steps stop early once every sub-problem has a
    row bounded below 0 (closed; not with ``stop_closed=False``). ``offset`` (m,) is added with its own margin.
    ``cut``: the split points of ``phase`` (None: all at 0; :func:`backsub`).
    Sigmoid/tanh layers: their tangent points are optimised too (:mod:`lumpver.bounds.smooth_alpha`, step
    size ``SMOOTH_LR * lr``); a cold start first bounds with the registry's lines, so the result is never
    looser than those."""
    top = chain.depth - 1
    rel = [relax_batch(chain, k, zl[k], zu[k]) for k in range(chain.depth)]
    free = [alpha_free(chain, k, zl[k], zu[k]) for k in range(chain.depth)]
    m = lam.shape[1]
    smooth = SmoothParams(chain.acts, zl, zu, rel)  # sigmoid/tanh tangent points (lumpver.bounds.smooth_alpha)
    cold = alpha is None and smooth.any()  # first iterate: the registry's lines (never looser than them)
    alpha = init_alpha(chain, zl, zu, m) if alpha is None else [None if a is None else a.copy() for a in alpha]
    alpha = smooth.fill(alpha, m)
    opt_a = Adam(alpha, [0.0 if s is not None else neg_slope(chain, k) for k, s in enumerate(smooth.layers)], 1.0,
                 [lr if s is None else SMOOTH_LR * lr for s in smooth.layers])
    opt_b = None
    if phase is not None:
        beta = [np.zeros((lo.shape[0], m, p.shape[1])) for p in phase] if beta is None else [b.copy() for b in beta]
        opt_b = Adam(beta, [0.0] * chain.depth, np.inf, 0.5 * lr)
    best: Optional[Objective] = None
    mag = magnitudes(chain, smooth.envelope(rel), top, True, lo, hi, free)
    for it in range(iters + 1 + cold):
        base, step = cold and it == 0, it - cold  # ``base``: the registry's lines, no step after it
        params = smooth.strip(opt_a.params) if base else opt_a.params
        bb = backsub(chain, rel, lam, top, True, lo, hi, params, free, record=True, grad=0 <= step < iters,
                     phase=phase, beta=None if opt_b is None else opt_b.params, mag=mag,
                     rows=None if base else smooth.rows(opt_a.params), cut=cut)
        up = bb.upper + offset + POLICY.margin(np.abs(bb.upper) + np.abs(offset), 2)
        if best is None:
            best = Objective(up, bb.A_x, list(bb.coeffs), list(opt_a.params), None if opt_b is None else list(opt_b.params))
        else:
            better = up < best.upper
            best.upper = np.where(better, up, best.upper)
            best.A_x = np.where(better[:, :, None], bb.A_x, best.A_x)
            best.coeffs = _keep(best.coeffs, bb.coeffs, better)
            best.alpha = _keep(best.alpha, opt_a.params, better)
            if opt_b is not None:
                best.beta = _keep(best.beta, opt_b.params, better)
        if it == iters + cold or (stop_closed and np.all(np.min(best.upper, axis=1) < 0)):  # every sub-problem closed: done
            break
        if base:
            continue
        opt_a.step(bb.grads[: chain.depth])
        if opt_b is not None:
            opt_b.step(bb.grads[chain.depth:])
    assert best is not None
    return best
