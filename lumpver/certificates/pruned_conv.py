"""Checker side of channel pruning (DESIGN.md §5, §7, §10): recomputed from the model files alone,
without the reducer (this module must not import :mod:`lumpver.reductions`).

* :func:`channel_twin` — for a ``bounded`` certificate whose chain names the ``kept`` channels of
  every hidden layer: the network ``g^`` with h's channel counts that equals g in real arithmetic.
  A kept channel has g's filter on the kept input channels and zero on the others; a dropped channel
  keeps h's filter (it tracks h, which keeps the differential bound tight) and feeds nothing, since
  the next layer's slice for it is zero. Geometry (kernels, strides, pads, pooling) must agree.
* :func:`channel_pruned` — the magnitude channel-pruning family of confident pruning at one level:
  per hidden layer the ``max(1, ceil(round(keep * C, 9)))`` channels with the largest score
  ``sqrt(||filter_t||^2 + mean_p b_tp^2) * ||next layer's weights reading t||`` are kept
  (``keep = round(1 - level, 12)``; ties by index), scores from the network as given.
* :func:`layers_differ` — whether two networks store different weights (filters compared as stored).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from lumpver.certificates.exact_conv import channel_view, describe, rebuild
from lumpver.ir.network import Layer, Network
from lumpver.ir.operators import ComposedOperator, LinearOperator


def _index_set(idx: np.ndarray, size: int, count: int, k: int) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size != count or np.unique(idx).size != idx.size or idx.min(initial=0) < 0 or idx.max(initial=0) >= size:
        raise ValueError(f"layer {k}: kept channels do not fit ({idx.size} named, g has {count}, h has {size})")
    return np.sort(idx)


def channel_twin(h: Network, g: Network, kept: list) -> Network:
    """``g^`` (module docstring); ValueError/InputError when g is not h with channels removed."""
    if len(g.layers) != len(h.layers) or len(kept) != len(h.layers) - 1:
        raise ValueError("kept channels: one set per hidden layer of networks of equal depth expected")
    layers, prev_h, prev_g, cols = [], None, None, None
    for k, (lh, lg) in enumerate(zip(h.layers, g.layers)):
        vh, vg = channel_view(lh.op, prev_h), channel_view(lg.op, prev_g)
        if describe(lh.op) != describe(lg.op) or lh.activation != lg.activation or lh.alpha != lg.alpha:
            raise ValueError(f"layer {k}: g's geometry or activation differs from h's")
        rows = (_index_set(kept[k], vh.out_channels, vg.out_channels, k) if k < len(kept)
                else np.arange(vh.out_channels))
        cols = np.arange(vh.in_channels) if cols is None else cols
        w3 = vh.w3.copy()
        w3[:, np.setdiff1d(np.arange(vh.in_channels), cols)] = 0.0
        w3[np.ix_(rows, cols)] = vg.w3
        b = lh.bias.reshape(vh.out_channels, -1).copy()
        b[rows] = lg.bias.reshape(rows.size, -1)
        layers.append(Layer(rebuild(vh, w3, k > 0), b.reshape(-1), lh.activation, lh.alpha, lh.source_op))
        prev_h, prev_g, cols = vh.out_channels, vg.out_channels, rows
    return h.with_layers(layers)


def channel_pruned(net: Network, level: float) -> Network:
    """``net`` without the ``level`` fraction of the channels of each hidden layer (module docstring)."""
    keep = round(1.0 - level, 12)
    views, prev = [], None
    for layer in net.layers:
        views.append(channel_view(layer.op, prev))
        prev = views[-1].out_channels
    kept = []
    for k in range(len(net.layers) - 1):
        w3, nxt, c = views[k].w3, views[k + 1].w3, views[k].out_channels
        bias = net.layers[k].bias.reshape(c, -1)
        score = np.sqrt((w3.reshape(c, -1) ** 2).sum(1) + (bias ** 2).mean(1)) * np.sqrt((nxt ** 2).sum(axis=(0, 2)))
        n_keep = max(1, math.ceil(round(keep * c, 9)))
        kept.append(np.sort(np.lexsort((np.arange(c), -score))[:n_keep]))
    layers = []
    for k, (layer, view) in enumerate(zip(net.layers, views)):
        rows = kept[k] if k < len(kept) else np.arange(view.out_channels)
        cols = kept[k - 1] if k > 0 else np.arange(view.in_channels)
        w3 = np.float32(view.w3[np.ix_(rows, cols)]).astype(np.float64)
        b = np.float32(layer.bias.reshape(view.out_channels, -1)[rows].reshape(-1)).astype(np.float64)
        layers.append(Layer(rebuild(view, w3, k > 0), b, layer.activation, layer.alpha, layer.source_op))
    return net.with_layers(layers)


def _arrays(op: LinearOperator) -> list[np.ndarray]:
    ops = op.ops if isinstance(op, ComposedOperator) else [op]
    return [a for o in ops for a in (getattr(o, "weight", None), getattr(o, "scale", None)) if a is not None]


def layers_differ(a: Network, b: Network) -> Optional[str]:
    """None when both networks have the same geometry, activations, stored weights and biases."""
    if len(a.layers) != len(b.layers):
        return "depths differ"
    for k, (la, lb) in enumerate(zip(a.layers, b.layers)):
        wa, wb = _arrays(la.op), _arrays(lb.op)
        if (describe(la.op) != describe(lb.op) or (la.activation, la.alpha) != (lb.activation, lb.alpha)
                or [w.shape for w in wa] != [w.shape for w in wb]):
            return f"layer {k}: geometry, shapes or activation differ"
        if not (all(map(np.array_equal, wa, wb)) and np.array_equal(la.bias, lb.bias)):
            return f"layer {k}: stored weights or biases differ"
    return None if (a.input_name, a.output_name) == (b.input_name, b.output_name) else "input/output names differ"
