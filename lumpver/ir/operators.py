"""Linear operators: the linear part of a layer behind one interface (DESIGN.md §1, §10).

A layer computes ``z = op(h) + bias``. Code that only needs to apply the map (forward), apply
its transpose (bound back-substitution), or its entry-wise absolute value (interval radii,
rounding margins) uses this interface, so a convolution or a pooling layer can be added as a new
operator class without unrolling it into a dense matrix. ``dense()`` is available when the
matrix is small enough to form (:func:`dense_matrix` refuses above :data:`DENSE_CAP` entries).
:class:`DenseOperator` and :class:`ComposedOperator` (a chain) live here; the spatial operators
(convolution, pooling, padding, permutation, diagonal) in :mod:`lumpver.ir.conv`.

Shapes: features are flattened; a batch of inputs is ``(batch, in_features)``, a batch of
coefficient rows for back-substitution is ``(rows, out_features)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumpver.errors import InputError

#: Largest matrix ``dense()`` forms for an operator that is not stored dense (entries).
DENSE_CAP = 1 << 24
_BATCH_BYTES = 1 << 26  # working memory of one chunk of identity rows


class LinearOperator:
    """Interface of a linear map ``R^in_features -> R^out_features`` (see module docstring)."""

    in_features: int
    out_features: int
    #: each input feature reaches at most one output feature (then ``|A B| = |A| |B|``)
    col_injective: bool = False
    #: each output feature reads at most one input feature (then ``|B A| = |B| |A|``)
    row_single: bool = False

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

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        """``Gemm`` (``transB=1``) or ``MatMul`` + ``Add`` as ``w.source_op`` says (bit-identical
        round trip); the writer ``w`` is :class:`lumpver.ir.onnx_export.OnnxWriter`."""
        b = np.zeros(self.out_features) if bias is None else bias
        if w.source_op == "gemm":
            return w.node("Gemm", [x, w.const(self.weight, "W"), w.const(b, "b")], transB=1), True
        m = w.node("MatMul", [x, w.const(self.weight.T, "W")])
        return w.node("Add", [m, w.const(b, "b")]), True

    @property
    def n_params(self) -> int:
        return int(self.weight.size)

    def copy(self) -> "DenseOperator":
        return DenseOperator(self.weight.copy())


def dense_matrix(op: LinearOperator) -> np.ndarray:
    """The ``(out, in)`` float64 matrix of ``op``, row blocks by ``backward``; :class:`InputError`
    above :data:`DENSE_CAP` entries (convolutions stay operators)."""
    n_out, n_in = op.out_features, op.in_features
    if n_out * n_in > DENSE_CAP:
        raise InputError(f"{type(op).__name__} would need a dense {n_out}x{n_in} matrix "
                         f"({n_out * n_in} entries > {DENSE_CAP}); it is kept as an operator")
    out = np.empty((n_out, n_in))
    step = max(1, _BATCH_BYTES // (8 * max(n_in, n_out)))
    for s in range(0, n_out, step):
        k = min(step, n_out - s)
        rows = np.zeros((k, n_out))
        rows[np.arange(k), np.arange(s, s + k)] = 1.0
        out[s:s + k] = op.backward(rows)
    return out


@dataclass
class ComposedOperator(LinearOperator):
    """Operators applied in order: ``forward = ops[-1](...ops[0](h))`` (the layer owns the bias).

    ``abs()`` is the exact ``|M|`` when every operator before the first non-column-injective one is
    column-injective and every one after it reads one input per output (``abs_exact``, true for
    pad/permute/non-overlapping pooling around one conv or dense map); otherwise it is the product
    of the absolute values, an entry-wise upper bound of ``|M|`` (sound for interval radii and
    rounding margins, looser).
    """

    ops: list[LinearOperator]

    def __post_init__(self) -> None:
        flat: list[LinearOperator] = []
        for op in self.ops:
            flat.extend(op.ops if isinstance(op, ComposedOperator) else [op])
        if not flat:
            raise ValueError("a composed operator needs at least one operator")
        for a, b in zip(flat, flat[1:]):
            if a.out_features != b.in_features:
                raise ValueError(f"{type(a).__name__} gives {a.out_features} features, "
                                 f"{type(b).__name__} expects {b.in_features}")
        self.ops = flat

    @property
    def in_features(self) -> int:  # type: ignore[override]
        return self.ops[0].in_features

    @property
    def out_features(self) -> int:  # type: ignore[override]
        return self.ops[-1].out_features

    @property
    def out_channels(self) -> int:
        return self.ops[-1].out_channels

    @property
    def col_injective(self) -> bool:  # type: ignore[override]
        return all(op.col_injective for op in self.ops)

    @property
    def row_single(self) -> bool:  # type: ignore[override]
        return all(op.row_single for op in self.ops)

    def forward(self, h: np.ndarray) -> np.ndarray:
        for op in self.ops:
            h = op.forward(h)
        return h

    def backward(self, a: np.ndarray) -> np.ndarray:
        for op in reversed(self.ops):
            a = op.backward(a)
        return a

    @property
    def abs_exact(self) -> bool:
        j = next((i for i, op in enumerate(self.ops) if not op.col_injective), len(self.ops))
        return all(op.row_single for op in self.ops[j + 1:])

    def abs(self) -> "ComposedOperator":
        return ComposedOperator([op.abs() for op in self.ops])

    def dense(self) -> np.ndarray:
        return dense_matrix(self)

    @property
    def n_params(self) -> int:
        return sum(op.n_params for op in self.ops)

    def copy(self) -> "ComposedOperator":
        return ComposedOperator([op.copy() for op in self.ops])  # type: ignore[attr-defined]

    def write_onnx(self, w, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        for op in self.ops[:-1]:
            x, _ = w.write(op, x, None)
        return w.write(self.ops[-1], x, bias)
