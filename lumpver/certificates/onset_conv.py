"""On-set channel removal of a convolutional network and its re-check (DESIGN.md §3, §10).

A ReLU channel whose pre-activation upper bound is ``<= 0`` at every position over the input set X
outputs exactly 0 on X, so deleting it (its filter and bias, and the next layer's input-channel
slice that reads it) leaves the network unchanged on X in real arithmetic: the discrepancy is 0.
Individually stable positions stay inside their channel (they are not structural). The step
``on-set-channels`` records the removed channels per hidden layer; :func:`replay_channel_step`
recomputes the bounds on every region of X with the bound engine (never the recorded ones), checks
every removed channel against them, rebuilds f without those channels and requires the reduced
network to be exactly that (same geometry, bit-equal weights). This module must not import
:mod:`lumpver.reductions`; the reducer imports :func:`remove_channels` and :func:`inactive_channels`.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from lumpver.bounds.engine import compute_bounds
from lumpver.certificates.exact_conv import channel_view, describe, rebuild
from lumpver.ir.network import Layer, Network
from lumpver.specs.inputset import InputSet

STEP = "on-set-channels"


def inactive_channels(net: Network, input_set: InputSet, method: str = "crown") -> list[np.ndarray]:
    """Per hidden layer, the ReLU channels whose pre-activation upper bound is ``<= 0`` at every
    position on every region of ``input_set`` (at least one channel of a layer is always kept)."""
    upper = [np.full(layer.width, -np.inf) for layer in net.layers[:-1]]
    for region in input_set.regions:
        nb = compute_bounds(net, region, method)
        upper = [np.maximum(u, nb.pre_upper[k]) for k, u in enumerate(upper)]
    out = []
    for k, layer in enumerate(net.layers[:-1]):
        per_channel = upper[k].reshape(layer.op.out_channels, -1).max(axis=1)
        dead = np.flatnonzero(per_channel <= 0) if layer.activation == "relu" else np.zeros(0, np.int64)
        if dead.size == per_channel.size:
            dead = np.delete(dead, int(np.argmax(per_channel)))
        out.append(dead)
    return out


def remove_channels(net: Network, removed: list[np.ndarray]) -> Network:
    """``net`` without the listed output channels of its hidden layers (weights copied exactly)."""
    layers, prev_keep = [], None
    for k, layer in enumerate(net.layers):
        view = channel_view(layer.op, net.layers[k - 1].op.out_channels if k else None)
        keep = np.setdiff1d(np.arange(view.out_channels), removed[k]) if k < len(removed) else np.arange(view.out_channels)
        cols = prev_keep if prev_keep is not None else np.arange(view.in_channels)
        w3 = view.w3[np.ix_(keep, cols)]
        bias = layer.bias.reshape(view.out_channels, -1)[keep].reshape(-1)
        layers.append(Layer(rebuild(view, w3, prev_keep is not None), bias, layer.activation, layer.alpha, layer.source_op))
        prev_keep = keep
    return net.with_layers(layers)


def _same(a: Network, b: Network) -> bool:
    """Same layers: geometry, activations, and bit-equal filters and biases."""
    if len(a.layers) != len(b.layers):
        return False
    for la, lb in zip(a.layers, b.layers):
        va, vb = channel_view(la.op, None), channel_view(lb.op, None)
        if (describe(la.op) != describe(lb.op) or va.w3.shape != vb.w3.shape or not np.array_equal(va.w3, vb.w3)
                or not np.array_equal(la.bias, lb.bias) or (la.activation, la.alpha) != (lb.activation, lb.alpha)):
            return False
    return True


def replay_channel_step(net: Network, input_set: InputSet, step: dict[str, Any], target: Optional[Network],
                        report) -> tuple[Optional[Network], float]:
    """Replay one ``on-set-channels`` step on ``net``: (the reduced network or None, bound on X = 0)."""
    removed = [np.asarray(r, dtype=np.int64).reshape(-1) for r in step["removed"]]
    if len(removed) != len(net.layers) - 1:
        report.fail(f"{STEP}: {len(removed)} layers of removed channels, the network has {len(net.layers) - 1}")
        return None, 0.0
    for k, r in enumerate(removed):
        n = net.layers[k].op.out_channels
        if r.size and (r.min() < 0 or r.max() >= n or np.unique(r).size != r.size or r.size >= n):
            report.fail(f"{STEP}: layer {k}: removed channel indices invalid for {n} channels")
            return None, 0.0
        if r.size and net.layers[k].activation != "relu":
            report.fail(f"{STEP}: layer {k}: only ReLU channels can be stably inactive")
            return None, 0.0
    uppers = [np.full(layer.width, -np.inf) for layer in net.layers[:-1]]
    for region in input_set.regions:
        nb = compute_bounds(net, region, "crown")
        uppers = [np.maximum(u, nb.pre_upper[k]) for k, u in enumerate(uppers)]
    for k, r in enumerate(removed):
        worst = uppers[k].reshape(net.layers[k].op.out_channels, -1)[r].max(initial=-np.inf)
        if worst > 0:
            report.fail(f"{STEP}: layer {k}: a removed channel reaches pre-activation {worst:.3g} > 0 on X")
            return None, 0.0
    g = remove_channels(net, removed)
    if target is not None and not _same(g, target):
        report.fail(f"{STEP}: the reduced model is not the original without the removed channels")
        return None, 0.0
    report.ok(f"{STEP}: {sum(r.size for r in removed)} channel(s) with pre-activation <= 0 at every position on X "
              "(bounds recomputed); removing them changes nothing on X")
    return (target if target is not None else g), 0.0
