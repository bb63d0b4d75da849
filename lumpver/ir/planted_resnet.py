"""Random residual networks (graph IR, float32 weights, ReLU) for tests and benchmarks of branch and
bound on graph networks (DESIGN.md §10, §11): stand-ins for VNN-COMP's cifar10_resnet / sri_resnet.

* :func:`random_resnet`: normalisation, a stem convolution (optionally stride 2), ``blocks`` residual
  blocks ``relu(x + conv(relu(conv(x))))`` at constant width, then a dense hidden layer and the
  output layer (no max pool: ResNets downsample by strided convolutions);
* :func:`random_dense_resnet`: the same pattern with dense layers (small inputs, fast exact MILPs).

Residual branches are scaled by ``1/2`` so that the values keep their magnitude over the blocks.
"""
from __future__ import annotations

import numpy as np

from lumpver.ir.conv import ConvOperator
from lumpver.ir.graph import GNode, GraphBuilder, GraphNetwork
from lumpver.ir.network import InputOp
from lumpver.ir.operators import DenseOperator


def _f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float64)


class _Net:
    def __init__(self, shape: tuple[int, ...], rng: np.random.Generator) -> None:
        self.b, self.rng = GraphBuilder(tuple(shape)), rng

    def size(self, nid: str) -> int:
        return self.b.node(nid).size

    def conv(self, src: str, c_out: int, stride: int = 1, gain: float = 1.0) -> str:
        shape = self.b.node(src).shape
        w = _f32(self.rng.standard_normal((c_out, shape[0], 3, 3)) * gain * np.sqrt(2.0 / (9 * shape[0])))
        op = ConvOperator(shape, w, strides=(stride, stride), pads=(1, 1, 1, 1))
        bias = np.repeat(_f32(self.rng.standard_normal(c_out) * 0.05), op.positions)
        return self.b.add(GNode("affine", (src,), op.out_shape, op=op, bias=bias))

    def dense(self, src: str, n_out: int, gain: float = 1.0) -> str:
        n = self.size(src)
        w = _f32(self.rng.standard_normal((n_out, n)) * gain * np.sqrt(2.0 / n))
        return self.b.add(GNode("affine", (src,), (n_out,), op=DenseOperator(w),
                                bias=_f32(self.rng.standard_normal(n_out) * 0.05), source_op="gemm"))

    def relu(self, src: str) -> str:
        return self.b.add(GNode("act", (src,), self.b.node(src).shape, activation="relu"))

    def add(self, a: str, b: str) -> str:
        return self.b.add(GNode("add", (a, b), self.b.node(a).shape))

    def normalise(self, shape: tuple[int, ...]) -> str:
        mean = np.repeat(_f32(0.5 + 0.1 * self.rng.random(shape[0])), int(np.prod(shape[1:])))
        return self.b.add(GNode("scale", ("input",), shape, steps=[InputOp("Sub", mean)]))

    def done(self, out: str, shape: tuple[int, ...]) -> GraphNetwork:
        n_out = self.size(out)
        return GraphNetwork(self.b.graph, out, "x", "y", ["batch", *shape], ["batch", n_out])


def random_resnet(image: tuple[int, int, int] = (3, 32, 32), channels: int = 16, blocks: int = 2,
                  stem_stride: int = 2, hidden: int = 64, n_outputs: int = 10, seed: int = 0) -> GraphNetwork:
    """A ResNet-like CNN (module docstring)."""
    net = _Net(image, np.random.default_rng(seed))
    h = net.relu(net.conv(net.normalise(image), channels, stem_stride))
    for _ in range(blocks):
        h = net.relu(net.add(h, net.conv(net.relu(net.conv(h, channels)), channels, gain=0.5)))
    out = net.dense(net.relu(net.dense(h, hidden)), n_outputs)
    return net.done(out, image)


def random_dense_resnet(n_inputs: int = 12, width: int = 16, blocks: int = 1, n_outputs: int = 3,
                        seed: int = 0) -> GraphNetwork:
    """A residual network of dense layers (module docstring)."""
    net = _Net((n_inputs,), np.random.default_rng(seed))
    h = net.relu(net.dense(net.normalise((n_inputs,)), width))
    for _ in range(blocks):
        h = net.relu(net.add(h, net.dense(net.relu(net.dense(h, width)), width, gain=0.5)))
    return net.done(net.dense(h, n_outputs), (n_inputs,))
