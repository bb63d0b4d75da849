"""Bounds on ``f(x) - g(x)`` over one raw-input box (DESIGN.md §5, ReluDiff/NeuroDiff style).

Two sound bounds, intersected:

* symbolic — CROWN on the *difference network* (f and g side by side on the shared input, a
  final layer ``[I, -I]``): back-substitute ``lam`` through f and ``-lam`` through g, add the two
  linear functions of x (input terms cancel), then maximise over the box. Works for any widths.
* neuron-wise — when f and g have the same layer widths and activations, ReluDiff's interval
  on ``delta_k = h^f_k - h^g_k``: ``delta z = W^f delta h + (W^f - W^g) h^g + (b^f - b^g)`` and
  ``act(a) - act(b)`` lies between ``alpha (a - b)`` and ``a - b`` (monotone, slopes in
  ``[alpha, 1]``), intersected with the difference of the two networks' own bounds. For
  identical networks every delta is exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifiers.interval_engine import (
    LayerBounds,
    Prepared,
    interval_affine,
    layer_bounds,
    normalised_box,
    upper_linear,
    widen,
)


@dataclass
class DiffBounds:
    """``lower <= f(x) - g(x) <= upper`` per output on one box, and a split score per input."""

    lower: np.ndarray
    upper: np.ndarray
    influence: np.ndarray  # per raw input dimension: |coefficient| * width, summed


def same_structure(f: Prepared, g: Prepared) -> bool:
    """True when neuron-wise deltas are defined (same depth, widths and activations)."""
    return f.depth == g.depth and all(
        wf.shape == wg.shape and af == ag and pf == pg
        for wf, wg, af, ag, pf, pg in zip(f.weights, g.weights, f.acts, g.acts, f.alphas, g.alphas)
    )


def difference_bounds(f: Prepared, g: Prepared, lo: np.ndarray, hi: np.ndarray) -> DiffBounds:
    """Sound per-output bounds of ``f - g`` on the raw box ``[lo, hi]``."""
    bf, bg = layer_bounds(f, lo, hi), layer_bounds(g, lo, hi)
    m = f.weights[-1].shape[0]
    eye = np.eye(m)
    lam = np.vstack([eye, -eye])
    lin = upper_linear(f, bf, lam, f.depth - 1, post=True) + upper_linear(g, bg, -lam, g.depth - 1, post=True)
    up = lin.maximum(lo, hi)
    upper, lower = up[:m], -up[m:]
    # the two networks' own output bounds give a (looser) fallback
    of_lo, of_hi = bf.post(f.depth - 1, f.alphas[-1])
    og_lo, og_hi = bg.post(g.depth - 1, g.alphas[-1])
    upper = np.minimum(upper, _sub_hi(of_hi, og_lo))
    lower = np.maximum(lower, _sub_lo(of_lo, og_hi))
    if same_structure(f, g):
        d_lo, d_hi = relu_diff(f, g, bf, bg, lo, hi)
        upper, lower = np.minimum(upper, d_hi), np.maximum(lower, d_lo)
    influence = np.abs(lin.A).sum(axis=0) * (hi - lo)
    return DiffBounds(lower, upper, influence)


def _sub_hi(a_hi: np.ndarray, b_lo: np.ndarray) -> np.ndarray:
    d = a_hi - b_lo
    return d + widen(d, np.abs(a_hi) + np.abs(b_lo), 2)


def _sub_lo(a_lo: np.ndarray, b_hi: np.ndarray) -> np.ndarray:
    d = a_lo - b_hi
    return d - widen(d, np.abs(a_lo) + np.abs(b_hi), 2)


def relu_diff(f: Prepared, g: Prepared, bf: LayerBounds, bg: LayerBounds, lo: np.ndarray, hi: np.ndarray):
    """ReluDiff interval on ``f_out - g_out`` (same structure only)."""
    ds, dt = f.scale - g.scale, f.shift - g.shift
    if np.any(ds) or np.any(dt):
        a, b = ds * lo + dt, ds * hi + dt
        m = widen(a, np.abs(ds) * np.maximum(np.abs(lo), np.abs(hi)) + np.abs(dt), 4)
        d_lo, d_hi = np.minimum(a, b) - m, np.maximum(a, b) + m
    else:
        d_lo = d_hi = np.zeros_like(lo)
    hg_lo, hg_hi = normalised_box(g, lo, hi)
    for k in range(f.depth):
        dW, db = f.weights[k] - g.weights[k], f.biases[k] - g.biases[k]
        a_lo, a_hi = interval_affine(f.weights[k], f.abs_weights[k], np.zeros_like(db), d_lo, d_hi)
        c_lo, c_hi = interval_affine(dW, np.abs(dW), db, hg_lo, hg_hi)
        zd_lo, zd_hi = _add_lo(a_lo, c_lo), _add_hi(a_hi, c_hi)
        zd_lo = np.maximum(zd_lo, _sub_lo(bf.pre_lo[k], bg.pre_hi[k]))
        zd_hi = np.minimum(zd_hi, _sub_hi(bf.pre_hi[k], bg.pre_lo[k]))
        d_lo, d_hi = _act_delta(f, bf, bg, k, zd_lo, zd_hi)
        hg_lo, hg_hi = bg.post(k, g.alphas[k])
    return d_lo, d_hi


def _add_lo(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a + b
    return s - widen(s, np.abs(a) + np.abs(b), 2)


def _add_hi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a + b
    return s + widen(s, np.abs(a) + np.abs(b), 2)


def _act_delta(f: Prepared, bf: LayerBounds, bg: LayerBounds, k: int, zd_lo: np.ndarray, zd_hi: np.ndarray):
    """Interval of ``act(z^f) - act(z^g)`` given the delta of the pre-activations."""
    alpha = f.alphas[k]
    if f.acts[k] == "identity":
        return zd_lo, zd_hi
    lo = np.where(zd_lo < 0, zd_lo, alpha * zd_lo)
    hi = np.where(zd_hi > 0, zd_hi, alpha * zd_hi)
    if alpha not in (0.0, 1.0):  # alpha * z is rounded
        lo, hi = np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)
    both_active = (bf.pre_lo[k] >= 0) & (bg.pre_lo[k] >= 0)
    both_inactive = (bf.pre_hi[k] <= 0) & (bg.pre_hi[k] <= 0)
    lo = np.where(both_active, zd_lo, lo)
    hi = np.where(both_active, zd_hi, hi)
    if alpha == 0.0:
        lo = np.where(both_inactive, 0.0, lo)
        hi = np.where(both_inactive, 0.0, hi)
    pf_lo, pf_hi = bf.post(k, alpha)
    pg_lo, pg_hi = bg.post(k, alpha)
    return np.maximum(lo, _sub_lo(pf_lo, pg_hi)), np.minimum(hi, _sub_hi(pf_hi, pg_lo))
