"""The bound engine: sound layer bounds and linear bounds of a network over a region (DESIGN.md §3, §5).

One engine walks the layers of a :class:`Chain` (a network as affine steps behind the operator
interface ``op.forward/backward/abs()``, :mod:`lumpver.ir.operators`) and asks the relaxation
registry (:mod:`lumpver.bounds.relaxations`) for each activation. Over a region of *raw* inputs
(a :class:`Box` or a :class:`Polytope`, bounded by :func:`lumpver.bounds.region.region_box`),
:func:`compute_bounds` returns for every layer bounds of ``z_k = op_k(h_{k-1}) + b_k`` and of
``h_k = act(z_k)``:

* ``"interval"``: interval arithmetic (centre/radius form);
* ``"crown"`` (default): interval bounds intersected, for every layer after the first, with the
  back-substituted linear relaxations (CROWN/DeepPoly; adaptive lower slopes for ReLU-like
  activations, chord/tangent lines for sigmoid/tanh). CROWN is not monotone in the intermediate
  bounds, so three schedules (:data:`SCHEDULES`) are run and intersected;
* ``lp=True``: a second pass in which unstable ReLU/LeakyReLU pre-activations are tightened by
  the triangle-relaxation LP (:mod:`lumpver.bounds.lp`), intersected with the first pass.

:func:`back_substitute` (the one back-substitution) returns a :class:`LinearBound`
``lam . y <= A x + c`` in the raw input, with the magnitudes needed for rounding; linear bounds
of two networks add on their shared input (:mod:`lumpver.bounds.diff`), and
:meth:`LinearBound.upper` turns one into a number over a box. Rounding: :mod:`lumpver.bounds.rounding`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from lumpver.bounds.lp import LpTightener
from lumpver.bounds.region import Region, region_box
from lumpver.bounds.relaxations import LinearRelaxation, get_relaxation
from lumpver.bounds.rounding import POLICY, rounding_policy
from lumpver.ir.conv import DiagonalOperator
from lumpver.ir.network import Network
from lumpver.ir.operators import LinearOperator
from lumpver.specs.inputset import Box

METHODS = ("interval", "crown")


# ----------------------------------------------------------------------------------------
# the network as affine steps
# ----------------------------------------------------------------------------------------
@dataclass
class AffineStep:
    """``z = op(h) + bias``, with ``|op|`` kept for magnitude bounds."""

    op: LinearOperator
    abs_op: LinearOperator
    bias: np.ndarray

    @staticmethod
    def of(op: LinearOperator, bias: np.ndarray) -> "AffineStep":
        return AffineStep(op, op.abs(), np.asarray(bias, dtype=np.float64))


@dataclass
class Chain:
    """Raw input ``x`` -> ``input`` step (the input ops) -> ``steps`` with activations."""

    input: AffineStep
    steps: list[AffineStep]
    acts: list[str]
    alphas: list[float]

    @property
    def depth(self) -> int:
        return len(self.steps)

    def chain_length(self, top: int) -> int:
        """Accumulation length bound of a back-substitution from step ``top`` to the raw input: every
        dot product along the way (``lam`` against the top bias, each operator, the input shift)
        plus the additions between them."""
        return sum(self.steps[j].op.in_features + 4 for j in range(top + 1)) + self.steps[top].op.out_features + 8


def prepare(net: Network) -> Chain:
    """The chain of ``net`` (computes ``|op|`` once; reuse it for many regions)."""
    for layer in net.layers:
        get_relaxation(layer.activation)  # ValueError for an activation without a relaxation
    scale, shift = net.input_affine()
    return Chain(AffineStep.of(DiagonalOperator((scale.size,), scale), shift), [AffineStep.of(layer.op, layer.bias) for layer in net.layers],
                 [layer.activation for layer in net.layers], [float(layer.alpha) for layer in net.layers])


# ----------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------
@dataclass
class NetworkBounds:
    """Sound bounds of every layer of a network over a region (see the module docstring).

    Index ``k`` runs over ``net.layers`` (the last entry is the output layer); ``input_*`` are
    the bounds of the normalised input; ``relax[k]`` is layer ``k``'s linear relaxation on its
    bounds, ``relax_sets`` every schedule's relaxations (empty for a hull of several regions).
    Rounding: :attr:`rounding`.
    """

    pre_lower: list[np.ndarray]
    pre_upper: list[np.ndarray]
    post_lower: list[np.ndarray]
    post_upper: list[np.ndarray]
    input_lower: np.ndarray
    input_upper: np.ndarray
    method: str
    lp: bool = False
    n_lp: int = 0  # number of LPs solved
    relax: list[LinearRelaxation] = field(default_factory=list, repr=False)
    relax_sets: list[list[LinearRelaxation]] = field(default_factory=list, repr=False)

    def relaxation_sets(self) -> list[list[LinearRelaxation]]:
        """Every valid set of per-layer relaxations (a linear bound may use any of them)."""
        return self.relax_sets or ([self.relax] if self.relax else [])

    @property
    def output_lower(self) -> np.ndarray:
        return self.post_lower[-1]

    @property
    def output_upper(self) -> np.ndarray:
        return self.post_upper[-1]

    @property
    def rounding(self) -> dict:
        """The rounding policy the bounds were computed with (JSON)."""
        return rounding_policy()

    def n_unstable(self) -> int:
        """Hidden neurons with ``l < 0 < u`` over all hidden layers."""
        return int(sum(np.sum((lo < 0) & (up > 0)) for lo, up in zip(self.pre_lower[:-1], self.pre_upper[:-1])))


@dataclass
class LinearBound:
    """``objective(x) <= A x + c`` for raw inputs ``x`` of the region, with magnitude bounds
    ``A_mag >= |A|``-like and ``c_mag`` of the computation and its accumulation length ``chain``."""

    A: np.ndarray  # (m, n_inputs)
    c: np.ndarray  # (m,)
    A_mag: np.ndarray
    c_mag: np.ndarray
    chain: int

    def __add__(self, other: "LinearBound") -> "LinearBound":
        return LinearBound(self.A + other.A, self.c + other.c, self.A_mag + other.A_mag,
                           self.c_mag + other.c_mag, max(self.chain, other.chain) + 2)

    def upper(self, box: Box) -> np.ndarray:
        """Sound upper bound of ``A x + c`` over ``box``."""
        centre, radius = (box.lower + box.upper) / 2.0, (box.upper - box.lower) / 2.0
        val = self.A @ centre + np.abs(self.A) @ radius + self.c
        mag = self.A_mag @ (np.abs(centre) + radius) + self.c_mag + np.abs(val)
        return val + POLICY.margin(mag, self.chain + box.dim + 4)


# ----------------------------------------------------------------------------------------
# back-substitution (the only implementation)
# ----------------------------------------------------------------------------------------
def apply_relaxation(r: LinearRelaxation, A, A_mag, c, c_mag):
    """Replace coefficients on ``h = act(z)`` by coefficients on ``z`` (upper-bound direction)."""
    pos, neg = np.maximum(A, 0.0), np.minimum(A, 0.0)
    c = c + pos @ r.tu + neg @ r.tl
    c_mag = c_mag + A_mag @ (np.maximum(np.abs(r.tu), np.abs(r.tl)) + r.tmag)
    return pos * r.su + neg * r.sl, A_mag * np.maximum(np.abs(r.su), np.abs(r.sl)), c, c_mag


def back_substitute(chain: Chain, relax: Sequence[LinearRelaxation], lam: np.ndarray, top: int,
                    post: bool) -> LinearBound:
    """Linear upper bound of ``lam . h_top`` (``post``) or ``lam . z_top`` in the raw input,
    through the relaxations ``relax[j]`` of the steps ``j < top`` (and ``top`` if ``post``)."""
    A = np.array(lam, dtype=np.float64, ndmin=2)
    A_mag, c, c_mag = np.abs(A), np.zeros(A.shape[0]), np.zeros(A.shape[0])
    if post:
        A, A_mag, c, c_mag = apply_relaxation(relax[top], A, A_mag, c, c_mag)
    for j in range(top, -1, -1):
        if j < top:
            A, A_mag, c, c_mag = apply_relaxation(relax[j], A, A_mag, c, c_mag)
        A, A_mag, c, c_mag = _through_step(chain.steps[j], A, A_mag, c, c_mag)
    A, A_mag, c, c_mag = _through_step(chain.input, A, A_mag, c, c_mag)
    return LinearBound(A, c, A_mag, c_mag, chain.chain_length(top))


def _through_step(step: AffineStep, A, A_mag, c, c_mag):
    c = c + A @ step.bias
    c_mag = c_mag + A_mag @ np.abs(step.bias)
    return step.op.backward(A), step.abs_op.backward(A_mag), c, c_mag


def objective_bounds(chain: Chain, nb: NetworkBounds, lam: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Sound ``(lower, upper)`` of ``lam . y`` (network outputs) over ``box`` (``nb`` on that box)."""
    if not nb.relaxation_sets():
        raise ValueError("bounds without relaxations (a hull of several regions) give no linear bound")
    lam = np.array(lam, dtype=np.float64, ndmin=2)
    both = np.vstack([lam, -lam])
    up = np.minimum.reduce([back_substitute(chain, relax, both, chain.depth - 1, post=True).upper(box)
                            for relax in nb.relaxation_sets()])
    m = lam.shape[0]
    return -up[m:], up[:m]


# ----------------------------------------------------------------------------------------
# layer bounds
# ----------------------------------------------------------------------------------------
def interval_affine(step: AffineStep, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound ``[lo', hi']`` of ``op(h) + bias`` for ``h`` in ``[lo, hi]`` (interval arithmetic)."""
    centre, radius = (lo + hi) / 2.0, (hi - lo) / 2.0
    mid = step.op.forward(centre[None, :])[0] + step.bias
    rad = step.abs_op.forward(radius[None, :])[0]
    mag = step.abs_op.forward((np.abs(centre) + radius)[None, :])[0] + np.abs(step.bias)
    return POLICY.outward(mid - rad, mid + rad, mag + np.abs(mid) + rad, step.op.in_features + 4)


def input_bounds(chain: Chain, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the normalised input ``scale * x + shift`` over the raw box."""
    return interval_affine(chain.input, box.lower, box.upper)


def interval_bounds(net: Network, region: Region) -> NetworkBounds:
    """Interval-arithmetic bounds of every layer."""
    return compute_bounds(net, region, "interval")


def compute_bounds(net: Network, region: Region, method: str = "crown", lp: bool = False,
                   chain: Optional[Chain] = None) -> NetworkBounds:
    """Sound bounds of every layer of ``net`` over ``region`` (see the module docstring).

    ``chain`` (from :func:`prepare`) may be passed to reuse ``|op|`` across many regions.
    """
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; expected one of {METHODS}")
    box = region_box(region)
    chain = chain if chain is not None else prepare(net)
    out = propagate(chain, box, method)
    if lp:
        tighten = LpTightener(net, region, box)
        out = _pass(chain, box, method, prior=out, tighten=tighten)
        out.lp, out.n_lp, out.method = True, tighten.n_lp, method + "+lp"
    return out


#: CROWN is not monotone in the intermediate bounds (a tighter bound can flip an adaptive lower
#: slope), so ``propagate`` runs these schedules and intersects: ``tight`` (interval from the
#: layer's own tightened bounds, back-substitution for every neuron), ``plain`` (back-substitution
#: intersected with a separate interval pass), ``unstable`` (back-substitution only for unstable
#: neurons). Each is sound; the intersection is never looser than any of them.
SCHEDULES = ("tight", "plain", "unstable")


def propagate(chain: Chain, box: Box, method: str = "crown") -> NetworkBounds:
    """Bounds of every layer of ``chain`` over the raw ``box``: for ``crown`` the intersection of
    the :data:`SCHEDULES`; ``relax_sets`` holds each schedule's relaxations (all valid)."""
    if method != "crown":
        return _pass(chain, box, method)
    ib = _pass(chain, box, "interval")
    runs = [_pass(chain, box, method), _pass(chain, box, method, interval=ib), _pass(chain, box, method, unstable_only=True)]
    out = _intersect(runs)
    out.relax_sets = [r.relax for r in runs]
    return out


def _intersect(runs: Sequence[NetworkBounds]) -> NetworkBounds:
    n = len(runs[0].pre_lower)

    def lo(attr: str) -> list[np.ndarray]:
        return [np.maximum.reduce([getattr(p, attr)[k] for p in runs]) for k in range(n)]

    def hi(attr: str) -> list[np.ndarray]:
        return [np.minimum.reduce([getattr(p, attr)[k] for p in runs]) for k in range(n)]

    first = runs[0]
    return NetworkBounds(lo("pre_lower"), hi("pre_upper"), lo("post_lower"), hi("post_upper"), first.input_lower,
                         first.input_upper, first.method, relax=first.relax)


def _pass(chain: Chain, box: Box, method: str, prior: Optional[NetworkBounds] = None,
          tighten: Optional[LpTightener] = None, interval: Optional[NetworkBounds] = None,
          unstable_only: bool = False) -> NetworkBounds:
    """One schedule, layer by layer: interval bounds (from the previous layer's bounds, or taken
    from ``interval``), intersected with back-substitution (``crown``; only for unstable neurons if
    ``unstable_only``) and with ``prior``, then optionally ``tighten(k, zl, zu, bounds_so_far)``."""
    x_lo, x_hi = input_bounds(chain, box)
    out = NetworkBounds([], [], [], [], x_lo, x_hi, method)
    lo, hi = x_lo, x_hi
    for k, step in enumerate(chain.steps):
        if interval is None:
            zl, zu = interval_affine(step, lo, hi)
        else:
            zl, zu = interval.pre_lower[k], interval.pre_upper[k]
        if method == "crown" and k > 0:
            zl, zu = _crown_rows(chain, out.relax, k, box, zl, zu, unstable_only)
        if prior is not None:
            zl, zu = np.maximum(zl, prior.pre_lower[k]), np.minimum(zu, prior.pre_upper[k])
        if tighten is not None:
            zl, zu = tighten(k, zl, zu, out)
        zu = np.maximum(zu, zl)  # guard; both are sound so they cannot cross in exact arithmetic
        rel = get_relaxation(chain.acts[k])
        lo, hi = rel.interval(zl, zu, chain.alphas[k])
        for ref in (prior, interval):
            if ref is not None:
                lo, hi = np.maximum(lo, ref.post_lower[k]), np.minimum(hi, ref.post_upper[k])
        out.pre_lower.append(zl)
        out.pre_upper.append(zu)
        out.post_lower.append(lo)
        out.post_upper.append(hi)
        out.relax.append(rel.linear(zl, zu, chain.alphas[k]))
    return out


def _crown_rows(chain: Chain, relax: Sequence[LinearRelaxation], k: int, box: Box, zl: np.ndarray, zu: np.ndarray,
                unstable_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """``[zl, zu]`` intersected with the back-substituted bounds of layer ``k`` (selected rows)."""
    rows = np.flatnonzero((zl < 0) & (zu > 0)) if unstable_only else np.arange(zl.size)
    if rows.size == 0:
        return zl, zu
    sel = np.zeros((rows.size, zl.size))
    sel[np.arange(rows.size), rows] = 1.0
    up = back_substitute(chain, relax, np.vstack([sel, -sel]), k, post=False).upper(box)
    zl, zu = zl.copy(), zu.copy()
    zl[rows], zu[rows] = np.maximum(zl[rows], -up[rows.size:]), np.minimum(zu[rows], up[:rows.size])
    return zl, zu


def hull_bounds(parts: Sequence[NetworkBounds]) -> NetworkBounds:
    """Bounds valid on the union of the parts' regions (element-wise min of lowers, max of uppers)."""
    if not parts:
        raise ValueError("no bounds to combine")
    n = len(parts[0].pre_lower)

    def lo(attr: str) -> list[np.ndarray]:
        return [np.minimum.reduce([getattr(p, attr)[k] for p in parts]) for k in range(n)]

    def hi(attr: str) -> list[np.ndarray]:
        return [np.maximum.reduce([getattr(p, attr)[k] for p in parts]) for k in range(n)]

    return NetworkBounds(lo("pre_lower"), hi("pre_upper"), lo("post_lower"), hi("post_upper"),
                         np.minimum.reduce([p.input_lower for p in parts]),
                         np.maximum.reduce([p.input_upper for p in parts]),
                         parts[0].method, any(p.lp for p in parts), sum(p.n_lp for p in parts))
