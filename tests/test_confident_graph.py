"""Confident pruning of graph networks (residual Add, MaxPool; DESIGN.md §7, §10): the chosen level's
risk on a fresh held-out sample (onnxruntime on the original and the written file, not lumpver's
numbers), abstention, the independent re-check and tampering, bad calibration files, `lumpver run`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from scipy.stats import binom

from lumpver.certificates.format import check_certificate
from lumpver.certificates.statistical_graph import channel_zeroed
from lumpver.cli import main
from lumpver.fileio import sha256_file
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_graph
from lumpver.ir.planted_resnet import _Net, random_resnet
from lumpver.ir.pooling import MaxPool
from lumpver.ir.runtime import run_onnx
from tests.onnx_builders import inception_model

ALPHA, DELTA, GRID = 0.2, 0.1, "0.1,0.2,0.3,0.4,0.5,0.6,0.7"
N_CAL, N_HELD = 400, 3000


def _maxpool_cnn(seed: int = 4) -> GraphNetwork:
    """(1, 8, 8) -> conv 6 -> relu -> maxpool 2x2 -> conv 6 -> relu -> dense 12 -> relu -> dense 3."""
    net = _Net((1, 8, 8), np.random.default_rng(seed))
    h = net.relu(net.conv("input", 6))
    pool = MaxPool((6, 8, 8), (2, 2), (2, 2))
    h = net.b.add(GNode("maxpool", (h,), pool.out_shape, pool=pool))
    h = net.relu(net.dense(net.relu(net.conv(h, 6)), 12))
    return net.done(net.dense(h, 3), (1, 8, 8))


MODELS = {"resnet": lambda: random_resnet((2, 8, 8), channels=12, blocks=1, stem_stride=2, hidden=12, n_outputs=3,
                                          seed=1),
          "maxpool": _maxpool_cnn}


def _inputs(net: GraphNetwork, n: int, seed: int) -> np.ndarray:
    """Model-shaped (NCHW) samples of the calibration distribution: uniform on [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, *net.input_shape[1:])).astype(np.float32)


@pytest.fixture(params=sorted(MODELS))
def graph(request, tmp_path):
    net = MODELS[request.param]()
    model = tmp_path / f"{request.param}.onnx"
    save_graph(net, model)
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=_inputs(net, N_CAL, 1))
    return tmp_path, model, cal, net


def _prune(tmp: Path, model: Path, cal: Path, *extra: str) -> tuple[int, Path, Path]:
    out, cert = tmp / "pruned.onnx", tmp / "pruned.cert.json"
    rc = main(["prune", str(model), "-o", str(out), "--method", "confident", "--calibration", str(cal),
               "--certificate", str(cert), "--grid", GRID, "-q", *extra])
    return rc, out, cert


def _disagreements(a: Path, b: Path, x: np.ndarray) -> int:
    return int(np.sum(run_onnx(a, x).argmax(1) != run_onnx(b, x).argmax(1)))


def test_chosen_level_risk_holds_on_a_fresh_sample_and_rechecks(graph):
    tmp, model, cal, net = graph
    rc, out, cert_path = _prune(tmp, model, cal, "--alpha", str(ALPHA), "--delta", str(DELTA))
    assert rc == 0 and out.exists()
    ev = json.loads(cert_path.read_text())["evidence"][0]
    k = ev["chosen_index"]
    assert ev["graph"] and ev["pruning"]["granularity"] == "channel" and ev["grid"][k] >= 0.2
    # the calibration statistics, recomputed with onnxruntime and scipy
    count = _disagreements(model, out, np.load(cal)["x"])
    assert ev["risks"][k] == pytest.approx(count / N_CAL)
    assert binom.cdf(count, N_CAL, ALPHA) == pytest.approx(ev["pvalues"][k], rel=1e-9) and ev["pvalues"][k] < DELTA
    # held-out sample: with probability >= 1 - delta the chosen model's risk R is <= alpha, and then the count of
    # disagreements is stochastically at most Binom(m, alpha), whose upper tail at the count is below 1e-3 with
    # probability < 1e-3 (the stated slack); a false failure has probability < delta + 1e-3 (fixed seeds here)
    held = _disagreements(model, out, _inputs(net, N_HELD, 99))
    assert binom.sf(held - 1, N_HELD, ALPHA) >= 1e-3, (held, N_HELD)
    assert check_certificate(cert_path).holds
    assert main(["check", str(cert_path), "-q"]) == 0


def _inception(tmp_path: Path) -> GraphNetwork:
    """Concat of two conv branches, MaxPool, a dense residual Add (tests/onnx_builders.py)."""
    onnx.save(inception_model(np.random.default_rng(1)), str(tmp_path / "inception.onnx"))
    return load_graph(tmp_path / "inception.onnx")


@pytest.mark.parametrize("name,alpha", [("resnet", 0.3), ("inception", 0.25)])
def test_removed_channels_are_rebuilt_by_the_checker_and_tampering_fails(tmp_path, name, alpha):
    net = _inception(tmp_path) if name == "inception" else MODELS[name]()
    model, cal = tmp_path / "r.onnx", tmp_path / "cal.npz"
    save_graph(net, model)
    np.savez(cal, x=_inputs(net, N_CAL, 1).reshape(N_CAL, -1))  # flattened inputs are accepted too
    rc, out, cert_path = _prune(tmp_path, model, cal, "--alpha", str(alpha), "--delta", str(DELTA))
    assert rc == 0
    g = load_graph(out)
    assert sum(g.hidden_channels) < sum(net.hidden_channels)  # channels really went
    x = _inputs(net, 200, 5)
    zeroed = tmp_path / "zeroed.onnx"
    level = json.loads(cert_path.read_text())["evidence"][0]["chosen_level"]
    save_graph(channel_zeroed(net, level), zeroed)
    np.testing.assert_allclose(run_onnx(out, x), run_onnx(zeroed, x), rtol=1e-5, atol=1e-5)
    assert check_certificate(cert_path).holds
    original = cert_path.read_text()

    def tampered(fn) -> list[str]:
        cert = json.loads(original)
        fn(cert)
        cert_path.write_text(json.dumps(cert))
        rep = check_certificate(cert_path)
        assert not rep.holds
        return rep.lines

    ev = lambda c: c["evidence"][0]  # noqa: E731
    tampered(lambda c: ev(c)["pvalues"].__setitem__(0, 0.5))
    k = json.loads(original)["evidence"][0]["chosen_index"]
    # a live channel claimed dropped: the first conv's channel of largest filter norm (kept at every level)
    stem = next(i for i, n in enumerate(net.order) if net.node(n).kind == "affine")
    w = net.node(net.order[stem]).op.weight
    best = int(np.argmax(np.sum(w.reshape(w.shape[0], -1) ** 2, axis=1)))
    lines = tampered(lambda c: ev(c)["structures"][k]["removed"].__setitem__(stem, [best]))
    assert any("not dead" in line for line in lines), lines
    # the reduced file is the original (hash made consistent: the checker must rebuild to catch it)
    lines = tampered(lambda c: c.__setitem__("reduced", {"path": "r.onnx", "sha256": sha256_file(model)}))
    assert any("not the magnitude pruning" in line for line in lines)


def test_abstains_when_alpha_is_impossible(graph, capsys):
    tmp, model, cal, _ = graph
    rc, out, cert = _prune(tmp, model, cal, "--alpha", "0.001", "--delta", "0.05")
    assert rc == 1 and not out.exists() and not cert.exists()
    assert "abstained" in capsys.readouterr().err


def test_weight_family_with_the_float32_evaluator(tmp_path):
    net = MODELS["maxpool"]()
    model, cal = tmp_path / "m.onnx", tmp_path / "cal.npz"
    save_graph(net, model)
    x = _inputs(net, 300, 3)
    np.savez(cal, x=x)
    rc, out, cert_path = _prune(tmp_path, model, cal, "--alpha", "0.2", "--delta", "0.1", "--granularity", "weight",
                                "--evaluator", "float32")
    assert rc == 0
    ev = json.loads(cert_path.read_text())["evidence"][0]
    g = load_graph(out)
    hidden = [n for n in g.order if g.node(n).kind == "affine" and n != g.output]
    w = np.concatenate([g.node(n).op.weight.ravel() if hasattr(g.node(n).op, "weight") else np.zeros(0)
                        for n in hidden])
    assert np.mean(w == 0) == pytest.approx(ev["grid"][ev["chosen_index"]], abs=0.01)
    k = int(np.sum(net.forward(x, np.float32).argmax(1) != g.forward(x, np.float32).argmax(1)))
    assert ev["risks"][ev["chosen_index"]] == pytest.approx(k / 300)
    assert check_certificate(cert_path).holds


def test_calibration_of_the_wrong_shape_is_exit_2_naming_the_file(graph, capsys):
    tmp, model, _, net = graph
    bad = tmp / "wrong_shape.npz"
    np.savez(bad, x=np.zeros((10, 3, 7, 7), np.float32))
    rc, out, _ = _prune(tmp, model, bad, "--alpha", "0.2", "--delta", "0.1")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert len(err) == 1 and "wrong_shape.npz" in err[0] and ":x:" in err[0]


def test_run_spec_with_confident_pruning_of_a_graph(tmp_path):
    net = MODELS["resnet"]()
    save_graph(net, tmp_path / "r.onnx")
    np.savez(tmp_path / "cal.npz", x=_inputs(net, N_CAL, 1))
    (tmp_path / "r.toml").write_text('model = "r.onnx"\n\n[[reductions]]\nmethod = "prune"\nprune_method = "confident"\n'
                                     'calibration = "cal.npz"\nalpha = 0.3\ndelta = 0.1\n\n'
                                     '[output]\ndir = "out"\nreports = ["json"]\n')
    assert main(["run", str(tmp_path / "r.toml"), "-q"]) == 0
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    step = doc["steps"][0]
    assert step["recheck"]["holds"] and step["certificate"]["guarantee"]["kind"] == "statistical"
    assert step["stats"]["nonzero_params_after"] < step["stats"]["nonzero_params_before"]
