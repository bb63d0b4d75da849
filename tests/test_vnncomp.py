"""VNN-COMP scripts: prepare/run on the shared test networks; counterexamples replayed independently."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.runtime import run_onnx

ROOT = Path(__file__).resolve().parents[1]
VNNCOMP = ROOT / "vnncomp"
TEST = ROOT.parent / "shared" / "data" / "test"
PROP = TEST / "test_prop.vnnlib"

spec = importlib.util.spec_from_file_location("lumpver_vnncomp", VNNCOMP / "lumpver_vnncomp.py")
glue = importlib.util.module_from_spec(spec)
spec.loader.exec_module(glue)


def _sh(script: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    # the scripts call `python3`: the interpreter running the tests (this checkout's install) comes first
    env = {**os.environ, "TMPDIR": str(tmp), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(VNNCOMP / script), *args], capture_output=True, text=True, env=env, timeout=300)


def _property_text_bounds(path: Path) -> tuple[dict[int, float], dict[int, float], list[tuple[int, int]]]:
    """Independent reading of test_prop.vnnlib: X bounds and the Y_a <= Y_b atoms (all conjoined)."""
    text = path.read_text()
    lo = {int(i): float(v) for i, v in re.findall(r"\(>=\s+X_(\d+)\s+([^\s)]+)\)", text)}
    hi = {int(i): float(v) for i, v in re.findall(r"\(<=\s+X_(\d+)\s+([^\s)]+)\)", text)}
    ys = [(int(a), int(b)) for a, b in re.findall(r"\(<=\s+Y_(\d+)\s+Y_(\d+)\)", text)]
    return lo, hi, ys


def _parse_cex(text: str) -> tuple[np.ndarray, np.ndarray]:
    xs = {int(i): float(v) for i, v in re.findall(r"\(X_(\d+)\s+([-+0-9.eE]+)\)", text)}
    ys = {int(i): float(v) for i, v in re.findall(r"\(Y_(\d+)\s+([-+0-9.eE]+)\)", text)}
    return np.array([xs[i] for i in range(len(xs))]), np.array([ys[i] for i in range(len(ys))])


def _run_instance(tmp_path: Path, name: str) -> tuple[str, str]:
    """(result file text, run_instance stderr) after prepare_instance, which must do no work."""
    onnx = TEST / f"{name}.onnx"
    r = _sh("prepare_instance.sh", "v1", "test", str(onnx), str(PROP), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing computed, nothing cached outside the timed run
    results = tmp_path / f"{name}.result"
    r = _sh("run_instance.sh", "v1", "test", str(onnx), str(PROP), str(results), "60", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    return results.read_text(), r.stderr


def test_sat_with_valid_counterexample(tmp_path):
    text, err = _run_instance(tmp_path, "test_sat")
    assert text.splitlines()[0] == "sat"
    x, y = _parse_cex(text)
    lo, hi, atoms = _property_text_bounds(PROP)
    assert len(x) == 5 and len(y) == 5
    assert all(lo[i] <= x[i] <= hi[i] for i in range(5))
    y_replay = run_onnx(TEST / "test_sat.onnx", x.astype(np.float32).reshape(1, -1)).reshape(-1)
    np.testing.assert_allclose(y, y_replay, rtol=1e-6, atol=1e-7)
    assert all(y_replay[a] <= y_replay[b] for a, b in atoms)  # the unsafe set (all atoms conjoined)
    m = re.search(r"on-set reduction (\d+) -> (\d+) hidden neurons", err)  # done inside the timed run
    assert m and int(m.group(2)) < int(m.group(1)) == load_onnx(TEST / "test_sat.onnx").n_hidden, err


def test_unsat(tmp_path):
    text, _ = _run_instance(tmp_path, "test_unsat")
    assert text.strip() == "unsat"
    # consistency with an independent look: no sampled point of the box reaches the unsafe set
    lo, hi, atoms = _property_text_bounds(PROP)
    rng = np.random.default_rng(0)
    x = rng.uniform([lo[i] for i in range(5)], [hi[i] for i in range(5)], size=(3000, 5))
    y = run_onnx(TEST / "test_unsat.onnx", x)
    assert not np.any(np.all(np.stack([y[:, a] <= y[:, b] for a, b in atoms]), axis=0))


def test_widened_set_contains_neighbours():
    """If y is unsafe for f and |y' - y|_inf <= d, then y' is in the widened set the reduced network is checked on."""
    from lumpver.specs.inputset import OutputProperty

    rng = np.random.default_rng(3)
    for _ in range(200):
        A, y = rng.normal(size=(3, 4)), rng.normal(size=4)
        b = A @ y + rng.uniform(0, 0.01, size=3)  # y is unsafe (barely)
        prop, d = OutputProperty([(A, b)]), float(rng.uniform(0, 0.5))
        assert prop.is_unsafe(y)
        y2 = y + d * rng.choice([-1.0, 1.0], size=4)  # a worst-case neighbour at distance d
        assert glue.widen(prop, d).is_unsafe(y2, tol=1e-12)
        assert not OutputProperty([(A, b - 0.02)]).is_unsafe(y)  # the test's notion of 'unsafe' can fail


def test_large_discrepancy_blocks_the_reduced_proof(tmp_path):
    """With a (fake) huge certified discrepancy, the reduced-network path must not answer unsat."""
    import time

    onnx = str(TEST / "test_unsat.onnx")
    meta = glue.reduce_in_run(onnx, str(PROP), tmp_path)
    meta["discrepancy"] = 10.0
    word, _ = glue.cached_verdict(onnx, str(PROP), tmp_path, meta, time.monotonic() + 20)
    assert word != "unsat"


def test_prepare_refuses_an_unsupported_network(tmp_path):
    """Issue 15: prepare_instance.sh always exited 0; a network lumpver cannot load must skip the slot."""
    import onnx as onnx_lib

    from tests import onnx_builders as ob

    src = tmp_path / "sm.onnx"
    onnx_lib.save(ob.softmax_model(np.random.default_rng(0)), str(src))
    prop = tmp_path / "p.vnnlib"
    n_in, n_out = 3, 2
    prop.write_text("".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n"
                            for i in range(n_in)) + "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
                    + "(assert (>= Y_0 Y_1))\n")
    r = _sh("prepare_instance.sh", "v1", "test", str(src), str(prop), tmp=tmp_path)
    assert r.returncode != 0 and "Softmax" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _sh("prepare_instance.sh", "v1", "test", str(TEST / "test_sat.onnx"), str(tmp_path / "missing.vnnlib"),
            tmp=tmp_path)
    assert r.returncode != 0 and "missing.vnnlib" in r.stderr


def test_bad_timeout_writes_error(tmp_path):
    results = tmp_path / "r.txt"
    r = _sh("run_instance.sh", "v1", "test", str(TEST / "test_sat.onnx"), str(PROP), str(results), "soon", tmp=tmp_path)
    assert r.returncode == 0 and results.read_text().strip() == "error"


def test_fallback_uses_lumpver_verify(tmp_path):
    results = tmp_path / "r.txt"
    word = glue.verify_fallback(str(TEST / "test_sat.onnx"), str(PROP), str(results), 60)
    text = results.read_text()
    assert word == "sat" and text.splitlines()[0] == "sat"
    x, y = _parse_cex(text)
    np.testing.assert_allclose(y, run_onnx(TEST / "test_sat.onnx", x.astype(np.float32).reshape(1, -1)).reshape(-1),
                               rtol=1e-6, atol=1e-7)
