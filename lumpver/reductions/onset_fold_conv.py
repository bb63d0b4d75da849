"""Linear folding of stably active channels of a convolutional chain on an input set (DESIGN.md §3, §10).

A channel whose activation is linear at every position over X (ReLU with pre-activation lower bound
``>= 0`` everywhere, identity) computes ``h_c = s_c (W_c h_prev + b_c)``. Per hidden layer, from the
first on, the augmented filters ``s_c [W_c E, b_c]`` of those channels (``E``: the previous layer's
embedding, so rows are expressed in its kept channels) go through a rank-revealing QR
(``scipy.linalg.qr`` with pivoting, relative diagonal tolerance ``qr_tol``, as
:mod:`lumpver.reductions.onset_fold` does for dense layers); the pivots beyond the rank are *folded*,
``h_F = C h_B`` with ``C`` from a float64 least-squares solve, and every reader adds ``C`` times its
filter slices on ``F`` to its slices on ``B``. A layer folds nothing when its reader has no channel
view (a step mixing channels before the reader's weights). Stably inactive ReLU channels are removed
as before. The reduced filters are rounded to float32; the claim and its sound discrepancy bound are
:mod:`lumpver.certificates.onset_conv`'s (the checker recomputes both from the files).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lumpver.certificates.exact_conv import channel_view, rebuild
from lumpver.certificates.onset_conv import ChannelBounds, ChannelClaim, channel_slopes, inactive_channels
from lumpver.errors import InputError
from lumpver.ir.network import Layer, Network
from lumpver.reductions.onset_fold import QR_TOL


@dataclass
class ChannelFolds:
    """Per hidden layer, the claims the reducer chose (same records as the checker reads)."""

    claims: list[ChannelClaim]

    def to_json(self) -> list[dict[str, Any]]:
        return [{"basis": c.basis.tolist(), "folded": c.folded.tolist(), "coefficients": c.coeffs.tolist()}
                for c in self.claims]

    @property
    def n_folded(self) -> int:
        return sum(c.folded.size for c in self.claims)


def _reader_takes_channels(net: Network, k: int) -> bool:
    """Layer ``k + 1`` reads layer ``k`` through channel-wise steps and one weighted step."""
    try:
        channel_view(net.layers[k + 1].op, net.layers[k].op.out_channels)
    except InputError:
        return False
    return True


def augmented_rows(w3e: np.ndarray, bias: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Rows ``s_c [filter_c, bias_c]``; a bias that is constant over positions counts once."""
    b = bias[:, :1] if np.all(bias == bias[:, :1]) else bias
    return s[:, None] * np.hstack([w3e.reshape(w3e.shape[0], -1), b])


def split_rows(rows: np.ndarray, qr_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(basis positions, folded positions, coefficients) of ``rows`` by pivoted QR of ``rows.T``."""
    from scipy.linalg import qr

    _, r, piv = qr(rows.T, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    rank = int(np.sum(diag > qr_tol * diag[0])) if diag.size and diag[0] > 0 else 0
    basis, folded = np.sort(piv[:max(rank, 1)]), np.sort(piv[max(rank, 1):])
    if folded.size == 0:
        return basis, folded, np.zeros((0, basis.size))
    sol, *_ = np.linalg.lstsq(rows[basis].T, rows[folded].T, rcond=None)
    return basis, folded, sol.T


def choose_channel_folds(net: Network, cb: ChannelBounds, qr_tol: float = QR_TOL) -> ChannelFolds:
    """Removed, basis and folded channels of every hidden layer from bounds valid on X (module docstring)."""
    removed = inactive_channels(net, cb)
    claims: list[ChannelClaim] = []
    emb = np.eye(channel_view(net.layers[0].op, None).in_channels)
    for k, layer in enumerate(net.layers[:-1]):
        view = channel_view(layer.op, net.layers[k - 1].op.out_channels if k else None)
        s = channel_slopes(layer, cb.pre_lower[k], cb.pre_upper[k])
        lin = np.flatnonzero(np.isfinite(s) & (s != 0)) if _reader_takes_channels(net, k) else np.zeros(0, np.int64)
        claim = ChannelClaim(removed[k], lin, np.zeros(0, np.int64), np.zeros((0, lin.size)))
        if lin.size > 1:
            w3e = np.einsum("tsk,sj->tjk", view.w3[lin], emb)
            b, f, coeffs = split_rows(augmented_rows(w3e, layer.bias.reshape(view.out_channels, -1)[lin], s[lin]), qr_tol)
            claim = ChannelClaim(removed[k], lin[b], lin[f], coeffs)
        claims.append(claim)
        emb = claim.embedding(view.out_channels)
    return ChannelFolds(claims)


def fold_channels(net: Network, folds: ChannelFolds) -> Network:
    """The reduced network the claims describe: kept rows, readers' filters ``W E`` rounded to float32
    (exact copies where nothing is folded), biases of the kept channels."""
    layers, emb = [], None
    for k, layer in enumerate(net.layers):
        view = channel_view(layer.op, net.layers[k - 1].op.out_channels if k else None)
        c = folds.claims[k] if k < len(folds.claims) else None
        rows = c.kept(view.out_channels) if c is not None else np.arange(view.out_channels)
        w3 = view.w3[rows] if emb is None else np.einsum("tsk,sj->tjk", view.w3[rows], emb)
        w3 = w3.astype(np.float32).astype(np.float64)
        bias = layer.bias.reshape(view.out_channels, -1)[rows].reshape(-1)
        layers.append(Layer(rebuild(view, w3, emb is not None), bias, layer.activation, layer.alpha, layer.source_op))
        emb = c.embedding(view.out_channels) if c is not None else None
    return net.with_layers(layers)
