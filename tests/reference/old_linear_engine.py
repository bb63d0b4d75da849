"""Linear-relaxation engine with sound float64 rounding margins (DESIGN.md §3, §5).

One network at a time: pre-activation bounds per layer (interval propagation intersected
with CROWN/DeepPoly back-substitution) and linear upper bounds ``Lam . y <= A x + c`` on any
linear objective of a layer, expressed in the *raw* input ``x`` (the input ops are folded in).
Two networks are combined by adding their linear bounds on the shared input (the "difference
network" of ReluDiff/NeuroDiff); see :mod:`lumpver.bounds.diff`.

Soundness. Bounds are on the real-arithmetic networks (float32 weights held exactly in
float64). Every float64 computation is widened outward: next to each linear bound we carry a
magnitude bound ``M`` (the same back-substitution done on absolute values), and a concrete
bound is widened by ``2 gamma_K M`` with ``gamma_K = K u / (1 - K u)``, ``u = 2^-53``, ``K`` the
length of the longest accumulation chain (Higham, *Accuracy and Stability*, §3.1 and §3.5).
Relaxation slopes are rounded up so that the relaxation itself stays valid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumpver.ir.network import Network

UNIT_ROUNDOFF = 2.0**-53
TINY = 1e-300  # absolute term covering underflow; only added when a magnitude is nonzero
SUPPORTED = ("identity", "relu", "leaky_relu")
ROUNDING_NOTE = (
    "bounds hold for real arithmetic on the stored weights; every float64 step is widened by "
    "2*gamma_K*M (gamma_K = K*2^-53/(1-K*2^-53), M = magnitude bound, Higham §3.1)"
)


def gamma(k: int) -> float:
    """Higham's ``gamma_k``: relative error bound of a length-``k`` float64 accumulation."""
    ku = k * UNIT_ROUNDOFF
    return ku / (1.0 - ku)


def widen(value: np.ndarray, mag: np.ndarray, k: int) -> np.ndarray:
    """Outward margin for float64 quantities computed with magnitude bound ``mag``."""
    return 2.0 * gamma(k) * mag + np.where(mag > 0, TINY, 0.0)


@dataclass
class Prepared:
    """A network as arrays: raw input -> ``scale * x + shift`` -> layers."""

    scale: np.ndarray
    shift: np.ndarray
    weights: list[np.ndarray]
    abs_weights: list[np.ndarray]
    biases: list[np.ndarray]
    acts: list[str]
    alphas: list[float]

    @property
    def depth(self) -> int:
        return len(self.weights)

    def chain_length(self, top: int) -> int:
        """Accumulation length bound for a back-substitution from layer ``top`` to the input."""
        return sum(self.weights[j].shape[1] + 4 for j in range(top + 1)) + 4


def prepare(net: Network) -> Prepared:
    """Arrays of ``net``; raises ValueError for activations without a linear relaxation here."""
    for k, layer in enumerate(net.layers):
        if layer.activation not in SUPPORTED:
            raise ValueError(f"layer {k}: activation {layer.activation!r} is not supported by the interval back-end")
        if layer.activation == "leaky_relu" and not 0.0 <= layer.alpha <= 1.0:
            raise ValueError(f"layer {k}: leaky_relu slope {layer.alpha} outside [0, 1]")
    scale, shift = net.input_affine()
    return Prepared(
        scale=scale,
        shift=shift,
        weights=[layer.weight for layer in net.layers],
        abs_weights=[np.abs(layer.weight) for layer in net.layers],
        biases=[layer.bias for layer in net.layers],
        acts=[layer.activation for layer in net.layers],
        alphas=[0.0 if layer.activation == "relu" else (1.0 if layer.activation == "identity" else layer.alpha)
                for layer in net.layers],
    )


@dataclass
class LayerBounds:
    """Sound bounds of one network on one box: ``pre_lo[k] <= z_k <= pre_hi[k]``."""

    x_lo: np.ndarray  # normalised input bounds
    x_hi: np.ndarray
    pre_lo: list[np.ndarray]
    pre_hi: list[np.ndarray]

    def post(self, k: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of ``h_k = act(z_k)`` (monotone activation with negative slope ``alpha``)."""
        lo, hi = self.pre_lo[k], self.pre_hi[k]
        return _act_lo(lo, alpha), _act_hi(hi, alpha)


def _act_lo(z: np.ndarray, alpha: float) -> np.ndarray:
    neg = np.nextafter(alpha * z, -np.inf) if alpha not in (0.0, 1.0) else alpha * z
    return np.where(z >= 0, z, neg)


def _act_hi(z: np.ndarray, alpha: float) -> np.ndarray:
    neg = np.nextafter(alpha * z, np.inf) if alpha not in (0.0, 1.0) else alpha * z
    return np.where(z >= 0, z, neg)


@dataclass
class Relaxation:
    """Per-neuron linear bounds ``sl z + tl <= act(z) <= su z + tu`` on ``[lo, hi]``."""

    su: np.ndarray
    tu: np.ndarray
    sl: np.ndarray
    tl: np.ndarray
    tmag: np.ndarray  # magnitude bound of the intercepts' computation


def relax(lo: np.ndarray, hi: np.ndarray, act: str, alpha: float) -> Relaxation:
    """CROWN relaxation of a (leaky) ReLU or identity on ``[lo, hi]``; slopes rounded up."""
    n = lo.shape[0]
    one, zero = np.ones(n), np.zeros(n)
    if act == "identity":
        return Relaxation(one, zero, one, zero, zero)
    active, inactive = lo >= 0, hi <= 0
    unstable = ~(active | inactive)
    width = np.where(unstable, hi - lo, 1.0)
    s_up = np.where(unstable, (hi - alpha * lo) / width, 0.0) * (1.0 + 8 * UNIT_ROUNDOFF)
    su = np.where(active, 1.0, np.where(inactive, alpha, s_up))
    # upper line s (z - lo) + alpha lo: intercept -lo (s - alpha), computed with rounding
    tu = np.where(unstable, -lo * (s_up - alpha), 0.0)
    tmag = np.where(unstable, np.abs(lo) * (np.abs(s_up) + alpha), 0.0)
    slope_low = np.where(hi > -lo, 1.0, alpha)  # CROWN adaptive lower slope
    sl = np.where(active, 1.0, np.where(inactive, alpha, slope_low))
    return Relaxation(su, tu, sl, zero, tmag)


@dataclass
class LinearBound:
    """``objective(x) <= A x + c`` on the box, with magnitude bounds for the rounding margin."""

    A: np.ndarray  # (m, n_inputs) over raw x
    c: np.ndarray  # (m,)
    A_mag: np.ndarray
    c_mag: np.ndarray
    chain: int

    def __add__(self, other: "LinearBound") -> "LinearBound":
        return LinearBound(self.A + other.A, self.c + other.c, self.A_mag + other.A_mag,
                           self.c_mag + other.c_mag, max(self.chain, other.chain) + 2)

    def maximum(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Sound upper bound of ``A x + c`` over the raw-input box ``[lo, hi]``."""
        centre, radius = (lo + hi) / 2.0, (hi - lo) / 2.0
        val = self.A @ centre + np.abs(self.A) @ radius + self.c
        mag = self.A_mag @ (np.abs(centre) + radius) + self.c_mag + np.abs(val)
        k = self.chain + lo.shape[0] + 4
        return val + widen(val, mag, k)


def upper_linear(p: Prepared, bounds: LayerBounds, lam: np.ndarray, top: int, post: bool) -> LinearBound:
    """Linear upper bound of ``lam . h_top`` (``post``) or ``lam . z_top`` in the raw input."""
    A = np.asarray(lam, dtype=np.float64)
    A_mag = np.abs(A)
    c = np.zeros(A.shape[0])
    c_mag = np.zeros(A.shape[0])
    j = top
    if post:
        A, A_mag, c, c_mag = _relax_step(p, bounds, j, A, A_mag, c, c_mag)
    while True:
        c = c + A @ p.biases[j]
        c_mag = c_mag + A_mag @ np.abs(p.biases[j])
        A = A @ p.weights[j]
        A_mag = A_mag @ p.abs_weights[j]
        j -= 1
        if j < 0:
            break
        A, A_mag, c, c_mag = _relax_step(p, bounds, j, A, A_mag, c, c_mag)
    c = c + A @ p.shift
    c_mag = c_mag + A_mag @ np.abs(p.shift)
    return LinearBound(A * p.scale, c, A_mag * np.abs(p.scale), c_mag, p.chain_length(top))


def _relax_step(p: Prepared, bounds: LayerBounds, j: int, A, A_mag, c, c_mag):
    """Replace coefficients on ``h_j`` by coefficients on ``z_j`` (upper-bound direction)."""
    r = relax(bounds.pre_lo[j], bounds.pre_hi[j], p.acts[j], p.alphas[j])
    pos = A >= 0
    slope = np.where(pos, r.su, r.sl)
    icpt = np.where(pos, r.tu, r.tl)
    c = c + np.sum(A * icpt, axis=1)
    c_mag = c_mag + A_mag @ (np.abs(r.tu) + r.tmag)
    return A * slope, A_mag * np.maximum(np.abs(r.su), np.abs(r.sl)), c, c_mag


def interval_affine(W: np.ndarray, absW: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Sound ``[lo', hi']`` of ``W h + b`` for ``h`` in ``[lo, hi]`` (interval arithmetic)."""
    centre, radius = (lo + hi) / 2.0, (hi - lo) / 2.0
    mid = W @ centre + b
    rad = absW @ radius
    mag = absW @ (np.abs(centre) + radius) + np.abs(b)
    m = widen(mid, mag + np.abs(mid) + rad, W.shape[1] + 4)
    return mid - rad - m, mid + rad + m


def normalised_box(p: Prepared, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``scale * x + shift`` over the raw box."""
    a, b = p.scale * lo + p.shift, p.scale * hi + p.shift
    nlo, nhi = np.minimum(a, b), np.maximum(a, b)
    m = widen(nlo, np.abs(p.scale) * np.maximum(np.abs(lo), np.abs(hi)) + np.abs(p.shift), 4)
    return nlo - m, nhi + m


def layer_bounds(p: Prepared, lo: np.ndarray, hi: np.ndarray, crown: bool = True) -> LayerBounds:
    """Pre-activation bounds of every layer on the raw box ``[lo, hi]``: interval arithmetic
    intersected with CROWN back-substitution (only for layers whose activation needs it)."""
    x_lo, x_hi = normalised_box(p, lo, hi)
    b = LayerBounds(x_lo, x_hi, [], [])
    h_lo, h_hi = x_lo, x_hi
    for k in range(p.depth):
        z_lo, z_hi = interval_affine(p.weights[k], p.abs_weights[k], p.biases[k], h_lo, h_hi)
        if crown and k > 0:
            unstable = np.nonzero((z_lo < 0) & (z_hi > 0))[0]
            if unstable.size:
                eye = np.zeros((unstable.size, z_lo.size))
                eye[np.arange(unstable.size), unstable] = 1.0
                b.pre_lo.append(z_lo)
                b.pre_hi.append(z_hi)  # placeholders; upper_linear only reads layers < k
                up = upper_linear(p, b, np.vstack([eye, -eye]), k, post=False).maximum(lo, hi)
                b.pre_lo.pop()
                b.pre_hi.pop()
                m = unstable.size
                z_hi = z_hi.copy()
                z_lo = z_lo.copy()
                z_hi[unstable] = np.minimum(z_hi[unstable], up[:m])
                z_lo[unstable] = np.maximum(z_lo[unstable], -up[m:])
        b.pre_lo.append(z_lo)
        b.pre_hi.append(z_hi)
        h_lo, h_hi = b.post(k, p.alphas[k])
    return b


def objective_bounds(p: Prepared, b: LayerBounds, lam: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Sound ``(lower, upper)`` of ``lam . y`` (network outputs) over the raw box."""
    top = p.depth - 1
    up = upper_linear(p, b, np.vstack([lam, -lam]), top, post=True).maximum(lo, hi)
    m = lam.shape[0]
    return -up[m:], up[:m]
