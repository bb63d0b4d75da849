"""Deterministic magnitude pruning of a :class:`~lumpver.ir.network.Network` (DESIGN.md §4, §7).

Scope of pruning (documented choice): only the weight matrices of the *hidden* layers
(``layers[:-1]``) are pruned; biases, input ops and the output layer are kept. A network with a
single layer has nothing to prune.

* Weight granularity: the ``k = floor(fraction * N)`` entries of smallest ``|w|`` are set to
  zero, ``N`` the number of hidden-layer weights. Ties are broken by index: the weights are
  ranked by ``(|w|, position)`` with positions running through the hidden layers in order,
  each row-major. The result is a pure function of the network and the fraction, so a
  checker can recompute it exactly. ``scope="layer"`` applies the same rule per layer.
* Neuron granularity: a hidden neuron's score is ``||[w_in, b]||_2 * ||w_out||_2`` (its
  incoming weights and bias times its outgoing weights); the lowest-scoring neurons are
  removed (row deleted in its layer, column deleted in the next). At least one neuron per
  layer stays. Ties again by index.
* Channel granularity (convolutional networks, DESIGN.md §10): the unit is an output channel (a
  filter; a dense layer's neuron is a channel of one position), read through
  :mod:`lumpver.reductions.channel_conv`. Score ``||[filter_t, b_t]||_2 * ||w_out(t)||_2`` with ``b_t``
  the root mean square of the channel's bias over its positions and ``w_out(t)`` every weight of the
  next layer that reads channel ``t`` (its input-channel slice, or its block of columns after
  Flatten); on a dense network this is the neuron score. The filter and the next layer's slice go.

Weight pruning reads the *stored* weights (conv filters, never the unrolled matrix), so on a CNN
``N`` counts filter entries.

Graph networks (residual Add, Concat, MaxPool): :mod:`lumpver.reductions.pruning_graph`.
"""
from __future__ import annotations

import math

import numpy as np

from lumpver.errors import InputError
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.network import Layer, Network
from lumpver.reductions.channel_conv import (channel_biases, channel_views, keep_channels, stored_weight,
                                             with_stored_weight)

GRANULARITIES = ("weight", "neuron", "channel")
SCOPES = ("global", "layer")


def _count(fraction: float, total: int) -> int:
    """``floor(fraction * total)``, rounded first to 9 decimals so that e.g. 0.29 * 100 gives 29."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("the pruning fraction must lie in [0, 1]")
    return int(math.floor(round(fraction * total, 9)))


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest ``values`` with ties broken by index (stable sort)."""
    return np.argsort(values, kind="stable")[:k]


def hidden_weight_count(net: Network) -> int:
    """Number of weights that weight pruning may zero (hidden layers only)."""
    return sum(w.size for w in _hidden_weights(net))


def _hidden_weights(net: Network) -> list[np.ndarray]:
    """The stored weights of the hidden layers (conv filters or dense matrices)."""
    return [stored_weight(layer.op, k) for k, layer in enumerate(net.layers[:-1])]


def weight_masks(net: Network, fraction: float, scope: str = "global") -> list[np.ndarray]:
    """Boolean keep-masks, one per hidden layer, for magnitude pruning of ``fraction`` of the weights."""
    return masks_of(_hidden_weights(net), fraction, scope)


def masks_of(hidden: list[np.ndarray], fraction: float, scope: str) -> list[np.ndarray]:
    """Keep-masks of magnitude pruning of ``fraction`` of the arrays' entries (module docstring)."""
    if scope == "global":
        flat = np.concatenate([np.abs(w).reshape(-1) for w in hidden]) if hidden else np.zeros(0)
        keep = np.ones(flat.size, dtype=bool)
        keep[_smallest(flat, _count(fraction, flat.size))] = False
        masks, start = [], 0
        for w in hidden:
            masks.append(keep[start:start + w.size].reshape(w.shape))
            start += w.size
        return masks
    if scope == "layer":
        masks = []
        for w in hidden:
            flat = np.abs(w).reshape(-1)
            keep = np.ones(flat.size, dtype=bool)
            keep[_smallest(flat, _count(fraction, flat.size))] = False
            masks.append(keep.reshape(w.shape))
        return masks
    raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")


def prune_weights(net: Network, fraction: float, scope: str = "global") -> Network:
    """A copy of ``net`` with ``fraction`` of its hidden-layer weights zeroed by smallest ``|w|``."""
    masks = weight_masks(net, fraction, scope)
    layers = [layer.copy() for layer in net.layers]
    for k, (layer, mask) in enumerate(zip(layers, masks)):
        layer.op = with_stored_weight(layer.op, np.where(mask, stored_weight(layer.op, k), 0.0), k)
    return net.with_layers(layers)


def neuron_scores(net: Network) -> list[np.ndarray]:
    """Per hidden layer, each neuron's ``||[w_in, b]||_2 * ||w_out||_2``."""
    out = []
    for k, layer in enumerate(net.layers[:-1]):
        w_in = np.hypot(np.linalg.norm(layer.weight, axis=1), layer.bias)
        w_out = np.linalg.norm(net.layers[k + 1].weight, axis=0)
        out.append(w_in * w_out)
    return out


def channel_scores(net: Network, what: str = "channel pruning") -> list[np.ndarray]:
    """Per hidden layer, each output channel's ``||[filter_t, b_t]||_2 * ||w_out(t)||_2`` (module doc)."""
    views = channel_views(net, what)
    out = []
    for k, layer in enumerate(net.layers[:-1]):
        w3, nxt = views[k].w3, views[k + 1].w3
        w_in = np.sqrt(np.sum(w3.reshape(w3.shape[0], -1) ** 2, axis=1)
                       + np.mean(channel_biases(layer, views[k]) ** 2, axis=1))
        out.append(w_in * np.sqrt(np.sum(nxt ** 2, axis=(0, 2))))  # this float expression is the stated rule
    return out


def channel_keep_sets(net: Network, keep: float, scope: str = "layer") -> list[np.ndarray]:
    """Sorted indices of the channels kept in each hidden layer (``keep`` = fraction kept)."""
    return keep_sets(channel_scores(net), keep, scope)


def prune_channels(net: Network, keep: float, scope: str = "layer") -> tuple[Network, list[np.ndarray]]:
    """The network keeping the ``keep`` fraction of channels with the largest scores, and the kept sets."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError("the keep fraction must lie in [0, 1]")
    views = channel_views(net, "channel pruning")
    kept = channel_keep_sets(net, keep, scope)
    return keep_channels(net, views, kept), kept


def neuron_keep_sets(net: Network, keep: float, scope: str = "global") -> list[np.ndarray]:
    """Sorted indices of the neurons kept in each hidden layer (``keep`` = fraction kept)."""
    return keep_sets(neuron_scores(net), keep, scope)


def keep_sets(scores: list[np.ndarray], keep: float, scope: str) -> list[np.ndarray]:
    """Indices kept per layer: the ``keep`` fraction of largest scores, globally or per layer, at
    least one per layer, ties by index."""
    widths = [s.size for s in scores]
    if scope == "global":
        flat = np.concatenate(scores) if scores else np.zeros(0)
        n_drop = flat.size - max(0, math.ceil(round(keep * flat.size, 9)))
        drop = np.zeros(flat.size, dtype=bool)
        drop[_smallest(flat, max(0, n_drop))] = True
        parts = np.split(~drop, np.cumsum(widths)[:-1]) if widths else []
    elif scope == "layer":
        parts = []
        for s in scores:
            n_keep = math.ceil(round(keep * s.size, 9))
            mask = np.zeros(s.size, dtype=bool)
            mask[_smallest(-s, n_keep)] = True  # largest scores, ties by index
            parts.append(mask)
    else:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    kept = []
    for s, mask in zip(scores, parts):
        if not mask.any():  # keep the best neuron so that every layer survives
            mask = mask.copy()
            mask[int(_smallest(-s, 1)[0])] = True
        kept.append(np.flatnonzero(mask))
    return kept


def prune_neurons(net: Network, keep: float, scope: str = "global") -> Network:
    """A smaller network keeping the ``keep`` fraction of hidden neurons with the largest scores."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError("the keep fraction must lie in [0, 1]")
    kept = neuron_keep_sets(net, keep, scope)
    layers = [layer.copy() for layer in net.layers]
    for k, idx in enumerate(kept):
        layers[k].weight = layers[k].weight[idx, :]
        layers[k].bias = layers[k].bias[idx]
        layers[k + 1].weight = layers[k + 1].weight[:, idx]
    return net.with_layers([Layer(l.weight, l.bias, l.activation, l.alpha, l.source_op) for l in layers])


def magnitude_prune(net: Network, keep: float, granularity: str = "weight", scope: str = "global") -> Network:
    """Keep the ``keep`` fraction of hidden weights (or neurons) by magnitude; see the module doc."""
    if granularity == "weight":
        if not 0.0 <= keep <= 1.0:
            raise ValueError("the keep fraction must lie in [0, 1]")
        return prune_weights(net, round(1.0 - keep, 12), scope)
    if granularity == "neuron":
        if not net.is_dense:
            raise InputError("neuron pruning: the unit of a convolutional layer is the channel "
                             "(use --granularity channel)")
        return prune_neurons(net, keep, scope)
    if granularity == "channel":
        return prune_channels(net, keep, scope)[0]
    raise ValueError(f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}")


def sparsity(net: Network | GraphNetwork) -> float:
    """Fraction of zero entries among the hidden-layer weights."""
    hidden = [stored_weight(node.op) for node in net.hidden_nodes] \
        if isinstance(net, GraphNetwork) else _hidden_weights(net)
    total = sum(w.size for w in hidden)
    if total == 0:
        return 0.0
    return sum(int(np.count_nonzero(w == 0)) for w in hidden) / total
