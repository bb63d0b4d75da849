"""Joint minimax refits and gradual pruning (lumpver.reductions.approx_joint, approx_shrink; DESIGN.md §4):
the L^p objective's hand-written gradient against central finite differences, and the candidates'
forward pass against onnxruntime on the written ONNX, their error against a dense grid of the box."""
from __future__ import annotations

import numpy as np

from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.approx import kept_after, refit_pruned, removal_order
from lumpver.reductions.approx_fit import loss_grad, pack
from lumpver.reductions.approx_minimax import ExchangeOptions
from lumpver.reductions.approx_joint import JointOptions, joint_candidate, lp_mean_loss
from lumpver.reductions.approx_shrink import ShrinkOptions, shrink
from lumpver.reductions.certify import sample_points
from lumpver.specs.inputset import Box, InputSet


def _random_net(seed: int, widths=(3, 12, 12, 2)) -> Network:
    rng = np.random.default_rng(seed)
    layers = [Layer(np.float32(rng.standard_normal((o, i)) / np.sqrt(i)), np.float32(0.3 * rng.standard_normal(o)),
                    "relu" if k < len(widths) - 2 else "identity")
              for k, (i, o) in enumerate(zip(widths[:-1], widths[1:]))]
    return Network(layers)


_T = np.linspace(-1.0, 1.0, 21)
GRID = np.stack(np.meshgrid(_T, _T, _T, indexing="ij"), axis=-1).reshape(-1, 3)  # 21^3 points of [-1, 1]^3


def _grid_max(f: Network, g_path) -> float:
    """max over :data:`GRID` of ||f - g||_inf, g run by onnxruntime from its file."""
    return float(np.max(np.abs(f.forward(GRID) - run_onnx(g_path, GRID.astype(np.float32)))))


def test_lp_objective_gradient_matches_finite_differences():
    net = _random_net(3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (40, 3))
    y = rng.standard_normal((40, 2))
    shapes = [(layer.width, layer.fan_in) for layer in net.layers]
    acts = [(layer.activation, layer.alpha) for layer in net.layers]
    theta = pack([(layer.weight.astype(np.float64), layer.bias.astype(np.float64)) for layer in net.layers])
    for p in (2, 16, 64):
        loss = lp_mean_loss(p)
        value, grad = loss_grad(theta, shapes, acts, x, y, loss)
        direct = np.mean(np.abs(net.forward(x) - y) ** p) ** (1.0 / p)  # independent: plain forward pass
        assert abs(value - direct) <= 1e-9 * direct
        for i in rng.choice(theta.size, 25, replace=False):
            e = np.zeros_like(theta)
            e[i] = 1e-6
            up, down = (loss_grad(theta + s * e, shapes, acts, x, y, loss)[0] for s in (1.0, -1.0))
            fd = (up - down) / 2e-6
            assert abs(fd - grad[i]) <= 1e-5 * max(1.0, abs(fd)), (p, i, fd, grad[i])


def test_joint_and_shrink_candidates_run_as_written_and_beat_least_squares(tmp_path):
    box = Box(-np.ones(3), np.ones(3))
    X = InputSet([box])
    net = _random_net(2, (3, 16, 16, 2))
    pts = sample_points(X, 400, seed=1)
    acts = net.activations(pts)
    kept = kept_after(net, removal_order(net, acts), 20)
    g_ls, _ = refit_pruned(net, acts, kept)
    opts = JointOptions(rounds=1, max_iter=40, starts=24, steps=15)
    joint = joint_candidate(net, pts, kept, box, opts, ExchangeOptions(rounds=2, starts=24, steps=15))
    averaged = joint_candidate(net, pts, kept, box, JointOptions(rounds=2, max_iter=40, starts=24, steps=15,
                                                                   average=2),
                               ExchangeOptions(rounds=2, starts=24, steps=15))
    ids, shrunk = shrink(net, pts, box, 12, removal_order, ShrinkOptions(steps=3, max_iter=20, final=opts))
    assert [len(k) for k in ids] == shrunk.network.hidden_widths and shrunk.network.n_hidden == 12
    errors = {}
    for name, g in (("ls", g_ls), ("joint", joint.network), ("shrink", shrunk.network), ("avg", averaged.network)):
        path = tmp_path / f"{name}.onnx"
        save_onnx(g, path)
        ours = g.forward(GRID)
        ort = run_onnx(path, GRID.astype(np.float32))
        assert np.max(np.abs(ours - ort)) <= 1e-5 * (1.0 + np.max(np.abs(ort)))  # float32 replay of the same net
        errors[name] = _grid_max(net, path)
    assert errors["joint"] < errors["ls"] and errors["shrink"] < errors["ls"] and errors["avg"] < errors["ls"], errors
    assert averaged.attained <= errors["avg"] + 1e-6  # attained: a point's value (<= the true max ~ grid max)


def test_averaged_round_is_the_layerwise_weight_mean_when_it_attains_less():
    """joint refit's averaging (approx_joint._averaged): the returned network is the float32 mean of the
    recent fits' weights exactly when its largest |h - g| (independently: a dense grid, float64) is the lower."""
    from lumpver.reductions.approx_joint import _averaged

    h = _random_net(5)
    rng = np.random.default_rng(0)
    fits = [h.with_layers([Layer(np.float32(l.weight + 0.05 * rng.standard_normal(l.weight.shape)),
                                 np.float32(l.bias + 0.05 * rng.standard_normal(l.bias.shape)), l.activation)
                           for l in h.layers]) for _ in range(3)]
    lo, hi = -np.ones(3), np.ones(3)
    opts = JointOptions(starts=64, steps=30)
    worst = float(np.max(np.abs(h.forward(GRID) - fits[-1].forward(GRID))))
    net, add, attained = _averaged(h, fits[-1], fits, GRID[:50], lo, hi, rng, opts, np.zeros((1, 3)), worst)
    mean_w = [np.float32(np.mean([f.layers[k].weight for f in fits], axis=0)) for k in range(3)]
    grid_avg = float(np.max(np.abs(h.forward(GRID) - h.with_layers(
        [Layer(w, np.float32(np.mean([f.layers[k].bias for f in fits], axis=0)), h.layers[k].activation)
         for k, w in enumerate(mean_w)]).forward(GRID))))
    assert grid_avg < worst  # independent errors cancel in the mean (the premise of averaging)
    assert all(np.array_equal(a.weight, w) for a, w in zip(net.layers, mean_w))
    on_fit = float(np.max(np.abs(h.forward(GRID[:50]) - net.forward(GRID[:50]))))
    assert on_fit - 1e-6 <= attained < worst and len(add) > 1  # attained: the max over the fit set and the ascent


def test_phase_certification_takes_half_the_time_left(monkeypatch):
    """With the phase stage on, one certification gets half the time left (at least PHASE_CERT_MIN s), so a
    candidate the stage cannot close leaves time for other sizes, and the goal size GOAL_CERT_SHARE of it;
    without it, 120 s as before."""
    import time

    from lumpver.reductions import approx
    from lumpver.reductions.certify import NO_PHASE, PhaseBudget

    seen = []

    def fake_certify(*args, timeout, **kw):
        seen.append(timeout)
        return type("R", (), {"epsilon": 1.0})()

    monkeypatch.setattr(approx, "certify", fake_certify)
    on = PhaseBudget(lps=400_000)
    for left, phase, share in ((4000.0, on, 0.5), (1200.0, on, 0.5), (500.0, on, 0.5), (4000.0, NO_PHASE, 0.5),
                               (4000.0, on, approx.GOAL_CERT_SHARE)):
        approx._certify_first(None, None, None, "linf", ["chain"], None, 0.0, time.perf_counter() + left, 600, 0.01,
                              phase, share)
    expected = [2000.0, approx.PHASE_CERT_MIN, 500.0, 120.0, 4000.0 * approx.GOAL_CERT_SHARE]
    assert all(abs(t - e) < 5.0 for t, e in zip(seen, expected)), seen


def test_reduce_approx_with_gradual_candidates_is_certified_above_the_grid_maximum():
    """The opt-in gradual search (candidates by approx_shrink.shrink) keeps only certified reductions:
    the certified bound (real arithmetic of the stored weights) covers the grid maximum of |f - g| (float64
    forward passes of both)."""
    from lumpver.reductions.approx import reduce_approx

    net = _random_net(2)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    quick = JointOptions(rounds=1, max_iter=20, starts=16, steps=10)
    res = reduce_approx(net, X, 0.2, timeout=6.0, gradual=ShrinkOptions(steps=3, max_iter=10, final=quick))
    assert res.certified.epsilon <= 0.2 and res.reduced.n_hidden < net.n_hidden
    assert res.certified.epsilon >= float(np.max(np.abs(net.forward(GRID) - res.reduced.forward(GRID))))
    assert res.method == "gradual-prune+joint-minimax"
