"""SDP back-end (verifiers/sdp*.py), ``lumpver bound`` and the ``bounded`` checker.

Independent references: the exact maximum difference by a big-M MILP (scipy HiGHS,
tests/milp_reference.py), dense grids for sigmoid/tanh, onnxruntime for float32 replay."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.network import Network
from lumpver.ir.planted import random_mlp
from tests.milp_reference import max_linf_difference
from lumpver.verifiers.sdp import BACKEND, SdpOptions, sdp_bound

ROOT = Path(__file__).resolve().parents[1]


def random_net(rng, n0, hidden, n_out, act="relu") -> Network:
    return random_mlp(rng, [n0, *hidden, n_out], act, fan_in_scaled=True, bias_scale=0.3)


def pruned(net: Network, frac: float) -> Network:
    g = net.copy()
    for L in g.layers:
        thr = np.quantile(np.abs(L.weight), frac)
        L.weight[np.abs(L.weight) <= thr] = 0.0
    return g


def quantised(net: Network, bits: int) -> Network:
    g = net.copy()
    for L in g.layers:
        s = np.max(np.abs(L.weight)) / (2 ** (bits - 1) - 1)
        L.weight = (np.clip(np.round(L.weight / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s).astype(np.float32).astype(np.float64)
    return g


CASES = [(1, [6], 1, "prune"), (2, [5, 4], 1, "quant"), (3, [8], 2, "prune"), (2, [4, 4], 2, "quant")]


@pytest.mark.parametrize("seed,case", list(enumerate(CASES)))
def test_relu_bound_never_below_milp_exact(seed, case):
    n0, hidden, n_out, kind = case
    rng = np.random.default_rng(100 + seed)
    f = random_net(rng, n0, hidden, n_out)
    g = pruned(f, 0.3) if kind == "prune" else quantised(f, 3)
    lo, hi = -np.ones(n0), np.ones(n0)
    exact, _ = max_linf_difference(f, g, lo, hi)
    res = sdp_bound(f, g, InputSet([Box(lo, hi)]), "linf", SdpOptions(), timeout=60)
    assert res.certified, res.reason
    assert res.upper_bound >= exact - 1e-9
    assert res.upper_bound <= 10 * exact + 1e-3  # and not vacuous on these tiny pairs


@pytest.mark.parametrize("seed,case", list(enumerate(CASES[:2])))
def test_each_sdp_value_never_below_milp(seed, case):
    """The SDP values alone (not hidden behind the cheap bound): unsplit, every target's LMI is
    solved; each re-checked value is >= the exact signed maximum of its target (MILP)."""
    from tests.milp_reference import max_difference

    n0, hidden, n_out, kind = case
    rng = np.random.default_rng(200 + seed)
    f = random_net(rng, n0, hidden, n_out)
    g = pruned(f, 0.3) if kind == "prune" else quantised(f, 3)
    X = InputSet([Box(-np.ones(n0), np.ones(n0))])
    res = sdp_bound(f, g, X, "linf", SdpOptions(split=False), timeout=60)
    assert res.certified, res.reason
    (leaf,) = res.evidence["regions"][0]["leaves"]
    for t in leaf["targets"]:
        value = t["certified"] if t["method"] == "sdp" else t["sdp_value"]
        assert value is not None, t.get("sdp_note")
        c = np.zeros(n_out)
        c[t["target"]["output"]] = t["target"]["sign"]
        exact, _ = max_difference(f, g, -np.ones(n0), np.ones(n0), c)
        assert value >= exact - 1e-9


def test_splitting_tightens_and_paths_cover():
    from lumpver.verifiers.sdp_split import paths_cover

    assert paths_cover(["L", "RL", "RR"]) and paths_cover([""])
    assert not paths_cover(["L", "RL"]) and not paths_cover(["L", "L", "R"]) and not paths_cover(["L", "LR", "R"])
    rng = np.random.default_rng(31)
    f = random_net(rng, 1, [10, 10], 1)
    g = pruned(f, 0.2)
    X = InputSet([Box([-1.0], [1.0])])
    exact, _ = max_linf_difference(f, g, np.array([-1.0]), np.array([1.0]))
    whole = sdp_bound(f, g, X, "linf", SdpOptions(split=False), timeout=60)
    split = sdp_bound(f, g, X, "linf", SdpOptions(max_leaves=16), timeout=60)
    assert whole.certified and split.certified
    assert exact - 1e-9 <= split.upper_bound <= whole.upper_bound
    paths = [lf["path"] for lf in split.evidence["regions"][0]["leaves"]]
    assert paths_cover(paths)


def _grid(n=161):
    a = np.linspace(-1, 1, n)
    return np.stack(np.meshgrid(a, a), -1).reshape(-1, 2)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_smooth_bound_never_below_grid_maximum(act):
    rng = np.random.default_rng(7 if act == "tanh" else 8)
    f = random_net(rng, 2, [5], 1, act)
    g = quantised(f, 3)
    X = InputSet([Box(-np.ones(2), np.ones(2))])
    xs = _grid()
    grid_max = float(np.max(np.abs(f.forward(xs) - g.forward(xs))))
    res = sdp_bound(f, g, X, "linf", SdpOptions(), timeout=60)
    assert res.certified, res.reason
    assert grid_max <= res.upper_bound <= 20 * grid_max + 1e-3


def test_l2_bound_and_union_of_regions():
    rng = np.random.default_rng(3)
    f = random_net(rng, 2, [5], 2)
    g = pruned(f, 0.3)
    X = InputSet([Box([-1, -1], [0, 1]), Box([0, -1], [1, 1])])
    xs = _grid()
    d = f.forward(xs) - g.forward(xs)
    res = sdp_bound(f, g, X, "l2", SdpOptions(), timeout=60)
    assert res.certified, res.reason
    assert res.upper_bound >= float(np.max(np.linalg.norm(d, axis=1)))
    assert len(res.evidence["regions"]) == 2


def test_float32_error_bound_covers_onnxruntime(tmp_path):
    from lumpver.bounds.engine import compute_bounds
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.runtime import run_onnx
    from lumpver.bounds.float_error import float32_error

    rng = np.random.default_rng(5)
    f = random_net(rng, 3, [16, 16], 2, "tanh")
    save_onnx(f, tmp_path / "f.onnx")
    box = Box(-np.ones(3), np.ones(3))
    err = float32_error(f, box, compute_bounds(f, box))
    xs = rng.uniform(-1, 1, size=(2000, 3)).astype(np.float32)
    seen = np.max(np.abs(run_onnx(tmp_path / "f.onnx", xs) - f.forward(xs.astype(np.float64))), axis=0)
    assert np.all(seen <= err)


def test_numerical_recheck_failure_gives_unknown(monkeypatch):
    import lumpver.verifiers.sdp_solve as solve_mod

    rng = np.random.default_rng(11)
    f = random_net(rng, 2, [5], 1)
    g = pruned(f, 0.3)
    real = solve_mod.solve_lmi

    def broken(*a, **k):  # a solver that claims a far smaller t than its multipliers support
        s = real(*a, **k)
        s.t = s.t - 0.5 * abs(s.t) - 0.1
        return s

    monkeypatch.setattr(solve_mod, "solve_lmi", broken)
    X = InputSet([Box(-np.ones(2), np.ones(2))])
    res = sdp_bound(f, g, X, "linf", SdpOptions(), timeout=60)
    exact, _ = max_linf_difference(f, g, -np.ones(2), np.ones(2))
    assert (not res.certified and "doubt" in res.reason) or res.upper_bound >= exact
    from lumpver.verifiers.base import Query

    v = BACKEND.check(Query(f, X, other=g, epsilon=1e9, timeout=30))
    assert v.verdict == "unknown" if not res.certified else v.verdict == "proved"


def test_backend_verdicts():
    from lumpver.verifiers.base import Query

    rng = np.random.default_rng(12)
    f = random_net(rng, 2, [6], 1)
    g = pruned(f, 0.3)
    lo, hi = -np.ones(2), np.ones(2)
    exact, _ = max_linf_difference(f, g, lo, hi)
    X = InputSet([Box(lo, hi)])
    v = BACKEND.check(Query(f, X, other=g, epsilon=5 * exact + 1e-3, timeout=60))
    assert v.verdict == "proved" and exact <= v.upper_bound <= 5 * exact + 1e-3
    assert v.details["matrix_size"] >= 3 and v.details["regions"][0]["leaves"]
    v = BACKEND.check(Query(f, X, other=g, epsilon=0.5 * exact, timeout=60))
    assert v.verdict == "violated"
    x = v.counterexample
    assert np.max(np.abs(f.forward(x) - g.forward(x))) > 0.5 * exact


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_bound_certificate_and_tampering(tmp_path):
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.runtime import run_onnx

    rng = np.random.default_rng(21)
    f = random_net(rng, 2, [6], 1)
    g = quantised(f, 3)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_onnx(f, a)
    save_onnx(g, b)
    spec = tmp_path / "x.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (>= X_0 -1.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 -0.5))\n(assert (<= X_1 1.0))\n"
                    "(assert (>= Y_0 100.0))\n")
    cert, out = tmp_path / "cert.json", tmp_path / "out.json"
    r = _cli("bound", a, b, "--input-set", spec, "--backend", "sdp", "--json", out, "--certificate", cert, "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "proved"
    res = json.loads(out.read_text())
    exact, _ = max_linf_difference(f, g, np.array([-1, -0.5]), np.array([1.0, 1.0]))
    assert res["upper_bound"] >= exact >= res["lower_bound"] - 1e-6
    x = np.array(res["counterexample"], dtype=np.float32)
    replay = float(np.max(np.abs(run_onnx(a, x) - run_onnx(b, x))))
    assert abs(replay - res["lower_bound"]) <= 1e-6
    assert _cli("check", cert).returncode == 0

    c = json.loads(cert.read_text())
    leaves = c["evidence"][0]["regions"][0]["leaves"]
    sdp = [t for lf in leaves for t in lf["targets"] if t["method"] == "sdp"]
    assert sdp, "the certificate holds no SDP multipliers to tamper with"
    sdp[0]["lam"] = [0.5 * v for v in sdp[0]["lam"]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(c))
    assert _cli("check", bad).returncode == 1

    if len(leaves) > 1:  # a leaf left out: the rest no longer covers X
        c = json.loads(cert.read_text())
        c["evidence"][0]["regions"][0]["leaves"] = c["evidence"][0]["regions"][0]["leaves"][1:]
        bad.write_text(json.dumps(c))
        assert _cli("check", bad).returncode == 1

    c = json.loads(cert.read_text())
    c["guarantee"]["epsilon"] = 0.5 * exact  # a claim below the true maximum
    c["evidence"][0]["upper_bound"] = 0.5 * exact
    bad.write_text(json.dumps(c))
    assert _cli("check", bad).returncode == 1


def test_cli_bound_bad_input(tmp_path):
    r = _cli("bound", tmp_path / "none.onnx", tmp_path / "none.onnx", "--input-set", tmp_path / "x.vnnlib")
    assert r.returncode == 2 and "none.onnx" in r.stderr and "Traceback" not in r.stderr
