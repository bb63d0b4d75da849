"""ONNX import: normalise a feed-forward ONNX graph into a :class:`Network` (DESIGN.md §1, §10).

Supported: ``MatMul`` (+ ``Add``), ``Gemm`` (``transA/transB/alpha/beta``), element-wise
``Sub/Add/Mul/Div`` by constants (input normalisation is kept as input ops; later ones are
folded into the neighbouring affine layer), ``BatchNormalization`` (folded), ``Flatten``,
``Reshape``, ``Squeeze``, ``Unsqueeze``, ``Identity``, ``Dropout``, ``Cast``, order-preserving
``Transpose``, activations ``Relu``, ``LeakyRelu``, ``Sigmoid``, ``Tanh``; symbolic batch
dimensions; row-vector (``x @ W``) and column-vector (``W @ x``) layouts; ``.onnx.gz`` files.
Spatial nodes (``Conv``, ``AveragePool``, ``GlobalAveragePool``, ``Pad``, feature-reordering
``Transpose``, a final ``Softmax``) are read by :mod:`lumpver.ir.onnx_spatial` into operators
that stay operators (no dense unrolling). Anything else (``MaxPool``, residual branches, ...)
raises :class:`InputError` naming the op and node.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lumpver.errors import InputError
from lumpver.ir import onnx_spatial as spatial
from lumpver.ir.activations import BY_ONNX_OP
from lumpver.ir.conv import DiagonalOperator
from lumpver.ir.network import InputOp, Layer, Network
from lumpver.ir.onnx_spatial import fold_input_affine, sample_shape, scale_rows
from lumpver.ir.operators import ComposedOperator, DenseOperator, LinearOperator

_SHAPE_ONLY = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
_ACTIVATIONS = BY_ONNX_OP
GZIP_MAGIC = b"\x1f\x8b"
_SHAPE_TENSOR_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Mul", "Div", "Add",
                     "Sub", "Identity", "ConstantOfShape", "ReduceProd"}


def load_onnx(path: str | os.PathLike) -> Network:
    """Read an ONNX file into a :class:`Network`; :class:`InputError` for anything unreadable or unsupported."""
    path = str(path)
    model = _read_model(path)
    return onnx_to_network(model, path)


def _read_model(path: str):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == GZIP_MAGIC:  # VNN-COMP ships .onnx.gz: recognised by content, not suffix
            data = gzip.decompress(data)
    except OSError as e:
        raise InputError(f"cannot read model: {e.strerror or e}", path) from None
    except EOFError:
        raise InputError("truncated gzip file", path) from None
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InputError(f"not a valid ONNX file ({type(e).__name__})", path) from None
    if not model.graph.node or not model.graph.output:
        raise InputError("not a valid ONNX file (no graph nodes or outputs)", path)
    return model


def _dims(value_info) -> list[int | str]:
    t = value_info.type.tensor_type
    out: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "batch")
    return out


@dataclass
class _Builder:
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
        self.prefix, self.diag_scale, self.diag_shift = [], None, None

    def _close(self, act: str, alpha: float) -> None:
        layer = self.pending
        assert layer is not None
        layer.activation, layer.alpha = act, alpha
        self.layers.append(layer)
        self.pending = None

    def finish(self) -> list[Layer]:
        if self.pending is not None:
            self._close("identity", 0.01)
        if self.prefix or self.diag_scale is not None:
            self._identity_map()
            self._close("identity", 0.01)
        return self.layers


def onnx_to_network(model, path: str = "<model>") -> Network:
    """Normalise an ``onnx.ModelProto`` into a :class:`Network` (see module docstring)."""
    from onnx import numpy_helper

    g = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise InputError(f"expected exactly one (non-initializer) input, found {len(inputs)}", path)
    if len(g.output) != 1:
        raise InputError(f"expected exactly one output, found {len(g.output)}", path)
    inp = inputs[0]
    if inp.type.tensor_type.elem_type not in (1, 11):  # FLOAT, DOUBLE
        raise InputError(f"input {inp.name!r} is not a float tensor", path)
    in_shape = _dims(inp)
    _check_batch_only_symbolic(inp.name, in_shape, path)
    _check_batch_only_symbolic(g.output[0].name, _dims(g.output[0]), path)
    n_in = int(np.prod([d for d in in_shape if isinstance(d, int)])) if in_shape else 1
    tracked = [d if isinstance(d, int) else None for d in in_shape] or [1]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    b = _Builder(path, n_in, tracked, opset)
    data = inp.name  # name of the tensor that carries the network's value
    shape_tensors: set[str] = set()

    for idx, node in enumerate(g.node):
        where = f"node {idx} ({node.op_type} {node.name!r})" if node.name else f"node {idx} ({node.op_type})"
        ins = list(node.input)
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant_value(node, path, where)
            continue
        uses_data = data in ins
        if not uses_data:
            if all(i in consts or i == "" for i in ins) and node.op_type in {"Identity", "Cast", "Reshape", "Transpose",
                                                                              "Unsqueeze", "Squeeze", "Neg", "Sqrt",
                                                                              "Reciprocal", "DequantizeLinear",
                                                                              "QuantizeLinear"} | _ELEMENTWISE:
                consts[node.output[0]] = _eval_const(node, consts, path, where)
                continue
            if node.op_type in _SHAPE_TENSOR_OPS and all(i in consts or i in shape_tensors or i == "" for i in ins):
                shape_tensors.update(node.output)
                continue
            raise InputError(f"unsupported graph structure at {where}: it does not consume the network's "
                             f"running value (branches and multiple data paths are not supported)", path, where)
        if node.op_type == "Shape":
            shape_tensors.update(node.output)
            continue
        _check_finite_inputs(node, consts, path, where)
        _apply_node(b, node, consts, shape_tensors, data, path, where)
        data = node.output[0]

    if g.output[0].name != data:
        raise InputError(f"graph output {g.output[0].name!r} is not the end of the feed-forward chain", path)
    layers = b.finish()
    if not layers:
        raise InputError("the model has no affine layer", path)
    if layers[0].fan_in != n_in:
        raise InputError(f"first layer expects {layers[0].fan_in} inputs but the input has {n_in} values", path)
    for k, layer in enumerate(layers):
        if not (all(np.isfinite(a).all() for a in _stored_arrays(layer.op)) and np.isfinite(layer.bias).all()):
            raise InputError(f"layer {k} has non-finite weights after folding constants (overflow)", path)
    out_shape = _dims(g.output[0]) or [b.n]
    return Network(layers, b.input_ops, inp.name, g.output[0].name, in_shape, out_shape, bool(b.softmax_where))


def _stored_arrays(op: LinearOperator) -> list[np.ndarray]:
    """The arrays an operator stores (weights, filters, scales), never a dense expansion."""
    if isinstance(op, ComposedOperator):
        return [a for o in op.ops for a in _stored_arrays(o)]
    return [getattr(op, a) for a in ("weight", "scale") if getattr(op, a, None) is not None]


def _check_batch_only_symbolic(name: str, dims: list[int | str], path: str) -> None:
    """Only axis 0 (the batch) may be symbolic: the feature count must be known (DESIGN.md §1)."""
    for axis, d in enumerate(dims):
        if axis > 0 and isinstance(d, str):
            raise InputError(f"tensor {name!r} has a symbolic dimension {d!r} at axis {axis}; "
                             f"only the batch axis 0 may be symbolic", path)


def _check_finite_inputs(node, consts: dict, path: str, where: str) -> None:
    """Refuse NaN/Inf in the constants (weights, biases, normalisation) a data node uses."""
    for name in node.input:
        value = consts.get(name)
        if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
            bad = "NaN" if np.isnan(value).any() else "Inf"
            raise InputError(f"initializer {name!r} holds {bad} values", path, where)


def _constant_value(node, path: str, where: str) -> np.ndarray:
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int"):
            return np.array(helper.get_attribute_value(a))
        if a.name in ("value_floats", "value_ints"):
            return np.array(helper.get_attribute_value(a))
    raise InputError("Constant node without a supported value attribute", path, where)


def _eval_const(node, consts: dict, path: str, where: str) -> np.ndarray:
    """Evaluate a node whose inputs are all constants (weights stored behind Transpose/Cast/...)."""
    try:
        from onnx.reference import ReferenceEvaluator
        import onnx

        g = onnx.helper.make_graph(
            [node], "c", [],
            [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)],
            [onnx.numpy_helper.from_array(np.asarray(consts[i]), i) for i in node.input if i],
        )
        m = onnx.helper.make_model(g)
        return np.asarray(ReferenceEvaluator(m).run(None, {})[0])
    except Exception as e:  # noqa: BLE001 - any failure is a model problem
        raise InputError(f"cannot evaluate constant expression ({e.__class__.__name__})", path, where) from None


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _feature_vector(c: np.ndarray, b: _Builder, path: str, where: str) -> np.ndarray:
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


def _apply_node(b: _Builder, node, consts, shape_tensors, data, path, where) -> None:
    op = node.op_type
    ins = list(node.input)
    at = _attrs(node)
    if b.softmax_where and (op not in _SHAPE_ONLY or op == "Transpose"):
        raise InputError(f"Softmax is supported only as the final op (it is followed by {op})", path,
                         b.softmax_where)
    if op in _SHAPE_ONLY:
        _shape_op(b, op, ins, at, consts, shape_tensors, path, where)
    elif op in _ELEMENTWISE:
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


def _softmax(b: _Builder, ins, at, consts, data, path, where) -> None:
    axis = int(at.get("axis", 1 if b.opset < 13 else -1))
    if b.col_layout or not spatial.softmax_axis_ok(b.shape, b.n, axis, b.opset):
        raise InputError(f"Softmax over axis {axis} of shape {b.shape} does not normalise all outputs of a "
                         f"sample", path, where)
    b.softmax_where = where


_SPATIAL = {"Conv": spatial.conv, "AveragePool": spatial.average_pool, "Pad": spatial.pad,
            "GlobalAveragePool": spatial.global_average_pool, "Softmax": _softmax}


def _shape_op(b: _Builder, op, ins, at, consts, shape_tensors, path, where) -> None:
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


def _matmul(b: _Builder, ins, consts, data, path, where) -> None:
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


def _gemm(b: _Builder, ins, at, consts, data, path, where) -> None:
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


def _batchnorm(b: _Builder, ins, at, consts, path, where) -> None:
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
