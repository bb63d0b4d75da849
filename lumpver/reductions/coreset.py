"""Data-independent coreset pruning of hidden neurons (DESIGN.md §6, Mussay et al., arXiv 2008.08316).

For hidden layer k with incoming rows ``p_j = [w_j, b_j]`` and outgoing columns ``v_j`` (of layer
k+1): sensitivity ``s_j = max_i |v_ij| * act(beta ||p_j||)`` (beta bounds the layer's input
norm), normalised to probabilities ``q_j = s_j / sum s``; neurons are drawn with replacement
until ``n_keep`` distinct ones are drawn (m draws); a kept neuron keeps its *own* incoming row
and bias ``b_j`` (the published code reads the bias from a shifted column; not here) and its
outgoing column becomes ``v_j * count_j / (m q_j)``. Layers are processed from the inputs, on the
network as already pruned.

Convolutional networks (DESIGN.md §10): the unit is the filter, as in Mussay et al.'s CNN
experiments. Filter ``t`` of layer k has ``p_t = [filter_t, b_t]`` (``b_t`` the root mean square of
its bias over positions) and ``v_t`` = every weight of layer k+1 reading channel ``t`` (its input-channel
slice, or its block of columns after Flatten); ``s_t = max |v_t| * act(beta ||p_t||)`` with beta the
bound on the 2-norm of the whole layer input (it bounds the norm of every patch a filter reads). A
kept filter's outgoing slice is multiplied by ``count_t / (m q_t)``; the dropped filters and their
slices go (:func:`lumpver.reductions.channel_conv.keep_channels`).

The sensitivity-framework guarantee (probabilistic) is reported as :attr:`LayerCoreset.coreset_bound`;
the certified bound comes from :mod:`lumpver.reductions.certify`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lumpver.bounds.engine import compute_bounds
from lumpver.ir.network import Layer, Network, apply_activation
from lumpver.reductions.channel_conv import channel_biases, channel_views, keep_channels


@dataclass
class LayerCoreset:
    """What happened in one hidden layer."""

    kept: np.ndarray  # indices (into this layer) of kept neurons, sorted
    counts: np.ndarray  # draws of each kept neuron
    probs: np.ndarray  # q_j of each kept neuron
    draws: int  # m
    total_sensitivity: float  # sum_j s_j (unnormalised)
    coreset_bound: float  # eps * total_sensitivity, eps from m (see coreset_epsilon)

    def to_json(self) -> dict:
        return {"kept": self.kept.tolist(), "counts": self.counts.tolist(), "probs": self.probs.tolist(),
                "draws": self.draws, "total_sensitivity": self.total_sensitivity, "coreset_bound": self.coreset_bound}


@dataclass
class CoresetResult:
    reduced: Network
    layers: list[LayerCoreset] = field(default_factory=list)

    @property
    def kept(self) -> list[np.ndarray]:
        return [lc.kept for lc in self.layers]


def sensitivities(layer: Layer, next_layer: Layer, beta: float) -> np.ndarray:
    """``s_j = max_i |v_ij| * act(beta ||[w_j, b_j]||)`` for every neuron j of ``layer``."""
    p_norm = np.hypot(np.linalg.norm(layer.weight, axis=1), layer.bias)
    act = np.abs(apply_activation(layer.activation, beta * p_norm, layer.alpha))
    return np.max(np.abs(next_layer.weight), axis=0) * act


def coreset_epsilon(total: float, m: int, delta: float = 0.1) -> float:
    """Sensitivity-framework error factor ``sqrt(t (ln t + ln 1/delta) / m)`` (constant taken as 1;
    an indication, not a certificate)."""
    t = max(total, 1.0 + 1e-12)
    return math.sqrt(t * (math.log(t) + math.log(1.0 / delta)) / max(m, 1))


def sample_layer(s: np.ndarray, n_keep: int, rng: np.random.Generator, max_draws: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw with replacement (probabilities s / sum s) until ``n_keep`` distinct neurons: (kept, counts, m)."""
    n = s.size
    live = np.count_nonzero(s > 0)
    n_keep = min(n_keep, live)
    if n_keep == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
    q = s / s.sum()
    counts = np.zeros(n, dtype=np.int64)
    m = 0
    while np.count_nonzero(counts) < n_keep and m < max_draws:
        batch = rng.choice(n, size=max(1, n_keep - int(np.count_nonzero(counts))), p=q)
        for j in batch:
            if np.count_nonzero(counts) >= n_keep and counts[j] == 0:
                continue  # stop adding new neurons once n_keep are in
            counts[j] += 1
            m += 1
    kept = np.flatnonzero(counts)
    return kept, counts[kept], m


def coreset_prune(net: Network, keep: float, beta: float | list[float] = 1.0, seed: int = 0,
                  delta: float = 0.1) -> CoresetResult:
    """Keep ``ceil(keep * width)`` neurons per hidden layer by sensitivity sampling (module docstring)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError("the keep fraction must lie in (0, 1]")
    betas = beta if isinstance(beta, list) else [float(beta)] * (len(net.layers) - 1)
    if not net.is_dense:
        return coreset_prune_filters(net, keep, betas, seed, delta)
    rng = np.random.default_rng(seed)
    layers = [layer.copy() for layer in net.layers]
    info = []
    for k in range(len(layers) - 1):
        cur, nxt = layers[k], layers[k + 1]
        s = sensitivities(cur, nxt, betas[k])
        n_keep = max(1, math.ceil(round(keep * cur.width, 9)))
        kept, counts, m = sample_layer(s, n_keep, rng, max_draws=1000 * cur.width)
        if kept.size == 0:  # nothing feeds forward: keep one silent neuron
            kept, counts, m = np.array([0]), np.array([1]), 1
            q = np.array([1.0])
            new_cols = np.zeros((nxt.width, 1))
        else:
            q = s[kept] / s.sum()
            new_cols = nxt.weight[:, kept] * (counts / (m * q))[None, :]
        layers[k] = Layer(cur.weight[kept], cur.bias[kept], cur.activation, cur.alpha, cur.source_op)
        layers[k + 1] = Layer(new_cols, nxt.bias, nxt.activation, nxt.alpha, nxt.source_op)
        total = float(s.sum())
        info.append(LayerCoreset(kept, counts, q, m, total, coreset_epsilon(total, m, delta) * total))
    layers = [Layer(np.asarray(l.weight, np.float32).astype(np.float64), np.asarray(l.bias, np.float32).astype(np.float64),
                    l.activation, l.alpha, l.source_op) for l in layers]
    return CoresetResult(net.with_layers(layers), info)


def sample_filters(s: np.ndarray, keep: float, rng: np.random.Generator, delta: float) -> tuple[LayerCoreset, np.ndarray]:
    """Filters sampled by sensitivity ``s`` (``keep`` of them, at least one; DESIGN.md §6) as a record, and
    the factor each kept filter's readers are scaled by (count / (draws x probability)); one silent filter
    (factor 0) when nothing feeds forward."""
    n_keep = max(1, math.ceil(round(keep * s.size, 9)))
    kept, counts, m = sample_layer(s, n_keep, rng, max_draws=1000 * s.size)
    if kept.size == 0:  # nothing feeds forward: keep one silent filter
        kept, counts, m, q, scale = np.array([0]), np.array([1]), 1, np.array([1.0]), np.zeros(1)
    else:
        q = s[kept] / s.sum()
        scale = counts / (m * q)
    total = float(s.sum())
    return LayerCoreset(kept, counts, q, m, total, coreset_epsilon(total, m, delta) * total), scale


def coreset_prune_filters(net: Network, keep: float, betas: list[float], seed: int = 0,
                          delta: float = 0.1) -> CoresetResult:
    """Keep ``ceil(keep * channels)`` filters per hidden layer of a CNN by sensitivity sampling and
    reweight their outgoing slices (module docstring). ``kept`` are channel indices."""
    views = channel_views(net, "coreset filter pruning")
    rng = np.random.default_rng(seed)
    kept_all: list[np.ndarray] = []
    scales: list[np.ndarray] = []
    info = []
    for k, layer in enumerate(net.layers[:-1]):
        w3 = views[k].w3 if k == 0 else views[k].w3[:, kept_all[-1]] * scales[-1][None, :, None]
        p_norm = np.sqrt(np.sum(w3.reshape(w3.shape[0], -1) ** 2, axis=1)
                         + np.mean(channel_biases(layer, views[k]) ** 2, axis=1))
        act = np.abs(apply_activation(layer.activation, betas[k] * p_norm, layer.alpha))
        s = np.max(np.abs(views[k + 1].w3), axis=(0, 2)) * act
        lc, scale = sample_filters(s, keep, rng, delta)
        kept_all.append(lc.kept)
        scales.append(scale)
        info.append(lc)
    return CoresetResult(keep_channels(net, views, kept_all, scales), info)


def input_betas(net: Network, input_set) -> list[float]:
    """Per hidden layer, a bound on the 2-norm of the layer's input over X (bound propagation)."""

    betas = None
    for region in input_set.regions:
        nb = compute_bounds(net, region)
        mags = [np.maximum(np.abs(nb.input_lower), np.abs(nb.input_upper))]
        mags += [np.maximum(np.abs(nb.post_lower[k]), np.abs(nb.post_upper[k])) for k in range(len(net.layers) - 2)]
        b = [float(np.linalg.norm(v)) for v in mags]
        betas = b if betas is None else [max(x, y) for x, y in zip(betas, b)]
    return betas
