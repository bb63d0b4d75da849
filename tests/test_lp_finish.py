"""The LP finisher (verifiers/lp_finish.py, DESIGN.md §3, §11) against an exact MILP
(tests/milp_reference.py, HiGHS's branch and cut over a big-M encoding built from interval bounds written
there): it never closes a box whose threshold the MILP reaches, closes every box whose threshold the MILP
misses (enough LPs: the search is complete), its LP-tightened neuron bounds enclose the MILP's extremes,
and phase combinations without an input close through a Farkas certificate."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.bounds.batched import layer_bounds
from lumpver.bounds.engine import prepare
from lumpver.bounds.region import dual_bound
from lumpver.ir.network import Layer, Network
from lumpver.ir.planted import random_mlp
from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.verifiers.bab import BabBackend, BabOptions
from lumpver.verifiers.base import Query
from lumpver.verifiers.lp_finish import (BoxLp, LpNet, Node, _branch_point, _children, elastic, finish, finish_many,
                                         system, tighten)
from tests.milp_reference import max_difference


def _zero(n_in: int, n_out: int) -> Network:
    return Network([Layer(np.zeros((n_out, n_in)), np.zeros(n_out), "identity")])


def _crown(net: Network, lo: np.ndarray, hi: np.ndarray):
    """Sound CROWN bounds of every layer over the box (the bounds the search hands the finisher)."""
    chain = prepare(net)
    inf = [np.full((1, layer.width), np.inf) for layer in net.layers]
    zl, zu = layer_bounds(chain, lo[None], hi[None], [-a for a in inf], inf, 0)
    return chain, [a[0] for a in zl], [a[0] for a in zu]


def _problem(seed: int, n_in: int = 3, widths: tuple[int, ...] = (8, 8, 6)):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [n_in, *widths, 3], "relu", fan_in_scaled=True)
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(0.3, 1.0, n_in)
    return rng, net, lo, hi


@pytest.mark.parametrize("seed", range(30))
def test_closes_exactly_when_the_milp_misses_the_threshold(seed):
    """Unsafe ``c . y >= t`` with ``t`` just below / above the MILP optimum (60 cases): below, the finisher
    must stay open (its sound bound never exceeds the optimum) and its exact leaf points reach ``t``;
    above, with enough LPs, it must close with a positive sound bound."""
    rng, net, lo, hi = _problem(seed)
    chain, zl, zu = _crown(net, lo, hi)
    lp = LpNet.of(chain)
    c = rng.normal(size=3)
    opt, _ = max_difference(net, _zero(3, 3), lo, hi, c)
    for gap in (-rng.uniform(1e-3, 0.05), rng.uniform(1e-3, 0.05)):
        t = opt + gap * (1 + abs(opt))
        r = finish(chain, lp, lo, hi, zl, zu, -c[None, :], np.array([-t]), budget=5000)
        if gap < 0:
            assert not r.closed, (opt, t, r.bound)
            for x in r.candidates:
                assert np.all((lo <= x) & (x <= hi)) and float(c @ net.forward(x)[0]) >= t - 1e-6
        else:
            assert r.closed and r.bound > 0, (opt, t, r)


def test_boxes_stepping_together_agree_with_the_milp():
    """:func:`finish_many` on 12 sub-boxes of one net at once (their phase children bounded in shared CROWN
    batches, root LPs started from each other's bases), a near-tie threshold per sub-box (0.1-3 % from its
    MILP optimum, both sides): each box closes exactly when its MILP optimum misses the threshold, as with
    :func:`finish` alone."""
    rng, net, lo, hi = _problem(300, 3, (10, 10, 8))
    c = rng.normal(size=3)
    chain, boxes, opts, ts = prepare(net), [], [], []
    lp = LpNet.of(chain)
    for j in range(12):
        a = lo + rng.uniform(0, 0.5, 3) * (hi - lo)
        b = a + rng.uniform(0.2, 0.5, 3) * (hi - lo)
        _, zl, zu = _crown(net, a, b)
        opt, _ = max_difference(net, _zero(3, 3), a, b, c)
        boxes.append((a, b, zl, zu))
        opts.append(opt)
        ts.append(opt + (1 if j % 2 else -1) * rng.uniform(1e-3, 0.03) * (1 + abs(opt)))
    for j, (a, b, zl, zu) in enumerate(boxes):  # the batch shares one property: box j's near-tie threshold
        many = finish_many(chain, lp, boxes, -c[None, :], np.array([-ts[j]]), budget=5000)
        assert [r.closed for r in many] == [o < ts[j] for o in opts], (j, ts[j], opts)
        assert finish(chain, lp, a, b, zl, zu, -c[None, :], np.array([-ts[j]]), budget=5000).closed == many[j].closed


@pytest.mark.parametrize("seed", range(6))
def test_tightened_bounds_enclose_the_exact_extremes(seed):
    """LP-tightened pre-activation bounds of every neuron contain the MILP's exact min and max of that
    neuron over the box, and are no looser than CROWN's."""
    _, net, lo, hi = _problem(100 + seed)
    chain, zl, zu = _crown(net, lo, hi)
    node = Node([a.copy() for a in zl[:-1]], [a.copy() for a in zu[:-1]], [np.zeros(a.shape) for a in zl[:-1]])
    assert tighten(LpNet.of(chain), lo, hi, node) > 0
    for k in range(1, len(net.layers) - 1):
        head = Network([Layer(layer.weight, layer.bias, layer.activation) for layer in net.layers[:k]]
                       + [Layer(net.layers[k].weight, net.layers[k].bias, "identity")])
        assert np.all(node.zl[k] >= zl[k]) and np.all(node.zu[k] <= zu[k])
        for i in range(net.layers[k].width):
            e = np.zeros(net.layers[k].width)
            e[i] = 1.0
            top = max_difference(head, _zero(3, e.size), lo, hi, e)[0]
            bottom = -max_difference(head, _zero(3, e.size), lo, hi, -e)[0]
            assert node.zl[k][i] <= bottom + 1e-9 and top - 1e-9 <= node.zu[k][i], (k, i, bottom, top)


def _two_neurons(shift: float) -> tuple[Network, np.ndarray, np.ndarray]:
    """``z = (x - 0.2, shift - x)`` on ``x in [-1, 1]``: both active needs ``0.2 <= x <= shift``."""
    net = Network([Layer(np.array([[1.0], [-1.0]]), np.array([-0.2, shift]), "relu"),
                   Layer(np.array([[1.0, 1.0]]), np.zeros(1), "identity")])
    return net, -np.ones(1), np.ones(1)


def test_infeasible_phases_close_through_farkas():
    """Both neurons fixed active with no input realising it (``shift = -0.2``) close; the same split with
    an input (``shift = 0.5``) does not, whatever the property (here ``y <= 10``: always reached)."""
    for shift, empty in ((-0.2, True), (0.5, False)):
        net, lo, hi = _two_neurons(shift)
        chain, zl, zu = _crown(net, lo, hi)
        node = Node([np.maximum(zl[0], 0.0)], [zu[0]], [np.ones(2)])
        assert node.zl[0][0] <= node.zu[0][0] and node.zl[0][1] <= node.zu[0][1]  # not empty by bounds alone
        val, _, _ = elastic(LpNet.of(chain), lo, hi, node, np.ones((1, 1)), np.array([10.0]))
        assert (val is not None and val > 0) == empty, (shift, val)


def test_farkas_certificate_checked_by_hand():
    """``dual_bound`` with hand-made multipliers: ``x >= 0.2`` and ``x <= -0.2`` (rows ``-x <= -0.2``,
    ``x <= -0.2``) summed with weights 1, 1 give ``0 <= -0.4``: positive bound 0.4 (up to rounding) for
    ``c = 0``; multipliers of a feasible system (``x <= 0.2``) never give a positive bound."""
    A = np.array([[-1.0], [1.0]])
    val = dual_bound(np.zeros(1), A, np.array([-0.2, -0.2]), np.array([-1.0]), np.array([1.0]), np.array([-1.0, -1.0]))
    assert 0.4 - 1e-12 < val <= 0.4
    val = dual_bound(np.zeros(1), A, np.array([-0.2, 0.2]), np.array([-1.0]), np.array([1.0]), np.array([-1.0, -1.0]))
    assert val <= 0


def test_system_drops_dead_neurons():
    """Neurons fixed to zero get no LP variable; the rest keep their bounds."""
    net, lo, hi = _two_neurons(0.5)
    chain, zl, zu = _crown(net, lo, hi)
    node = Node([zl[0].copy()], [zu[0].copy()], [np.array([-1.0, 0.0])])
    A, b, lb, ub, lay = system(LpNet.of(chain), lo, hi, node, 1)
    assert list(lay.live[0]) == [1] and A.shape[1] == 2 and ub[1] == pytest.approx(max(zu[0][1], 0.0))


@pytest.mark.parametrize("seed", range(5))
def test_search_with_the_finisher_agrees_with_the_milp(seed):
    """The input-splitting search with the finisher from depth 1 (every box): proved / violated exactly as
    the MILP says, on thresholds 0.05-0.5 % away from the optimum (25 properties; two workers on seed 0)."""
    be = BabBackend(BabOptions(falsify_seconds=0.02, lp_depth=1, lp_after=0.0, lp_budget=20, lp_retry=1,
                                workers=1 + (seed == 0)))  # seed 0: the finisher in worker processes
    rng, net, lo, hi = _problem(200 + seed, 3, (16, 16, 16))
    lps = 0
    for _ in range(5):
        c = rng.normal(size=3)
        opt, _ = max_difference(net, _zero(3, 3), lo, hi, c)
        gap = rng.choice([-1.0, 1.0]) * rng.uniform(0.0005, 0.005) * (1.0 + abs(opt))
        t = opt + gap
        prop = OutputProperty([(-c[None, :], np.array([-t]))])
        v = be.check(Query(net, InputSet([Box(lo, hi)]), prop=prop, timeout=30.0))
        assert v.verdict == ("violated" if gap < 0 else "proved"), (v.verdict, v.reason, opt, t)
        if v.verdict == "violated":
            assert float(c @ net.forward(v.counterexample)[0]) >= t
        lps += v.details["stats"]["lps"]
    assert lps > 0  # the finisher ran


def test_persistent_model_closes_infeasible_phases_through_the_dual_ray():
    """The persistent HiGHS model (:class:`BoxLp`): both neurons active with no input realising it is an
    infeasible LP, closed only through its dual ray re-checked by ``dual_bound`` (Farkas); with an input
    realising it the node stays open (``y <= 10`` is always reached)."""
    for shift, empty in ((-0.2, True), (0.5, False)):
        net, lo, hi = _two_neurons(shift)
        chain, zl, zu = _crown(net, lo, hi)
        node = Node([np.maximum(zl[0], 0.0)], [zu[0]], [np.ones(2)])
        val, _, _ = BoxLp.of(LpNet.of(chain), lo, hi, node, np.ones((1, 1)), np.array([10.0])).solve()
        assert (val is not None and val > 0) == empty, (shift, val)


@pytest.mark.parametrize("seed", range(4))
def test_reloaded_model_is_sound_and_no_looser_than_a_fresh_one(seed):
    """Phase children loaded into their parent's model (changed bounds and chord coefficients only, warm
    basis): the child holding the MILP's maximiser (threshold = the exact optimum) keeps a sound value <= 0,
    and every child's value is at least that of a model built afresh for it (which drops the child's dead
    neurons with their rows ``W p + b <= u``: a looser LP), up to solver tolerance."""
    rng, net, lo, hi = _problem(400 + seed, 3, (10, 10))
    chain, zl, zu = _crown(net, lo, hi)
    lp = LpNet.of(chain)
    c = rng.normal(size=3)
    opt, x_star = max_difference(net, _zero(3, 3), lo, hi, c)
    A, b = -c[None, :], np.array([-opt])  # unsafe c.y >= opt: reached at x_star
    root = Node([a.copy() for a in zl[:-1]], [a.copy() for a in zu[:-1]], [np.zeros(a.shape) for a in zl[:-1]])
    model = BoxLp.of(lp, lo, hi, root, A, b)
    val, v, basis = model.solve()
    assert val is not None and val <= 1e-9
    k, i = _branch_point(model, root, v)
    z_star = _pre_activations(net, np.asarray(x_star, dtype=np.float64))[k][i]
    kids = _children(chain, lo, hi, root, k, i)
    assert kids
    for kid in kids:
        model.load(kid)
        warm = model.solve(basis)[0]
        fresh = BoxLp.of(lp, lo, hi, kid, A, b).solve()[0]
        assert warm is not None and fresh is not None and warm >= fresh - 1e-6, (warm, fresh)
        if (kid.phase[k][i] > 0) == (z_star >= 0):
            assert warm <= 1e-7, (warm, z_star)


def _pre_activations(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's pre-activation at ``x``, by hand from the stored weights (ReLU nets)."""
    out, h = [], x
    for layer in net.layers:
        z = layer.op.dense().astype(np.float64) @ h + layer.bias
        out.append(z)
        h = np.maximum(z, 0.0)
    return out
