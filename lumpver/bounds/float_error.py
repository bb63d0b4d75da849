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

from lumpver.specs.inputset import Box
from lumpver.ir.network import Network

U32 = 2.0**-24
ACT_ERR = 1e-6


def _gamma(k: int) -> float:
    return k * U32 / (1 - k * U32)


def float32_error(net: Network, box: Box, nb) -> np.ndarray:
    """Per-output bound on ``|f_float32(x) - f_real(x)|`` for x in ``box`` (float32 inputs)."""
    lo, hi = box.lower.copy(), box.upper.copy()
    err = np.zeros(net.n_inputs)
    for op in net.input_ops:
        s, t = op.as_affine()
        a, b = s * lo + t, s * hi + t
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        mag = np.maximum(np.abs(lo), np.abs(hi))
        err = np.abs(s) * err + U32 * (mag + np.abs(s) * err) * 2
    h_mag = np.maximum(np.abs(lo), np.abs(hi))
    for k, layer in enumerate(net.layers):
        aw = np.abs(layer.weight)
        g = _gamma(layer.fan_in + 1)
        ez = aw @ err + g * (aw @ (h_mag + err) + np.abs(layer.bias))
        act = layer.activation
        if act == "identity":
            err = ez
        elif act == "relu":
            err = ez
        elif act == "leaky_relu":
            post = np.maximum(np.abs(nb.post_lower[k]), np.abs(nb.post_upper[k]))
            err = max(1.0, abs(layer.alpha)) * ez + U32 * (post + ez)
        elif act == "sigmoid":
            err = 0.25 * ez + ACT_ERR
        else:  # tanh
            err = ez + ACT_ERR
        h_mag = np.maximum(np.abs(nb.post_lower[k]), np.abs(nb.post_upper[k]))
    return err
