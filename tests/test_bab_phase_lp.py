"""The persistent HiGHS model of the ReLU-phase search (verifiers/bab_phase_lp.py, bounds/highs_model.py)
against independent computations: every row and column bound of a node's stored model holds at the
(x, z, h) of real forward passes that have the node's phases (numpy), whatever nodes were loaded
before, and emptiness is claimed only where no sampled point has the node's phases. (The search on
this model against the exact MILP maximum, and tampered trees refused by the checker: tests/test_bab_diff.py.)"""
from __future__ import annotations

import numpy as np

from lumpver.bounds.diff_batched import Refine, prepare_diff
from lumpver.verifiers.bab_phase import PairNet, bound_rows, branch, children, leaf_root
from lumpver.verifiers.bab_phase_lp import PairLp
from tests.test_bab_diff import _aligned_pair


def _states(net: PairNet, x: np.ndarray):
    """Per network, pre- and post-activations of the hidden layers at the points ``x`` (flat, float64)."""
    out = []
    for Ws, bs in ((net.Wf, net.bf), (net.Wg, net.bg)):
        h, zs = x, []
        for W, b in zip(Ws[:-1], bs[:-1]):
            z = h @ W.T + b
            zs.append(z)
            h = np.maximum(z, 0.0)
        out.append(np.hstack(zs))
    return out


def _vectors(lp: PairLp, x: np.ndarray, zf: np.ndarray, zg: np.ndarray) -> np.ndarray:
    v = np.zeros((x.shape[0], lp.lp.lb.size))
    v[:, :x.shape[1]] = x
    for side, z in zip(lp.sides, (zf, zg)):
        pre, post = side["pre"], side["post"]
        v[:, pre[pre >= 0]] = z[:, pre >= 0]
        v[:, post[post >= 0]] = np.maximum(z[:, post >= 0], 0.0)
    return v


def _has_phases(z: np.ndarray, p: list[np.ndarray]) -> np.ndarray:
    ph = np.concatenate(p)[:z.shape[1]]  # the hidden layers (the output layer's entry is never split)
    return np.all((ph == 0) | ((ph > 0) & (z >= 0)) | ((ph < 0) & (z <= 0)), axis=1)


def _assert_contains(net: PairNet, node, zf: np.ndarray, zg: np.ndarray) -> None:
    d = len(net.widths)
    b = node.b
    for lo_, hi_, z in ((b.fl, b.fu, zf), (b.gl, b.gu, zg), (b.dl, b.du, zf - zg)):
        lo_, hi_ = np.concatenate(lo_[:d]), np.concatenate(hi_[:d])
        assert np.all(z >= lo_ - 1e-9) and np.all(z <= hi_ + 1e-9)


def test_model_rows_hold_at_real_points_of_every_node():
    """Down random paths of phase splits (the model reused across nodes, as the search does), the stored
    rows ``A_ub v <= b_ub`` and the column bounds hold at every sampled point with the node's phases, a
    node certified empty has no such point, and the LP-tightened root bounds contain every point."""
    lo, hi = -np.ones(3), np.ones(3)
    rng = np.random.default_rng(5)
    x = rng.uniform(lo, hi, (4000, 3))
    checked = 0
    for seed in range(6):
        f, g, _ = _aligned_pair(seed)
        model = prepare_diff(f, g)
        net = PairNet.of(model)
        zf, zg = _states(net, x)
        for refine, tight in ((Refine(), True), (Refine(iters=10, lr=0.25, max_unstable=64), False)):
            root = leaf_root(net, model, lo, hi, refine)
            lp = PairLp(net, lo, hi, root)
            if tight:  # LP-tightened layer bounds still contain every real point of the box
                lp.tighten(root)
                _assert_contains(net, root, zf, zg)
            v_all = _vectors(lp, x, zf, zg)
            node, v = root, bound_rows(lp, root, np.arange(root.rows.size))[0]
            for _ in range(5):
                S = lp.lp
                inside = _has_phases(zf, node.pf) & _has_phases(zg, node.pg)
                if np.max(node.rows) == -np.inf:  # -inf: certified empty (+inf would be "no bound")
                    assert not np.any(inside), seed  # certified empty
                    break
                V = v_all[inside]
                tol = 1e-9 * (1.0 + np.abs(S.b_ub))
                assert np.all(V @ S.A_ub.T.toarray() <= S.b_ub + tol), seed
                assert np.all(V >= S.lb - 1e-9) and np.all(V <= S.ub + 1e-9), seed
                checked += int(inside.sum())
                arg = branch(net, node, v, lo) if v is not None else None
                if arg is None:
                    break
                _, kids = children(node, *arg)
                node = kids[int(rng.integers(len(kids)))]
                v = bound_rows(lp, node, np.arange(node.rows.size))[0]
    assert checked > 10_000



def test_phase_stage_bisects_open_leaves_and_the_checker_rechecks_them():
    """With a small LP budget per leaf the phase stage bisects the leaves it leaves open; the evidence (box
    tree grown by those bisections, phase trees of the final leaves, the recorded tightening) re-checks to
    a bound between the exact MILP maximum and the claim; with a target the stage stops at the first leaf
    it cannot close (a claim above the target)."""
    from lumpver.bounds.diff_batched import leaves_of
    from lumpver.certificates.bounded_bab import _leaf_bounds
    from lumpver.specs.inputset import Box, InputSet
    from lumpver.verifiers.bab_diff import DiffOptions, difference_search
    from tests.milp_reference import max_linf_difference

    lo, hi = -np.ones(3), np.ones(3)
    f, g, _ = _aligned_pair(3)
    exact, _ = max_linf_difference(f, g, lo, hi)
    opt = DiffOptions(batch=1, max_boxes=1, deterministic=True, phase_lps=400, phase_leaf_lps=12,
                      refine=DiffOptions().refine)
    res, ev = difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 60.0, options=opt)
    rec = ev["regions"][0]
    llo, lhi = leaves_of(Box(lo, hi), rec["tree"])
    assert llo.shape[0] > 2 and rec.get("phase") and ev["phase_tighten"]  # bisected beyond the box cap
    claim = float(ev["upper_bound"])
    got = _leaf_bounds(prepare_diff(f, g), llo, lhi, "linf", ev["iters"], ev["lr"], opt.refine, claim, rec["phase"],
                       True)
    assert exact - 1e-7 * (1 + exact) <= got <= claim * (1 + 1e-6)  # the LPs' last bits: certify pads by 1e-6
    target = 0.5 * exact  # unreachable: one failed leaf (after its bisections) ends the stage
    res2, _ = difference_search(f, g, InputSet([Box(lo, hi)]), "linf", 60.0, options=opt, close_at=target)
    assert not res2[0].proved and res2[0].upper > target and len(res2[0].phase) <= 8
