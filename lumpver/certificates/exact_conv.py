"""Re-checking an exact channel-lumping claim of a convolutional network (DESIGN.md §2, §10).

Channels play the part of neurons. A layer's operator is read as a *channel view*: channel-wise
steps before it (Pad, AveragePool, GlobalAveragePool: the same linear map on every channel), one
weighted step (a Conv with ``groups=1``, or a dense map whose columns form one block per input
channel, one column per position, as after Flatten), and channel-wise steps after it. Its weights
are ``w3[t, s, k]``: output channel ``t``, input channel ``s``, kernel offset or position ``k``.

The claim partitions the output channels of every hidden layer: channel ``t`` is ``c_t`` times its
class representative at every position, or a constant map (class -1, values per position in
``constant``); dropped classes feed nothing. :func:`channel_discrepancy_bound` recomputes from the
two model files a sound bound ``max_i |f_i(x) - g_i(x)| <= a + b ||x||_inf`` for all x (real
arithmetic of the stored weights), as :func:`lumpver.certificates.exact.discrepancy_bound` does for
dense layers, with magnitudes carried per channel (the maximum over its positions): the error
``e_t >= |h_u - c_t h^g_rep(t)|`` at every position ``u`` of channel ``t`` is carried through ``|w3|``
summed over kernel offsets and the residual filters ``|A_tC - c_t W^g_rep(t),C|`` of the class-aggregated
filters ``A_tC = sum_{s in C} w3[t, s] c_s`` against g's filters, applied to magnitudes of g's
activations. The quotient commutes with the channel-wise steps (they are linear and identical on
every channel), which is why the residual operator keeps them. This module must not import
:mod:`lumpver.reductions`; the reducer imports its channel views.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lumpver.certificates.partition import partition_problem
from lumpver.errors import InputError
from lumpver.ir.conv import AvgPoolOperator, ConvOperator, GlobalAveragePool, PadOperator
from lumpver.ir.network import Layer, Network, activation_lipschitz
from lumpver.ir.operators import ComposedOperator, DenseOperator, LinearOperator

ROUNDING_MARGIN = 1e-12
_CHUNK = 1 << 15  # float64 elements a piece of abs_sums / aggregate handles (256 kB: stays in cache)
CHANNELWISE = (PadOperator, AvgPoolOperator, GlobalAveragePool)


# ----- channel views ------------------------------------------------------------------------
@dataclass
class ChannelView:
    """A layer's operator as channel-wise steps, one weighted step and channel-wise steps."""

    pre: list[LinearOperator]
    main: LinearOperator
    post: list[LinearOperator]
    w3: np.ndarray  # (out channels, in channels, K)

    @property
    def out_channels(self) -> int:
        return int(self.w3.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.w3.shape[1])


def _channelwise(op: LinearOperator) -> bool:
    if isinstance(op, PadOperator):
        return op.pads[0] == 0 and op.pads[len(op.in_shape)] == 0
    return isinstance(op, CHANNELWISE)


def channel_view(op: LinearOperator, in_channels: Optional[int]) -> ChannelView:
    """The channel view of ``op`` (module docstring); ``in_channels`` is the previous layer's
    channel count (None for the first layer, whose input is never lumped). InputError when the
    operator has no channel structure the quotient can use (grouped conv, mixing steps)."""
    ops = list(op.ops) if isinstance(op, ComposedOperator) else [op]
    mains = [i for i, o in enumerate(ops) if isinstance(o, (ConvOperator, DenseOperator))]
    if len(mains) != 1:
        raise InputError(f"channel lumping needs one conv or dense step per layer, got {[type(o).__name__ for o in ops]}")
    i = mains[0]
    pre, main, post = ops[:i], ops[i], ops[i + 1:]
    if in_channels is not None and not all(_channelwise(o) for o in pre):
        raise InputError(f"channel lumping: a step before the weights mixes channels ({[type(o).__name__ for o in pre]})")
    if not all(_channelwise(o) for o in post):
        raise InputError(f"channel lumping: a step after the weights mixes channels ({[type(o).__name__ for o in post]})")
    if isinstance(main, ConvOperator):
        if main.groups != 1:
            raise InputError("channel lumping of a grouped convolution is not supported")
        w3 = main.weight.reshape(main.weight.shape[0], main.weight.shape[1], -1)
    else:
        if post:
            raise InputError("channel lumping: a channel-wise step after a dense map")
        n_in = in_channels if in_channels is not None else main.in_features
        if main.in_features % n_in:
            raise InputError(f"dense map of {main.in_features} inputs is not {n_in} channel blocks")
        w3 = main.weight.reshape(main.out_features, n_in, -1)
    if in_channels is not None and w3.shape[1] != in_channels:
        raise InputError(f"layer reads {w3.shape[1]} channels, the previous layer has {in_channels}")
    return ChannelView(pre, main, post, w3)


def _with_channels(op: LinearOperator, c: int) -> LinearOperator:
    shape = (c, *op.in_shape[1:])
    if isinstance(op, PadOperator):
        return PadOperator(shape, op.pads)
    if isinstance(op, AvgPoolOperator):
        return AvgPoolOperator(shape, op.kernel, op.strides, op.pads, op.count_include_pad)
    return GlobalAveragePool(shape)


def rebuild(view: ChannelView, w3: np.ndarray, relabel_inputs: bool = True) -> LinearOperator:
    """The operator of ``view`` with filters ``w3`` (other channel counts); the pre-steps keep their
    channel count when ``relabel_inputs`` is False (the first layer)."""
    n_out, n_in = w3.shape[0], w3.shape[1]
    pre = [_with_channels(o, n_in) for o in view.pre] if relabel_inputs else list(view.pre)
    m = view.main
    if isinstance(m, ConvOperator):
        main: LinearOperator = ConvOperator((n_in, *m.in_shape[1:]), w3.reshape(n_out, n_in, *m.weight.shape[2:]),
                                            m.strides, m.pads, m.dilations, 1)
    else:
        main = DenseOperator(w3.reshape(n_out, -1))
    post = [_with_channels(o, n_out) for o in view.post]
    ops = pre + [main] + post
    return ops[0] if len(ops) == 1 else ComposedOperator(ops)


def describe(op: LinearOperator) -> list[tuple]:
    """The geometry of an operator without its channel counts and weights (f and g must agree)."""
    out = []
    for o in (op.ops if isinstance(op, ComposedOperator) else [op]):
        if isinstance(o, ConvOperator):
            out.append(("conv", o.in_shape[1:], o.weight.shape[2:], o.strides, o.pads, o.dilations, o.groups))
        elif isinstance(o, DenseOperator):
            out.append(("dense",))
        elif isinstance(o, AvgPoolOperator):
            out.append(("avgpool", o.in_shape[1:], o.kernel, o.strides, o.pads, o.count_include_pad))
        elif isinstance(o, PadOperator):
            out.append(("pad", o.in_shape[1:], o.pads))
        else:
            out.append((type(o).__name__, getattr(o, "in_shape", (o.in_features,))[1:]))
    return out


# ----- partitions ---------------------------------------------------------------------------
@dataclass
class ChannelPartition:
    """One hidden layer's channel classes (module docstring); ``constant[t]`` = values per position."""

    cls: np.ndarray
    scale: np.ndarray
    rep: np.ndarray
    kept: np.ndarray
    constant: dict[int, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"unit": "channel", "class_of": self.cls.tolist(), "scale": [float(v) for v in self.scale],
                "representative": self.rep.tolist(), "kept": [bool(k) for k in self.kept],
                "constant": {str(t): [float(v) for v in vals] for t, vals in self.constant.items()}}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "ChannelPartition":
        return ChannelPartition(np.asarray(d["class_of"], dtype=np.int64).reshape(-1),
                                np.asarray(d["scale"], dtype=np.float64).reshape(-1),
                                np.asarray(d["representative"], dtype=np.int64).reshape(-1),
                                np.asarray(d["kept"], dtype=bool).reshape(-1),
                                {int(t): np.asarray(v, dtype=np.float64).reshape(-1) for t, v in d.get("constant", {}).items()})


def n_kept(p: Optional[ChannelPartition], default: int) -> int:
    """Channels g keeps for a layer: one per kept class (one silent channel if none)."""
    return default if p is None else max(1, int(p.kept.sum()))


def aggregate(w3: np.ndarray, prev: Optional[ChannelPartition]) -> np.ndarray:
    """``A[t, C, k] = sum_{s in C} w3[t, s, k] c_s`` (constant channels excluded; ``w3`` itself for the
    first layer): a sparse product of the class-membership matrix with the input-channel-major filters,
    read in memory order (a transposed MatMul weight is input-major already); filters stored output-major
    (Conv) are transposed a few output channels at a time into a cache-sized buffer, never whole."""
    if prev is None:
        return w3
    from scipy import sparse

    live = np.flatnonzero(prev.cls >= 0)
    n_cls, (n_out, n_in, k) = prev.rep.size, w3.shape
    member = sparse.csr_matrix((prev.scale[live], (prev.cls[live], live)), shape=(n_cls, n_in))
    rest = sorted((0, 2), key=lambda a: -w3.strides[a])  # the other axes in memory order
    by_input = w3.transpose(1, *rest)
    if by_input.flags.c_contiguous:
        out = np.asarray(member @ by_input.reshape(n_in, -1)).reshape(n_cls, *(w3.shape[a] for a in rest))
        return out.transpose(np.argsort([1, *rest]))
    out = np.empty((n_out, n_cls, k))
    step = max(1, 4 * _CHUNK // max(1, n_in * k))
    buf = np.empty((n_in, min(step, n_out), k))
    for t0 in range(0, n_out, step):
        n = min(step, n_out - t0)
        piece = buf if n == buf.shape[1] else np.empty((n_in, n, k))
        np.copyto(piece, w3[t0:t0 + n].transpose(1, 0, 2))
        out[t0:t0 + n] = np.asarray(member @ piece.reshape(n_in, -1)).reshape(n_cls, n, k).transpose(1, 0, 2)
    return out


def constant_map(prev: Optional[ChannelPartition], n_features: int) -> Optional[np.ndarray]:
    """The previous layer's features with its constant channels' values (zero elsewhere), or None."""
    if prev is None or not prev.constant:
        return None
    out = np.zeros((prev.cls.size, n_features // prev.cls.size))
    for t, vals in prev.constant.items():
        out[t] = vals
    return out.reshape(-1)


def effective_bias(layer: Layer, prev: Optional[ChannelPartition], out_channels: int) -> np.ndarray:
    """The layer's bias plus its operator applied to the constant channels, as ``(channels, positions)``."""
    cmap = constant_map(prev, layer.fan_in)
    b = layer.bias if cmap is None else layer.bias + layer.op.forward(cmap[None, :])[0]
    return b.reshape(out_channels, -1)


# ----- the check ----------------------------------------------------------------------------
def read_channel_classes(claim: dict[str, Any]) -> list[ChannelPartition]:
    """The channel partitions of a claim (KeyError/ValueError/TypeError if malformed)."""
    return [ChannelPartition.from_json(d) for d in claim["layers"]]


def _problem(f_layer: Layer, g_layer: Layer, vf: ChannelView, p: Optional[ChannelPartition],
             prev: Optional[ChannelPartition]) -> Optional[str]:
    n = vf.out_channels
    if p is not None:
        problem = partition_problem(n, f_layer.activation, p)
        if problem is not None:
            return problem
        positions = f_layer.width // n
        if sorted(p.constant) != sorted(np.flatnonzero(p.cls < 0).tolist()) or any(
                v.size != positions or not np.all(np.isfinite(v)) for v in p.constant.values()):
            return "constant channels and their values do not match"
    vg = channel_view(g_layer.op, n_kept(prev, 0) if prev is not None else None)
    rows = n_kept(p, n)
    cols = n_kept(prev, vf.in_channels)
    if vg.w3.shape != (rows, cols, vf.w3.shape[2]) or describe(f_layer.op) != describe(g_layer.op):
        return f"reduced layer has filters {vg.w3.shape}, the claim needs {(rows, cols, vf.w3.shape[2])} with f's geometry"
    if g_layer.width != rows * (f_layer.width // n):
        return "reduced layer's width does not match"
    if g_layer.activation != f_layer.activation or (f_layer.activation == "leaky_relu" and g_layer.alpha != f_layer.alpha):
        return "activation differs"
    if prev is not None and not prev.kept.any() and np.any(vg.w3 != 0):
        return "the silent channel of an emptied layer feeds the next layer"
    return None


def channel_classes_fit(f: Network, g: Network, parts: list[ChannelPartition], report) -> bool:
    """The channel partitions are well formed and g has f's geometry with one channel per kept class."""
    if len(parts) != len(f.layers) - 1 or len(g.layers) != len(f.layers):
        return not report.fail(f"claim has {len(parts)} hidden layers, the networks {len(f.layers) - 1} and {len(g.layers) - 1}")
    prev = None
    for k, (lf, lg) in enumerate(zip(f.layers, g.layers)):
        cur = parts[k] if k < len(parts) else None
        try:
            vf = channel_view(lf.op, prev.cls.size if prev is not None else None)
            problem = _problem(lf, lg, vf, cur, prev)
        except (InputError, ValueError) as e:
            problem = str(e)
        if problem is not None:
            return not report.fail(f"layer {k}: {problem}")
        prev = cur
    return True


def _chmax(a: np.ndarray, channels: int) -> np.ndarray:
    """Per-feature rows ``(2, channels * positions)`` -> their maximum over each channel's positions."""
    return a.reshape(a.shape[0], channels, -1).max(axis=2)


def abs_sums(a: np.ndarray) -> np.ndarray:
    """``sum_k |a[..., k]|`` in one pass over ``a`` in its memory order, a cache-sized piece at a time
    (no full-size temporary, no copy of a transposed view such as a MatMul weight). Sums of
    non-negative terms: relative rounding error at most ``K`` units, covered by the bound's ``1 + 1e-9``."""
    if a.size <= _CHUNK or a.ndim == 1:
        return _abs_sums_small(a)
    out = np.empty(a.shape[:-1])
    if a.flags.c_contiguous:  # rows of the last axis one after the other
        flat, rows = a.reshape(-1, a.shape[-1]), out.reshape(-1)
        step = max(1, _CHUNK // a.shape[-1])
        for i in range(0, flat.shape[0], step):
            rows[i:i + step] = _abs_sums_small(flat[i:i + step])
        return out
    ax = int(np.argmax(a.strides[:-1]))  # the outermost axis in memory: its slices are compact
    per = a.size // a.shape[ax]
    step = _CHUNK // per
    for i in range(0, a.shape[ax], max(step, 1)):
        at = (slice(None),) * ax + ((slice(i, i + step),) if step else (i,))
        out[at] = _abs_sums_small(a[at]) if step else abs_sums(a[at])
    return out


def _abs_sums_small(a: np.ndarray) -> np.ndarray:
    """``sum_k |a[..., k]|`` of a small array; a short last axis (conv kernels) by a product with ones."""
    b = np.abs(a)
    k = b.shape[-1]
    if 0 < k < 64 and b.ndim > 1:
        return (b.reshape(-1, k) @ np.ones(k)).reshape(b.shape[:-1])
    return b.sum(axis=-1)


def per_channel(b: np.ndarray) -> np.ndarray:
    """``(channels, positions)`` values as one column when equal at every position (the usual conv
    bias), else unchanged: broadcasting gives the same element-wise results at ``1/positions`` the work."""
    if b.shape[1] > 1 and np.array_equal(b, np.broadcast_to(b[:, :1], b.shape)):
        return b[:, :1]
    return b


def _terms(f_layer: Layer, g_layer: Layer, prev, cur, raw=None):
    """f's channel view, the class-aggregated filters and bias (``raw`` from the reducer, else
    recomputed), the residual filters ``|A_t - c_t W^g_rep(t)|`` of f's channels against g's class
    representatives (dropped classes: the virtual channel from the representative's aggregated filter;
    constant channels: ``|A_t|``) and per channel the largest bias gap over its positions (0 for constants)."""
    vf = channel_view(f_layer.op, prev.cls.size if prev is not None else None)
    vg = channel_view(g_layer.op, n_kept(prev, 0) if prev is not None else None)
    agg, b_eff = raw if raw is not None else (aggregate(vf.w3, prev), effective_bias(f_layer, prev, vf.out_channels))
    n_out = vf.out_channels
    wg = vg.w3
    if prev is not None:
        wg = np.zeros((vg.out_channels, agg.shape[1], agg.shape[2]))
        kept_prev = np.flatnonzero(prev.kept)
        wg[:, kept_prev, :] = vg.w3[:, :kept_prev.size, :]
    b_one, bg = per_channel(b_eff), per_channel(g_layer.bias.reshape(vg.out_channels, -1))
    width = max(b_one.shape[1], bg.shape[1])
    b_one, bg = (np.broadcast_to(v, (v.shape[0], width)) for v in (b_one, bg))
    if cur is None:
        cls, c, wq, bq = np.arange(n_out), np.ones(n_out), wg, bg
    else:
        cls, c = cur.cls, cur.scale
        wq, bq = agg[cur.rep], b_one[cur.rep]
        kept = np.flatnonzero(cur.kept)
        wq[kept], bq[kept] = wg[:kept.size], bg[:kept.size]
    live = cls >= 0
    if not live.any():  # constant channels only: residual |A_t|, no bias gap
        return vf, agg, b_eff, np.abs(agg), np.zeros(n_out)
    idx, c_live = np.where(live, cls, 0), np.where(live, c, 0.0)
    resid = wq[idx]
    resid *= c_live[:, None, None]
    np.abs(np.subtract(agg, resid, out=resid), out=resid)
    gap = np.abs(b_one - c_live[:, None] * bq[idx]).max(axis=1)
    gap[~live] = 0.0
    return vf, agg, b_eff, resid, gap


def channel_discrepancy_bound(f: Network, g: Network, parts: list, raw: Optional[list] = None) -> tuple[float, float]:
    """Sound ``(a, b)``: ``max_i |f_i(x) - g_i(x)| <= a + b ||x||_inf`` for all x (module docstring).
    ``parts`` must have passed :func:`channel_classes_fit`; ``raw`` (per layer the aggregated filters
    and effective bias) may be passed by the reducer, the checker never passes it.

    Bounds are carried per channel (the maximum over its positions), as rows ``(constant, coefficient
    of R)``: after the first layer, ``|z_t| <= sum_s (sum_k |w3[t, s, k]|) M_s + max |b_t|`` holds at
    every position, because the channel-wise steps average (weights >= 0 summing to <= 1) and zero
    padding only drops terms. The cost is one pass over the weights per layer (:func:`abs_sums`), not a
    convolution; the first layer, whose input steps may be any operator, goes through the operators and
    is then reduced to channel maxima when its input steps are not channel-wise."""
    scale, shift = f.input_affine()
    m_in = np.vstack([np.abs(shift), np.abs(scale)])
    prev = mq = m_prev = e_prev = None
    for k, layer in enumerate(f.layers):
        cur = parts[k] if k < len(parts) else None
        vf, agg, b_eff, resid, gap = _terms(layer, g.layers[k], prev, cur, raw[k] if raw is not None else None)
        n_out = vf.out_channels
        abs_b = np.abs(per_channel(layer.bias.reshape(n_out, -1))).max(axis=1)
        if prev is None and not all(_channelwise(o) for o in vf.pre):  # e.g. an NHWC Transpose
            wm = _chmax(layer.op.abs().forward(m_in), n_out)
            aggm = _chmax(rebuild(vf, np.abs(agg), False).forward(m_in), n_out)
            r = _chmax(rebuild(vf, resid, False).forward(m_in), n_out)
        else:
            if prev is None:  # the input's channels: classes of one channel each, no error yet
                m_prev = mq = _chmax(m_in, vf.in_channels)
                e_prev = np.zeros_like(m_prev)
            s = abs_sums(vf.w3)
            wm = m_prev @ s.T
            aggm = wm if prev is None else mq @ abs_sums(agg).T
            r = mq @ abs_sums(resid).T + e_prev @ s.T
        r = r + ROUNDING_MARGIN * (wm + abs_b + aggm)
        r[0] += gap
        e = activation_lipschitz(layer.activation, layer.alpha) * r * (1 + 1e-9)
        if cur is not None:
            for t, vals in cur.constant.items():
                e[0, t] += np.max(np.abs(layer.activate(b_eff[t]) - vals)) * (1 + 1e-9)
        zmag = wm + np.vstack([abs_b, np.zeros(n_out)])
        m = np.vstack([np.ones(n_out), np.zeros(n_out)]) if layer.activation in ("sigmoid", "tanh") \
            else activation_lipschitz(layer.activation, layer.alpha) * zmag
        if cur is None:
            return float(np.max(e[0])), float(np.max(e[1]))
        mq = (m + e)[:, cur.rep]
        m_prev, e_prev, prev = m, e, cur
    raise AssertionError("unreachable")


def channels_per_layer(net: Network) -> list[int]:
    """Output channels of every hidden layer (a dense layer: one channel per neuron)."""
    return [int(layer.op.out_channels) for layer in net.layers[:-1]]
