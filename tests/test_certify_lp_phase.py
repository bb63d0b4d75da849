"""certify() on wide inputs (> BAB_FIRST_DIMS) with the LP phase search after the batched one
(lumpver/reductions/certify.py phase_term, verifiers/bab_phase_batched.py lp_refine): the bound covers the
exact MILP maximum (tests/milp_reference.py), the LP tree is written as ``phase`` evidence, the certificate
re-checks from the files, and a claim below the checker's replay fails."""
from __future__ import annotations

import json

import numpy as np

import lumpver.reductions.certify as C
from lumpver.certificates.format import check_certificate
from lumpver.specs.inputset import Box, InputSet
from tests.milp_reference import max_linf_difference
from tests.test_bab_diff import _f32, _files
from tests.test_interval_backend import REDUCTIONS, random_net


def test_lp_phase_search_on_wide_inputs_certifies_and_rechecks(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "PHASE_NODES", 1)  # the batched search stops at its root: the LP search has work
    monkeypatch.setattr(C, "PHASE_LPS", 60)
    rng = np.random.default_rng(21)
    f = _f32(random_net(rng, [10, 6, 6, 1]))
    g = _f32(REDUCTIONS["quantised"](f, rng))
    box = Box(-np.full(10, 0.3), np.full(10, 0.3))
    a, b, _ = _files(tmp_path, f, g, box)
    X = InputSet([box])
    monkeypatch.setattr(C, "PHASE_LPS", 0)
    before = C.certify(f, g, X, "linf", timeout=20, max_boxes=1)
    monkeypatch.setattr(C, "PHASE_LPS", 60)
    res = C.certify(f, g, X, "linf", timeout=20, max_boxes=1)
    exact, _ = max_linf_difference(f, g, box.lower, box.upper)
    assert res.backend == "bab_diff" and "phase" in res.evidence["regions"][0], res.evidence["regions"]
    assert exact - 1e-7 <= res.epsilon < before.epsilon, (exact, res.epsilon, before.epsilon)
    cert = tmp_path / "c.json"
    C.write_bounded(a, b, cert, f, g, X, res, {"method": "test"}, 1.0)
    assert check_certificate(cert).holds
    c = json.loads(cert.read_text())
    c["guarantee"]["epsilon"] = 0.5 * (res.epsilon + exact)
    cert.write_text(json.dumps(c))
    assert not check_certificate(cert).holds
