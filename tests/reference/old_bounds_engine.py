"""Sound bound propagation through a :class:`~lumpver.ir.network.Network` (DESIGN.md §3, §5).

One module shared by every back-end. Given a region of *raw* inputs (a :class:`Box` or a
:class:`Polytope`), :func:`compute_bounds` returns, for every layer ``k``, bounds of the
pre-activation ``z_k = W_k h_{k-1} + b_k`` and of the post-activation ``h_k = act(z_k)``:

* ``"interval"``: interval arithmetic (centre/radius form);
* ``"crown"`` (default): symbolic linear relaxations back-substituted to the input
  (DeepPoly/CROWN): ReLU/LeakyReLU use the chord above and an adaptive lower slope, sigmoid
  and tanh use chord/tangent lines on their convex/concave side and a slope-``min(σ'(l),σ'(u))``
  pair of lines across 0, identity is exact; every layer's bounds are intersected with the
  interval bounds;
* ``lp=True``: every *unstable* ReLU/LeakyReLU pre-activation is tightened further with the
  triangle-relaxation LP (scipy HiGHS); polytope inputs enter that LP as constraints. The LP
  bound is made sound from the solver's dual (weak duality with finite variable bounds), so an
  inexact LP solution can only loosen, never falsify, the bound.

Soundness for float32 models: the weights are float32 values held exactly in float64 and the
*real-arithmetic* network is what is bounded. The float64 evaluation of the bounds rounds,
so every computed bound is widened outward by ``margin_rel * magnitude + margin_abs``, where
``magnitude`` is the same computation carried out on absolute values (a bound on the sum of
the magnitudes of all terms) and ``margin_rel`` is at least 1e-9 (far above the
``depth * width * 2^-53`` forward error of the dot products). Relaxation lines of unstable
neurons get their intercepts widened by ``1e-12 * (|intercept| + |slope| * max(|l|, |u|)) + 1e-300``.
Both margins are recorded in :class:`NetworkBounds`.

Input splitting: :func:`split_box`, :func:`bisect_box` and :func:`hull_bounds` let callers
(branch and bound, on-set reduction) bound sub-boxes and combine them soundly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from lumpver.specs.inputset import Box, Polytope
from lumpver.ir.network import Layer, Network

Region = Union[Box, Polytope]

#: Minimum relative outward margin (of the magnitude of the terms) applied to every bound.
MARGIN_REL = 1e-9
#: Absolute outward margin applied to every bound.
MARGIN_ABS = 1e-12
#: Relative widening of relaxation intercepts of unstable neurons.
RELAX_REL = 1e-12
_U = 2.0**-53
METHODS = ("interval", "crown")


@dataclass
class NetworkBounds:
    """Sound bounds of every layer of a network over a region (see the module docstring).

    Index ``k`` runs over ``net.layers`` (the last entry is the output layer). Bounds already
    include the outward margin ``margin_rel * magnitude + margin_abs``.
    """

    pre_lower: list[np.ndarray]
    pre_upper: list[np.ndarray]
    post_lower: list[np.ndarray]
    post_upper: list[np.ndarray]
    input_lower: np.ndarray
    input_upper: np.ndarray
    method: str
    margin_rel: float = MARGIN_REL
    margin_abs: float = MARGIN_ABS
    lp: bool = False
    n_lp: int = 0  # number of LPs solved

    @property
    def output_lower(self) -> np.ndarray:
        return self.post_lower[-1]

    @property
    def output_upper(self) -> np.ndarray:
        return self.post_upper[-1]

    def stable_masks(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inactive, active)`` masks of layer ``k``: ``z_k <= 0`` resp. ``z_k >= 0`` on the region."""
        return self.pre_upper[k] <= 0.0, self.pre_lower[k] >= 0.0

    def n_unstable(self) -> int:
        """Hidden piecewise-linear-style unstable neurons (``l < 0 < u``) over all hidden layers."""
        return int(sum(np.sum((lo < 0) & (up > 0)) for lo, up in zip(self.pre_lower[:-1], self.pre_upper[:-1])))


# ----------------------------------------------------------------------------------------
# input region
# ----------------------------------------------------------------------------------------
def region_box(region: Region) -> Box:
    """A box containing the region (a polytope's tightest bounding box, by LP, sound)."""
    if isinstance(region, Box):
        if region.is_empty():
            raise ValueError("empty input box (lower > upper)")
        return region
    return _polytope_box(region)


def _polytope_box(poly: Polytope) -> Box:
    from scipy.optimize import linprog

    n = poly.dim
    if poly.bounding_box is not None:
        lo, hi = poly.bounding_box.lower.copy(), poly.bounding_box.upper.copy()
    else:
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    out_lo, out_hi = lo.copy(), hi.copy()
    for i in range(n):
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            c[i] = sign
            val = _lp_min_sound(linprog, c, poly.A, poly.b, lo, hi)
            if val is None:
                continue
            if sign > 0:
                out_lo[i] = max(out_lo[i], val)
            else:
                out_hi[i] = min(out_hi[i], -val)
    if not (np.all(np.isfinite(out_lo)) and np.all(np.isfinite(out_hi))):
        raise ValueError("polytope input set is unbounded: give it a bounding box")
    return Box(out_lo, out_hi)


def normalised_box(net: Network, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounds of the normalised input ``scale * x + shift`` over ``box``, with their magnitude."""
    scale, shift = net.input_affine()
    a, b = scale * box.lower, scale * box.upper
    lo, hi = np.minimum(a, b) + shift, np.maximum(a, b) + shift
    mag = np.maximum(np.abs(a), np.abs(b)) + np.abs(shift)
    return lo, hi, mag


def _widen(lo: np.ndarray, hi: np.ndarray, mag: np.ndarray, rel: float) -> tuple[np.ndarray, np.ndarray]:
    m = rel * mag + MARGIN_ABS
    return lo - m, hi + m


def _rel_margin(net: Network) -> float:
    depth = len(net.layers) + 2
    width = max([net.n_inputs] + [layer.width for layer in net.layers])
    return max(MARGIN_REL, 8.0 * depth * width * _U)


# ----------------------------------------------------------------------------------------
# activations: post bounds and linear relaxations
# ----------------------------------------------------------------------------------------
def post_bounds(layer: Layer, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of ``act(z)`` for ``z`` in ``[lo, hi]`` (extremes at the ends or at 0)."""
    act = layer.activation
    if act == "identity":
        return lo.copy(), hi.copy()
    cands = [layer.activate(lo), layer.activate(hi)]
    if act in ("relu", "leaky_relu"):
        zero = np.where((lo < 0) & (hi > 0), 0.0, lo)
        cands.append(layer.activate(zero))
        return np.minimum.reduce(cands), np.maximum.reduce(cands)
    # sigmoid / tanh: monotone; library evaluation is within a few ulps
    pad = 1e-15 * (np.abs(cands[0]) + np.abs(cands[1])) + 1e-300
    return cands[0] - pad, cands[1] + pad


def _pwl_slopes(layer: Layer) -> tuple[float, float]:
    """(negative-side slope, positive-side slope) of a piecewise-linear activation."""
    return (0.0 if layer.activation == "relu" else float(layer.alpha)), 1.0


def relaxation(layer: Layer, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Linear bounds ``al*z + bl <= act(z) <= au*z + bu`` valid for ``z`` in ``[lo, hi]``."""
    act = layer.activation
    n = lo.size
    if act == "identity":
        one, zero = np.ones(n), np.zeros(n)
        return one, zero, one.copy(), zero.copy()
    if act in ("relu", "leaky_relu"):
        al, bl, au, bu = _relax_pwl(layer, lo, hi)
    else:
        al, bl, au, bu = _relax_smooth(act, lo, hi)
    return _pad_relaxation(al, bl, au, bu, lo, hi)


def _relax_pwl(layer: Layer, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    neg, pos = _pwl_slopes(layer)
    n = lo.size
    al, au = np.full(n, pos), np.full(n, pos)
    bl, bu = np.zeros(n), np.zeros(n)
    inactive = hi <= 0
    al[inactive] = au[inactive] = neg
    uns = (lo < 0) & (hi > 0)
    if np.any(uns):
        l, u = lo[uns], hi[uns]
        chord = (pos * u - neg * l) / (u - l)
        icpt = neg * l - chord * l
        adaptive = np.where(u >= -l, pos, neg)
        if neg <= pos:  # convex: chord above, any slope in [neg, pos] below
            au[uns], bu[uns], al[uns], bl[uns] = chord, icpt, adaptive, 0.0
        else:  # concave (alpha > 1): chord below, any slope in [pos, neg] above
            al[uns], bl[uns], au[uns], bu[uns] = chord, icpt, np.where(u >= -l, pos, neg), 0.0
    return al, bl, au, bu


def _smooth(act: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and derivative of sigmoid/tanh."""
    if act == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s, s * (1.0 - s)
    t = np.tanh(z)
    return t, 1.0 - t * t


def _relax_smooth(act: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sigmoid/tanh (both convex for z <= 0, concave for z >= 0, σ' unimodal with peak at 0)."""
    fl, dl = _smooth(act, lo)
    fu, du = _smooth(act, hi)
    mid = 0.5 * (lo + hi)
    fm, dm = _smooth(act, mid)
    width = hi - lo
    narrow = width < 1e-9
    chord = np.where(narrow, 0.0, (fu - fl) / np.where(narrow, 1.0, width))
    # general fallback, valid everywhere: slope k <= min σ' on [lo, hi] makes σ - k z nondecreasing
    k = np.minimum(dl, du)
    al, bl = k.copy(), fl - k * lo
    au, bu = k.copy(), fu - k * hi
    convex = (hi <= 0) & ~narrow
    concave = (lo >= 0) & ~narrow
    # convex side: chord above, tangent at the midpoint below
    au[convex], bu[convex] = chord[convex], fl[convex] - chord[convex] * lo[convex]
    al[convex], bl[convex] = dm[convex], fm[convex] - dm[convex] * mid[convex]
    # concave side: chord below, tangent at the midpoint above
    al[concave], bl[concave] = chord[concave], fl[concave] - chord[concave] * lo[concave]
    au[concave], bu[concave] = dm[concave], fm[concave] - dm[concave] * mid[concave]
    return al, bl, au, bu


def _pad_relaxation(al, bl, au, bu, lo, hi) -> tuple[np.ndarray, ...]:
    """Widen intercepts where the lines are not exact (slopes/intercepts computed with rounding)."""
    exact = (al == au) & (bl == 0) & (bu == 0)
    span = np.maximum(np.abs(lo), np.abs(hi))
    pad_l = RELAX_REL * (np.abs(bl) + np.abs(al) * span) + 1e-300
    pad_u = RELAX_REL * (np.abs(bu) + np.abs(au) * span) + 1e-300
    bl = np.where(exact, bl, bl - pad_l)
    bu = np.where(exact, bu, bu + pad_u)
    return al, bl, au, bu


# ----------------------------------------------------------------------------------------
# interval and CROWN
# ----------------------------------------------------------------------------------------
def interval_bounds(net: Network, region: Region) -> NetworkBounds:
    """Interval-arithmetic bounds (centre/radius form), widened by the stated margin."""
    box = region_box(region)
    rel = _rel_margin(net)
    x_lo, x_hi, x_mag = normalised_box(net, box)
    x_lo, x_hi = _widen(x_lo, x_hi, x_mag, rel)
    out = NetworkBounds([], [], [], [], x_lo, x_hi, "interval", rel)
    lo, hi = x_lo, x_hi
    for layer in net.layers:
        zl, zu = _affine_interval(layer, lo, hi, rel)
        out.pre_lower.append(zl)
        out.pre_upper.append(zu)
        lo, hi = post_bounds(layer, zl, zu)
        out.post_lower.append(lo)
        out.post_upper.append(hi)
    return out


def _affine_interval(layer: Layer, lo: np.ndarray, hi: np.ndarray, rel: float) -> tuple[np.ndarray, np.ndarray]:
    mid, rad = 0.5 * (lo + hi), 0.5 * (hi - lo)
    absw = np.abs(layer.weight)
    c = layer.weight @ mid + layer.bias
    r = absw @ rad
    mag = absw @ (np.abs(mid) + rad) + np.abs(layer.bias)
    return _widen(c - r, c + r, mag, rel)


def compute_bounds(net: Network, region: Region, method: str = "crown", lp: bool = False) -> NetworkBounds:
    """Sound bounds of every layer of ``net`` over ``region`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; expected one of {METHODS}")
    ib = interval_bounds(net, region)
    if method == "interval" and not lp:
        return ib
    box = region_box(region)
    out = _crown(net, box, ib, None, backsub=(method == "crown"))
    if lp:
        from tests.reference.old_lp import LpTightener

        # second pass: CROWN with LP-tightened intermediate bounds, intersected with the first pass
        # (back-substitution is not monotone in the intermediate bounds, the intersection is)
        tighten = LpTightener(net, region)
        out = _crown(net, box, out, tighten, backsub=(method == "crown"))
        out.lp, out.n_lp, out.method = True, tighten.n_lp, method + "+lp"
    return out


def _crown(net: Network, box: Box, ib: NetworkBounds, tighten=None, backsub: bool = True) -> NetworkBounds:
    """Layer by layer: back-substituted bounds (if ``backsub``) intersected with the interval
    bounds, then optionally ``tighten(k, zl, zu, bounds_so_far, relaxations) -> (zl, zu)``."""
    rel = ib.margin_rel
    scale, shift = net.input_affine()
    out = NetworkBounds([], [], [], [], ib.input_lower, ib.input_upper, "crown" if backsub else "interval", rel)
    relax: list[tuple[np.ndarray, ...]] = []
    for k, layer in enumerate(net.layers):
        if backsub:
            zl, zu = _backsub(net, k, relax, box, scale, shift, rel)
            zl, zu = np.maximum(zl, ib.pre_lower[k]), np.minimum(zu, ib.pre_upper[k])
        elif k == 0:
            zl, zu = ib.pre_lower[0], ib.pre_upper[0]
        else:
            zl, zu = _affine_interval(layer, out.post_lower[-1], out.post_upper[-1], rel)
            zl, zu = np.maximum(zl, ib.pre_lower[k]), np.minimum(zu, ib.pre_upper[k])
        if tighten is not None:
            zl, zu = tighten(k, zl, zu, out, relax)
        zu = np.maximum(zu, zl)  # guard; both are sound so they cannot cross in exact arithmetic
        out.pre_lower.append(zl)
        out.pre_upper.append(zu)
        pl, pu = post_bounds(layer, zl, zu)
        out.post_lower.append(np.maximum(pl, ib.post_lower[k]))
        out.post_upper.append(np.minimum(pu, ib.post_upper[k]))
        relax.append(relaxation(layer, zl, zu))
    return out


def _backsub(net, k, relax, box, scale, shift, rel) -> tuple[np.ndarray, np.ndarray]:
    """Back-substitute ``z_k`` to the raw input through the relaxations of layers ``< k``."""
    layer = net.layers[k]
    lam_u, lam_l = layer.weight, layer.weight
    c_u, c_l = layer.bias.copy(), layer.bias.copy()
    mag_w = np.abs(layer.weight)
    mag_c = np.abs(layer.bias)
    for j in range(k - 1, -1, -1):
        al, bl, au, bu = relax[j]
        pu, nu = np.maximum(lam_u, 0), np.minimum(lam_u, 0)
        pl, nl = np.maximum(lam_l, 0), np.minimum(lam_l, 0)
        d_u = pu * au + nu * al
        d_l = pl * al + nl * au
        c_u = c_u + pu @ bu + nu @ bl
        c_l = c_l + pl @ bl + nl @ bu
        mag_d = mag_w * np.maximum(np.abs(al), np.abs(au))
        mag_c = mag_c + mag_w @ np.maximum(np.abs(bl), np.abs(bu))
        w, b = net.layers[j].weight, net.layers[j].bias
        c_u, c_l = c_u + d_u @ b, c_l + d_l @ b
        mag_c = mag_c + mag_d @ np.abs(b)
        lam_u, lam_l, mag_w = d_u @ w, d_l @ w, mag_d @ np.abs(w)
    # through the input ops to the raw input, then over the box
    c_u, c_l = c_u + lam_u @ shift, c_l + lam_l @ shift
    mag_c = mag_c + mag_w @ np.abs(shift)
    lam_u, lam_l, mag_w = lam_u * scale, lam_l * scale, mag_w * np.abs(scale)
    upper = c_u + np.maximum(lam_u, 0) @ box.upper + np.minimum(lam_u, 0) @ box.lower
    lower = c_l + np.maximum(lam_l, 0) @ box.lower + np.minimum(lam_l, 0) @ box.upper
    mag = mag_c + mag_w @ np.maximum(np.abs(box.lower), np.abs(box.upper))
    return _widen(lower, upper, mag, rel)


# ----------------------------------------------------------------------------------------
# LP helper (also used by bounds_lp)
# ----------------------------------------------------------------------------------------
def _lp_min_sound(linprog, c, A_ub, b_ub, lb, ub) -> float | None:
    """A sound lower bound of ``min c.v s.t. A_ub v <= b_ub, lb <= v <= ub`` from HiGHS's dual.

    Weak duality: for any ``y <= 0``, ``c.v >= y.b_ub + sum_i min_{v_i in [lb_i, ub_i]} r_i v_i``
    with ``r = c - A_ub^T y``. Needs finite bounds where ``r_i != 0``; returns None when the
    solver fails or a needed bound is infinite (the caller keeps its previous bound).
    """
    try:
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=np.column_stack([lb, ub]), method="highs")
    except ValueError:
        return None
    if res.status != 0 or getattr(res, "ineqlin", None) is None:
        return None
    y = np.minimum(np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
    r = c - (A_ub.T @ y)
    take = np.where(r > 0, lb, ub)
    need = r != 0
    if np.any(~np.isfinite(take[need])):
        return None
    val = float(y @ b_ub + r[need] @ take[need])
    span = np.where(np.isfinite(lb), np.abs(lb), 0.0) + np.where(np.isfinite(ub), np.abs(ub), 0.0)
    abs_a = abs(A_ub) if hasattr(A_ub, "multiply") else np.abs(A_ub)
    mag = float(np.abs(y) @ np.abs(b_ub) + np.abs(r) @ span + (abs_a.T @ np.abs(y)) @ span + np.abs(c) @ span)
    return val - (MARGIN_REL * mag + MARGIN_ABS)


# ----------------------------------------------------------------------------------------
# input splitting
# ----------------------------------------------------------------------------------------
def bisect_box(box: Box, dim: int | None = None) -> tuple[Box, Box, int, float]:
    """Split ``box`` in two at the midpoint of ``dim`` (default: the widest dimension).

    Returns ``(left, right, dim, at)``; ``left`` and ``right`` share the face ``x_dim = at``,
    so they cover ``box`` exactly.
    """
    if dim is None:
        dim = int(np.argmax(box.upper - box.lower))
    at = float(0.5 * (box.lower[dim] + box.upper[dim]))
    at = min(max(at, float(box.lower[dim])), float(box.upper[dim]))
    lu, rl = box.upper.copy(), box.lower.copy()
    lu[dim], rl[dim] = at, at
    return Box(box.lower.copy(), lu), Box(rl, box.upper.copy()), dim, at


def split_box(box: Box, parts: int | Sequence[int]) -> list[Box]:
    """A grid of sub-boxes covering ``box``: ``parts`` pieces per dimension (an int or per-dim).

    Neighbouring cells share their boundary value exactly, so the union is the box.
    """
    per = [int(parts)] * box.dim if np.isscalar(parts) else [int(p) for p in parts]
    if len(per) != box.dim or min(per) < 1:
        raise ValueError("parts must be positive, one per dimension")
    cuts = [np.linspace(box.lower[i], box.upper[i], per[i] + 1) for i in range(box.dim)]
    for i, c in enumerate(cuts):
        c[0], c[-1] = box.lower[i], box.upper[i]
    out = []
    for idx in np.ndindex(*per):
        lo = np.array([cuts[i][j] for i, j in enumerate(idx)])
        hi = np.array([cuts[i][j + 1] for i, j in enumerate(idx)])
        out.append(Box(lo, hi))
    return out


def hull_bounds(parts: Sequence[NetworkBounds]) -> NetworkBounds:
    """Bounds valid on the union of the parts' regions (element-wise min of lowers, max of uppers)."""
    if not parts:
        raise ValueError("no bounds to combine")

    def lo(attr):
        return [np.minimum.reduce([getattr(p, attr)[k] for p in parts]) for k in range(len(parts[0].pre_lower))]

    def hi(attr):
        return [np.maximum.reduce([getattr(p, attr)[k] for p in parts]) for k in range(len(parts[0].pre_lower))]

    first = parts[0]
    return NetworkBounds(
        lo("pre_lower"),
        hi("pre_upper"),
        lo("post_lower"),
        hi("post_upper"),
        np.minimum.reduce([p.input_lower for p in parts]),
        np.maximum.reduce([p.input_upper for p in parts]),
        first.method,
        max(p.margin_rel for p in parts),
        first.margin_abs,
        any(p.lp for p in parts),
        sum(p.n_lp for p in parts),
    )
