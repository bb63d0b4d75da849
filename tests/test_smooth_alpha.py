"""Optimisable sigmoid/tanh tangent points (lumpver/bounds/smooth_alpha.py, smooth_intermediate.py; DESIGN.md §3, §11).

Every line any parameter value can produce encloses the activation (checked in extended precision,
independently of the float64 code); optimised bounds of a small net contain its sampled outputs (and
pre-activations) and are never looser than the registry's lines, computed by the plain back-substitution.
"""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.bounds.batched import backsub, layer_bounds, optimise_alpha, relax_batch
from lumpver.bounds.engine import prepare
from lumpver.bounds.smooth_alpha import SmoothLayer
from lumpver.bounds.smooth_intermediate import refine_root
from lumpver.ir.network import Layer, Network
from lumpver.ir.planted import random_mlp
from tests.test_bab import SMOOTH


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_every_tangent_point_gives_enclosing_lines(act):
    """Random intervals (crossing, convex, concave, wide, narrow, far in the tails) and parameters
    (inside [0, 1], on its ends, outside it): the per-row lines lie below / above the activation on an
    801-point grid of the interval, evaluated in long double."""
    rng = np.random.default_rng(5)
    n, m = 600, 5
    lo = np.concatenate([rng.uniform(-12, 3, n - 100), rng.uniform(-0.1, 0, 50), rng.uniform(-40, 30, 50)])
    hi = lo + np.concatenate([rng.exponential(3, n - 100), rng.uniform(1e-10, 0.2, 50), rng.exponential(8, 50)])
    lo, hi = lo[None], hi[None]
    rel = relax_batch(prepare(Network([Layer(np.eye(n, dtype=np.float32), np.zeros(n), act)])), 0, lo, hi)
    layer = SmoothLayer.of(act, lo, hi, rel)
    p = rng.uniform(-0.5, 1.5, (1, m, 2 * n))
    p[0, 0], p[0, 1] = 0.0, 1.0
    rows = layer.lines(p)
    z = (lo + (hi - lo) * np.linspace(0, 1, 801)[:, None]).T.astype(np.longdouble)  # (n, 801)
    f = SMOOTH[act](z)
    for r in range(m):
        below = rows.sl[0, r][:, None].astype(np.longdouble) * z + rows.tl[0, r][:, None]
        above = rows.su[0, r][:, None].astype(np.longdouble) * z + rows.tu[0, r][:, None]
        assert np.all(below <= f) and np.all(f <= above), r
    assert layer.free_u.any() and layer.free_l.any()  # the tangent points are free somewhere


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_optimised_bounds_contain_samples_and_beat_the_registry_lines(act):
    """A 6-12-12-12-4 net on a box: optimised intermediate bounds contain every sampled
    pre-activation and lie inside CROWN's (strictly somewhere); the optimised output bound of
    ``lam . y`` is above every sample and at most the plain back-substitution's with the registry's
    lines on CROWN's intermediate bounds (strictly below it somewhere)."""
    rng = np.random.default_rng(7)
    net, ch, lo, hi, zl, zu = _steep_net(rng, act, 2.5, 0.4)
    ol, ou = refine_root(ch, lo, hi, zl, zu, iters=10)
    xs = rng.uniform(lo[0], hi[0], (20000, 6))
    h, tighter = xs, 0
    for k, layer in enumerate(net.layers):
        z = h @ layer.op.dense().astype(np.float64).T + layer.bias
        h = SMOOTH[act](z).astype(np.float64) if k < len(net.layers) - 1 else z
        assert np.all(ol[k][0] <= z.min(0)) and np.all(z.max(0) <= ou[k][0])
        assert np.all(ol[k] >= zl[k]) and np.all(ou[k] <= zu[k])
        tighter += int(np.sum(ou[k] - ol[k] < zu[k] - zl[k] - 1e-9))
    assert tighter > 0
    lam = rng.normal(size=(1, 3, 4))
    plain = backsub(ch, [relax_batch(ch, k, zl[k], zu[k]) for k in range(ch.depth)], lam, ch.depth - 1, True,
                    lo, hi).upper
    opt = optimise_alpha(ch, lo, hi, zl, zu, lam, np.zeros(3), iters=15, lr=0.25, stop_closed=False).upper
    assert np.all(opt <= plain) and np.any(opt < plain - 1e-6)
    assert np.all((h @ lam[0].T).max(0) <= opt[0])
    both = optimise_alpha(ch, lo, hi, ol, ou, lam, np.zeros(3), iters=15, lr=0.25, stop_closed=False).upper
    assert np.all(both <= opt + 1e-9) and np.all((h @ lam[0].T).max(0) <= both[0])


def test_chunked_root_rebounding_contains_samples_and_is_never_looser():
    """``refine_root``'s second pass (warm-started chunks continuing the first pass, the search's mode on wide
    inputs): every sampled pre-activation of a 6-12-12-12-4 sigmoid net stays inside, each layer inside the
    first pass's bounds, and the layers are narrower in sum than after the first pass."""
    rng = np.random.default_rng(11)
    net, ch, lo, hi, zl, zu = _steep_net(rng, "sigmoid", 3.0, 0.5)
    warm: dict = {}
    one_l, one_u = refine_root(ch, lo, hi, zl, zu, iters=5, warm=warm)
    many_l, many_u = refine_root(ch, lo, hi, one_l, one_u, iters=5, chunks=4, deadline=np.inf, warm=warm)
    h = rng.uniform(lo[0], hi[0], (20000, 6))
    for k, layer in enumerate(net.layers):
        z = h @ layer.op.dense().astype(np.float64).T + layer.bias
        h = SMOOTH["sigmoid"](z).astype(np.float64) if k < len(net.layers) - 1 else z
        assert np.all(many_l[k][0] <= z.min(0)) and np.all(z.max(0) <= many_u[k][0])
        assert np.all(many_l[k] >= one_l[k]) and np.all(many_u[k] <= one_u[k])
    assert sum(float(np.sum((one_u[k] - one_l[k]) - (many_u[k] - many_l[k]))) for k in range(ch.depth)) > 1e-6


def _steep_net(rng: np.random.Generator, act: str, gain: float, radius: float):
    """A 6-12-12-12-4 net with weights scaled by ``gain``, the box ``[-radius, radius]^6`` and CROWN's
    pre-activation bounds on it."""
    base = random_mlp(rng, [6, 12, 12, 12, 4], act, fan_in_scaled=True)
    net = Network([Layer((gain * layer.op.dense()).astype(np.float32), layer.bias, layer.activation)
                   for layer in base.layers])
    ch = prepare(net)
    lo, hi = -radius * np.ones((1, 6)), radius * np.ones((1, 6))
    inf = [np.full((1, layer.width), np.inf) for layer in net.layers]
    zl, zu = layer_bounds(ch, lo, hi, [-a for a in inf], inf)
    return net, ch, lo, hi, zl, zu


def test_smooth_branching_picks_the_split_that_tightens_most():
    """``smooth_candidates`` ranks crossing sigmoid neurons by ``|a|`` times the loss of the line the coefficient
    uses minus the worse half's; the ranking agrees with the same losses measured on a 2001-point long-double
    grid (independent of its 9-point estimate), skips a zero coefficient and stable neurons, and the split
    children cover the parent (``z <= 0`` / ``z >= 0``)."""
    from lumpver.bounds.relaxations import get_relaxation
    from lumpver.verifiers.bab_branch import Domain
    from lumpver.verifiers.bab_deep import SmoothSplit, neuron_split, smooth_candidates

    net = Network([Layer(np.eye(5, dtype=np.float32), np.zeros(5), "sigmoid"),
                   Layer(np.ones((1, 5), dtype=np.float32), np.zeros(1), "identity")])
    ch = prepare(net)
    lo, hi = np.array([-6.0, -1.0, -3.0, 0.5, -2.0]), np.array([5.0, 0.5, 4.0, 3.0, 2.0])
    a = np.array([0.6, 2.0, -1.0, 5.0, 0.0])

    def loss(l, u, upper):  # mean |line - curve| on a dense grid, long double
        r = get_relaxation("sigmoid").tight_linear(np.array([l]), np.array([u]), 0.0)
        z = np.linspace(l, u, 2001).astype(np.longdouble)
        line = (r.su[0] * z + r.tu[0]) if upper else (r.sl[0] * z + r.tl[0])
        return float(np.mean(np.abs(line - SMOOTH["sigmoid"](z))))

    ref = {i: abs(a[i]) * (loss(lo[i], hi[i], a[i] > 0) - max(loss(lo[i], 0.0, a[i] > 0), loss(0.0, hi[i], a[i] > 0)))
           for i in (0, 1, 2)}
    dom = Domain(np.zeros(5), np.ones(5), [lo, np.array([-1.0])], [hi, np.array([1.0])], [None, None],
                 np.array([1.0]), coeffs=[a[None], np.ones((1, 1))])
    zero = SmoothSplit(points=False)  # the cut at 0 (split points: tests/test_smooth_split.py)
    ranked = [(k, i) for k, i, _ in smooth_candidates(dom, ch, 5, zero)]
    assert [i for _, i in ranked[:3]] == sorted(ref, key=lambda i: -ref[i])
    assert {i for _, i in ranked} == {0, 1, 2, 4} and ranked[-1] == (0, 4)  # neuron 3 is stable, 4 gains nothing
    kids = neuron_split(dom, ch, zero)
    k, i = ranked[0]
    assert kids[0].zu[k][i] == 0.0 and kids[1].zl[k][i] == 0.0 and kids[0].zl[k][i] == lo[i] and kids[1].zu[k][i] == hi[i]
