"""The batched ReLU-phase branch and bound on f - g (lumpver/bounds/diff_phase.py,
verifiers/bab_phase_batched.py) against the exact MILP maximum of tests/milp_reference.py, and its
replay by the bab_diff checker (lumpver/certificates/bounded_bab.py), tampered trees included."""
from __future__ import annotations

import numpy as np
import pytest

from lumpver.bounds.diff_batched import Refine, prepare_diff
from lumpver.bounds.diff_phase import replay
from lumpver.certificates.bounded_bab import recheck_bab
from lumpver.certificates.format import CheckReport
from lumpver.specs.inputset import Box, InputSet
from lumpver.verifiers.bab_phase_batched import PhaseOptions, phase_difference, phase_search
from tests.milp_reference import max_linf_difference
from tests.test_bab_diff import _f32
from tests.test_interval_backend import REDUCTIONS, random_net

OPT = PhaseOptions(batch=4, max_nodes=41, refine=Refine(5, 0.25, 60))


def _pair(seed: int):
    """A random 8-input aligned pair with two hidden layers (quantised or perturbed copy)."""
    rng = np.random.default_rng(7000 + seed)
    kind = ("quantised", "perturbed")[seed % 2]
    f = random_net(rng, [8, int(rng.integers(4, 7)), int(rng.integers(4, 7)), 1])
    return _f32(f), _f32(REDUCTIONS[kind](f, rng)), kind


def test_phase_search_never_below_the_milp_maximum_and_replays():
    """On 4 random pairs: the search's bound, its root bound and the checker's replay of its tree are
    never below the exact MILP maximum; the replay matches the search; splitting tightens on most."""
    lo, hi = -np.full(8, 0.3), np.full(8, 0.3)
    tighter = 0
    for seed in range(2, 6):
        f, g, kind = _pair(seed)
        exact, _ = max_linf_difference(f, g, lo, hi)
        model = prepare_diff(f, g)
        res = phase_search(model, lo, hi, "linf", lambda: 0.0, 1e18, OPT)
        root = replay(model, lo, hi, [-1], "linf", OPT.iters, OPT.lr, OPT.refine, OPT.child_refine)
        again = replay(model, lo, hi, res.tree, "linf", OPT.iters, OPT.lr, OPT.refine, OPT.child_refine)
        slack = 1e-7 * (1 + exact)
        assert min(res.upper, root, again) >= exact - slack, (seed, kind, res.upper, root, again, exact)
        assert again == pytest.approx(res.upper, rel=1e-6, abs=1e-9), (seed, res.upper, again)
        tighter += res.upper < root * (1 - 1e-3)
    assert tighter >= 3


def test_checker_replays_phase_trees_and_refuses_tampered_ones():
    """bab_diff evidence with a phase_batched tree re-checks to the claim; a tree cut to its root,
    a truncated tree, a split of a pair beyond the hidden layers, and a claim below the replay fail."""
    f, g, _ = _pair(3)
    X = InputSet([Box(-np.full(8, 0.3), np.full(8, 0.3))])
    run = phase_difference(f, g, X, "linf", 0.0, 60.0, OPT)
    upper, ev = run.upper, run.evidence
    exact, _ = max_linf_difference(f, g, X.regions[0].lower, X.regions[0].upper)
    assert upper >= exact - 1e-7 and ev["attained"] <= exact + 1e-7
    tree = ev["regions"][0]["phase_batched"]
    assert len(tree) > 1

    def recheck(tr: list[int]):
        e = {**ev, "regions": [{**ev["regions"][0], "phase_batched": tr}]}
        return recheck_bab(f, g, X, "linf", e, CheckReport(True))

    got = recheck(tree)
    assert got is not None and got <= upper * (1 + 1e-6) + 1e-12
    root = recheck([-1])
    assert root is not None and root > upper * (1 + 1e-3)  # the tree carries the claim: the root alone does not
    for bad in (tree[:-1], [10_000] + tree[1:], tree + [-1]):
        report = CheckReport(True)
        assert recheck_bab(f, g, X, "linf", {**ev, "regions": [{**ev["regions"][0], "phase_batched": bad}]},
                           report) is None and not report.holds


def test_certify_on_wide_inputs_writes_phase_trees_that_recheck(tmp_path, monkeypatch):
    """certify() of a quantised copy on 10 inputs (> BAB_FIRST_DIMS): the phase search's evidence
    (bab_diff with a phase_batched tree) re-checks from the files, covers the MILP maximum, and a
    claim below the checker's replay fails."""
    import json

    import lumpver.reductions.certify as C
    from lumpver.certificates.format import check_certificate
    from tests.test_bab_diff import _files

    monkeypatch.setattr(C, "PHASE_NODES", 21)
    monkeypatch.setattr(C, "PHASE_LPS", 0)  # the batched tree alone (the LP search: tests/test_certify_lp_phase.py)
    rng = np.random.default_rng(11)
    f = _f32(random_net(rng, [10, 5, 5, 1]))
    g = _f32(REDUCTIONS["quantised"](f, rng))
    box = Box(-np.full(10, 0.3), np.full(10, 0.3))
    a, b, _ = _files(tmp_path, f, g, box)
    X = InputSet([box])
    res = C.certify(f, g, X, "linf", timeout=20, max_boxes=1)
    exact, _ = max_linf_difference(f, g, box.lower, box.upper)
    assert res.backend == "bab_diff" and "phase_batched" in res.evidence["regions"][0]
    assert res.epsilon >= exact - 1e-7
    cert = tmp_path / "c.json"
    C.write_bounded(a, b, cert, f, g, X, res, {"method": "test"}, 1.0)
    assert check_certificate(cert).holds
    c = json.loads(cert.read_text())
    c["guarantee"]["epsilon"] = 0.5 * (res.epsilon + exact) if res.epsilon > exact * 1.01 else 0.9 * exact
    cert.write_text(json.dumps(c))
    assert not check_certificate(cert).holds
