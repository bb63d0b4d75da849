"""Bounds through graph networks (issue 12 item 4, DESIGN.md §3, §10): interval and CROWN bounds of
residual/concat/max-pool CNNs bracket onnxruntime on many samples, and on small nets the exact
optimum of a big-M MILP written here (scipy/HiGHS, its own interval arithmetic), never below it."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from lumpver.bounds.graph_engine import graph_objective_bounds, prepare_graph, propagate_graph
from lumpver.bounds.relaxations import maxpool_relaxation
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.planted import DAG_KINDS, random_dag_cnn
from lumpver.ir.pooling import MaxPool
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box


def _box(g: GraphNetwork, rng, width: float) -> Box:
    centre = rng.uniform(0, 1, g.n_inputs)
    return Box(centre - width, centre + width)


@pytest.mark.parametrize("kind", DAG_KINDS)
@pytest.mark.parametrize("method", ["interval", "crown"])
def test_bounds_bracket_onnxruntime(tmp_path, rng, kind, method):
    g = random_dag_cnn(kind, seed=11)
    path = tmp_path / "g.onnx"
    save_graph(g, path)
    pg = prepare_graph(g)
    for width in (0.01, 0.1, 0.5):
        box = _box(g, rng, width)
        gb = propagate_graph(pg, box, method)
        xs = np.vstack([box.sample(400, rng, corners=True)])
        ys = run_onnx(path, xs)
        assert np.all(ys >= gb.output_lower - 1e-5) and np.all(ys <= gb.output_upper + 1e-5)
        vals = g.values(xs)
        for nid in g.order:  # every node's bounds hold at every sample
            assert np.all(vals[nid] >= gb.lower[nid] - 1e-9) and np.all(vals[nid] <= gb.upper[nid] + 1e-9), nid
        lam = rng.normal(size=(3, g.n_outputs))
        lo, up = graph_objective_bounds(pg, gb, lam, box)
        obj = ys @ lam.T
        assert np.all(obj >= lo - 1e-5) and np.all(obj <= up + 1e-5)


def test_crown_is_tighter_than_interval_through_branches(rng):
    g = random_dag_cnn("residual", seed=2)
    pg = prepare_graph(g)
    box = _box(g, rng, 0.05)
    i, c = propagate_graph(pg, box, "interval"), propagate_graph(pg, box, "crown")
    assert np.all(c.output_upper - c.output_lower <= i.output_upper - i.output_lower + 1e-12)
    assert np.sum(c.output_upper - c.output_lower) < 0.9 * np.sum(i.output_upper - i.output_lower)


def test_maxpool_relaxation_is_sound_by_sampling(rng):
    pool = MaxPool((2, 5, 5), (3, 3), (2, 2), (1, 1, 1, 1))
    for _ in range(20):
        lo = rng.normal(size=pool.in_features)
        hi = lo + rng.exponential(size=pool.in_features) * rng.integers(0, 2, pool.in_features)
        r = maxpool_relaxation(pool.windows, lo, hi)
        x = rng.uniform(lo, hi, size=(300, pool.in_features))
        y = pool.forward(x)
        above = r.up_coef * x[:, r.lo_idx] + r.up_coef2 * x[:, r.up_idx2] + r.up_const
        assert np.all(y >= x[:, r.lo_idx]) and np.all(y <= above)
        corners = np.where(rng.integers(0, 2, size=(300, pool.in_features)) == 1, hi, lo)  # where chords touch
        yc = pool.forward(corners)
        line = r.up_coef * corners[:, r.lo_idx] + r.up_coef2 * corners[:, r.up_idx2] + r.up_const
        assert np.all(yc <= line + 1e-14 * (1 + np.abs(line)))  # equality where the chord touches
        assert np.all(y >= r.lower) and np.all(y <= r.upper)
        brute = np.array([[x[:, [i for i in w if i >= 0]].max(axis=1) for w in pool.windows]])
        assert np.array_equal(brute[0].T, y)


# ----- exact optimum by MILP (independent encoding) ---------------------------------------------
def _matrix(op) -> np.ndarray:
    return op.forward(np.eye(op.in_features)).T


def milp_max(g: GraphNetwork, c: np.ndarray, box: Box) -> float:
    """``max c . y`` over ``box`` by a big-M MILP: one variable per value of every node."""
    lo_v, hi_v, integ, rows = [], [], [], []
    var: dict[str, np.ndarray] = {}
    lo_b: dict[str, np.ndarray] = {}
    hi_b: dict[str, np.ndarray] = {}

    def new(lo, hi, integer=False) -> np.ndarray:
        start = len(lo_v)
        lo_v.extend(lo), hi_v.extend(hi), integ.extend([int(integer)] * len(lo))
        return np.arange(start, start + len(lo))

    def eq(coeffs: dict[int, float], rhs: float, sense: str = "=") -> None:
        rows.append((coeffs, rhs, sense))

    var["input"], lo_b["input"], hi_b["input"] = new(box.lower, box.upper), box.lower, box.upper
    for nid in g.order[1:]:
        n = g.node(nid)
        src = n.inputs[0]
        if n.kind in ("scale", "affine"):
            if n.kind == "scale":
                s, t = n.affine_of_scale()
                W, b = np.diag(s), t
            else:
                W, b = _matrix(n.op), n.bias
            l = np.maximum(W, 0) @ lo_b[src] + np.minimum(W, 0) @ hi_b[src] + b - 1e-6
            h = np.maximum(W, 0) @ hi_b[src] + np.minimum(W, 0) @ lo_b[src] + b + 1e-6
            v = new(l, h)
            for i in range(len(v)):
                eq({int(v[i]): -1.0, **{int(var[src][j]): W[i, j] for j in np.flatnonzero(W[i])}}, -b[i])
        elif n.kind == "add":
            a, bb = n.inputs
            l, h = lo_b[a] + lo_b[bb] - 1e-6, hi_b[a] + hi_b[bb] + 1e-6
            v = new(l, h)
            for i in range(len(v)):
                if a == bb:
                    eq({int(v[i]): -1.0, int(var[a][i]): 2.0}, 0.0)
                else:
                    eq({int(v[i]): -1.0, int(var[a][i]): 1.0, int(var[bb][i]): 1.0}, 0.0)
        elif n.kind == "concat":
            v = np.concatenate([var[i] for i in n.inputs])
            l, h = np.concatenate([lo_b[i] for i in n.inputs]), np.concatenate([hi_b[i] for i in n.inputs])
        elif n.kind == "act":
            assert n.activation == "relu"
            l, h = np.maximum(lo_b[src], 0), np.maximum(hi_b[src], 0)
            v = new(l, h)
            for i in range(len(v)):
                z, y = int(var[src][i]), int(v[i])
                if lo_b[src][i] >= 0:
                    eq({y: 1.0, z: -1.0}, 0.0)
                elif hi_b[src][i] <= 0:
                    eq({y: 1.0}, 0.0)
                else:
                    d = int(new([0.0], [1.0], True)[0])
                    eq({y: 1.0, z: -1.0}, 0.0, ">")
                    eq({y: 1.0, z: -1.0, d: -lo_b[src][i]}, -lo_b[src][i], "<")  # y <= z - l (1 - d)
                    eq({y: 1.0, d: -hi_b[src][i]}, 0.0, "<")  # y <= u d
        else:  # maxpool
            wins = [[i for i in w if i >= 0] for w in n.pool.windows]
            l = np.array([lo_b[src][w].max() for w in wins])
            h = np.array([hi_b[src][w].max() for w in wins])
            v = new(l, h)
            for j, w in enumerate(wins):
                ds = new([0.0] * len(w), [1.0] * len(w), True)
                eq({int(d): 1.0 for d in ds}, 1.0)
                for i, d in zip(w, ds):
                    x = int(var[src][i])
                    eq({int(v[j]): 1.0, x: -1.0}, 0.0, ">")
                    big = h[j] - lo_b[src][i]
                    eq({int(v[j]): 1.0, x: -1.0, int(d): big}, big, "<")  # y <= x + M (1 - d)
        var[nid], lo_b[nid], hi_b[nid] = v, l, h
    nv = len(lo_v)
    A = np.zeros((len(rows), nv))
    lo_r, hi_r = np.zeros(len(rows)), np.zeros(len(rows))
    for r, (coeffs, rhs, sense) in enumerate(rows):
        for k, a in coeffs.items():
            A[r, k] += a
        lo_r[r] = rhs if sense in ("=", ">") else -np.inf
        hi_r[r] = rhs if sense in ("=", "<") else np.inf
    cost = np.zeros(nv)
    cost[var[g.output]] = -c
    # bounds of derived values are implied by the rows; loosened so that HiGHS never sees a fixed one
    inner = (np.arange(nv) >= g.n_inputs) & (np.array(integ) == 0)
    lo_v, hi_v = np.array(lo_v) - 1e-5 * inner, np.array(hi_v) + 1e-5 * inner
    res = milp(cost, constraints=LinearConstraint(A, lo_r, hi_r), integrality=np.array(integ),
               bounds=Bounds(lo_v, hi_v), options={"time_limit": 60})
    assert res.status == 0, res.message
    return -float(res.fun)


@pytest.mark.parametrize("kind", DAG_KINDS)
def test_crown_never_below_the_milp_optimum(tmp_path, rng, kind):
    g = random_dag_cnn(kind, image=(1, 3, 3), channels=2, n_outputs=2, seed=7)
    path = tmp_path / "g.onnx"
    save_graph(g, path)
    pg = prepare_graph(g)
    box = _box(g, rng, 0.2)
    gb = propagate_graph(pg, box)
    for c in (np.array([1.0, 0.0]), np.array([-1.0, 1.0])):
        best = milp_max(g, c, box)
        sampled = (run_onnx(path, box.sample(2000, rng, corners=True)) @ c).max()
        assert sampled <= best + 1e-4  # the MILP is exact: no sample beats it
        _, up = graph_objective_bounds(pg, gb, c, box)
        assert up[0] >= best - 1e-6
        assert up[0] <= best + 10 * (1 + abs(best))  # and not vacuous


def test_a_passed_deadline_keeps_interval_bounds_sound(tmp_path, rng):
    g = random_dag_cnn("residual", seed=8)
    path = tmp_path / "g.onnx"
    save_graph(g, path)
    pg = prepare_graph(g)
    box = _box(g, rng, 0.1)
    cut, full = propagate_graph(pg, box, deadline=0.0), propagate_graph(pg, box)
    assert not cut.complete and full.complete
    ys = run_onnx(path, box.sample(500, rng))
    assert np.all(ys >= cut.output_lower - 1e-5) and np.all(ys <= cut.output_upper + 1e-5)
