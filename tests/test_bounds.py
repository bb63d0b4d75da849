"""Bound propagation (lumpver.bounds.engine): soundness against sampled forward passes and onnxruntime,
tightness ordering interval >= CROWN >= CROWN+LP, splitting helpers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumpver.bounds.engine import compute_bounds, hull_bounds, interval_bounds
from lumpver.bounds.region import bisect_box, split_box
from lumpver.bounds.rounding import POLICY
from lumpver.bounds.split import leaves_from_tree, set_bounds
from lumpver.specs.inputset import Box, InputSet, Polytope
from lumpver.ir.network import InputOp, Layer, Network
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.runtime import run_onnx
from lumpver.specs.vnnlib import read_vnnlib

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ACAS = DATA / "acasxu"


def acas(i: int, j: int) -> Path:
    return ACAS / "onnx" / f"ACASXU_run2a_{i}_{j}_batch_2000.onnx"


def pre_activations(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """Independent float64 forward pass (not using lumpver.bounds.engine) of every layer's z and h."""
    h = x.reshape(len(x), -1).astype(np.float64)
    scale, shift = net.input_affine()
    h = h * scale + shift
    out = []
    for layer in net.layers:
        z = h @ layer.weight.T + layer.bias
        h = layer.activate(z)
        out.append((z, h))
    return out


def assert_contains(net: Network, nb, x: np.ndarray, slack: float = 0.0) -> None:
    for k, (z, h) in enumerate(pre_activations(net, x)):
        tol = slack * (1 + np.abs(z))
        assert np.all(z >= nb.pre_lower[k] - tol), f"layer {k} pre lower violated"
        assert np.all(z <= nb.pre_upper[k] + tol), f"layer {k} pre upper violated"
        tol = slack * (1 + np.abs(h))
        assert np.all(h >= nb.post_lower[k] - tol) and np.all(h <= nb.post_upper[k] + tol), f"layer {k} post"


@pytest.mark.parametrize("net_id,prop", [((1, 1), 1), ((2, 4), 3), ((3, 7), 4), ((5, 9), 2)])
def test_acas_bounds_contain_samples_and_onnxruntime(net_id, prop):
    path = acas(*net_id)
    net = load_onnx(path)
    box = read_vnnlib(ACAS / "vnnlib" / f"prop_{prop}.vnnlib").input_set().regions[0]
    x = box.sample(3000, np.random.default_rng(prop))
    ib = interval_bounds(net, box)
    cb = compute_bounds(net, box, "crown")
    assert_contains(net, ib, x)
    assert_contains(net, cb, x)
    y = run_onnx(path, x)  # float32 runtime: allow its rounding (relative 1e-5)
    tol = 1e-5 * (1 + np.abs(y))
    assert np.all(y >= cb.output_lower - tol) and np.all(y <= cb.output_upper + tol)
    # CROWN at least as tight as interval everywhere (it is intersected with interval) and strictly
    # tighter on most neurons of the deeper layers
    for k in range(len(net.layers)):
        assert np.all(cb.pre_upper[k] - cb.pre_lower[k] <= ib.pre_upper[k] - ib.pre_lower[k] + 1e-12)
    deep = np.concatenate([cb.pre_upper[k] - cb.pre_lower[k] < ib.pre_upper[k] - ib.pre_lower[k]
                           for k in range(2, len(net.layers))])
    assert deep.mean() > 0.5


def test_acas_lp_tighter_than_crown_and_sound():
    path = acas(1, 1)
    net = load_onnx(path)
    box = read_vnnlib(ACAS / "vnnlib" / "prop_4.vnnlib").input_set().regions[0]
    cb = compute_bounds(net, box, "crown")
    lb = compute_bounds(net, box, "crown", lp=True)
    assert lb.n_lp > 0 and lb.lp
    for k in range(len(net.layers)):
        assert np.all(lb.pre_lower[k] >= cb.pre_lower[k] - 1e-9)
        assert np.all(lb.pre_upper[k] <= cb.pre_upper[k] + 1e-9)
    assert lb.n_unstable() <= cb.n_unstable()
    assert sum(np.sum(lb.pre_upper[k] - lb.pre_lower[k]) for k in range(6)) < \
        sum(np.sum(cb.pre_upper[k] - cb.pre_lower[k]) for k in range(6))
    assert_contains(net, lb, box.sample(3000, np.random.default_rng(5)))


def test_mnist_property_box():
    path = DATA / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"
    net = load_onnx(path)
    box = read_vnnlib(DATA / "mnist_fc" / "vnnlib" / "prop_0_0.03.vnnlib").input_set().regions[0]
    x = box.sample(500, np.random.default_rng(0))
    cb = compute_bounds(net, box, "crown")
    ib = interval_bounds(net, box)
    assert_contains(net, cb, x)
    y = run_onnx(path, x)
    tol = 1e-5 * (1 + np.abs(y))
    assert np.all(y >= cb.output_lower - tol) and np.all(y <= cb.output_upper + tol)
    assert np.sum(cb.pre_upper[1] - cb.pre_lower[1]) < np.sum(ib.pre_upper[1] - ib.pre_lower[1])


# ----- random networks (hypothesis) -----------------------------------------------------------
ACTS = ["relu", "leaky_relu", "sigmoid", "tanh", "identity"]


def random_net(rng: np.random.Generator, widths: list[int], acts: list[str], with_ops: bool) -> Network:
    layers = []
    for k in range(len(widths) - 1):
        w = rng.normal(size=(widths[k + 1], widths[k])).astype(np.float32)
        b = rng.normal(scale=0.5, size=widths[k + 1]).astype(np.float32)
        act = acts[k] if k < len(widths) - 2 else "identity"
        layers.append(Layer(w, b, act, alpha=0.1))
    ops = []
    if with_ops:
        ops = [InputOp("Sub", rng.normal(size=widths[0]).astype(np.float32).astype(np.float64)),
               InputOp("Div", rng.uniform(0.5, 2.0, size=widths[0]).astype(np.float32).astype(np.float64))]
    return Network(layers, ops)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 4), act=st.lists(st.sampled_from(ACTS), min_size=4, max_size=4),
       ops=st.booleans(), radius=st.floats(0.01, 2.0))
def test_random_nets_sound_and_ordered(seed, depth, act, ops, radius):
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(1, 5))
    widths = [n_in] + [int(rng.integers(1, 9)) for _ in range(depth)] + [int(rng.integers(1, 4))]
    net = random_net(rng, widths, act, ops)
    c = rng.normal(size=n_in)
    box = Box(c - radius, c + radius)
    x = box.sample(400, rng)
    ib, cb = interval_bounds(net, box), compute_bounds(net, box, "crown")
    lb = compute_bounds(net, box, "crown", lp=True)
    for nb in (ib, cb, lb):
        assert_contains(net, nb, x)
    for k in range(len(net.layers)):
        assert np.all(cb.pre_upper[k] - cb.pre_lower[k] <= ib.pre_upper[k] - ib.pre_lower[k] + 1e-12)
        assert np.all(lb.pre_lower[k] >= cb.pre_lower[k] - 1e-9) and np.all(lb.pre_upper[k] <= cb.pre_upper[k] + 1e-9)


def test_crown_tighter_than_interval_on_most_random_neurons():
    rng = np.random.default_rng(7)
    better = total = 0
    for _ in range(20):
        net = random_net(rng, [3, 8, 8, 8, 2], ["relu", "leaky_relu", "tanh"], False)
        box = Box(-np.ones(3) * 0.5, np.ones(3) * 0.5)
        ib, cb = interval_bounds(net, box), compute_bounds(net, box, "crown")
        for k in range(1, len(net.layers)):
            wi, wc = ib.pre_upper[k] - ib.pre_lower[k], cb.pre_upper[k] - cb.pre_lower[k]
            better += int(np.sum(wc < wi - 1e-12))
            total += wi.size
    assert better / total > 0.5


def test_polytope_input_sound_and_lp_uses_constraints():
    rng = np.random.default_rng(3)
    net = random_net(rng, [3, 10, 10, 2], ["relu", "relu"], True)
    bb = Box(-np.ones(3), np.ones(3))
    poly = Polytope(np.array([[1.0, 1.0, 1.0], [-1.0, 0.0, 1.0]]), np.array([0.5, 0.2]), bb)
    pts = bb.sample(20000, rng, corners=False)
    pts = pts[[poly.contains(p) for p in pts]]
    assert len(pts) > 1000
    cb = compute_bounds(net, poly, "crown")
    lb = compute_bounds(net, poly, "crown", lp=True)
    box_only = compute_bounds(net, bb, "crown")
    for nb in (cb, lb):
        assert_contains(net, nb, pts)
    # the polytope's own bounding box is tighter than the declared one, and the LP tighter still
    assert np.sum(cb.pre_upper[0] - cb.pre_lower[0]) < np.sum(box_only.pre_upper[0] - box_only.pre_lower[0])
    assert np.sum(lb.pre_upper[0] - lb.pre_lower[0]) <= np.sum(cb.pre_upper[0] - cb.pre_lower[0]) + 1e-9


def test_split_helpers_cover_and_hull_is_sound():
    rng = np.random.default_rng(11)
    net = random_net(rng, [2, 12, 12, 2], ["relu", "relu"], False)
    box = Box(np.array([-1.0, -0.5]), np.array([1.0, 0.7]))
    cells = split_box(box, [3, 4])
    assert len(cells) == 12
    x = box.sample(2000, rng)
    inside = np.array([[c.contains(p) for c in cells] for p in x])
    assert inside.any(axis=1).all()
    left, right, dim, at = bisect_box(box)
    assert dim == 0 and left.upper[0] == at == right.lower[0]
    hb = hull_bounds([compute_bounds(net, c) for c in cells])
    assert_contains(net, hb, x)
    sb = set_bounds(net, InputSet([box]), max_leaves=16)
    leaves = leaves_from_tree(box, sb.trees[0])
    assert len(leaves) == sb.n_leaves
    assert np.array([[lf.contains(p) for lf in leaves] for p in x]).any(axis=1).all()
    assert_contains(net, sb.bounds, x)
    whole = compute_bounds(net, box)
    assert sb.bounds.n_unstable() <= whole.n_unstable()


def test_margin_is_stated_and_nonzero():
    net = load_onnx(acas(1, 1))
    box = read_vnnlib(ACAS / "vnnlib" / "prop_3.vnnlib").input_set().regions[0]
    nb = compute_bounds(net, box)
    policy = json.loads(json.dumps(nb.rounding))  # recorded in certificates: must be JSON
    assert policy["unit_roundoff"] == 2.0**-53 and policy["name"] == "higham-gamma-magnitude" and nb.method == "crown"
    # the stated margin is nonzero: 2 gamma_K M with gamma_K = K u / (1 - K u)
    k, u = 100, 2.0**-53
    assert POLICY.margin(1.0, k) >= 2 * k * u / (1 - k * u) > 0


def test_norm_hi_bounds_exact_rational_norms():
    """norm_hi is at least the exact norm (rational arithmetic) of every row, and within 1e-12 of it."""
    from fractions import Fraction
    from lumpver.bounds.rounding import norm_hi
    rng = np.random.default_rng(3)
    rows = np.abs(rng.standard_normal((40, 2000))) * 10.0 ** rng.integers(-8, 8, size=(40, 1))
    for norm in ("linf", "l1", "l2"):
        for r, got in zip(rows, norm_hi(rows, norm)):
            values = [Fraction(float(v)) for v in r]
            if norm == "l2":  # compare squares: the exact norm is irrational
                exact, bound = sum(v * v for v in values), Fraction(float(got)) ** 2
            else:
                exact, bound = (max(values) if norm == "linf" else sum(values)), Fraction(float(got))
            assert exact <= bound <= exact * Fraction(1 + 1e-12)
    with pytest.raises(ValueError):
        norm_hi(rows, "top1")
