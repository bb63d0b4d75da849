"""On-set exact reduction (lumpver.reductions.onset) and its checker (lumpver.certificates.onset).

The reduced models are compared with the originals under onnxruntime on thousands of points of
the input set (corners included); certificates must re-check, and must fail when the input
set is widened or the evidence is tampered with."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumpver.bounds.engine import compute_bounds
from lumpver.certificates.format import check_certificate
from lumpver.ir.planted import random_mlp
from lumpver.specs.inputset import Box, InputSet, Polytope
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.reductions.onset import reduce_on_set, reduce_on_set_to_files
from lumpver.ir.runtime import run_onnx
from lumpver.specs.vnnlib import read_vnnlib

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ACAS = DATA / "acasxu"


def acas(i: int, j: int) -> Path:
    return ACAS / "onnx" / f"ACASXU_run2a_{i}_{j}_batch_2000.onnx"


def samples(iset: InputSet, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([b.sample(n, rng) for b in iset.boxes()])


def assert_same_on_set(orig: Path, red: Path, x: np.ndarray, disc: float) -> None:
    """onnxruntime outputs agree up to float32 rounding of both runs plus the certified discrepancy."""
    y0, y1 = run_onnx(orig, x), run_onnx(red, x)
    tol = disc + 2e-5 * (1 + np.abs(y0).max())
    assert np.abs(y0 - y1).max() <= tol


def widen(cert_path: Path, out: Path, delta: float) -> Path:
    cert = json.loads(cert_path.read_text())
    for reg in cert["guarantee"]["input_set"]["regions"]:
        reg["lower"] = [v - delta for v in reg["lower"]]
        reg["upper"] = [v + delta for v in reg["upper"]]
    out.write_text(json.dumps(cert))
    return out


@pytest.mark.parametrize("net_id,prop", [((1, 1), 3), ((2, 3), 4), ((4, 5), 3), ((3, 2), 4)])
def test_acas_prop_3_4_reduced_equal_on_set_and_recheck(tmp_path, net_id, prop):
    orig = acas(*net_id)
    iset = read_vnnlib(ACAS / "vnnlib" / f"prop_{prop}.vnnlib").input_set()
    cert = reduce_on_set_to_files(orig, tmp_path / "r.onnx", tmp_path / "r.json", iset, max_leaves=8)
    assert cert["guarantee"]["kind"] == "exact-on-set"
    assert cert["stats"]["neurons_after"] < 0.6 * cert["stats"]["neurons_before"]
    red = load_onnx(tmp_path / "r.onnx")
    assert red.n_hidden == cert["stats"]["neurons_after"]
    assert_same_on_set(orig, tmp_path / "r.onnx", samples(iset, 3000, 1), cert["guarantee"]["epsilon"])
    rep = check_certificate(tmp_path / "r.json")
    assert rep.holds, rep.lines
    # widening the declared set must break at least one stability claim
    bad = check_certificate(widen(tmp_path / "r.json", tmp_path / "w.json", 0.2))
    assert not bad.holds
    assert any("claimed" in line for line in bad.lines)


def test_acas_prop6_union_of_boxes(tmp_path):
    orig = acas(1, 1)
    iset = read_vnnlib(ACAS / "vnnlib" / "prop_6.vnnlib").input_set()
    assert len(iset.regions) == 2
    cert = reduce_on_set_to_files(orig, tmp_path / "r.onnx", tmp_path / "r.json", iset, max_leaves=4)
    assert cert["stats"]["neurons_after"] < cert["stats"]["neurons_before"]
    assert_same_on_set(orig, tmp_path / "r.onnx", samples(iset, 2000, 2), cert["guarantee"]["epsilon"])
    assert check_certificate(tmp_path / "r.json").holds
    # a removed neuron must be stable on *both* boxes: dropping one box from the certificate's set is
    # still fine (a subset), but the reduction computed on one box alone must not be valid on the union
    one = InputSet([iset.regions[0]])
    res = reduce_on_set(load_onnx(orig), one, max_leaves=1, lump=False)
    nb_other = compute_bounds(load_onnx(orig), iset.regions[1])
    fold0 = res.steps[0]["layers"][0]
    unstable_elsewhere = [j for j in fold0["stably_inactive"] if nb_other.pre_upper[0][j] > 0]
    both = cert["evidence"][0]["layers"][0]["stably_inactive"]
    assert not set(unstable_elsewhere) & set(both)


def test_mnist_property_box(tmp_path):
    orig = DATA / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"
    iset = read_vnnlib(DATA / "mnist_fc" / "vnnlib" / "prop_1_0.03.vnnlib").input_set()
    cert = reduce_on_set_to_files(orig, tmp_path / "r.onnx", tmp_path / "r.json", iset)
    assert cert["stats"]["neurons_after"] < cert["stats"]["neurons_before"]
    assert_same_on_set(orig, tmp_path / "r.onnx", samples(iset, 2000, 3), cert["guarantee"]["epsilon"])
    assert check_certificate(tmp_path / "r.json").holds


def test_tampered_coefficients_fail(tmp_path):
    orig = acas(1, 1)
    iset = read_vnnlib(ACAS / "vnnlib" / "prop_3.vnnlib").input_set()
    reduce_on_set_to_files(orig, tmp_path / "r.onnx", tmp_path / "r.json", iset, max_leaves=1)
    cert = json.loads((tmp_path / "r.json").read_text())
    layer = next(d for d in cert["evidence"][0]["layers"] if d["folded"])
    layer["coefficients"][0][0] *= 1.01
    (tmp_path / "t.json").write_text(json.dumps(cert))
    assert not check_certificate(tmp_path / "t.json").holds
    # claiming an unstable neuron as removed fails too
    cert = json.loads((tmp_path / "r.json").read_text())
    nb = compute_bounds(load_onnx(orig), iset.regions[0])
    lay = cert["evidence"][0]["layers"][2]
    unstable = [j for j in range(50) if nb.pre_lower[2][j] < 0 < nb.pre_upper[2][j]]
    lay["stably_inactive"].append(unstable[0])
    (tmp_path / "u.json").write_text(json.dumps(cert))
    assert not check_certificate(tmp_path / "u.json").holds


# ----- random networks ------------------------------------------------------------------------
def random_net(rng, widths, act):
    return random_mlp(rng, widths, act, alpha=0.2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), act=st.sampled_from(["relu", "leaky_relu", "identity", "tanh", "sigmoid"]),
       radius=st.floats(0.01, 1.0))
def test_random_nets_equal_on_set_within_certified_discrepancy(seed, act, radius):
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(1, 4))
    net = random_net(rng, [n_in, 12, 10, 8, 3], act)
    c = rng.normal(size=n_in)
    iset = InputSet([Box(c - radius, c + radius)])
    res = reduce_on_set(net, iset, max_leaves=4)
    assert res.reduced.n_hidden <= net.n_hidden
    if act in ("tanh", "sigmoid"):
        assert res.reduced.n_hidden == net.n_hidden  # nothing is linear on a range
    if act == "identity":
        widths = [n_in] + res.reduced.hidden_widths  # rank of the augmented affine rows
        assert all(widths[k + 1] <= widths[k] + 1 for k in range(len(widths) - 1))
    x = samples(iset, 1000, seed)
    err = np.abs(net.forward(x) - res.reduced.forward(x)).max()
    assert err <= res.discrepancy + 1e-9 * (1 + np.abs(net.forward(x)).max())


def test_random_net_files_and_polytope(tmp_path):
    rng = np.random.default_rng(4)
    net = random_net(rng, [2, 16, 16, 2], "relu")
    save_onnx(net, tmp_path / "n.onnx")
    bb = Box(np.array([0.0, 0.0]), np.array([1.0, 1.0]))
    poly = Polytope(np.array([[1.0, 1.0]]), np.array([1.0]), bb)
    iset = InputSet([poly])
    cert = reduce_on_set_to_files(tmp_path / "n.onnx", tmp_path / "r.onnx", tmp_path / "r.json", iset, lp=True)
    pts = bb.sample(5000, rng, corners=False)
    pts = np.vstack([pts[pts.sum(axis=1) <= 1.0], [[0, 0], [1, 0], [0, 1]]])
    assert_same_on_set(tmp_path / "n.onnx", tmp_path / "r.onnx", pts, cert["guarantee"]["epsilon"])
    assert check_certificate(tmp_path / "r.json").holds
