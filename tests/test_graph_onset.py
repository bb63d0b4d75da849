"""On-set reduction of graph networks (residual Add, Concat, MaxPool; issue 12 item 3, DESIGN.md §3,
§10): channels made 0 on a small box (strongly negative biases) or dead (all-zero outgoing filters)
are dropped, the reduced ONNX keeps its convolutions, equals the original under onnxruntime on many
points of the box, the certificate re-checks with ``lumpver check`` and tampering is caught.

References are independent of the reducer: the planted construction says which channels must go
(and that a residual channel dead on one branch only must stay), onnxruntime replays both files,
and the checker runs in a subprocess."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest

from lumpver.certificates.graph_channels import without_channels
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_graph
from lumpver.ir.planted import PLANTED_DAG_KINDS, planted_dag_cnn, random_dag_cnn
from lumpver.ir.runtime import run_onnx
from lumpver.specs.load import load_input_set

IMAGE = (2, 6, 6)
RADIUS = 0.05


def _cli(*args, quiet: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *map(str, args), *(["-q"] if quiet else [])],
                          capture_output=True, text=True, timeout=600)


def _box_file(path, center: np.ndarray, radius: float):
    path.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(center.size)) + "".join(
        f"(assert (>= X_{i} {float(c - radius)!r}))\n(assert (<= X_{i} {float(c + radius)!r}))\n"
        for i, c in enumerate(center)))
    return path


def _planted(kind: str, dead_bias: dict[int, list[int]], zero_cols: dict[int, list[int]] | None = None, seed: int = 3):
    """``random_dag_cnn(kind)`` with bias -50 on the listed channels of its k-th affine node (0 on any
    box of [-1, 2]^n: every filter has |w| <= 3 per unit of input) and zero input columns."""
    net = random_dag_cnn(kind, IMAGE, seed=seed)
    affine = [n for n in net.order if net.node(n).kind == "affine"]
    for k, chans in dead_bias.items():
        node = net.node(affine[k])
        b = node.bias.reshape(node.shape[0], -1)
        b[chans] = -50.0
        node.bias = b.reshape(-1)
    for k, cols in (zero_cols or {}).items():
        op = net.node(affine[k]).op
        if hasattr(op, "in_shape") and len(op.weight.shape) == 4:
            op.weight[:, cols] = 0.0
        else:
            w = op.weight.reshape(op.weight.shape[0], -1, *net.node(net.node(affine[k]).inputs[0]).shape[1:])
            w[:, cols] = 0.0
    return net


def _reduce(net, tmp_path, seed: int = 0):
    """Save ``net``, reduce it on-set on a box through the CLI: (model, reduced, certificate, box file)."""
    model, out = tmp_path / "m.onnx", tmp_path / "r.onnx"
    save_graph(net, model)
    center = np.random.default_rng(seed).uniform(0, 1, net.n_inputs)
    box = _box_file(tmp_path / "x.vnnlib", center, RADIUS)
    p = _cli("reduce", model, "-o", out, "--mode", "on-set", "--input-set", box)
    assert p.returncode == 0, p.stderr
    return model, out, tmp_path / "r.cert.json", box


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _assert_equal_on_box(model, out, box, n: int = 300, image: tuple = IMAGE, bound: float = 0.0) -> None:
    """onnxruntime agrees on ``n`` points of the box and its corners; float64 forward passes of the two
    files differ by at most the certified ``bound`` (0 when channels are only dropped) plus float64 noise."""
    b = load_input_set(box, int(np.prod(image))).regions[0]
    x = np.random.default_rng(7).uniform(b.lower, b.upper, size=(n, b.lower.size))
    x = np.vstack([x, b.lower, b.upper]).astype(np.float32).reshape(-1, *image)
    y, z = run_onnx(model, x), run_onnx(out, x)
    assert np.max(np.abs(y - z)) <= 1e-5 * (1 + np.max(np.abs(y)))
    gap = np.abs(load_graph(model).forward(x) - load_graph(out).forward(x))
    assert np.max(gap) <= bound + 1e-9 * (1 + np.max(np.abs(y)))


# kind, channels made 0 (affine node -> channels), zero input columns, hidden channels before -> after
CASES = [
    ("maxpool", {0: [1]}, None, [3, 3], [2, 3]),
    ("concat", {0: [0], 1: [2]}, None, [3, 3, 4], [2, 2, 4]),
    ("residual", {0: [2], 2: [2]}, None, [3, 3, 3], [2, 3, 2]),  # dead on both branches of the Add
    ("residual", {0: [2]}, None, [3, 3, 3], [3, 3, 3]),  # one branch only: the sum still reads it
    ("maxpool", {}, {1: [0]}, [3, 3], [2, 3]),  # dead: the second conv ignores channel 0 of the pool
    ("maxpool", {}, {2: [1]}, [3, 3], [3, 2]),  # dead: the dense head ignores channel 1 of the last conv
]


@pytest.mark.parametrize("kind,dead,cols,before,after", CASES)
def test_planted_zero_and_dead_channels_are_dropped(tmp_path, kind, dead, cols, before, after):
    net = _planted(kind, dead, cols)
    model, out, cert_path, box = _reduce(net, tmp_path)
    cert = json.loads(cert_path.read_text())
    assert (cert["stats"]["channels_before"], cert["stats"]["channels_after"]) == (before, after)
    assert cert["guarantee"]["kind"] == "exact-on-set" and cert["guarantee"]["epsilon"] == 0.0
    _assert_equal_on_box(model, out, box)
    ops_f, ops_g = _ops(model), _ops(out)
    assert ops_g["Conv"] == ops_f["Conv"] and ops_g["MatMul"] + ops_g["Gemm"] == ops_f["MatMul"] + ops_f["Gemm"]
    if after != before:
        assert cert["stats"]["params_after"] < cert["stats"]["params_before"]
    p = _cli("check", cert_path)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("kind", PLANTED_DAG_KINDS)
def test_planted_graph_is_dropped_then_lumped(tmp_path, kind):
    """Planted graph CNNs (every conv channel a positive multiple of a core channel): after the on-set
    step, exact lumping merges at least down to the planted cores; the bound of the two steps covers
    the float64 gap, and the certificate (both steps) re-checks."""
    planted = planted_dag_cnn(kind, seed=0)
    model, out, cert_path, box = _reduce(planted.network, tmp_path)
    cert = json.loads(cert_path.read_text())
    assert [s["step"] for s in cert["evidence"]] == ["on-set-graph", "exact-lumping"]
    assert all(a <= c for a, c in zip(cert["stats"]["channels_after"], planted.core))
    assert 0 < cert["guarantee"]["epsilon"] < 1e-3
    _assert_equal_on_box(model, out, box, image=(2, 8, 8), bound=cert["guarantee"]["epsilon"])
    assert _cli("check", cert_path).returncode == 0
    _resign(cert_path, out, lambda c: c["guarantee"].update(epsilon=c["guarantee"]["epsilon"] / 10))
    p = _cli("check", cert_path, quiet=False)
    assert p.returncode == 1 and "guarantee.epsilon" in p.stdout


def _union_file(path, centers: list[np.ndarray], radius: float):
    n = centers[0].size
    boxes = " ".join("(and " + " ".join(f"(>= X_{i} {float(c[i] - radius)!r}) (<= X_{i} {float(c[i] + radius)!r})"
                                        for i in range(n)) + ")" for c in centers)
    path.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(n)) + f"(assert (or {boxes}))\n")
    return path


def _polytope_file(path, model, center: np.ndarray, radius: float):
    """A box cut by ``sum(x) <= sum(center)`` (a TOML spec's polytope)."""
    lo, hi = ", ".join(repr(float(v - radius)) for v in center), ", ".join(repr(float(v + radius)) for v in center)
    path.write_text(f'model = "{model}"\n[input_set]\ntype = "polytope"\nA = [[{", ".join(["1.0"] * center.size)}]]\n'
                    f"b = [{float(center.sum())!r}]\nlower = [{lo}]\nupper = [{hi}]\n")
    return path


@pytest.mark.parametrize("shape", ["union", "polytope"])
def test_union_and_polytope_input_sets(tmp_path, shape):
    """The set may be a union of boxes or a polytope: the planted channel goes, onnxruntime agrees on
    points of every region (inside the polytope), the certificate re-checks."""
    net = _planted("maxpool", {0: [1]})
    model, out = tmp_path / "m.onnx", tmp_path / "r.onnx"
    save_graph(net, model)
    rng = np.random.default_rng(3)
    centers = [rng.uniform(0, 1, net.n_inputs) for _ in range(2)]
    spec = (_union_file(tmp_path / "u.vnnlib", centers, RADIUS) if shape == "union"
            else _polytope_file(tmp_path / "p.toml", model, centers[0], RADIUS))
    p = _cli("reduce", model, "-o", out, "--mode", "on-set", "--input-set", spec)
    assert p.returncode == 0, p.stderr
    cert = json.loads((tmp_path / "r.cert.json").read_text())
    assert cert["stats"]["channels_after"] == [2, 3]
    regions = load_input_set(spec, net.n_inputs).regions
    assert len(regions) == (2 if shape == "union" else 1)
    for c in centers[: len(regions)]:
        x = c + rng.uniform(-RADIUS, RADIUS, size=(200, c.size))
        if shape == "polytope":
            x = x[x.sum(axis=1) <= c.sum()]
        x = x.astype(np.float32).reshape(-1, *IMAGE)
        y, z = run_onnx(model, x), run_onnx(out, x)
        assert len(x) > 20 and np.max(np.abs(y - z)) <= 1e-5 * (1 + np.max(np.abs(y)))
    assert _cli("check", tmp_path / "r.cert.json").returncode == 0


def test_dead_channels_cascade(tmp_path):
    """The dense head ignores channel 2 of the last conv, and only that conv filter reads channel 1 of
    the pool: once the filter goes, the pool channel is dead too."""
    net = _planted("maxpool", {}, {2: [2]})
    last_conv = net.node([n for n in net.order if net.node(n).kind == "affine"][1]).op
    last_conv.weight[[0, 1], 1] = 0.0
    model, out, cert_path, box = _reduce(net, tmp_path)
    cert = json.loads(cert_path.read_text())
    assert cert["stats"]["channels_after"] == [2, 2]
    _assert_equal_on_box(model, out, box)
    assert _cli("check", cert_path).returncode == 0


def _resign(cert_path, reduced_path, edit=None) -> None:
    cert = json.loads(cert_path.read_text())
    cert["reduced"]["sha256"] = hashlib.sha256(reduced_path.read_bytes()).hexdigest()
    if edit is not None:
        edit(cert)
    cert_path.write_text(json.dumps(cert))


def test_non_stable_channel_claimed_removed_is_caught(tmp_path):
    """Channel 0 of the maxpool net's first conv is live on the box; a claim that drops it (consistently
    through relu and pool, with the matching reduced file) must fail the recomputed bounds."""
    model, out, cert_path, _ = _reduce(_planted("maxpool", {0: [1]}), tmp_path)
    f = load_graph(model)
    cert = json.loads(cert_path.read_text())
    removed = cert["evidence"][0]["removed"]
    for k in range(1, 4):  # conv, relu, pool
        removed[k] = sorted(removed[k] + [0])
    save_graph(without_channels(f, {n: np.asarray(r, dtype=np.int64) for n, r in zip(f.order, removed)}), out)
    _resign(cert_path, out, lambda c: c["evidence"][0].update(removed=removed))
    p = _cli("check", cert_path, quiet=False)
    assert p.returncode == 1 and "not proved 0 on X" in p.stdout


def test_one_branch_of_an_add_cannot_drop_a_channel(tmp_path):
    """A claim dropping a channel on the skip branch of the Add but not on the other is refused."""
    model, out, cert_path, _ = _reduce(_planted("residual", {0: [2], 2: [2]}), tmp_path)
    cert = json.loads(cert_path.read_text())
    f = load_graph(model)
    removed = cert["evidence"][0]["removed"]
    add = next(k for k, n in enumerate(f.order) if f.node(n).kind == "add")
    branch = f.order.index(f.node(f.order[add]).inputs[0])
    removed[branch] = []
    _resign(cert_path, out, lambda c: c["evidence"][0].update(removed=removed))
    p = _cli("check", cert_path, quiet=False)
    assert p.returncode == 1 and "add node must drop exactly" in p.stdout


def test_changed_weight_is_caught(tmp_path):
    model, out, cert_path, _ = _reduce(_planted("concat", {0: [0], 1: [2]}), tmp_path)
    m = onnx.load(str(out))
    init = next(i for i in m.graph.initializer if onnx.numpy_helper.to_array(i).ndim == 4)
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[3] += 1e-3
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(m, str(out))
    _resign(cert_path, out)
    p = _cli("check", cert_path, quiet=False)
    assert p.returncode == 1 and "filters or biases differ" in p.stdout


def test_shared_maxpool_cnn_on_its_property_box(tmp_path, shared_data):
    """The shared VeriVital max-pool CNN on its first property box: channels drop, onnxruntime agrees
    on points of the box, convolutions stay, the certificate re-checks."""
    d = shared_data / "cnn/verivital"
    model, box, out = d / "Convnet_maxpool.onnx", d / "specs_maxpool/prop_0_0.004.vnnlib", tmp_path / "r.onnx"
    p = _cli("reduce", model, "-o", out, "--mode", "on-set", "--input-set", box)
    assert p.returncode == 0, p.stderr
    cert = json.loads((tmp_path / "r.cert.json").read_text())
    assert sum(cert["stats"]["channels_after"]) < sum(cert["stats"]["channels_before"])
    b = load_input_set(box, 784).regions[0]
    x = np.random.default_rng(0).uniform(b.lower, b.upper, size=(200, b.lower.size)).astype(np.float32)
    y, z = run_onnx(model, x.reshape(-1, 1, 28, 28)), run_onnx(out, x.reshape(-1, 1, 28, 28))
    assert np.max(np.abs(y - z)) <= 1e-5 * (1 + np.max(np.abs(y)))
    assert _ops(out)["Conv"] == _ops(model)["Conv"] == 1
    assert _cli("check", tmp_path / "r.cert.json").returncode == 0
