"""Coreset pruning (DESIGN.md §6): re-weighting and bias path vs an independent computation,
certified error >= sampled error (onnxruntime), twin equality."""
from __future__ import annotations

import json

import numpy as np

from lumpver.certificates.format import CheckContext
from lumpver.reductions.certify import expand_pruned, sample_points
from lumpver.certificates.bounded_bab import check_evidence_entry
from lumpver.reductions.coreset import coreset_prune
from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.runtime import run_onnx


def _net(rng, widths=(3, 12, 10, 2)) -> Network:
    layers = []
    for k in range(len(widths) - 1):
        w = rng.standard_normal((widths[k + 1], widths[k])) / np.sqrt(widths[k])
        b = rng.uniform(0.2, 1.0, widths[k + 1]) * rng.choice([-1, 1], widths[k + 1])  # distinct nonzero biases
        layers.append(Layer(np.float32(w), np.float32(b), "relu" if k < len(widths) - 2 else "identity"))
    return Network(layers)


def test_reweighting_and_bias_path_match_design(rng):
    net = _net(rng)
    res = coreset_prune(net, 0.5, beta=1.0, seed=7)
    cur = [l.copy() for l in net.layers]
    for k, lc in enumerate(res.layers):
        w, b, v = cur[k].weight, cur[k].bias, cur[k + 1].weight
        s = np.array([np.max(np.abs(v[:, j])) * max(0.0, np.sqrt(np.sum(w[j] ** 2) + b[j] ** 2)) for j in range(w.shape[0])])
        q = s / s.sum()
        assert lc.counts.sum() == lc.draws and np.allclose(lc.probs, q[lc.kept])
        # the kept neuron j keeps its own row and its own bias b_j (not a neighbour's)
        assert np.allclose(res.reduced.layers[k].weight, w[lc.kept], atol=1e-6)
        assert np.allclose(res.reduced.layers[k].bias, b[lc.kept], atol=1e-6)
        assert not np.allclose(res.reduced.layers[k].bias, b[(lc.kept + 1) % b.size], atol=1e-3)
        expect = v[:, lc.kept] * lc.counts / (lc.draws * q[lc.kept])
        assert np.allclose(res.reduced.layers[k + 1].weight[:, :], expect if k + 1 == len(res.layers) else
                           res.reduced.layers[k + 1].weight, atol=1e-5)
        if k + 1 < len(res.layers):  # next layer's columns before its own rows are pruned
            cur[k + 1] = Layer(expect, cur[k + 1].bias, cur[k + 1].activation)
            nxt = res.layers[k + 1].kept
            assert np.allclose(res.reduced.layers[k + 1].weight, expect[nxt], atol=1e-5)
        cur[k] = Layer(w[lc.kept], b[lc.kept], cur[k].activation)
    assert res.reduced.hidden_widths == [6, 5]


def test_twin_of_pruned_network_is_equal(rng):
    net = _net(rng)
    res = coreset_prune(net, 0.5, seed=1)
    twin = expand_pruned(net, res.reduced, res.kept)
    x = rng.uniform(-3, 3, (200, 3))
    assert twin.hidden_widths == net.hidden_widths
    assert np.allclose(twin.forward(x), res.reduced.forward(x), rtol=0, atol=1e-12)


def test_cli_coreset_certificate(rng, tmp_path):
    from lumpver.cli import main

    net = _net(rng)
    orig, out, cert_path = tmp_path / "f.onnx", tmp_path / "g.onnx", tmp_path / "g.cert.json"
    save_onnx(net, orig)
    lo, hi = -np.ones(3), np.ones(3)
    spec = tmp_path / "box.vnnlib"
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + "(declare-const Y_0 Real)\n"
                    "(declare-const Y_1 Real)\n" + "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n"
                                                         for i in range(3)) + "(assert (>= Y_0 Y_1))\n")
    assert main(["prune", str(orig), "-o", str(out), "--method", "coreset", "--keep", "0.5", "--input-set",
                 str(spec), "--certificate", str(cert_path), "-q"]) == 0
    cert = json.loads(cert_path.read_text())
    eps = cert["guarantee"]["epsilon"]
    x = sample_points(InputSet([Box(lo, hi)]), 4000, seed=5)
    sampled = np.max(np.abs(run_onnx(orig, x) - run_onnx(out, x)))
    assert sampled <= eps and np.isfinite(eps)
    assert cert["stats"]["neurons_after"] == 11
    ctx = CheckContext(cert_path, orig, out)
    assert check_evidence_entry(cert, ctx, cert["evidence"][0]).holds
    cert["guarantee"]["epsilon"] = sampled * 0.99  # a claim below an observed error must not re-check
    assert not check_evidence_entry(cert, ctx, cert["evidence"][0]).holds
    ev = cert["evidence"][0]
    ev["chain"]["kept"][0] = [0] * len(ev["chain"]["kept"][0])  # malformed embedding
    cert["guarantee"]["epsilon"] = eps
    assert not check_evidence_entry(cert, ctx, ev).holds
