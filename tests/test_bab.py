"""The branch-and-bound back-end (verifiers/bab.py, DESIGN.md §11) against independent answers:
an exact big-M MILP (tests/milp_reference.py, HiGHS) on random ReLU networks, through both
splitting modes (input boxes for <= 10 inputs, ReLU phases above), and published answers of
public benchmarks replayed with onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.api.verify import verify_property
from lumpver.ir.network import Layer, Network
from lumpver.ir.planted import random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.verifiers.bab import BabBackend, BabOptions
from lumpver.verifiers.base import Query
from tests.milp_reference import max_difference

BAB = BabBackend(BabOptions(falsify_seconds=0.05))


def _zero(n_in: int, n_out: int) -> Network:
    return Network([Layer(np.zeros((n_out, n_in)), np.zeros(n_out), "identity")])


def _cases(seed: int, n_in: int, widths: tuple[int, ...], n_props: int):
    """Random nets and thresholds ``t`` on ``c . y`` away from the MILP optimum (no near-ties)."""
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [n_in, *widths, 3], "relu", fan_in_scaled=True)
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(0.2, 1.0, n_in)
    for _ in range(n_props):
        c = rng.normal(size=3)
        opt, _ = max_difference(net, _zero(n_in, 3), lo, hi, c)
        gap = rng.choice([-1.0, 1.0]) * rng.uniform(0.003, 0.3) * (1.0 + abs(opt))
        yield net, Box(lo, hi), c, opt + gap, gap < 0  # unsafe {c . y >= t}: reachable iff t <= opt


def _check(net: Network, box: Box, c: np.ndarray, t: float, reachable: bool) -> str:
    prop = OutputProperty([(-c[None, :], np.array([-t]))])
    v = BAB.check(Query(net, InputSet([box]), prop=prop, timeout=30.0))
    assert v.verdict == ("violated" if reachable else "proved"), (v.verdict, v.reason, t)
    if v.verdict == "violated":
        x = v.counterexample
        assert box.contains(x) and float(c @ net.forward(x)[0]) >= t
    return v.verdict


@pytest.mark.parametrize("n_in,widths,seeds", [(3, (10, 8), range(12)), (12, (10, 8), range(100, 112)),
                                              (2, (6, 6, 6), range(200, 206))])
def test_agrees_with_exact_milp(n_in, widths, seeds):
    """Zero wrong answers; 150 properties: input splitting (3, 2 inputs) and ReLU splitting (12)."""
    verdicts = [_check(*case) for s in seeds for case in _cases(s, n_in, widths, 5)]
    assert {"violated", "proved"} <= set(verdicts)


def test_conjunction_of_rows_and_several_disjuncts():
    """Unsafe set ``y_0 >= y_1 and y_0 >= y_2`` (one disjunct of two rows) or ``y_1 >= t``: sat iff
    the MILP reaches either; proved answers must agree with dense sampling being safe."""
    rng = np.random.default_rng(7)
    for seed in range(6):
        net = random_mlp(np.random.default_rng(seed), [3, 8, 8, 3], "relu", fan_in_scaled=True)
        box = Box(-np.ones(3), np.ones(3))
        t = max_difference(net, _zero(3, 3), box.lower, box.upper, np.array([0.0, 1.0, 0.0]))[0] + 0.05
        prop = OutputProperty([(np.array([[-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]), np.zeros(2)),
                               (np.array([[0.0, -1.0, 0.0]]), np.array([-t]))])
        v = BAB.check(Query(net, InputSet([box]), prop=prop, timeout=30.0))
        ys = net.forward(box.sample(20000, rng))
        sampled_unsafe = bool(np.any((ys[:, 0] >= ys[:, 1]) & (ys[:, 0] >= ys[:, 2])))
        if v.verdict == "proved":
            assert not sampled_unsafe
        else:
            assert v.verdict == "violated" and prop.is_unsafe(net.forward(v.counterexample)[0])


@pytest.mark.parametrize("model,prop,expected", [
    ("test/test_sat.onnx", "test/test_prop.vnnlib", "sat"),
    ("test/test_unsat.onnx", "test/test_prop.vnnlib", "unsat"),
    ("acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/vnnlib/prop_3.vnnlib", "unsat"),
    ("mnist_fc/onnx/mnist-net_256x2.onnx", "mnist_fc/vnnlib/prop_2_0.03.vnnlib", "sat"),
    ("mnist_fc/onnx/mnist-net_256x2.onnx", "mnist_fc/vnnlib/prop_4_0.03.vnnlib", "unsat"),
])
def test_published_answers(shared_data, model, prop, expected):
    """Answers published by VNN-COMP peers / the benchmark authors; every sat replays on the ONNX."""
    r = verify_property(shared_data / model, shared_data / prop, backend="bab", timeout=60.0)
    assert r.result == expected, r.reason
    if r.result == "sat":
        y = run_onnx(shared_data / model, np.asarray(r.x, dtype=np.float32))[0]
        assert np.allclose(y, r.y)


def test_two_workers_agree(shared_data):
    r = verify_property(shared_data / "test/test_unsat.onnx", shared_data / "test/test_prop.vnnlib", backend="bab",
                        timeout=60.0, workers=2)
    assert r.result == "unsat", r.reason


def test_tiny_timeout_is_unknown(shared_data):
    r = verify_property(shared_data / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx",
                        shared_data / "acasxu/vnnlib/prop_3.vnnlib", backend="bab", timeout=0.3)
    assert r.result in ("timeout", "unknown")
