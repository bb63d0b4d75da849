"""The Marabou adapter against known answers (shared test properties), onnxruntime replay and
an exact big-M MILP for equivalence queries. Skipped only when maraboupy is not installed."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.runtime import run_onnx
from tests.milp_reference import max_linf_difference
from tests.test_interval_backend import perturbed, random_net
from lumpver.verifiers.base import Query, get_backend
from lumpver.verifiers.marabou import available

pytestmark = pytest.mark.skipif(not available(), reason="maraboupy is not installed (optional extra lumpver[marabou])")

BACKEND = get_backend("marabou")


def _case(shared_data):
    from lumpver.specs.vnnlib import read_vnnlib

    return read_vnnlib(shared_data / "test" / "test_prop.vnnlib").cases[0]


def test_sat_instance_is_violated_with_replayed_counterexample(shared_data):
    from lumpver.ir.onnx_import import load_onnx

    path = shared_data / "test" / "test_sat.onnx"
    case = _case(shared_data)
    v = BACKEND.check(Query(load_onnx(path), InputSet([case.region]), prop=case.unsafe, timeout=30))
    assert v.verdict == "violated", v.reason
    assert case.region.contains(v.counterexample)
    assert case.unsafe.is_unsafe(run_onnx(path, v.counterexample)[0])  # onnxruntime agrees


def test_unsat_instance_is_proved(shared_data):
    from lumpver.ir.onnx_import import load_onnx

    case = _case(shared_data)
    v = BACKEND.check(Query(load_onnx(shared_data / "test" / "test_unsat.onnx"), InputSet([case.region]),
                            prop=case.unsafe, timeout=30))
    assert v.verdict == "proved", v.reason


def test_tiny_timeout_is_unknown(shared_data):
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib

    net = load_onnx(shared_data / "acasxu" / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    case = read_vnnlib(shared_data / "acasxu" / "vnnlib" / "prop_1.vnnlib").cases[0]
    v = BACKEND.check(Query(net, InputSet([case.region]), prop=case.unsafe, timeout=0.5))
    assert v.verdict == "unknown"
    assert "time" in v.reason.lower()
    assert v.seconds < 10


def test_disjunctive_unsafe_set(shared_data):
    """Two disjuncts (the real one and an impossible one): same answers as the single one."""
    from lumpver.specs.inputset import OutputProperty
    from lumpver.ir.onnx_import import load_onnx

    case = _case(shared_data)
    A, b = case.unsafe.disjuncts[0]
    impossible = (np.array([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]]), np.array([-1.0, -1.0]))  # y0 <= -1 and y0 >= 1
    prop = OutputProperty([impossible, (A, b)])
    for name, expected in (("test_sat", "violated"), ("test_unsat", "proved")):
        v = BACKEND.check(Query(load_onnx(shared_data / "test" / f"{name}.onnx"), InputSet([case.region]),
                                prop=prop, timeout=30))
        assert v.verdict == expected, v.reason


def test_equivalence_agrees_with_milp():
    rng = np.random.default_rng(3)
    f = random_net(rng, [3, 6, 5, 2], input_ops=True)
    g = perturbed(f, rng)
    lo, hi = -np.ones(3), np.ones(3)
    exact, _ = max_linf_difference(f, g, lo, hi)
    X = InputSet([Box(lo, hi)])
    below = BACKEND.check(Query(f, X, other=g, epsilon=0.9 * exact, timeout=30))
    assert below.verdict == "violated", below.reason
    x = below.counterexample
    assert X.contains(x) and np.max(np.abs(f.forward(x) - g.forward(x))) > 0.9 * exact
    above = BACKEND.check(Query(f, X, other=g, epsilon=1.1 * exact, timeout=30))
    assert above.verdict == "proved", above.reason
    # l1 >= linf: an l1 epsilon below the linf maximum is violated as well
    l1 = BACKEND.check(Query(f, X, other=g, epsilon=0.9 * exact, norm="l1", timeout=30))
    assert l1.verdict == "violated"
    assert np.sum(np.abs(f.forward(l1.counterexample) - g.forward(l1.counterexample))) > 0.9 * exact


def test_unsupported_queries_are_unknown(rng):
    f = random_net(rng, [3, 4, 2])
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    assert BACKEND.check(Query(f, X, other=f.copy(), norm="top1")).verdict == "unknown"
    g = f.copy()
    g.layers[0].activation = "tanh"
    v = BACKEND.check(Query(f, X, other=g, epsilon=1.0))
    assert v.verdict == "unknown" and "tanh" in v.reason
