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
"""
from __future__ import annotations

import math

import numpy as np

from lumpver.ir.network import Layer, Network, require_dense

GRANULARITIES = ("weight", "neuron")
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
    return sum(layer.weight.size for layer in net.layers[:-1])


def weight_masks(net: Network, fraction: float, scope: str = "global") -> list[np.ndarray]:
    """Boolean keep-masks, one per hidden layer, for magnitude pruning of ``fraction`` of the weights."""
    hidden = net.layers[:-1]
    if scope == "global":
        flat = np.concatenate([np.abs(layer.weight).reshape(-1) for layer in hidden]) if hidden else np.zeros(0)
        keep = np.ones(flat.size, dtype=bool)
        keep[_smallest(flat, _count(fraction, flat.size))] = False
        masks, start = [], 0
        for layer in hidden:
            masks.append(keep[start:start + layer.weight.size].reshape(layer.weight.shape))
            start += layer.weight.size
        return masks
    if scope == "layer":
        masks = []
        for layer in hidden:
            flat = np.abs(layer.weight).reshape(-1)
            keep = np.ones(flat.size, dtype=bool)
            keep[_smallest(flat, _count(fraction, flat.size))] = False
            masks.append(keep.reshape(layer.weight.shape))
        return masks
    raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")


def prune_weights(net: Network, fraction: float, scope: str = "global") -> Network:
    """A copy of ``net`` with ``fraction`` of its hidden-layer weights zeroed by smallest ``|w|``."""
    masks = weight_masks(net, fraction, scope)
    layers = [layer.copy() for layer in net.layers]
    for layer, mask in zip(layers, masks):
        layer.weight = np.where(mask, layer.weight, 0.0)
    return net.with_layers(layers)


def neuron_scores(net: Network) -> list[np.ndarray]:
    """Per hidden layer, each neuron's ``||[w_in, b]||_2 * ||w_out||_2``."""
    out = []
    for k, layer in enumerate(net.layers[:-1]):
        w_in = np.hypot(np.linalg.norm(layer.weight, axis=1), layer.bias)
        w_out = np.linalg.norm(net.layers[k + 1].weight, axis=0)
        out.append(w_in * w_out)
    return out


def neuron_keep_sets(net: Network, keep: float, scope: str = "global") -> list[np.ndarray]:
    """Sorted indices of the neurons kept in each hidden layer (``keep`` = fraction kept)."""
    scores = neuron_scores(net)
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
    require_dense(net, "prune")
    if granularity == "weight":
        if not 0.0 <= keep <= 1.0:
            raise ValueError("the keep fraction must lie in [0, 1]")
        return prune_weights(net, round(1.0 - keep, 12), scope)
    if granularity == "neuron":
        return prune_neurons(net, keep, scope)
    raise ValueError(f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}")


def sparsity(net: Network) -> float:
    """Fraction of zero entries among the hidden-layer weights."""
    total = hidden_weight_count(net)
    if total == 0:
        return 0.0
    return sum(int(np.count_nonzero(l.weight == 0)) for l in net.layers[:-1]) / total
