"""The lifted two-network quadratic model behind the SDP bound (DESIGN.md §5, SDP).

Given two networks f, g on one input region, every quantity (raw input, pre-activation,
post-activation, output) becomes a *linear form* over the lifted vector
``zeta = [x; unstable hidden activations of f; unstable hidden activations of g; 1]``.
Stable neurons are substituted exactly (stably inactive ReLU -> 0, stably active -> its
pre-activation), so only unstable neurons get a coordinate. Every valid quadratic fact about
feasible ``zeta`` is stored as a product of two linear forms ``(c1 . zeta) (c2 . zeta) >= 0``
(or ``= 0``) in a :class:`Family`; ``slack`` bounds how much a constraint that involves a
transcendental constant (sigmoid/tanh values) may be violated by float64 rounding.

The construction is deterministic: the certificate checker calls :func:`build_lift` with the
same models, region and options and gets the same constraints in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lumpver.bounds.region import region_box
from lumpver.ir.network import Network, apply_activation
from lumpver.specs.inputset import Box, Polytope

#: relative/absolute outward widening applied to every propagated bound (float safety).
BOUND_WIDEN_REL = 1e-9
BOUND_WIDEN_ABS = 1e-12
#: absolute error bound of float64 sigmoid/tanh constants (a few ulp of values in [-1, 1]).
TRANS_EPS = 1e-15


@dataclass
class Family:
    """Constraints ``(C1[j] . zeta) * (C2[j] . zeta) >= 0`` (``sign="nonneg"``) or ``= 0`` (``"free"``)."""

    name: str
    sign: str  # "nonneg" or "free"
    c1: np.ndarray  # (n, d)
    c2: np.ndarray  # (n, d)
    slack: np.ndarray  # (n,) sound bound on the violation by feasible points (0 = exact)

    @property
    def size(self) -> int:
        return int(self.c1.shape[0])


@dataclass
class NetForms:
    """Linear forms of one network: per layer pre-activations, post-activations and bounds."""

    pre: list[np.ndarray] = field(default_factory=list)  # (width, d) per layer
    post: list[np.ndarray] = field(default_factory=list)
    pre_lo: list[np.ndarray] = field(default_factory=list)
    pre_hi: list[np.ndarray] = field(default_factory=list)
    post_lo: list[np.ndarray] = field(default_factory=list)
    post_hi: list[np.ndarray] = field(default_factory=list)
    coord: list[np.ndarray] = field(default_factory=list)  # per layer: zeta index of neuron or -1
    acts: list[str] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    output: np.ndarray | None = None  # (n_out, d)


@dataclass
class Lift:
    """The lifted model: dimension, coordinate ranges, output forms and constraint families."""

    d: int
    lo: np.ndarray  # (d,) sound bounds of every zeta coordinate (1 for the last)
    hi: np.ndarray
    f: NetForms
    g: NetForms
    families: list[Family]
    n_inputs: int

    @property
    def one(self) -> int:
        return self.d - 1

    def radius(self) -> np.ndarray:
        """Per-coordinate scale ``max(|lo|, |hi|)`` (1 where that is 0)."""
        r = np.maximum(np.abs(self.lo), np.abs(self.hi))
        return np.where(r > 0, r, 1.0)

    def output_diff(self) -> np.ndarray:
        """Forms of ``f(x) - g(x)``, shape (n_out, d)."""
        return self.f.output - self.g.output


# --------------------------------------------------------------------------------------- bounds
def widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward widening of propagated bounds by a stated float margin."""
    return (lo - BOUND_WIDEN_REL * np.abs(lo) - BOUND_WIDEN_ABS, hi + BOUND_WIDEN_REL * np.abs(hi) + BOUND_WIDEN_ABS)


def slope_range(act: str, lo: np.ndarray, hi: np.ndarray, alpha: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``[a, b]`` on every secant slope of ``act`` between two points of ``[lo, hi]``."""
    if act in ("relu", "leaky_relu"):
        a = 0.0 if act == "relu" else min(alpha, 1.0)
        b = 1.0 if act == "relu" else max(alpha, 1.0)
        return np.full_like(lo, a), np.full_like(lo, b)
    if act == "identity":
        return np.ones_like(lo), np.ones_like(lo)
    deriv = _deriv(act)
    mid = np.clip(0.0, lo, hi)  # derivative of sigmoid/tanh is unimodal with its peak at 0
    b = deriv(mid) * (1 + 1e-12) + 1e-15
    a = np.minimum(deriv(lo), deriv(hi)) * (1 - 1e-12) - 1e-15
    return np.maximum(a, 0.0), b


def _deriv(act: str):
    if act == "sigmoid":
        return lambda z: (s := 1.0 / (1.0 + np.exp(-z))) * (1.0 - s)
    if act == "tanh":
        return lambda z: 1.0 - np.tanh(z) ** 2
    raise ValueError(act)


def _act(act: str, z, alpha: float = 0.0):
    return apply_activation(act, np.asarray(z, dtype=np.float64), alpha)


# --------------------------------------------------------------------------------------- lifting
def _stability(act: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per neuron: 0 unstable (needs a coordinate), 1 stably 'active' (phi = z), 2 stably zero, 3 phi = alpha z."""
    s = np.zeros(lo.shape, dtype=int)
    if act == "identity":
        s[:] = 1
    elif act in ("relu", "leaky_relu"):
        s[lo >= 0] = 1
        s[hi <= 0] = 2 if act == "relu" else 3
    return s


def build_lift(f: Network, g: Network, region: Box | Polytope, fb, gb, options: dict | None = None) -> Lift:
    """The lifted model of f and g on ``region`` given their bounds ``fb``/``gb`` (NetworkBounds-like).

    ``options``: ``pair_limit`` (int, all within-layer pairs of unstable neurons when a layer has at
    most this many, default 16), ``cross`` (bool, cross-network same-index pairs, default True),
    ``input_products`` (bool, pairwise products of input-set factors, default True).
    """
    opts = {"pair_limit": 16, "cross": True, "input_products": True}
    opts.update(options or {})
    n0 = f.n_inputs
    box = region_box(region)
    stab_f = [_layer_stab(f, fb, k) for k in range(len(f.layers))]
    stab_g = [_layer_stab(g, gb, k) for k in range(len(g.layers))]
    n_coords = n0 + sum(int(np.sum(s == 0)) for s in stab_f + stab_g)
    d = n_coords + 1
    lo = np.zeros(d)
    hi = np.zeros(d)
    lo[:n0], hi[:n0] = box.lower, box.upper
    lo[-1] = hi[-1] = 1.0
    nxt = [n0]
    ff = _forms(f, fb, stab_f, d, nxt, lo, hi)
    gf = _forms(g, gb, stab_g, d, nxt, lo, hi)
    assert nxt[0] == n_coords
    fams: list[Family] = []
    fams += _input_families(region, box, d, bool(opts["input_products"]))
    for forms in (ff, gf):
        fams += _neuron_families(forms, d)
        fams += _pair_families(forms, forms, d, "within", int(opts["pair_limit"]))
    if opts["cross"]:
        fams += _pair_families(ff, gf, d, "cross", 0)
    fams = [fam for fam in fams if fam.size]
    return Lift(d, lo, hi, ff, gf, fams, n0)


def _layer_stab(net: Network, nb, k: int) -> np.ndarray:
    layer = net.layers[k]
    if k == len(net.layers) - 1 and layer.activation == "identity":
        return np.ones(layer.width, dtype=int)
    lo, hi = widen(nb.pre_lower[k], nb.pre_upper[k])
    return _stability(layer.activation, lo, hi)


def _forms(net: Network, nb, stab: list[np.ndarray], d: int, nxt: list[int], lo: np.ndarray, hi: np.ndarray) -> NetForms:
    out = NetForms()
    n0 = net.n_inputs
    scale, shift = net.input_affine()
    h = np.zeros((n0, d))
    h[np.arange(n0), np.arange(n0)] = scale
    h[:, -1] = shift
    for k, layer in enumerate(net.layers):
        z = layer.weight @ h
        z[:, -1] += layer.bias
        zl, zh = widen(nb.pre_lower[k], nb.pre_upper[k])
        act = layer.activation
        post = np.zeros_like(z)
        coord = np.full(layer.width, -1)
        s = stab[k]
        post[s == 1] = z[s == 1]
        post[s == 3] = layer.alpha * z[s == 3]
        pl, ph = _post_bounds(act, zl, zh, layer.alpha)
        for j in np.flatnonzero(s == 0):
            c = nxt[0]
            nxt[0] += 1
            coord[j] = c
            post[j, c] = 1.0
            lo[c], hi[c] = pl[j], ph[j]
        for name, val in (("pre", z), ("post", post), ("pre_lo", zl), ("pre_hi", zh), ("post_lo", pl), ("post_hi", ph), ("coord", coord)):
            getattr(out, name).append(val)
        out.acts.append(act)
        out.alphas.append(float(layer.alpha))
        h = post
    out.output = h
    return out


def _post_bounds(act: str, zl: np.ndarray, zh: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    if act in ("sigmoid", "tanh"):
        return _act(act, zl) - 1e-15 - 1e-15 * np.abs(zl), _act(act, zh) + 1e-15 + 1e-15 * np.abs(zh)
    pl, ph = _act(act, zl, alpha), _act(act, zh, alpha)
    return np.minimum(pl, ph), np.maximum(pl, ph)


# --------------------------------------------------------------------------------------- families
def _e(d: int, idx: int, val: float = 1.0) -> np.ndarray:
    v = np.zeros(d)
    v[idx] = val
    return v


def _fam(name: str, sign: str, pairs: list[tuple[np.ndarray, np.ndarray]], d: int, slack=None) -> Family:
    if not pairs:
        return Family(name, sign, np.zeros((0, d)), np.zeros((0, d)), np.zeros(0))
    c1 = np.array([p[0] for p in pairs])
    c2 = np.array([p[1] for p in pairs])
    sl = np.zeros(len(pairs)) if slack is None else np.asarray(slack, dtype=float)
    return Family(name, sign, c1, c2, sl)


def _input_families(region, box: Box, d: int, products: bool) -> list[Family]:
    """Input set by the S-procedure: box factors ``x - lo >= 0``, ``hi - x >= 0`` (and polytope
    rows ``b - A x >= 0``), each times 1 and, with ``products``, pairwise products."""
    one = _e(d, d - 1)
    n0 = box.dim
    factors = []
    for i in range(n0):
        factors.append(_e(d, i) - box.lower[i] * one)
        factors.append(box.upper[i] * one - _e(d, i))
    if isinstance(region, Polytope):
        for a, b in zip(region.A, region.b):
            v = b * one
            v[:n0] -= a
            factors.append(v)
    lin = [(c, one) for c in factors]
    fams = [_fam("input_linear", "nonneg", lin, d)]
    if products:
        prods = [(factors[i], factors[j]) for i in range(len(factors)) for j in range(i + 1, len(factors))]
        if len(factors) > 40:  # keep only each coordinate's own interval product
            prods = [(factors[2 * i], factors[2 * i + 1]) for i in range(n0)]
        fams.append(_fam("input_products", "nonneg", prods, d))
    return fams


def _neuron_factors(forms: NetForms, k: int, j: int, d: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Nonnegative linear factors of one unstable neuron and (PWL only) the indices of its complementary pair (equality, not a product)."""
    one = _e(d, d - 1)
    z, p = forms.pre[k][j], forms.post[k][j]
    zl, zh = forms.pre_lo[k][j], forms.pre_hi[k][j]
    pl, ph = forms.post_lo[k][j], forms.post_hi[k][j]
    act = forms.acts[k]
    facs = [z - zl * one, zh * one - z]
    if act in ("relu", "leaky_relu"):
        a = 0.0 if act == "relu" else forms.alphas[k]
        s = (ph - pl) / (zh - zl)
        chord = pl * one + s * (z - zl * one) - p
        # p >= a z, p >= z and the chord imply the post-activation bounds: no duplicates
        return facs + [p - a * z, p - z, chord], (3, 4)
    return facs + [p - pl * one, ph * one - p], None


def _neuron_families(forms: NetForms, d: int) -> list[Family]:
    """Per unstable neuron: linear factors times 1, their pairwise products, the ReLU
    complementarity ``(phi - z)(phi - alpha z) = 0`` and, for sigmoid/tanh, sector constraints
    around ``l``, the midpoint and ``u`` (with slack for the float value of the activation)."""
    one = _e(d, d - 1)
    lin, prods, eqs, sectors, sect_slack = [], [], [], [], []
    for k, act in enumerate(forms.acts):
        for j in np.flatnonzero(forms.coord[k] >= 0):
            facs, comp = _neuron_factors(forms, k, j, d)
            lin += [(c, one) for c in facs]
            prods += [(facs[a], facs[b]) for a in range(len(facs)) for b in range(a + 1, len(facs)) if (a, b) != comp]
            z, p = forms.pre[k][j], forms.post[k][j]
            if act in ("relu", "leaky_relu"):
                a = 0.0 if act == "relu" else forms.alphas[k]
                eqs.append((p - z, p - a * z))
            else:
                zl, zh = forms.pre_lo[k][j], forms.pre_hi[k][j]
                al, be = slope_range(act, np.array([zl]), np.array([zh]))
                al, be = float(al[0]), float(be[0])
                span = 2 * (forms.post_hi[k][j] - forms.post_lo[k][j]) + (al + be) * (zh - zl)
                for zs in (zl, 0.5 * (zl + zh), zh):
                    ps = float(_act(act, zs))
                    dz = z - zs * one
                    dp = p - ps * one
                    sectors.append((dp - al * dz, be * dz - dp))
                    sect_slack.append(TRANS_EPS * span + TRANS_EPS**2 + 1e-300)
    return [
        _fam("neuron_linear", "nonneg", lin, d),
        _fam("neuron_products", "nonneg", prods, d),
        _fam("relu_complementarity", "free", eqs, d),
        _fam("sector", "nonneg", sectors, d, sect_slack),
    ]


def _pair_families(fa: NetForms, fb: NetForms, d: int, kind: str, pair_limit: int) -> list[Family]:
    """Incremental slope constraints ``(dphi - a dz)(b dz - dphi) >= 0`` between neuron pairs of
    the same layer index: all unstable pairs within a layer (``kind="within"``, when at most
    ``pair_limit`` are unstable) or neuron i of f with neuron i of g (``kind="cross"``); for
    ReLU also the products of the two neurons' nonnegative factors."""
    incs, prods = [], []
    for k in range(min(len(fa.acts), len(fb.acts))):
        if fa.acts[k] != fb.acts[k] or fa.acts[k] == "identity" or fa.alphas[k] != fb.alphas[k]:
            continue
        pairs = _pairs(fa, fb, k, kind, pair_limit)
        act = fa.acts[k]
        for i, j in pairs:
            lo = min(fa.pre_lo[k][i], fb.pre_lo[k][j])
            hi = max(fa.pre_hi[k][i], fb.pre_hi[k][j])
            a, b = slope_range(act, np.array([lo]), np.array([hi]), fa.alphas[k])
            dz = fa.pre[k][i] - fb.pre[k][j]
            dp = fa.post[k][i] - fb.post[k][j]
            incs.append((dp - float(a[0]) * dz, float(b[0]) * dz - dp))
            if act in ("relu", "leaky_relu"):
                al = 0.0 if act == "relu" else fa.alphas[k]
                za, pa, zb, pb = fa.pre[k][i], fa.post[k][i], fb.pre[k][j], fb.post[k][j]
                prods.append((pa - al * za, pb - zb) if al <= 1 else (pa - za, pb - al * zb))
                prods.append((pa - za, pb - al * zb) if al <= 1 else (pa - al * za, pb - zb))
    return [_fam(f"{kind}_incremental", "nonneg", incs, d), _fam(f"{kind}_products", "nonneg", prods, d)]


def _pairs(fa: NetForms, fb: NetForms, k: int, kind: str, pair_limit: int) -> list[tuple[int, int]]:
    ua = np.flatnonzero(fa.coord[k] >= 0)
    if kind == "within":
        if len(ua) > pair_limit:
            return []
        return [(int(ua[a]), int(ua[b])) for a in range(len(ua)) for b in range(a + 1, len(ua))]
    n = min(len(fa.coord[k]), len(fb.coord[k]))
    return [(i, i) for i in range(n) if fa.coord[k][i] >= 0 or fb.coord[k][i] >= 0]
