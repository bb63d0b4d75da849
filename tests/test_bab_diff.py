"""The differential branch and bound (``bab_diff``) against independent references: an exact big-M
MILP (scipy HiGHS, tests/milp_reference.py) on random small pairs of every kind (pruned, perturbed,
quantised, unlike widths, unlike depths), forward passes for the alignment, onnxruntime for the
replayed lower bound, and the certificate checker for tampered claims."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lumpver.bounds.diff_align import align_pair, product_chain
from lumpver.bounds.diff_batched import bound_boxes, leaves_of, prepare_diff
from lumpver.ir.network import Layer, Network
from lumpver.specs.inputset import Box, InputSet
from lumpver.verifiers.bab_diff import DiffOptions, difference_search
from lumpver.verifiers.base import Query, get_backend
from tests.milp_reference import max_linf_difference
from tests.test_interval_backend import REDUCTIONS, random_net

BACKEND = get_backend("bab_diff")


def _f32(net: Network) -> Network:
    """The network with float32 weights (as an ONNX file stores them)."""
    return net.with_layers([Layer(l.weight.astype(np.float32).astype(np.float64),
                                  l.bias.astype(np.float32).astype(np.float64), l.activation) for l in net.layers])


def _student(f: Network, rng) -> Network:
    """A network of another depth and width (one hidden layer of 9)."""
    return random_net(rng, [f.n_inputs, 9, f.n_outputs])


KINDS = {**REDUCTIONS, "student": _student}


def random_pair(seed: int) -> tuple[Network, Network, str]:
    rng = np.random.default_rng(1000 + seed)
    kind = sorted(KINDS)[seed % len(KINDS)]
    f = random_net(rng, [3, int(rng.integers(4, 8)), int(rng.integers(4, 7)), 2], input_ops=seed % 3 == 0)
    return _f32(f), _f32(KINDS[kind](f, rng)), kind


def _exact(f: Network, g: Network, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """MILP maximum of ||f - g||_inf and the value attained (float64) at its clipped maximiser."""
    exact, x = max_linf_difference(f, g, lo, hi)
    x = np.clip(x, lo, hi)
    return exact, float(np.max(np.abs(f.forward(x) - g.forward(x))))


@pytest.mark.parametrize("chunk", range(4))
def test_bound_never_below_the_milp_maximum(chunk):
    """100 random pairs (25 per chunk): the certified bound is >= the exact maximum, the attained
    value <= it, and the verdicts at 0.9 x / 1.1 x the maximum are never wrong (chunks 0 and 2 with
    optimised intermediate bounds, which these small pairs would otherwise skip)."""
    lo, hi = -np.ones(3), np.ones(3)
    X = InputSet([Box(lo, hi)])
    opt = DiffOptions(batch=8, max_boxes=150, small_pair=64 if chunk % 2 else 0)  # odd chunks: with refinement
    for seed in range(25 * chunk, 25 * chunk + 25):
        f, g, kind = random_pair(seed)
        exact, attained = _exact(f, g, lo, hi)
        res, _ = difference_search(f, g, X, "linf", 0.1, options=opt)
        r = res[0]
        assert r.upper >= attained and r.upper >= exact - 1e-7 * (1 + exact), (seed, kind, r.upper, exact)
        assert r.lower <= exact + 1e-7 * (1 + exact), (seed, kind)
        below = BabDiff(opt).check(Query(f, X, other=g, epsilon=0.9 * exact, timeout=0.08))
        assert below.verdict != "proved", (seed, kind)
        if below.verdict == "violated":
            x = below.counterexample
            assert X.contains(x) and np.max(np.abs(f.forward(x) - g.forward(x))) > 0.9 * exact
        above = BabDiff(opt).check(Query(f, X, other=g, epsilon=1.1 * exact + 1e-9, timeout=0.08))
        assert above.verdict != "violated", (seed, kind)
        if above.verdict == "proved":
            assert exact - 1e-7 * (1 + exact) <= above.upper_bound <= 1.1 * exact + 1e-9


def BabDiff(opt: DiffOptions):
    from lumpver.verifiers.bab_diff import BabDiffBackend

    return BabDiffBackend(opt)


def test_search_converges_to_the_milp_maximum():
    """With time, the gap closes: bound within 1 % of the exact maximum on small pairs."""
    lo, hi = -np.ones(3), np.ones(3)
    for seed in range(5):
        f, g, kind = random_pair(seed)
        exact, _ = _exact(f, g, lo, hi)
        res, _ = difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 10.0)
        assert exact - 1e-7 * (1 + exact) <= res[0].upper <= 1.01 * exact + 1e-9, (kind, res[0].upper, exact)


def test_alignment_and_product_compute_the_same_functions():
    """Permuting and padding (alignment) and the product chain's depth padding change no function
    (forward passes of the original networks as the reference)."""
    rng = np.random.default_rng(3)
    f = random_net(rng, [4, 7, 6, 3])
    g = REDUCTIONS["pruned_neurons"](f, rng)
    perm = rng.permutation(g.layers[0].width)
    layers = [l.copy() for l in g.layers]
    layers[0] = Layer(layers[0].weight[perm], layers[0].bias[perm], "relu")
    layers[1] = Layer(layers[1].weight[:, perm], layers[1].bias, "relu")
    g = g.with_layers(layers)
    fa, ga = align_pair(f, g)
    x = rng.uniform(-2, 2, (200, 4))
    assert np.array_equal(fa.forward(x), f.forward(x)) and np.allclose(ga.forward(x), g.forward(x), atol=1e-12)
    assert fa.layers[0].width == f.layers[0].width  # g is a subset of f: matched, no extra neuron
    s = _student(f, rng)
    assert product_chain(f, s) is not None and align_pair(f, s) is None


def test_leaf_bounds_contain_sampled_differences():
    """Per-box bounds (both pairings) contain f - g at sampled points of each box."""
    rng = np.random.default_rng(5)
    f = _f32(random_net(rng, [3, 8, 8, 2], input_ops=True))
    g = _f32(REDUCTIONS["perturbed"](f, rng))
    c = rng.uniform(-1, 1, (16, 3))
    lo, hi = c - rng.uniform(0, 0.5, (16, 3)), c + rng.uniform(0, 0.5, (16, 3))
    for kind in ("delta", "product"):
        bb = bound_boxes(prepare_diff(f, g, kind), lo, hi)
        for b in range(16):
            pts = rng.uniform(lo[b], hi[b], (300, 3))
            d = f.forward(pts) - g.forward(pts)
            assert np.all(d <= bb.upper[b]) and np.all(d >= bb.lower[b]), kind


def test_unaligned_pairs_choose_a_pairing_and_stay_above_the_milp_maximum():
    """Independently drawn networks (retrained copies of f's shape: no neuron corresponds; students of another
    depth, so the product pads one network; a perturbed copy keeps the delta chain): the search's bound is never below the exact MILP maximum, its attained value never above it, and the
    verdicts at 0.9 x / 1.1 x the maximum are never wrong."""
    from lumpver.verifiers.bab_diff import choose_pairing

    lo, hi = -np.ones(3), np.ones(3)
    X = InputSet([Box(lo, hi)])
    opt = DiffOptions(batch=8, max_boxes=150, small_pair=0)  # with refinement: the product's own-chain path
    kinds = set()
    for seed in range(3):
        rng = np.random.default_rng(77 + seed)
        f = _f32(random_net(rng, [3, 6, 5, 2]))
        g = _f32(random_net(rng, [3, 6, 5, 2] if seed % 2 == 0 else [3, 4, 4, 4, 2]))
        model = choose_pairing(f, g, X)
        kinds.add(model.kind)
        exact, attained = _exact(f, g, lo, hi)
        r = difference_search(f, g, X, "linf", 0.2, options=opt)[0][0]
        assert r.upper >= attained and r.upper >= exact - 1e-7 * (1 + exact), (seed, r.upper, exact)
        assert r.lower <= exact + 1e-7 * (1 + exact), seed
        below = BabDiff(opt).check(Query(f, X, other=g, epsilon=0.9 * exact, timeout=0.1))
        above = BabDiff(opt).check(Query(f, X, other=g, epsilon=1.1 * exact + 1e-9, timeout=0.1))
        assert below.verdict != "proved" and above.verdict != "violated", seed
    assert "product" in kinds
    f = _f32(random_net(np.random.default_rng(5), [3, 6, 5, 2]))
    assert choose_pairing(f, _f32(REDUCTIONS["perturbed"](f, np.random.default_rng(6))), X).kind == "delta"


def test_tree_leaves_cover_the_box():
    box = Box(np.zeros(2), np.ones(2))
    lo, hi = leaves_of(box, [0, -1, 1, -1, -1])
    assert lo.shape == (3, 2) and np.isclose(np.prod(hi - lo, axis=1).sum(), 1.0)
    for bad in ([0, -1], [5, -1, -1], [-1, -1]):
        with pytest.raises(ValueError):
            leaves_of(box, bad)


def _files(tmp_path, f: Network, g: Network, box: Box):
    from lumpver.ir.onnx_export import save_onnx

    a, b, spec = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "x.vnnlib"
    save_onnx(f, a)
    save_onnx(g, b)
    lines = [f"(declare-const X_{i} Real)" for i in range(box.dim)] + ["(declare-const Y_0 Real)"]
    num = lambda v: f"(- {abs(float(v))!r})" if v < 0 else repr(float(v))  # noqa: E731
    for i in range(box.dim):
        lines += [f"(assert (>= X_{i} {num(box.lower[i])}))", f"(assert (<= X_{i} {num(box.upper[i])}))"]
    spec.write_text("\n".join(lines + ["(assert (>= Y_0 1000.0))"]) + "\n")
    return a, b, spec


def test_bound_certificate_rechecks_and_tightened_claims_fail(tmp_path):
    from lumpver.api.bound import bound_files
    from lumpver.certificates.format import check_certificate
    from lumpver.ir.runtime import run_onnx

    rng = np.random.default_rng(11)
    f = _f32(random_net(rng, [3, 6, 5, 2]))
    g = _f32(REDUCTIONS["quantised"](f, rng))
    box = Box(-np.ones(3), np.ones(3))
    a, b, spec = _files(tmp_path, f, g, box)
    cert = tmp_path / "c.json"
    r = bound_files(a, b, spec, timeout=5, cert_path=cert)
    exact, _ = _exact(f, g, box.lower, box.upper)
    assert r.verdict == "proved" and r.backend == "bab_diff"
    assert r.upper_bound >= exact - 1e-7 and r.lower_bound <= exact + 1e-4  # lower: onnxruntime, float32
    assert abs(float(np.max(np.abs(run_onnx(a, r.counterexample) - run_onnx(b, r.counterexample)))) - r.lower_bound) < 1e-9
    assert check_certificate(cert).holds
    c = json.loads(cert.read_text())
    for how in ("epsilon", "tree"):
        bad = json.loads(json.dumps(c))
        if how == "epsilon":
            bad["guarantee"]["epsilon"] = 0.5 * exact
        else:
            bad["evidence"][0]["regions"][0]["tree"] = [-1]  # one leaf: the root box alone
        path = tmp_path / f"bad_{how}.json"
        path.write_text(json.dumps(bad))
        assert not check_certificate(path).holds, how


def test_compare_auto_decides_and_replays(tmp_path):
    from lumpver.api.compare import compare_models

    rng = np.random.default_rng(12)
    f = _f32(random_net(rng, [3, 6, 5, 2]))
    g = _f32(REDUCTIONS["pruned_rows"](f, rng))
    box = Box(-np.ones(3), np.ones(3))
    a, b, spec = _files(tmp_path, f, g, box)
    exact, _ = _exact(f, g, box.lower, box.upper)
    v = compare_models(a, b, spec, 1.05 * exact, timeout=20)
    assert v.verdict == "proved" and v.upper_bound <= 1.05 * exact, v.reason
    w = compare_models(a, b, spec, 0.8 * exact, timeout=20)
    assert w.verdict == "violated" and w.details["replay"]["onnx_value"] > 0.8 * exact


def test_reduction_certificate_switches_to_bab_diff_and_rechecks(tmp_path):
    """certify() of a neuron-pruned network: with a one-box interval budget the search certifies less,
    its evidence (trees, the kept neurons) re-checks, and a halved claim fails."""
    from lumpver.certificates.format import check_certificate
    from lumpver.reductions.certify import Chain, certify, write_bounded

    rng = np.random.default_rng(13)
    f = _f32(random_net(rng, [3, 8, 6, 2]))
    kept = [np.sort(rng.choice(8, 6, replace=False)), np.sort(rng.choice(6, 5, replace=False))]
    w = [f.layers[0].weight[kept[0]], f.layers[1].weight[np.ix_(kept[1], kept[0])], f.layers[2].weight[:, kept[1]]]
    b = [f.layers[0].bias[kept[0]], f.layers[1].bias[kept[1]], f.layers[2].bias]
    g = f.with_layers([Layer(wk, bk, l.activation) for wk, bk, l in zip(w, b, f.layers)])
    box = Box(-np.ones(3), np.ones(3))
    a, bp, spec = _files(tmp_path, f, g, box)
    X = InputSet([box])
    res = certify(f, g, X, "linf", Chain(kept=kept), timeout=3, max_boxes=1)
    exact, _ = _exact(f, g, box.lower, box.upper)
    assert res.backend == "bab_diff" and res.epsilon >= exact - 1e-7
    cert = tmp_path / "r.json"
    write_bounded(a, bp, cert, f, g, X, res, {"method": "test"}, 1.0)
    assert check_certificate(cert).holds
    c = json.loads(cert.read_text())
    c["guarantee"]["epsilon"] = 0.5 * exact
    cert.write_text(json.dumps(c))
    assert not check_certificate(cert).holds


def _pre_activations(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's pre-activation at the points ``x`` (plain numpy forward pass)."""
    h, out = net.preprocess(x), []
    for layer in net.layers:
        z = h @ layer.weight.T + layer.bias
        out.append(z)
        h = np.maximum(z, 0.0) if layer.activation == "relu" else z
    return out


def test_refined_intermediate_bounds_are_inside_crown_and_contain_samples():
    """Optimised intermediate bounds (bounds/intermediate.py) only tighten CROWN's, and contain every
    sampled pre-activation of deep random nets on small boxes."""
    from lumpver.bounds.batched import layer_bounds
    from lumpver.bounds.engine import prepare
    from lumpver.bounds.intermediate import refine_layers

    rng = np.random.default_rng(21)
    tightened = 0
    for _ in range(4):
        net = _f32(random_net(rng, [3, 12, 12, 12, 12, 2]))
        ch = prepare(net)
        c = rng.uniform(-1, 1, (12, 3))
        lo, hi = c - rng.uniform(0.02, 0.3, (12, 3)), c + rng.uniform(0.02, 0.3, (12, 3))
        zl0, zu0 = layer_bounds(ch, lo, hi, [np.full((12, w), -np.inf) for w in (12, 12, 12, 12, 2)],
                                [np.full((12, w), np.inf) for w in (12, 12, 12, 12, 2)])
        zl, zu = refine_layers(ch, lo, hi, zl0, zu0, 10, 0.25, 1000)
        for b in range(12):
            pts = rng.uniform(lo[b], hi[b], (400, 3))
            for k, z in enumerate(_pre_activations(net, pts)):
                assert np.all(z >= zl[k][b]) and np.all(z <= zu[k][b]), (b, k)
        for k in range(5):
            assert np.all(zl[k] >= zl0[k]) and np.all(zu[k] <= zu0[k])
            tightened += int(np.sum(zu[k] < zu0[k] - 1e-9) + np.sum(zl[k] > zl0[k] + 1e-9))
    assert tightened > 0


def test_refinement_closes_an_acasxu_leaf_and_the_checker_uses_it(tmp_path, shared_data):
    """ACAS Xu 1_2 vs its 5 %-pruned copy on a small prop_1 box where one neuron that CROWN leaves
    unstable carries the bound (bench/RESULTS.md): the refined bound is below epsilon, contains
    every difference onnxruntime computes on a grid, the certificate re-checks, and one without the
    refinement record (the checker then bounds without it) fails."""
    from lumpver.api.bound import bound_files
    from lumpver.bounds.diff_batched import REFINE, Refine
    from lumpver.certificates.format import check_certificate
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.ir.runtime import run_onnx
    from lumpver.reductions.pruning import magnitude_prune

    f = load_onnx(shared_data / "acasxu" / "onnx" / "ACASXU_run2a_1_2_batch_2000.onnx")
    g = magnitude_prune(f, 0.95)
    # twice the leaf of bench/RESULTS.md: since interval bounds are intersected into CROWN's (bounds/batched.py)
    # the plain bound of that leaf is 0 already; on this box plain 0.0052, refined 0 (f - g = 0 there)
    box = Box(np.array([0.605, 0.08203125, 0.08203125, 0.45, -0.5]),
              np.array([0.625, 0.09765625, 0.09765625, 0.5, -0.45]))
    model = prepare_diff(f, g)
    plain, refined = (bound_boxes(model, box.lower[None], box.upper[None], refine=r) for r in (Refine(), REFINE))
    worst = lambda bb: float(np.max(np.maximum(bb.upper, -bb.lower)))  # noqa: E731
    assert worst(plain) > 0.004 and worst(refined) < 0.001
    a, b, spec = _files(tmp_path, f, g, box)
    grid = np.stack(np.meshgrid(*[np.linspace(l, h, 4) for l, h in zip(box.lower, box.upper)]), -1).reshape(-1, 5)
    d = run_onnx(a, grid.astype(np.float32)).astype(np.float64) - run_onnx(b, grid.astype(np.float32))
    assert np.all(d <= refined.upper[0] + 1e-6) and np.all(d >= refined.lower[0] - 1e-6)
    cert = tmp_path / "c.json"
    r = bound_files(a, b, spec, timeout=10, cert_path=cert)
    assert r.backend == "bab_diff" and r.upper_bound < 0.001 and check_certificate(cert).holds
    c = json.loads(cert.read_text())
    del c["evidence"][0]["refine"]
    cert.write_text(json.dumps(c))
    assert not check_certificate(cert).holds


def _aligned_pair(seed: int) -> tuple[Network, Network, str]:
    """A random 3-input pair of equal shape (quantised or perturbed copy) with 4-6 neurons per layer."""
    rng = np.random.default_rng(5000 + seed)
    kind = ("quantised", "perturbed")[seed % 2]
    f = random_net(rng, [3, int(rng.integers(4, 7)), int(rng.integers(4, 7)), 2])
    return _f32(f), _f32(REDUCTIONS[kind](f, rng)), kind


def test_phase_search_matches_the_milp_maximum(monkeypatch):
    """The ReLU-phase branch and bound (LP nodes, joint pair splits chosen by the LP point's gap or by the LP
    multipliers) on 10 random aligned pairs: never below the exact MILP maximum; when it closes the gap to
    0.1 % above the maximum within its LP budget, that is; its LP points never above it. Covers the splits,
    chords and emptiness tests."""
    from lumpver.verifiers import bab_phase
    from lumpver.verifiers.bab_phase import PairNet, leaf_root, phase_search

    lo, hi = -np.ones(3), np.ones(3)
    complete = {"gap": 0, "dual": 0}
    for seed in range(10):
        f, g, kind = _aligned_pair(seed)
        exact, _ = _exact(f, g, lo, hi)
        model = prepare_diff(f, g)
        net = PairNet.of(model)
        assert net is not None, kind
        for rule in ("gap", "dual"):  # both split choices (bab_phase.BRANCH)
            monkeypatch.setattr(bab_phase, "BRANCH", rule)
            res = phase_search(net, leaf_root(net, model, lo, hi, DiffOptions().refine), lo, hi, lambda: 1.001 * exact,
                               1e18, 150)
            assert res.upper >= exact - 1e-7 * (1 + exact), (seed, kind, rule, res.upper, exact)
            pts = np.clip(np.array(res.points), lo, hi)
            assert np.max(np.abs(f.forward(pts) - g.forward(pts))) <= exact + 1e-7 * (1 + exact), (seed, kind, rule)
            complete[rule] += res.upper <= 1.001 * exact
    assert min(complete.values()) >= 2, complete  # deterministic: an LP budget, not the clock


def test_phase_search_on_product_pairs_stays_above_the_milp_maximum():
    """The phase search on the product of two independently drawn networks of one shape (no neuron
    corresponds: f's and g's own bounds, chords on ``z^f - z^g``'s interval): never below the exact MILP
    maximum, its LP points never above it; a search with the phase stage writes trees the checker
    replays to a bound >= the maximum."""
    from lumpver.certificates.bounded_bab import _leaf_bounds
    from lumpver.verifiers.bab_phase import PairNet, leaf_root, phase_search

    lo, hi = -np.ones(3), np.ones(3)
    for seed in range(2):
        rng = np.random.default_rng(900 + seed)
        f, g = (_f32(random_net(rng, [3, 5, 4, 2])) for _ in range(2))
        exact, _ = _exact(f, g, lo, hi)
        model = prepare_diff(f, g, "product")
        net = PairNet.of(model)
        assert net is not None
        res = phase_search(net, leaf_root(net, model, lo, hi, DiffOptions().refine), lo, hi, lambda: 1.001 * exact, 1e18, 40)
        assert res.upper >= exact - 1e-7 * (1 + exact), (seed, res.upper, exact)
        pts = np.clip(np.array(res.points), lo, hi)
        assert np.max(np.abs(f.forward(pts) - g.forward(pts))) <= exact + 1e-7 * (1 + exact), seed
    opt = DiffOptions(batch=1, max_boxes=1, deterministic=True, phase_lps=20, refine=DiffOptions().refine)
    res, ev = difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 60.0, options=opt, model=model)
    rec = ev["regions"][0]
    assert ev["pairing"] == "product" and "phase" in rec
    llo, lhi = leaves_of(Box(lo, hi), rec["tree"])
    got = _leaf_bounds(model, llo, lhi, "linf", ev["iters"], ev["lr"], opt.refine, float(ev["upper_bound"]), rec["phase"],
                       ev.get("phase_tighten", False))
    assert exact - 1e-7 * (1 + exact) <= got <= float(ev["upper_bound"])


def test_phase_trees_in_evidence_recheck_and_tampered_trees_fail():
    """A search with the phase stage records phase trees; the checker replays them to a bound >= the
    MILP maximum; a split whose recorded children omit a non-empty one, or a truncated tree, is refused,
    and a leaf without its phase tree does not re-check the claim."""
    from lumpver.certificates.bounded_bab import _leaf_bounds

    lo, hi = -np.ones(3), np.ones(3)
    f, g, kind = _aligned_pair(3)
    exact, _ = _exact(f, g, lo, hi)
    opt = DiffOptions(batch=1, max_boxes=1, deterministic=True, phase_lps=60, refine=DiffOptions().refine)
    res, ev = difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 60.0, options=opt)
    rec = ev["regions"][0]
    assert "phase" in rec and any(t[0] >= 0 for _, t in rec["phase"]), rec
    model = prepare_diff(f, g)
    llo, lhi = leaves_of(Box(lo, hi), rec["tree"])
    claim = float(ev["upper_bound"])
    tight = ev.get("phase_tighten", False)
    got = _leaf_bounds(model, llo, lhi, "linf", ev["iters"], ev["lr"], opt.refine, claim, rec["phase"], tight)
    assert exact - 1e-7 * (1 + exact) <= got <= claim
    plain = _leaf_bounds(model, llo, lhi, "linf", ev["iters"], ev["lr"], opt.refine, claim, None)
    assert plain > claim  # the phase trees carry the claim
    leaf, tree = rec["phase"][0]
    first = next(n for n, t in enumerate(tree) if t >= 0)
    bad = list(tree)
    bad[first] = (tree[first] // 16) * 16 + ((tree[first] % 16) & ~(tree[first] % 16 & -(tree[first] % 16)))
    for broken in (bad, tree[:-1]):
        with pytest.raises(ValueError):
            _leaf_bounds(model, llo, lhi, "linf", ev["iters"], ev["lr"], opt.refine, claim, [[leaf, broken]], tight)


def test_wide_inputs_choose_the_pairing_tighter_on_the_regions_box():
    """On inputs wider than PHASE_DIMS the search never reaches small sub-boxes, so the pairing is the one
    whose bound on the region's box is smaller (both computed here independently). On this quantised pair
    the sub-boxes of the low-dimensional rule favour the product while the box favours the delta chain."""
    from lumpver.verifiers.bab_diff import PHASE_DIMS, choose_pairing, norm_bounds

    rng = np.random.default_rng(1)
    n = PHASE_DIMS + 6
    f = _f32(random_net(rng, [n, 30, 30, 3]))
    g = _f32(REDUCTIONS["quantised"](f, rng))
    c = rng.uniform(0, 1, n)
    lo, hi = c - 0.05, c + 0.05
    chosen = choose_pairing(f, g, InputSet([Box(lo, hi)]))
    root = {}
    for k in ("delta", "product"):
        b = bound_boxes(prepare_diff(f, g, k), lo[None], hi[None])
        root[k] = float(norm_bounds(b.lower, b.upper, "linf")[0])
    assert root[chosen.kind] == min(root.values())


def _dead_end_twin(f: Network, rng) -> tuple[Network, list[np.ndarray]]:
    """A perturbed copy of f whose hidden neurons ``dead[k]`` feed nothing (zero outgoing weights, rows kept),
    as :func:`lumpver.reductions.certify.expand_pruned` builds a pruned twin."""
    layers, dead = [], []
    for k, layer in enumerate(f.layers):
        w = layer.weight + 0.05 * rng.normal(size=layer.weight.shape)
        if k > 0:
            w[:, dead[-1]] = 0.0
        if k < len(f.layers) - 1:
            dead.append(rng.choice(layer.width, 2, replace=False))
        layers.append(Layer(w, layer.bias + 0.05 * rng.normal(size=layer.width), layer.activation))
    return _f32(f.with_layers(layers)), dead


def test_live_tightening_skips_dead_ends_and_rechecks_above_the_milp_maximum():
    """Root tightening without the neurons that feed nothing (``phase_tighten="live"``) on pairs with a pruned
    twin's dead-end neurons, both pairings: the dead ends are the zero columns; the phase search's bound is never
    below the exact MILP maximum and spends fewer tightening LPs than tightening everything; the mode is recorded
    and the checker replays the trees to a bound between the MILP maximum and the claim; other modes are refused."""
    from lumpver.certificates.bounded_bab import _leaf_bounds, _tighten
    from lumpver.verifiers.bab_phase import PairNet, leaf_root, phase_search
    from lumpver.verifiers.bab_phase_lp import PairLp

    lo, hi = -np.ones(3), np.ones(3)
    checked = 0
    for seed in range(2):
        rng = np.random.default_rng(700 + seed)
        f = _f32(random_net(rng, [3, 5, 5, 2]))
        g, dead = _dead_end_twin(f, rng)
        exact, _ = _exact(f, g, lo, hi)
        for kind in ("delta", "product"):
            model = prepare_diff(f, g, kind)
            net = PairNet.of(model)
            root = leaf_root(net, model, lo, hi, DiffOptions().refine)
            lp = PairLp(net, lo, hi, root)
            want = np.zeros(sum(net.widths), bool)
            for k, d in enumerate(dead):
                want[sum(net.widths[:k]) + d] = True
            assert np.array_equal(lp.dead_end[1], want) and not lp.dead_end[0].any(), (seed, kind)
            spent = {}
            for mode in (True, "live"):
                spent[mode] = PairLp(net, lo, hi, root).tighten(leaf_root(net, model, lo, hi, DiffOptions().refine),
                                                                mode == "live")
                res = phase_search(net, leaf_root(net, model, lo, hi, DiffOptions().refine), lo, hi,
                                   lambda: 1.001 * exact, 1e18, 80, tighten=mode)
                assert res.upper >= exact - 1e-7 * (1 + exact), (seed, kind, mode, res.upper, exact)
            assert spent["live"] <= spent[True], (seed, kind, spent)
        opt = DiffOptions(batch=1, max_boxes=1, deterministic=True, phase_lps=60, refine=DiffOptions().refine,
                          phase_tighten="live")
        res, ev = difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 60.0, options=opt, model=model)
        rec = ev["regions"][0]
        if "phase" not in rec:
            continue
        assert json.loads(json.dumps(ev))["phase_tighten"] == "live"
        llo, lhi = leaves_of(Box(lo, hi), rec["tree"])
        got = _leaf_bounds(model, llo, lhi, "linf", ev["iters"], ev["lr"], opt.refine, float(ev["upper_bound"]),
                           rec["phase"], _tighten(ev["phase_tighten"]))
        assert exact - 1e-7 * (1 + exact) <= got <= float(ev["upper_bound"]), (seed, got, exact)
        checked += 1
    assert checked >= 1  # at least one search left a leaf to the phase stage
    for bad in ("all", 1, 0.0, None):
        with pytest.raises(ValueError):
            _tighten(bad)


def test_phase_stage_in_two_workers_is_sound_repeatable_and_replays_alike_in_two_processes():
    """The phase stage with ``workers=2`` (a fork pool): its bound is >= the MILP maximum, two runs write the
    same evidence (results are taken in submission order), and the checker's replay of its phase trees in one
    and in two processes recomputes the identical value, within the claim, counting its replays for the
    heartbeat."""
    import re

    from lumpver.certificates.bounded_bab import _leaf_bounds
    from lumpver.certificates.format import BOUND_REL
    from lumpver.progress import _LAST

    lo, hi = -np.ones(3), np.ones(3)
    f, g, _ = _aligned_pair(6)
    exact, _ = _exact(f, g, lo, hi)
    opt = DiffOptions(batch=1, max_boxes=1, deterministic=True, phase_lps=400, refine=DiffOptions().refine, workers=2)
    runs = [difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 60.0, options=opt) for _ in range(2)]
    (res, ev), (_, ev2) = runs
    assert json.dumps(ev) == json.dumps(ev2)
    rec = ev["regions"][0]
    assert len(rec.get("phase", [])) >= 2  # two leaves phase-searched: both workers had one
    claim = float(ev["upper_bound"])
    assert claim >= exact - 1e-7 * (1 + exact) and res[0].upper == claim
    model = prepare_diff(f, g)
    llo, lhi = leaves_of(Box(lo, hi), rec["tree"])
    got, steps = [], []
    for workers in (1, 2):
        got.append(_leaf_bounds(model, llo, lhi, "linf", ev["iters"], ev["lr"], opt.refine, claim, rec["phase"],
                                ev.get("phase_tighten", False), workers))
        steps.append(_LAST["msg"])  # the step a running heartbeat names: every replay counted
    assert got[0] == got[1]
    assert exact - 1e-7 * (1 + exact) <= got[0] <= claim * (1 + BOUND_REL)
    replayed = [re.search(r"replayed (\d+) of (\d+) phase trees", m) for m in steps]
    assert all(m is not None and m.group(1) == m.group(2) for m in replayed), steps


@pytest.mark.parametrize("command", [["check", "c.json"], ["reduce", "a.onnx", "-o", "b.onnx"]])
def test_workers_below_one_exit_2(command, capsys):
    """``check --workers 0`` and ``reduce --workers 0`` are refused by the argument parser (exit 2)."""
    from lumpver.cli import main

    assert main(command + ["--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_phase_stage_heartbeat_reports_its_leaves_and_lps():
    """The phase stage's heartbeat (every ``heartbeat`` seconds, here every leaf) counts the leaves searched
    and their LPs; on the last line the LPs used and left add up to the stage's budget, and the leaves
    searched are at least the phase trees the evidence records."""
    import io
    import re

    from lumpver.progress import Progress

    lo, hi = -np.ones(3), np.ones(3)
    f, g, _ = _aligned_pair(3)
    buf = io.StringIO()
    opt = DiffOptions(batch=1, max_boxes=1, deterministic=True, phase_lps=60, refine=DiffOptions().refine,
                      heartbeat=0.0, progress=Progress(stream=buf))
    _, ev = difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 60.0, options=opt)
    lines = [ln for ln in buf.getvalue().splitlines() if "phase stage" in ln]
    assert lines, buf.getvalue()
    searched, lps, left = map(int, re.search(r"(\d+) leaves searched \((\d+) LPs, (-?\d+) left", lines[-1]).groups())
    assert len(lines) == searched and lps > 0 and lps + left == 60  # the LPs used and left add up to the budget
    assert searched >= len(ev["regions"][0]["phase"])


def test_phase_stage_stops_once_a_witness_exceeds_the_target():
    """With a target (``close_at``) between what the box stage attains and the exact MILP maximum, the phase
    stage's LP points reveal a value above the target: the search stops there (reason "attained ... above the
    target", no proof, a sound bound) with open leaves still queued, where before it raised its threshold to
    the value attained and went on with every leaf."""
    import io
    import re

    from lumpver.progress import Progress

    lo, hi = -np.ones(3), np.ones(3)
    X = InputSet([Box(lo, hi)])

    def run(f, g, close_at, phase_lps):
        buf = io.StringIO()
        opt = DiffOptions(batch=1, max_boxes=12, deterministic=True, phase_lps=phase_lps, refine=DiffOptions().refine,
                          heartbeat=0.0, progress=Progress(stream=buf))
        res = difference_search(f, g, X, "linf", 60.0, close_at=close_at, options=opt)[0][0]
        return res, [int(q) for q in re.findall(r"LPs, -?\d+ left\), (\d+) queued", buf.getvalue())]

    checked = 0
    for seed in range(12):
        f, g, _ = _aligned_pair(seed)
        exact, _ = _exact(f, g, lo, hi)
        boxes_only = run(f, g, 0.0, 0)[0]
        target = (boxes_only.lower + exact) / 2
        if not boxes_only.lower < 0.95 * exact:
            continue  # the box stage alone finds (nearly) the maximum
        res, queued = run(f, g, target, 4000)
        if res.lower <= target:
            continue  # its LP points did not pass the target
        checked += 1
        assert not res.proved and res.stopped.startswith("attained"), res.stopped
        assert res.upper >= exact - 1e-7 * (1 + exact)
        assert queued and queued[-1] > 0, (seed, queued)  # leaves left unsearched
        if checked == 2:
            break
    assert checked == 2
