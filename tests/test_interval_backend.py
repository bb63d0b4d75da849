"""The interval back-end against independent references: an exact big-M MILP (scipy HiGHS)
for small ReLU pairs, onnxruntime on the shared ACAS Xu files, and the known answers of the
shared test properties."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.network import InputOp, Layer, Network
from lumpver.ir.runtime import run_onnx
from tests.milp_reference import max_linf_difference
from lumpver.verifiers.base import Query, get_backend
from lumpver.verifiers.interval import certified_difference_bound

BACKEND = get_backend("interval")


def random_net(rng, widths, input_ops=False) -> Network:
    layers = [
        Layer(rng.normal(size=(widths[i + 1], widths[i])), 0.3 * rng.normal(size=widths[i + 1]),
              "relu" if i < len(widths) - 2 else "identity")
        for i in range(len(widths) - 1)
    ]
    ops = [InputOp("Sub", rng.normal(size=widths[0])), InputOp("Div", rng.uniform(0.5, 2.0, widths[0]))] if input_ops else []
    return Network(layers, ops)


def pruned_rows(net: Network, rng) -> Network:
    g = net.copy()
    for layer in g.layers[:-1]:
        layer.weight[rng.choice(layer.width, 2, replace=False)] = 0.0
    return g


def pruned_neurons(net: Network, rng) -> Network:
    """Drop neurons (different hidden widths than f)."""
    layers = [layer.copy() for layer in net.layers]
    for k in range(len(layers) - 1):
        keep = np.sort(rng.choice(layers[k].width, layers[k].width - 2, replace=False))
        layers[k] = Layer(layers[k].weight[keep], layers[k].bias[keep], layers[k].activation)
        layers[k + 1] = Layer(layers[k + 1].weight[:, keep], layers[k + 1].bias, layers[k + 1].activation)
    return net.with_layers(layers)


def perturbed(net: Network, rng) -> Network:
    g = net.copy()
    for layer in g.layers:
        layer.weight += 0.02 * rng.normal(size=layer.weight.shape)
    return g


def quantised(net: Network, rng, bits: int = 4) -> Network:
    g = net.copy()
    for layer in g.layers:
        s = np.max(np.abs(layer.weight)) / (2 ** (bits - 1) - 1)
        layer.weight = s * np.clip(np.round(layer.weight / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return g


REDUCTIONS = {"pruned_rows": pruned_rows, "pruned_neurons": pruned_neurons, "perturbed": perturbed, "quantised": quantised}


@pytest.mark.parametrize("kind", sorted(REDUCTIONS))
@pytest.mark.parametrize("seed", [0, 1])
def test_upper_bound_dominates_exact_maximum(kind, seed):
    rng = np.random.default_rng(seed)
    f = random_net(rng, [3, 6, 5, 2], input_ops=seed == 1)
    g = REDUCTIONS[kind](f, rng)
    lo, hi = -np.ones(3), np.ones(3)
    exact, x_star = max_linf_difference(f, g, lo, hi)
    x_star = np.clip(x_star, lo, hi)  # HiGHS honours bounds only up to its feasibility tolerance
    attained = float(np.max(np.abs(f.forward(x_star) - g.forward(x_star))))
    X = InputSet([Box(lo, hi)])
    for splits in (1, 20):
        ub, details = certified_difference_bound(f, g, X, "linf", timeout=5, max_splits=splits)
        assert ub >= attained
        assert ub >= exact - 1e-6 * (1 + abs(exact))
    # the observed lower bound never exceeds the exact maximum
    assert details["lower_bound"] <= exact + 1e-6 * (1 + abs(exact))
    # l1 >= linf pointwise, l2 >= linf: bounds for those norms also dominate the linf maximum
    for norm in ("l1", "l2"):
        ub_n, _ = certified_difference_bound(f, g, X, norm, timeout=2, max_splits=5)
        assert ub_n >= attained


@pytest.mark.parametrize("kind", sorted(REDUCTIONS))
def test_verdict_agrees_with_milp(kind):
    rng = np.random.default_rng(7)
    f = random_net(rng, [3, 5, 5, 2])
    g = REDUCTIONS[kind](f, rng)
    lo, hi = -np.ones(3), np.ones(3)
    exact, _ = max_linf_difference(f, g, lo, hi)
    X = InputSet([Box(lo, hi)])
    below = BACKEND.check(Query(f, X, other=g, epsilon=0.9 * exact, timeout=3))
    assert below.verdict != "proved"
    if below.verdict == "violated":  # the counterexample really exceeds epsilon
        x = below.counterexample
        assert X.contains(x) and np.max(np.abs(f.forward(x) - g.forward(x))) > 0.9 * exact
    above = BACKEND.check(Query(f, X, other=g, epsilon=1.1 * exact + 1e-6, timeout=20))
    assert above.verdict == "proved", above.reason  # branch and bound converges on 3 inputs
    assert above.upper_bound <= 1.1 * exact + 1e-6


def test_identical_networks_proved_with_epsilon_zero(rng):
    f = random_net(rng, [4, 10, 10, 3], input_ops=True)
    X = InputSet([Box(-np.ones(4), np.ones(4))])
    v = BACKEND.check(Query(f, X, other=f.copy(), epsilon=0.0, timeout=5))
    assert v.verdict == "proved"
    assert v.upper_bound <= 1e-9
    top = BACKEND.check(Query(f, X, other=f.copy(), norm="top1", timeout=5))
    assert top.verdict in ("proved", "unknown")  # argmax ties at region boundaries may remain
    assert top.verdict != "violated"


def test_top1_never_proved_when_argmax_differs(rng):
    f = random_net(rng, [3, 8, 3])
    g = f.copy()
    g.layers[-1].weight = g.layers[-1].weight[[1, 2, 0]]  # permute the outputs
    g.layers[-1].bias = g.layers[-1].bias[[1, 2, 0]]
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    pts = X.regions[0].sample(500, rng)
    assert np.any(np.argmax(f.forward(pts), 1) != np.argmax(g.forward(pts), 1))
    v = BACKEND.check(Query(f, X, other=g, norm="top1", timeout=2))
    assert v.verdict != "proved"


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_smooth_activations_bound_brackets_sampled_differences(rng, act):
    """Smooth nets go through the same engine: the certified bound is finite and dominates every
    sampled float64 difference (independent forward pass)."""
    f = random_net(rng, [3, 6, 2])
    f.layers[0].activation = act
    g = f.copy()
    g.layers[0].weight[0] += 0.05
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    ub, _ = certified_difference_bound(f, g, X, "linf", timeout=5, max_splits=200)
    pts = X.regions[0].sample(3000, rng)
    seen = float(np.max(np.abs(f.forward(pts) - g.forward(pts))))
    assert np.isfinite(ub) and seen <= ub


def test_acas_bound_dominates_onnxruntime_differences(shared_data, tmp_path):
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib

    path = shared_data / "acasxu" / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
    f = load_onnx(path)
    g = f.copy()
    for layer in g.layers:
        layer.weight = layer.weight.astype(np.float16).astype(np.float64)
    g_path = tmp_path / "g.onnx"
    save_onnx(g, g_path)
    region = read_vnnlib(shared_data / "test" / "test_prop.vnnlib").cases[0].region
    X = InputSet([region])
    ub, details = certified_difference_bound(f, g, X, "linf", timeout=5, max_splits=40)
    pts = region.sample(1000, np.random.default_rng(0))
    observed = np.max(np.abs(run_onnx(path, pts) - run_onnx(g_path, pts)))
    assert 0 < observed <= ub + 1e-5  # 1e-5: float32 execution error of onnxruntime
    assert ub < 0.05  # and it is a useful bound, not a trivial one
    assert details["sub_boxes"] and all(b["bound"] <= ub for b in details["sub_boxes"])


@pytest.mark.parametrize("name,expected", [("test_unsat", "proved"), ("test_sat", "violated")])
def test_property_queries_on_shared_tests(shared_data, name, expected):
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib

    path = shared_data / "test" / f"{name}.onnx"
    net = load_onnx(path)
    case = read_vnnlib(shared_data / "test" / "test_prop.vnnlib").cases[0]
    v = BACKEND.check(Query(net, InputSet([case.region]), prop=case.unsafe, timeout=20))
    assert v.verdict == expected, v.reason
    if expected == "violated":
        assert case.region.contains(v.counterexample)
        assert case.unsafe.is_unsafe(run_onnx(path, v.counterexample)[0])
