"""ONNX node handlers of the importer (DESIGN.md §1, §10): the :class:`Builder` that turns one
chain of ONNX nodes (a segment of the graph, :mod:`lumpver.ir.onnx_import`) into layers, folding
element-wise affine steps and BatchNormalization into neighbouring operators, and one handler per
supported op (``MatMul``, ``Gemm``, ``BatchNormalization``, shape-only ops, activations, the
spatial ops of :mod:`lumpver.ir.onnx_spatial`). Every refusal is an :class:`InputError` naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lumpver.errors import InputError
from lumpver.ir import onnx_spatial as spatial
from lumpver.ir.activations import BY_ONNX_OP
from lumpver.ir.conv import DiagonalOperator
from lumpver.ir.network import InputOp, Layer
from lumpver.ir.onnx_spatial import fold_input_affine, sample_shape, scale_rows
from lumpver.ir.operators import ComposedOperator, DenseOperator, LinearOperator

_SHAPE_ONLY = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
_ACTIVATIONS = BY_ONNX_OP

@dataclass
class Builder:
    """Incremental construction of the layer list while walking the graph in order.

    Weight-free operators (pad, pooling, permutation) met after a closed layer wait in
    ``prefix`` and open the next layer's :class:`ComposedOperator`; element-wise affine steps
    after a closed layer wait in ``diag_scale/diag_shift`` and fold into the next operator.
    """

    path: str
    n: int  # current feature count
    shape: list[Optional[int]]  # tracked data shape (None = batch / unknown)
    opset: int = 13
    layers: list[Layer] = field(default_factory=list)
    input_ops: list[InputOp] = field(default_factory=list)
    pending: Optional[Layer] = None  # affine map waiting for its activation
    prefix: list[LinearOperator] = field(default_factory=list)
    diag_scale: Optional[np.ndarray] = None  # element-wise affine after a closed layer
    diag_shift: Optional[np.ndarray] = None
    col_layout: bool = False  # features on axis 0 ([n] or [n, k]) rather than the last axis
    softmax_where: str = ""  # the final Softmax node, once seen
    where: str = ""  # the ONNX node being applied (set by apply_node)
    #: per closed layer: the ONNX nodes that opened its affine map and applied its activation
    sources: list[tuple[str, str]] = field(default_factory=list)
    pending_source: str = ""

    @property
    def sample(self) -> tuple[int, ...]:
        return sample_shape(self.shape, self.n) or (self.n,)

    @property
    def spatial(self) -> bool:
        return bool(self.prefix) or len(self.sample) > 1

    # -- element-wise affine steps -------------------------------------------------------
    def elementwise(self, op: str, c: np.ndarray) -> None:
        if self.pending is None and not self.layers and not self.prefix:
            self.input_ops.append(InputOp(op, c))
            return
        scale, shift = InputOp(op, c).as_affine()
        if self.pending is not None:
            self.pending.op = scale_rows(self.pending.op, scale, self.sample)
            self.pending.bias = scale * self.pending.bias + shift
            return
        if self.diag_scale is None:
            self.diag_scale, self.diag_shift = np.ones(self.n), np.zeros(self.n)
        self.diag_scale, self.diag_shift = scale * self.diag_scale, scale * self.diag_shift + shift

    def affine(self, op, bias: np.ndarray, source_op: str) -> None:
        """Start a new affine map (a matrix or an operator) after the waiting prefix and diagonal;
        a pending map without activation closes as an identity layer."""
        if self.pending is not None:
            self._close("identity", 0.01)
        op = op if isinstance(op, LinearOperator) else DenseOperator(op)
        if self.diag_scale is not None:
            op, bias = fold_input_affine(op, self.diag_scale, self.diag_shift, bias, self.sample)
            self.diag_scale = self.diag_shift = None
        if self.prefix:
            op, self.prefix = ComposedOperator(self.prefix + [op]), []
        self.pending = Layer(op, bias, "identity", source_op=source_op)
        self.pending_source = self.where
        self.n = op.out_features

    def linear(self, op: LinearOperator) -> None:
        """A weight-free linear operator (pad, pooling, permutation) on the running value."""
        if self.pending is not None:
            self.pending.op = ComposedOperator([self.pending.op, op])
            self.pending.bias = op.forward(self.pending.bias[None, :])[0]
        else:
            if self.diag_scale is not None:
                if not np.all(self.diag_scale == 1.0):
                    self.prefix.append(DiagonalOperator(self.sample, self.diag_scale))
                self.diag_scale, self.diag_shift = np.ones(op.out_features), op.forward(self.diag_shift[None, :])[0]
            self.prefix.append(op)
        self.n = op.out_features
        self.shape = [self.shape[0] if self.shape else None, *op.out_shape]  # type: ignore[attr-defined]

    def activation(self, act: str, alpha: float) -> None:
        if self.pending is None:  # activation on a vector without an affine map: an identity map
            self._identity_map()
        self._close(act, alpha)

    def _identity_map(self) -> None:
        """Open a layer with no weights of its own: the waiting prefix and diagonal (or identity)."""
        if not self.spatial:
            self.affine(np.eye(self.n), np.zeros(self.n), "matmul")  # folds the waiting diagonal
            return
        chain, bias = list(self.prefix), np.zeros(self.n)
        if self.diag_scale is not None:
            if not np.all(self.diag_scale == 1.0):
                chain.append(DiagonalOperator(self.sample, self.diag_scale))
            bias = self.diag_shift
        chain = chain or [DiagonalOperator(self.sample, np.ones(self.n))]
        self.pending = Layer(chain[0] if len(chain) == 1 else ComposedOperator(chain), bias, "identity")
        self.pending_source = self.where
        self.prefix, self.diag_scale, self.diag_shift = [], None, None

    def _close(self, act: str, alpha: float) -> None:
        layer = self.pending
        assert layer is not None
        layer.activation, layer.alpha = act, alpha
        self.layers.append(layer)
        self.sources.append((self.pending_source, self.where))
        self.pending = None

    def finish(self) -> list[Layer]:
        if self.pending is not None:
            self._close("identity", 0.01)
        if self.prefix or self.diag_scale is not None:
            self._identity_map()
            self._close("identity", 0.01)
        return self.layers


def stored_arrays(op: LinearOperator) -> list[np.ndarray]:
    """The arrays an operator stores (weights, filters, scales), never a dense expansion."""
    if isinstance(op, ComposedOperator):
        return [a for o in op.ops for a in stored_arrays(o)]
    return [getattr(op, a) for a in ("weight", "scale") if getattr(op, a, None) is not None]


def all_finite(a: np.ndarray) -> bool:
    """No NaN or Inf in ``a``: a NaN or Inf makes the sum non-finite, so a finite sum settles it in one
    pass without a temporary; a non-finite sum (also an overflow of finite values) checks element-wise."""
    return bool(np.isfinite(np.sum(a)) or np.isfinite(a).all())


def check_finite_inputs(node, consts: dict, path: str, where: str) -> None:
    """Refuse NaN/Inf in the constants (weights, biases, normalisation) a data node uses."""
    for name in node.input:
        value = consts.get(name)
        if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating) and not all_finite(value):
            bad = "NaN" if np.isnan(value).any() else "Inf"
            raise InputError(f"initializer {name!r} holds {bad} values", path, where)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _feature_vector(c: np.ndarray, b: Builder, path: str, where: str) -> np.ndarray:
    """Broadcast a constant operand to one sample's data shape and flatten it to ``n`` values."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.full(b.n, float(c.reshape(-1)[0]))
    sample = [1 if d is None else d for d in b.shape]
    try:
        full = np.broadcast_to(c, np.broadcast_shapes(tuple(sample), c.shape))
    except ValueError:
        raise InputError(f"constant of shape {list(c.shape)} does not broadcast to data shape {b.shape}",
                         path, where) from None
    if full.size != b.n:
        raise InputError(f"constant of shape {list(c.shape)} changes the data size {b.n} -> {full.size}", path, where)
    return np.ascontiguousarray(full).reshape(-1).astype(np.float64)


def apply_node(b: Builder, node, consts, shape_tensors, data, path, where) -> None:
    b.where = where
    op = node.op_type
    ins = list(node.input)
    at = _attrs(node)
    if b.softmax_where and (op not in _SHAPE_ONLY or op == "Transpose"):
        raise InputError(f"Softmax is supported only as the final op (it is followed by {op})", path,
                         b.softmax_where)
    if op in _SHAPE_ONLY:
        _shape_op(b, op, ins, at, consts, shape_tensors, path, where)
    elif op in ELEMENTWISE:
        other = [i for i in ins if i != data]
        if len(other) != 1 or other[0] not in consts:
            raise InputError(f"{op} must combine the running value with a constant", path, where)
        if op in ("Sub", "Div") and ins[0] != data:
            raise InputError(f"{op} with the running value as second operand is not supported", path, where)
        b.elementwise(op, _feature_vector(consts[other[0]], b, path, where))
    elif op == "MatMul":
        _matmul(b, ins, consts, data, path, where)
    elif op == "Gemm":
        _gemm(b, ins, at, consts, data, path, where)
    elif op == "BatchNormalization":
        _batchnorm(b, ins, at, consts, path, where)
    elif op in _ACTIVATIONS:
        b.activation(_ACTIVATIONS[op], float(at.get("alpha", 0.01)))
    elif op in _SPATIAL:
        _SPATIAL[op](b, ins, at, consts, data, path, where)
    else:
        raise InputError(f"unsupported op {op}", path, where)


def _softmax(b: Builder, ins, at, consts, data, path, where) -> None:
    axis = int(at.get("axis", 1 if b.opset < 13 else -1))
    if b.col_layout or not spatial.softmax_axis_ok(b.shape, b.n, axis, b.opset):
        raise InputError(f"Softmax over axis {axis} of shape {b.shape} does not normalise all outputs of a "
                         f"sample", path, where)
    b.softmax_where = where


_SPATIAL = {"Conv": spatial.conv, "AveragePool": spatial.average_pool, "Pad": spatial.pad,
            "GlobalAveragePool": spatial.global_average_pool, "Softmax": _softmax}


def _shape_op(b: Builder, op, ins, at, consts, shape_tensors, path, where) -> None:
    shape = b.shape
    if op == "Flatten":
        axis = int(at.get("axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        b.shape = [_prod(shape[:axis]), _prod(shape[axis:])]
        b.col_layout = False
    elif op == "Reshape":
        target = ins[1] if len(ins) > 1 else None
        if target in consts:
            b.shape = _reshape_target(shape, [int(v) for v in np.asarray(consts[target]).reshape(-1)], b.n)
        else:
            b.shape = [None, b.n]
        b.col_layout = len(b.shape) >= 1 and b.shape[0] == b.n and b.n > 1 and (len(b.shape) == 1 or b.shape[-1] == 1)
    elif op == "Transpose":
        perm = list(at.get("perm", range(len(shape) - 1, -1, -1)))
        big = [i for i in range(len(shape)) if shape[i] is None or shape[i] > 1]
        if [p for p in perm if p in big] != big:
            spatial.permute(b, perm, path, where)
            return
        b.shape = [shape[p] for p in perm]
        b.col_layout = bool(b.shape) and b.shape[0] == b.n and b.n > 1
    elif op in ("Squeeze", "Unsqueeze"):
        axes = at.get("axes")
        if axes is None and len(ins) > 1 and ins[1] in consts:
            axes = [int(v) for v in np.asarray(consts[ins[1]]).reshape(-1)]
        if op == "Squeeze":
            keep = [d for i, d in enumerate(shape) if not ((axes is None and d == 1) or (axes is not None and (
                i in axes or i - len(shape) in axes)))]
            b.shape = keep or [1]
        else:
            new = list(shape)
            for a in sorted(axes or []):
                new.insert(a if a >= 0 else len(new) + a + 1, 1)
            b.shape = new
    # Identity, Dropout, Cast: nothing changes


def _prod(dims) -> Optional[int]:
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


def _reshape_target(shape, target: list[int], n: int) -> list[Optional[int]]:
    out: list[Optional[int]] = []
    for i, t in enumerate(target):
        out.append(shape[i] if t == 0 and i < len(shape) else (None if t == -1 else t))
    known = _prod([d for d in out if d is not None])
    if out.count(None) == 1 and known and n % known == 0 and (n // known) > 1:
        out[out.index(None)] = n // known
    return out


def _matmul(b: Builder, ins, consts, data, path, where) -> None:
    if ins[0] == data and ins[1] in consts:
        c = np.asarray(consts[ins[1]], dtype=np.float64)
        c = c.reshape(-1, 1) if c.ndim == 1 else c
        if c.ndim != 2 or c.shape[0] != b.n:
            raise InputError(f"MatMul weight of shape {list(c.shape)} does not match {b.n} features", path, where)
        b.affine(c.T, np.zeros(c.shape[1]), "matmul")  # a transposed view: no copy
        b.shape = (b.shape[:-1] if len(b.shape) > 1 else []) + [c.shape[1]]
    elif ins[1] == data and ins[0] in consts:
        c = np.asarray(consts[ins[0]], dtype=np.float64)
        c = c.reshape(1, -1) if c.ndim == 1 else c
        if c.ndim != 2 or c.shape[1] != b.n:
            raise InputError(f"MatMul weight of shape {list(c.shape)} does not match {b.n} features", path, where)
        b.affine(c.copy(), np.zeros(c.shape[0]), "matmul")
        b.shape = [c.shape[0]] + (b.shape[1:] if len(b.shape) > 1 else [])
        b.col_layout = True
    else:
        raise InputError("MatMul must multiply the running value by a constant matrix", path, where)


def _gemm(b: Builder, ins, at, consts, data, path, where) -> None:
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    ta, tb = int(at.get("transA", 0)), int(at.get("transB", 0))
    bias_name = ins[2] if len(ins) > 2 and ins[2] else None
    if bias_name is not None and bias_name not in consts:
        raise InputError("Gemm bias C must be a constant", path, where)
    if ins[0] == data and ins[1] in consts:
        bm = np.asarray(consts[ins[1]], dtype=np.float64)
        bm = bm.T if tb else bm  # (n, m)
        if bm.shape[0] != b.n:
            raise InputError(f"Gemm weight of shape {list(bm.shape)} does not match {b.n} features", path, where)
        weight = alpha * bm.T
    elif ins[1] == data and ins[0] in consts:
        am = np.asarray(consts[ins[0]], dtype=np.float64)
        am = am.T if ta else am  # (m, n)
        if am.shape[1] != b.n:
            raise InputError(f"Gemm weight of shape {list(am.shape)} does not match {b.n} features", path, where)
        weight = alpha * am
    else:
        raise InputError("Gemm must multiply the running value by a constant matrix", path, where)
    m = weight.shape[0]
    bias = np.zeros(m)
    if bias_name is not None:
        c = np.asarray(consts[bias_name], dtype=np.float64)
        if c.size not in (1, m):
            raise InputError(f"Gemm bias of shape {list(c.shape)} does not match {m} outputs", path, where)
        bias = beta * np.broadcast_to(c.reshape(-1), (m,)).astype(np.float64)
    plain = alpha == 1.0 and beta == 1.0 and ins[0] == data and not ta
    b.affine(np.ascontiguousarray(weight), bias, "gemm" if plain else "matmul")
    b.shape = [None if not b.shape else b.shape[0], m] if ins[0] == data else [m, None]
    b.col_layout = ins[0] != data


def _batchnorm(b: Builder, ins, at, consts, path, where) -> None:
    if not all(i in consts for i in ins[1:5]):
        raise InputError("BatchNormalization parameters must be constants", path, where)
    scale, bias, mean, var = (np.asarray(consts[i], dtype=np.float64).reshape(-1) for i in ins[1:5])
    eps = float(at.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    t = bias - mean * s
    channels = s.size
    # channel axis is 1 for [N, C, ...] data; features are row-major over (C, H, W, ...)
    if b.n % channels:
        raise InputError(f"BatchNormalization over {channels} channels does not divide {b.n} features", path, where)
    rep = b.n // channels
    b.elementwise("Mul", np.repeat(s, rep))
    b.elementwise("Add", np.repeat(t, rep))
