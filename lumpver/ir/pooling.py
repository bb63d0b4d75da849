"""Max pooling (ONNX ``MaxPool``, 1-D or 2-D, ``ceil_mode`` 0, no dilation): a nonlinear node of the
graph IR (DESIGN.md §10), stored by its geometry and evaluated through a window index table.

Features are flattened row-major over ``(C, H, W)`` (or ``(C, L)``). :attr:`MaxPool.windows` is the
``(out_features, k)`` table of the flat input feature read by every window position, ``-1`` where
the window covers padding (ONNX pads a max pool with ``-inf``, so padding never wins).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lumpver.ir.conv import _geom, _Geom, _patches


@dataclass
class MaxPool:
    """``y[c, p] = max over the window of output position p of x[c, .]`` (see module docstring)."""

    in_shape: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    windows: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nd = len(self.kernel)
        if nd not in (1, 2) or len(self.in_shape) != nd + 1:
            raise ValueError(f"pooling kernel {list(self.kernel)} does not fit input shape {list(self.in_shape)}")
        self.in_shape = tuple(int(d) for d in self.in_shape)
        self.kernel = tuple(int(k) for k in self.kernel)
        self.strides = tuple(int(s) for s in (self.strides or (1,) * nd))
        self.pads = tuple(int(p) for p in (self.pads or (0,) * (2 * nd)))
        if min(self.geom.out_hw) < 1 or any(p >= k for p, k in zip(self.pads, self.kernel * 2)):
            raise ValueError(f"max pooling output would be empty or pads {list(self.pads)} reach a whole window")
        self.windows = self._window_table()

    @property
    def geom(self) -> _Geom:
        return _geom(self.kernel, self.strides, (1,) * len(self.kernel), self.pads, self.in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        ho, wo = self.geom.out_hw
        return (self.in_shape[0], wo) if len(self.kernel) == 1 else (self.in_shape[0], ho, wo)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_features(self) -> int:
        return int(np.prod(self.out_shape))

    def _window_table(self) -> np.ndarray:
        g, c = self.geom, self.in_shape[0]
        h, w = g.in_hw
        idx = np.arange(c * h * w, dtype=np.float64).reshape(1, c, h, w)
        t, l, b, r = g.pads
        padded = np.pad(idx, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=-1.0)
        win = _patches(padded, g)[0]  # (C, Ho, Wo, kh, kw)
        return win.reshape(c * g.out_hw[0] * g.out_hw[1], -1).astype(np.int64)

    def gather(self, h: np.ndarray, fill: float) -> np.ndarray:
        """``(batch, out_features, k)``: the window values of every output, ``fill`` on padding."""
        h = np.asarray(h)
        vals = h[:, np.maximum(self.windows, 0)]
        return np.where(self.windows >= 0, vals, np.asarray(fill, dtype=h.dtype)) if (self.windows < 0).any() else vals

    def forward(self, h: np.ndarray) -> np.ndarray:
        """``(batch, in) -> (batch, out)`` (dtype of ``h`` kept: max is exact in any precision)."""
        return self.gather(h, -np.inf).max(axis=2)

    def argmax(self, h: np.ndarray) -> np.ndarray:
        """``(batch, out)`` flat input index of the (first) maximum of every window."""
        pos = self.gather(h, -np.inf).argmax(axis=2)
        return self.windows[np.arange(self.windows.shape[0])[None, :], pos]

    def write_onnx(self, w, x: str) -> str:
        """The ``MaxPool`` node (the writer ``w`` is :class:`lumpver.ir.onnx_export.OnnxWriter`)."""
        return w.node("MaxPool", [x], kernel_shape=list(self.kernel), strides=list(self.strides),
                      pads=list(self.pads))
