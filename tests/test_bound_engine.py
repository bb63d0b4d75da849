"""The merged bound engine (lumpver.bounds.engine + relaxations + diff) against independent
references: the two engines it replaced (frozen verbatim under tests/reference/), an exact big-M
MILP (tests/milp_reference.py) for ReLU nets, float64 forward passes written here and onnxruntime.

Corpus: ACAS Xu nets on property boxes, the MNIST 256x2 net on a small L-inf box, random nets
with every activation. "Never looser beyond rounding": every new bound is within
``SLACK_REL * (1 + |old bound|)`` of the old one on the tight side (the old engines' own
outward margins are 1e-9 relative and 2 gamma_K relative).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lumpver.bounds.diff import difference_bounds, prepare_pair
from lumpver.bounds.engine import compute_bounds, objective_bounds, prepare, propagate
from lumpver.bounds.region import bisect_box, region_box
from lumpver.bounds.relaxations import RELAXATIONS
from lumpver.bounds.rounding import rounding_policy
from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.planted import random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box, InputSet, Polytope
from lumpver.specs.vnnlib import read_vnnlib
from lumpver.verifiers.interval import certified_difference_bound
from tests.milp_reference import max_difference
from tests.reference import old_bounds_engine as OLD_ENGINE
from tests.reference import old_diff as OLD_DIFF
from tests.reference import old_linear_engine as OLD_LINEAR

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SLACK_REL = 1e-9
ALL_ACTS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


ACTS = {  # written here, independently of lumpver.ir.activations
    "identity": lambda z, a: z,
    "relu": lambda z, a: np.maximum(z, 0),
    "leaky_relu": lambda z, a: np.where(z >= 0, z, a * z),
    # extended precision, rounded once to float64 (within half an ulp of the true value)
    "sigmoid": lambda z, a: (1 / (1 + np.exp(-np.asarray(z, dtype=np.longdouble)))).astype(np.float64),
    "tanh": lambda z, a: np.tanh(np.asarray(z, dtype=np.longdouble)).astype(np.float64),
}


def acas_case(i: int, j: int, prop: int) -> tuple[Path, Network, Box]:
    path = DATA / "acasxu" / "onnx" / f"ACASXU_run2a_{i}_{j}_batch_2000.onnx"
    box = read_vnnlib(DATA / "acasxu" / "vnnlib" / f"prop_{prop}.vnnlib").input_set().regions[0]
    return path, load_onnx(path), box


def mnist_case(eps: float = 0.004) -> tuple[Path, Network, Box]:
    path = DATA / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"
    big = read_vnnlib(DATA / "mnist_fc" / "vnnlib" / "prop_0_0.03.vnnlib").input_set().regions[0]
    c = (big.lower + big.upper) / 2
    return path, load_onnx(path), Box(np.clip(c - eps, 0, 1), np.clip(c + eps, 0, 1))


def random_case(seed: int, act: str, widths=(4, 10, 8, 3)) -> Network:
    return random_mlp(np.random.default_rng(seed), list(widths), act, fan_in_scaled=True, alpha=0.2)


def forward_layers(net: Network, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Independent float64 forward pass: every layer's (z, h)."""
    scale, shift = net.input_affine()
    h = x * scale + shift
    out = []
    for layer in net.layers:
        z = h @ layer.weight.T + layer.bias
        out.append((z, ACTS[layer.activation](z, layer.alpha)))
        h = out[-1][1]
    return out


def samples(box: Box, n: int, seed: int = 0) -> np.ndarray:
    return box.sample(n, np.random.default_rng(seed), corners=box.dim <= 6)


def no_looser(new_lo, new_hi, old_lo, old_hi, what: str) -> None:
    assert np.all(new_lo >= old_lo - SLACK_REL * (1 + np.abs(old_lo))), f"{what}: lower looser than the old engine"
    assert np.all(new_hi <= old_hi + SLACK_REL * (1 + np.abs(old_hi))), f"{what}: upper looser than the old engine"


def check_against_old_engines(net: Network, box: Box) -> None:
    nb = compute_bounds(net, box)
    old = OLD_ENGINE.compute_bounds(net, box, "crown")
    for k in range(len(net.layers)):
        no_looser(nb.pre_lower[k], nb.pre_upper[k], old.pre_lower[k], old.pre_upper[k], f"old engine, layer {k} pre")
        no_looser(nb.post_lower[k], nb.post_upper[k], old.post_lower[k], old.post_upper[k], f"old engine, layer {k} post")
    if all(layer.activation in OLD_LINEAR.SUPPORTED and 0 <= layer.alpha <= 1 for layer in net.layers):
        p = OLD_LINEAR.prepare(net)
        lb = OLD_LINEAR.layer_bounds(p, box.lower, box.upper)
        for k in range(len(net.layers)):
            no_looser(nb.pre_lower[k], nb.pre_upper[k], lb.pre_lo[k], lb.pre_hi[k], f"old linear engine, layer {k}")
        lam = np.eye(net.n_outputs)
        olo, ohi = OLD_LINEAR.objective_bounds(p, lb, lam, box.lower, box.upper)
        nlo, nhi = objective_bounds(prepare(net), nb, lam, box)
        no_looser(nlo, nhi, olo, ohi, "old linear engine, outputs")


def check_brackets_samples(net: Network, box: Box, n: int = 2000) -> None:
    assert_brackets(net, compute_bounds(net, box), box, n)


def assert_brackets(net: Network, nb, box: Box, n: int) -> None:
    for k, (z, h) in enumerate(forward_layers(net, samples(box, n))):
        assert np.all(z >= nb.pre_lower[k]) and np.all(z <= nb.pre_upper[k]), f"layer {k}: sampled z outside"
        assert np.all(h >= nb.post_lower[k]) and np.all(h <= nb.post_upper[k]), f"layer {k}: sampled h outside"


# ----- corpus: never looser than the old engines, brackets samples and onnxruntime --------------
@pytest.mark.parametrize("case", [(1, 1, 1), (3, 7, 4), (5, 9, 2)])
def test_acas_never_looser_and_brackets_onnxruntime(case):
    path, net, box = acas_case(*case)
    check_against_old_engines(net, box)
    check_brackets_samples(net, box)
    x = samples(box, 500, 1)
    y = run_onnx(path, x)  # float32 runtime: allow its rounding
    nb = compute_bounds(net, box)
    tol = 1e-5 * (1 + np.abs(y))
    assert np.all(y >= nb.output_lower - tol) and np.all(y <= nb.output_upper + tol)


def test_mnist_never_looser_and_brackets_onnxruntime():
    path, net, box = mnist_case()
    check_against_old_engines(net, box)
    check_brackets_samples(net, box, 300)
    x = samples(box, 100, 2)
    y = run_onnx(path, x)
    nb = compute_bounds(net, box)
    tol = 1e-5 * (1 + np.abs(y))
    assert np.all(y >= nb.output_lower - tol) and np.all(y <= nb.output_upper + tol)


@pytest.mark.parametrize("act", ALL_ACTS)
def test_random_nets_every_activation(act):
    for seed in range(3):
        net = random_case(seed, act)
        box = Box(-np.ones(4), np.ones(4))
        check_against_old_engines(net, box)
        check_brackets_samples(net, box)


@pytest.mark.parametrize("seed", range(4))
def test_relu_bounds_bracket_the_milp_optimum(seed):
    """Every output's certified [lower, upper] contains the exact min and max (MILP, gap 1e-9)."""
    net = random_case(seed, "relu", (3, 8, 6, 2))
    zero = Network([Layer(np.zeros((net.n_outputs, net.n_inputs)), np.zeros(net.n_outputs), "identity")])
    lo, hi = -np.ones(3), np.ones(3)
    nb = compute_bounds(net, Box(lo, hi))
    for j in range(net.n_outputs):
        c = np.eye(net.n_outputs)[j]
        top, _ = max_difference(net, zero, lo, hi, c)
        neg, _ = max_difference(net, zero, lo, hi, -c)
        tol = 1e-7 * (1 + abs(top) + abs(neg))  # MILP feasibility tolerance
        assert nb.output_upper[j] >= top - tol and nb.output_lower[j] <= -neg + tol


# ----- differential bounds f - g ------------------------------------------------------------
def perturbed(net: Network, seed: int, scale: float = 0.05) -> Network:
    rng = np.random.default_rng(seed)
    g = net.copy()
    for layer in g.layers:
        layer.weight = layer.weight + scale * np.abs(layer.weight).mean() * rng.normal(size=layer.weight.shape)
    return g


def narrower(net: Network, seed: int) -> Network:
    """Drop two hidden neurons of the first layer (different widths: no neuron-wise deltas)."""
    keep = np.sort(np.random.default_rng(seed).choice(net.layers[0].width, net.layers[0].width - 2, replace=False))
    first, second = net.layers[0], net.layers[1]
    layers = [Layer(first.weight[keep], first.bias[keep], first.activation, first.alpha),
              Layer(second.weight[:, keep], second.bias, second.activation, second.alpha)]
    return Network(layers + [layer.copy() for layer in net.layers[2:]])


def diff_cases():
    _, acas, abox = acas_case(1, 1, 4)
    yield "acas", acas, perturbed(acas, 0, 0.01), abox
    for seed, act in enumerate(ALL_ACTS):
        f = random_case(10 + seed, act)
        box = Box(-np.ones(4), np.ones(4))
        yield f"{act}-perturbed", f, perturbed(f, seed), box
        yield f"{act}-narrower", f, narrower(f, seed), box


@pytest.mark.parametrize("name,f,g,box", list(diff_cases()))
def test_difference_bounds_never_looser_and_bracket_samples(name, f, g, box):
    d = difference_bounds(prepare_pair(f, g), box)
    x = samples(box, 3000, 3)
    delta = forward_layers(f, x)[-1][1] - forward_layers(g, x)[-1][1]
    assert np.all(delta >= d.lower) and np.all(delta <= d.upper), f"{name}: sampled difference outside"
    if all(layer.activation in OLD_LINEAR.SUPPORTED for n in (f, g) for layer in n.layers):
        old = OLD_DIFF.difference_bounds(OLD_LINEAR.prepare(f), OLD_LINEAR.prepare(g), box.lower, box.upper)
        no_looser(d.lower, d.upper, old.lower, old.upper, f"{name}: old diff")


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float64)


def test_delta_chain_only_on_exact_differences():
    """The stacked delta chain uses ``W^f - W^g`` as exact coefficients: float32 pairs (exact in float64)
    get it, with every coefficient equal to the rational difference; a pair whose float64 difference
    rounds does not (the bound falls back to the two networks' own chains)."""
    from fractions import Fraction
    f = random_case(31, "relu")
    f = f.with_layers([Layer(_as_float32(l.weight), _as_float32(l.bias), l.activation, l.alpha) for l in f.layers])
    g32 = f.copy()
    g32.layers[1].weight = (g32.layers[1].weight * 1.01).astype(np.float32).astype(np.float64)
    pair = prepare_pair(f, g32)
    assert pair.delta is not None
    got, wf, wg = pair.delta_w[1].op.dense().ravel(), f.layers[1].weight.ravel(), g32.layers[1].weight.ravel()
    assert all(Fraction(d) == Fraction(a) - Fraction(b) for d, a, b in zip(got, wf, wg))
    g64 = f.copy()
    g64.layers[1].weight = g64.layers[1].weight.copy()
    g64.layers[1].weight[0, 0] = 1e-30 if f.layers[1].weight[0, 0] != 0 else 1.0
    assert Fraction(f.layers[1].weight[0, 0] - g64.layers[1].weight[0, 0]) != \
        Fraction(f.layers[1].weight[0, 0]) - Fraction(g64.layers[1].weight[0, 0])
    assert prepare_pair(f, g64).delta is None
    box = Box(-np.ones(4), np.ones(4))
    d = difference_bounds(prepare_pair(f, g64), box)
    x = samples(box, 2000, 5)
    delta = forward_layers(f, x)[-1][1] - forward_layers(g64, x)[-1][1]
    assert np.all(delta >= d.lower) and np.all(delta <= d.upper)


@pytest.mark.parametrize("seed", range(3))
def test_difference_bounds_bracket_the_milp_maximum(seed):
    f = random_case(20 + seed, "relu", (3, 8, 6, 2))
    for g in (perturbed(f, seed, 0.1), narrower(f, seed)):
        lo, hi = -np.ones(3), np.ones(3)
        d = difference_bounds(prepare_pair(f, g), Box(lo, hi))
        for j in range(f.n_outputs):
            c = np.eye(f.n_outputs)[j]
            top, _ = max_difference(f, g, lo, hi, c)
            neg, _ = max_difference(f, g, lo, hi, -c)
            tol = 1e-7 * (1 + abs(top) + abs(neg))
            assert d.upper[j] >= top - tol and d.lower[j] <= -neg + tol


# ----- regions, registry, rounding ----------------------------------------------------------
def test_polytope_without_box_in_engine_and_interval_backend():
    """A polytope with no explicit box: one region_box (LP) serves the engine and the back-end."""
    A = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, -2.0]])
    b = np.array([1.0, 1.0, 1.0, 1.0])
    poly = Polytope(A, b)
    box = region_box(poly)
    # by hand: x >= -1, y >= -1; max x where x + y = 1 meets x - 2y = 1 (x = 1); max y at x = -1 (y = 2)
    assert np.allclose(box.lower, [-1, -1], atol=1e-9) and np.allclose(box.upper, [1, 2], atol=1e-9)
    f = random_case(30, "tanh", (2, 6, 2))
    g = perturbed(f, 30)
    x = samples(box, 4000, 4)
    x = x[[poly.contains(p) for p in x]]
    nb = compute_bounds(f, poly, lp=False)
    y = forward_layers(f, x)[-1][1]
    assert np.all(y >= nb.output_lower) and np.all(y <= nb.output_upper)
    ub, _ = certified_difference_bound(f, g, InputSet([poly]), "linf", timeout=3, max_splits=50)
    seen = np.max(np.abs(y - forward_layers(g, x)[-1][1]))
    assert np.isfinite(ub) and ub >= seen


@pytest.mark.parametrize("act", ALL_ACTS)
@pytest.mark.parametrize("alpha", [0.2, 1.5])
def test_relaxation_registry_lines_and_intervals_are_valid(act, alpha):
    assert set(RELAXATIONS) == set(ACTIVATIONS)
    rng = np.random.default_rng(5)
    lo = rng.normal(size=200) * 3
    hi = lo + rng.exponential(2.0, size=200)
    rel = RELAXATIONS[act]
    r = rel.linear(lo, hi, alpha)
    ilo, ihi = rel.interval(lo, hi, alpha)
    t = np.linspace(0, 1, 101)[:, None]
    z = lo + t * (hi - lo)
    h = forward_layers(Network([Layer(np.eye(1), np.zeros(1), act, alpha)]), z.reshape(-1, 1))[0][1].reshape(z.shape)
    assert np.all(r.sl * z + r.tl <= h + 1e-12 * (1 + np.abs(h))) and np.all(h <= r.su * z + r.tu + 1e-12 * (1 + np.abs(h)))
    assert np.all(ilo <= h) and np.all(h <= ihi)
    # secant slopes between any two points of [lo, hi] lie in the stated slope range
    s_lo, s_hi = rel.slopes(lo, hi, alpha)
    a, b = z[::7], z[3::7][: len(z[::7])]
    a = a[: len(b)]
    fa = forward_layers(Network([Layer(np.eye(1), np.zeros(1), act, alpha)]), a.reshape(-1, 1))[0][1].reshape(a.shape)
    fb = forward_layers(Network([Layer(np.eye(1), np.zeros(1), act, alpha)]), b.reshape(-1, 1))[0][1].reshape(b.shape)
    apart = np.abs(a - b) > 1e-6
    secant = np.where(apart, (fa - fb) / np.where(apart, a - b, 1.0), s_lo)
    assert np.all(secant >= s_lo - 1e-9) and np.all(secant <= s_hi + 1e-9)


def test_rounding_policy_is_json_and_recorded():
    policy = rounding_policy()
    assert json.loads(json.dumps(policy)) == policy
    _, net, box = acas_case(1, 1, 3)
    assert compute_bounds(net, box).rounding == policy


def test_propagate_reuses_one_chain_over_many_boxes():
    _, net, box = acas_case(2, 4, 3)
    chain = prepare(net)
    for part in (box, *bisect_box(box)[:2]):
        assert_brackets(net, propagate(chain, part), part, 500)
