"""A sound bound on float32 evaluation error of a network (DESIGN.md §5: float32 models).

The SDP bounds the *real-arithmetic* networks whose weights are the float32 values. A float32
runtime (onnxruntime) rounds: with ``u = 2^-24`` and ``gamma_k = k u / (1 - k u)``, a dot product
of length ``n`` plus bias satisfies ``|fl(W h + b) - (W h + b)| <= gamma_{n+1} (|W| |h| + |b|)`` in
any summation order (FMA only helps). Propagated layer by layer with the bound magnitudes
``|h|`` from bound propagation, this gives ``|f_float32(x) - f_real(x)| <= err`` per output.
Stated assumption: sigmoid/tanh are evaluated to within :data:`ACT_ERR` absolute (onnxruntime's
MLAS approximations are accurate to a few float32 ulp of values in [-1, 1]).
"""
from __future__ import annotations

import numpy as np

from lumpver.bounds.engine import compute_bounds
from lumpver.bounds.graph_engine import prepare_graph, propagate_graph
from lumpver.bounds.region import region_box
from lumpver.ir.graph import GraphNetwork
from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.network import Network
from lumpver.ir.conv import (AvgPoolOperator, ConvOperator, DiagonalOperator, GlobalAveragePool, PadOperator,
                             PermuteOperator)
from lumpver.ir.operators import ComposedOperator, LinearOperator

U32 = 2.0**-24
ACT_ERR = 1e-6


def _gamma(k: int) -> float:
    return k * U32 / (1 - k * U32)


def _stages(op: LinearOperator) -> list[LinearOperator]:
    """The float32 rounding stages of a layer's operator: each operator of a composition (pad,
    pooling, conv, dense) is one ONNX node evaluated and rounded on its own."""
    return list(op.ops) if isinstance(op, ComposedOperator) else [op]


def accumulation_length(op: LinearOperator) -> int:
    """Longest float accumulation one output of ``op`` needs: a conv's filter size, a pooling
    window (its division counted), a dense row; 0 for exact data movement (pad, permute)."""
    if isinstance(op, (PadOperator, PermuteOperator)):
        return 0
    if isinstance(op, ConvOperator):
        return int(np.prod(op.weight.shape[1:]))
    if isinstance(op, AvgPoolOperator):
        return int(np.prod(op.kernel)) + 1
    if isinstance(op, GlobalAveragePool):
        return op.in_features // max(1, op.out_features) + 1
    if isinstance(op, DiagonalOperator):
        return 1
    return op.in_features


def _linear_error(op: LinearOperator, bias: np.ndarray, err: np.ndarray, h_mag: np.ndarray) -> np.ndarray:
    """Bound on ``|fl(op(h~) + b) - (op(h) + b)|`` for ``|h~ - h| <= err``, ``|h| <= h_mag``: per stage
    ``s`` (accumulation length ``n`` from :func:`accumulation_length`, plus the bias on the last)
    the error is carried through ``|s|`` and widened by ``gamma_{n+1} |s| (|h| + err)`` (DESIGN.md
    §5, §10). Stated assumption: the runtime computes each output of a conv/pool/dense node as
    one accumulation of its terms in some order (im2col + GEMM, as onnxruntime's MLAS; no FFT or
    Winograd transform)."""
    stages = _stages(op)
    for i, s in enumerate(stages):
        a = s.abs()
        n = accumulation_length(s)
        g = _gamma(n + 1) if n or i == len(stages) - 1 else 0.0
        err = a.forward(err[None, :])[0] + g * a.forward((h_mag + err)[None, :])[0]
        h_mag = a.forward(h_mag[None, :])[0]
        if i == len(stages) - 1:
            err = err + g * np.abs(bias)
    return err


def float32_error(net: Network, box: Box, nb) -> np.ndarray:
    """Per-output bound on ``|f_float32(x) - f_real(x)|`` for x in ``box`` (float32 inputs); layers
    through the operator interface (``|op|`` forward), never a dense matrix of a convolution."""
    err, h_mag = _input_op_error(net.input_ops, box.lower.copy(), box.upper.copy(), np.zeros(net.n_inputs))
    for k, layer in enumerate(net.layers):
        ez = _linear_error(layer.op, layer.bias, err, h_mag)
        post = np.maximum(np.abs(nb.post_lower[k]), np.abs(nb.post_upper[k]))
        err = _activation_error(layer.activation, layer.alpha, ez, post)
        h_mag = post
    return err


def _input_op_error(steps, lo: np.ndarray, hi: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input normalisation steps (each one float32 multiply-add): the error after them and ``|h|``."""
    for op in steps:
        s, t = op.as_affine()
        a, b = s * lo + t, s * hi + t
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        mag = np.maximum(np.abs(lo), np.abs(hi))
        err = np.abs(s) * err + U32 * (mag + np.abs(s) * err) * 2
    return err, np.maximum(np.abs(lo), np.abs(hi))


def float32_error_graph(net: GraphNetwork, box: Box) -> np.ndarray:
    """Per-output bound on ``|f_float32(x) - f_real(x)|`` for a graph network over ``box`` (DESIGN.md §5,
    §10), node by node in topological order with the magnitudes of graph CROWN bounds: affine nodes and
    activations as :func:`float32_error`; ``Add``: ``e_a + e_b + u (|a| + |b| + e_a + e_b)``; ``Concat``
    joins the errors; ``MaxPool`` is exact and 1-Lipschitz in each window, so its error is the largest
    error in the window."""
    gb = propagate_graph(prepare_graph(net), box)
    err: dict[str, np.ndarray] = {"input": np.zeros(net.n_inputs)}
    mag = {nid: np.maximum(np.abs(gb.lower[nid]), np.abs(gb.upper[nid])) for nid in net.order}
    for nid in net.order[1:]:
        node = net.node(nid)
        e = [err[i] for i in node.inputs]
        if node.kind == "scale":
            src = node.inputs[0]
            err[nid] = _input_op_error(node.steps, gb.lower[src], gb.upper[src], e[0])[0]
        elif node.kind == "affine":
            err[nid] = _linear_error(node.op, node.bias, e[0], mag[node.inputs[0]])
        elif node.kind == "act":
            err[nid] = _activation_error(node.activation, node.alpha, e[0], mag[nid])
        elif node.kind == "add":
            a, b = node.inputs
            err[nid] = e[0] + e[1] + U32 * (mag[a] + mag[b] + e[0] + e[1])
        elif node.kind == "concat":
            err[nid] = np.concatenate(e)
        else:  # maxpool
            err[nid] = node.pool.forward(e[0][None, :])[0]
    return err[net.output]


def _activation_error(act: str, alpha: float, ez: np.ndarray, post_mag: np.ndarray) -> np.ndarray:
    """Error after an activation whose input carries error ``ez`` (``post_mag`` bounds its output)."""
    if act in ("identity", "relu"):
        return ez
    if act == "leaky_relu":
        return max(1.0, abs(alpha)) * ez + U32 * (post_mag + ez)
    if act == "sigmoid":
        return 0.25 * ez + ACT_ERR
    return ez + ACT_ERR  # tanh


def float32_errors(net: Network | GraphNetwork, input_set: InputSet) -> np.ndarray:
    """Per-output bound of ``|net_float32(x) - net_real(x)|`` over X (max over its regions' boxes) for a
    chain or a graph network."""
    out = np.zeros(net.n_outputs)
    for region in input_set.regions:
        box = region_box(region)
        e = float32_error_graph(net, box) if isinstance(net, GraphNetwork) else \
            float32_error(net, box, compute_bounds(net, region))
        out = np.maximum(out, e)
    return out
