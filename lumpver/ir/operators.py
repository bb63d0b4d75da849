"""Linear operators: the linear part of a layer behind one interface (DESIGN.md §1, §10).

A layer computes ``z = op(h) + bias``. Code that only needs to apply the map (forward), apply
its transpose (bound back-substitution), or its entry-wise absolute value (interval radii,
rounding margins) uses this interface, so a convolution or a pooling layer can be added as a new
operator class without unrolling it into a dense matrix. ``dense()`` is available when the
matrix is small enough to form.

Shapes: features are flattened; a batch of inputs is ``(batch, in_features)``, a batch of
coefficient rows for back-substitution is ``(rows, out_features)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class LinearOperator:
    """Interface of a linear map ``R^in_features -> R^out_features`` (see module docstring)."""

    in_features: int
    out_features: int

    def forward(self, h: np.ndarray) -> np.ndarray:
        """``(batch, in) -> (batch, out)``: the map applied to each row (dtype of ``h`` kept)."""
        raise NotImplementedError

    def backward(self, a: np.ndarray) -> np.ndarray:
        """``(rows, out) -> (rows, in)``: ``a @ M`` (the transpose applied to each row)."""
        raise NotImplementedError

    def abs(self) -> "LinearOperator":
        """The operator of the entry-wise absolute values ``|M|``."""
        raise NotImplementedError

    def dense(self) -> np.ndarray:
        """The ``(out, in)`` float64 matrix."""
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        """Stored weights (not counting the bias)."""
        raise NotImplementedError

    @property
    def out_channels(self) -> int:
        """Output channels; a dense map has one channel per output feature."""
        return self.out_features

    @property
    def positions(self) -> int:
        """Spatial positions per output channel (1 for a dense map)."""
        return self.out_features // self.out_channels


@dataclass
class DenseOperator(LinearOperator):
    """A dense matrix ``weight`` of shape ``(out, in)``: ``forward(h) = h @ weight.T``."""

    weight: np.ndarray

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        if self.weight.ndim != 2:
            raise ValueError(f"a dense operator needs a 2-D matrix, got shape {self.weight.shape}")

    @property
    def in_features(self) -> int:  # type: ignore[override]
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:  # type: ignore[override]
        return int(self.weight.shape[0])

    def forward(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h)
        return h @ self.weight.T.astype(h.dtype, copy=False)

    def backward(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a) @ self.weight

    def abs(self) -> "DenseOperator":
        return DenseOperator(np.abs(self.weight))

    def dense(self) -> np.ndarray:
        return self.weight

    @property
    def n_params(self) -> int:
        return int(self.weight.size)

    def copy(self) -> "DenseOperator":
        return DenseOperator(self.weight.copy())
