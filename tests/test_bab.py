"""The branch-and-bound back-end (verifiers/bab.py, DESIGN.md §11) against independent answers:
an exact big-M MILP (tests/milp_reference.py, HiGHS) on random ReLU networks, through both
splitting modes (input boxes for <= 10 inputs, ReLU phases above), and published answers of
public benchmarks replayed with onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.api.verify import verify_property
from lumpver.bounds import batched
from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.engine import prepare
from lumpver.ir.network import Layer, Network
from lumpver.ir.planted import random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box, InputSet, OutputProperty
from lumpver.verifiers.bab import BabBackend, BabOptions, Context, bound
from lumpver.verifiers.bab_branch import Domain
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


def test_input_splitting_search_starts_before_the_falsifier_budget_is_spent(monkeypatch):
    """With input splitting, only ``falsify_first`` of the falsifier budget runs before the search; the rest waits
    for ``falsify_defer`` seconds of search, so a property the search proves at once (threshold 0.5 above the MILP
    maximum) asks the falsifier for 0.3 of its 2 s; with no wait it gets the rest too."""
    import time

    import lumpver.verifiers.falsify as falsify

    budgets = []
    real = falsify.search

    def spy(*a, **k):
        budgets.append(k["deadline"] - time.monotonic())
        return real(*a, **k)

    monkeypatch.setattr(falsify, "search", spy)
    net = random_mlp(np.random.default_rng(11), [3, 10, 8, 2], "relu", fan_in_scaled=True)
    box, c = Box(-np.ones(3), np.ones(3)), np.array([1.0, 0.0])
    opt, _ = max_difference(net, _zero(3, 2), box.lower, box.upper, c)
    prop = OutputProperty([(-c[None, :], np.array([-(opt + 0.5)]))])
    for defer in (1000.0, 0.0):
        budgets.clear()
        opt_ = BabOptions(falsify_seconds=2.0, falsify_first=0.3, falsify_defer=defer)
        v = BabBackend(opt_).check(Query(net, InputSet([box]), prop=prop, timeout=100.0))
        assert v.verdict == "proved", v.reason
        assert budgets[0] <= 0.3 + 1e-6, budgets
        assert (sum(budgets) <= 0.3 + 1e-6) if defer > 0 else (sum(budgets) > 1.0), budgets


# ----- optimised intermediate bounds in the input-splitting search (Refine, refine_depth) ----------------
REFINED = BabBackend(BabOptions(falsify_seconds=0.02, refine=Refine(5, 0.25, 60), refine_depth=0))


@pytest.mark.parametrize("seed", range(6))
def test_refined_search_agrees_with_exact_milp(seed):
    """Refinement forced on every open box: proved / violated exactly as the MILP says, thresholds
    0.05-0.5 % from the optimum (30 near-tie properties, 3 inputs, 3 hidden layers of 16)."""
    rng = np.random.default_rng(300 + seed)
    net = random_mlp(rng, [3, 16, 16, 16, 3], "relu", fan_in_scaled=True)
    lo = rng.uniform(-1, 0, 3)
    hi = lo + rng.uniform(0.3, 1.0, 3)
    for _ in range(5):
        c = rng.normal(size=3)
        opt, _ = max_difference(net, _zero(3, 3), lo, hi, c)
        gap = rng.choice([-1.0, 1.0]) * rng.uniform(0.0005, 0.005) * (1.0 + abs(opt))
        prop = OutputProperty([(-c[None, :], np.array([-(opt + gap)]))])
        v = REFINED.check(Query(net, InputSet([Box(lo, hi)]), prop=prop, timeout=30.0))
        assert v.verdict == ("violated" if gap < 0 else "proved"), (v.verdict, v.reason, opt, gap)
        if v.verdict == "violated":
            assert float(c @ net.forward(v.counterexample)[0]) >= opt + gap


# ----- the LP finisher forced on (verifiers/lp_finish.py: persistent warm-started HiGHS model per box) ---------
FINISHER = BabBackend(BabOptions(falsify_seconds=0.02, lp_depth=1, lp_after=0.0, lp_budget=8, lp_retry=1))


@pytest.mark.parametrize("seed", range(4))
def test_search_with_lp_finisher_agrees_with_exact_milp(seed):
    """The LP finisher on every open box from depth 1: proved / violated exactly as the MILP says on 20 near-tie
    properties (thresholds 0.01-0.1 % from the optimum; 4 hidden layers of 12, so boxes have dead, active and
    unstable neurons), each unsafe set written with a second, never binding row (two property rows in the LP)."""
    rng = np.random.default_rng(500 + seed)
    net = random_mlp(rng, [3, 12, 12, 12, 12, 3], "relu", fan_in_scaled=True)
    lo = rng.uniform(-1, 0, 3)
    hi = lo + rng.uniform(0.3, 1.0, 3)
    lp_closed = 0
    for _ in range(5):
        c = rng.normal(size=3)
        opt, _ = max_difference(net, _zero(3, 3), lo, hi, c)
        gap = rng.choice([-1.0, 1.0]) * rng.uniform(0.0001, 0.001) * (1.0 + abs(opt))
        prop = OutputProperty([(np.vstack([-c, [1.0, 0.0, 0.0]]), np.array([-(opt + gap), 1e3]))])
        v = FINISHER.check(Query(net, InputSet([Box(lo, hi)]), prop=prop, timeout=30.0))
        assert v.verdict == ("violated" if gap < 0 else "proved"), (v.verdict, v.reason, opt, gap)
        if v.verdict == "violated":
            assert float(c @ net.forward(v.counterexample)[0]) >= opt + gap
        lp_closed += v.details.get("stats", {}).get("lp_closed", 0) if v.details else 0
    assert lp_closed > 0  # the finisher did close boxes


def _pre_activations(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's pre-activation at the points ``x``, by hand from the stored weights (ReLU nets)."""
    out, h = [], x
    for layer in net.layers:
        z = h @ layer.op.dense().T.astype(np.float64) + layer.bias
        out.append(z)
        h = np.maximum(z, 0.0) if layer.activation == "relu" else z
    return out


def test_refined_intermediate_bounds_contain_sampled_pre_activations():
    """The bounds a refined box carries (inherited by its children) contain the pre-activations of 4000
    sampled points and the box's vertices, lie inside CROWN's, and are strictly tighter somewhere."""
    tighter = 0
    for seed in range(8):
        rng = np.random.default_rng(400 + seed)
        net = random_mlp(rng, [3, 16, 16, 16, 3], "relu", fan_in_scaled=True)
        chain = prepare(net)
        lo = rng.uniform(-1, 0, 3)
        hi = lo + rng.uniform(0.05, 0.4, 3)
        inf = [np.full(layer.width, np.inf) for layer in net.layers]
        root = Domain(lo, hi, [-a for a in inf], inf, [None] * chain.depth, np.zeros(1), depth=5)
        lam, offset = -rng.normal(size=(1, 3)), np.array([1e6])  # a row that never closes: every box is refined
        plain, = bound(Context(chain, lam, offset, 1, 0.25), [root])
        refined, = bound(Context(chain, lam, offset, 1, 0.25, Refine(10, 0.25, 60), 0), [root])
        corners = np.array(np.meshgrid(*zip(lo, hi))).reshape(3, -1).T
        zs = _pre_activations(net, np.vstack([Box(lo, hi).sample(4000, rng), corners]))
        for k, z in enumerate(zs):
            assert np.all(z >= refined.zl[k]) and np.all(z <= refined.zu[k]), k
            assert np.all(refined.zl[k] >= plain.zl[k]) and np.all(refined.zu[k] <= plain.zu[k])
            tighter += int(np.sum(refined.zu[k] - refined.zl[k] < plain.zu[k] - plain.zl[k] - 1e-9))
    assert tighter > 0


def _exact_range(net: Network, k: int, i: int, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """Exact min and max of neuron ``i``'s pre-activation in layer ``k`` over the box (big-M MILP)."""
    layer = net.layers[k]
    top = Layer(layer.op.dense()[i:i + 1], layer.bias[i:i + 1], "identity")
    f = Network(list(net.layers[:k]) + [top])
    hi_v, _ = max_difference(f, _zero(net.n_inputs, 1), lo, hi, np.ones(1))
    neg, _ = max_difference(f, _zero(net.n_inputs, 1), lo, hi, -np.ones(1))
    return -neg, hi_v


def test_grouped_intermediate_bounds_contain_exact_ranges(monkeypatch):
    """``layer_bounds`` on 160 small boxes at once (rows bounded per group of similar row counts, neurons dead on
    a whole group dropped from the back-substitution: lumpver/bounds/batched.py) contains the exact MILP range
    of every neuron of the last two layers on 2 boxes and the pre-activations of 100 sampled points per box."""
    rng = np.random.default_rng(41)
    net = random_mlp(rng, [3, 16, 16, 16, 2], "relu", fan_in_scaled=True)
    chain = prepare(net)
    centre, radius = rng.uniform(-1, 1, (160, 3)), rng.uniform(0.02, 0.4, (160, 1))
    lo, hi = centre - radius, centre + radius
    pruned = []
    drop = batched._drop_dead
    monkeypatch.setattr(batched, "_drop_dead", lambda *a: pruned.append(drop(*a)) or pruned[-1])
    inf = [np.full((160, layer.width), np.inf) for layer in net.layers]
    zl, zu = batched.layer_bounds(chain, lo, hi, [-a for a in inf], inf)
    assert any(sub is not chain for sub, _ in pruned)  # the dropping path ran
    pts = lo[:, None, :] + rng.uniform(size=(160, 100, 3)) * (hi - lo)[:, None, :]
    for k, z in enumerate(_pre_activations(net, pts.reshape(-1, 3))):
        z = z.reshape(160, 100, -1)
        assert np.all(z >= zl[k][:, None, :]) and np.all(z <= zu[k][:, None, :]), k
    for b in np.argsort(radius[:, 0])[:2]:  # small boxes: dead neurons, fast MILPs
        for k in (2, 3):
            for i in range(net.layers[k].width):
                low, high = _exact_range(net, k, i, lo[b], hi[b])
                assert zl[k][b, i] <= low + 1e-9 and zu[k][b, i] >= high - 1e-9, (b, k, i)


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


TWO = BabBackend(BabOptions(falsify_seconds=0.02, workers=2))


@pytest.mark.parametrize("n_in,widths,seed", [(3, (16, 16, 16), 7), (12, (10, 8), 107)])
def test_two_workers_agree_with_one_process_and_the_milp(n_in, widths, seed):
    """Two workers (input splitting: whole expansions pipelined in the workers, verifiers/bab_input.py; ReLU
    splitting: pooled batches) give the verdicts of one process and of the exact MILP, on 4 properties each with
    thresholds 0.05-0.5 % from the optimum, both sides (so the search, not the root, decides most of them)."""
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [n_in, *widths, 3], "relu", fan_in_scaled=True)
    lo = rng.uniform(-1, 0, n_in)
    box, bounded = Box(lo, lo + rng.uniform(0.5, 1.0, n_in)), 0
    for sign in (-1.0, 1.0, -1.0, 1.0):
        c = rng.normal(size=3)
        opt, _ = max_difference(net, _zero(n_in, 3), box.lower, box.upper, c)
        t = opt + sign * rng.uniform(0.0005, 0.005) * (1.0 + abs(opt))
        q = Query(net, InputSet([box]), prop=OutputProperty([(-c[None, :], np.array([-t]))]), timeout=30.0)
        one, two = BAB.check(q), TWO.check(q)
        assert one.verdict == two.verdict == ("violated" if sign < 0 else "proved"), (one.reason, two.reason, t)
        if two.verdict == "violated":
            assert box.contains(two.counterexample) and float(c @ net.forward(two.counterexample)[0]) >= t
        bounded += two.details["stats"]["bounded"]
    assert bounded > 20, bounded  # the workers had sub-problems to bound (40 since ReLU-split roots optimise slopes)


def test_tiny_timeout_is_unknown(shared_data):
    r = verify_property(shared_data / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx",
                        shared_data / "acasxu/vnnlib/prop_3.vnnlib", backend="bab", timeout=0.3)
    assert r.result in ("timeout", "unknown")


# ----- sigmoid / tanh (DESIGN.md §11: tight lines, splits at 0) ------------------------------------
SMOOTH = {  # written here in extended precision, independently of lumpver.ir.activations
    "sigmoid": lambda z: 1 / (1 + np.exp(-np.asarray(z, dtype=np.longdouble))),
    "tanh": lambda z: np.tanh(np.asarray(z, dtype=np.longdouble)),
}


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_tight_lines_enclose_the_curve(act):
    """``tight_linear`` lines lie below / above the activation on a dense grid of every interval
    (crossing, convex, concave, wide, narrow), and enclose less area than the engine's lines."""
    from lumpver.bounds.relaxations import get_relaxation

    rng = np.random.default_rng(3)
    lo = np.concatenate([rng.uniform(-12, 3, 3000), rng.uniform(-0.1, 0, 200)])
    hi = lo + np.concatenate([rng.exponential(3, 3000), rng.uniform(1e-6, 0.2, 200)])
    entry = get_relaxation(act)
    tight, plain = entry.tight_linear(lo, hi, 0.0), entry.linear(lo, hi, 0.0)
    z = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, 801)[None, :]
    f = SMOOTH[act](z)
    below = tight.sl[:, None] * z.astype(np.longdouble) + tight.tl[:, None]
    above = tight.su[:, None] * z.astype(np.longdouble) + tight.tu[:, None]
    assert np.all(below <= f) and np.all(f <= above)
    gap = lambda r: np.mean((r.su - r.sl)[:, None] * z + (r.tu - r.tl)[:, None])  # noqa: E731
    assert gap(tight) < 0.8 * gap(plain)


def _smooth_net(seed: int, act: str, widths: tuple[int, ...]) -> Network:
    """Steep random nets (gain 3), so sub-problems need splits."""
    base = random_mlp(np.random.default_rng(seed), list(widths), act, fan_in_scaled=True)
    return Network([Layer((3.0 * layer.weight).astype(np.float32), layer.bias, layer.activation) for layer in base.layers])


def _lipschitz(net: Network, act: str) -> float:
    """An upper bound of the Lipschitz constant (inf norm in, per output) of every output: products of
    induced inf-norms times the activation's largest slope (1/4 for sigmoid, 1 for tanh)."""
    slope = {"sigmoid": 0.25, "tanh": 1.0}[act]
    out = 1.0
    for k, layer in enumerate(net.layers):
        out *= np.max(np.sum(np.abs(layer.weight), axis=1)) * (slope if k < len(net.layers) - 1 else 1.0)
    return float(out)


def _smooth_cases(seed: int, act: str, n_props: int, close: float = 0.0, reach: float = 0.5):
    """2-input nets, thresholds on ``c . y`` whose truth a brute-force grid decides: the grid maximum
    ``g`` is reached (``t <= g``: unsafe) and the true maximum is at most ``g + L |c|_1 h / 2`` (grid step
    ``h``, Lipschitz bound ``L``): above that the property holds. Thresholds in between are skipped.
    Thresholds are a random share of ``1 + |g|`` away, or ``close`` times it when given (unsafe with
    probability ``reach``)."""
    rng = np.random.default_rng(seed)
    net = _smooth_net(seed, act, (2, 8, 8, 3))
    lo = rng.uniform(-1, 0, 2)
    hi = lo + rng.uniform(0.3, 1.0, 2)
    n = 401
    grid = np.stack(np.meshgrid(*(np.linspace(lo[i], hi[i], n) for i in range(2))), -1).reshape(-1, 2)
    ys = net.forward(grid)
    for _ in range(n_props):
        c = rng.normal(size=3)
        g = float(np.max(ys @ c))
        slack = _lipschitz(net, act) * np.sum(np.abs(c)) * float(np.max(hi - lo)) / (n - 1) / 2 + 1e-9
        gap = (close if close > 0 else rng.uniform(0.01, 0.3)) * (1.0 + abs(g))
        if rng.random() < reach:
            yield net, Box(lo, hi), c, g - gap, True
        else:
            yield net, Box(lo, hi), c, g + slack + gap, False


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_smooth_nets_agree_with_brute_force(act):
    """Input splitting on sigmoid/tanh nets: every answer matches the brute-force grid (40 properties)."""
    verdicts = [_check(*case) for s in range(8) for case in _smooth_cases(300 + s, act, 5)]
    assert {"violated", "proved"} <= set(verdicts)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_smooth_neuron_splits_never_contradict_an_attack(act):
    """12 inputs (neuron splits at 0): thresholds below a sampled point's value must not be proved, a
    counterexample must reach its threshold; a proof above the sampled best must survive an attack."""
    from lumpver.verifiers import falsify

    rng = np.random.default_rng(11)
    seen = set()
    for seed in range(4):
        net = _smooth_net(400 + seed, act, (12, 10, 8, 3))
        box = Box(-np.ones(12) * 0.3, np.ones(12) * 0.3)
        c = rng.normal(size=3)
        best = float(np.max(net.forward(box.sample(4000, rng)) @ c))
        for t in (best - 0.05 * (1 + abs(best)), best + 0.3 * (1 + abs(best))):
            prop = OutputProperty([(-c[None, :], np.array([-t]))])
            v = BAB.check(Query(net, InputSet([box]), prop=prop, timeout=10.0))
            seen.add(v.verdict)
            if t < best:  # a sampled point reaches t: never proved (found by the search, or a timeout)
                assert v.verdict != "proved", v.reason
            if v.verdict == "violated":
                assert box.contains(v.counterexample) and float(c @ net.forward(v.counterexample)[0]) >= t
            if v.verdict == "proved":
                q = Query(net, InputSet([box]), prop=prop, timeout=2.0)
                assert falsify.search(q, rng=np.random.default_rng(seed)).counterexample is None
    assert "proved" in seen
