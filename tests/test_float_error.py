"""The float32 evaluation-error bound of chain networks (bounds/float_error.py ``float32_error``; DESIGN.md §5):
onnxruntime's float32 outputs stay within it of the float64 forward pass of the stored weights, on random
networks of every activation with input normalisation, large weights and biases (so rounding shows), on
uniform samples and around the points of the largest observed error; the back-substituted bound never
exceeds the layer-by-layer one."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.bounds.engine import compute_bounds
from lumpver.bounds.float_error import float32_error, float32_error_forward
from lumpver.ir.network import InputOp, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.planted import random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box


def _net(seed: int, activation: str) -> Network:
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [5, 40, 40, 40, 3], activation, bias_scale=3.0, alpha=0.2)
    mean, std = rng.uniform(100, 1000, 5), rng.uniform(50, 500, 5)
    return Network(net.layers, [InputOp("Sub", np.float32(mean).astype(np.float64)),
                                InputOp("Div", np.float32(std).astype(np.float64))])


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_onnxruntime_stays_within_the_chain_bound(tmp_path, activation):
    for seed in range(3):
        net = _net(seed, activation)
        rng = np.random.default_rng(100 + seed)
        centre = net.input_ops[0].constant + rng.uniform(-1, 1, 5) * net.input_ops[1].constant
        box = Box(centre - 0.3 * net.input_ops[1].constant, centre + 0.3 * net.input_ops[1].constant)
        nb = compute_bounds(net, box)
        bound, forward = float32_error(net, box, nb), float32_error_forward(net, box, nb)
        assert np.all(bound <= forward * (1 + 1e-6)) and np.all(bound > 0)
        path = tmp_path / f"{activation}{seed}.onnx"
        save_onnx(net, path)
        x = rng.uniform(box.lower, box.upper, (4000, 5)).astype(np.float32)
        err = np.abs(run_onnx(path, x) - net.forward(x.astype(np.float64)))
        worst = x[np.argsort(-err.max(axis=1))[:50]]  # around the largest errors seen
        near = np.clip(worst[:, None, :] + rng.normal(0, 1e-3, (50, 40, 5)) * (box.upper - box.lower),
                       box.lower, box.upper).reshape(-1, 5).astype(np.float32)
        err = np.vstack([err, np.abs(run_onnx(path, near) - net.forward(near.astype(np.float64)))])
        assert np.all(err <= bound[None, :]), (activation, seed, err.max(axis=0), bound)
        assert bound.max() < 1e-2 * max(1.0, float(np.abs(net.forward(x.astype(np.float64))).max()))  # not vacuous

