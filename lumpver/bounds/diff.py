"""Bounds on ``f(x) - g(x)`` over one raw-input box (DESIGN.md §5, ReluDiff/NeuroDiff style).

Sound bounds, intersected:

* the two networks' own output bounds (:mod:`lumpver.bounds.engine`), subtracted;
* symbolic: the *difference network*: back-substitute ``lam`` through f and ``-lam`` through g
  (:func:`lumpver.bounds.engine.back_substitute`), add the two linear bounds on the shared input
  (input terms cancel), take the maximum over the box. Any widths, any activation;
* neuron-wise, when f and g have the same layer widths and activations (dense layers) and every
  weight, bias and input-affine difference is exact in float64 (TwoSum check): NeuroDiff's
  symbolic delta. The pair is one chain over the stacked variables ``(delta h_k, h^g_k)`` with
  block layers ``[[W^f, W^f - W^g], [0, W^g]]``. By the mean value theorem
  ``delta h_k = s * delta z_k`` with ``s`` in the secant-slope range ``[s_lo, s_hi]`` of the
  activation on the hull of both networks' pre-activation bounds (registry ``slopes``: ``[alpha, 1]``
  for a leaky ReLU, the derivative range for sigmoid/tanh, one exact slope where both are stable);
  ``delta h_k`` is relaxed in ``delta z_k`` by the chords of ``max(s_lo dz, s_hi dz)`` and
  ``min(s_lo dz, s_hi dz)``, ``h^g_k`` by g's relaxation, and the same back-substitution runs on
  that chain. Layer by layer it is intersected with ReluDiff's interval
  ``delta z = W^f delta h + (W^f - W^g) h^g + (b^f - b^g)``, ``delta h`` in ``s * delta z``, and with
  the difference of the networks' own bounds. For identical networks every delta is exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lumpver.bounds.engine import (AffineStep, Chain, NetworkBounds, back_substitute, interval_affine,
                                   prepare, propagate)
from lumpver.bounds.relaxations import LinearRelaxation, get_relaxation
from lumpver.bounds.rounding import POLICY, add_hi, add_lo, exact_difference
from lumpver.ir.network import Network
from lumpver.ir.operators import DenseOperator, LinearOperator
from lumpver.specs.inputset import Box


@dataclass
class DiffBounds:
    """``lower <= f(x) - g(x) <= upper`` per output on one box, and a split score per input."""

    lower: np.ndarray
    upper: np.ndarray
    influence: np.ndarray  # per raw input dimension: |coefficient| * width, summed


@dataclass
class StackedDiagonal(LinearOperator):
    """``x -> (d1 * x, d2 * x)``: the two networks' input scalings on the shared input."""

    d1: np.ndarray
    d2: np.ndarray

    @property
    def in_features(self) -> int:  # type: ignore[override]
        return int(self.d1.size)

    @property
    def out_features(self) -> int:  # type: ignore[override]
        return 2 * int(self.d1.size)

    def forward(self, h: np.ndarray) -> np.ndarray:
        return np.hstack([np.asarray(h) * self.d1, np.asarray(h) * self.d2])

    def backward(self, a: np.ndarray) -> np.ndarray:
        n = self.d1.size
        return a[:, :n] * self.d1 + a[:, n:] * self.d2

    def abs(self) -> "StackedDiagonal":
        return StackedDiagonal(np.abs(self.d1), np.abs(self.d2))

    def dense(self) -> np.ndarray:
        return np.vstack([np.diag(self.d1), np.diag(self.d2)])


@dataclass
class NetworkPair:
    """Two networks prepared for difference bounds; ``delta`` is the stacked chain when the
    neuron-wise deltas are defined, ``delta_w`` the per-layer ``(W^f - W^g, b^f - b^g)`` steps."""

    f: Chain
    g: Chain
    delta: Optional[Chain] = None
    delta_w: Optional[list[AffineStep]] = None


def prepare_pair(fnet: Network, gnet: Network) -> NetworkPair:
    """Chains of both networks and, when the structures match and every ``W^f - W^g``, ``b^f - b^g``
    (and input affine difference) is exact in float64, the stacked delta chain."""
    f, g = prepare(fnet), prepare(gnet)
    if not _same_structure(fnet, gnet):
        return NetworkPair(f, g)
    steps, delta_w = [], []
    for lf, lg in zip(fnet.layers, gnet.layers):
        wf, wg = lf.op.dense(), lg.op.dense()
        dw, db = exact_difference(wf, wg), exact_difference(lf.bias, lg.bias)
        if dw is None or db is None:
            return NetworkPair(f, g)
        block = np.block([[wf, dw], [np.zeros_like(wg), wg]])
        steps.append(AffineStep.of(DenseOperator(block), np.concatenate([db, lg.bias])))
        delta_w.append(AffineStep.of(DenseOperator(dw), db))
    df, dg = f.input, g.input
    ds, dt = exact_difference(df.op.scale, dg.op.scale), exact_difference(df.bias, dg.bias)
    if ds is None or dt is None:
        return NetworkPair(f, g)
    d_in = AffineStep.of(StackedDiagonal(ds, dg.op.scale), np.concatenate([dt, dg.bias]))
    return NetworkPair(f, g, Chain(d_in, steps, list(f.acts), list(f.alphas)), delta_w)


def _same_structure(fnet: Network, gnet: Network) -> bool:
    """Neuron-wise deltas are defined: same widths, dense layers, same activations (and slopes)."""
    if len(fnet.layers) != len(gnet.layers):
        return False
    return all(
        lf.op.in_features == lg.op.in_features and lf.width == lg.width and lf.activation == lg.activation
        and isinstance(lf.op, DenseOperator) and isinstance(lg.op, DenseOperator)
        and (lf.activation != "leaky_relu" or lf.alpha == lg.alpha)
        for lf, lg in zip(fnet.layers, gnet.layers)
    )


def difference_bounds(pair: NetworkPair, box: Box) -> DiffBounds:
    """Sound per-output bounds of ``f - g`` on the raw box."""
    f, g = pair.f, pair.g
    bf, bg = propagate(f, box), propagate(g, box)
    m = bf.output_lower.size
    lam = np.vstack([np.eye(m), -np.eye(m)])
    lins = [back_substitute(f, rf, lam, f.depth - 1, post=True) + back_substitute(g, rg, -lam, g.depth - 1, post=True)
            for rf, rg in zip(bf.relaxation_sets(), bg.relaxation_sets())]
    up = np.minimum.reduce([lin.upper(box) for lin in lins])
    upper = np.minimum(up[:m], _sub_hi(bf.output_upper, bg.output_lower))
    lower = np.maximum(-up[m:], _sub_lo(bf.output_lower, bg.output_upper))
    if pair.delta is not None:
        d_lo, d_hi = _symbolic_delta(pair, bf, bg, box)
        upper, lower = np.minimum(upper, d_hi), np.maximum(lower, d_lo)
    influence = np.abs(lins[0].A).sum(axis=0) * (box.upper - box.lower)
    return DiffBounds(lower, upper, influence)


def _sub_hi(a_hi: np.ndarray, b_lo: np.ndarray) -> np.ndarray:
    return add_hi(a_hi, -b_lo)


def _sub_lo(a_lo: np.ndarray, b_hi: np.ndarray) -> np.ndarray:
    return add_lo(a_lo, -b_hi)


# ----- neuron-wise deltas (NeuroDiff) ----------------------------------------------------------
def _slope_range(pair: NetworkPair, bf: NetworkBounds, bg: NetworkBounds, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``delta h_k = s * delta z_k`` with ``s`` in ``[s_lo, s_hi]`` (mean value theorem on the hull
    of both networks' pre-activation bounds)."""
    lo, hi = np.minimum(bf.pre_lower[k], bg.pre_lower[k]), np.maximum(bf.pre_upper[k], bg.pre_upper[k])
    return get_relaxation(pair.f.acts[k]).slopes(lo, hi, pair.f.alphas[k])


def delta_relax(dl: np.ndarray, du: np.ndarray, s_lo: np.ndarray, s_hi: np.ndarray) -> LinearRelaxation:
    """Linear bounds of ``delta h = s * delta z`` (``s`` in ``[s_lo, s_hi]``) on ``delta z`` in ``[dl, du]``:
    chords of ``max(s_lo dz, s_hi dz)`` (above) and ``min(s_lo dz, s_hi dz)`` (below), slopes rounded up."""
    mixed = (dl < 0) & (du > 0) & (s_lo != s_hi)
    width = np.where(mixed, du - dl, 1.0)
    up = 1.0 + POLICY.slope_ulps * POLICY.unit_roundoff
    c_u = np.where(mixed, (s_hi * du - s_lo * dl) / width, 0.0) * up  # through (dl, s_lo dl)
    c_l = np.where(mixed, (s_lo * du - s_hi * dl) / width, 0.0) * up  # through (du, s_lo du)
    pos = dl >= 0
    su = np.where(mixed, c_u, np.where(pos, s_hi, s_lo))
    sl = np.where(mixed, c_l, np.where(pos, s_lo, s_hi))
    tu = np.where(mixed, -dl * (c_u - s_lo), 0.0)
    tl = np.where(mixed, -du * (c_l - s_lo), 0.0)
    tmag = np.where(mixed, (np.abs(dl) + np.abs(du)) * (np.abs(c_u) + np.abs(c_l) + np.abs(s_lo)), 0.0)
    return LinearRelaxation(sl, tl, su, tu, tmag)


def _act_delta(bf: NetworkBounds, bg: NetworkBounds, k: int, s_lo: np.ndarray, s_hi: np.ndarray,
               zd_lo: np.ndarray, zd_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``act(z^f) - act(z^g) = s * delta z`` given the delta of the pre-activations."""
    return delta_interval(s_lo, s_hi, zd_lo, zd_hi, (bf.post_lower[k], bf.post_upper[k]),
                          (bg.post_lower[k], bg.post_upper[k]))


def delta_interval(s_lo: np.ndarray, s_hi: np.ndarray, zd_lo: np.ndarray, zd_hi: np.ndarray,
                   f_post: tuple[np.ndarray, np.ndarray], g_post: tuple[np.ndarray, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``s * delta z`` (``s`` in ``[s_lo, s_hi]``, ``delta z`` in ``[zd_lo, zd_hi]``)
    intersected with the difference of the two networks' post-activation intervals (any shape)."""
    lo = np.minimum(s_lo * zd_lo, s_hi * zd_lo)
    hi = np.maximum(s_lo * zd_hi, s_hi * zd_hi)
    lo, hi = np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)  # one rounded product each
    return np.maximum(lo, _sub_lo(f_post[0], g_post[1])), np.minimum(hi, _sub_hi(f_post[1], g_post[0]))


def _delta_upper(pair: NetworkPair, relax: list[LinearRelaxation], top: int, post: bool, box: Box) -> np.ndarray:
    """Upper bounds of ``(delta, -delta)`` of layer ``top`` (post- or pre-activation) over ``box``."""
    w = pair.f.steps[top].op.out_features
    lam = np.hstack([np.eye(w), np.zeros((w, w))])
    return back_substitute(pair.delta, relax, np.vstack([lam, -lam]), top, post).upper(box)


def _symbolic_delta(pair: NetworkPair, bf: NetworkBounds, bg: NetworkBounds, box: Box):
    """Per-output bounds of ``f_out - g_out`` (same structure): symbolic deltas intersected with
    ReluDiff intervals at every layer."""
    assert pair.delta is not None and pair.delta_w is not None
    n = box.dim
    d_in = pair.delta.input
    both_in = interval_affine(d_in, box.lower, box.upper)
    d_lo, d_hi = both_in[0][:n], both_in[1][:n]
    hg_lo, hg_hi = bg.input_lower, bg.input_upper
    relax: list[LinearRelaxation] = []
    for k, fstep in enumerate(pair.f.steps):
        a_lo, a_hi = interval_affine(AffineStep(fstep.op, fstep.abs_op, np.zeros_like(fstep.bias)), d_lo, d_hi)
        c_lo, c_hi = interval_affine(pair.delta_w[k], hg_lo, hg_hi)
        zd_lo = np.maximum(add_lo(a_lo, c_lo), _sub_lo(bf.pre_lower[k], bg.pre_upper[k]))
        zd_hi = np.minimum(add_hi(a_hi, c_hi), _sub_hi(bf.pre_upper[k], bg.pre_lower[k]))
        if k > 0:
            up = _delta_upper(pair, relax, k, False, box)
            w = zd_lo.size
            zd_hi, zd_lo = np.minimum(zd_hi, up[:w]), np.maximum(zd_lo, -up[w:])
        s_lo, s_hi = _slope_range(pair, bf, bg, k)
        relax.append(delta_relax(zd_lo, zd_hi, s_lo, s_hi).concat(bg.relax[k]))
        d_lo, d_hi = _act_delta(bf, bg, k, s_lo, s_hi, zd_lo, zd_hi)
        hg_lo, hg_hi = bg.post_lower[k], bg.post_upper[k]
    up = _delta_upper(pair, relax, pair.f.depth - 1, True, box)
    w = d_lo.size
    return np.maximum(d_lo, -up[w:]), np.minimum(d_hi, up[:w])
