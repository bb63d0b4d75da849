"""Quantisation (DESIGN.md §8): formula, QDQ export in onnxruntime, size, certified error >= sampled."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lumpver.certificates.format import CheckContext
from lumpver.reductions.certify import sample_points
from lumpver.certificates.bounded_bab import check_evidence_entry
from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.reductions.quantize import qdq_model, quantize_network, quantize_weight, save_quantized
from lumpver.ir.runtime import run_onnx


def _net(rng, widths=(4, 16, 16, 3)) -> Network:
    layers = []
    for k in range(len(widths) - 1):
        w = rng.standard_normal((widths[k + 1], widths[k])) / np.sqrt(widths[k])
        act = "relu" if k < len(widths) - 2 else "identity"
        layers.append(Layer(w.astype(np.float32), (0.1 * rng.standard_normal(widths[k + 1])).astype(np.float32), act))
    return Network(layers)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_formula_matches_independent_computation(rng, bits, per_channel):
    w = rng.standard_normal((7, 5)).astype(np.float32).astype(np.float64)
    ql = quantize_weight(w, bits, per_channel)
    qmax = 2 ** (bits - 1) - 1
    for i in range(w.shape[0]):
        amax = np.abs(w[i]).max() if per_channel else np.abs(w).max()
        s = np.float32(amax / qmax)
        expect = np.clip(np.round(w[i] / np.float64(s)), -qmax - 1, qmax)
        assert np.array_equal(ql.q[i].astype(np.float64), expect)
        assert np.allclose(ql.dequantized()[i], np.float32(expect) * s, rtol=0, atol=0)
    assert np.abs(ql.q.astype(int)).max() <= qmax + 1
    # rounding error is at most half a step
    s = ql.scale.astype(np.float64)[:, None] if per_channel else ql.scale.astype(np.float64)[0]
    assert np.all(np.abs(ql.dequantized() - w) <= s / 2 * (1 + 1e-6))


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_runs_and_loads_back(rng, tmp_path, per_channel):
    net = _net(rng)
    g, qls = quantize_network(net, 4, per_channel)
    qdq, flt = tmp_path / "q.onnx", tmp_path / "f.onnx"
    save_quantized(g, qls, qdq)
    save_quantized(g, qls, flt, float_weights=True)
    x = rng.uniform(-1, 1, (50, 4))
    assert np.allclose(run_onnx(qdq, x), run_onnx(flt, x), rtol=0, atol=1e-6)  # same weights, float32 kernels
    assert np.allclose(run_onnx(qdq, x), g.forward(x), rtol=0, atol=1e-6)  # no fused int kernels
    back = load_onnx(qdq)
    for a, b in zip(back.layers, g.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    assert any(n.op_type == "DequantizeLinear" for n in qdq_model(g, qls).graph.node)


def test_qdq_file_is_about_four_times_smaller(rng, tmp_path):
    net = _net(rng, (64, 128, 128, 10))
    orig = tmp_path / "orig.onnx"
    save_onnx(net, orig)
    g, qls = quantize_network(net, 8)
    save_quantized(g, qls, tmp_path / "q.onnx")
    ratio = orig.stat().st_size / (tmp_path / "q.onnx").stat().st_size
    assert 3.3 < ratio < 4.2


def test_cli_certificate_bounds_sampled_error_and_detects_tampering(rng, tmp_path):
    from lumpver.cli import main

    net = _net(rng)
    orig = tmp_path / "orig.onnx"
    save_onnx(net, orig)
    spec = tmp_path / "box.vnnlib"
    lo, hi = -np.ones(4) * 0.5, np.ones(4) * 0.5
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(4)) + "".join(
        f"(declare-const Y_{i} Real)\n" for i in range(3)) + "".join(
        f"(assert (>= X_{i} {lo[i]}))\n(assert (<= X_{i} {hi[i]}))\n" for i in range(4)) + "(assert (>= Y_0 Y_1))\n")
    out, cert_path = tmp_path / "q.onnx", tmp_path / "q.cert.json"
    assert main(["quantize", str(orig), "-o", str(out), "--bits", "4", "--input-set", str(spec), "-q",
                 "--certificate", str(cert_path)]) == 0
    cert = json.loads(cert_path.read_text())
    eps = cert["guarantee"]["epsilon"]
    x = sample_points(InputSet([Box(lo, hi)]), 4000, seed=3)
    sampled = np.max(np.abs(run_onnx(orig, x) - run_onnx(out, x)))
    assert 0 < sampled <= eps
    ctx = CheckContext(cert_path, orig, out)
    assert check_evidence_entry(cert, ctx, cert["evidence"][0]).holds
    cert["guarantee"]["epsilon"] = sampled * 0.5
    assert not check_evidence_entry(cert, ctx, cert["evidence"][0]).holds
