"""Symmetric uniform weight quantisation and QDQ export (DESIGN.md §8).

``q = clip(round(w / s), -2^(b-1), 2^(b-1) - 1)`` with ``s = max|w| / (2^(b-1) - 1)`` per tensor
or per output channel (row of a dense weight; filter of a convolution, whose stored weights
``(out, in/groups, *kernel)`` are quantised as stored, never unrolled: DESIGN.md §10); the quantised
network g has the float32 weights ``fl32(fl32(q) * fl32(s))`` (exactly what ``DequantizeLinear``
computes), so the QDQ file and the float export describe the same g. Weights of every layer are
quantised; biases and input normalisation stay float32. 4-bit values are stored in int8 initialisers.

A conv layer's filters become an int8 initialiser behind ``DequantizeLinear`` (per-channel scales on
axis 0) feeding the ``Conv``. Dense layers are written as ``Gemm`` (``transB=1``): onnxruntime's
extended graph optimisations rewrite ``DequantizeLinear -> MatMul`` into ``MatMulNBits`` /
dynamically quantised kernels whose results differ from the ONNX semantics by ~1e-3 (measured),
which would void the certificate; ``DequantizeLinear -> Gemm`` is evaluated as written.

Graph networks (residual Add, Concat, MaxPool; DESIGN.md §10): every ``affine`` node's stored weights
are quantised by the same rule (:func:`quantize_graph`) and the graph is written by
:mod:`lumpver.ir.onnx_graph_export` (convolutions, Adds, Concats and MaxPools stay), with the same
``DequantizeLinear`` in front of each weight (node ``k`` of the topological order writes ``lv_W{k}``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from lumpver.fileio import write_bytes_atomic
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_graph_export import graph_to_onnx
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import network_to_onnx
from lumpver.ir.operators import DenseOperator
from lumpver.reductions.channel_conv import stored_weight, with_stored_weight


@dataclass
class QuantizedLayer:
    """Integer weights ``q`` (as stored: (out, in) or conv filters) and float32 scales (one, or one per
    output channel)."""

    q: np.ndarray  # int8
    scale: np.ndarray  # float32, shape (1,) or (out,)

    def dequantized(self) -> np.ndarray:
        return (self.q.astype(np.float32) * _per_row(self.scale.astype(np.float32), self.q.ndim)).astype(np.float64)


def _per_row(scale: np.ndarray, ndim: int) -> np.ndarray:
    """Scales broadcast over the output channel axis 0 of an ``ndim`` array (one scale: everywhere)."""
    return scale.reshape((-1,) + (1,) * (ndim - 1)) if scale.size > 1 else scale.reshape((1,) * ndim)


def quantize_weight(w: np.ndarray, bits: int, per_channel: bool) -> QuantizedLayer:
    """Symmetric quantisation of one weight matrix (module docstring)."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be in 2..8, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    amax = np.max(np.abs(w.reshape(w.shape[0], -1)), axis=1) if per_channel else np.array([np.max(np.abs(w))])
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.round(w / _per_row(scale.astype(np.float64), w.ndim)), -qmax - 1, qmax).astype(np.int8)
    return QuantizedLayer(q, scale)


def quantize_network(net: Network, bits: int = 8, per_channel: bool = False) -> tuple[Network, list[QuantizedLayer]]:
    """The quantised network g (float32 dequantised weights) and the integer layers."""
    qls = [quantize_weight(stored_weight(layer.op, k), bits, per_channel) for k, layer in enumerate(net.layers)]
    layers = [Layer(ql.dequantized(), layer.bias.copy(), layer.activation, layer.alpha, "gemm")
              if isinstance(layer.op, DenseOperator) else
              Layer(with_stored_weight(layer.op, ql.dequantized(), k), layer.bias.copy(), layer.activation,
                    layer.alpha, layer.source_op)
              for k, (ql, layer) in enumerate(zip(qls, net.layers))]
    return net.with_layers(layers), qls


def qdq_model(net: Network, qls: list[QuantizedLayer]):
    """An ONNX model of the quantised g where every weight is an int8 initialiser behind ``DequantizeLinear``."""
    return _dequantized_weights(network_to_onnx(net), [(k, layer.source_op, ql)
                                                       for k, (layer, ql) in enumerate(zip(net.layers, qls))])


def _dequantized_weights(model, items: list[tuple[int, str, QuantizedLayer]]):
    """``model`` with weight ``lv_W{k}`` of each ``(k, source_op, ql)`` replaced by ``ql``'s int8 values
    behind ``DequantizeLinear`` (checked)."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    for k, source_op, ql in items:
        name = f"lv_W{k}"
        # MatMul stores W.T (in, out): channels on axis 1; Gemm and Conv store them on axis 0
        transposed = ql.q.ndim == 2 and source_op != "gemm"
        q = ql.q.T if transposed else ql.q
        g.initializer.remove(inits[name])
        g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(q), f"{name}_q"),
                              numpy_helper.from_array(ql.scale.reshape(-1) if ql.scale.size > 1
                                                      else ql.scale.reshape(()), f"{name}_scale")])
        attrs = {"axis": 1 if transposed else 0} if ql.scale.size > 1 else {}
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale"], [name],
                                          name=f"lv_dequant_{k}", **attrs))
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + nodes)
    onnx.checker.check_model(model)
    return model


def save_quantized(net: Network | GraphNetwork, qls, path: str | os.PathLike, float_weights: bool = False) -> None:
    """Write g atomically: QDQ form (default) or plain float32 weights (a graph: ``qls`` by node id)."""
    if isinstance(net, GraphNetwork):
        model = graph_to_onnx(net)
        if not float_weights:
            ks = {nid: k for k, nid in enumerate(net.order[1:])}
            model = _dequantized_weights(model, [(ks[n], net.node(n).source_op, ql) for n, ql in qls.items()])
    else:
        model = network_to_onnx(net) if float_weights else qdq_model(net, qls)
    write_bytes_atomic(path, model.SerializeToString())


def quantize_graph(net: GraphNetwork, bits: int = 8, per_channel: bool = False
                   ) -> tuple[GraphNetwork, dict[str, QuantizedLayer]]:
    """The quantised graph network (every affine node, module docstring) and its integer layers by node id."""
    graph, qls = net.graph.copy(), {}
    for nid in net.order:
        node = net.node(nid)
        if node.kind != "affine":
            continue
        ql = quantize_weight(stored_weight(node.op), bits, per_channel)
        dense = isinstance(node.op, DenseOperator)
        op = DenseOperator(ql.dequantized()) if dense else with_stored_weight(node.op, ql.dequantized())
        graph.nodes[nid]["node"] = dataclasses.replace(node, op=op, source_op="gemm" if dense else node.source_op)
        qls[nid] = ql
    return dataclasses.replace(net, graph=graph), qls


def quantize_summary(qls, bits: int, per_channel: bool) -> dict:
    """JSON-able description of the quantisation for certificates (``qls``: a list, or a dict by node id)."""
    qls = list(qls.values()) if isinstance(qls, dict) else qls
    return {"method": "quantization", "bits": bits, "per_channel": per_channel, "symmetric": True,
            "layers": [{"shape": list(ql.q.shape), "scales": [float(s) for s in ql.scale],
                        "max_abs_q": int(np.max(np.abs(ql.q.astype(np.int64))))} for ql in qls]}
