"""Approximate lumping certified on an input set (DESIGN.md §4): certified <= E, sampled <= certified,
never larger than the exact on-set reduction, twin within its bound, re-check and tampering."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lumpver.approx import approximate_quotient, reduce_approx_to_files
from lumpver.certificate import CheckContext
from lumpver.certify import sample_points, twin_of, Chain
from lumpver.certify_check import check_interval_evidence
from lumpver.inputset import Box, InputSet
from lumpver.model import Layer, Network
from lumpver.onnx_export import save_onnx
from lumpver.onset import reduce_on_set
from lumpver.runtime import run_onnx


def _planted(rng) -> Network:
    """3 -> 16 -> 16 -> 2 ReLU net; half of each hidden layer are noisy positive multiples of the other half."""
    def layer(n_in, n_out):
        base = rng.standard_normal((n_out // 2, n_in + 1))
        scale = rng.uniform(0.5, 2.0, n_out // 2)[:, None]
        rows = np.vstack([base, scale * base * (1 + 1e-3 * rng.standard_normal(base.shape))])
        return Layer(np.float32(rows[:, :-1]), np.float32(rows[:, -1]), "relu")

    out = Layer(np.float32(rng.standard_normal((2, 16)) / 4), np.float32(rng.standard_normal(2)), "identity")
    return Network([layer(3, 16), layer(16, 16), out])


def _spec(path, n_in, n_out, lo, hi):
    path.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + "".join(
        f"(declare-const Y_{i} Real)\n" for i in range(n_out)) + "".join(
        f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n" for i in range(n_in)) + "(assert (>= Y_0 Y_1))\n")


def test_twin_of_quotient_stays_within_its_bound(rng):
    net = _planted(rng)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    pts = sample_points(X, 500)
    g, classes = approximate_quotient(net, pts, 0.05)
    assert g.n_hidden < net.n_hidden
    twin, gap = twin_of(net, g, Chain(classes=classes), X)
    assert twin.hidden_widths == net.hidden_widths
    d = np.max(np.abs(twin.forward(pts) - g.forward(pts)))
    assert d <= gap and gap < 1e-7  # only float rounding of the distributed weights


def test_approx_reduction_certified_and_rechecked(rng, tmp_path):
    net = _planted(rng)
    orig, out, cert_path, spec = (tmp_path / n for n in ("f.onnx", "g.onnx", "g.cert.json", "x.vnnlib"))
    save_onnx(net, orig)
    _spec(spec, 3, 2, -1, 1)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    eps = 0.05
    cert = reduce_approx_to_files(orig, out, cert_path, X, eps, "linf", "auto", 120.0)
    certified = cert["guarantee"]["epsilon"]
    assert cert["guarantee"]["kind"] == "bounded" and certified <= eps
    x = sample_points(X, 5000, seed=11)
    sampled = np.max(np.abs(run_onnx(orig, x) - run_onnx(out, x)))
    assert sampled <= certified
    onset = reduce_on_set(net, X).reduced  # independent: the exact on-set reduction
    assert cert["stats"]["neurons_after"] <= onset.n_hidden
    assert cert["stats"]["neurons_after"] < net.n_hidden  # the planted duplicates merge
    ctx = CheckContext(cert_path, orig, out)
    ev = next(e for e in cert["evidence"] if e["backend"] == "interval")
    assert check_interval_evidence(cert, ctx, ev).holds
    bad = json.loads(json.dumps(cert))
    bad["guarantee"]["epsilon"] = sampled * 0.99
    assert not check_interval_evidence(bad, ctx, ev).holds
    bad = json.loads(json.dumps(cert))
    bev = next(e for e in bad["evidence"] if e["backend"] == "interval")
    bev["chain"]["classes"][0]["scale"][0] = -1.0  # malformed partition
    assert not check_interval_evidence(bad, ctx, bev).holds


def test_epsilon_too_small_is_refused(rng, tmp_path):
    from lumpver.errors import CheckFailed

    net = _planted(rng)
    orig = tmp_path / "f.onnx"
    save_onnx(net, orig)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    with pytest.raises(CheckFailed):
        reduce_approx_to_files(orig, tmp_path / "g.onnx", None, X, 0.0, "linf", "auto", 30.0)
    assert not (tmp_path / "g.onnx").exists()
