"""Spatial linear operators: convolution, padding, average pooling, axis permutation, diagonal
scaling and composition (DESIGN.md §10), behind the :class:`LinearOperator` interface.

Features are flattened row-major over one sample's shape (``(C, H, W)`` or ``(C, L)``, or
``(H, W, C)`` for an NHWC input before its Transpose). Every operator is stored in its own
compact form (a conv keeps its filters); ``dense()`` forms the ``(out, in)`` matrix on demand
and refuses above :data:`DENSE_CAP` entries. 1-D operators run as 2-D ones with height 1.

Each operator also writes its own ONNX node(s) through ``write_onnx(w, x, bias)`` (the writer
lives in :mod:`lumpver.ir.onnx_export`): it returns the output tensor name and whether it
absorbed the layer's bias.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumpver.ir.operators import LinearOperator, dense_matrix

_BATCH_BYTES = 1 << 26  # working memory per chunk of a batched forward/backward


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1



@dataclass
class SpatialOperator(LinearOperator):
    """Common part: ``in_shape``/``out_shape`` of one sample; weight-free unless a subclass says."""

    in_shape: tuple[int, ...]

    @property
    def out_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def in_features(self) -> int:  # type: ignore[override]
        return _prod(self.in_shape)

    @property
    def out_features(self) -> int:  # type: ignore[override]
        return _prod(self.out_shape)

    @property
    def out_channels(self) -> int:
        return self.out_shape[0] if len(self.out_shape) > 1 else self.out_features

    @property
    def positions(self) -> int:
        return _prod(self.out_shape[1:]) if len(self.out_shape) > 1 else 1

    @property
    def n_params(self) -> int:
        return 0

    def abs(self) -> "LinearOperator":
        return self  # weight-free operators here have nonnegative matrices

    def dense(self) -> np.ndarray:
        return dense_matrix(self)

    def copy(self) -> "SpatialOperator":
        return self  # immutable: nothing to copy


def _chunks(n: int, per_row: int):
    step = max(1, _BATCH_BYTES // (8 * max(1, per_row)))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


@dataclass(frozen=True)
class _Geom:
    """2-D geometry: strides, dilations, pads (top, left, bottom, right), kernel, in/out sizes."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]
    in_hw: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (self.in_hw[i] + self.pads[i] + self.pads[i + 2] - self.dilations[i] * (self.kernel[i] - 1) - 1)
            // self.strides[i] + 1 for i in range(2))

    def window(self, u: int, v: int) -> tuple[slice, slice]:
        """Slices of the padded input read by kernel offset ``(u, v)`` at every output position."""
        (sh, sw), (dh, dw), (ho, wo) = self.strides, self.dilations, self.out_hw
        return (slice(u * dh, u * dh + sh * (ho - 1) + 1, sh), slice(v * dw, v * dw + sw * (wo - 1) + 1, sw))

    def padded(self, x: np.ndarray) -> np.ndarray:
        t, l, b, r = self.pads
        return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r))) if any(self.pads) else x


def _as2d(values, ndim: int, fill: int) -> tuple[int, int]:
    return (fill, int(values[0])) if ndim == 1 else (int(values[0]), int(values[1]))


def _geom(kernel, strides, dilations, pads, in_shape) -> _Geom:
    """The 2-D geometry of a 1-D or 2-D window operator (1-D runs with height 1)."""
    nd = len(kernel)
    pads2 = (0, pads[0], 0, pads[1]) if nd == 1 else tuple(pads)
    return _Geom(_as2d(kernel, nd, 1), _as2d(strides, nd, 1), _as2d(dilations, nd, 1),
                 pads2, _as2d(in_shape[1:], nd, 1))  # type: ignore[arg-type]


def _patches(xp: np.ndarray, g: _Geom) -> np.ndarray:
    """View ``(B, C, Ho, Wo, kh, kw)`` of the padded input: the window of every output position."""
    (kh, kw), (dh, dw), (sh, sw), (ho, wo) = g.kernel, g.dilations, g.strides, g.out_hw
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, : (ho - 1) * sh + 1: sh, : (wo - 1) * sw + 1: sw, ::dh, ::dw]


def _depthwise(w: np.ndarray, groups: int) -> bool:
    return w.shape[1] == 1 and w.shape[0] == groups


def conv2d(x: np.ndarray, w: np.ndarray, g: _Geom, groups: int) -> np.ndarray:
    """``(B, C, H, W) -> (B, Co, Ho, Wo)``: cross-correlation (im2col + GEMM per group; a
    depthwise filter multiplies element-wise per kernel offset)."""
    b, co, cg = x.shape[0], w.shape[0], w.shape[1]
    xp = g.padded(x)
    if _depthwise(w, groups):
        out = np.zeros((b, co, *g.out_hw), dtype=x.dtype)
        for u in range(g.kernel[0]):
            for v in range(g.kernel[1]):
                su, sv = g.window(u, v)
                out += xp[:, :, su, sv] * w[:, 0, u, v].reshape(1, co, 1, 1)
        return out
    pt = _patches(xp, g).transpose(0, 1, 4, 5, 2, 3)  # (B, C, kh, kw, Ho, Wo)
    og, p = co // groups, g.out_hw[0] * g.out_hw[1]
    out = np.empty((b, co, p), dtype=x.dtype)
    for k in range(groups):
        cols = np.ascontiguousarray(pt[:, k * cg:(k + 1) * cg]).reshape(b, -1, p)
        out[:, k * og:(k + 1) * og] = w[k * og:(k + 1) * og].reshape(og, -1) @ cols
    return out.reshape(b, co, *g.out_hw)


def conv2d_transpose(a: np.ndarray, w: np.ndarray, g: _Geom, groups: int) -> np.ndarray:
    """``(R, Co, Ho, Wo) -> (R, C, H, W)``: the adjoint of :func:`conv2d` (column gradients by one
    GEMM per group in channel-major layout, then a contiguous scatter-add per kernel offset into
    the padded input)."""
    r, co, cg = a.shape[0], w.shape[0], w.shape[1]
    (h, wd), og, (ho, wo) = g.in_hw, co // groups, g.out_hw
    (kh, kw), (t, l, bt, rt) = g.kernel, g.pads
    gp = np.zeros((cg * groups, r, h + t + bt, wd + l + rt), dtype=a.dtype)
    for k in range(groups):
        ak = np.ascontiguousarray(a[:, k * og:(k + 1) * og].transpose(1, 0, 2, 3)).reshape(og, -1)
        wk = w[k * og:(k + 1) * og].reshape(og, -1)
        cols = (wk.T @ ak).reshape(cg, kh, kw, r, ho, wo)
        for u in range(kh):
            for v in range(kw):
                su, sv = g.window(u, v)
                gp[k * cg:(k + 1) * cg, :, su, sv] += cols[:, u, v]
    return gp[:, :, t:t + h, l:l + wd].transpose(1, 0, 2, 3)


#: Largest number of stored entries of the sparse matrix kept by a window operator for its
#: ``backward`` (about 12 bytes each); above it the im2col transposed convolution is used
SPARSE_CAP = 1 << 22


def window_matrix(values: np.ndarray, g: _Geom, groups: int, in_channels: int):
    """The ``(in, out)`` CSR matrix of the transpose of a 2-D window operator (convolution, pooling):
    ``values`` ``(Co, Ho, Wo, Cg, kh, kw)`` is the weight of input ``(k*Cg + c, oy*s - pad + u*d, ..)``
    for output ``(co, oy, ox)`` (``k = co // (Co/groups)``); entries reading the zero padding are dropped.
    ``a @ M`` for rows ``a`` is then ``(M_T @ a.T).T``, a sparse product in the fused loop of
    scipy's CSR kernel (20x faster than the im2col transpose on 64 rows of the oval21 first conv)."""
    import scipy.sparse as sp

    co, ho, wo, cg, kh, kw = values.shape
    (sh, sw), (dh, dw), (t, l, _, _), (h, w) = g.strides, g.dilations, g.pads, g.in_hw
    o = np.arange(co * ho * wo).reshape(co, ho, wo, 1, 1, 1)
    ci = (np.arange(co) // (co // groups) * cg).reshape(co, 1, 1, 1, 1, 1) + np.arange(cg).reshape(1, 1, 1, cg, 1, 1)
    iy = (np.arange(ho) * sh - t).reshape(1, ho, 1, 1, 1, 1) + (np.arange(kh) * dh).reshape(1, 1, 1, 1, kh, 1)
    ix = (np.arange(wo) * sw - l).reshape(1, 1, wo, 1, 1, 1) + (np.arange(kw) * dw).reshape(1, 1, 1, 1, 1, kw)
    shape = values.shape
    o, ci, iy, ix = (np.broadcast_to(a, shape) for a in (o, ci, iy, ix))
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w) & (values != 0)
    rows = (ci[ok] * h + iy[ok]) * w + ix[ok]
    return sp.csr_matrix((values[ok], (rows, o[ok])), shape=(in_channels * h * w, co * ho * wo))


def sparse_backward(mat, a: np.ndarray) -> np.ndarray:
    """``(rows, out) -> (rows, in)`` through the ``(in, out)`` CSR ``mat`` of :func:`window_matrix`."""
    a = np.asarray(a, dtype=np.float64)
    return np.ascontiguousarray((mat @ np.ascontiguousarray(a.T)).T)


def _apply(h: np.ndarray, in_shape, per_chunk, per_row: int) -> np.ndarray:
    """Run ``per_chunk`` on batch chunks of ``h`` reshaped to ``(B, *in_shape)`` (``per_row``
    working values per sample); flatten the result."""
    h = np.asarray(h)
    x = h.reshape((h.shape[0], *in_shape))
    outs = [per_chunk(x[s]).reshape(len(range(*s.indices(h.shape[0]))), -1) for s in _chunks(h.shape[0], per_row)]
    return np.concatenate(outs) if len(outs) != 1 else outs[0]


@dataclass
class ConvOperator(SpatialOperator):
    """ONNX ``Conv`` (1-D or 2-D) without bias: ``weight`` is ``(C_out, C_in/groups, *kernel)``,
    ``in_shape`` is ``(C_in, H, W)`` or ``(C_in, L)``; ``pads`` in ONNX order (begins, then ends)."""

    weight: np.ndarray = None  # type: ignore[assignment]
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    groups: int = 1

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        nd = self.weight.ndim - 2
        if nd not in (1, 2) or len(self.in_shape) != nd + 1:
            raise ValueError(f"conv weight {self.weight.shape} does not fit input shape {self.in_shape}")
        self.strides = tuple(int(s) for s in (self.strides or (1,) * nd))
        self.dilations = tuple(int(d) for d in (self.dilations or (1,) * nd))
        self.pads = tuple(int(p) for p in (self.pads or (0,) * (2 * nd)))
        if self.in_shape[0] != self.weight.shape[1] * self.groups or self.weight.shape[0] % self.groups:
            raise ValueError(f"conv weight {self.weight.shape} with {self.groups} groups does not fit "
                             f"{self.in_shape[0]} input channels")
        if min(self.geom.out_hw) < 1:
            raise ValueError(f"conv output would be empty for input shape {self.in_shape}")

    @property
    def ndim(self) -> int:
        return self.weight.ndim - 2

    @property
    def geom(self) -> _Geom:
        return _geom(self.weight.shape[2:], self.strides, self.dilations, self.pads, self.in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        ho, wo = self.geom.out_hw
        return (self.weight.shape[0], wo) if self.ndim == 1 else (self.weight.shape[0], ho, wo)

    def _w4(self, dtype) -> np.ndarray:
        w = self.weight.astype(dtype, copy=False)
        return w.reshape(*w.shape[:2], 1, -1) if self.ndim == 1 else w

    def _x4_shape(self, shape) -> tuple[int, ...]:
        return (shape[0], 1, shape[1]) if self.ndim == 1 else tuple(shape)

    def forward(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h)
        g, w = self.geom, self._w4(h.dtype)
        return _apply(h, self._x4_shape(self.in_shape), lambda x: conv2d(x, w, g, self.groups), self._work)

    def backward(self, a: np.ndarray) -> np.ndarray:
        mat = self._transpose_matrix()
        if mat is not None:
            return sparse_backward(mat, a)
        a = np.asarray(a, dtype=np.float64)
        g, w = self.geom, self._w4(np.float64)
        return _apply(a, self._x4_shape(self.out_shape), lambda y: conv2d_transpose(y, w, g, self.groups),
                      self._work)

    def _transpose_matrix(self):
        """The cached :func:`window_matrix` (None above :data:`SPARSE_CAP` entries); rebuilt when the
        filters changed since it was formed."""
        cached = getattr(self, "_mat", None)
        if cached is not None and cached[0].shape == self.weight.shape and np.array_equal(cached[0], self.weight):
            return cached[1]
        if self.out_features * _prod(self.weight.shape[1:]) > SPARSE_CAP:
            return None
        w = self._w4(np.float64)
        ho, wo = self.geom.out_hw
        values = np.broadcast_to(w[:, None, None], (w.shape[0], ho, wo, *w.shape[1:]))
        mat = window_matrix(values, self.geom, self.groups, self.in_shape[0])
        self._mat = (self.weight.copy(), mat)
        return mat

    @property
    def _work(self) -> int:
        """Working values per sample: the im2col patches plus input and output."""
        return self.positions * _prod(self.weight.shape[1:]) * self.groups + self.in_features + self.out_features

    def abs(self) -> "ConvOperator":
        return self.with_weight(np.abs(self.weight))

    def with_weight(self, weight: np.ndarray) -> "ConvOperator":
        """The same geometry with other filters (same shape)."""
        return ConvOperator(self.in_shape, weight, self.strides, self.pads, self.dilations, self.groups)

    def copy(self) -> "ConvOperator":
        return self.with_weight(self.weight.copy())

    @property
    def n_params(self) -> int:
        return int(self.weight.size)

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        per_channel = channel_bias(bias, self.out_shape)
        ins = [x, w.const(self.weight, "W")] + ([w.const(per_channel, "b")] if per_channel is not None else [])
        out = w.node("Conv", ins, kernel_shape=list(self.weight.shape[2:]), strides=list(self.strides),
                     pads=list(self.pads), dilations=list(self.dilations), group=self.groups)
        return out, per_channel is not None


def channel_bias(bias: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The per-channel vector when a per-feature ``bias`` is constant over each channel, else None."""
    if bias is None:
        return None
    per = np.asarray(bias).reshape(shape[0], -1)
    return per[:, 0].copy() if np.array_equal(per, np.repeat(per[:, :1], per.shape[1], axis=1)) else None


@dataclass
class AvgPoolOperator(SpatialOperator):
    """ONNX ``AveragePool`` (ceil_mode 0): window mean; with ``count_include_pad=False`` (the ONNX
    default) a window is divided by the number of its positions inside the unpadded input."""

    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    count_include_pad: bool = False

    def __post_init__(self) -> None:
        nd = len(self.kernel)
        if nd not in (1, 2) or len(self.in_shape) != nd + 1:
            raise ValueError(f"pooling kernel {self.kernel} does not fit input shape {self.in_shape}")
        self.kernel = tuple(int(k) for k in self.kernel)
        self.strides = tuple(int(s) for s in (self.strides or (1,) * nd))
        self.pads = tuple(int(p) for p in (self.pads or (0,) * (2 * nd)))
        if min(self.geom.out_hw) < 1:
            raise ValueError(f"pooling output would be empty for input shape {self.in_shape}")
        self.col_injective = all(s >= k for s, k in zip(self.strides, self.kernel))
        ones = np.ones((1, 1, *self.geom.in_hw))
        count = conv2d(ones, np.ones((1, 1, *self.geom.kernel)), self.geom, 1)[0, 0]
        self._divisor = np.full_like(count, _prod(self.kernel)) if self.count_include_pad else count

    _x4_shape = ConvOperator._x4_shape

    @property
    def geom(self) -> _Geom:
        return _geom(self.kernel, self.strides, (1,) * self.ndim, self.pads, self.in_shape)

    @property
    def ndim(self) -> int:
        return len(self.kernel)

    @property
    def out_shape(self) -> tuple[int, ...]:
        ho, wo = self.geom.out_hw
        return (self.in_shape[0], wo) if self.ndim == 1 else (self.in_shape[0], ho, wo)

    def _ones(self, dtype) -> np.ndarray:
        return np.ones((self.in_shape[0], 1, *self.geom.kernel), dtype=dtype)

    def forward(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h)
        g, c, div = self.geom, self.in_shape[0], self._divisor.astype(h.dtype)
        return _apply(h, self._x4_shape(self.in_shape), lambda x: conv2d(x, self._ones(h.dtype), g, c) / div,
                      3 * self.in_features)

    def backward(self, a: np.ndarray) -> np.ndarray:
        if self.out_features * _prod(self.kernel) <= SPARSE_CAP:
            if getattr(self, "_mat", None) is None:
                (kh, kw), c = self.geom.kernel, self.in_shape[0]
                inv = np.broadcast_to((1.0 / self._divisor)[None, :, :, None, None, None], (c, *self.geom.out_hw, 1, kh, kw))
                self._mat = window_matrix(inv, self.geom, c, c)
            return sparse_backward(self._mat, a)
        a = np.asarray(a, dtype=np.float64)
        g, c = self.geom, self.in_shape[0]
        return _apply(a, self._x4_shape(self.out_shape),
                      lambda y: conv2d_transpose(y / self._divisor, self._ones(np.float64), g, c), 3 * self.in_features)

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        return w.node("AveragePool", [x], kernel_shape=list(self.kernel), strides=list(self.strides),
                      pads=list(self.pads), count_include_pad=int(self.count_include_pad)), False


@dataclass
class GlobalAveragePool(SpatialOperator):
    """ONNX ``GlobalAveragePool``: ``(C, *spatial) -> (C, 1, ...)``, the mean of each channel."""

    col_injective = True

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.in_shape[0],) + (1,) * (len(self.in_shape) - 1)

    def forward(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h)
        return h.reshape(h.shape[0], self.in_shape[0], -1).mean(axis=2)

    def backward(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        p = _prod(self.in_shape[1:])
        return np.repeat(a / p, p, axis=1)

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        return w.node("GlobalAveragePool", [x]), False


@dataclass
class PadOperator(SpatialOperator):
    """ONNX ``Pad`` (mode constant, value 0) on the sample axes: ``pads`` = begins, then ends."""

    col_injective = row_single = True

    pads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.pads = tuple(int(p) for p in self.pads)
        if len(self.pads) != 2 * len(self.in_shape) or min(self.pads, default=0) < 0:
            raise ValueError(f"pads {self.pads} do not fit input shape {self.in_shape}")

    @property
    def _widths(self) -> list[tuple[int, int]]:
        n = len(self.in_shape)
        return [(self.pads[i], self.pads[i + n]) for i in range(n)]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(d + b + e for d, (b, e) in zip(self.in_shape, self._widths))

    def forward(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h)
        x = np.pad(h.reshape(h.shape[0], *self.in_shape), [(0, 0)] + self._widths)
        return x.reshape(h.shape[0], -1)

    def backward(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        y = a.reshape(a.shape[0], *self.out_shape)
        crop = tuple(slice(b, b + d) for d, (b, _e) in zip(self.in_shape, self._widths))
        return np.ascontiguousarray(y[(slice(None),) + crop]).reshape(a.shape[0], -1)

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        pads = [0] + list(self.pads[:len(self.in_shape)]) + [0] + list(self.pads[len(self.in_shape):])
        return w.node("Pad", [x, w.const(np.array(pads), "pads", np.int64)], mode="constant"), False


@dataclass
class PermuteOperator(SpatialOperator):
    """ONNX ``Transpose`` of the sample axes (batch axis fixed): ``out = x.transpose(perm)``."""

    col_injective = row_single = True

    perm: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.perm = tuple(int(p) for p in self.perm)
        if sorted(self.perm) != list(range(len(self.in_shape))):
            raise ValueError(f"perm {self.perm} is not a permutation of {len(self.in_shape)} axes")

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.in_shape[p] for p in self.perm)

    @property
    def out_channels(self) -> int:
        return self.out_features  # no channel structure is claimed for a permuted layout

    def _move(self, h: np.ndarray, shape, perm) -> np.ndarray:
        h = np.asarray(h)
        x = h.reshape(h.shape[0], *shape).transpose(0, *(p + 1 for p in perm))
        return x.reshape(h.shape[0], -1)

    def forward(self, h: np.ndarray) -> np.ndarray:
        return self._move(h, self.in_shape, self.perm)

    def backward(self, a: np.ndarray) -> np.ndarray:
        return self._move(np.asarray(a, dtype=np.float64), self.out_shape, tuple(np.argsort(self.perm)))

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        return w.node("Transpose", [x], perm=[0] + [p + 1 for p in self.perm]), False


@dataclass
class DiagonalOperator(SpatialOperator):
    """Element-wise scaling ``h * scale`` on a sample of shape ``in_shape`` (an ONNX ``Mul``): an
    element-wise step that could not be folded into a neighbouring weight."""

    col_injective = row_single = True

    scale: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if self.scale.size != _prod(self.in_shape):
            raise ValueError(f"scale of {self.scale.size} values does not fit shape {self.in_shape}")

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.in_shape)

    def forward(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h)
        return h * self.scale.astype(h.dtype)

    def backward(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.float64) * self.scale

    def abs(self) -> "DiagonalOperator":
        return DiagonalOperator(self.in_shape, np.abs(self.scale))

    def copy(self) -> "DiagonalOperator":
        return DiagonalOperator(self.in_shape, self.scale.copy())

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        return w.node("Mul", [x, w.const(self.scale.reshape(self.in_shape), "scale")]), False
