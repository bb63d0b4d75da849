"""ONNX export: write a :class:`Network` as a plain ONNX graph (DESIGN.md §1, §10).

The graph has the original input and output names and shapes (symbolic dimensions kept):
``Reshape`` of the input to ``[-1, *shape]`` of the first operator's input, the input ops
(``Sub/Add/Mul/Div`` with the same constants, so normalisation is bit-identical), then per layer
the nodes each operator writes (:meth:`write_onnx`: ``MatMul`` + ``Add`` or ``Gemm`` with
``transB=1`` as the original had it, ``Conv`` with its attributes and per-channel bias,
``Pad``, ``AveragePool``, ``GlobalAveragePool``, ``Transpose``, ``Mul``), a ``Flatten`` or
``Reshape`` wherever consecutive operators see different sample shapes, an ``Add`` for a bias no
operator absorbed, the activation, an optional final ``Softmax``, and a final ``Reshape`` to the
output shape when it is not already ``[batch, n_outputs]``. Weights are float32; convolutions
are written as convolutions (never unrolled).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from lumpver.ir.network import Network
from lumpver.fileio import write_bytes_atomic
from lumpver.ir.operators import ComposedOperator, LinearOperator

OPSET = 13
_ACT_OPS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def _value_info(name: str, dims):
    from onnx import TensorProto, helper

    shape = [d if isinstance(d, int) else str(d) for d in dims]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def in_shape(op: LinearOperator) -> tuple[int, ...]:
    """The sample shape an operator reads (``(in_features,)`` for a dense map)."""
    if isinstance(op, ComposedOperator):
        return in_shape(op.ops[0])
    return tuple(getattr(op, "in_shape", (op.in_features,)))


def out_shape(op: LinearOperator) -> tuple[int, ...]:
    """The sample shape an operator writes (``(out_features,)`` for a dense map)."""
    if isinstance(op, ComposedOperator):
        return out_shape(op.ops[-1])
    return tuple(getattr(op, "out_shape", (op.out_features,)))


@dataclass
class OnnxWriter:
    """Collects nodes and float32 initializers; tracks the sample shape of the running tensor."""

    prefix: str = "lv"
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    shape: tuple[int, ...] = ()
    source_op: str = "matmul"  # of the layer being written (dense maps)
    layer: int = -1  # index of the layer being written
    _count: int = 0
    _used: set = field(default_factory=set)

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}_{hint}_{self._count}"

    def const(self, arr, hint: str = "c", dtype=np.float32) -> str:
        """A new initializer: layer ``k``'s weight is ``lv_W{k}`` and its bias ``lv_b{k}`` (quantize
        and tests refer to them); every other constant gets a numbered name."""
        from onnx import numpy_helper

        name = f"{self.prefix}_{hint}{self.layer}"
        if hint not in ("W", "b") or name in self._used:
            name = self._name(hint)
        self._used.add(name)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        out = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}_{op_type}", **attrs))
        return out

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        """Give the running tensor the sample shape ``shape`` (``Flatten`` when that is flat)."""
        if tuple(shape) == tuple(self.shape):
            return x
        flat_to = len(shape) == 1
        self.shape = tuple(shape)
        if flat_to and len(self.nodes) > 0:
            return self.node("Flatten", [x], axis=1)
        return self.node("Reshape", [x, self.const([-1, *shape], "shape", np.int64)])

    def write(self, op: LinearOperator, x: str, bias: np.ndarray | None) -> tuple[str, bool]:
        """Write ``op`` on ``x`` (reshaped to its input shape); whether it absorbed ``bias``."""
        x = self.reshape(x, in_shape(op))
        out, absorbed = op.write_onnx(self, x, bias)  # type: ignore[attr-defined]
        self.shape = out_shape(op)
        return out, absorbed


def write_layer(w: OnnxWriter, k: int, layer, x: str) -> str:
    w.source_op, w.layer = layer.source_op, k
    x, absorbed = w.write(layer.op, x, layer.bias)
    if not absorbed and np.any(layer.bias):
        x = w.node("Add", [x, w.const(layer.bias.reshape(w.shape), "b")])
    if layer.activation != "identity":
        attrs = {"alpha": float(layer.alpha)} if layer.activation == "leaky_relu" else {}
        x = w.node(_ACT_OPS[layer.activation], [x], **attrs)
    return x


def _write_output(w: OnnxWriter, net: Network, x: str) -> None:
    out_dims = list(net.output_shape)
    if list(w.shape) != [net.n_outputs]:
        x = w.reshape(x, (net.n_outputs,))
    if net.output_softmax:
        x = w.node("Softmax", [x], axis=-1)
    if len(out_dims) == 2 and out_dims[1] == net.n_outputs:
        w.node("Identity", [x], net.output_name)
        return
    target = [(-1 if not isinstance(d, int) else d) for d in out_dims]
    if -1 not in target and int(np.prod(target)) != net.n_outputs:
        target[0] = -1  # a fixed batch dimension other than the features: let it stretch
    w.node("Reshape", [x, w.const(target, "out_shape", np.int64)], net.output_name)


def network_to_onnx(net: Network, producer: str = "lumpver"):
    """Build an ``onnx.ModelProto`` for ``net`` (checked with ``onnx.checker``)."""
    w = OnnxWriter()
    first = in_shape(net.layers[0].op)
    x = w.node("Reshape", [net.input_name, w.const([-1, *first], "in_shape", np.int64)])
    w.shape = first
    for op in net.input_ops:
        x = w.node(op.op, [x, w.const(op.constant.reshape(first), "in")])
    for k, layer in enumerate(net.layers):
        x = write_layer(w, k, layer, x)
    return finish_model(w, net, x, producer)


def finish_model(w: OnnxWriter, net, x: str, producer: str):
    """The output steps after tensor ``x``, then the checked ``onnx.ModelProto`` (``net`` is a
    :class:`Network` or a graph network: names, shapes and the final softmax are read from it)."""
    import onnx
    from onnx import helper

    _write_output(w, net, x)
    graph = helper.make_graph(w.nodes, "lumpver", [_value_info(net.input_name, net.input_shape)],
                              [_value_info(net.output_name, net.output_shape)], w.inits)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_onnx(net: Network, path: str | os.PathLike) -> None:
    """Write ``net`` to ``path`` atomically (temporary file, then rename)."""

    write_bytes_atomic(path, network_to_onnx(net).SerializeToString())
