"""Bounds on ``f(x) - g(x)`` over one raw-input box (DESIGN.md §5, ReluDiff/NeuroDiff style).

Two sound bounds, intersected:

* symbolic — CROWN on the *difference network* (f and g side by side on the shared input, a
  final layer ``[I, -I]``): back-substitute ``lam`` through f and ``-lam`` through g, add the two
  linear functions of x (input terms cancel), then maximise over the box. Works for any widths.
* neuron-wise — when f and g have the same layer widths and activations, NeuroDiff's symbolic
  delta: ``delta h_k`` is relaxed linearly in ``delta z_k`` (chords of ``max(dz, alpha dz)`` and
  ``min(dz, alpha dz)``), ``h^g_k`` by g's CROWN relaxation, and both are back-substituted
  together to the input; intersected layer by layer with ReluDiff's interval
  on ``delta_k = h^f_k - h^g_k``: ``delta z = W^f delta h + (W^f - W^g) h^g + (b^f - b^g)`` and
  ``act(a) - act(b)`` lies between ``alpha (a - b)`` and ``a - b`` (monotone, slopes in
  ``[alpha, 1]``), intersected with the difference of the two networks' own bounds. For
  identical networks every delta is exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tests.reference.old_linear_engine import (
    UNIT_ROUNDOFF,
    LayerBounds,
    LinearBound,
    Prepared,
    Relaxation,
    interval_affine,
    layer_bounds,
    normalised_box,
    relax,
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
        d_lo, d_hi = symbolic_delta(f, g, bf, bg, lo, hi)
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


# ----- symbolic deltas (NeuroDiff) ------------------------------------------------------------
def _delta_relax(dl: np.ndarray, du: np.ndarray, act: str, alpha: float, both_active, both_inactive) -> Relaxation:
    """Linear bounds of ``delta h`` in ``delta z`` on ``[dl, du]``; slopes rounded up."""
    n = dl.shape[0]
    one, zero = np.ones(n), np.zeros(n)
    if act == "identity":
        return Relaxation(one, zero, one, zero, zero)
    mixed = (dl < 0) & (du > 0)
    width = np.where(mixed, du - dl, 1.0)
    up = 1.0 + 8 * UNIT_ROUNDOFF
    s_u = np.where(mixed, (du - alpha * dl) / width, 0.0) * up  # chord of max(dz, alpha dz)
    s_l = np.where(mixed, (alpha * du - dl) / width, 0.0) * up  # chord of min(dz, alpha dz)
    pos, neg = dl >= 0, du <= 0
    su = np.where(pos, 1.0, np.where(neg, alpha, s_u))
    sl = np.where(pos, alpha, np.where(neg, 1.0, s_l))
    tu = np.where(mixed, -dl * (s_u - alpha), 0.0)
    tl = np.where(mixed, -du * (s_l - alpha), 0.0)
    tmag = np.where(mixed, (np.abs(dl) + np.abs(du)) * (np.abs(s_u) + np.abs(s_l) + alpha), 0.0)
    exact_slope = np.where(both_active, 1.0, alpha)
    fixed = both_active | (both_inactive & (alpha == 0.0))
    su, sl = np.where(fixed, exact_slope, su), np.where(fixed, exact_slope, sl)
    tu, tl = np.where(fixed, 0.0, tu), np.where(fixed, 0.0, tl)
    return Relaxation(su, tu, sl, tl, np.where(fixed, 0.0, tmag))


def _delta_upper(f: Prepared, g: Prepared, bg: LayerBounds, drelax: list[Relaxation], lam: np.ndarray,
                 top: int, post: bool) -> LinearBound:
    """Linear upper bound of ``lam . delta h_top`` (``post``) or ``lam . delta z_top`` in raw x."""
    m = lam.shape[0]
    Ad, Adm = np.asarray(lam, dtype=np.float64), np.abs(lam)
    Ag, Agm = np.zeros((m, f.weights[top].shape[0])), np.zeros((m, f.weights[top].shape[0]))
    c, cm = np.zeros(m), np.zeros(m)
    j = top
    if post:
        Ad, Adm, c, cm = _relax_coeffs(drelax[j], Ad, Adm, c, cm)
    while True:
        dW, db = f.weights[j] - g.weights[j], f.biases[j] - g.biases[j]
        c = c + Ad @ db + Ag @ g.biases[j]
        cm = cm + Adm @ np.abs(db) + Agm @ np.abs(g.biases[j])
        Ad, Ag = Ad @ f.weights[j], Ad @ dW + Ag @ g.weights[j]
        Adm, Agm = Adm @ f.abs_weights[j], Adm @ np.abs(dW) + Agm @ g.abs_weights[j]
        j -= 1
        if j < 0:
            break
        Ad, Adm, c, cm = _relax_coeffs(drelax[j], Ad, Adm, c, cm)
        r = relax(bg.pre_lo[j], bg.pre_hi[j], g.acts[j], g.alphas[j])
        Ag, Agm, c, cm = _relax_coeffs(r, Ag, Agm, c, cm)
    ds, dt = f.scale - g.scale, f.shift - g.shift
    c = c + Ad @ dt + Ag @ g.shift
    cm = cm + Adm @ np.abs(dt) + Agm @ np.abs(g.shift)
    A = Ad * ds + Ag * g.scale
    Am = Adm * np.abs(ds) + Agm * np.abs(g.scale)
    return LinearBound(A, c, Am, cm, 2 * (f.chain_length(top) + g.chain_length(top)))


def _relax_coeffs(r: Relaxation, A, A_mag, c, c_mag):
    pos = A >= 0
    c = c + np.sum(A * np.where(pos, r.tu, r.tl), axis=1)
    c_mag = c_mag + A_mag @ (np.abs(r.tu) + np.abs(r.tl) + r.tmag)
    return A * np.where(pos, r.su, r.sl), A_mag * np.maximum(np.abs(r.su), np.abs(r.sl)), c, c_mag


def symbolic_delta(f: Prepared, g: Prepared, bf: LayerBounds, bg: LayerBounds, lo: np.ndarray, hi: np.ndarray):
    """Per-output bounds of ``f_out - g_out`` (same structure): symbolic deltas intersected with
    ReluDiff intervals at every layer."""
    ds, dt = f.scale - g.scale, f.shift - g.shift
    a, b = ds * lo + dt, ds * hi + dt
    m0 = widen(a, np.abs(ds) * np.maximum(np.abs(lo), np.abs(hi)) + np.abs(dt), 4)
    d_lo, d_hi = np.minimum(a, b) - m0, np.maximum(a, b) + m0
    hg_lo, hg_hi = normalised_box(g, lo, hi)
    drelax: list[Relaxation] = []
    for k in range(f.depth):
        dW, db = f.weights[k] - g.weights[k], f.biases[k] - g.biases[k]
        a_lo, a_hi = interval_affine(f.weights[k], f.abs_weights[k], np.zeros_like(db), d_lo, d_hi)
        c_lo, c_hi = interval_affine(dW, np.abs(dW), db, hg_lo, hg_hi)
        zd_lo = np.maximum(_add_lo(a_lo, c_lo), _sub_lo(bf.pre_lo[k], bg.pre_hi[k]))
        zd_hi = np.minimum(_add_hi(a_hi, c_hi), _sub_hi(bf.pre_hi[k], bg.pre_lo[k]))
        if k > 0:
            w = zd_lo.size
            up = _delta_upper(f, g, bg, drelax, np.vstack([np.eye(w), -np.eye(w)]), k, post=False).maximum(lo, hi)
            zd_hi, zd_lo = np.minimum(zd_hi, up[:w]), np.maximum(zd_lo, -up[w:])
        both_active = (bf.pre_lo[k] >= 0) & (bg.pre_lo[k] >= 0)
        both_inactive = (bf.pre_hi[k] <= 0) & (bg.pre_hi[k] <= 0)
        drelax.append(_delta_relax(zd_lo, zd_hi, f.acts[k], f.alphas[k], both_active, both_inactive))
        d_lo, d_hi = _act_delta(f, bf, bg, k, zd_lo, zd_hi)
        hg_lo, hg_hi = bg.post(k, g.alphas[k])
    w = d_lo.size
    up = _delta_upper(f, g, bg, drelax, np.vstack([np.eye(w), -np.eye(w)]), f.depth - 1, post=True).maximum(lo, hi)
    return np.maximum(d_lo, -up[w:]), np.minimum(d_hi, up[:w])
