"""LP tightening of pre-activation bounds (DESIGN.md §3): the triangle relaxation, per neuron.

Used by :func:`lumpver.bounds.engine.compute_bounds` with ``lp=True``. For layer ``k`` the LP has the
raw input ``x`` and the post-activations ``h_0 .. h_{k-1}`` as variables, each within its
already known bounds; every neuron of an earlier layer contributes its linear relaxation
(ReLU/LeakyReLU unstable: both lines through the origin on one side and the chord on the
other = the triangle; stable/identity: its exact line; sigmoid/tanh: the CROWN lines);
a polytope input adds ``A x <= b``. Only unstable ReLU/LeakyReLU neurons of ``k`` are
tightened (every neuron of the first layer when the input is a polytope). Each LP value is
turned into a sound bound through the solver's dual (:func:`lumpver.bounds.region.lp_min_sound`).
"""
from __future__ import annotations

import numpy as np

from lumpver.bounds.region import lp_min_sound
from lumpver.bounds.relaxations import get_relaxation
from lumpver.bounds.rounding import POLICY
from lumpver.ir.network import Network
from lumpver.specs.inputset import Box, Polytope


class LpTightener:
    """Callable ``(k, zl, zu, bounds_so_far) -> (zl, zu)`` for the engine's second pass
    (``bounds_so_far`` is a :class:`lumpver.bounds.engine.NetworkBounds` holding layers ``< k``)."""

    def __init__(self, net: Network, region, box: Box) -> None:
        self.net = net
        self.poly = region if isinstance(region, Polytope) else None
        self.box = box
        self.n_lp = 0

    def __call__(self, k, zl, zu, nb) -> tuple[np.ndarray, np.ndarray]:
        layer = self.net.layers[k]
        if k == 0 and self.poly is None:
            return zl, zu  # linear in x over a box: back-substitution is already exact
        if k == len(self.net.layers) - 1 and layer.activation not in ("relu", "leaky_relu"):
            return zl, zu
        if layer.activation in ("relu", "leaky_relu") and k > 0:
            todo = np.flatnonzero((zl < 0) & (zu > 0))
        else:
            todo = np.arange(layer.width) if k == 0 else np.array([], dtype=int)
        if todo.size == 0:
            return zl, zu
        from scipy.optimize import linprog  # solver: imported where used

        A, b, lb, ub, w_k, b_k = self._system(k, nb)
        zl, zu = zl.copy(), zu.copy()
        for i in todo:
            c = np.zeros(A.shape[1])
            c[-w_k.shape[1]:] = w_k[i]
            lo = lp_min_sound(linprog, c, A, b, lb, ub)
            hi = lp_min_sound(linprog, -c, A, b, lb, ub)
            self.n_lp += 2
            if lo is not None:
                zl[i] = max(zl[i], lo + b_k[i] - sum_pad(lo, b_k[i]))
            if hi is not None:
                zu[i] = min(zu[i], -hi + b_k[i] + sum_pad(hi, b_k[i]))
        return zl, zu

    def _system(self, k: int, nb):
        """Constraint matrix over ``[x, h_0, ..., h_{k-1}]`` and the objective block for layer k."""
        from scipy import sparse  # solver: imported where used

        net = self.net
        scale, shift = net.input_affine()
        n0 = net.n_inputs
        sizes = [n0] + [net.layers[j].width for j in range(k)]
        offs = np.cumsum([0] + sizes)
        rows, rhs = [], []
        for j in range(k):
            w, bias = _raw_affine(net, j, scale, shift)
            for sgn, a, c0 in self._lines(j, nb):
                m = w.shape[0]
                parts = [
                    sparse.csr_matrix((m, offs[j])),
                    sparse.csr_matrix(sgn * (a[:, None] * w)),
                    sparse.diags(-sgn * np.ones(m), format="csr"),
                    sparse.csr_matrix((m, offs[-1] - offs[j + 2])),
                ]
                rows.append(sparse.hstack(parts, format="csr"))
                rhs.append(sgn * (-c0 - a * bias))
        if self.poly is not None:
            pad = sparse.csr_matrix((self.poly.A.shape[0], offs[-1] - n0))
            rows.append(sparse.hstack([sparse.csr_matrix(self.poly.A), pad], format="csr"))
            rhs.append(self.poly.b)
        A = sparse.vstack(rows).tocsr() if rows else sparse.csr_matrix((0, offs[-1]))
        b = np.concatenate(rhs) if rhs else np.zeros(0)
        lb = np.concatenate([self.box.lower] + [nb.post_lower[j] for j in range(k)])
        ub = np.concatenate([self.box.upper] + [nb.post_upper[j] for j in range(k)])
        w_k, b_k = _raw_affine(net, k, scale, shift) if k == 0 else (net.layers[k].op.dense(), net.layers[k].bias)
        return A, b, lb, ub, w_k, b_k

    def _lines(self, j: int, nb) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Relaxation lines of layer j (:meth:`lumpver.bounds.relaxations.ActivationRelaxation.lp_lines`)."""
        layer = self.net.layers[j]
        return get_relaxation(layer.activation).lp_lines(nb.pre_lower[j], nb.pre_upper[j], layer.alpha)


def _raw_affine(net: Network, j: int, scale: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Layer j's affine map; for j = 0 composed with the input ops (in terms of the raw input)."""
    layer = net.layers[j]
    w = layer.op.dense()  # the LP needs the matrix
    if j > 0:
        return w, layer.bias
    return w * scale, layer.bias + w @ shift


def sum_pad(v: float, b: float) -> float:
    """Rounding margin of one float64 addition ``v + b``."""
    return float(POLICY.margin(abs(v) + abs(b), 2))
