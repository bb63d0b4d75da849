"""ONNX import/export against onnxruntime on the original files (DESIGN.md §1)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from lumpver.errors import InputError
from lumpver.ir.onnx_export import network_to_onnx, save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.runtime import run_onnx
from tests import onnx_builders as ob


def _roundtrip(tmp_path, src_path, x):
    net = load_onnx(src_path)
    out = tmp_path / "rt.onnx"
    save_onnx(net, out)
    onnx.checker.check_model(onnx.load(str(out)))
    return net, run_onnx(src_path, x), run_onnx(out, x)


def test_all_acasxu_networks_roundtrip_identically(shared_data, tmp_path, rng):
    files = sorted((shared_data / "acasxu" / "onnx").glob("*.onnx"))
    assert len(files) == 45
    x = rng.uniform(-0.5, 0.5, size=(64, 5))
    for f in files:
        net, ref, got = _roundtrip(tmp_path, f, x)
        assert net.widths == [5, 50, 50, 50, 50, 50, 50, 5]
        assert np.array_equal(ref, got), f.name
        m = onnx.load(str(tmp_path / "rt.onnx"))
        assert m.graph.input[0].name == "input" and m.graph.output[0].name == "linear_7_Add"


@pytest.mark.parametrize("rel", ["mnist_fc/onnx/mnist-net_256x2.onnx", "test/test_sat.onnx", "test/test_nano.onnx",
                                 "test/test_tiny.onnx", "test/test_small.onnx", "test/test_unsat.onnx"])
def test_other_shared_networks_roundtrip(shared_data, tmp_path, rng, rel):
    src = shared_data / rel
    n = load_onnx(src).n_inputs
    x = rng.normal(size=(16, n))
    net, ref, got = _roundtrip(tmp_path, src, x)
    assert np.array_equal(ref, got)
    ins = [i for i in onnx.load(str(src)).graph.input if i.name == net.input_name]
    rt = onnx.load(str(tmp_path / "rt.onnx")).graph.input[0]
    assert rt.type.tensor_type.shape == ins[0].type.tensor_type.shape


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "Sigmoid", "Tanh", None])
def test_gemm_normalisation_batchnorm_styles(tmp_path, rng, act):
    m = ob.gemm_chain(rng, act)
    src = tmp_path / "src.onnx"
    onnx.save(m, str(src))
    x = rng.normal(size=(20, 6))
    net = load_onnx(src)
    ref = run_onnx(src, x)
    assert np.allclose(net.forward(x), ref, rtol=1e-4, atol=1e-4)
    _, ref2, got = _roundtrip(tmp_path, src, x)
    assert np.allclose(got, ref2, rtol=1e-4, atol=1e-4)
    assert onnx.load(str(tmp_path / "rt.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_image_input_flattened_row_major(tmp_path, rng):
    src = tmp_path / "img.onnx"
    onnx.save(ob.image_model(rng), str(src))
    x = rng.normal(size=(10, 18))
    net = load_onnx(src)
    assert [l.activation for l in net.layers] == ["tanh", "sigmoid", "identity"]
    assert np.allclose(net.forward(x), run_onnx(src, x), rtol=1e-5, atol=1e-5)
    _, ref, got = _roundtrip(tmp_path, src, x)
    assert np.array_equal(ref, got)


def test_column_layout(tmp_path, rng):
    src = tmp_path / "col.onnx"
    onnx.save(ob.column_model(rng), str(src))
    x = rng.normal(size=(5, 3))
    net = load_onnx(src)
    assert net.widths == [3, 4, 2]
    assert np.allclose(net.forward(x), run_onnx(src, x), rtol=1e-5, atol=1e-5)


def test_unsupported_op_names_op_and_node(tmp_path, rng):
    src = tmp_path / "sm.onnx"
    onnx.save(ob.softmax_model(rng), str(src))
    with pytest.raises(InputError) as e:
        load_onnx(src)
    assert "Softmax" in str(e.value) and "probs" in str(e.value) and "sm.onnx" in str(e.value)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lumpver", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("content", [b"", b"hello, I am not a model\n", "truncated"])
def test_bad_model_file_exit_2_one_line_no_output(tmp_path, shared_data, content):
    bad = tmp_path / "bad.onnx"
    if content == "truncated":
        data = (shared_data / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx").read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    out = tmp_path / "out.onnx"
    r = _cli("reduce", str(bad), "-o", str(out))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.onnx" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "out.cert.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_unsupported_op_cli_and_unwritable_output(tmp_path, rng, shared_data):
    src = tmp_path / "sm.onnx"
    onnx.save(ob.softmax_model(rng), str(src))
    r = _cli("reduce", str(src), "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "Softmax" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    good = shared_data / "test/test_tiny.onnx"
    r = _cli("reduce", str(good), "-o", str(tmp_path / "missing_dir" / "o.onnx"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = _cli("reduce", str(src), "-o", str(src))  # never overwrite an input
    assert r.returncode == 2
    assert onnx.load(str(src)).graph.node[-1].op_type == "Softmax"


def test_networkx_view_matches_arrays(shared_data):
    net = load_onnx(shared_data / "test/test_small.onnx")
    g = net.to_networkx()
    assert g.number_of_nodes() == sum(net.widths)
    assert g.number_of_edges() == sum(int(np.count_nonzero(l.weight)) for l in net.layers)
    for (src, dst), w in ((e[:2], e[2]["weight"]) for e in g.edges(data=True)):
        assert net.layers[dst[0] - 1].weight[dst[1], src[1]] == w


def test_export_checker_passes_for_planted():
    from lumpver.ir.planted import planted_network

    m = network_to_onnx(planted_network(seed=1).network)
    onnx.checker.check_model(m, full_check=True)


def test_pytorch_style_flatten_and_transposed_weight(tmp_path, rng):
    src = tmp_path / "pt.onnx"
    onnx.save(ob.pytorch_flatten_model(rng), str(src))
    x = rng.normal(size=(7, 12))
    net = load_onnx(src)
    assert net.widths == [12, 5, 3] and net.layers[0].activation == "leaky_relu" and net.layers[0].alpha == float(np.float32(0.2))
    assert np.allclose(net.forward(x), run_onnx(src, x), rtol=1e-5, atol=1e-5)
    _, ref, got = _roundtrip(tmp_path, src, x)
    assert np.allclose(ref, got, rtol=1e-6, atol=1e-6)


def _poisoned_chain(rng, value: float) -> onnx.ModelProto:
    """gemm_chain with one weight of W2 replaced by ``value`` (NaN or Inf)."""
    m = ob.gemm_chain(rng)
    for init in m.graph.initializer:
        if init.name == "W2":
            w = onnx.numpy_helper.to_array(init).copy()
            w[1, 2] = value
            init.CopyFrom(onnx.numpy_helper.from_array(w, "W2"))
    return m


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("command", [["reduce"], ["quantize", "--bits", "8"], ["prune", "--method", "magnitude", "--keep", "0.5"]])
def test_non_finite_weights_exit_2_naming_initializer(tmp_path, rng, value, command):
    src = tmp_path / "nan.onnx"
    onnx.save(_poisoned_chain(rng, value), str(src))
    out = tmp_path / "o.onnx"
    r = _cli(command[0], str(src), "-o", str(out), *command[1:])
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "nan.onnx" in line and "'W2'" in line and ("NaN" in line or "Inf" in line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.onnx"]


def test_symbolic_feature_dimension_is_refused(tmp_path, rng):
    m = ob.gemm_chain(rng)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_param = "K"
    src = tmp_path / "sym.onnx"
    onnx.save(m, str(src))
    with pytest.raises(InputError) as e:
        load_onnx(src)
    assert "'K'" in str(e.value) and "axis 1" in str(e.value) and "sym.onnx" in str(e.value)
    r = _cli("reduce", str(src), "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
