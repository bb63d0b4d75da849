"""Sigmoid/tanh neurons split at points other than 0 (GenBaB; verifiers/bab_deep.py, lumpver/bounds/batched.py;
DESIGN.md §11).

The split ``z <= p`` / ``z >= p`` enters a child's bound through its clamped interval (its own relaxation) and the
multiplier term ``beta * phase * (z - p)``; every bound is checked against densely sampled pre-activations and
outputs of the child's part of the input grid (2 inputs, computed here in float64 independently of the bound code).
"""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.bounds.batched import backsub, relax_batch
from lumpver.bounds.engine import prepare
from lumpver.ir.network import Layer, Network
from lumpver.specs.inputset import InputSet, OutputProperty
from lumpver.verifiers.bab import BabBackend, BabOptions, Context, bound
from lumpver.verifiers.bab_branch import Domain, split_neuron
from lumpver.verifiers.bab_deep import SmoothSplit, smooth_candidates, split_points
from lumpver.verifiers.base import Query
from tests.test_bab import SMOOTH, _smooth_cases, _smooth_net

LO, HI = np.array([-0.6, -0.2]), np.array([0.3, 0.5])


def _net(act: str) -> Network:
    """A steep 2-6-6-2 net whose first neuron sits far from 0 (``z`` in about [3, 5]: one side only)."""
    net = _smooth_net(21, act, (2, 6, 6, 2))
    first = net.layers[0]
    w = first.op.dense().copy()
    w[0] = [1.2, -1.0]
    return Network([Layer(w.astype(np.float32), first.bias + np.eye(6)[0] * (4.0 - first.bias[0]), act)]
                   + net.layers[1:])


def _grid(net: Network, n: int = 201) -> tuple[list[np.ndarray], np.ndarray]:
    """Pre-activations of every layer and outputs on an ``n x n`` grid of the box (float64, from the weights)."""
    x = np.stack(np.meshgrid(*(np.linspace(LO[i], HI[i], n) for i in range(2))), -1).reshape(-1, 2)
    zs, h = [], x
    for layer in net.layers:
        z = h @ layer.op.dense().astype(np.float64).T + layer.bias
        zs.append(z)
        h = np.asarray(SMOOTH[layer.activation](z), dtype=np.float64) if layer.activation != "identity" else z
    return zs, h


def _root(net: Network, c: np.ndarray) -> tuple[Context, Domain]:
    """The bounded root of ``max c . y`` over the box (a :class:`Context` row ``c . y - 0``)."""
    chain = prepare(net)
    ctx = Context(chain, c[None, :], np.zeros(1), 10, 0.25)
    inf = [np.full(layer.bias.size, np.inf) for layer in net.layers]
    root = Domain(LO, HI, [-a for a in inf], inf, [None] * chain.depth, np.zeros(1))
    return ctx, bound(ctx, [root])[0]


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_children_at_nonzero_points_contain_sampled_values(act):
    """Neurons of both hidden layers cut at points of their interval (one far from 0): each child's layer bounds
    contain every sampled pre-activation of its grid points, and its output bound (with optimised beta) their
    largest ``c . y``; the two children's points are all the grid's."""
    net = _net(act)
    zs, ys = _grid(net)
    c = np.array([1.0, -0.7])
    ctx, root = _root(net, c)
    assert root.zl[0][0] > 2.0  # the far neuron: a cut there needs the constant of the beta term
    for k, i, q in ((0, 0, 0.4), (0, 3, 0.3), (1, 2, 0.7), (1, 5, 0.5)):
        at = float(root.zl[k][i] + q * (root.zu[k][i] - root.zl[k][i]))
        kids = bound(ctx, split_neuron(root, k, i, at), 20)
        sides = (zs[k][:, i] <= at, zs[k][:, i] >= at)
        assert np.all(sides[0] | sides[1]) and sides[0].any() and sides[1].any()
        for kid, side in zip(kids, sides):
            for j, z in enumerate(zs):
                assert np.all(kid.zl[j] - 1e-9 <= z[side].min(axis=0))
                assert np.all(z[side].max(axis=0) <= kid.zu[j] + 1e-9)
            assert kid.upper[0] >= float(np.max(ys[side] @ c)) - 1e-9


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_beta_term_carries_its_constant(act):
    """Large random multipliers on a cut far from 0 (``z`` > 0 on both sides): the bound with the term
    ``beta * phase * (z - p)`` stays above the sampled maximum on each child; on the ``z <= p`` child it falls
    below without its constant (``cut`` dropped: ``-beta z < 0`` there), so the test sees the constant; the beta
    gradient matches finite differences."""
    net = _net(act)
    zs, ys = _grid(net)
    c = np.array([1.0, -0.7])
    ctx, root = _root(net, c)
    at = float(0.5 * (root.zl[0][0] + root.zu[0][0]))
    kids = split_neuron(root, 0, 0, at)
    chain, rng = ctx.chain, np.random.default_rng(0)
    dropped = []
    assert root.zl[0][0] > 0
    for kid, side in zip(kids, (zs[0][:, 0] <= at, zs[0][:, 0] >= at)):
        zl, zu = [a[None] for a in kid.zl], [a[None] for a in kid.zu]
        rel = [relax_batch(chain, k, zl[k], zu[k]) for k in range(chain.depth)]
        phase, cut = [p[None] for p in kid.phase], [q[None] for q in kid.cut]
        lam = c[None, None, :]
        truth = float(np.max(ys[side] @ c))
        for _ in range(5):
            beta = [rng.uniform(0, 50, (1, 1, p.shape[1])) * np.abs(p)[:, None, :] for p in phase]
            bb = backsub(chain, rel, lam, chain.depth - 1, True, LO[None], HI[None], phase=phase, beta=beta, cut=cut,
                         grad=True)
            assert bb.upper[0, 0] >= truth - 1e-9
            if kid.phase[0][0] < 0:
                dropped.append(backsub(chain, rel, lam, chain.depth - 1, True, LO[None], HI[None], phase=phase,
                                       beta=beta, cut=None).upper[0, 0] < truth)
            g = bb.grads[chain.depth]  # d upper / d beta_0
            step = np.zeros_like(beta[0])
            step[0, 0, 0] = 1e-4
            up = backsub(chain, rel, lam, chain.depth - 1, True, LO[None], HI[None], phase=phase,
                         beta=[beta[0] + step] + beta[1:], cut=cut).upper[0, 0]
            assert abs((up - bb.upper[0, 0]) / 1e-4 - g[0, 0, 0]) <= 1e-5 * (1.0 + abs(g[0, 0, 0]))
    assert len(dropped) == 5 and all(dropped)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_split_point_beats_zero_on_a_dense_grid(act):
    """The chosen point of crossing and one-sided intervals: inside the interval, and its worse child loses
    (mean line-to-curve distance on a 2001-point long-double grid of each child) at most a few per cent more
    than the best of its candidates and no more than the cut at 0 / the midpoint."""
    from lumpver.bounds.relaxations import get_relaxation

    rng = np.random.default_rng(4)
    lo = np.concatenate([rng.uniform(-6, -0.2, 30), rng.uniform(0.1, 3, 10), rng.uniform(-8, -3, 10)])
    hi = np.concatenate([rng.uniform(0.2, 6, 30), lo[30:40] + rng.uniform(1, 5, 10), lo[40:] + rng.uniform(1, 3, 10)])
    upper = rng.random(lo.size) < 0.5
    at, _ = split_points(act, lo, hi, upper)
    assert np.all((lo <= at) & (at <= hi))

    def loss(l, u, up):  # noqa: ANN001
        r = get_relaxation(act).tight_linear(np.array([l]), np.array([u]), 0.0)
        z = np.linspace(l, u, 2001).astype(np.longdouble)
        line = (r.su[0] * z + r.tu[0]) if up else (r.sl[0] * z + r.tl[0])
        return float(np.mean(np.abs(line - SMOOTH[act](z))))

    def worse(i, p):  # noqa: ANN001
        return max(loss(lo[i], p, upper[i]), loss(p, hi[i], upper[i]))

    for i in range(lo.size):
        ref = 0.0 if lo[i] < 0 < hi[i] else 0.5 * (lo[i] + hi[i])
        assert worse(i, at[i]) <= 1.05 * worse(i, ref) + 1e-9


def test_candidates_reach_one_sided_neurons_and_keep_the_zero_cut_when_asked():
    """With split points, a wide neuron that does not cross 0 is a candidate (its point inside its interval);
    ``SmoothSplit(points=False)`` keeps the crossing neurons at 0 only."""
    net = Network([Layer(np.eye(3, dtype=np.float32), np.zeros(3), "sigmoid"),
                   Layer(np.ones((1, 3), dtype=np.float32), np.zeros(1), "identity")])
    ch = prepare(net)
    lo, hi = np.array([1.0, -4.0, -0.01]), np.array([6.0, 3.0, 0.01])
    dom = Domain(np.zeros(3), np.ones(3), [lo, np.array([-1.0])], [hi, np.array([1.0])], [None, None],
                 np.array([1.0]), coeffs=[np.array([[3.0, 1.0, 1.0]]), np.ones((1, 1))])
    pts = {i: p for _, i, p in smooth_candidates(dom, ch, 5)}
    assert set(pts) == {0, 1} and lo[0] < pts[0] < hi[0] and lo[1] < pts[1] < hi[1]
    assert [(k, i, p) for k, i, p in smooth_candidates(dom, ch, 5, SmoothSplit(points=False))] == [(0, 1, 0.0),
                                                                                                  (0, 2, 0.0)]


def close_cases(seed: int, act: str, n_props: int):
    """tests/test_bab.py's 2-input brute-force properties with thresholds 0.003 (1 + |g|) from the grid maximum
    ``g`` (a quarter reached), close enough that proofs need neuron splits: ``(net, box, c, t, reachable)``."""
    return _smooth_cases(seed, act, n_props, close=0.003, reach=0.25)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_neuron_splitting_search_agrees_with_brute_force(act):
    """2-input nets searched by neuron splits only (``input_split_dims=0``, split points on), thresholds close
    to the true maximum: no answer contradicts the brute-force grid, and some proofs needed splits."""
    be = BabBackend(BabOptions(input_split_dims=0, falsify_seconds=0.02))
    split_proofs = 0
    for seed in range(4):
        for net, box, c, t, reachable in close_cases(600 + seed, act, 2):
            prop = OutputProperty([(-c[None, :], np.array([-t]))])
            v = be.check(Query(net, InputSet([box]), prop=prop, timeout=1.5))
            assert v.verdict in ("violated" if reachable else "proved", "unknown"), (v.verdict, t)
            if v.verdict == "violated":
                assert box.contains(v.counterexample) and float(c @ net.forward(v.counterexample)[0]) >= t
            split_proofs += v.verdict == "proved" and v.details["stats"]["bounded"] > 1
    assert split_proofs >= 1
