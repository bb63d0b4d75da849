"""Channels as the unit of structured pruning, and the stored weights as the unit of weight pruning
(DESIGN.md §6, §7, §10).

A hidden layer's *channels* are its output channels: the filters of a convolution, the neurons of a
dense layer (a neuron is a channel with one position). Removing channel ``t`` of layer k removes
filter ``t`` (and its bias) and the input channel ``t`` of layer k+1: for a following convolution
its slice ``w[:, t]``, for a dense layer after Flatten the block of columns channel ``t`` owns. The
layers are read through the channel views of :mod:`lumpver.certificates.exact_conv` (channel-wise
Pad/AveragePool/GlobalAveragePool steps around one conv or dense step), so a pruned network keeps
every layer's geometry. Grouped and depthwise convolutions are refused: removing one channel would
change the grouping of the layer after it.

*Stored weights* are what an operator keeps (conv filters, a dense matrix), never the unrolled
matrix of a convolution: weight-granularity pruning zeroes single filter entries.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lumpver.certificates.exact_conv import ChannelView, channel_view, rebuild
from lumpver.errors import InputError
from lumpver.ir.conv import ConvOperator
from lumpver.ir.network import Layer, Network
from lumpver.ir.operators import ComposedOperator, DenseOperator, LinearOperator


def _steps(op: LinearOperator) -> list[LinearOperator]:
    return list(op.ops) if isinstance(op, ComposedOperator) else [op]


def _weighted_index(op: LinearOperator, k: int) -> int:
    """Index of the one conv or dense step of layer ``k``'s operator (InputError otherwise)."""
    idx = [i for i, o in enumerate(_steps(op)) if isinstance(o, (ConvOperator, DenseOperator))]
    if len(idx) != 1:
        raise InputError(f"layer {k} has {len(idx)} weighted steps (conv or dense); pruning needs exactly one")
    return idx[0]


def stored_weight(op: LinearOperator, k: int = 0) -> np.ndarray:
    """The array layer ``k``'s weighted step stores: conv filters ``(out, in/groups, *kernel)`` or the
    dense ``(out, in)`` matrix (the live array)."""
    return _steps(op)[_weighted_index(op, k)].weight


def with_stored_weight(op: LinearOperator, weight: np.ndarray, k: int = 0) -> LinearOperator:
    """``op`` with its weighted step's array replaced by ``weight`` (same shape)."""
    steps, i = _steps(op), _weighted_index(op, k)
    main = steps[i]
    steps[i] = main.with_weight(weight) if isinstance(main, ConvOperator) else DenseOperator(weight)
    return steps[0] if len(steps) == 1 else ComposedOperator(steps)


def stored_arrays(op: LinearOperator) -> list[np.ndarray]:
    """Every array an operator stores (filters, matrices, scales), never a dense expansion."""
    return [a for o in _steps(op) for a in (getattr(o, "weight", None), getattr(o, "scale", None)) if a is not None]


def channel_views(net: Network, what: str) -> list[ChannelView]:
    """The channel view of every layer; InputError naming the layer when ``what`` cannot remove
    channels there (grouped/depthwise conv, a channel-mixing step such as a Transpose between layers)."""
    views, prev = [], None
    for k, layer in enumerate(net.layers):
        for o in _steps(layer.op):
            if isinstance(o, ConvOperator) and o.groups != 1:
                raise InputError(f"{what}: layer {k} is a grouped convolution (groups={o.groups}); removing a "
                                 "channel would change its grouping (use --granularity weight)")
        try:
            views.append(channel_view(layer.op, prev))
        except InputError as e:
            reason = str(e).removeprefix("channel lumping: ")
            raise InputError(f"{what}: layer {k}: {reason} (channels can be removed only where every step "
                             "around the layer's conv or dense map acts on each channel alike)") from None
        prev = views[-1].out_channels
    return views


def channel_biases(layer: Layer, view: ChannelView) -> np.ndarray:
    """The layer's bias as ``(channels, positions)``."""
    return layer.bias.reshape(view.out_channels, -1)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def keep_channels(net: Network, views: list[ChannelView], kept: list[np.ndarray],
                  scales: Optional[list[np.ndarray]] = None) -> Network:
    """``net`` with hidden layer k reduced to its channels ``kept[k]`` (sorted indices); ``scales[k]``
    (one per kept channel) multiplies the outgoing weights of the kept channels (coreset reweighting).
    Weights and biases are stored in float32."""
    if len(kept) != len(net.layers) - 1:
        raise ValueError(f"{len(kept)} kept sets for {len(net.layers) - 1} hidden layers")
    layers = []
    for k, (layer, view) in enumerate(zip(net.layers, views)):
        rows = np.asarray(kept[k]) if k < len(kept) else np.arange(view.out_channels)
        cols = np.asarray(kept[k - 1]) if k > 0 else np.arange(view.in_channels)
        w3 = view.w3[np.ix_(rows, cols)]
        if k > 0 and scales is not None:
            w3 = w3 * np.asarray(scales[k - 1], dtype=np.float64)[None, :, None]
        b = channel_biases(layer, view)[rows].reshape(-1)
        layers.append(Layer(rebuild(view, _f32(w3), k > 0), _f32(b), layer.activation, layer.alpha, layer.source_op))
    return net.with_layers(layers)
