"""ONNX export of a :class:`GraphNetwork` (DESIGN.md §1, §10): the chain writer of
:mod:`lumpver.ir.onnx_export` applied node by node in topological order.

The input is reshaped to the input node's sample shape; a ``scale`` node writes its
``Sub/Add/Mul/Div`` steps with the same constants, an ``affine`` node its operator's nodes and an
``Add`` for a bias no operator absorbed (as a chain layer), ``act`` the activation, ``add`` an
``Add``, ``concat`` a ``Concat`` on axis 1, ``maxpool`` a ``MaxPool``; a ``Reshape``/``Flatten`` is
inserted wherever a node reads its input in another sample shape. Convolutions stay convolutions.
"""
from __future__ import annotations

import os

import numpy as np

from lumpver.fileio import write_bytes_atomic
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.network import Layer
from lumpver.ir.onnx_export import _ACT_OPS, OnnxWriter, finish_model, write_layer


def graph_to_onnx(net: GraphNetwork, producer: str = "lumpver"):
    """Build a checked ``onnx.ModelProto`` for ``net`` (see the module docstring)."""
    w = OnnxWriter()
    first = net.node("input").shape
    names = {"input": w.node("Reshape", [net.input_name, w.const([-1, *first], "in_shape", np.int64)])}
    shapes = {"input": tuple(first)}
    for k, nid in enumerate(net.order[1:]):
        node = net.node(nid)
        names[nid], shapes[nid] = _write_node(w, k, node, [names[i] for i in node.inputs],
                                              [shapes[i] for i in node.inputs])
    w.shape = shapes[net.output]
    return finish_model(w, net, names[net.output], producer)


def _as(w: OnnxWriter, x: str, have: tuple[int, ...], want: tuple[int, ...]) -> str:
    """Tensor ``x`` (sample shape ``have``) in sample shape ``want``."""
    w.shape = have
    return w.reshape(x, tuple(want))


def _write_node(w: OnnxWriter, k: int, node: GNode, xs: list[str], have: list[tuple]) -> tuple[str, tuple]:
    """Write one node; its output tensor name and sample shape."""
    if node.kind == "scale":
        w.shape = have[0]
        x = xs[0]
        for op in node.steps:
            x = w.node(op.op, [x, w.const(op.constant.reshape(have[0]), "in")])
        return x, have[0]
    if node.kind == "affine":
        w.shape = have[0]
        x = write_layer(w, k, Layer(node.op, node.bias, "identity", source_op=node.source_op), xs[0])
        return x, tuple(w.shape)
    if node.kind == "act":
        attrs = {"alpha": float(node.alpha)} if node.activation == "leaky_relu" else {}
        return w.node(_ACT_OPS[node.activation], [xs[0]], **attrs), have[0]
    if node.kind == "add":
        return w.node("Add", [xs[0], _as(w, xs[1], have[1], have[0])]), have[0]
    if node.kind == "concat":
        rest = tuple(node.shape[1:])
        per = int(np.prod(rest)) if rest else 1
        parts = [_as(w, x, h, (int(np.prod(h)) // per, *rest)) for x, h in zip(xs, have)]
        return w.node("Concat", parts, axis=1), tuple(node.shape)
    x = _as(w, xs[0], have[0], tuple(node.pool.in_shape))
    return node.pool.write_onnx(w, x), tuple(node.pool.out_shape)


def save_graph(net: GraphNetwork, path: str | os.PathLike) -> None:
    """Write ``net`` to ``path`` atomically."""
    write_bytes_atomic(path, graph_to_onnx(net).SerializeToString())
