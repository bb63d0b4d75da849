"""Smooth (sigmoid, tanh) neurons that are nearly constant on an input set (DESIGN.md §3, §4;
issue 14 item 3).

A monotone activation whose sound pre-activation bounds on X are ``[l, u]`` (the one bound
engine, :func:`lumpver.bounds.engine.compute_bounds`, hull over X's regions) outputs values in
``[act(l), act(u)]``: replacing the neuron by the constant ``c`` = the midpoint changes its
output by at most ``e = (act(u) - act(l)) / 2`` anywhere on X. :func:`constant_candidates`
orders the hidden neurons by that change times the L1 norm of their outgoing weights (the
first-order effect on the next layer); :func:`fold_constants` removes the first ``r`` of them and
adds ``W_next[:, i] * c_i`` to the next layer's bias (float32, the stored precision).

The result is a pruned network g of h in the sense of :func:`lumpver.reductions.certify.expand_pruned`
(the twin keeps h's rows at the removed neurons, with no outgoing weights, and g's folded biases:
equal to g), so its error is certified by the same differential back-end and re-checked by
``lumpver check`` from the same ``bounded`` certificate as pruning; nothing here needs a new
checker. The search (bisection on ``r``, sampled error first) is
:func:`lumpver.reductions.approx.reduce_approx`'s.
"""
from __future__ import annotations

import numpy as np

from lumpver.bounds.engine import compute_bounds, hull_bounds
from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Layer, Network
from lumpver.specs.inputset import InputSet

#: activations handled here: smooth, monotone, not of the form max(z, s z)
SMOOTH = tuple(name for name, act in ACTIVATIONS.items() if act.monotone and not act.piecewise_linear)


def is_smooth_network(net: Network) -> bool:
    """Whether some hidden layer uses a smooth activation (the others may be piecewise linear)."""
    return any(layer.activation in SMOOTH for layer in net.layers[:-1])


def constant_candidates(h: Network, input_set: InputSet) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """(removal order ``[(layer, neuron), ...]``, midpoint constants per hidden layer).

    Only neurons of smooth layers are candidates, all but the costliest of each layer (a layer
    keeps one neuron); cost = half the sound output range on X times the L1 norm of the outgoing
    weights, increasing."""
    nb = hull_bounds([compute_bounds(h, region) for region in input_set.regions])
    order, consts = [], []
    for k, layer in enumerate(h.layers[:-1]):
        lo, hi = nb.post_lower[k], nb.post_upper[k]
        consts.append(0.5 * (lo + hi))
        if layer.activation not in SMOOTH:
            continue
        cost = 0.5 * (hi - lo) * np.sum(np.abs(h.layers[k + 1].weight), axis=0)
        order += [(float(c), k, int(j)) for j, c in enumerate(cost) if j != int(np.argmax(cost))]
    order.sort()
    return [(k, j) for _, k, j in order], consts


def fold_constants(h: Network, kept: list[np.ndarray], consts: list[np.ndarray]) -> Network:
    """g: h without the hidden neurons outside ``kept``, each replaced by its constant folded into
    the next layer's bias (float32)."""
    layers = []
    for k, layer in enumerate(h.layers):
        rows = kept[k] if k < len(kept) else np.arange(layer.width)
        w, b = layer.weight[rows], layer.bias[rows].copy()
        if k > 0:
            gone = np.setdiff1d(np.arange(layer.fan_in), kept[k - 1])
            b = b + w[:, gone] @ consts[k - 1][gone]
            w = w[:, kept[k - 1]]
        f32 = np.float32
        layers.append(Layer(w.astype(f32).astype(float), b.astype(f32).astype(float), layer.activation,
                            layer.alpha, layer.source_op))
    return h.with_layers(layers)
