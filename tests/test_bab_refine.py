"""Split-refined intermediate bounds (verifiers/bab_refine.py, DESIGN.md §11) against the exact big-M MILP of
tests/milp_reference.py and dense sampling on random 20-input four-hidden-layer ReLU nets."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.engine import prepare
from lumpver.ir.network import Network
from lumpver.ir.planted import random_mlp
from lumpver.specs.inputset import Box
from lumpver.verifiers.bab_deep import root_layer_bounds, tighten_root
from lumpver.verifiers.bab_refine import SplitRefine, refine_split_layers
from tests.milp_reference import max_difference
from tests.test_bab import _zero


def _cut(net: Network, k: int) -> Network:
    """The first ``k + 1`` layers of ``net``, the last one's activation the identity (its pre-activation)."""
    return Network(net.layers[:k] + [replace(net.layers[k], activation="identity")])


def _setup(seed: int):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [20, 12, 12, 12, 12, 3], "relu", fan_in_scaled=True)
    x = rng.uniform(-1, 1, 20)
    box = Box(x - 0.4, x + 0.4)
    ch, lo, hi = prepare(net), box.lower[None], box.upper[None]
    cl, cu = root_layer_bounds(ch, lo, hi)
    al, au = tighten_root(ch, lo, hi, cl, cu, Refine(5, 0.25, 10**6))
    return rng, net, box, ch, lo, hi, al, au


def test_refined_bounds_contain_exact_milp_bounds_and_tighten():
    """Refined bounds of layers 1-2 are never looser than alpha-CROWN's, strictly tighter somewhere, and every
    tightened one (up to 2 per layer and direction) holds the exact MILP optimum of its pre-activation."""
    _, net, box, ch, lo, hi, al, au = _setup(11)
    rl, ru = refine_split_layers(ch, lo, hi, al, au, SplitRefine(2, 12, 6, 6), time.monotonic() + 60)
    checked = 0
    for k in (1, 2):
        assert np.all(rl[k] >= al[k]) and np.all(ru[k] <= au[k])
        sub, n = _cut(net, k), net.layers[k].bias.shape[0]
        for sign, moved in ((1.0, ru[k][0] < au[k][0]), (-1.0, rl[k][0] > al[k][0])):
            for j in np.flatnonzero(moved)[:2]:
                opt, _ = max_difference(sub, _zero(20, n), box.lower, box.upper, sign * np.eye(n)[j])
                assert (ru[k][0, j] >= opt - 1e-7) if sign > 0 else (rl[k][0, j] <= -opt + 1e-7), (k, j, sign)
                checked += 1
    assert checked >= 4


def test_refined_bounds_contain_sampled_pre_activations():
    """Every layer's refined bounds (layers 1-2 split-refined, 3-4 re-bounded by CROWN) hold 4,000 sampled
    pre-activations."""
    rng, net, box, ch, lo, hi, al, au = _setup(13)
    rl, ru = refine_split_layers(ch, lo, hi, al, au, SplitRefine(2, 12, 6, 6), time.monotonic() + 60)
    h = box.sample(4000, rng)
    for k, layer in enumerate(net.layers):
        z = layer.op.forward(h) + layer.bias
        assert np.all(rl[k][0] <= z.min(axis=0) + 1e-9) and np.all(z.max(axis=0) <= ru[k][0] + 1e-9)
        h = np.maximum(z, 0.0) if k < len(net.layers) - 1 else z


def test_search_with_split_refinement_agrees_with_exact_milp():
    """The ReLU search with split-refined root bounds (layers 1-3) gives the exact MILP's answer on 8 properties of
    2 random 20-8-8-8-8-3 nets (tests/test_bab_deep.py's cases; their roots stay open, so the refinement runs)."""
    from lumpver.specs.inputset import InputSet, OutputProperty
    from lumpver.verifiers.bab import BabBackend, BabOptions
    from lumpver.verifiers.bab_deep import ReluSearch
    from lumpver.verifiers.base import Query
    from tests.test_bab_deep import _cases

    be = BabBackend(BabOptions(falsify_seconds=0.02, relu=ReluSearch(split_refine=SplitRefine(3, 8, 4, 4))))
    verdicts = []
    for net, box, c, t, reachable in [case for seed in (300, 301) for case in _cases(seed, 4)]:
        v = be.check(Query(net, InputSet([box]), prop=OutputProperty([(-c[None, :], np.array([-t]))]), timeout=20.0))
        assert v.verdict == ("violated" if reachable else "proved"), (v.verdict, v.reason, t)
        if reachable:
            assert box.contains(v.counterexample) and float(c @ net.forward(v.counterexample)[0]) >= t
        verdicts.append(v.verdict)
    assert {"violated", "proved"} <= set(verdicts)
