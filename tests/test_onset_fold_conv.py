"""Linear folding of stably active channels of a CNN on an input set (issue 12 item 3, DESIGN.md §3, §10).

A planted CNN chain (conv -> relu -> 2x2 average pool -> conv -> relu -> flatten -> dense) whose
stably active channels (large positive biases) have filters and biases that are positive combinations
of a few core channels, with dyadic values so that the dependence is exact in float32; beside them
channels that are not stable (one +1 and one -1 tap, bias 0) and a dead one (bias -20).

Independent references: the planted ranks (by construction), onnxruntime on 2000 points of X for
both files, and a float64 numpy evaluation of the two files' weights. Tampering with the certificate's
coefficients, its stability claims or the reduced file's weights must fail ``lumpver check``. Graph
networks: a max pool reading the activation blocks folding; in a residual graph only the activation
read by convolutions alone folds (the one read by an Add does not, and a claim that it does fails)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lumpver.api.reduce import apply_pass
from lumpver.certificates.format import check_certificate
from lumpver.ir.conv import AvgPoolOperator, ConvOperator
from lumpver.ir.graph import GNode, GraphBuilder, GraphNetwork
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_graph, load_onnx
from lumpver.ir.operators import ComposedOperator, DenseOperator
from lumpver.ir.pooling import MaxPool
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.passes import OnSetPass
from lumpver.specs.inputset import Box, InputSet

IMAGE = (1, 8, 8)
X = InputSet([Box(np.zeros(64), np.ones(64))])


def _planted(rng, n_in: int, core: int, n_planted: int, taps: int, scale: int, bias: tuple[int, int]):
    """Filters ``(n_planted, n_in, taps)`` and biases: positive dyadic combinations (multiples of 1/8)
    of ``core`` dyadic core filters (multiples of 1/scale) and core biases (multiples of 1/8 in ``bias``)."""
    a = rng.integers(1, 9, (n_planted, core)) / 8
    while any(np.linalg.matrix_rank(a[[i, j]]) < 2 for i in range(n_planted) for j in range(i)):  # none proportional
        a = rng.integers(1, 9, (n_planted, core)) / 8
    k = rng.integers(-6, 7, (core, n_in * taps)) / scale
    cb = rng.integers(*bias, core) / 8
    return (a @ k).reshape(n_planted, n_in, taps), a @ cb


def _plus_minus(n_in: int, taps: int, channel: int, first: int, second: int) -> np.ndarray:
    w = np.zeros((n_in, taps))
    w[channel, first], w[channel, second] = 1.0, -1.0
    return w


def planted_chain(seed: int = 0) -> tuple[Network, list[int]]:
    """The planted CNN of the module docstring and its expected channel counts after folding."""
    rng = np.random.default_rng(seed)
    w0, b0 = _planted(rng, 1, 3, 8, 9, 64, (32, 48))  # 8 channels of rank 3, stably active on [0, 1]^64
    free0 = [_plus_minus(1, 9, 0, 0, 8), _plus_minus(1, 9, 0, 2, 6)]  # unstable: x_p - x_q
    w0 = np.concatenate([w0, np.stack(free0), rng.integers(-6, 7, (1, 1, 9)) / 64])
    b0 = np.r_[b0, 0.0, 0.0, -20.0]  # the last channel is dead on X
    p0 = rng.permutation(11)
    w0, b0 = w0[p0], b0[p0]
    conv0 = ConvOperator(IMAGE, w0.reshape(11, 1, 3, 3))
    pool = AvgPoolOperator(conv0.out_shape, (2, 2), (2, 2))
    w1, b1 = _planted(rng, 11, 2, 6, 4, 256, (320, 400))  # 6 channels of rank 2 (from |h0| <= 21: stable)
    free_in = int(np.flatnonzero(p0 == 8)[0])  # a free layer-0 channel, unstable
    w1 = np.concatenate([w1, _plus_minus(11, 4, free_in, 0, 3)[None]])
    b1 = np.r_[b1, 0.0]
    conv1 = ConvOperator(pool.out_shape, w1.reshape(7, 11, 2, 2))
    w2 = (rng.standard_normal((5, 7 * 4)) * 0.3).astype(np.float32).astype(np.float64)
    layers = [Layer(conv0, np.repeat(b0, conv0.positions), "relu"),
              Layer(ComposedOperator([pool, conv1]), np.repeat(b1, conv1.positions), "relu"),
              Layer(DenseOperator(w2), np.zeros(5), "identity")]
    net = Network(layers, input_name="x", output_name="y", input_shape=["batch", *IMAGE], output_shape=["batch", 5])
    return net, [3 + 2, 2 + 1]


def _exact_f32(net: Network) -> None:
    for layer in net.layers:
        target = layer.op.ops[-1] if isinstance(layer.op, ComposedOperator) else layer.op
        assert np.array_equal(target.weight, target.weight.astype(np.float32)), "planted weights must be float32"
        assert np.array_equal(layer.bias, layer.bias.astype(np.float32))


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    d = tmp_path_factory.mktemp("fold")
    net, expected = planted_chain()
    _exact_f32(net)
    save_onnx(net, d / "f.onnx")
    res = apply_pass(OnSetPass(), d / "f.onnx", d / "g.onnx", d / "g.cert.json", X)
    return d, net, expected, json.loads(res.certificate_path.read_text())


def test_planted_channels_fold_to_planted_rank(reduced):
    d, f, expected, cert = reduced
    step = cert["evidence"][0]
    assert step["step"] == "on-set-channels" and len(step["removed"][0]) == 1
    assert [len(x["folded"]) for x in step["folds"]] == [8 - 3, 6 - 2]
    assert cert["stats"]["channels_before"] == [11, 7]
    assert cert["stats"]["channels_after"] == expected == load_onnx(d / "g.onnx").hidden_channels
    assert check_certificate(d / "g.cert.json").holds


def test_onnxruntime_within_certified_discrepancy(reduced, rng):
    d, f, _, cert = reduced
    disc = cert["guarantee"]["float_tolerance"]["discrepancy_bound"]
    x = np.vstack([rng.uniform(0, 1, (1990, 64)), rng.integers(0, 2, (10, 64))]).astype(np.float32)
    y_f, y_g = run_onnx(d / "f.onnx", x), run_onnx(d / "g.onnx", x)
    scale = float(np.max(np.abs(y_f)))
    assert 0 < disc < 1e-4 * scale  # the bound is not vacuous
    # float32 evaluation by onnxruntime adds its own rounding to both models (not part of the claim)
    assert np.max(np.abs(y_f - y_g)) <= disc + 1e-5 * scale
    # float64 numpy evaluation of the stored weights: the claim itself (real arithmetic, up to float64 rounding)
    g = load_onnx(d / "g.onnx")
    assert np.max(np.abs(_forward64(f, x) - _forward64(g, x))) <= disc * (1 + 1e-6) + 1e-9 * scale


def _forward64(net: Network, x: np.ndarray) -> np.ndarray:
    """A float64 evaluation by direct convolution sums (numpy, not the operators' own forward)."""
    h = x.astype(np.float64).reshape(len(x), *IMAGE)
    for layer in net.layers:
        ops = layer.op.ops if isinstance(layer.op, ComposedOperator) else [layer.op]
        for op in ops:
            if isinstance(op, AvgPoolOperator):
                n, c, hh, ww = h.shape
                h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))
            elif isinstance(op, ConvOperator):
                kh, kw = op.weight.shape[2:]
                oh, ow = h.shape[2] - kh + 1, h.shape[3] - kw + 1
                h = sum(np.einsum("ncij,oc->noij", h[:, :, a:a + oh, b:b + ow], op.weight[:, :, a, b])
                        for a in range(kh) for b in range(kw))
            else:
                h = h.reshape(len(h), -1) @ op.weight.T
        h = h + layer.bias.reshape(h.shape[1:])[None]
        h = np.maximum(h, 0) if layer.activation == "relu" else h
    return h.reshape(len(x), -1)


def _tampered(d, cert, change) -> list[str]:
    bad = json.loads(json.dumps(cert))
    change(bad)
    bad["reduced"]["sha256"] = hashlib.sha256((d / "g.onnx").read_bytes()).hexdigest()
    path = d / "bad.cert.json"
    path.write_text(json.dumps(bad))
    report = check_certificate(path)
    assert not report.holds, report.lines
    return [line for line in report.lines if line.startswith("FAIL")]


def test_tampered_certificate_fails(reduced):
    d, f, _, cert = reduced

    def coefficient(c):
        c["evidence"][0]["folds"][0]["coefficients"][0][0] += 0.25

    assert any("bound" in line or "discrepancy" in line or "epsilon" in line for line in _tampered(d, cert, coefficient))
    free = next(t for t in range(11) if t not in sum((x["basis"] + x["folded"] for x in cert["evidence"][0]["folds"][:1]), [])
                and t not in cert["evidence"][0]["removed"][0])

    def unstable_claim(c):  # claim an unstable channel as folded (zero coefficients)
        fold = c["evidence"][0]["folds"][0]
        fold["folded"].append(free)
        fold["coefficients"].append([0.0] * len(fold["basis"]))

    assert any("linear" in line for line in _tampered(d, cert, unstable_claim))


def test_tampered_reduced_weights_fail(reduced):
    d, f, _, cert = reduced
    g = load_onnx(d / "g.onnx")
    g.layers[-1].op.weight[0, 0] += 1e-2
    save_onnx(g, d / "g.onnx")
    try:
        assert any("epsilon" in line or "bound" in line for line in _tampered(d, cert, lambda c: None))
    finally:
        g.layers[-1].op.weight[0, 0] -= 1e-2
        save_onnx(g, d / "g.onnx")


def test_max_pool_reader_blocks_folding(tmp_path):
    """conv (8 stably active channels of rank 3) -> relu -> max pool -> dense: a max pool is not linear
    across channels, so nothing folds (every channel stays)."""
    rng = np.random.default_rng(3)
    w0, b0 = _planted(rng, 1, 3, 8, 9, 64, (32, 48))
    b = GraphBuilder(IMAGE)
    conv = ConvOperator(IMAGE, w0.reshape(8, 1, 3, 3))
    h = b.add(GNode("affine", ("input",), conv.out_shape, op=conv, bias=np.repeat(b0, conv.positions)))
    h = b.add(GNode("act", (h,), conv.out_shape, activation="relu"))
    mp = MaxPool(conv.out_shape, (2, 2), (2, 2), (0,) * 4)
    h = b.add(GNode("maxpool", (h,), mp.out_shape, pool=mp))
    dense = DenseOperator((rng.standard_normal((3, 8 * 9)) * 0.3).astype(np.float32).astype(np.float64))
    out = b.add(GNode("affine", (h,), (3,), op=dense, bias=np.zeros(3), source_op="gemm"))
    save_graph(GraphNetwork(b.graph, out, "x", "y", ["batch", *IMAGE], ["batch", 3]), tmp_path / "f.onnx")
    res = apply_pass(OnSetPass(), tmp_path / "f.onnx", tmp_path / "g.onnx", tmp_path / "g.cert.json", X)
    cert = json.loads(res.certificate_path.read_text())
    assert cert["stats"]["channels_after"] == cert["stats"]["channels_before"]
    assert sum(cert["stats"]["channels_after"]) >= 8
    assert check_certificate(res.certificate_path).holds


def planted_residual(seed: int = 4) -> GraphNetwork:
    """conv A0 (8 stably active channels of rank 3, 2 unstable, 1 dead) -> relu R0 -> conv A1 (6 stably
    active of rank 2, pad 1) -> relu R1 -> conv A2 (pad 1) -> Add(A2, R1) -> relu -> max pool -> dense.
    R0 is read by A1 alone (folds); R1 is read by the Add too (blocked)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(IMAGE)

    def conv(src, w3, bias, shape, pads):
        op = ConvOperator(shape, w3.reshape(w3.shape[0], w3.shape[1], 3, 3), pads=pads)
        return b.add(GNode("affine", (src,), op.out_shape, op=op, bias=np.repeat(bias, op.positions))), op.out_shape

    w0, b0 = _planted(rng, 1, 3, 8, 9, 64, (32, 48))
    w0 = np.concatenate([w0, np.stack([_plus_minus(1, 9, 0, 0, 8), _plus_minus(1, 9, 0, 2, 6)]),
                         rng.integers(-6, 7, (1, 1, 9)) / 64])
    a0, shape = conv("input", w0, np.r_[b0, 0.0, 0.0, -20.0], IMAGE, (0, 0, 0, 0))
    r0 = b.add(GNode("act", (a0,), shape, activation="relu"))
    w1, b1 = _planted(rng, 11, 2, 6, 9, 1024, (320, 400))
    a1, shape = conv(r0, w1, b1, shape, (1, 1, 1, 1))
    r1 = b.add(GNode("act", (a1,), shape, activation="relu"))
    a2, _ = conv(r1, rng.integers(-4, 5, (6, 6, 9)) / 64, np.zeros(6), shape, (1, 1, 1, 1))
    s = b.add(GNode("act", (b.add(GNode("add", (a2, r1), shape)),), shape, activation="relu"))
    mp = MaxPool(shape, (2, 2), (2, 2), (0,) * 4)
    h = b.add(GNode("maxpool", (s,), mp.out_shape, pool=mp))
    dense = DenseOperator((rng.standard_normal((3, 6 * 9)) * 0.3).astype(np.float32).astype(np.float64))
    out = b.add(GNode("affine", (h,), (3,), op=dense, bias=np.zeros(3), source_op="gemm"))
    return GraphNetwork(b.graph, out, "x", "y", ["batch", *IMAGE], ["batch", 3])


def test_graph_folds_where_only_convs_read(tmp_path, rng):
    save_graph(planted_residual(), tmp_path / "f.onnx")
    res = apply_pass(OnSetPass(), tmp_path / "f.onnx", tmp_path / "g.onnx", tmp_path / "g.cert.json", X)
    cert = json.loads(res.certificate_path.read_text())
    steps = [s["step"] for s in cert["evidence"]]
    assert steps == ["on-set-graph", "on-set-graph-fold"]
    folds = cert["evidence"][1]["folds"]
    assert [len(x["folded"]) for x in folds] == [8 - 3]  # R0 only: R1 is read by the Add
    assert cert["stats"]["channels_before"][:2] == [11, 6] and cert["stats"]["channels_after"][:2] == [5, 6]
    assert check_certificate(res.certificate_path).holds
    disc = cert["guarantee"]["epsilon"]
    x = rng.uniform(0, 1, (2000, 64)).astype(np.float32)
    y_f, y_g = run_onnx(tmp_path / "f.onnx", x), run_onnx(tmp_path / "g.onnx", x)
    assert 0 < disc < 1e-4 * float(np.max(np.abs(y_f)))
    assert np.max(np.abs(y_f - y_g)) <= disc + 1e-5 * float(np.max(np.abs(y_f)))
    bad = json.loads(json.dumps(cert))
    bad["evidence"][1]["folds"][0]["coefficients"][0][0] += 0.25
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert not check_certificate(tmp_path / "bad.json").holds
    f = load_graph(tmp_path / "f.onnx")  # claim a fold of R1, which the Add reads
    r1 = next(k for k, n in enumerate(f.order) if any(f.node(s).kind == "add" for s in f.graph.successors(n)))
    bad = json.loads(json.dumps(cert))
    bad["evidence"][1]["folds"].append({"node": r1, "basis": [0], "folded": [1], "coefficients": [[1.0]]})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    report = check_certificate(tmp_path / "bad.json")
    assert not report.holds and any("cannot fold" in line for line in report.lines), report.lines
