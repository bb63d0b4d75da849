"""Convolutional networks in the IR (issue 12 item 1, DESIGN.md §10): operators against
onnxruntime and against their own forward map (adjoint, dense, abs), ONNX import/export round
trips (bit-identical under onnxruntime), memory, refusals."""
from __future__ import annotations

import gzip
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lumpver.errors import InputError
from lumpver.ir.conv import (AvgPoolOperator, ConvOperator, DiagonalOperator, GlobalAveragePool, PadOperator,
                             PermuteOperator)
from lumpver.ir.network import require_dense, require_logits
from lumpver.ir.onnx_export import network_to_onnx, save_onnx
from lumpver.ir.onnx_import import load_onnx, onnx_to_network
from lumpver.ir.operators import ComposedOperator, DenseOperator
from lumpver.ir.runtime import run_onnx
from tests import onnx_builders as ob

AVGPOOL = "cnn/verivital/Convnet_avgpool.onnx"
MAXPOOL = "cnn/verivital/Convnet_maxpool.onnx"
CIFAR = "cnn/oval21/nets/cifar_base_kw.onnx"


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    return np.asarray(y, dtype=np.float64).reshape(x.shape[0], -1)


def _matrix_by_forward(op) -> np.ndarray:
    """The operator's matrix built column by column from ``forward`` (independent of backward)."""
    return op.forward(np.eye(op.in_features)).T


# ----- operators against onnxruntime -----------------------------------------------------------
CONV_CASES = [  # in_shape, weight shape, attributes
    ((3, 8, 7), (4, 3, 3, 3), dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])),
    ((4, 6, 6), (6, 2, 2, 3), dict(group=2, pads=[0, 1, 1, 0])),
    ((3, 5, 5), (3, 1, 3, 3), dict(group=3, pads=[1, 1, 1, 1], strides=[2, 2])),  # depthwise
    ((2, 13), (3, 2, 4), dict(strides=[3], dilations=[2], pads=[2, 1])),  # 1-D
]


@pytest.mark.parametrize("in_shape,w_shape,attrs", CONV_CASES)
def test_conv_forward_matches_onnxruntime(rng, in_shape, w_shape, attrs):
    model = ob.conv_node_model(rng, in_shape, w_shape, **attrs)
    w, bias = (onnx.numpy_helper.to_array(i) for i in model.graph.initializer)
    nd = len(in_shape) - 1
    op = ConvOperator(in_shape, w, tuple(attrs.get("strides", [1] * nd)), tuple(attrs.get("pads", [0] * 2 * nd)),
                      tuple(attrs.get("dilations", [1] * nd)), attrs.get("group", 1))
    x = rng.normal(size=(7, op.in_features))
    ref = _ort(model, x.reshape(7, *in_shape))
    got = op.forward(x) + np.repeat(bias.astype(np.float64), op.positions)
    assert got.shape == ref.shape and np.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert op.out_channels == w_shape[0] and op.positions * op.out_channels == op.out_features
    got32 = op.forward(x.astype(np.float32))
    assert got32.dtype == np.float32


POOL_CASES = [
    ((2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])),
    ((2, 7, 6), dict(kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    ((3, 9), dict(kernel_shape=[2], strides=[2])),
]


@pytest.mark.parametrize("in_shape,attrs", POOL_CASES)
def test_avgpool_forward_matches_onnxruntime(rng, in_shape, attrs):
    nd = len(in_shape) - 1
    op = AvgPoolOperator(in_shape, tuple(attrs["kernel_shape"]), tuple(attrs["strides"]),
                         tuple(attrs.get("pads", [0] * 2 * nd)), bool(attrs.get("count_include_pad", 0)))
    x = rng.normal(size=(5, op.in_features))
    ref = _ort(ob.pool_node_model(in_shape, **attrs), x.reshape(5, *in_shape))
    assert np.allclose(op.forward(x), ref, rtol=1e-5, atol=1e-6)


def test_global_average_pool_matches_onnxruntime(rng):
    op = GlobalAveragePool((3, 4, 5))
    x = rng.normal(size=(4, 60))
    assert np.allclose(op.forward(x), _ort(ob.pool_node_model((3, 4, 5), "GlobalAveragePool"), x.reshape(4, 3, 4, 5)),
                       atol=1e-6)


# ----- operator algebra: adjoint, dense, abs ---------------------------------------------------
def _small_operators(rng):
    conv = ConvOperator((3, 6, 5), rng.normal(size=(4, 3, 3, 2)), (2, 1), (1, 0, 1, 1), (1, 2), 1)
    grouped = ConvOperator((4, 5, 5), rng.normal(size=(6, 2, 2, 2)), (1, 2), (0, 1, 1, 0), (2, 1), 2)
    conv1d = ConvOperator((2, 9), rng.normal(size=(3, 2, 3)), (2,), (1, 2), (2,), 1)
    pool = AvgPoolOperator((2, 7, 6), (3, 2), (2, 2), (1, 0, 1, 1), False)
    pool_overlap = AvgPoolOperator((2, 5, 5), (3, 3), (1, 1), (1, 1, 1, 1), True)
    pad = PadOperator((2, 3, 4), (0, 1, 2, 1, 0, 1))
    perm = PermuteOperator((3, 4, 2), (2, 0, 1))
    diag = DiagonalOperator((2, 3), rng.normal(size=6))
    gap = GlobalAveragePool((3, 2, 2))
    chain = ComposedOperator([PadOperator((2, 7, 6), (0, 1, 0, 0, 0, 1)), AvgPoolOperator((2, 8, 7), (2, 2), (2, 2)),
                              DenseOperator(rng.normal(size=(5, 2 * 4 * 3)))])
    conv_chain = ComposedOperator([PermuteOperator((5, 6, 3), (2, 0, 1)),
                                   ConvOperator((3, 5, 6), rng.normal(size=(2, 3, 2, 2)), (1, 1), (0, 0, 0, 0), (1, 1), 1),
                                   PadOperator((2, 4, 5), (0, 1, 1, 0, 0, 0))])
    return [conv, grouped, conv1d, pool, pool_overlap, pad, perm, diag, gap, chain, conv_chain]


def test_backward_is_the_adjoint(rng):
    for op in _small_operators(rng):
        x = rng.normal(size=(3, op.in_features))
        y = rng.normal(size=(3, op.out_features))
        lhs = np.sum(op.forward(x) * y, axis=1)
        rhs = np.sum(x * op.backward(y), axis=1)
        assert np.allclose(lhs, rhs, rtol=1e-10, atol=1e-10), type(op).__name__


def test_dense_and_backward_match_the_forward_matrix(rng):
    for op in _small_operators(rng):
        m = _matrix_by_forward(op)
        assert np.allclose(op.dense(), m, rtol=1e-12, atol=1e-12), type(op).__name__
        a = rng.normal(size=(4, op.out_features))
        assert np.allclose(op.backward(a), a @ m, rtol=1e-10, atol=1e-10), type(op).__name__


def test_abs_is_the_entrywise_absolute_matrix(rng):
    for op in _small_operators(rng):
        ref = np.abs(_matrix_by_forward(op))
        got = _matrix_by_forward(op.abs())
        if isinstance(op, ComposedOperator) and not op.abs_exact:
            assert np.all(got >= ref - 1e-12)  # documented upper bound
        else:
            assert np.allclose(got, ref, rtol=1e-12, atol=1e-12), type(op).__name__
    chain = _small_operators(rng)[-2]
    assert chain.abs_exact  # pad + non-overlapping pool before a dense map
    inexact = ComposedOperator([AvgPoolOperator((1, 4, 4), (2, 2), (1, 1)), DenseOperator(rng.normal(size=(2, 9)))])
    assert not inexact.abs_exact
    m = _matrix_by_forward(inexact)
    assert np.all(_matrix_by_forward(inexact.abs()) >= np.abs(m) - 1e-12)


def test_dense_is_refused_above_the_cap(rng):
    big = ConvOperator((64, 64, 64), rng.normal(size=(64, 64, 3, 3)), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    with pytest.raises(InputError, match="dense .* matrix"):
        big.dense()


# ----- shared networks: round trip and memory ---------------------------------------------------
@pytest.mark.parametrize("name", [AVGPOOL, CIFAR])
def test_shared_cnn_round_trip_is_bit_identical(tmp_path, shared_data, rng, name):
    src = shared_data / name
    net = load_onnx(src)
    out = tmp_path / "rt.onnx"
    save_onnx(net, out)
    x = rng.uniform(0, 1, size=(50, net.n_inputs))
    ref = run_onnx(src, x)
    assert np.array_equal(ref, run_onnx(out, x))
    scale = np.abs(ref).max()
    assert np.allclose(net.forward(x, np.float32), ref, rtol=1e-5, atol=1e-5 * scale)
    assert np.allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5 * scale)
    orig = {n.op_type for n in onnx.load(str(src)).graph.node}
    exported = onnx.load(str(out))
    assert orig <= {n.op_type for n in exported.graph.node} | {"Flatten"}
    assert exported.graph.input[0].name == net.input_name and exported.graph.output[0].name == net.output_name
    biggest = max(int(np.prod(i.dims)) for i in onnx.load(str(src)).graph.initializer)
    assert max(int(np.prod(i.dims)) for i in exported.graph.initializer) <= biggest  # no unrolled matrix


def test_cifar_loads_without_unrolling(shared_data):
    model = onnx.load(str(shared_data / CIFAR))
    weight_bytes = sum(8 * int(np.prod(i.dims)) for i in model.graph.initializer)
    tracemalloc.start()
    net = load_onnx(shared_data / CIFAR)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    activation = 8 * max(layer.width for layer in net.layers)
    assert peak < 4 * weight_bytes + activation + 2_000_000  # a dense conv1 alone would be 50 MB
    conv_layers = [l for l in net.layers if isinstance(l.op, ConvOperator)]
    assert len(conv_layers) == 2
    for layer in conv_layers:
        assert layer.op.weight.size < layer.op.in_features * layer.op.out_features / 100
        assert (layer.op.out_channels, layer.op.positions) in ((8, 256), (16, 64))
        assert np.array_equal(layer.bias.reshape(layer.op.out_channels, -1),
                              np.repeat(layer.bias.reshape(layer.op.out_channels, -1)[:, :1], layer.op.positions, 1))


def test_onnx_gz_is_read_by_content(tmp_path, shared_data, rng):
    src = shared_data / CIFAR
    gz = tmp_path / "model.onnx"  # gzip content behind a plain suffix: detected by the magic bytes
    gz.write_bytes(gzip.compress(src.read_bytes()))
    gz2 = tmp_path / "model.onnx.gz"
    gz2.write_bytes(gz.read_bytes())
    x = rng.uniform(0, 1, size=(3, 3072))
    ref = run_onnx(src, x)
    for p in (gz, gz2):
        assert np.array_equal(load_onnx(p).forward(x), load_onnx(src).forward(x))
        assert np.array_equal(run_onnx(p, x), ref)
    bad = tmp_path / "bad.onnx.gz"
    bad.write_bytes(gz.read_bytes()[:200])
    with pytest.raises(InputError, match="bad.onnx.gz"):
        load_onnx(bad)


# ----- hand-built models -----------------------------------------------------------------------
def _roundtrip(tmp_path, model, x):
    src, out = tmp_path / "src.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    net = load_onnx(src)
    save_onnx(net, out)
    onnx.checker.check_model(onnx.load(str(out)))
    return net, run_onnx(src, x), run_onnx(out, x), onnx.load(str(out))


@pytest.mark.parametrize("builder,shape,ops", [
    (ob.conv_pool_model, (6, 4, 9, 8), ["Sub", "Div", "Conv", "Relu", "Pad", "AveragePool", "Flatten", "Gemm", "Relu",
                            "Gemm"]),
    (ob.conv1d_model, (6, 3, 11), ["Conv", "Relu", "AveragePool", "Flatten", "MatMul", "Add"]),
    (ob.nhwc_model, (1, 5, 6, 3), ["Sub", "Transpose", "Conv", "Relu", "Transpose", "MatMul", "Add"]),
])
def test_hand_built_round_trip_bit_identical(tmp_path, rng, builder, shape, ops):
    x = rng.normal(size=shape).reshape(shape[0], -1)
    net, ref, got, exported = _roundtrip(tmp_path, builder(rng), x)
    assert np.array_equal(ref, got)
    assert np.allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5)
    assert np.allclose(net.forward(x, np.float32), ref, rtol=1e-4, atol=1e-4)
    written = [n.op_type for n in exported.graph.node]
    assert [o for o in written if o in ops] == ops
    conv = next(n for n in exported.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3  # per-channel bias written back on the Conv


def test_batchnorm_gap_softmax(tmp_path, rng):
    x = rng.normal(size=(8, 2 * 7 * 6))
    net, ref, got, exported = _roundtrip(tmp_path, ob.bn_gap_softmax_model(rng), x)
    assert net.output_softmax and np.allclose(ref.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-6)  # BN folded into the conv: rounding differs
    assert np.allclose(net.forward(x), ref, rtol=1e-5, atol=1e-6)
    assert [n.op_type for n in exported.graph.node][-2:] == ["Softmax", "Identity"]
    assert [type(l.op).__name__ for l in net.layers] == ["ConvOperator", "ConvOperator", "ComposedOperator"]
    with pytest.raises(InputError, match="Softmax is not supported by verify"):
        require_logits(net, "verify")


def test_elementwise_after_last_activation(rng):
    """Relu -> Mul at the end of the graph: the scale is applied once (it was applied twice)."""
    from onnx import helper

    m = ob.make_model([helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
                       helper.make_node("Mul", ["r", "c"], ["y"])],
                      {"W": ob.f32(rng.normal(size=(3, 2))), "c": ob.f32([2.0, -3.0])}, "x", ["N", 3], "y", ["N", 2])
    x = rng.normal(size=(6, 3))
    assert np.allclose(onnx_to_network(m).forward(x), _ort(m, x), rtol=1e-6, atol=1e-6)


def test_require_dense(shared_data):
    with pytest.raises(InputError, match="convolutional layers are not supported by prune yet"):
        require_dense(load_onnx(shared_data / CIFAR), "prune")
    require_dense(load_onnx(shared_data / "test/test_small.onnx"), "prune")


# ----- refusals: one line naming op and node ---------------------------------------------------
def test_maxpool_and_residual_are_refused_naming_the_node(tmp_path, shared_data, rng):
    with pytest.raises(InputError) as e:
        load_onnx(shared_data / MAXPOOL)
    assert "MaxPool" in str(e.value) and "MaxPool_2" in str(e.value)
    with pytest.raises(InputError) as e:
        onnx_to_network(ob.residual_model(rng), "res.onnx")
    assert "skip" in str(e.value) and "Add" in str(e.value)
    # exact reduce accepts graphs (tests/test_graph_lumping.py); a chain-only command refuses
    spec = next((shared_data / "cnn/verivital/specs_maxpool").glob("*.vnnlib*"))
    r = subprocess.run([sys.executable, "-m", "lumpver", "reduce", "--mode", "approx", "--epsilon", "0.1",
                        "--input-set", str(spec), str(shared_data / MAXPOOL), "-o", str(tmp_path / "o.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "MaxPool_2" in r.stderr


def test_bad_conv_inputs_are_refused_naming_the_node(rng):
    from onnx import helper

    def one_conv(in_shape, w_shape):
        return ob.make_model([helper.make_node("Conv", ["x", "W"], ["y"], name="c0")],
                             {"W": ob.f32(rng.normal(size=w_shape))}, "x", in_shape, "y", ["N", 2, 3, 3])

    with pytest.raises(InputError, match="c0.*does not match 3 input channels"):
        onnx_to_network(one_conv(["N", 3, 5, 5], (2, 4, 3, 3)))
    with pytest.raises(InputError, match="c0.*Conv expects a 4-D input"):
        onnx_to_network(one_conv(["N", 75], (2, 3, 3, 3)))


@pytest.mark.parametrize("command", [["prune", "--method", "magnitude", "--keep", "0.5"],
                                     ["prune", "--method", "coreset", "--keep", "0.5"], ["quantize"]])
def test_prune_and_quantize_accept_convolutional_networks(tmp_path, shared_data, command):
    """Pruning and quantisation of CNNs are tested against references in tests/test_cnn_prune*.py;
    here: the commands run on a shared CNN and write a model onnxruntime runs."""
    out = tmp_path / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "lumpver", *command, str(shared_data / CIFAR), "-o", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert run_onnx(out, np.zeros((1, 3072), np.float32)).shape == (1, 10)


def test_verify_refuses_a_final_softmax(tmp_path, rng):
    src, prop = tmp_path / "sm.onnx", tmp_path / "p.vnnlib"
    onnx.save(ob.bn_gap_softmax_model(rng), str(src))
    lines = [f"(declare-const X_{i} Real)" for i in range(84)] + [f"(declare-const Y_{i} Real)" for i in range(4)]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))" for i in range(84)] + ["(assert (>= Y_0 0.9))"]
    prop.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "lumpver", "verify", str(src), str(prop)], capture_output=True, text=True)
    assert r.returncode == 2 and "final Softmax is not supported by verify" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_folding_keeps_operators_and_the_function(tmp_path, rng):
    x = rng.normal(size=(9, 50))
    net, ref, got, exported = _roundtrip(tmp_path, ob.folding_model(rng), x)
    assert np.allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-5)
    kinds = [[type(o).__name__ for o in getattr(l.op, "ops", [l.op])] for l in net.layers]
    assert kinds == [["ConvOperator", "AvgPoolOperator"], ["DiagonalOperator", "ConvOperator"],
                     ["AvgPoolOperator", "DenseOperator"]]  # BN after the pool folds into the Gemm
    assert not any(n.op_type == "MatMul" for n in exported.graph.node)
    assert sum(n.op_type == "Conv" for n in exported.graph.node) == 2


def test_exported_weights_are_named_by_layer(shared_data):
    model = network_to_onnx(load_onnx(shared_data / AVGPOOL))
    names = {i.name: tuple(i.dims) for i in model.graph.initializer}
    assert names["lv_W0"] == (32, 1, 2, 2) and names["lv_b0"] == (32,)  # the conv and its per-channel bias
    assert names["lv_W1"] == (10, 1152) and names["lv_b1"] == (10,)
