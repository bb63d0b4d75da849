"""ONNX import of spatial nodes (DESIGN.md §10): ``Conv``, ``AveragePool``, ``GlobalAveragePool``,
``Pad`` (constant zero), feature-reordering ``Transpose`` (NHWC inputs) and the final ``Softmax``,
plus the folding of element-wise scales into neighbouring operators.

Helpers of :mod:`lumpver.ir.onnx_import` (which walks the graph); each handler reads the node,
checks it against the tracked data shape and hands a :mod:`lumpver.ir.conv` operator to the
builder. Every refusal is an :class:`InputError` naming the node. ``MaxPool``, residual ``Add`` and
``Concat`` are join nodes of the graph IR, read by the walker of :mod:`lumpver.ir.onnx_import`.
"""
from __future__ import annotations

import numpy as np

from lumpver.errors import InputError
from lumpver.ir.conv import (AvgPoolOperator, ConvOperator, DiagonalOperator, GlobalAveragePool, PadOperator,
                             PermuteOperator)
from lumpver.ir.operators import ComposedOperator, DenseOperator, LinearOperator


def sample_shape(shape: list, n: int) -> tuple[int, ...] | None:
    """The known shape of one sample (axis 0 is the batch) when it accounts for all ``n`` features."""
    dims = shape[1:]
    if dims and all(isinstance(d, int) for d in dims) and int(np.prod(dims)) == n:
        return tuple(int(d) for d in dims)
    return None


def _spatial_input(b, rank: int, what: str, path: str, where: str) -> tuple[int, ...]:
    """The ``(C, *spatial)`` sample shape a ``rank``-D window op reads; refuse anything else."""
    s = sample_shape(b.shape, b.n)
    if b.col_layout or s is None or len(s) != rank + 1:
        got = "unknown" if s is None else f"[N, {', '.join(map(str, s))}]"
        raise InputError(f"{what} expects a {rank + 2}-D input [N, C, ...], got shape {got}", path, where)
    return s


def auto_pads(at: dict, in_sp, kernel, strides, dilations, path: str, where: str) -> list[int]:
    """Explicit ``pads`` (begins, then ends) from ``pads`` or ``auto_pad``."""
    mode = at.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    nd = len(kernel)
    if mode in ("NOTSET", ""):
        pads = [int(p) for p in at.get("pads", [0] * (2 * nd))]
        if len(pads) != 2 * nd or min(pads) < 0:
            raise InputError(f"pads {pads} do not fit {nd} spatial axes", path, where)
        return pads
    if mode == "VALID":
        return [0] * (2 * nd)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise InputError(f"unsupported auto_pad {mode!r}", path, where)
    total = [max(0, (-(-i // s) - 1) * s + (k - 1) * d + 1 - i) for i, k, s, d in zip(in_sp, kernel, strides, dilations)]
    small = [t // 2 for t in total]
    big = [t - t // 2 for t in total]
    return small + big if mode == "SAME_UPPER" else big + small


def conv(b, ins, at, consts, data, path: str, where: str) -> None:
    """``Conv`` (1-D/2-D, strides, pads/auto_pad, dilations, group, optional bias): a new layer."""
    if ins[0] != data or len(ins) < 2 or ins[1] not in consts:
        raise InputError("Conv must convolve the running value with a constant filter", path, where)
    w = np.asarray(consts[ins[1]], dtype=np.float64)
    if w.ndim not in (3, 4):
        raise InputError(f"Conv with filter of shape {list(w.shape)}: only 1-D and 2-D convolutions "
                         f"are supported", path, where)
    nd = w.ndim - 2
    s = _spatial_input(b, nd, "Conv", path, where)
    group = int(at.get("group", 1))
    if s[0] != w.shape[1] * group or w.shape[0] % group:
        raise InputError(f"Conv filter {list(w.shape)} with group={group} does not match {s[0]} input "
                         f"channels", path, where)
    if list(at.get("kernel_shape", w.shape[2:])) != list(w.shape[2:]):
        raise InputError(f"Conv kernel_shape {list(at['kernel_shape'])} differs from the filter's", path, where)
    strides = [int(v) for v in at.get("strides", [1] * nd)]
    dil = [int(v) for v in at.get("dilations", [1] * nd)]
    pads = auto_pads(at, s[1:], w.shape[2:], strides, dil, path, where)
    try:
        op = ConvOperator(s, w, tuple(strides), tuple(pads), tuple(dil), group)
    except ValueError as e:
        raise InputError(f"Conv: {e}", path, where) from None
    bias = np.zeros(w.shape[0])
    if len(ins) > 2 and ins[2]:
        if ins[2] not in consts or np.asarray(consts[ins[2]]).size != w.shape[0]:
            raise InputError(f"Conv bias must be a constant of {w.shape[0]} values", path, where)
        bias = np.asarray(consts[ins[2]], dtype=np.float64).reshape(-1)
    b.affine(op, np.repeat(bias, op.positions), "matmul")
    b.shape = [b.shape[0], *op.out_shape]


def average_pool(b, ins, at, consts, data, path: str, where: str) -> None:
    kernel = [int(k) for k in at.get("kernel_shape", [])]
    if len(kernel) not in (1, 2):
        raise InputError(f"AveragePool kernel {kernel}: only 1-D and 2-D pooling is supported", path, where)
    s = _spatial_input(b, len(kernel), "AveragePool", path, where)
    if any(int(d) != 1 for d in at.get("dilations", [1] * len(kernel))):
        raise InputError("AveragePool with dilations is not supported", path, where)
    strides = [int(v) for v in at.get("strides", [1] * len(kernel))]
    pads = auto_pads(at, s[1:], kernel, strides, [1] * len(kernel), path, where)
    try:
        op = AvgPoolOperator(s, tuple(kernel), tuple(strides), tuple(pads), bool(at.get("count_include_pad", 0)))
    except ValueError as e:
        raise InputError(f"AveragePool: {e}", path, where) from None
    if int(at.get("ceil_mode", 0)):
        nd = len(kernel)
        ceil = [-(-(i + pads[a] + pads[a + nd] - k) // st) + 1 for a, (i, k, st) in enumerate(zip(s[1:], kernel, strides))]
        if tuple(ceil) != op.out_shape[1:]:
            raise InputError("AveragePool with ceil_mode=1 that changes the output size is not supported", path, where)
    b.linear(op)


def global_average_pool(b, ins, at, consts, data, path: str, where: str) -> None:
    s = sample_shape(b.shape, b.n)
    if b.col_layout or s is None or len(s) < 2:
        raise InputError("GlobalAveragePool expects an input [N, C, ...] of known shape", path, where)
    b.linear(GlobalAveragePool(s))


def pad(b, ins, at, consts, data, path: str, where: str) -> None:
    mode = at.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise InputError(f"Pad mode {mode!r} is not supported (only constant zero padding)", path, where)
    if len(ins) > 3 and ins[3]:
        raise InputError("Pad with an axes input is not supported", path, where)
    pads = at.get("pads")
    if len(ins) > 1 and ins[1]:
        if ins[1] not in consts:
            raise InputError("Pad pads must be a constant", path, where)
        pads = np.asarray(consts[ins[1]]).reshape(-1).tolist()
    value = float(at.get("value", 0.0))
    if len(ins) > 2 and ins[2]:
        if ins[2] not in consts:
            raise InputError("Pad constant_value must be a constant", path, where)
        value = float(np.asarray(consts[ins[2]]).reshape(-1)[0])
    s = sample_shape(b.shape, b.n)
    if s is None or b.col_layout or pads is None or len(pads) != 2 * (len(s) + 1):
        raise InputError(f"Pad pads {pads} do not fit the data shape {b.shape}", path, where)
    r = len(s) + 1
    if value != 0.0 or pads[0] or pads[r] or min(pads) < 0:
        raise InputError(f"Pad with value {value} and pads {list(pads)} is not supported (only zero padding "
                         f"of non-batch axes)", path, where)
    b.linear(PadOperator(s, tuple(int(p) for p in pads[1:r] + pads[r + 1:])))


def permute(b, perm: list[int], path: str, where: str) -> None:
    """A ``Transpose`` that reorders features: the batch axis must stay first."""
    s = sample_shape(b.shape, b.n)
    if s is None or b.col_layout or len(perm) != len(s) + 1 or perm[0] != 0:
        raise InputError("Transpose that reorders the flattened features is supported only with the batch "
                         f"axis fixed and a known shape (perm {perm}, shape {b.shape})", path, where)
    b.linear(PermuteOperator(s, tuple(p - 1 for p in perm[1:])))


def softmax_axis_ok(shape: list, n: int, axis: int, opset: int) -> bool:
    """Whether a ``Softmax`` normalises over all ``n`` features of each sample."""
    rank = len(shape)
    axis = axis + rank if axis < 0 else axis
    if opset < 13:  # coerced to 2-D [prod(shape[:axis]), prod(shape[axis:])]
        return axis >= 1 and all(d == 1 for d in shape[1:axis])
    return rank >= 2 and axis >= 1 and all(d == 1 for i, d in enumerate(shape) if i not in (0, axis))


# ----- folding element-wise scales into operators --------------------------------------------
def _per_channel(scale: np.ndarray, channels: int) -> np.ndarray | None:
    per = scale.reshape(channels, -1)
    return per[:, 0] if (per == per[:, :1]).all() else None


def scale_rows(op: LinearOperator, scale: np.ndarray, shape: tuple[int, ...]) -> LinearOperator:
    """``diag(scale) @ op``: folded into dense rows or per-channel conv filters where it can be; an
    all-ones scale (an Add/Sub of a bias) returns ``op`` itself (no copy of its weights)."""
    if np.all(scale == 1.0):
        return op
    if isinstance(op, DenseOperator):
        return DenseOperator(op.weight * scale[:, None])
    if isinstance(op, ConvOperator):
        c = _per_channel(scale, op.out_channels)
        if c is not None:
            return op.with_weight(op.weight * c.reshape(-1, *[1] * (op.weight.ndim - 1)))
    if isinstance(op, ComposedOperator):
        return ComposedOperator(op.ops[:-1] + [scale_rows(op.ops[-1], scale, shape)])
    return ComposedOperator([op, DiagonalOperator(shape, scale)])


def fold_input_affine(op: LinearOperator, scale: np.ndarray, shift: np.ndarray, bias: np.ndarray,
                      shape: tuple[int, ...]) -> tuple[LinearOperator, np.ndarray]:
    """``op(scale * h + shift) + bias`` as ``(op', bias')``: dense columns or per-input-channel conv
    filters absorb ``scale``; otherwise a :class:`DiagonalOperator` goes first."""
    if isinstance(op, DenseOperator):
        return DenseOperator(op.weight * scale[None, :]), bias + op.weight @ shift
    bias = bias + op.forward(shift[None, :])[0]
    if np.all(scale == 1.0):
        return op, bias
    if isinstance(op, ConvOperator) and op.groups == 1:
        c = _per_channel(scale, op.in_shape[0])
        if c is not None:
            return op.with_weight(op.weight * c.reshape(1, -1, *[1] * (op.weight.ndim - 2))), bias
    return ComposedOperator([DiagonalOperator(shape, scale), op]), bias
