"""ReLU splitting on deep ReLU chains (verifiers/bab_deep.py, DESIGN.md §11): fixed child bounds on alpha-CROWN
root intermediate bounds, with plain BaBSR and with filtered smart branching, against the exact big-M MILP of
tests/milp_reference.py on random 784-like (here 20-input) four-hidden-layer nets."""
from __future__ import annotations

import numpy as np

from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.engine import prepare
from lumpver.ir.planted import random_mlp
from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.verifiers.bab import BabBackend, BabOptions
from lumpver.verifiers.bab_deep import ReluSearch, recompute_children, root_layer_bounds, tighten_root
from lumpver.verifiers.bab_refine import SplitRefine
from lumpver.verifiers.base import Query
from tests.milp_reference import max_difference
from tests.test_bab import _zero


R = 0.45  # the ball radius: the roots stay open, so the search branches (the test checks it)


def _cases(seed: int, n_props: int):
    """A random 20-8-8-8-8-3 net, an L-inf ball of radius R (as an image property) and thresholds on ``c . y``
    2-30 % away from the MILP optimum (no near-ties)."""
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [20, 8, 8, 8, 8, 3], "relu", fan_in_scaled=True)
    x = rng.uniform(-1, 1, 20)
    for _ in range(n_props):
        c = rng.normal(size=3)
        opt, _ = max_difference(net, _zero(20, 3), x - R, x + R, c)
        gap = rng.choice([-1.0, 1.0]) * rng.uniform(0.02, 0.3) * (1.0 + abs(opt))
        yield net, Box(x - R, x + R), c, opt + gap, gap < 0  # unsafe {c . y >= t}: reachable iff t <= opt


def test_deep_relu_search_agrees_with_exact_milp():
    """Zero wrong answers on 16 properties of 4 random 20-8-8-8-8-3 nets, with plain BaBSR and with filtered smart
    branching among 3 candidates; the search runs in the fixed-bounds mode (checked), branches, and both answers
    occur (split refinement of the root off: it closes these roots with few splits; tests/test_bab_refine.py
    checks the search with it against the MILP)."""
    cases = [case for seed in range(300, 304) for case in _cases(seed, 4)]
    for fsb_top in (1, 3):
        relu = ReluSearch(Refine(5, 0.25, 10**6), 3, fsb_top, split_refine=SplitRefine())  # the branching itself
        be = BabBackend(BabOptions(falsify_seconds=0.02, relu=relu))
        verdicts, bounded = [], 0
        for net, box, c, t, reachable in cases:
            assert not recompute_children(prepare(net), be.options.relu)
            prop = OutputProperty([(-c[None, :], np.array([-t]))])
            v = be.check(Query(net, InputSet([box]), prop=prop, timeout=20.0))
            assert v.verdict == ("violated" if reachable else "proved"), (fsb_top, v.verdict, v.reason, t)
            if reachable:
                assert box.contains(v.counterexample) and float(c @ net.forward(v.counterexample)[0]) >= t
            else:
                bounded = max(bounded, v.details["stats"]["bounded"])
            verdicts.append(v.verdict)
        assert {"violated", "proved"} <= set(verdicts) and bounded > 10  # some proof needed splits


def test_root_bounds_contain_sampled_pre_activations_and_tighten_crown():
    """alpha-CROWN root bounds hold every sampled pre-activation and are never looser than CROWN's."""
    rng = np.random.default_rng(5)
    net = random_mlp(rng, [20, 16, 16, 16, 3], "relu", fan_in_scaled=True)
    ch, box = prepare(net), Box(-np.ones(20), np.ones(20))
    lo, hi = box.lower[None], box.upper[None]
    cl, cu = root_layer_bounds(ch, lo, hi)
    rl, ru = tighten_root(ch, lo, hi, cl, cu, Refine(10, 0.25, 10**6))
    h = box.sample(4000, rng)
    for k, layer in enumerate(net.layers):
        z = layer.op.forward(h) + layer.bias
        assert np.all(rl[k][0] <= z.min(axis=0) + 1e-9) and np.all(z.max(axis=0) <= ru[k][0] + 1e-9)
        assert np.all(rl[k] >= cl[k]) and np.all(ru[k] <= cu[k])
        h = np.maximum(z, 0.0) if k < len(net.layers) - 1 else z
    assert sum(np.sum(cu[k] - cl[k]) - np.sum(ru[k] - rl[k]) for k in range(3)) > 0  # strictly tighter somewhere
