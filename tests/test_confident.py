"""Confident pruning (Learn then Test, DESIGN.md §7): the guarantee, the command, the certificate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from lumpver.reductions import ltt
from lumpver.specs.calibration import CalibrationData, load_calibration
from lumpver.certificates.format import check_certificate
from lumpver.cli import main
from lumpver.reductions.confident import ConfidentConfig, confident_prune, loss_values
from lumpver.errors import InputError
from lumpver.fileio import sha256_file
from lumpver.ir.network import Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.planted import random_mlp
from lumpver.reductions.pruning import prune_weights
from lumpver.ir.runtime import run_onnx


def _teacher(seed: int = 0, widths=(10, 32, 32, 5)) -> Network:
    return random_mlp(np.random.default_rng(seed), widths, fan_in_scaled=True, bias_scale=0.1)


# ----- statistical validity on a synthetic task ----------------------------------------------------

LEVELS = tuple(np.round(np.arange(0.02, 0.96, 0.01), 2))
DRAWS, N_CAL, DELTA = 200, 500, 0.1


@pytest.fixture(scope="module")
def population():
    """A finite population (the data distribution, sampled with replacement) and its loss matrices."""
    net = _teacher(0)
    x = np.random.default_rng(1).normal(size=(10000, 10)).astype(np.float32)
    dense = net.forward(x, np.float32)
    outs = [prune_weights(net, v).forward(x, np.float32) for v in LEVELS]
    dev = np.array([np.abs(dense - o).max(1) for o in outs])
    threshold = float(np.median(dev[len(LEVELS) // 3]))
    mats = {
        "disagreement": np.stack([loss_values("disagreement", dense, o) for o in outs], 1),
        "deviation-clipped": np.stack([loss_values("deviation-clipped", dense, o, threshold=threshold) for o in outs], 1),
    }
    return net, x, mats, threshold


def _alpha_just_below_a_level(risks: np.ndarray, target: float = 0.1) -> float:
    """alpha slightly below the true risk of some level, so that a level barely violating alpha exists."""
    j = int(np.argmax(risks >= target))
    return float(risks[j] - 0.002)


def _violation_rate(losses: np.ndarray, alpha: float, choose) -> tuple[float, float]:
    """Over DRAWS fresh calibration draws: rate of chosen models with true risk > alpha, mean chosen level."""
    risks = losses.mean(0)
    rng = np.random.default_rng(11)
    bad, levels = 0, []
    for _ in range(DRAWS):
        sample = losses[rng.integers(0, losses.shape[0], size=N_CAL)]
        k = choose(sample)
        if k is not None:
            bad += risks[k] > alpha
            levels.append(LEVELS[k])
    return bad / DRAWS, float(np.mean(levels)) if levels else 0.0


def _slack() -> float:
    """If each draw violates with probability <= delta, the rate exceeds this only with probability < 1e-3."""
    return binom.ppf(1 - 1e-3, DRAWS, DELTA) / DRAWS


@pytest.mark.parametrize("loss,method", [("disagreement", "binomial"), ("disagreement", "hb"),
                                         ("deviation-clipped", "hb")])
def test_ltt_controls_the_risk_over_fresh_calibration_draws(population, loss, method):
    _, _, mats, _ = population
    losses = mats[loss]
    alpha = _alpha_just_below_a_level(losses.mean(0))
    rate, mean_level = _violation_rate(losses, alpha, lambda s: ltt.select(s, alpha, DELTA, method).chosen)
    assert rate <= _slack()
    assert mean_level > 0  # it does prune


def test_naive_empirical_risk_rule_violates_the_guarantee(population):
    """The same harness catches an invalid rule: largest level with empirical risk <= alpha."""
    _, _, mats, _ = population
    losses = mats["disagreement"]
    alpha = _alpha_just_below_a_level(losses.mean(0))

    def naive(s):
        ok = np.flatnonzero(s.mean(0) <= alpha)
        return int(ok.max()) if ok.size else None

    rate, _ = _violation_rate(losses, alpha, naive)
    assert rate > _slack()


def test_confident_prune_uses_the_same_losses_as_the_harness(population):
    """confident_prune (float32 evaluator) on a calibration subset equals select() on those rows."""
    net, x, mats, _ = population
    idx = np.random.default_rng(5).integers(0, x.shape[0], size=300)
    calib = CalibrationData(x[idx], None, "mem", "")
    cfg = ConfidentConfig(0.1, 0.1, LEVELS, "disagreement", evaluator="float32")
    res = confident_prune(net, None, calib, cfg)
    sel = ltt.select(mats["disagreement"][idx], 0.1, 0.1, "binomial")
    assert res.selection.pvalues == pytest.approx(sel.pvalues, rel=1e-12)
    assert res.selection.chosen == sel.chosen
    if sel.chosen is not None:
        assert np.array_equal(res.reduced.layers[0].weight, prune_weights(net, LEVELS[sel.chosen]).layers[0].weight)


# ----- the command and its certificate -------------------------------------------------------------


@pytest.fixture()
def files(tmp_path):
    net = _teacher(2)
    model = tmp_path / "dense.onnx"
    save_onnx(net, model)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 10)).astype(np.float32)
    y = np.argmax(run_onnx(model, x), 1)
    flip = rng.random(600) < 0.03
    y[flip] = (y[flip] + 1) % 5
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=x.reshape(600, 1, 10), y=y)  # model-shaped inputs are accepted
    return tmp_path, model, cal, x, y


def _prune(tmp_path, model, cal, *extra) -> tuple[int, Path, Path]:
    out, cert = tmp_path / "pruned.onnx", tmp_path / "cert.json"
    rc = main(["prune", str(model), "-o", str(out), "--method", "confident", "--calibration", str(cal),
               "--certificate", str(cert), "-q", *extra])
    return rc, out, cert


def test_cli_confident_certificate_rechecks_and_matches_onnxruntime(files):
    tmp, model, cal, x, _ = files
    rc, out, cert_path = _prune(tmp, model, cal, "--alpha", "0.1", "--delta", "0.1")
    assert rc == 0 and out.exists()
    cert = json.loads(cert_path.read_text())
    ev = cert["evidence"][0]
    assert cert["guarantee"]["kind"] == "statistical" and cert["guarantee"]["confidence"] == pytest.approx(0.9)
    assert ev["calibration"]["sha256"] == sha256_file(cal) and ev["n"] == 600
    # independent recomputation of the chosen level's statistics with onnxruntime
    k = ev["chosen_index"]
    count = int(np.sum(np.argmax(run_onnx(model, x), 1) != np.argmax(run_onnx(out, x), 1)))
    assert ev["risks"][k] == pytest.approx(count / 600)
    assert ev["pvalues"][k] == pytest.approx(binom.cdf(count, 600, 0.1), rel=1e-9)
    assert ev["pvalues"][k] < 0.1 and (k + 1 == len(ev["grid"]) or ev["pvalues"][k + 1] >= 0.1)
    rep = check_certificate(cert_path)
    assert rep.holds, rep.lines
    assert main(["check", str(cert_path), "-q"]) == 0


def _rewrite(cert_path: Path, fn) -> None:
    cert = json.loads(cert_path.read_text())
    fn(cert)
    cert_path.write_text(json.dumps(cert))


def test_check_fails_on_tampering(files):
    tmp, model, cal, x, y = files
    rc, out, cert_path = _prune(tmp, model, cal, "--alpha", "0.1", "--delta", "0.1")
    assert rc == 0
    original = cert_path.read_text()
    # 1. a p-value edited
    _rewrite(cert_path, lambda c: c["evidence"][0]["pvalues"].__setitem__(0, 0.5))
    assert not check_certificate(cert_path).holds
    assert main(["check", str(cert_path), "-q"]) == 1
    # 2. a larger level claimed, with the reduced file replaced by that level's pruning (hash updated)
    cert_path.write_text(original)
    k = json.loads(original)["evidence"][0]["chosen_index"]
    bigger = tmp / "bigger.onnx"
    grid = json.loads(original)["evidence"][0]["grid"]
    save_onnx(prune_weights(load_onnx(model), grid[k + 1]), bigger)

    def claim_bigger(c):
        c["evidence"][0]["chosen_index"] = k + 1
        c["reduced"] = {"path": "bigger.onnx", "sha256": sha256_file(bigger)}
    _rewrite(cert_path, claim_bigger)
    rep = check_certificate(cert_path)
    assert not rep.holds and any("does not reject" in line for line in rep.lines)
    # 3. the reduced file is not the pruning of the original (the dense model itself)
    cert_path.write_text(original)
    _rewrite(cert_path, lambda c: c.__setitem__("reduced", {"path": "dense.onnx", "sha256": sha256_file(model)}))
    assert not check_certificate(cert_path).holds
    # 4. the calibration data changed after the fact
    cert_path.write_text(original)
    np.savez(cal, x=x[::-1].copy(), y=y[::-1].copy())
    assert not check_certificate(cert_path).holds


def test_cli_zero_one_and_deviation_losses(files):
    tmp, model, cal, x, y = files
    rc, out, cert_path = _prune(tmp, model, cal, "--alpha", "0.15", "--delta", "0.1", "--loss", "zero-one")
    assert rc == 0
    ev = json.loads(cert_path.read_text())["evidence"][0]
    errs = np.argmax(run_onnx(out, x), 1) != y
    assert ev["risks"][ev["chosen_index"]] == pytest.approx(errs.mean()) and ev["pvalue"] == "binomial"
    assert check_certificate(cert_path).holds
    rc, out, cert_path = _prune(tmp, model, cal, "--alpha", "0.1", "--delta", "0.1", "--loss", "deviation-clipped",
                                "--threshold", "0.5")
    assert rc == 0
    ev = json.loads(cert_path.read_text())["evidence"][0]
    dev = np.abs(run_onnx(model, x) - run_onnx(out, x)).max(1)
    assert ev["pvalue"] == "hb"
    assert ev["risks"][ev["chosen_index"]] == pytest.approx(np.minimum(1, dev / 0.5).mean(), rel=1e-6)
    assert check_certificate(cert_path).holds


def test_cli_abstains_with_exit_1_and_no_file(files, capsys):
    tmp, model, cal, *_ = files
    rc, out, cert = _prune(tmp, model, cal, "--alpha", "0.001", "--delta", "0.05")
    assert rc == 1 and not out.exists() and not cert.exists()
    assert "abstained" in capsys.readouterr().err


@pytest.mark.parametrize("arrays,key", [
    ({"z": np.zeros((5, 10))}, "x"),
    ({"x": np.zeros((5, 9))}, "x"),
    ({"x": np.zeros((0, 10))}, "x"),
    ({"x": np.full((5, 10), np.nan)}, "x"),
    ({"x": np.r_[np.zeros((4, 10)), np.full((1, 10), np.inf)]}, "x"),
    ({"x": np.zeros((5, 10)), "y": np.array([0, 1, 2, 3, 5])}, "y"),
    ({"x": np.zeros((5, 10)), "y": np.array([0, 1, 2, 3, -1])}, "y"),
    ({"x": np.zeros((5, 10)), "y": np.array([0, 1, 2.5, 3, 4])}, "y"),
    ({"x": np.zeros((5, 10)), "y": np.array([0, 1, 2])}, "y"),
    ({"x": np.zeros((5, 10))}, "y"),  # the zero-one loss needs labels
])
def test_bad_calibration_data_is_exit_2_naming_file_and_key(files, capsys, arrays, key):
    tmp, model, *_ = files
    bad = tmp / "bad.npz"
    np.savez(bad, **arrays)
    rc, out, _ = _prune(tmp, model, bad, "--alpha", "0.1", "--delta", "0.1", "--loss", "zero-one")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert len(err) == 1 and "bad.npz" in err[0] and f":{key}:" in err[0]


def test_unreadable_calibration_file(files):
    tmp, model, *_ = files
    junk = tmp / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        load_calibration(junk, 10)
    assert _prune(tmp, model, junk, "--alpha", "0.1", "--delta", "0.1")[0] == 2


@pytest.mark.parametrize("extra", [["--alpha", "0", "--delta", "0.1"], ["--alpha", "0.1", "--delta", "1"],
                                   ["--alpha", "1.5", "--delta", "0.1"], ["--alpha", "0.1", "--delta", "-0.2"],
                                   ["--alpha", "0.1", "--delta", "0.1", "--grid", "0.5,0.3"],
                                   ["--alpha", "0.1", "--delta", "0.1", "--loss", "deviation"],
                                   ["--alpha", "0.1", "--delta", "0.1", "--loss", "deviation-clipped",
                                    "--threshold", "1", "--pvalue", "binomial"]])
def test_bad_options_are_exit_2(files, capsys, extra):
    tmp, model, cal, *_ = files
    rc, out, _ = _prune(tmp, model, cal, *extra)
    assert rc == 2 and not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist_fc"


def test_cli_confident_on_mnist_property_boxes(tmp_path):
    """Real network: calibration inputs drawn from the L-inf boxes of two mnist_fc properties."""
    from lumpver.specs.vnnlib import read_vnnlib

    rng = np.random.default_rng(0)
    xs = [rng.uniform(b.lower, b.upper, size=(100, b.dim))
          for p in ("prop_0_0.05.vnnlib", "prop_1_0.05.vnnlib")
          for b in read_vnnlib(MNIST / "vnnlib" / p).input_set().boxes()]
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=np.concatenate(xs).astype(np.float32))
    model = MNIST / "onnx" / "mnist-net_256x2.onnx"
    rc, out, cert_path = _prune(tmp_path, model, cal, "--alpha", "0.05", "--delta", "0.1", "--grid", "0.3:0.9:0.1")
    assert rc == 0
    ev = json.loads(cert_path.read_text())["evidence"][0]
    x = np.concatenate(xs).astype(np.float32)
    agree = np.argmax(run_onnx(model, x), 1) == np.argmax(run_onnx(out, x), 1)
    assert ev["risks"][ev["chosen_index"]] == pytest.approx(1 - agree.mean())
    assert ev["sparsity"] == pytest.approx(ev["chosen_level"], abs=1e-3)
    assert check_certificate(cert_path).holds
