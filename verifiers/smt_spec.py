"""What the SMT back-end decides, as linear rows over the stacked outputs, and its bounds (DESIGN.md §5).

A :class:`Spec` is a disjunction of conjunctions of rows ``c . y + c0 <= 0`` (``< 0`` when
strict) over ``y = [f(x); g(x)]`` (or ``y = f(x)`` for a property). The claim holds on X iff
no x in X satisfies any disjunct. ``exact`` says whether a satisfying x is a genuine violation
(linf, l1, top1 with first-index argmax, VNN-LIB properties) or only a candidate from a
*sufficient* check (l2 via linf at ``eps / sqrt(m)``, l1 beyond 8 outputs via linf at ``eps / m``).

Bounds: both networks are stacked into one float network (block-diagonal hidden layers on the
shared input, last layer multiplied by the row matrix), so bound propagation with
back-substitution (``lumpver.bounds.engine.compute_bounds``) bounds every row *and* every neuron in one
pass, keeping the correlation between f and g through the shared input.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
import numpy as np

from lumpver.bounds.engine import compute_bounds
from lumpver.specs.inputset import Box, Polytope
from lumpver.ir.network import Layer, Network
from lumpver.verifiers.base import Query

#: Bound tolerance: a float bound ``v`` is trusted only up to ``BOUND_TOL * (1 + |v|)``.
BOUND_TOL = 1e-8
PWL = ("relu", "leaky_relu", "identity")


@dataclass
class Row:
    c: np.ndarray  # coefficients over the stacked outputs
    c0: float
    strict: bool = False


@dataclass
class Spec:
    disjuncts: list[list[Row]]
    n_outputs: list[int]  # outputs per network, in stacking order
    exact: bool = True
    note: str = ""

    def all_rows(self) -> list[Row]:
        return [r for d in self.disjuncts for r in d]


def build_spec(query: Query) -> Spec:
    """The rows of a query (see the module docstring for which norms are exact)."""
    f = query.network
    if query.other is None:
        dis = [[Row(A[k].astype(np.float64), -float(b[k])) for k in range(len(b))] for A, b in query.prop.disjuncts]
        return Spec(dis, [f.n_outputs])
    m, eps = f.n_outputs, float(query.epsilon)
    sizes = [m, query.other.n_outputs]
    if query.norm == "top1":
        return Spec(_top1_rows(m), sizes, note="top1: first-index argmax, as numpy")
    if query.norm == "l1" and m <= 8:
        dis = []
        for s in itertools.product((1.0, -1.0), repeat=m):
            s = np.array(s)
            dis.append([Row(np.concatenate([-s, s]), eps, strict=True)])
        return Spec(dis, sizes)
    if query.norm == "l1":
        return Spec(_linf_rows(m, eps / m), sizes, exact=False, note=f"l1 via linf at eps/{m} (sufficient)")
    if query.norm == "l2":
        return Spec(_linf_rows(m, eps / np.sqrt(m)), sizes, exact=False, note="l2 via linf at eps/sqrt(m) (sufficient)")
    return Spec(_linf_rows(m, eps), sizes)


def _linf_rows(m: int, eps: float) -> list[list[Row]]:
    dis = []
    for i in range(m):
        e = np.zeros(m)
        e[i] = 1.0
        dis.append([Row(np.concatenate([-e, e]), eps, strict=True)])  # f_i - g_i > eps
        dis.append([Row(np.concatenate([e, -e]), eps, strict=True)])  # g_i - f_i > eps
    return dis


def _top1_rows(m: int) -> list[list[Row]]:
    """``argmax f = i`` and ``argmax g = j`` (first index on ties, as ``numpy.argmax``), i != j."""
    def argmax_rows(i: int, off: int) -> list[Row]:
        rows = []
        for k in range(m):
            if k != i:
                c = np.zeros(2 * m)
                c[off + k], c[off + i] = 1.0, -1.0
                rows.append(Row(c, 0.0, strict=k < i))  # y_k < y_i before i, y_k <= y_i after
        return rows

    return [argmax_rows(i, 0) + argmax_rows(j, m) for i, j in itertools.permutations(range(m), 2)]


# ----- stacked bound network ---------------------------------------------------------------
def _folded_first(net: Network) -> tuple[np.ndarray, np.ndarray]:
    scale, shift = net.input_affine()
    W, b = net.layers[0].weight, net.layers[0].bias
    return W * scale[None, :], b + W @ shift


def _same_ops(nets: list[Network]) -> bool:
    a = nets[0].input_ops
    return all(
        len(n.input_ops) == len(a) and all(o.op == p.op and np.array_equal(o.constant, p.constant) for o, p in zip(n.input_ops, a))
        for n in nets[1:]
    )


def stackable(nets: list[Network]) -> bool:
    """Same depth and the same activation per layer (block-diagonal stacking possible)."""
    d = len(nets[0].layers)
    return all(len(n.layers) == d for n in nets) and all(
        len({(n.layers[k].activation, n.layers[k].alpha) for n in nets}) == 1 for k in range(d)
    )


def stacked_network(nets: list[Network], rows: list[Row]) -> Network:
    """One float network whose outputs are the rows' values ``c . y + c0``."""
    keep_ops = _same_ops(nets)
    C = np.array([r.c for r in rows]).reshape(len(rows), -1)
    c0 = np.array([r.c0 for r in rows])
    layers = []
    depth = len(nets[0].layers)
    for k in range(depth):
        if k == 0:
            parts = [(n.layers[0].weight, n.layers[0].bias) if keep_ops else _folded_first(n) for n in nets]
            W = np.vstack([p[0] for p in parts])
            b = np.concatenate([p[1] for p in parts])
        else:
            W = _block_diag([n.layers[k].weight for n in nets])
            b = np.concatenate([n.layers[k].bias for n in nets])
        act, alpha = nets[0].layers[k].activation, nets[0].layers[k].alpha
        if k == depth - 1 and act == "identity":
            layers.append(Layer(C @ W, C @ b + c0, "identity"))
        else:
            layers.append(Layer(W, b, act, alpha))
    if nets[0].layers[-1].activation != "identity":
        layers.append(Layer(C, c0, "identity"))
    out = Network(layers)
    if keep_ops:
        out.input_ops = list(nets[0].input_ops)
    return out


def _block_diag(mats: list[np.ndarray]) -> np.ndarray:
    rows = sum(m.shape[0] for m in mats)
    cols = sum(m.shape[1] for m in mats)
    out = np.zeros((rows, cols))
    r = c = 0
    for m in mats:
        out[r : r + m.shape[0], c : c + m.shape[1]] = m
        r += m.shape[0]
        c += m.shape[1]
    return out


@dataclass
class NeuronBounds:
    """Pre-activation bounds of one network's neurons: ``lower[k], upper[k]`` for every layer
    whose activation is not the identity-output (hidden layers, and an activated output layer)."""

    lower: list[np.ndarray]
    upper: list[np.ndarray]


@dataclass
class SpecBounds:
    rows_lower: np.ndarray  # lower bound of each row value, same order as Spec.all_rows()
    neurons: list[NeuronBounds]  # one per network
    method: str
    extra: dict = field(default_factory=dict)


def compute(net: Network, region, method: str = "crown"):
    """Bounds of every layer of ``net`` on ``region`` (:func:`lumpver.bounds.engine.compute_bounds`)."""
    return compute_bounds(net, region, method=method)


def spec_bounds(nets: list[Network], spec: Spec, region, method: str = "crown") -> SpecBounds:
    """Row and neuron bounds on ``region`` (a Box, or a Polytope with bounding box)."""
    rows = spec.all_rows()
    if stackable(nets) and all(n.is_dense for n in nets):  # stacking reads dense weight matrices
        sb = compute(stacked_network(nets, rows), region, method)
        neurons = [NeuronBounds([], []) for _ in nets]
        for k in range(len(nets[0].layers)):
            if k == len(nets[0].layers) - 1 and nets[0].layers[-1].activation == "identity":
                break
            off = 0
            for n, nb in zip(nets, neurons):
                w = n.layers[k].width
                nb.lower.append(np.asarray(sb.pre_lower[k][off : off + w]))
                nb.upper.append(np.asarray(sb.pre_upper[k][off : off + w]))
                off += w
        return SpecBounds(np.asarray(sb.pre_lower[-1], dtype=np.float64), neurons, f"stacked-{sb.method}")
    # separate bounds; rows by interval arithmetic over the outputs
    neurons, lo, hi = [], [], []
    for n in nets:
        b = compute(n, region, method)
        last = len(n.layers) - (1 if n.layers[-1].activation == "identity" else 0)
        neurons.append(NeuronBounds([np.asarray(b.pre_lower[k]) for k in range(last)], [np.asarray(b.pre_upper[k]) for k in range(last)]))
        lo.append(np.asarray(b.post_lower[-1]))
        hi.append(np.asarray(b.post_upper[-1]))
    ylo, yhi = np.concatenate(lo), np.concatenate(hi)
    rl = np.array([np.sum(np.where(r.c > 0, r.c * ylo, r.c * yhi)) + r.c0 for r in rows])
    return SpecBounds(rl, neurons, "separate-interval-rows")


def tol(v) -> np.ndarray:
    return BOUND_TOL * (1.0 + np.abs(np.asarray(v, dtype=np.float64)))


def open_disjuncts(spec: Spec, bounds: SpecBounds) -> list[int]:
    """Indices of disjuncts not excluded by the bounds (a row with lower bound > tolerance)."""
    out, i = [], 0
    for d, rows in enumerate(spec.disjuncts):
        lb = bounds.rows_lower[i : i + len(rows)]
        i += len(rows)
        if not np.any(lb > tol(lb)):
            out.append(d)
    return out


def count_unstable(bounds: SpecBounds) -> int:
    n = 0
    for nb in bounds.neurons:
        for lo, hi in zip(nb.lower, nb.upper):
            n += int(np.sum((lo <= tol(lo)) & (hi >= -tol(hi))))
    return n


def is_piecewise_linear(nets: list[Network]) -> bool:
    return all(layer.activation in PWL for n in nets for layer in n.layers)


def region_with_box(region, box: Box):
    """The part of ``region`` inside ``box`` (a Box, or a Polytope with that bounding box)."""
    if isinstance(region, Polytope):
        return Polytope(region.A, region.b, box)
    return box

