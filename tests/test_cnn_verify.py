"""Bounds, falsifier and ``verify`` on convolutional networks (issue 12 item 4, DESIGN.md §3, §5, §10).

Independent references: onnxruntime outputs on sampled inputs of each property box (bounds must
bracket them, widened only by the float32 evaluation error bound), central finite differences of
the network (the falsifier's vector-Jacobian product), onnxruntime replay of every ``sat`` and the
published VNN-COMP 2021 results (no answer may contradict them).
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

from lumpver.api.verify import verify_property
from lumpver.bounds.engine import compute_bounds, objective_bounds, prepare
from lumpver.bounds.float_error import float32_error
from lumpver.bounds.region import region_box
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import InputSet
from lumpver.specs.vnnlib import read_vnnlib
from lumpver.verifiers.base import Query, get_backend
from lumpver.verifiers.falsify import forward_vjp

AVGPOOL = ("cnn/verivital", "Convnet_avgpool.onnx", "specs_avgpool/prop_{}_{}.vnnlib")
OVAL = ("cnn/oval21", "nets/cifar_base_kw.onnx", "vnnlib/cifar_base_kw-{}.vnnlib")
CASES = [  # (folder, model, property) on both shared CNN families
    (AVGPOOL[0], AVGPOOL[1], AVGPOOL[2].format(0, "0.02")),
    (AVGPOOL[0], AVGPOOL[1], AVGPOOL[2].format(4, "0.02")),
    (OVAL[0], OVAL[1], OVAL[2].format("img4549-eps0.00392156862745098")),
]


def _published(shared, folder: str, prop: str) -> set[str]:
    """The decided answers ('sat'/'unsat') peers published for an instance (a-b-CROWN first)."""
    name = prop.split("/")[-1]
    with open(shared / "cnn" / "published_results_vnncomp2021.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["folder"] == folder.split("/")[-1] and r["vnnlib"] == name]
    ref = {r["tool"]: r["result"].lower() for r in rows}
    answer = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}
    return {answer[ref["a-b-CROWN"]]} if ref.get("a-b-CROWN") in answer else {answer[v] for v in ref.values() if v in answer}


@pytest.mark.parametrize("folder,model,prop", CASES)
def test_bounds_bracket_onnxruntime(shared_data, rng, folder, model, prop):
    """CROWN and interval bounds of every output contain onnxruntime's outputs on samples of the
    property box (corners of a random sub-face included), up to the float32 error bound."""
    path = shared_data / folder / model
    net = load_onnx(path)
    spec = read_vnnlib(shared_data / folder / prop, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    box = region_box(spec.cases[0].region)
    xs = np.vstack([box.sample(40, rng, corners=True), np.where(rng.random((8, box.dim)) < 0.5, box.lower, box.upper)])
    y = run_onnx(path, xs.astype(np.float32))
    chain = prepare(net)
    for method in ("interval", "crown"):
        nb = compute_bounds(net, box, method, chain=chain)
        err = float32_error(net, box, nb)
        assert np.all(err < 0.1) and np.all(nb.output_lower <= nb.output_upper)
        assert np.all(y >= nb.output_lower - err) and np.all(y <= nb.output_upper + err), method
    lam = rng.normal(size=(3, net.n_outputs))
    lo, up = objective_bounds(chain, nb, lam, box)
    v = y @ lam.T
    tol = np.abs(lam) @ float32_error(net, box, nb)
    assert np.all(v >= lo - tol) and np.all(v <= up + tol)


def test_falsifier_gradient_matches_finite_differences(shared_data, rng):
    """The vector-Jacobian product through conv, pad and average pooling equals central finite
    differences of the float64 forward pass (the network is piecewise linear: a tiny step)."""
    net = load_onnx(shared_data / AVGPOOL[0] / AVGPOOL[1])
    x = rng.uniform(0.0, 1.0, size=(2, net.n_inputs))
    y, vjp = forward_vjp(net, x)
    assert np.allclose(y, net.forward(x), rtol=1e-12, atol=1e-12)
    seed = rng.normal(size=y.shape)
    g = vjp(seed)
    d = rng.normal(size=x.shape)
    h = 1e-7
    fd = np.sum(seed * (net.forward(x + h * d) - net.forward(x - h * d)), axis=1) / (2 * h)
    assert np.allclose(np.sum(g * d, axis=1), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("folder,model,prop", CASES[:2] + [
    (AVGPOOL[0], AVGPOOL[1], AVGPOOL[2].format(8, "0.04")),
    (OVAL[0], OVAL[1], OVAL[2].format("img1697-eps0.0014379084967320263")),
])
def test_verify_agrees_with_published(shared_data, folder, model, prop):
    """``verify`` with the bound engine + falsifier never contradicts the published answers; a sat
    is replayed here once more with onnxruntime (input in the box, output in the unsafe set)."""
    r = verify_property(shared_data / folder / model, shared_data / folder / prop, backend="interval", timeout=20)
    assert r.result in ("sat", "unsat", "unknown", "timeout"), r.reason
    published = _published(shared_data, folder, prop)
    if r.result in ("sat", "unsat"):
        assert published <= {r.result}, (r.result, published)
    if r.result == "sat":
        net = load_onnx(shared_data / folder / model)
        spec = read_vnnlib(shared_data / folder / prop, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
        y = run_onnx(shared_data / folder / model, r.x.astype(np.float32))[0]
        assert any(c.region.contains(r.x, tol=1e-9) and c.unsafe.is_unsafe(y, tol=0.0) for c in spec.cases)


def test_dense_only_backends_say_unknown_on_cnn(shared_data):
    """The SMT and Marabou back-ends encode dense layers only: on a CNN they answer unknown with
    the reason, never crash and never claim."""
    folder, model, prop = CASES[0]
    net = load_onnx(shared_data / folder / model)
    spec = read_vnnlib(shared_data / folder / prop, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    case = spec.cases[0]
    for name in ("smt", "marabou"):
        v = get_backend(name).check(Query(net, InputSet([case.region]), prop=case.unsafe, timeout=5))
        assert v.verdict == "unknown" and "convolutional" in v.reason, (name, v.reason)
