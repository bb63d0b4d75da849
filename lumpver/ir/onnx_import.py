"""ONNX import: normalise an ONNX graph into a :class:`GraphNetwork` or a chain :class:`Network`
(DESIGN.md §1, §10).

The walker follows the nodes in file order. Runs of single-input nodes (segments) go through one
:class:`lumpver.ir.onnx_nodes.Builder` each, exactly as a whole chain network does: ``MatMul`` (+
``Add``), ``Gemm``, element-wise ``Sub/Add/Mul/Div`` by constants (at a segment's start kept as a
``scale`` node: the input normalisation; later ones folded into the neighbouring affine map),
``BatchNormalization`` (folded), shape-only ops, activations ``Relu``, ``LeakyRelu``, ``Sigmoid``,
``Tanh``, and the spatial nodes of :mod:`lumpver.ir.onnx_spatial` (``Conv``, ``AveragePool``,
``GlobalAveragePool``, ``Pad``, feature-reordering ``Transpose``, a final ``Softmax``), which stay
operators. Join nodes end segments and become graph nodes: ``MaxPool``, ``Add``/``Sum`` of two
branches of the same shape (residual), ``Concat`` along channels (axis 1); a value used by more than
one node is a branch point. ``.onnx.gz`` files are read directly. Anything else raises
:class:`InputError` naming the op and node. :func:`load_onnx` returns the chain view and refuses a
DAG naming its first MaxPool/Add/Concat node; :func:`load_graph` returns any supported graph.
"""
from __future__ import annotations

import gzip
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from lumpver.errors import InputError
from lumpver.fileio import read_bytes
from lumpver.ir.activations import BY_ONNX_OP
from lumpver.ir.graph import GNode, GraphBuilder, GraphNetwork
from lumpver.ir.network import Network
from lumpver.ir.onnx_export import out_shape as op_out_shape
from lumpver.ir.onnx_nodes import ELEMENTWISE, Builder, all_finite, apply_node, check_finite_inputs, stored_arrays
from lumpver.ir.onnx_spatial import auto_pads, sample_shape
from lumpver.ir.pooling import MaxPool

GZIP_MAGIC = b"\x1f\x8b"
_SHAPE_TENSOR_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Mul", "Div", "Add",
                     "Sub", "Identity", "ConstantOfShape", "ReduceProd"}
_CONST_OPS = {"Identity", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Neg", "Sqrt", "Reciprocal",
              "DequantizeLinear", "QuantizeLinear"} | ELEMENTWISE


def load_onnx(path: str | os.PathLike) -> Network:
    """Read an ONNX file into a chain :class:`Network`; :class:`InputError` for anything unreadable or
    unsupported, and for a graph that is not a chain (naming its first MaxPool/Add/Concat node)."""
    path = str(path)
    return onnx_to_network(_read_model(path), path)


def load_graph(path: str | os.PathLike) -> GraphNetwork:
    """Read an ONNX file into a :class:`GraphNetwork` (chains and DAGs)."""
    path = str(path)
    return onnx_to_graph(_read_model(path), path)


def load_model(path: str | os.PathLike) -> Network | GraphNetwork:
    """The chain :class:`Network` when the model is a chain, else its :class:`GraphNetwork`."""
    graph = load_graph(path)
    return graph if graph.first_dag_node() is not None else graph.require_chain("", str(path))

def _read_model(path: str):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        data = read_bytes(path)
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


def onnx_to_network(model, path: str = "<model>") -> Network:
    """Normalise an ``onnx.ModelProto`` into a chain :class:`Network` (see module docstring)."""
    return onnx_to_graph(model, path).require_chain("this command", path)


def onnx_to_graph(model, path: str = "<model>") -> GraphNetwork:
    """Normalise an ``onnx.ModelProto`` into a :class:`GraphNetwork` (see module docstring)."""
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
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    walk = _Walk(path, opset, consts, inp.name, in_shape, _consumers(g), g.output[0].name)
    for idx, node in enumerate(g.node):
        where = f"node {idx} ({node.op_type} {node.name!r})" if node.name else f"node {idx} ({node.op_type})"
        walk.visit(node, where)
    out = walk.finish(g.output[0].name)
    if not any(walk.gb.node(n).kind == "affine" for n in walk.gb.graph.nodes):
        raise InputError("the model has no affine layer", path)
    try:
        return GraphNetwork(walk.gb.graph, out, inp.name, g.output[0].name, in_shape,
                            _dims(g.output[0]) or [walk.gb.node(out).size], walk.softmax)
    except ValueError as e:
        raise InputError(str(e), path) from None


def _consumers(g) -> Counter:
    """How many nodes read each tensor (the graph output counts as one reader; ``Shape`` does not)."""
    count: Counter = Counter(t.name for t in g.output)
    for node in g.node:
        if node.op_type != "Shape":
            count.update(set(i for i in node.input if i))
    return count


@dataclass
class _Segment:
    """A run of single-input nodes read from graph node ``start``, built by ``builder``."""

    builder: Builder
    start: str

    @property
    def fresh(self) -> bool:
        b = self.builder
        return not (b.layers or b.pending or b.prefix or b.input_ops or b.diag_scale is not None)


class _Walk:
    """The importer's state: data tensors, the graph node producing each, the open segments."""

    def __init__(self, path: str, opset: int, consts: dict, input_name: str, in_dims: list, consumers: Counter,
                 output_name: str) -> None:
        self.path, self.opset, self.consts, self.consumers = path, opset, consts, consumers
        self.output_name = output_name
        n_in = int(np.prod([d for d in in_dims if isinstance(d, int)])) if in_dims else 1
        self.n_in = n_in
        tracked = [d if isinstance(d, int) else None for d in in_dims] or [1]
        self.gb = GraphBuilder(sample_shape(tracked, n_in) or (n_in,))
        self.producer: dict[str, str] = {input_name: "input"}
        self.tshape: dict[str, list] = {input_name: tracked}
        self.open: dict[str, _Segment] = {}
        self.shape_tensors: set[str] = set()
        self.softmax = False

    # ----- nodes ----------------------------------------------------------------------------
    def visit(self, node, where: str) -> None:
        ins, op, path = list(node.input), node.op_type, self.path
        if op == "Constant":
            self.consts[node.output[0]] = _constant_value(node, path, where)
            return
        data = [i for i in ins if i in self.producer or i in self.open]
        if not data:
            if all(i in self.consts or i == "" for i in ins) and op in _CONST_OPS:
                self.consts[node.output[0]] = _eval_const(node, self.consts, path, where)
            elif op in _SHAPE_TENSOR_OPS and all(i in self.consts or i in self.shape_tensors or i == "" for i in ins):
                self.shape_tensors.update(node.output)
            else:
                raise InputError("unsupported graph structure: the node does not read the network's input "
                                 "through its other nodes", path, where)
            return
        if op == "Shape":
            self.shape_tensors.update(node.output)
            return
        check_finite_inputs(node, self.consts, path, where)
        if op == "MaxPool":
            self._maxpool(node, data[0], where)
        elif op in ("Add", "Sum") and len(data) == 2:
            self._add(node, data, where)
        elif op == "Concat":
            self._concat(node, ins, data, where)
        elif len(data) > 1:
            raise InputError(f"{op} of several branches is not supported (only Add, Sum and Concat join "
                             f"branches)", path, where)
        else:
            self._chain_node(node, data[0], where)

    def _chain_node(self, node, t: str, where: str) -> None:
        seg = self._segment_for(t)
        out = node.output[0]
        if node.op_type in BY_ONNX_OP and seg.fresh and seg.start != "input":  # e.g. Relu after a residual Add
            b = seg.builder
            alpha = float({a.name: _attr(a) for a in node.attribute}.get("alpha", 0.01))
            self._produce(out, GNode("act", (seg.start,), sample_shape(b.shape, b.n) or (b.n,),
                                     activation=BY_ONNX_OP[node.op_type], alpha=alpha, source=where), b.shape)
            return
        apply_node(seg.builder, node, self.consts, self.shape_tensors, t, self.path, where)
        self.open[out] = seg

    def _segment_for(self, t: str) -> _Segment:
        """The open segment ending at ``t`` (when ``t`` has one reader), else a new one reading ``t``."""
        if t in self.open and self.consumers[t] == 1:
            return self.open.pop(t)
        start = self._materialise(t)
        shape = list(self.tshape[t])
        n = self.gb.node(start).size
        return _Segment(Builder(self.path, n, shape, self.opset), start)

    def _produce(self, t: str, node: GNode, shape: list) -> str:
        nid = self.gb.add(node)
        self.producer[t], self.tshape[t] = nid, list(shape)
        return nid

    def _sample(self, t: str, where: str) -> tuple[int, ...]:
        n = self.gb.node(self._materialise(t)).size
        s = sample_shape(self.tshape[t], n)
        if s is None:
            raise InputError(f"the shape {self.tshape[t]} of tensor {t!r} is not known", self.path, where)
        return s

    # ----- segments -------------------------------------------------------------------------
    def _materialise(self, t: str) -> str:
        """The graph node whose value is tensor ``t`` (closing the open segment ending at ``t``)."""
        if t in self.producer:
            return self.producer[t]
        seg = self.open.pop(t)
        b = seg.builder
        if b.softmax_where and t != self.output_name:
            raise InputError("Softmax is supported only as the final op", self.path, b.softmax_where)
        self.softmax = self.softmax or bool(b.softmax_where)
        layers = b.finish()
        last = seg.start
        if b.input_ops:
            shape = self.gb.node(last).shape
            last = self.gb.add(GNode("scale", (last,), shape, steps=list(b.input_ops)))
        for k, layer in enumerate(layers):
            if not (all(all_finite(a) for a in stored_arrays(layer.op)) and all_finite(layer.bias)):
                raise InputError(f"layer {k} has non-finite weights after folding constants (overflow)", self.path)
            if layer.fan_in != self.gb.node(last).size:
                raise InputError(f"a layer expects {layer.fan_in} inputs but its input has "
                                 f"{self.gb.node(last).size} values", self.path)
            shape = op_out_shape(layer.op)
            source, act_source = b.sources[k] if k < len(b.sources) else ("", "")
            last = self.gb.add(GNode("affine", (last,), shape, op=layer.op, bias=layer.bias, source_op=layer.source_op,
                                     source=source))
            if layer.activation != "identity":
                last = self.gb.add(GNode("act", (last,), shape, activation=layer.activation, alpha=layer.alpha,
                                         source=act_source))
        self.producer[t], self.tshape[t] = last, list(b.shape)
        return last

    def finish(self, output: str) -> str:
        if output not in self.producer and output not in self.open:
            raise InputError(f"graph output {output!r} is not computed from the input", self.path)
        return self._materialise(output)

    # ----- join nodes -----------------------------------------------------------------------
    def _maxpool(self, node, t: str, where: str) -> None:
        at = {a.name: _attr(a) for a in node.attribute}
        if len(node.output) > 1 and node.output[1]:
            raise InputError("MaxPool with an Indices output is not supported", self.path, where)
        kernel = [int(k) for k in at.get("kernel_shape", [])]
        s = self._sample(t, where)
        if len(kernel) not in (1, 2) or len(s) != len(kernel) + 1:
            raise InputError(f"MaxPool kernel {kernel} on shape [N, {', '.join(map(str, s))}]: only 1-D and 2-D "
                             f"pooling of [N, C, ...] is supported", self.path, where)
        if any(int(d) != 1 for d in at.get("dilations", [1] * len(kernel))) or int(at.get("storage_order", 0)):
            raise InputError("MaxPool with dilations or storage_order 1 is not supported", self.path, where)
        strides = [int(v) for v in at.get("strides", [1] * len(kernel))]
        pads = auto_pads(at, s[1:], kernel, strides, [1] * len(kernel), self.path, where)
        try:
            pool = MaxPool(s, tuple(kernel), tuple(strides), tuple(pads))
        except ValueError as e:
            raise InputError(f"MaxPool: {e}", self.path, where) from None
        if int(at.get("ceil_mode", 0)):
            raise InputError("MaxPool with ceil_mode=1 is not supported", self.path, where)
        src = self._materialise(t)
        self._produce(node.output[0], GNode("maxpool", (src,), pool.out_shape, pool=pool, source=where),
                      [self.tshape[t][0], *pool.out_shape])

    def _add(self, node, data: list[str], where: str) -> None:
        a, b = (self._sample(t, where) for t in data)
        if a != b:
            raise InputError(f"{node.op_type} of mismatched shapes [N, {', '.join(map(str, a))}] and "
                             f"[N, {', '.join(map(str, b))}]", self.path, where)
        srcs = tuple(self._materialise(t) for t in data)
        self._produce(node.output[0], GNode("add", srcs, a, source=where), self.tshape[data[0]])

    def _concat(self, node, ins: list[str], data: list[str], where: str) -> None:
        if any(i not in data for i in ins):
            raise InputError("Concat of the network's values with constants is not supported", self.path, where)
        shapes = [self._sample(t, where) for t in ins]
        axis = int({a.name: _attr(a) for a in node.attribute}.get("axis", 1))
        rank = len(shapes[0]) + 1
        axis = axis + rank if axis < 0 else axis
        if axis != 1 or any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
            raise InputError(f"Concat along axis {axis} of shapes {[list(s) for s in shapes]}: only channel "
                             f"concatenation (axis 1, equal other dimensions) is supported", self.path, where)
        out = (sum(s[0] for s in shapes), *shapes[0][1:])
        srcs = tuple(self._materialise(t) for t in ins)
        self._produce(node.output[0], GNode("concat", srcs, out, source=where), [self.tshape[ins[0]][0], *out])


def _attr(a):
    from onnx import helper

    return helper.get_attribute_value(a)


def _check_batch_only_symbolic(name: str, dims: list[int | str], path: str) -> None:
    """Only axis 0 (the batch) may be symbolic: the feature count must be known (DESIGN.md §1)."""
    for axis, d in enumerate(dims):
        if axis > 0 and isinstance(d, str):
            raise InputError(f"tensor {name!r} has a symbolic dimension {d!r} at axis {axis}; "
                             f"only the batch axis 0 may be symbolic", path)


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


