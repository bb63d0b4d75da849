"""Graph networks in the IR (issue 12 items 1 and 4, DESIGN.md §1, §10): residual Add, Concat and
MaxPool imported from hand-built and shared ONNX files against onnxruntime, export round trips
(bit-identical under onnxruntime), the chain view and its refusals, bad input (exit 2, one line
naming the ONNX node)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from lumpver.errors import InputError
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_graph_export import graph_to_onnx, save_graph
from lumpver.ir.onnx_import import load_graph, load_model, load_onnx, onnx_to_graph
from lumpver.ir.planted import DAG_KINDS, random_dag_cnn
from lumpver.ir.runtime import run_onnx
from tests import onnx_builders as ob

MAXPOOL = "cnn/verivital/Convnet_maxpool.onnx"
AVGPOOL = "cnn/verivital/Convnet_avgpool.onnx"


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [x.shape[0]] + [d for d in inp.shape[1:]]
    y = sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0]
    return np.asarray(y, dtype=np.float64).reshape(x.shape[0], -1)


def _kinds(g: GraphNetwork) -> list[str]:
    return [g.node(n).kind for n in g.order]


@pytest.mark.parametrize("builder,kinds,exact", [
    (lambda rng: ob.resnet_block_model(rng, "Add"), {"add", "maxpool", "scale"}, False),
    (lambda rng: ob.resnet_block_model(rng, "Sum"), {"add", "maxpool"}, False),
    (ob.inception_model, {"concat", "maxpool", "add"}, True),
])
def test_hand_built_graphs_match_onnxruntime_and_round_trip(rng, builder, kinds, exact):
    model = builder(rng)
    g = onnx_to_graph(model, "m.onnx")
    assert kinds <= set(_kinds(g))
    x = rng.normal(size=(40, g.n_inputs))
    ref = _ort(model, x)
    assert np.allclose(g.forward(x), ref, rtol=1e-5, atol=1e-5)
    assert np.allclose(g.forward(x, np.float32), ref, rtol=1e-4, atol=1e-4)
    exported = graph_to_onnx(g)
    once = _ort(exported, x)
    assert np.array_equal(once, ref) if exact else np.allclose(once, ref, rtol=1e-5, atol=1e-5)
    again = onnx_to_graph(exported)
    assert _kinds(again) == _kinds(g)
    assert np.array_equal(_ort(graph_to_onnx(again), x), once)  # export -> import -> export: bit-identical
    written = [n.op_type for n in exported.graph.node]
    assert written.count("Conv") == sum(n.op_type == "Conv" for n in model.graph.node)  # convs stay convs
    assert {"MaxPool", "Relu"} <= set(written)
    biggest = max(int(np.prod(i.dims)) for i in model.graph.initializer)
    assert max(int(np.prod(i.dims)) for i in exported.graph.initializer) <= biggest  # nothing unrolled


def test_shared_maxpool_net_round_trip_is_bit_identical(tmp_path, shared_data, rng):
    src = shared_data / MAXPOOL
    g = load_graph(src)
    assert _kinds(g) == ["input", "affine", "act", "maxpool", "affine"]
    out = tmp_path / "rt.onnx"
    save_graph(g, out)
    x = rng.uniform(0, 1, size=(30, g.n_inputs))
    ref = run_onnx(src, x)
    assert np.array_equal(run_onnx(out, x), ref)
    assert np.allclose(g.forward(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    model = onnx.load(str(out))
    assert [n.op_type for n in model.graph.node if n.op_type in ("Conv", "Relu", "MaxPool", "Gemm")] == \
        ["Conv", "Relu", "MaxPool", "Gemm"]
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "output"


@pytest.mark.parametrize("kind", DAG_KINDS)
def test_planted_graphs_round_trip_bit_identically(tmp_path, rng, kind):
    g = random_dag_cnn(kind, seed=3)
    path = tmp_path / f"{kind}.onnx"
    save_graph(g, path)
    x = rng.uniform(0, 1, size=(25, g.n_inputs))
    ref = run_onnx(path, x)
    assert np.allclose(g.forward(x), ref, rtol=1e-5, atol=1e-5)
    back = load_graph(path)
    assert _kinds(back) == _kinds(g)
    path2 = tmp_path / "again.onnx"
    save_graph(back, path2)
    assert np.array_equal(run_onnx(path2, x), ref)


@pytest.mark.parametrize("kind", DAG_KINDS)
def test_vjp_matches_finite_differences(rng, kind):
    g = random_dag_cnn(kind, seed=5)
    x = rng.uniform(0, 1, size=(3, g.n_inputs))
    seed = rng.normal(size=(3, g.n_outputs))
    _, vjp = g.forward_vjp(x)
    grad = vjp(seed)
    for _ in range(5):
        d = rng.normal(size=x.shape)
        h = 1e-6
        fd = ((g.forward(x + h * d) - g.forward(x - h * d)) * seed).sum(axis=1) / (2 * h)
        assert np.allclose((grad * d).sum(axis=1), fd, rtol=1e-4, atol=1e-6)


def test_chain_and_graph_views_agree(shared_data, rng):
    net = load_onnx(shared_data / AVGPOOL)
    g = GraphNetwork.from_chain(net)
    x = rng.uniform(0, 1, size=(10, net.n_inputs))
    assert np.array_equal(g.forward(x), net.forward(x))
    back = g.require_chain()
    assert np.array_equal(back.forward(x), net.forward(x)) and len(back.layers) == len(net.layers)
    assert isinstance(load_model(shared_data / AVGPOOL), type(net))
    assert isinstance(load_model(shared_data / MAXPOOL), GraphNetwork)


@pytest.mark.parametrize("builder,node", [(ob.resnet_block_model, "skip"), (ob.inception_model, "cat")])
def test_chain_view_refuses_a_graph_naming_the_node(rng, builder, node):
    with pytest.raises(InputError, match=rf"'{node}'.*makes the network a graph"):
        onnx_to_graph(builder(rng), "m.onnx").require_chain("reduce", "m.onnx")


# ----- bad input: exit 2, one line naming the ONNX node, before any work -----------------------
def _conv_channels_model(rng):
    return ob.make_model([helper.make_node("Conv", ["x", "W"], ["y"], name="c0")],
                         {"W": ob.f32(rng.normal(size=(2, 4, 3, 3)))}, "x", ["N", 3, 5, 5], "y", ["N", 2, 3, 3])


def _wrong_rank_model(rng):
    return ob.make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], name="mp")],
                         {}, "x", ["N", 12], "y", ["N", 3])


@pytest.mark.parametrize("builder,words", [
    (ob.bad_add_model, ["bad_add", "mismatched shapes"]),
    (ob.lstm_model, ["lstm", "unsupported op LSTM"]),
    (_conv_channels_model, ["c0", "does not match 3 input channels"]),
    (_wrong_rank_model, ["mp", "MaxPool kernel"]),
])
def test_bad_graphs_exit_2_with_one_line(tmp_path, rng, builder, words):
    path = tmp_path / "bad.onnx"
    onnx.save(builder(rng), str(path))
    prop = tmp_path / "p.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0.0))\n"
                    "(assert (<= X_0 1.0))\n(assert (>= Y_0 0.0))\n")
    for args in (["verify", str(path), str(prop)], ["reduce", str(path), "-o", str(tmp_path / "o.onnx")]):
        r = subprocess.run([sys.executable, "-m", "lumpver", *args], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines


@pytest.mark.parametrize("args", [["verify", "--backend", "smt"], ["verify", "--reduce"]])
def test_commands_needing_a_chain_refuse_a_graph(tmp_path, rng, args):
    path = tmp_path / "res.onnx"
    save_graph(random_dag_cnn("residual"), path)
    prop = tmp_path / "p.vnnlib"
    n = random_dag_cnn("residual").n_inputs
    prop.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(n)) +
                    "".join(f"(declare-const Y_{j} Real)\n" for j in range(3)) +
                    "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 1.0))\n" for i in range(n)) +
                    "(assert (>= Y_0 100.0))\n")
    tail = [str(prop)] if args[0] == "verify" else ["-o", str(tmp_path / "o.onnx"), "--input-set", str(prop)]
    r = subprocess.run([sys.executable, "-m", "lumpver", args[0], str(path), *tail, *args[1:]], capture_output=True,
                       text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "residual Add" in lines[0] and "Add" in lines[0], lines
