"""The float32 evaluation-error bound of graph networks (bounds/float_error.py ``float32_error_graph``;
DESIGN.md §5, §10): onnxruntime's float32 outputs stay within the bound of the float64 forward pass of
the stored weights on sampled points of the box, for residual, concat and maxpool CNNs; on a chain read
as a graph the bound is at least the chain formula's (back-substituted: tests/test_float_error.py)."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.bounds.engine import compute_bounds
from lumpver.bounds.float_error import float32_error, float32_error_graph
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.planted import DAG_KINDS, random_dag_cnn, random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box


@pytest.mark.parametrize("kind", DAG_KINDS)
def test_onnxruntime_stays_within_the_graph_bound(tmp_path, kind):
    net = random_dag_cnn(kind, (2, 6, 6), seed=5)
    rng = np.random.default_rng(1)
    c = rng.uniform(-1, 1, net.n_inputs)
    box = Box(c - 0.5, c + 0.5)
    bound = float32_error_graph(net, box)
    assert bound.shape == (net.n_outputs,) and np.all(bound > 0)
    path = tmp_path / "m.onnx"
    save_graph(net, path)
    x = rng.uniform(box.lower, box.upper, (400, net.n_inputs)).astype(np.float32)
    err = np.abs(run_onnx(path, x) - net.forward(x.astype(np.float64)))
    assert np.all(err <= bound[None, :]), (err.max(axis=0), bound)
    assert bound.max() < 1e-2 * max(1.0, float(np.abs(net.forward(x.astype(np.float64))).max()))  # not vacuous


def test_chain_read_as_graph_gets_the_chain_bound():
    net = random_mlp(np.random.default_rng(2), [6, 10, 10, 3])
    box = Box(-np.ones(6), np.ones(6))
    chain = float32_error(net, box, compute_bounds(net, box))
    graph = float32_error_graph(GraphNetwork.from_chain(net), box)
    assert np.all(chain <= graph * (1 + 1e-9))  # the chain's back-substituted bound is the tighter
