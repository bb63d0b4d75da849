"""Smooth-activation reduction on an input set (lumpver/reductions/smooth_fold.py, DESIGN.md §3-§4):
nearly constant sigmoid/tanh neurons folded into the next bias, certified, re-checked by ``lumpver
check``. Independent references: onnxruntime on the written files (sampled error never above the
certified bound; a certificate tightened below it fails the check) and dense sampling of the
pre-activations (each neuron's stated output range contains every sampled value)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.planted import saturated_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.certify import sample_points
from lumpver.reductions.smooth_fold import constant_candidates, fold_constants
from lumpver.specs.inputset import Box, InputSet


def _case(activation: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    net = saturated_mlp(rng, [4, 24, 24, 24, 3], activation)
    c = rng.uniform(-1, 1, 4)
    return net, InputSet([Box(c - 0.1, c + 0.1)])


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_folded_constants_match_a_manual_forward_pass(activation):
    """The first candidates are the planted saturated neurons (nearly constant on samples), and the
    folded network equals h with those neurons' outputs overwritten by their constants (numpy)."""
    net, X = _case(activation)
    order, consts = constant_candidates(net, X)
    assert len(order) == net.n_hidden - 3  # every smooth neuron but one per layer
    x = sample_points(X, 3000, seed=2)
    acts = net.activations(x)
    for k, j in order[:20]:
        assert np.max(np.abs(acts[k + 1][:, j] - consts[k][j])) < 1e-2
    gone = [[j for kk, j in order[:30] if kk == k] for k in range(3)]
    kept = [np.setdiff1d(np.arange(w), gone[k]) for k, w in enumerate(net.hidden_widths)]
    h = net.preprocess(x)
    for k, layer in enumerate(net.layers):
        h = layer.activate(h @ layer.weight.T + layer.bias)
        if k < 3:
            h[:, gone[k]] = consts[k][gone[k]]
    assert np.allclose(fold_constants(net, kept, consts).forward(x), h, atol=1e-5)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_cli_reduce_smooth_then_check(tmp_path, activation):
    net, X = _case(activation, seed=1)
    (box,) = X.boxes()
    orig, out, cert_path, spec = (tmp_path / n for n in ("f.onnx", "g.onnx", "g.cert.json", "x.vnnlib"))
    save_onnx(net, orig)
    spec.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(4)) + "".join(
        f"(assert (>= X_{i} {float(lo)!r}))\n(assert (<= X_{i} {float(hi)!r}))\n" for i, (lo, hi) in enumerate(zip(box.lower, box.upper))))
    r = _cli("reduce", orig, "-o", out, "--mode", "approx", "--input-set", spec, "--epsilon", 0.01, "--timeout", 8,
             "-q")
    assert r.returncode == 0, r.stderr
    cert = json.loads(cert_path.read_text())
    eps = cert["guarantee"]["epsilon"]
    x = sample_points(X, 5000, seed=5).astype(np.float32)
    seen = float(np.max(np.abs(run_onnx(orig, x).astype(np.float64) - run_onnx(out, x))))
    assert seen <= eps <= 0.01
    assert load_onnx(out).n_hidden < net.n_hidden
    assert _cli("check", cert_path).returncode == 0
    bad = json.loads(json.dumps(cert))
    bad["guarantee"]["epsilon"] = seen / 2  # below an error onnxruntime shows: must not re-check
    cert_path.write_text(json.dumps(bad))
    assert _cli("check", cert_path).returncode == 1
