"""ONNX export: write a :class:`Network` as a plain ONNX graph (DESIGN.md §1).

The graph has the original input and output names and shapes (symbolic dimensions kept):
``Reshape`` to ``[-1, n_inputs]``, the input ops (``Sub/Add/Mul/Div`` with the same
constants, so normalisation is bit-identical), then per layer ``MatMul`` + ``Add`` (or ``Gemm``
with ``transB=1`` where the original used it) and the activation, and a final ``Reshape``
to the output shape when it is not already ``[batch, n_outputs]``. Weights are float32.
"""
from __future__ import annotations

import os

import numpy as np

from lumpver.ir.network import Network
from lumpver.fileio import write_bytes_atomic

OPSET = 13
_ACT_OPS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def _value_info(name: str, dims):
    from onnx import TensorProto, helper

    shape = [d if isinstance(d, int) else str(d) for d in dims]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def network_to_onnx(net: Network, producer: str = "lumpver"):
    """Build an ``onnx.ModelProto`` for ``net`` (checked with ``onnx.checker``)."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, arr: np.ndarray, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    cur = "lv_flat"
    nodes.append(helper.make_node("Reshape", [net.input_name, const("lv_flat_shape", [-1, net.n_inputs], np.int64)],
                                  [cur], name="lv_flatten"))
    for i, op in enumerate(net.input_ops):
        out = f"lv_in{i}"
        nodes.append(helper.make_node(op.op, [cur, const(f"lv_in{i}_c", op.constant)], [out], name=f"lv_input_{op.op}_{i}"))
        cur = out
    for k, layer in enumerate(net.layers):
        w, b = f"lv_W{k}", f"lv_b{k}"
        if layer.source_op == "gemm":
            const(w, layer.weight)
            const(b, layer.bias)
            nodes.append(helper.make_node("Gemm", [cur, w, b], [f"lv_z{k}"], name=f"lv_gemm_{k}", transB=1))
        else:
            const(w, layer.weight.T)
            const(b, layer.bias)
            nodes.append(helper.make_node("MatMul", [cur, w], [f"lv_m{k}"], name=f"lv_matmul_{k}"))
            nodes.append(helper.make_node("Add", [f"lv_m{k}", b], [f"lv_z{k}"], name=f"lv_add_{k}"))
        cur = f"lv_z{k}"
        if layer.activation != "identity":
            attrs = {"alpha": float(layer.alpha)} if layer.activation == "leaky_relu" else {}
            nodes.append(helper.make_node(_ACT_OPS[layer.activation], [cur], [f"lv_h{k}"], name=f"lv_act_{k}", **attrs))
            cur = f"lv_h{k}"
    out_dims = list(net.output_shape)
    flat_out = len(out_dims) == 2 and out_dims[1] == net.n_outputs
    if flat_out:
        nodes.append(helper.make_node("Identity", [cur], [net.output_name], name="lv_output"))
    else:
        target = [(-1 if not isinstance(d, int) else d) for d in out_dims]
        if -1 not in target and int(np.prod(target)) != net.n_outputs:
            # a fixed batch dimension other than the features: let it stretch
            target[0] = -1
        nodes.append(helper.make_node("Reshape", [cur, const("lv_out_shape", target, np.int64)], [net.output_name],
                                      name="lv_output"))
    graph = helper.make_graph(nodes, "lumpver", [_value_info(net.input_name, net.input_shape)],
                              [_value_info(net.output_name, out_dims)], inits)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_onnx(net: Network, path: str | os.PathLike) -> None:
    """Write ``net`` to ``path`` atomically (temporary file, then rename)."""

    write_bytes_atomic(path, network_to_onnx(net).SerializeToString())
