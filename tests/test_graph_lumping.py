"""Exact channel lumping of graph networks through MaxPool, residual Add and Concat (issue 12 item 2,
DESIGN.md §2, §10): planted graph CNNs collapse to the planted channel counts, onnxruntime-equal, the
reduced file keeps the inputs, outputs and operator kinds, certificates re-check with ``lumpver check``
and tampering is caught.

References are independent of the reducer: the planted construction (channel counts, including the
pairs both branches of a disagreeing Add share), onnxruntime on the two files, a float64 forward
pass of both files against the certified bound, and the checker in a subprocess."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_graph
from lumpver.ir.planted import PLANTED_DAG_KINDS, planted_dag_cnn, random_dag_cnn
from lumpver.ir.runtime import run_onnx
from tests.onnx_builders import f32, resnet_block_model


SHAPE_GLUE = {"Reshape", "Flatten", "Identity"}  # how the exporter moves between sample shapes


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *args, "-q"], capture_output=True, text=True, timeout=600)


def _reduce(model, tmp_path):
    out, cert = tmp_path / "r.onnx", tmp_path / "r.cert.json"
    p = _cli("reduce", str(model), "--mode", "exact", "-o", str(out))
    assert p.returncode == 0, p.stderr
    return out, cert


def _io(path) -> tuple:
    m = onnx.load(str(path))
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in (*m.graph.input, *m.graph.output)]
    kinds = {n.op_type for n in m.graph.node} - SHAPE_GLUE
    return [v.name for v in (*m.graph.input, *m.graph.output)], dims, sorted(kinds)


def _check_sound(model, out, cert_path, rng, image) -> None:
    """onnxruntime-equal, within the certified bound in float64, same interface and operator kinds,
    and the certificate re-checks."""
    x = rng.uniform(-1, 1, size=(24, *image)).astype(np.float32)
    y, z = run_onnx(model, x), run_onnx(out, x)
    assert np.max(np.abs(y - z)) <= 1e-5 * (1 + np.max(np.abs(y)))
    cert = json.loads(cert_path.read_text())
    d = cert["guarantee"]["float_tolerance"]["discrepancy_bound"]
    f, g = load_graph(model), load_graph(out)
    gap = np.max(np.abs(f.forward(x) - g.forward(x)), axis=1)
    assert np.all(gap <= d["a"] + d["b"] * np.max(np.abs(x.reshape(len(x), -1)), axis=1))
    assert _io(model) == _io(out)
    p = _cli("check", str(cert_path))
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("kind", PLANTED_DAG_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_graph_collapses_to_planted_channels(tmp_path, rng, kind, seed):
    planted = planted_dag_cnn(kind, seed=seed)
    model = tmp_path / "p.onnx"
    save_graph(planted.network, model)
    out, cert_path = _reduce(model, tmp_path)
    cert = json.loads(cert_path.read_text())
    assert cert["stats"]["channels_before"] == planted.channels
    assert cert["stats"]["channels_after"] == planted.core
    assert sum(planted.core) < sum(planted.channels)
    _check_sound(model, out, cert_path, rng, (2, 8, 8))


@pytest.mark.parametrize("kind", ["residual", "concat", "maxpool"])
def test_random_graph_reduces_soundly(tmp_path, rng, kind):
    """Random DAG CNNs (no planted redundancy): whatever merges, the reduced file is equal."""
    model = tmp_path / "d.onnx"
    save_graph(random_dag_cnn(kind, seed=2), model)
    out, cert_path = _reduce(model, tmp_path)
    _check_sound(model, out, cert_path, rng, (2, 6, 6))


def _rewrite(cert_path, reduced_path, edit=None) -> None:
    """Re-sign the certificate for an edited reduced file or claim (only the mathematics can catch it)."""
    cert = json.loads(cert_path.read_text())
    cert["reduced"]["sha256"] = hashlib.sha256(reduced_path.read_bytes()).hexdigest()
    if edit is not None:
        edit(cert)
    cert_path.write_text(json.dumps(cert))


def _claim(cert) -> dict:
    return next(e for e in cert["evidence"] if e.get("backend") == "lumping")["claim"]


def _merge_classes(cert) -> None:
    """Merge classes 0 and 1 in every node that has them (consistently, so only the bound can object)."""
    for node in _claim(cert)["nodes"]:
        if len(node["representative"]) > 2 and len(node["class_of"]) > 4:
            node["class_of"] = [0 if c == 1 else (c - 1 if c > 1 else c) for c in node["class_of"]]
            node["representative"] = [node["representative"][0]] + node["representative"][2:]
            node["kept"] = node["kept"][1:]


def _scale_member(cert) -> None:
    for node in _claim(cert)["nodes"]:
        reps = set(node["representative"])
        members = [t for t, c in enumerate(node["class_of"]) if c >= 0 and t not in reps]
        if members:
            node["scale"][members[0]] *= 1.5


def _shrink_bound(cert) -> None:
    cert["guarantee"]["float_tolerance"]["discrepancy_bound"]["a"] /= 10


@pytest.mark.parametrize("edit", [_merge_classes, _scale_member, _shrink_bound])
def test_tampered_claim_is_caught(tmp_path, edit):
    model = tmp_path / "p.onnx"
    save_graph(planted_dag_cnn("residual-mismatch", seed=0).network, model)
    out, cert_path = _reduce(model, tmp_path)
    _rewrite(cert_path, out, edit)
    assert _cli("check", str(cert_path)).returncode == 1


@pytest.mark.parametrize("kind", ["maxpool", "concat"])
def test_tampered_weight_is_caught(tmp_path, kind):
    model = tmp_path / "p.onnx"
    save_graph(planted_dag_cnn(kind, seed=1).network, model)
    out, cert_path = _reduce(model, tmp_path)
    m = onnx.load(str(out))
    init = next(i for i in m.graph.initializer if onnx.numpy_helper.to_array(i).ndim == 4)
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[5] += 0.01
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(m, str(out))
    _rewrite(cert_path, out)
    assert _cli("check", str(cert_path)).returncode == 1


@pytest.mark.parametrize("kind", ["residual", "concat", "maxpool"])
def test_constant_channels_fold_or_split_soundly(tmp_path, rng, kind):
    """Zero filters make constant channels: folded into the next bias, and kept as channels of their
    own where only one branch of an Add is constant; the reduced file stays equal."""
    net = planted_dag_cnn(kind, seed=0).network
    affine = [n for n in net.order if net.node(n).kind == "affine"]
    net.node(affine[0]).op.weight[[1, 4]] = 0.0
    if kind == "residual":
        net.node(affine[2]).op.weight[1] = 0.0  # channel 1 constant on both branches, channel 4 on one only
    model = tmp_path / "c.onnx"
    save_graph(net, model)
    out, cert_path = _reduce(model, tmp_path)
    claim = _claim(json.loads(cert_path.read_text()))
    first = claim["nodes"][net.order.index(affine[0])]
    assert sorted(first["constant"]) == (["1"] if kind == "residual" else ["1", "4"])
    assert len(first["representative"]) <= 8 - len(first["constant"])
    _check_sound(model, out, cert_path, rng, (2, 8, 8))


def test_shared_maxpool_cnn_reduces_exactly(tmp_path, rng, shared_data):
    """The shared VeriVital max-pool CNN (a graph: MaxPool) reduces exactly, equal under onnxruntime."""
    model = shared_data / "cnn/verivital/Convnet_maxpool.onnx"
    out, cert_path = _reduce(model, tmp_path)
    _check_sound(model, out, cert_path, rng, (1, 28, 28))


def test_grouped_conv_in_a_graph_is_refused_naming_file_and_node(tmp_path):
    """A depthwise conv inside a residual block: exit 2, one line naming the file and the ONNX node, no output."""
    model = resnet_block_model(np.random.default_rng(0))
    for init in model.graph.initializer:
        if init.name == "W2":
            init.CopyFrom(onnx.numpy_helper.from_array(f32(np.random.default_rng(1).normal(size=(3, 1, 3, 3))), "W2"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "W2")
    conv.attribute.append(onnx.helper.make_attribute("group", 3))
    conv.name = "depthwise"
    src, out = tmp_path / "grouped.onnx", tmp_path / "r.onnx"
    onnx.save(model, src)
    res = _cli("reduce", str(src), "--mode", "exact", "--out", str(out))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert str(src) in lines[0] and "'depthwise'" in lines[0] and "grouped" in lines[0]
    assert not out.exists()


def _dead_net(kind: str, cols: dict[int, list[int]]):
    """``random_dag_cnn(kind)`` (no planted redundancy) with all-zero filters of its k-th affine node
    on the listed input channels: those channels (and what only they feed) are dead."""
    net = random_dag_cnn(kind, seed=2)
    affine = [n for n in net.order if net.node(n).kind == "affine"]
    for k, chans in cols.items():
        node = net.node(affine[k])
        shape = net.node(node.inputs[0]).shape
        node.op.weight.reshape(node.op.weight.shape[0], shape[0], -1)[:, chans] = 0.0
    return net


# kind, zero input columns per affine node, hidden channels after (before: all 3)
DEAD = [("maxpool", {1: [1]}, [2, 3]),
        ("residual", {1: [0], 3: [0]}, [2, 3, 2]),  # the skip channel is read by neither conv2 nor the head
        ("residual", {3: [0]}, [3, 3, 3])]  # conv2 still reads the skip channel: the Add keeps it


@pytest.mark.parametrize("kind,cols,after", DEAD)
def test_dead_channels_are_dropped_exactly(tmp_path, rng, kind, cols, after):
    model = tmp_path / "d.onnx"
    save_graph(_dead_net(kind, cols), model)
    out, cert_path = _reduce(model, tmp_path)
    cert = json.loads(cert_path.read_text())
    assert cert["stats"]["channels_after"] == after
    assert sum(len(r) for r in _claim(cert)["dead"]) > 0 or after == [3, 3, 3]
    _check_sound(model, out, cert_path, rng, (2, 6, 6))


def test_live_channel_claimed_dead_is_caught(tmp_path):
    """A channel still read by the second conv, claimed dead (consistently through relu and pool, with
    the matching reduced file): the checker refuses."""
    model = tmp_path / "d.onnx"
    save_graph(_dead_net("maxpool", {1: [1]}), model)
    out, cert_path = _reduce(model, tmp_path)
    cert = json.loads(cert_path.read_text())
    dead = _claim(cert)["dead"]
    assert dead[1:4] == [[1], [1], [1]]  # conv, relu, pool
    _claim(cert)["dead"][1:4] = [[0, 1]] * 3
    cert_path.write_text(json.dumps(cert))
    p = subprocess.run([sys.executable, "-m", "lumpver", "check", str(cert_path)], capture_output=True, text=True)
    assert p.returncode == 1 and "dead channels" in p.stdout and "read by node" in p.stdout
