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

from dataclasses import dataclass
from typing import Optional

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


@dataclass
class _Step:
    """One stage of a chain network's float32 evaluation: a linear stage (``op``, or the diagonal ``scale`` of
    an input step) or an activation (secant slopes in ``[centre - radius, centre + radius]``), with the bound
    ``local`` of the rounding it adds at its output."""

    local: np.ndarray
    op: Optional[LinearOperator] = None
    scale: Optional[np.ndarray] = None
    centre: Optional[np.ndarray] = None
    radius: Optional[np.ndarray] = None


def float32_error(net: Network, box: Box, nb) -> np.ndarray:
    """Per-output bound on ``|f_float32(x) - f_real(x)|`` for x in ``box`` (float32 inputs); layers
    through the operator interface (``|op|`` forward and backward), never a dense matrix of a convolution.

    The float32 output is the real one plus each stage's local rounding carried to the output: linearly
    through the later linear stages, and through each activation by its secant slope between the real and
    the float pre-activation, which lies in an interval known per neuron from the real bounds ``nb`` and the
    forward error bound (ReLU: 0 where both are surely negative, 1 where both are surely positive, [0, 1]
    otherwise). So the output error is at most ``sum_k |J_k| r_k`` over the local roundings ``r_k``, with
    ``|J_k|`` bounded by back-substitution of an interval matrix (centre C, radius R): through a linear
    stage ``C M, R |M|``; through slopes ``c +- r`` ``C c, R (|c| + r) + |C| r``. Signs cancel through
    surely active neurons, which the layer-by-layer product of ``|W|`` (:func:`float32_error_forward`, also
    the forward error used here to classify the neurons) cannot see. ACAS Xu 1_1 on prop_3: 5.83 -> 0.076
    (1.2e-6 seen; the zero slopes of surely inactive neurons do most of it; bench/RESULTS.md 2026-12-01)."""
    steps, _ = _float32_steps(net, box, nb)
    c = np.eye(net.n_outputs)
    r = np.zeros_like(c)
    total = np.zeros(net.n_outputs)
    for st in reversed(steps):
        total += (np.abs(c) + r) @ st.local
        if st.op is not None:
            c, r = st.op.backward(c), st.op.abs().backward(r)
        elif st.scale is not None:
            c, r = c * st.scale, r * np.abs(st.scale)
        else:
            c, r = c * st.centre, r * (np.abs(st.centre) + st.radius) + np.abs(c) * st.radius
    return total * (1 + 1e-9)  # the float64 arithmetic of this bound (relative 1e-13 per operation) padded


def float32_error_forward(net: Network, box: Box, nb) -> np.ndarray:
    """The layer-by-layer bound: errors carried through ``|W|`` and the activations' largest slopes."""
    return _float32_steps(net, box, nb)[1]


def _float32_steps(net: Network, box: Box, nb) -> tuple[list[_Step], np.ndarray]:
    """The stages of ``net``'s float32 evaluation over ``box`` with their local rounding bounds, and the
    forward (layer-by-layer) bound of the output error."""
    steps: list[_Step] = []
    lo, hi, err = box.lower.copy(), box.upper.copy(), np.zeros(net.n_inputs)
    for op in net.input_ops:  # each one float32 multiply-add: two roundings
        s, t = op.as_affine()
        a, b = s * lo + t, s * hi + t
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        local = U32 * (np.maximum(np.abs(lo), np.abs(hi)) + np.abs(s) * err) * 2
        steps.append(_Step(local, scale=np.asarray(s, dtype=np.float64)))
        err = np.abs(s) * err + local
    h_mag = np.maximum(np.abs(lo), np.abs(hi))
    for k, layer in enumerate(net.layers):
        stages = _stages(layer.op)
        for i, st in enumerate(stages):
            a = st.abs()
            n = accumulation_length(st)
            g = _gamma(n + 1) if n or i == len(stages) - 1 else 0.0
            local = g * a.forward((h_mag + err)[None, :])[0]
            if i == len(stages) - 1:
                local = local + g * np.abs(layer.bias)
            steps.append(_Step(local, op=st))
            err = a.forward(err[None, :])[0] + local
            h_mag = a.forward(h_mag[None, :])[0]
        post = np.maximum(np.abs(nb.post_lower[k]), np.abs(nb.post_upper[k]))
        centre, radius, local = _secant_slopes(layer.activation, layer.alpha, nb.pre_lower[k], nb.pre_upper[k],
                                               err, post)
        steps.append(_Step(local, centre=centre, radius=radius))
        err = (np.abs(centre) + radius) * err + local
        h_mag = post
    return steps, err


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
    §10), node by node in topological order with the magnitudes of graph CROWN bounds: affine nodes as
    :func:`float32_error_forward`, activations by their largest secant slope (0 where surely inactive);
    ``Add``: ``e_a + e_b + u (|a| + |b| + e_a + e_b)``; ``Concat``
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
            src = node.inputs[0]
            centre, radius, local = _secant_slopes(node.activation, node.alpha, gb.lower[src], gb.upper[src], e[0],
                                                   mag[nid])
            err[nid] = (np.abs(centre) + radius) * e[0] + local
        elif node.kind == "add":
            a, b = node.inputs
            err[nid] = e[0] + e[1] + U32 * (mag[a] + mag[b] + e[0] + e[1])
        elif node.kind == "concat":
            err[nid] = np.concatenate(e)
        else:  # maxpool
            err[nid] = node.pool.forward(e[0][None, :])[0]
    return err[net.output]


def _secant_slopes(act: str, alpha: float, lo: np.ndarray, hi: np.ndarray, ez: np.ndarray,
                   post_mag: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centre, radius, local)``: the slope ``(act(z~) - act(z)) / (z~ - z)`` between a real pre-activation
    ``z`` in ``[lo, hi]`` and a float one within ``ez`` of it lies in ``centre +- radius`` (mean value
    theorem over ``[lo - ez, hi + ez]``, widened by a margin for the float64 bounds); ``local``: the rounding
    the activation itself adds (the leaky ReLU's multiply; sigmoid/tanh evaluated to ACT_ERR)."""
    margin = ez + 1e-9 * (1.0 + np.abs(lo) + np.abs(hi))
    a, b = lo - margin, hi + margin
    zero = np.zeros_like(lo)
    if act == "identity":
        return np.ones_like(lo), zero, zero
    if act in ("relu", "leaky_relu"):
        neg = 0.0 if act == "relu" else float(alpha)
        smin = np.where(b < 0, neg, np.where(a > 0, 1.0, min(neg, 1.0)))
        smax = np.where(b < 0, neg, np.where(a > 0, 1.0, max(neg, 1.0)))
        # the leaky ReLU multiplies where the float value may be negative: one rounding of |alpha z~|
        local = zero if act == "relu" else np.where(a < 0, U32 * (post_mag + abs(neg) * ez), 0.0)
        return (smin + smax) / 2, (smax - smin) / 2, local
    if act in ("sigmoid", "tanh"):
        def deriv(z: np.ndarray) -> np.ndarray:
            if act == "sigmoid":
                e = np.exp(-np.abs(z))
                return e / (1.0 + e) ** 2
            return 1.0 / np.cosh(np.minimum(np.abs(z), 350.0)) ** 2
        near = np.clip(zero, a, b)  # the derivative peaks at 0 and falls off on both sides
        smax = deriv(near) * (1 + 1e-12)
        smin = np.maximum(0.0, np.minimum(deriv(a), deriv(b)) * (1 - 1e-12))
        return (smin + smax) / 2, (smax - smin) / 2, np.full_like(lo, ACT_ERR)
    raise ValueError(f"no float32 error rule for activation {act!r}")


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
