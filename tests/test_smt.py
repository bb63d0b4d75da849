"""SMT back-end against an independent exact maximum (scipy HiGHS MILP, big-M ReLU encoding)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.planted import random_mlp
from lumpver.verifiers.base import Query
from lumpver.verifiers.smt import SmtBackend, SmtOptions



def random_net(rng, n_in, hidden, n_out, act="relu"):
    return random_mlp(rng, [n_in, *hidden, n_out], act)


def perturbed(rng, net, scale=0.1):
    g = net.copy()
    for layer in g.layers:
        layer.weight = (layer.weight + scale * rng.normal(size=layer.weight.shape)).astype(np.float32).astype(np.float64)
    return g


def _interval(net, lo, hi):
    """Plain interval bounds of every pre-activation (the test's own, independent of lumpver)."""
    out = []
    for layer in net.layers:
        W, b = layer.weight, layer.bias
        zl = np.clip(W, 0, None) @ lo + np.clip(W, None, 0) @ hi + b
        zu = np.clip(W, 0, None) @ hi + np.clip(W, None, 0) @ lo + b
        out.append((zl - 1e-6, zu + 1e-6))
        lo, hi = (np.maximum(zl, 0), np.maximum(zu, 0)) if layer.activation == "relu" else (zl, zu)
    return out


def milp_max(nets_signs, c, lo, hi):
    """max over the box of sum_t sign_t * (c . net_t(x)) by a big-M mixed-integer program."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = len(lo)
    var_lo, var_hi, integ, rows, rlo, rhi, obj = list(lo), list(hi), [0] * n, [], [], [], None
    nvar = n

    def new(l, u, i=0):
        nonlocal nvar
        var_lo.append(l); var_hi.append(u); integ.append(i); nvar += 1
        return nvar - 1

    def row(coefs, l, u):
        rows.append(coefs); rlo.append(l); rhi.append(u)

    objective = {}
    for net, sign in nets_signs:
        h = list(range(n))
        for layer, (zl, zu) in zip(net.layers, _interval(net, np.array(lo), np.array(hi))):
            nh = []
            for j in range(layer.width):
                if layer.activation == "identity":
                    for i, v in enumerate(h):
                        objective[v] = objective.get(v, 0.0) + sign * c[j] * layer.weight[j, i]
                    objective["const"] = objective.get("const", 0.0) + sign * c[j] * layer.bias[j]
                    continue
                y = new(0.0, max(zu[j], 0.0))
                if zu[j] <= 0:
                    var_hi[y] = 0.0
                    nh.append(y)
                    continue
                coefs = {y: 1.0}
                for i, v in enumerate(h):
                    coefs[v] = coefs.get(v, 0.0) - layer.weight[j, i]
                if zl[j] >= 0:  # y = z
                    row(coefs, layer.bias[j], layer.bias[j])
                else:
                    a = new(0, 1, 1)
                    row(coefs, layer.bias[j], np.inf)  # y >= z
                    c2 = dict(coefs)
                    c2[a] = -zl[j]  # y <= z - l (1 - a)
                    row(c2, -np.inf, layer.bias[j] - zl[j])
                    row({y: 1.0, a: -zu[j]}, -np.inf, 0.0)  # y <= u a
                nh.append(y)
            h = nh
    A = np.zeros((len(rows), nvar))
    for r, coefs in enumerate(rows):
        for k, v in coefs.items():
            A[r, k] += v
    cobj = np.zeros(nvar)
    for k, v in objective.items():
        if k != "const":
            cobj[k] -= v
    res = milp(cobj, constraints=LinearConstraint(A, rlo, rhi), integrality=integ, bounds=Bounds(var_lo, var_hi),
               options={"mip_rel_gap": 1e-9})
    assert res.success
    return -res.fun + objective.get("const", 0.0)


def exact_linf(f, g, box):
    best = 0.0
    for i in range(f.n_outputs):
        e = np.zeros(f.n_outputs); e[i] = 1.0
        best = max(best, milp_max([(f, 1.0), (g, -1.0)], e, box.lower, box.upper),
                   milp_max([(f, -1.0), (g, 1.0)], e, box.lower, box.upper))
    return best


def exact_l1(f, g, box):
    return max(milp_max([(f, 1.0), (g, -1.0)], np.array(s), box.lower, box.upper)
               for s in itertools.product((1.0, -1.0), repeat=f.n_outputs))


def check_cex(q, x, norm_value):
    box = q.input_set.regions[0]
    assert box.contains(x)
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)  # float32 input
    d = q.network.forward(x)[0] - q.other.forward(x)[0]
    assert norm_value(d) > q.epsilon


FAST = SmtOptions(call_timeout=5.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_matches_milp(seed):
    rng = np.random.default_rng(seed)
    n_in = 2 + seed % 2
    f = random_net(rng, n_in, [6, 5], 2)
    g = perturbed(rng, f)
    box = Box(-np.ones(n_in), np.ones(n_in))
    true = exact_linf(f, g, box)
    be = SmtBackend(FAST)
    below = Query(f, InputSet([box]), other=g, epsilon=0.9 * true, norm="linf", timeout=30)
    v = be.check(below)
    assert v.verdict == "violated"
    check_cex(below, v.counterexample, lambda d: np.max(np.abs(d)))
    v = be.check(Query(f, InputSet([box]), other=g, epsilon=1.05 * true + 1e-4, norm="linf", timeout=60))
    assert v.verdict == "proved", v.reason
    assert v.upper_bound >= true


def test_l1_matches_milp():
    rng = np.random.default_rng(7)
    f = random_net(rng, 3, [5, 4], 2)
    g = perturbed(rng, f)
    box = Box(-np.ones(3), np.ones(3))
    true = exact_l1(f, g, box)
    be = SmtBackend(FAST)
    q = Query(f, InputSet([box]), other=g, epsilon=0.9 * true, norm="l1", timeout=30)
    v = be.check(q)
    assert v.verdict == "violated"
    check_cex(q, v.counterexample, lambda d: np.sum(np.abs(d)))
    assert be.check(Query(f, InputSet([box]), other=g, epsilon=1.05 * true + 1e-4, norm="l1", timeout=60)).verdict == "proved"


def test_l2_sufficient_check_is_sound():
    rng = np.random.default_rng(3)
    f = random_net(rng, 2, [5, 4], 2)
    g = perturbed(rng, f)
    box = Box(-np.ones(2), np.ones(2))
    linf = exact_linf(f, g, box)
    # ||d||_2 <= sqrt(2) ||d||_inf: an epsilon above that must be proved
    v = SmtBackend(FAST).check(Query(f, InputSet([box]), other=g, epsilon=1.5 * linf + 1e-4, norm="l2", timeout=60))
    assert v.verdict == "proved"
    # below the linf maximum, l2 is violated too (||d||_2 >= ||d||_inf)
    v = SmtBackend(FAST).check(Query(f, InputSet([box]), other=g, epsilon=0.9 * linf, norm="l2", timeout=30))
    assert v.verdict == "violated"
    d = f.forward(v.counterexample)[0] - g.forward(v.counterexample)[0]
    assert np.linalg.norm(d) > 0.9 * linf


def test_top1_identical_networks_proved_and_disagreement_found():
    rng = np.random.default_rng(5)
    f = random_net(rng, 2, [5, 4], 3)
    box = Box(-np.ones(2), np.ones(2))
    assert SmtBackend(FAST).check(Query(f, InputSet([box]), other=f.copy(), norm="top1", timeout=60)).verdict == "proved"
    g = f.copy()
    g.layers[-1].bias = g.layers[-1].bias + np.array([5.0, 0.0, 0.0])  # class 0 wins far more often
    xs = rng.uniform(-1, 1, size=(20000, 2))
    assert np.any(np.argmax(f.forward(xs), 1) != np.argmax(g.forward(xs), 1))  # brute force: they do disagree
    v = SmtBackend(FAST).check(Query(f, InputSet([box]), other=g, norm="top1", timeout=30))
    assert v.verdict == "violated"
    x = v.counterexample
    assert np.argmax(f.forward(x)[0]) != np.argmax(g.forward(x)[0])


def test_naive_encoding_agrees_with_bounds_encoding():
    rng = np.random.default_rng(11)
    f = random_net(rng, 2, [4, 4], 2)
    g = perturbed(rng, f)
    box = Box(-np.ones(2), np.ones(2))
    true = exact_linf(f, g, box)
    naive = SmtBackend(SmtOptions(naive=True, call_timeout=20))
    assert naive.check(Query(f, InputSet([box]), other=g, epsilon=1.05 * true + 1e-4, timeout=60)).verdict == "proved"
    v = naive.check(Query(f, InputSet([box]), other=g, epsilon=0.9 * true, timeout=60))
    assert v.verdict == "violated"


def test_tiny_timeout_gives_unknown():
    rng = np.random.default_rng(2)
    f = random_net(rng, 4, [8, 8], 2)
    g = perturbed(rng, f, 0.02)
    box = Box(-np.ones(4), np.ones(4))
    xs = box.sample(2000, rng)
    out = np.abs(f.forward(xs) - g.forward(xs))
    v = SmtBackend().check(Query(f, InputSet([box]), other=g, epsilon=10 * float(out.max()) + 1, timeout=1e-3))
    assert v.verdict == "unknown"
    assert "timeout" in v.reason


def test_sigmoid_never_proved_wrongly():
    rng = np.random.default_rng(4)
    f = random_net(rng, 2, [4], 2, act="sigmoid")
    g = perturbed(rng, f)
    box = Box(-np.ones(2), np.ones(2))
    xs = rng.uniform(-1, 1, size=(50000, 2))
    sampled = np.max(np.abs(f.forward(xs) - g.forward(xs)))
    v = SmtBackend().check(Query(f, InputSet([box]), other=g, epsilon=0.5 * sampled, timeout=5))
    assert v.verdict in ("violated", "unknown")
    v = SmtBackend().check(Query(f, InputSet([box]), other=g, epsilon=100.0, timeout=10))
    assert v.verdict == "proved"  # the bounds alone suffice: no z3 needed
