"""`verify --reduce` pipeline (lumpver.api.reduce_verify), the falsifier's restart rounds on a narrow
real counterexample, and `compare --backend auto` carrying the best certified upper bound.
Answers are checked against a HiGHS MILP maximum, onnxruntime replays and sampling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.ir.network import Layer, Network
from lumpver.api.reduce_verify import ReduceOptions, verify_case_reduced, widen
from lumpver.ir.runtime import run_onnx
from tests.milp_reference import max_difference
from lumpver.verifiers.base import Query, Verdict, get_backend

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ACAS = DATA / "acasxu"


def random_net(seed: int, d: int = 3, w: int = 12, m: int = 2) -> Network:
    rng = np.random.default_rng(seed)
    return Network([Layer(rng.normal(size=(w, d)), rng.normal(size=w) * 0.3, "relu"),
                    Layer(rng.normal(size=(w, w)) / np.sqrt(w), rng.normal(size=w) * 0.3, "relu"),
                    Layer(rng.normal(size=(m, w)) / np.sqrt(w), np.zeros(m), "identity")])


def milp_max(net: Network, box: Box, c: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact max of ``c . net(x)`` over the box (MILP against a zero network)."""
    zero = Network([Layer(np.zeros((net.n_outputs, net.n_inputs)), np.zeros(net.n_outputs), "identity")])
    return max_difference(net, zero, box.lower, box.upper, c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduced_pipeline_matches_milp(seed):
    """Unsafe set ``y_0 - y_1 >= t``: proved for t above the MILP maximum, violated below it."""
    net = random_net(seed)
    box = Box(-np.ones(3), np.ones(3))
    best, _ = milp_max(net, box, np.array([1.0, -1.0]))
    smt = get_backend("smt")
    for t, expected in ((best + 0.05, "proved"), (best - 0.05, "violated")):
        unsafe = OutputProperty([(np.array([[-1.0, 1.0]]), np.array([-t]))])  # -(y0 - y1) <= -t
        v, note = verify_case_reduced(net, box, unsafe, smt, timeout=30.0, options=ReduceOptions(falsify_seconds=0.0))
        assert v.verdict == expected, (t, best, v.reason)
        if expected == "violated":
            x = v.counterexample
            assert box.contains(x)
            y = net.forward(x)[0]
            assert y[0] - y[1] >= t
            assert y[0] - y[1] <= best + 1e-9  # never above the exact maximum
        else:
            assert note["open_leaves"] + note["closed_by_bounds"] >= 1


def test_widen_contains_every_output_within_delta():
    rng = np.random.default_rng(3)
    A, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    prop = OutputProperty([(A, b)])
    wide = widen(prop, 0.1)
    ys = rng.normal(size=(4000, 4)) * 3
    inside = ys[np.all(ys @ A.T <= b, axis=1)]
    assert len(inside) > 20
    for y in inside[:50]:
        for _ in range(20):
            assert wide.is_unsafe(y + rng.uniform(-0.1, 0.1, size=4), tol=0.0)


class _Liar:
    """A back-end that always claims a violation at a fixed point (to test the replay path)."""

    name = "liar"

    def __init__(self, x):
        self.x = np.asarray(x, dtype=np.float64)

    def check(self, query: Query) -> Verdict:
        box = query.input_set.regions[0]
        return Verdict("violated", self.name, "made up", counterexample=np.clip(self.x, box.lower, box.upper))


def test_false_reduced_counterexample_is_never_sat():
    """A safe case (threshold above the MILP max): a back-end's bogus point must not become sat."""
    net = random_net(5)
    box = Box(-np.ones(3), np.ones(3))
    best, _ = milp_max(net, box, np.array([1.0, -1.0]))
    unsafe = OutputProperty([(np.array([[-1.0, 1.0]]), np.array([-(best + 1e-3)]))])
    opt = ReduceOptions(falsify_seconds=0.0, max_open=4, max_boxes=1, max_refine=1, seed_seconds=0.2)
    v, _ = verify_case_reduced(net, box, unsafe, _Liar(np.zeros(3)), timeout=20.0, options=opt)
    assert v.verdict == "unknown"


def test_non_replaying_counterexample_seeds_search_on_original():
    """The back-end's point is near, not at, a genuine violation: the seeded falsifier must find
    one on the original network (initial falsifier off)."""
    net = random_net(6)
    box = Box(-np.ones(3), np.ones(3))
    best, xstar = milp_max(net, box, np.array([1.0, -1.0]))
    t = best - 1e-4  # a narrow unsafe region around the maximiser
    unsafe = OutputProperty([(np.array([[-1.0, 1.0]]), np.array([-t]))])
    near = np.clip(xstar - 0.05 * np.sign(xstar), box.lower, box.upper)  # inwards from the maximiser
    y = net.forward(near)[0]
    assert y[0] - y[1] < t  # the planted point itself does not replay
    opt = ReduceOptions(falsify_seconds=0.0, max_open=1, max_boxes=1, seed_seconds=2.0)
    v, _ = verify_case_reduced(net, box, unsafe, _Liar(near), timeout=20.0, options=opt)
    assert v.verdict == "violated", v.reason
    y = net.forward(v.counterexample)[0]
    assert box.contains(v.counterexample) and y[0] - y[1] >= t


def test_falsifier_restarts_find_narrow_acasxu_counterexample():
    """ACAS Xu 1_2 prop_2 (sat, unsafe margin ~7e-4 wide): found within 5 s, replayed by onnxruntime."""
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib
    from lumpver.verifiers import falsify

    model = ACAS / "onnx" / "ACASXU_run2a_1_2_batch_2000.onnx"
    net = load_onnx(model)
    case = read_vnnlib(ACAS / "vnnlib" / "prop_2.vnnlib", 5, 5).cases[0]
    q = Query(net, InputSet([case.region]), prop=case.unsafe, seed=11)
    import time

    res = falsify.search(q, samples=500, starts=4, steps=30, deadline=time.monotonic() + 5.0, restarts=10**6)
    assert res.counterexample is not None
    x = res.counterexample
    assert case.region.contains(x)
    assert case.unsafe.is_unsafe(run_onnx(model, x.astype(np.float32))[0], tol=0.0)


def test_compare_auto_keeps_best_certified_upper_bound(tmp_path):
    """f vs a perturbed copy, epsilon just above the exact (MILP) maximum difference: no stage can
    refute it; whatever the final stage says, ``upper_bound`` is a certified bound found by some
    stage (the interval stage always has one), hence at least the exact maximum."""
    from lumpver.api.compare import compare_models
    from lumpver.ir.onnx_export import save_onnx
    from tests.milp_reference import max_linf_difference

    f = random_net(7, d=2, w=10)
    g = f.copy()
    g.layers[0].weight = g.layers[0].weight + 1e-3
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_onnx(f, pa)
    save_onnx(g, pb)
    box = Box(-np.ones(2), np.ones(2))
    exact = max_linf_difference(f, g, box.lower, box.upper)[0]
    v = compare_models(pa, pb, InputSet([box]), epsilon=exact * (1 + 1e-6) + 1e-6, norm="linf", backend="auto", timeout=3.0)
    assert v.verdict in ("proved", "unknown"), v.reason
    assert v.upper_bound is not None and v.upper_bound >= exact * (1 - 1e-6)
    assert v.lower_bound is not None and v.lower_bound <= v.upper_bound * (1 + 1e-9)  # float64 rounding of the replay
