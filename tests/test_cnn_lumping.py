"""Exact channel lumping of CNNs (issue 12 item 2, DESIGN.md §10): planted CNNs collapse to the
planted channel counts, onnxruntime-equal; certificates re-check with ``lumpver check`` and
tampering is caught; every shared CNN reduces exactly and round-trips.

References are independent of the reducer: the planted construction (channel counts), onnxruntime
on the two files (outputs), a float64 forward pass against the certified bound ``a + b ||x||``, and
the checker in a subprocess (it imports no reduction code)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from lumpver.certificates.exact import discrepancy_bound
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.planted import planted_cnn
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.exact import exact_lump

SHARED_CNNS = ["cnn/verivital/Convnet_avgpool.onnx", "cnn/oval21/nets/cifar_base_kw.onnx"]


def _cli(*args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *args] + (["-q"] if quiet else []), capture_output=True,
                          text=True, timeout=600)


def _reduce(model, tmp_path):
    out, cert = tmp_path / "r.onnx", tmp_path / "r.cert.json"
    p = _cli("reduce", str(model), "--mode", "exact", "-o", str(out))
    assert p.returncode == 0, p.stderr
    return out, cert


def _onnx_equal(a, b, x: np.ndarray) -> float:
    return float(np.max(np.abs(run_onnx(a, x.astype(np.float32)) - run_onnx(b, x.astype(np.float32)))))


@pytest.mark.parametrize("pool", ["avg", "none"])
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_cnn_collapses_to_planted_channels(tmp_path, rng, pool, seed):
    planted = planted_cnn(channels=(12, 9), core=(4, 3), pool=pool, image=(2, 10, 10), seed=seed)
    model = tmp_path / "p.onnx"
    save_onnx(planted.network, model)
    out, cert_path = _reduce(model, tmp_path)
    g = load_onnx(out)
    assert [layer.op.out_channels for layer in g.layers[:-1]] == planted.core
    cert = json.loads(cert_path.read_text())
    assert cert["stats"]["channels_before"] == planted.channels and cert["stats"]["channels_after"] == planted.core
    x = rng.uniform(-1, 1, size=(32, planted.network.n_inputs))
    y = run_onnx(model, x.astype(np.float32))
    assert _onnx_equal(model, out, x) <= 1e-5 * (1 + np.max(np.abs(y)))
    d = cert["guarantee"]["float_tolerance"]["discrepancy_bound"]
    f = load_onnx(model)
    gap = np.max(np.abs(f.forward(x) - g.forward(x)), axis=1)
    assert np.all(gap <= d["a"] + d["b"] * np.max(np.abs(x), axis=1))
    assert _cli("check", str(cert_path)).returncode == 0


def _rewrite(cert_path, reduced_path, edit_claim=None) -> None:
    """Re-sign the certificate for an edited reduced file (so only the mathematics can catch it)."""
    cert = json.loads(cert_path.read_text())
    cert["reduced"]["sha256"] = hashlib.sha256(reduced_path.read_bytes()).hexdigest()
    if edit_claim is not None:
        edit_claim(next(e for e in cert["evidence"] if e.get("backend") == "lumping")["claim"])
    cert_path.write_text(json.dumps(cert))


def test_tampering_is_caught(tmp_path):
    planted = planted_cnn(channels=(10, 8), core=(3, 2), pool="avg", image=(1, 8, 8), seed=3)
    model = tmp_path / "p.onnx"
    save_onnx(planted.network, model)
    out, cert_path = _reduce(model, tmp_path)
    original_cert = cert_path.read_text()
    # a weight of the reduced file
    m = onnx.load(out)
    init = next(i for i in m.graph.initializer if onnx.numpy_helper.to_array(i).ndim == 4)
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[5] += 0.01
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(m, out)
    _rewrite(cert_path, out)
    assert _cli("check", str(cert_path)).returncode == 1
    # the claimed classes (the reduced file intact)
    out, cert_path = _reduce(model, tmp_path)
    claim_cert = json.loads(original_cert)

    def merge_two_classes(claim):
        layer = claim["layers"][0]
        layer["class_of"] = [0 if c == 1 else c for c in layer["class_of"]]

    _rewrite(cert_path, out, merge_two_classes)
    assert _cli("check", str(cert_path)).returncode == 1

    def rescale_a_member(claim):  # a well-formed partition whose scale is wrong: only the bound catches it
        layer = claim["layers"][1]
        member = next(t for t, c in enumerate(layer["class_of"]) if c >= 0 and t not in layer["representative"])
        layer["scale"][member] *= 1.5

    cert_path.write_text(original_cert)
    _rewrite(cert_path, out, rescale_a_member)
    p = _cli("check", str(cert_path), quiet=False)
    assert p.returncode == 1 and "FAIL: guarantee.float_tolerance.discrepancy_bound" in p.stdout, p.stdout
    assert claim_cert["guarantee"]["kind"] == "exact"


@pytest.mark.parametrize("rel", SHARED_CNNS)
def test_shared_cnn_reduces_exactly_and_round_trips(shared_data, tmp_path, rng, rel):
    model = shared_data / rel
    out, cert_path = _reduce(model, tmp_path)
    f, g = load_onnx(model), load_onnx(out)
    assert [layer.op.out_channels for layer in g.layers[:-1]] <= [layer.op.out_channels for layer in f.layers[:-1]]
    x = rng.uniform(0, 1, size=(8, f.n_inputs))
    y = run_onnx(model, x.astype(np.float32))
    assert _onnx_equal(model, out, x) <= 1e-5 * (1 + np.max(np.abs(y)))
    assert _cli("check", str(cert_path)).returncode == 0
    # the bound the checker recomputes holds on float64 forward passes
    res = exact_lump(f)
    a, b = discrepancy_bound(f, res.reduced, res.classes)
    assert np.all(np.max(np.abs(f.forward(x) - res.reduced.forward(x)), axis=1) <= a + b * np.max(np.abs(x), axis=1))
