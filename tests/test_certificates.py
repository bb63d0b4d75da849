"""Checkers confirm every claim of a certificate's guarantee block (issue 11, DESIGN.md §9).

Fresh certificates of every kind are made through the CLI; ``lumpver check`` must accept them,
and must refuse (exit 1, naming the field) every numeric guarantee field tightened tenfold,
any field it does not know, and accept a version-1 rewrite of a true certificate. One test
shows with exact rational arithmetic that a tightened claim is actually false.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lumpver.cli import main
from lumpver.ir.network import Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.planted import planted_network, random_mlp
from lumpver.ir.runtime import run_onnx

ACAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acasxu"
BOX_LO, BOX_HI = -np.ones(4), np.ones(4)


def _box_spec(path: Path, n_in: int, n_out: int, lo: np.ndarray, hi: np.ndarray) -> Path:
    path.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
                    + "".join(f"(declare-const Y_{i} Real)\n" for i in range(n_out))
                    + "".join(f"(assert (>= X_{i} {lo[i]}))\n(assert (<= X_{i} {hi[i]}))\n" for i in range(n_in)))
    return path


def _cli(*args) -> int:
    return main([str(a) for a in args] + ["-q"])


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """One fresh certificate per kind / evidence, made by the commands."""
    d = tmp_path_factory.mktemp("certs")
    out: dict[str, Path] = {}
    planted = d / "planted.onnx"
    save_onnx(planted_network(n_inputs=4, core_widths=(6, 5), n_outputs=3, seed=3).network, planted)
    assert _cli("reduce", planted, "-o", d / "exact.onnx", "--certificate", d / "exact.json") == 0
    out["exact"] = d / "exact.json"
    spec4 = _box_spec(d / "box4.vnnlib", 4, 3, BOX_LO, BOX_HI)
    assert _cli("reduce", planted, "-o", d / "chain.onnx", "--mode", "on-set", "--input-set", spec4,
                "--certificate", d / "chain.json") == 0
    out["on-set+lumping"] = d / "chain.json"
    acas = ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
    assert _cli("reduce", acas, "-o", d / "acas.onnx", "--mode", "on-set", "--input-set",
                ACAS / "vnnlib" / "prop_3.vnnlib", "--certificate", d / "acas.json") == 0
    out["on-set"] = d / "acas.json"
    dense = d / "dense.onnx"
    save_onnx(random_mlp(np.random.default_rng(7), [4, 16, 16, 3], fan_in_scaled=True, bias_scale=0.1), dense)
    assert _cli("prune", dense, "-o", d / "pruned.onnx", "--method", "magnitude", "--granularity", "neuron",
                "--keep", "0.75", "--input-set", spec4, "--certificate", d / "pruned.json") == 0
    out["bounded-pruned"] = d / "pruned.json"
    assert _cli("quantize", dense, "-o", d / "q.onnx", "--bits", "4", "--input-set", spec4,
                "--certificate", d / "q.json") == 0
    out["bounded-quantized"] = d / "q.json"
    small_a, small_b = d / "sa.onnx", d / "sb.onnx"
    f = random_mlp(np.random.default_rng(21), [2, 6, 1])
    save_onnx(f, small_a)
    save_onnx(f.with_layers([l.copy() for l in f.layers[:-1]] + [_scaled(f.layers[-1], 1.01)]), small_b)
    spec2 = _box_spec(d / "box2.vnnlib", 2, 1, -np.ones(2), np.ones(2))
    assert _cli("bound", small_a, small_b, "--input-set", spec2, "--backend", "sdp", "--certificate", d / "sdp.json") == 0
    out["bounded-sdp"] = d / "sdp.json"
    x = np.random.default_rng(3).normal(size=(400, 4)).astype(np.float32)
    np.savez(d / "cal.npz", x=x)
    assert _cli("prune", dense, "-o", d / "conf.onnx", "--method", "confident", "--calibration", d / "cal.npz",
                "--alpha", "0.2", "--delta", "0.1", "--loss", "deviation", "--threshold", "0.05",
                "--certificate", d / "conf.json") == 0
    out["statistical"] = d / "conf.json"
    return out


def _scaled(layer, factor: float):
    out = layer.copy()
    out.weight = np.asarray(layer.weight * factor, np.float32).astype(np.float64)
    return out


def _numeric_fields(block, prefix: str = "") -> list[str]:
    """Dotted paths of the numeric leaves of the guarantee block."""
    if isinstance(block, dict):
        return [p for k, v in block.items() for p in _numeric_fields(v, f"{prefix}.{k}" if prefix else k)]
    return [prefix] if isinstance(block, (int, float)) and not isinstance(block, bool) else []


def _tightened(value: float, path: str) -> float:
    """Ten times the claim: a bound ten times smaller, a confidence ten times closer to 1."""
    return 1 - (1 - value) / 10 if path.endswith("confidence") else value / 10


def _set(cert: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = cert["guarantee"]
    for key in parents:
        node = node[key]
    node[last] = value


def _check(cert: dict, where: Path, capsys) -> tuple[int, str]:
    where.write_text(json.dumps(cert))
    capsys.readouterr()
    rc = main(["check", str(where)])
    return rc, capsys.readouterr().out


EXPECTED_FIELDS = {
    "exact": {"float_tolerance.grouping_tolerance", "float_tolerance.discrepancy_bound.a",
              "float_tolerance.discrepancy_bound.b"},
    "on-set": {"epsilon", "float_tolerance.discrepancy_bound"},
    "on-set+lumping": {"epsilon", "float_tolerance.discrepancy_bound"},
    "bounded-pruned": {"epsilon", "float_tolerance.float32_rounding_bound"},
    "bounded-quantized": {"epsilon", "float_tolerance.float32_rounding_bound"},
    "bounded-sdp": {"epsilon"},
    "statistical": {"confidence", "risk_bound", "epsilon"},
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_FIELDS))
def test_fresh_certificate_holds_and_every_tightened_field_fails(certs, kind, tmp_path, capsys):
    cert = json.loads(certs[kind].read_text())
    assert cert["format"] == "lumpver-certificate/2"
    if kind == "on-set+lumping":
        assert [s["step"] for s in cert["evidence"]][:2] == ["on-set", "exact-lumping"]
    rc, text = _check(cert, certs[kind].parent / f"{kind}.copy.json", capsys)
    assert rc == 0, text
    fields = _numeric_fields(cert["guarantee"])
    assert set(fields) == EXPECTED_FIELDS[kind]
    for path in fields:
        bad = json.loads(certs[kind].read_text())
        value = bad["guarantee"]
        for key in path.split("."):
            value = value[key]
        assert value > 0, f"{kind} {path} is 0: tightening it tests nothing"
        _set(bad, path, _tightened(value, path))
        rc, text = _check(bad, certs[kind].parent / f"{kind}.bad.json", capsys)
        assert rc == 1 and f"guarantee.{path}:" in text, (path, text)


@pytest.mark.parametrize("kind", ["exact", "on-set", "bounded-quantized", "statistical", "bounded-sdp"])
def test_unknown_guarantee_field_fails(certs, kind, capsys):
    cert = json.loads(certs[kind].read_text())
    cert["guarantee"]["holds_for_all_inputs"] = True
    cert["guarantee"]["float_tolerance"] = {**(cert["guarantee"].get("float_tolerance") or {}), "extra_margin": 0}
    rc, text = _check(cert, certs[kind].parent / f"{kind}.unknown.json", capsys)
    assert rc == 1
    assert "guarantee.holds_for_all_inputs:" in text and "guarantee.float_tolerance.extra_margin:" in text


@pytest.mark.parametrize("kind", ["exact", "on-set+lumping", "bounded-pruned", "statistical"])
def test_version_1_certificate_still_holds(certs, kind, capsys):
    """Version 2 adds no field: a version-1 certificate is the same JSON with the old format string."""
    cert = json.loads(certs[kind].read_text())
    cert["format"] = "lumpver-certificate/1"
    rc, text = _check(cert, certs[kind].parent / f"{kind}.v1.json", capsys)
    assert rc == 0, text
    _set(cert, "epsilon" if kind != "exact" else "float_tolerance.discrepancy_bound.b", 0.0)
    rc, _ = _check(cert, certs[kind].parent / f"{kind}.v1bad.json", capsys)
    assert rc == 1


def _exact_forward(net: Network, x: np.ndarray) -> list[Fraction]:
    """The network in exact rational arithmetic of its stored weights (ReLU hidden layers)."""
    h = [Fraction(float(v)) for v in x]
    for k, layer in enumerate(net.layers):
        assert layer.activation in ("relu", "identity")
        w = [[Fraction(float(v)) for v in row] for row in layer.weight]
        z = [sum((a * b for a, b in zip(row, h)), Fraction(float(c))) for row, c in zip(w, layer.bias)]
        h = [max(v, Fraction(0)) for v in z] if layer.activation == "relu" else z
    return h


def test_tightened_bounded_claim_is_false_by_exact_arithmetic(certs):
    """The quantisation certificate's epsilon tightened tenfold is violated at a point of X, in exact
    rational arithmetic of the stored float32 weights (the checker's refusal is right)."""
    cert = json.loads(certs["bounded-quantized"].read_text())
    base = certs["bounded-quantized"].parent
    f, g = load_onnx(base / cert["original"]["path"]), load_onnx(base / cert["reduced"]["path"])
    assert not f.input_ops and not g.input_ops
    x = np.random.default_rng(0).uniform(BOX_LO, BOX_HI, size=(20000, 4)).astype(np.float32)
    gap = np.max(np.abs(run_onnx(base / cert["original"]["path"], x) - run_onnx(base / cert["reduced"]["path"], x)), 1)
    worst = x[int(np.argmax(gap))]
    exact = max(abs(a - b) for a, b in zip(_exact_forward(f, worst), _exact_forward(g, worst)))
    eps = Fraction(cert["guarantee"]["epsilon"])
    assert exact > eps / 10  # the tightened claim is false at `worst`
    assert exact <= eps  # and the certified one holds there
