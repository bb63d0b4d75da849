"""Exact channel lumping of convolutional networks (DESIGN.md §10; the dense case is §2).

Channels play the part of neurons. Layer by layer from the inputs, output channel ``t`` of a
layer gets the signature ``(A[t], b_eff[t])``: its filter with the previous layer's channel classes
summed per kernel offset (``A[t, C, k] = sum_{s in C} w[t, s, k] c_s``; for a dense layer after
Flatten, ``k`` runs over the positions of each channel's block of columns) and its bias at every
position plus the constant channels folded in. Channels whose signatures are proportional with a
factor the activation admits form a class (``h_t = c_t h_rep`` at every position); a channel whose
aggregated filter is zero is a constant map ``act(b_eff[t])`` folded into the next layer's bias;
classes whose aggregated outgoing weights all vanish are dead and dropped, outputs first. The
reduced network keeps each layer's geometry (Pad/AveragePool steps included: they commute with the
quotient) with one channel per kept class, filters ``fl32`` of the representative's aggregated
filter. The channel views and the aggregation are shared with the independent checker
(:mod:`lumpver.certificates.exact_conv`), which recomputes the discrepancy bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lumpver.certificates.exact_conv import (ChannelPartition, aggregate, channel_view, channels_per_layer,
                                             effective_bias, per_channel, rebuild)
from lumpver.ir.network import Layer, Network
from lumpver.progress import SILENT, Progress
from lumpver.reductions.grouping import classify_signatures


@dataclass
class ChannelLumpResult:
    """Outcome of :func:`lump_channels` (the fields :class:`lumpver.reductions.exact.LumpResult` has)."""

    original: Network
    reduced: Network
    classes: list[ChannelPartition]
    tolerance: float
    stats: dict[str, Any] = field(default_factory=dict)
    #: per layer the class-aggregated filters and effective bias (reused by the discrepancy bound)
    raw_signatures: list = field(default_factory=list, repr=False)

    @property
    def claim(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "unit": "channel", "layers": [c.to_json() for c in self.classes]}


def channel_signatures(agg: np.ndarray, b_eff: np.ndarray) -> np.ndarray:
    """The rows ``[A[t] | b_eff[t]]`` that channel classes group, ``b_eff`` as ``(channels, positions)``.
    A bias equal at every position (the usual case) enters as one column ``sqrt(positions) * b``: the
    same norms, inner products, distances and ratios as ``positions`` equal columns, at a fraction of
    the width (a 64x64 map has 4096 positions)."""
    b = per_channel(b_eff)
    if b.shape[1] < b_eff.shape[1]:
        b = b * np.sqrt(b_eff.shape[1])
    return np.hstack([agg.reshape(agg.shape[0], -1), b])


def _classify(agg: np.ndarray, b_eff: np.ndarray, layer: Layer, tol: float) -> ChannelPartition:
    """Channel classes of one layer from the signatures ``[A[t] | b_eff[t]]``."""
    n = agg.shape[0]
    sig = channel_signatures(agg, b_eff)
    zero = ~np.any(agg.reshape(n, -1) != 0, axis=1)
    cls, scale = np.full(n, -1, dtype=np.int64), np.zeros(n)
    constant = {int(t): layer.activate(b_eff[t]) for t in np.flatnonzero(zero)}
    live = np.flatnonzero(~zero)
    reps = np.zeros(0, dtype=np.int64)
    if live.size:
        cls[live], rep, scale[live] = classify_signatures(sig[live], layer.activation, tol)
        reps = live[rep]
    return ChannelPartition(cls, scale, reps, np.ones(reps.size, dtype=bool), constant)


def _remove_dead(parts: list[ChannelPartition], aggs: list[np.ndarray]) -> None:
    """Mark classes whose aggregated outgoing filters to every kept channel are zero, outputs first."""
    for k in range(len(parts) - 1, -1, -1):
        nxt = aggs[k + 1]
        users = parts[k + 1].rep[parts[k + 1].kept] if k + 1 < len(parts) else np.arange(nxt.shape[0])
        parts[k].kept = np.any(nxt[users] != 0, axis=(0, 2)) if users.size else np.zeros(nxt.shape[1], bool)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _quotient(net: Network, parts: list[ChannelPartition], aggs: list, biases: list) -> Network:
    """One channel per kept class: the representative's aggregated filter and effective bias (float32)."""
    layers = []
    for k, layer in enumerate(net.layers):
        prev = parts[k - 1] if k > 0 else None
        view = channel_view(layer.op, prev.cls.size if prev is not None else None)
        rows = parts[k].rep[parts[k].kept] if k < len(parts) else np.arange(view.out_channels)
        cols = np.flatnonzero(prev.kept) if prev is not None else np.arange(view.in_channels)
        w3, b = aggs[k][np.ix_(rows, cols)], biases[k][rows]
        if rows.size == 0:  # keep one silent channel so the layer stays valid
            w3, b = np.zeros((1, cols.size, w3.shape[2])), np.zeros((1, b.shape[1]))
        if cols.size == 0:
            w3 = np.zeros((w3.shape[0], 1, w3.shape[2]))
        op = rebuild(view, _f32(w3), prev is not None)
        layers.append(Layer(op, _f32(b.reshape(-1)), layer.activation, layer.alpha, layer.source_op))
    return net.with_layers(layers)


def lump_channels(net: Network, tolerance: float, progress: Progress = SILENT) -> ChannelLumpResult:
    """The coarsest exact channel quotient of ``net`` within ``tolerance`` (module docstring).
    InputError for a layer without a usable channel structure (grouped conv, channel-mixing steps)."""
    parts: list[ChannelPartition] = []
    aggs, biases = [], []
    n_hidden = len(net.layers) - 1
    for k, layer in enumerate(net.layers):
        prev = parts[k - 1] if k > 0 else None
        view = channel_view(layer.op, prev.cls.size if prev is not None else None)
        aggs.append(aggregate(view.w3, prev))
        biases.append(effective_bias(layer, prev, view.out_channels))
        if k < n_hidden:
            parts.append(_classify(aggs[k], biases[k], layer, tolerance))
            progress.tick("lumping channels of layer", k + 1, n_hidden)
    _remove_dead(parts, aggs)
    reduced = _quotient(net, parts, aggs, biases)
    stats = {"channels_before": channels_per_layer(net), "channels_after": channels_per_layer(reduced)}
    return ChannelLumpResult(net, reduced, parts, tolerance, stats, list(zip(aggs, biases)))
