"""Exact lumping on planted redundancy, checked against onnxruntime and brute force (DESIGN.md §2)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from lumpver.certificates.format import check_certificate
from lumpver.cli import main
from lumpver.reductions.grouping import group_rows, pairwise_group_rows
from lumpver.reductions.exact import exact_lump
from lumpver.certificates.exact import discrepancy_bound
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.planted import planted_network
from lumpver.ir.runtime import run_onnx

ACTIVATIONS = ["relu", "leaky_relu", "identity", "tanh", "sigmoid"]


def _float32_noise(ref: np.ndarray) -> float:
    return 1e-4 * (1 + np.abs(ref).max())


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_reduces_to_core_and_matches_onnxruntime(tmp_path, activation, seed):
    p = planted_network(n_inputs=7, core_widths=(9, 6, 5), activation=activation, seed=seed, n_constant=2, n_dead=2)
    src, out = tmp_path / "p.onnx", tmp_path / "r.onnx"
    save_onnx(p.network, src)
    assert main(["reduce", str(src), "-o", str(out), "-q"]) == 0
    reduced = load_onnx(out)
    assert reduced.hidden_widths == p.core_widths
    assert p.network.n_hidden > 2 * reduced.n_hidden
    x = np.random.default_rng(seed).normal(scale=2.0, size=(500, 7))
    ref, got = run_onnx(src, x), run_onnx(out, x)
    assert np.abs(ref - got).max() <= _float32_noise(ref)
    assert check_certificate(tmp_path / "r.cert.json").holds


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_discrepancy_bound_is_sound_far_from_origin(activation):
    p = planted_network(n_inputs=5, core_widths=(6, 4), activation=activation, seed=3)
    r = exact_lump(p.network)
    a, b = discrepancy_bound(p.network, r.reduced, r.classes, r.tolerance)
    x = np.random.default_rng(0).normal(scale=50.0, size=(2000, 5))
    diff = np.abs(p.network.forward(x) - r.reduced.forward(x)).max(axis=1)  # float64: far below the bound's scale
    assert np.all(diff <= a + b * np.abs(x).max(axis=1))
    assert a + b * 50 < 1e-2  # and it is not vacuous


def test_a_coarse_tolerance_is_caught_by_the_bound():
    """Merging non-equivalent neurons with a huge tolerance must show up in the certified bound."""
    p = planted_network(n_inputs=5, core_widths=(6, 4), seed=4)
    r = exact_lump(p.network, tolerance=0.09)
    a, b = discrepancy_bound(p.network, r.reduced, r.classes, r.tolerance)
    x = np.random.default_rng(0).normal(size=(4000, 5))
    diff = np.abs(p.network.forward(x) - r.reduced.forward(x)).max(axis=1)
    assert np.all(diff <= a + b * np.abs(x).max(axis=1))


def test_reducing_twice_changes_nothing(tmp_path):
    p = planted_network(n_inputs=6, core_widths=(10, 8, 6), seed=5)
    r1 = exact_lump(p.network)
    r2 = exact_lump(r1.reduced)
    assert r2.reduced.hidden_widths == r1.reduced.hidden_widths
    for l1, l2 in zip(r1.reduced.layers, r2.reduced.layers):
        assert np.array_equal(l1.weight, l2.weight) and np.array_equal(l1.bias, l2.bias)


def test_acasxu_has_no_exact_redundancy_and_stays_identical(shared_data, tmp_path):
    src = shared_data / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx"
    out = tmp_path / "r.onnx"
    assert main(["reduce", str(src), "-o", str(out), "-q"]) == 0
    x = np.random.default_rng(0).uniform(-0.5, 0.5, size=(300, 5))
    assert np.array_equal(run_onnx(src, x), run_onnx(out, x))
    assert check_certificate(tmp_path / "r.cert.json").holds


def _reduce(tmp_path, seed=6):
    p = planted_network(n_inputs=6, core_widths=(8, 5), seed=seed)
    src, out = tmp_path / "p.onnx", tmp_path / "r.onnx"
    save_onnx(p.network, src)
    assert main(["reduce", str(src), "-o", str(out), "--certificate", str(tmp_path / "c.json"), "-q"]) == 0
    return src, out, tmp_path / "c.json"


def _rewrite_weight(path, delta):
    m = onnx.load(str(path))
    init = next(i for i in m.graph.initializer if i.name == "lv_W1")
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += delta
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(path))


def _rehash(cert_path, role, path):
    from lumpver.fileio import sha256_file

    cert = json.loads(cert_path.read_text())
    cert[role]["sha256"] = sha256_file(path)
    cert_path.write_text(json.dumps(cert))


def test_certificate_rechecks_and_tampering_fails(tmp_path):
    src, out, cert = _reduce(tmp_path)
    assert main(["check", str(cert), "-q"]) == 0
    _rewrite_weight(out, 1e-3)
    assert main(["check", str(cert), "-q"]) == 1  # hash mismatch
    _rehash(cert, "reduced", out)
    assert main(["check", str(cert), "-q"]) == 1  # weight no longer the quotient's


def test_tampered_claim_fails(tmp_path):
    src, out, cert = _reduce(tmp_path, seed=7)
    data = json.loads(cert.read_text())
    layer = data["evidence"][0]["claim"]["layers"][0]
    member = next(i for i, c in enumerate(layer["class_of"]) if c >= 0 and layer["representative"][c] != i)
    layer["scale"][member] *= 1.5
    cert.write_text(json.dumps(data))
    assert main(["check", str(cert), "-q"]) == 1
    data["evidence"][0]["discrepancy"]["a"] = 0.0
    data["evidence"][0]["discrepancy"]["b"] = 0.0
    cert.write_text(json.dumps(data))
    assert main(["check", str(cert), "-q"]) == 1


def test_unreadable_certificate_exit_2(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    assert main(["check", str(bad), "-q"]) == 2


def test_grouping_matches_pairwise_reference():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 12))
    idx = rng.integers(0, 40, size=400)
    rows = base[idx] * rng.uniform(0.1, 10, size=(400, 1))
    rows = rows.astype(np.float32).astype(np.float64)
    fast = group_rows(rows, "positive", 1e-5)
    slow = pairwise_group_rows(rows, "positive", 1e-5)
    assert np.array_equal(fast.label, slow.label)
    assert len(fast.rep) == len(np.unique(idx))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_inputs=st.integers(1, 9),
    widths=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    n_outputs=st.integers(1, 4),
    activation=st.sampled_from(ACTIVATIONS),
    copies=st.floats(1.0, 3.5),
    n_constant=st.integers(0, 2),
    n_dead=st.integers(0, 2),
    seed=st.integers(0, 10_000),
)
def test_random_planted_shapes(n_inputs, widths, n_outputs, activation, copies, n_constant, n_dead, seed):
    p = planted_network(n_inputs, tuple(widths), n_outputs, activation, copies, n_constant, n_dead, seed)
    r = exact_lump(p.network)
    x = np.random.default_rng(seed).normal(size=(200, n_inputs))
    ref, got = p.network.forward(x), r.reduced.forward(x)
    a, b = discrepancy_bound(p.network, r.reduced, r.classes, r.tolerance)
    assert np.all(np.abs(ref - got).max(axis=1) <= a + b * np.abs(x).max(axis=1))
    # the quotient is never wider than the planted core and never merges distinct cores
    assert all(w <= c for w, c in zip(r.reduced.hidden_widths, p.core_widths))
    assert np.abs(ref - got).max() <= 1e-4 * (1 + np.abs(ref).max())
    assert exact_lump(r.reduced).reduced.hidden_widths == r.reduced.hidden_widths


def test_grouping_large_runs_of_copies_stay_cheap_and_correct():
    """Thousands of copies of two signatures: two groups, decided without an n x n x d tensor."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2, 300))
    which = rng.integers(0, 2, size=4000)
    rows = (base[which] * rng.uniform(0.5, 2.0, size=(4000, 1))).astype(np.float32).astype(np.float64)
    g = group_rows(rows, "positive", 1e-5)
    assert len(g.rep) == 2
    assert np.array_equal(g.label, (which != which[0]).astype(int))
