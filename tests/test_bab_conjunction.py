"""Conjunctive multi-row unsafe sets in the input-splitting search (DESIGN.md §11; issue 13, reach_prob_density):
the bab back-end against an exact MILP of ``max_x min_i (b_i - A_i f(x))`` (big-M, HiGHS; tests/milp_reference.py's
encoding, not the code under test), the row combination that closes boxes no single row closes
(lumpver.bounds.combine, verifiers/bab_input.joint_close) against the MILP on the box, and the falsifier on
small regions where every row holds. Every sat answer is replayed with onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from scipy.optimize import Bounds, LinearConstraint, milp

from lumpver.bounds.engine import prepare
from lumpver.ir.network import Layer, Network
from lumpver.ir.planted import random_mlp
from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.verifiers import falsify
from lumpver.verifiers.bab import BabBackend, BabOptions, Context, bound
from lumpver.verifiers.bab_branch import Domain
from lumpver.verifiers.bab_deep import root_layer_bounds
from lumpver.verifiers.bab_input import joint_close
from lumpver.verifiers.base import Query
from tests.milp_reference import _encode, _Program

BAB = BabBackend(BabOptions(falsify_seconds=0.05))


def max_min_slack(net: Network, lo: np.ndarray, hi: np.ndarray, A: np.ndarray, b: np.ndarray) -> float:
    """Exact ``max_{x in [lo, hi]} min_i (b_i - A_i f(x))``: the conjunction ``A y <= b`` is reachable iff >= 0."""
    p = _Program(net.n_inputs, lo, hi)
    y = _encode(p, net, list(range(net.n_inputs)), lo, hi)
    s = p.var(-np.inf, np.inf)
    for Ai, bi in zip(A, b):  # s + A_i y <= b_i
        coeffs, const = {s: 1.0}, 0.0
        for a, (yc, yk) in zip(Ai, y):
            for v, c in yc.items():
                coeffs[v] = coeffs.get(v, 0.0) + a * c
            const += a * yk
        p.row(coeffs, -np.inf, bi - const)
    M = np.zeros((len(p.rows), len(p.lo)))
    for r, (coeffs, _, _) in enumerate(p.rows):
        for v, a in coeffs.items():
            M[r, v] += a
    cost = np.zeros(len(p.lo))
    cost[s] = -1.0
    res = milp(cost, constraints=[LinearConstraint(M, [r[1] for r in p.rows], [r[2] for r in p.rows])],
               integrality=np.array(p.integer), bounds=Bounds(p.lo, p.hi), options={"mip_rel_gap": 1e-9})
    assert res.success, res.message
    return -res.fun


def ort_forward(net: Network, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for one input (the network written as a Gemm/Relu ONNX model)."""
    sess = ort.InferenceSession(to_onnx(net), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x.astype(np.float32)[None]})[0][0].astype(np.float64)


def to_onnx(net: Network) -> bytes:
    nodes, inits, cur = [], [], "X"
    for i, layer in enumerate(net.layers):
        inits += [numpy_helper.from_array(layer.weight.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(layer.bias.astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"z{i}"], transB=1))
        cur = f"z{i}"
        if layer.activation == "relu":
            nodes.append(helper.make_node("Relu", [cur], [f"h{i}"]))
            cur = f"h{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, net.n_inputs])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, net.n_outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def f32_net(net: Network) -> Network:
    """The network with float32 weights (what its ONNX file holds, so onnxruntime computes the same function)."""
    return Network([Layer(l.weight.astype(np.float32).astype(np.float64), l.bias.astype(np.float32).astype(np.float64),
                          l.activation) for l in net.layers])


def density_rows(rng, net: Network, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """reach_prob_density-like rows around the output of a random point: ``|y_1 - c_1| <= rad``,
    ``|y_2 - c_2| <= rad``, ``y_0 >= p`` (5 rows)."""
    y = net.forward(box.sample(1, rng))[0]
    rad = rng.uniform(0.02, 0.2) * (1.0 + np.abs(y[1:3]).max())
    A = np.array([[0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [-1, 0, 0]], dtype=float)
    b = np.array([y[1] + rad, rad - y[1], y[2] + rad, rad - y[2], -y[0]])
    return A, b


def cases(seed: int, n_in: int, count: int):
    """Random nets (2-5 inputs) and conjunctions shifted so the exact slack is ``gap`` (sat iff > 0)."""
    rng = np.random.default_rng(seed)
    net = f32_net(random_mlp(rng, [n_in, 12, 12, 3], "relu", fan_in_scaled=True))
    lo = rng.uniform(-1, 0, n_in)
    box = Box(lo, lo + rng.uniform(0.3, 1.0, n_in))
    for _ in range(count):
        A, b = density_rows(rng, net, box)
        s = max_min_slack(net, box.lower, box.upper, A, b)
        gap = rng.choice([-1.0, 1.0]) * rng.uniform(0.005, 0.1)
        yield net, box, A, b - s + gap, gap > 0


def test_conjunctions_agree_with_exact_milp():
    """Zero wrong answers over 16 conjunctive 5-row properties on 2-5 inputs, both answers seen, every sat
    replayed with onnxruntime, and the row combination closing boxes on some of them."""
    verdicts, joint = [], 0
    for seed, n_in in enumerate((2, 3, 4, 5)):
        for net, box, A, b, reachable in cases(300 + seed, n_in, 4):
            prop = OutputProperty([(A, b)])
            v = BAB.check(Query(net, InputSet([box]), prop=prop, timeout=60.0))
            assert v.verdict == ("violated" if reachable else "proved"), (v.verdict, v.reason, seed)
            if v.verdict == "violated":
                x = v.counterexample
                y = ort_forward(net, x)
                assert box.contains(x) and prop.is_unsafe(y)
            else:
                joint += v.details["stats"]["joint_closed"]
            verdicts.append(v.verdict)
    assert {"violated", "proved"} <= set(verdicts)
    assert joint > 0


def test_conjunctions_on_twelve_inputs_agree_with_exact_milp():
    """The same with 12 inputs (the ReLU-phase search, where the combination runs on split sub-problems)."""
    verdicts, joint = [], 0
    for seed in range(2):
        for net, box, A, b, reachable in cases(600 + seed, 12, 4):
            v = BAB.check(Query(net, InputSet([box]), prop=OutputProperty([(A, b)]), timeout=60.0))
            assert v.verdict == ("violated" if reachable else "proved"), (v.verdict, v.reason, seed)
            if v.verdict == "violated":
                assert box.contains(v.counterexample) and np.all(A @ ort_forward(net, v.counterexample) <= b)
            joint += v.details["stats"]["joint_closed"]
            verdicts.append(v.verdict)
    assert {"violated", "proved"} <= set(verdicts)
    assert joint > 0


def test_row_combination_closes_what_no_row_closes():
    """y = x on [0, 1]^2 (through stable ReLUs): ``y_0 >= 0.6, y_1 >= 0.6, y_0 + y_1 <= 1`` holds nowhere,
    yet each row alone holds somewhere; the combination closes the box, and never one the MILP finds
    reachable (random sub-boxes of a random net)."""
    net = Network([Layer(np.eye(2), np.zeros(2), "relu"), Layer(np.eye(2), np.zeros(2), "identity")])
    A, b = np.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]]), np.array([-0.6, -0.6, 1.0])
    assert _closed_by_rows(net, np.zeros(2), np.ones(2), A, b) == (False, True)
    rng = np.random.default_rng(5)
    closed = 0
    for net, box, A, b, _ in cases(400, 3, 6):
        for _ in range(4):
            lo = rng.uniform(box.lower, box.upper)
            hi = np.minimum(lo + rng.uniform(0.05, 0.4, 3), box.upper)
            single, joint = _closed_by_rows(net, lo, hi, A, b)
            if joint:
                assert max_min_slack(net, lo, hi, A, b) < 0
                closed += not single
    assert closed > 0


def _closed_by_rows(net: Network, lo: np.ndarray, hi: np.ndarray, A: np.ndarray, b: np.ndarray) -> tuple[bool, bool]:
    """(closed by a single row's bound, closed once :func:`joint_close` ran) for one box."""
    chain = prepare(net)
    ctx = Context(chain, -A, b, 5, 0.25)
    zl, zu = root_layer_bounds(chain, lo[None], hi[None])
    d = bound(ctx, [Domain(lo, hi, [a[0] for a in zl], [a[0] for a in zu], [None] * chain.depth,
                           np.zeros(len(b)), start=chain.depth)], 10)[0]
    single = d.score < 0
    joint_close(ctx, [d])
    return single, d.score < 0


def test_falsifier_meets_all_rows_of_a_small_region():
    """Sat conjunctions with a small slack (the MILP's): the falsifier's search finds a point meeting all
    rows on most of them (onnxruntime replays each; bench/RESULTS.md: 35 of 36 such with one restart round,
    29 with the worst row's gradient alone)."""
    found = total = 0
    for seed, n_in in enumerate((3, 5)):
        rng = np.random.default_rng(500 + seed)
        net = f32_net(random_mlp(rng, [n_in, 12, 12, 3], "relu", fan_in_scaled=True))
        box = Box(-np.ones(n_in), np.ones(n_in))
        for _ in range(2):
            A, b = density_rows(rng, net, box)
            b = b - max_min_slack(net, box.lower, box.upper, A, b) + 0.002
            q = Query(net, InputSet([box]), prop=OutputProperty([(A, b)]), timeout=60.0)
            res = falsify.search(q, samples=500, starts=4, steps=30, restarts=1, rng=np.random.default_rng(0))
            total += 1
            if res.counterexample is not None:
                y = ort_forward(net, res.counterexample)
                assert box.contains(res.counterexample) and np.all(A @ y <= b)
                found += 1
    assert found >= total - 1
