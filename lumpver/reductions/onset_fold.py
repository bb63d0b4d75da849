"""Linear lumping of stable neurons and its sound discrepancy bound (DESIGN.md §3).

On an input set X, a neuron whose activation is linear on its whole pre-activation range
(ReLU/LeakyReLU with ``l >= 0`` or ``u <= 0``, identity) computes ``h = s z`` with a fixed
slope ``s``. Slope 0 (ReLU with ``u <= 0``) means ``h = 0``: the neuron is removed. The others
are affine in the previous layer's kept values, with augmented rows ``s [w, b]``; a basis of
them is chosen by rank-revealing QR (``scipy.linalg.qr`` with pivoting, relative tolerance
``qr_tol`` on the diagonal) and every other *folded* neuron ``f`` becomes ``h_f = C_f h_B``:
its outgoing weights are added to the basis neurons' with the coefficients ``C_f`` (the
affine combination of augmented rows carries the bias term). Folding proceeds from the first
hidden layer on, each layer's rows being expressed in the already reduced previous layer.

Floats: ``C`` comes from a float64 least-squares solve and the reduced weights are rounded to
float32, so the reduced network g equals the original f on X only up to a discrepancy;
:func:`fold_discrepancy` bounds ``sup_X |f - g|`` per output soundly in real arithmetic
(residuals times bounds of the previous layer's values, propagated with the activations'
Lipschitz constants; float64 evaluation covered by the relative margin :data:`DISC_REL`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from lumpver.bounds.engine import NetworkBounds
from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Layer, Network

#: Relative diagonal tolerance of the pivoted QR that selects a basis of stable rows.
QR_TOL = 1e-9
#: Relative margin (of the magnitude of the terms) covering float64 rounding in the discrepancy bound.
DISC_REL = 1e-10


@dataclass
class LayerFold:
    """Claims for one hidden layer: removed (``h = 0``), basis and folded neurons with coefficients."""

    layer: int
    inactive: np.ndarray  # int indices, h = 0 on X
    basis: np.ndarray  # int indices, linear on X, kept
    folded: np.ndarray  # int indices, linear on X, replaced by coeffs @ h[basis]
    coeffs: np.ndarray  # (len(folded), len(basis))

    def kept(self, width: int) -> np.ndarray:
        """Indices of the neurons kept in the reduced layer (in their original order)."""
        gone = np.zeros(width, dtype=bool)
        gone[self.inactive] = True
        gone[self.folded] = True
        return np.flatnonzero(~gone)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "stably_inactive": self.inactive.tolist(),
            "basis": self.basis.tolist(),
            "folded": self.folded.tolist(),
            "coefficients": self.coeffs.tolist(),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> "LayerFold":
        folded = np.asarray(d["folded"], dtype=np.int64).reshape(-1)
        basis = np.asarray(d["basis"], dtype=np.int64).reshape(-1)
        coeffs = np.asarray(d["coefficients"], dtype=np.float64).reshape(folded.size, basis.size)
        return LayerFold(int(d["layer"]), np.asarray(d["stably_inactive"], dtype=np.int64).reshape(-1),
                         basis, folded, coeffs)


def linear_slopes(layer: Layer, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Slope ``s`` with ``act(z) = s z`` for all ``z`` in ``[lo, hi]``; NaN where none exists."""
    s = np.full(lo.size, np.nan)
    slope = ACTIVATIONS[layer.activation].negative_slope
    if slope is None:
        return s
    neg = float(slope(layer.alpha))
    s[hi <= 0] = neg
    s[lo >= 0] = 1.0
    if neg == 1.0:  # linear (identity)
        s[:] = 1.0
    return s


def _prev_map(prev: Optional[LayerFold], n_prev: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept indices, folded indices, C expanded to kept columns) of the previous layer."""
    if prev is None:
        return np.arange(n_prev), np.zeros(0, dtype=np.int64), np.zeros((0, n_prev))
    kept = prev.kept(n_prev)
    pos = {int(j): i for i, j in enumerate(kept)}
    cx = np.zeros((prev.folded.size, kept.size))
    for c, b in enumerate(prev.basis):
        cx[:, pos[int(b)]] = prev.coeffs[:, c]
    return kept, prev.folded, cx


def folded_weight(weight: np.ndarray, prev: Optional[LayerFold]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``W[:, kept] + W[:, F] C`` (float64), its magnitude, ``W[:, F]`` and the kept columns."""
    kept, folded, cx = _prev_map(prev, weight.shape[1])
    wf = weight[:, kept] + weight[:, folded] @ cx
    mag = np.abs(weight[:, kept]) + np.abs(weight[:, folded]) @ np.abs(cx)
    return wf, mag, weight[:, folded], kept


def choose_folds(net: Network, nb: NetworkBounds, qr_tol: float = QR_TOL) -> list[LayerFold]:
    """Pick removed, basis and folded neurons of every hidden layer from bounds valid on X."""
    from scipy.linalg import qr

    folds: list[LayerFold] = []
    prev: Optional[LayerFold] = None
    for k, layer in enumerate(net.layers[:-1]):
        s = linear_slopes(layer, nb.pre_lower[k], nb.pre_upper[k])
        inactive = np.flatnonzero(s == 0)
        lin = np.flatnonzero(np.isfinite(s) & (s != 0))
        wf, _, _, _ = folded_weight(layer.weight, prev)
        basis, folded, coeffs = lin, np.zeros(0, dtype=np.int64), np.zeros((0, lin.size))
        if lin.size > 1:
            rows = s[lin, None] * np.hstack([wf[lin], layer.bias[lin, None]])
            _, r, piv = qr(rows.T, mode="economic", pivoting=True)
            d = np.abs(np.diag(r))
            rank = int(np.sum(d > qr_tol * d[0])) if d.size and d[0] > 0 else 0
            bsel, fsel = np.sort(piv[:rank]), np.sort(piv[rank:])
            basis, folded = lin[bsel], lin[fsel]
            if folded.size:
                sol, *_ = np.linalg.lstsq(rows[bsel].T, rows[fsel].T, rcond=None)
                coeffs = sol.T
            else:
                coeffs = np.zeros((0, basis.size))
        prev = LayerFold(k, inactive, basis, folded, coeffs)
        folds.append(prev)
    return folds


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def fold_network(net: Network, folds: list[LayerFold]) -> Network:
    """The reduced network the claims describe (weights rounded to float32)."""
    layers: list[Layer] = []
    prev: Optional[LayerFold] = None
    for k, layer in enumerate(net.layers):
        wf, _, _, kept_prev = folded_weight(layer.weight, prev)
        rows = folds[k].kept(layer.width) if k < len(folds) else np.arange(layer.width)
        w, b = wf[rows], layer.bias[rows]
        if rows.size == 0:  # keep one silent neuron so that the layer stays valid
            w, b = np.zeros((1, wf.shape[1])), np.zeros(1)
        if w.shape[1] == 0:
            w = np.zeros((w.shape[0], 1))
        layers.append(Layer(_f32(w), _f32(b), layer.activation, layer.alpha, layer.source_op))
        prev = folds[k] if k < len(folds) else None
    return net.with_layers(layers)


def _absmax(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(lo), np.abs(hi))


def fold_discrepancy(net: Network, folds: list[LayerFold], nb: NetworkBounds, reduced: Network) -> np.ndarray:
    """Sound bound of ``|f(x) - g(x)|`` per output over X, in real arithmetic.

    ``nb`` must be valid on X for ``net`` and the claims' slopes must hold on X (the caller
    checks). ``reduced`` is the actual reduced network g (its weights are used as they are).
    """
    m_prev = _absmax(nb.input_lower, nb.input_upper)
    d = np.zeros(net.n_inputs)  # |h_g - h_f| on kept neurons of the previous layer
    e = np.zeros(0)  # |h_f[F] - C h_f[B]| on folded neurons of the previous layer
    prev: Optional[LayerFold] = None
    for k, layer in enumerate(net.layers):
        wf, mag_f, w_fold_cols, _ = folded_weight(layer.weight, prev)
        fold = folds[k] if k < len(folds) else None
        rows = fold.kept(layer.width) if fold is not None else np.arange(layer.width)
        g = reduced.layers[k]
        gw, gb = _reduced_block(g, rows, wf.shape[1])
        dz = (np.abs(gw) @ d + np.abs(gw - wf[rows]) @ m_prev + DISC_REL * (mag_f[rows] @ m_prev)
              + np.abs(gb - layer.bias[rows]) + np.abs(w_fold_cols[rows]) @ e)
        d_new = layer.lipschitz() * dz
        if fold is not None:
            s = linear_slopes(layer, nb.pre_lower[k], nb.pre_upper[k])
            e = _fold_residual(fold, s, wf, mag_f, w_fold_cols, layer.bias, m_prev, e)
            m_prev = _absmax(nb.post_lower[k], nb.post_upper[k])[rows]
        d = d_new
        prev = fold
    return d * (1.0 + 1e-6) + 1e-300


def _reduced_block(g: Layer, rows: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The reduced layer's weights and biases, checked against the expected shape."""
    if rows.size == 0:
        return np.zeros((0, n_cols)), np.zeros(0)
    if n_cols == 0:  # previous layer emptied: only its silent neuron, which must be unused
        if np.any(g.weight != 0):
            raise ValueError("reduced layer uses the silent neuron of an emptied layer")
        w = np.zeros((g.width, 0))
    else:
        w = g.weight
    if w.shape != (rows.size, n_cols):
        raise ValueError(f"reduced layer has shape {g.weight.shape}, expected {(rows.size, n_cols)}")
    return w, g.bias


def _fold_residual(fold: LayerFold, s, wf, mag_f, w_fcols, bias, m_prev, e_prev) -> np.ndarray:
    """Bound of ``|h_f - C_f h_B|`` over X for every folded neuron ``f`` of this layer."""
    F, B, C = fold.folded, fold.basis, fold.coeffs
    if F.size == 0:
        return np.zeros(0)
    sF, sB = s[F], s[B]
    rho_w = sF[:, None] * wf[F] - C @ (sB[:, None] * wf[B])
    rho_b = sF * bias[F] - C @ (sB * bias[B])
    rho_e = sF[:, None] * w_fcols[F] - C @ (sB[:, None] * w_fcols[B])
    mag_w = np.abs(sF)[:, None] * mag_f[F] + np.abs(C) @ (np.abs(sB)[:, None] * mag_f[B])
    mag_b = np.abs(sF * bias[F]) + np.abs(C) @ np.abs(sB * bias[B])
    return (np.abs(rho_w) @ m_prev + np.abs(rho_b) + np.abs(rho_e) @ e_prev
            + 4 * DISC_REL * (mag_w @ m_prev + mag_b))
