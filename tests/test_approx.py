"""Approximate lumping certified on an input set (DESIGN.md §4): certified <= E, sampled <= certified,
never larger than the exact on-set reduction, twin within its bound, re-check and tampering (direct and
through ``lumpver check``), removal costs against brute-force refits, ACAS Xu prop_3."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lumpver.reductions.approx import _obs_costs, approximate_quotient, kept_after, reduce_approx_to_files, refit_pruned, \
    removal_order
from lumpver.certificates.format import CheckContext
from lumpver.reductions.certify import Chain, expand_pruned, sample_points, twin_of
from lumpver.certificates.bounded_bab import DIFFERENTIAL_BACKENDS, check_evidence_entry
from lumpver.specs.inputset import Box, InputSet
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.reductions.onset import reduce_on_set
from lumpver.ir.runtime import run_onnx


def _planted(rng, width: int = 16) -> Network:
    """3 -> width -> width -> 2 ReLU net; half of each hidden layer are noisy positive multiples of the other half."""
    def layer(n_in, n_out):
        base = rng.standard_normal((n_out // 2, n_in + 1))
        scale = rng.uniform(0.5, 2.0, n_out // 2)[:, None]
        rows = np.vstack([base, scale * base * (1 + 1e-3 * rng.standard_normal(base.shape))])
        return Layer(np.float32(rows[:, :-1]), np.float32(rows[:, -1]), "relu")

    out = Layer(np.float32(rng.standard_normal((2, width)) / 4), np.float32(rng.standard_normal(2)), "identity")
    return Network([layer(3, width), layer(width, width), out])


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
    ev = next(e for e in cert["evidence"] if e["backend"] in DIFFERENTIAL_BACKENDS)
    assert check_evidence_entry(cert, ctx, ev).holds
    bad = json.loads(json.dumps(cert))
    bad["guarantee"]["epsilon"] = sampled * 0.99
    assert not check_evidence_entry(bad, ctx, ev).holds
    for tamper in (_tamper_partition, _tamper_kept, _tamper_dropped_rows):
        bad = json.loads(json.dumps(cert))
        bev = next(e for e in bad["evidence"] if e["backend"] in DIFFERENTIAL_BACKENDS)
        if tamper(bev["chain"]):
            assert not check_evidence_entry(bad, ctx, bev).holds, tamper.__name__
    chain = ev["chain"]
    assert "classes" in chain or "kept" in chain  # something was removed, by one of the two twins


def _tamper_partition(chain) -> bool:
    if "classes" not in chain:
        return False
    chain["classes"][0]["scale"][0] = -1.0  # malformed partition
    return True


def _tamper_kept(chain) -> bool:
    if "kept" not in chain:
        return False
    chain["kept"][0][0] = 10_000  # kept index outside the layer
    return True


def _tamper_dropped_rows(chain) -> bool:
    rows = [(k, r) for k, r in enumerate(chain.get("dropped_rows", [])) if r and r["index"]]
    if not rows:
        return False
    k, r = rows[0]
    r["index"][0] = chain["kept"][k][0]  # names a kept neuron
    return True


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_reduce_approx_then_check(rng, tmp_path):
    net = _planted(rng)
    orig, out, cert_path, spec = (tmp_path / n for n in ("f.onnx", "g.onnx", "g.cert.json", "x.vnnlib"))
    save_onnx(net, orig)
    _spec(spec, 3, 2, -1, 1)
    r = _cli("reduce", orig, "-o", out, "--mode", "approx", "--input-set", spec, "--epsilon", 0.05, "-q")
    assert r.returncode == 0, r.stderr
    assert _cli("check", cert_path).returncode == 0
    cert = json.loads(cert_path.read_text())
    x = sample_points(InputSet([Box(-np.ones(3), np.ones(3))]), 3000, seed=5)
    seen = float(np.max(np.abs(run_onnx(orig, x) - run_onnx(out, x))))
    bad = json.loads(json.dumps(cert))
    bad["guarantee"]["epsilon"] = seen / 2  # below an error onnxruntime shows: must not re-check
    cert_path.write_text(json.dumps(bad))
    assert _cli("check", cert_path).returncode == 1
    for tamper in (_tamper_partition, _tamper_kept):  # malformed evidence: exit 1, one clear failure, no crash
        bad = json.loads(json.dumps(cert))
        if tamper(next(e for e in bad["evidence"] if e["backend"] in DIFFERENTIAL_BACKENDS)["chain"]):
            cert_path.write_text(json.dumps(bad))
            r = _cli("check", cert_path)
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr


def test_cli_reduce_gradual_search_certifies_and_rechecks(rng, tmp_path):
    """``reduce --search gradual`` builds candidates by the gradual pruning (recorded as its method): the
    written model is smaller than the on-set reduction, its certificate re-checks and covers the error
    onnxruntime shows; an unknown --search exits 2 naming the option before anything is written, and the
    command's choices are the library's."""
    from lumpver.commands import reduce as reduce_cmd
    from lumpver.reductions.approx import SEARCHES

    net = _planted(rng)
    orig, out, cert_path, spec = (tmp_path / n for n in ("f.onnx", "g.onnx", "g.cert.json", "x.vnnlib"))
    save_onnx(net, orig)
    _spec(spec, 3, 2, -0.3, 0.3)
    X = InputSet([Box(-0.3 * np.ones(3), 0.3 * np.ones(3))])
    bad = _cli("reduce", orig, "-o", out, "--mode", "approx", "--input-set", spec, "--epsilon", 0.2, "--search", "x")
    assert bad.returncode == 2 and "--search" in bad.stderr and not out.exists()
    import argparse
    parser = argparse.ArgumentParser()
    reduce_cmd.add_arguments(parser)
    assert tuple(next(a for a in parser._actions if a.dest == "search").choices) == SEARCHES
    r = _cli("reduce", orig, "-o", out, "--mode", "approx", "--input-set", spec, "--epsilon", 0.2, "--search",
             "gradual", "--timeout", 25, "-q")
    assert r.returncode == 0, r.stderr
    cert = json.loads(cert_path.read_text())
    info = next(e for e in cert["evidence"] if e["backend"] == "reduction")
    assert info["search"] == "gradual-prune+joint-minimax", info
    assert cert["stats"]["neurons_after"] < reduce_on_set(net, X).reduced.n_hidden
    assert _cli("check", cert_path).returncode == 0
    x = sample_points(X, 5000, seed=4)
    seen = float(np.max(np.abs(run_onnx(orig, x) - run_onnx(out, x))))
    assert seen <= cert["guarantee"]["epsilon"] + cert["guarantee"]["float_tolerance"]["float32_rounding_bound"]


def test_removal_costs_match_brute_force_refits(rng):
    feats = rng.standard_normal((200, 6))
    feats[:, 5] = 0.7 * feats[:, 1] - 0.2 * feats[:, 3] + 1e-3 * rng.standard_normal(200)  # nearly redundant
    target = feats @ rng.standard_normal((6, 3)) + 0.1 * rng.standard_normal((200, 3))

    def rss(cols):
        a = np.hstack([feats[:, cols], np.ones((200, 1))])
        sol, *_ = np.linalg.lstsq(a, target, rcond=None)
        return float(np.sum((a @ sol - target) ** 2)) / 200

    full = rss(list(range(6)))
    brute = [rss([c for c in range(6) if c != j]) - full for j in range(6)]
    np.testing.assert_allclose(_obs_costs(feats, target), brute, rtol=1e-4, atol=1e-7)  # ridge 1e-10
    assert int(np.argmin(_obs_costs(feats, target))) in (1, 3, 5)  # one of the redundant triple


def test_pruned_twin_equals_pruned_network(rng):
    net = _planted(rng)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    pts = sample_points(X, 800)
    acts = net.activations(pts)
    order = removal_order(net, acts)
    assert len(order) == net.n_hidden - 2  # one neuron per layer stays
    kept = kept_after(net, order, 10)
    assert sum(k.size for k in kept) == net.n_hidden - 10
    g, dropped = refit_pruned(net, acts, kept)
    twin = expand_pruned(net, g, kept, dropped)
    x = sample_points(X, 2000, seed=9)
    np.testing.assert_allclose(twin.forward(x), g.forward(x), rtol=0, atol=1e-12)
    # the planted near-duplicates go first: their removal barely changes the outputs
    g8, _ = refit_pruned(net, acts, kept_after(net, order, 8))
    assert np.max(np.abs(g8.forward(x) - net.forward(x))) < 0.05 * np.max(np.abs(net.forward(x)))


def test_acasxu_prop3_certified_and_sampled(shared_data, tmp_path):
    from lumpver.specs.load import load_input_set
    from lumpver.ir.onnx_import import load_onnx

    model = shared_data / "acasxu" / "onnx" / "ACASXU_run2a_3_3_batch_2000.onnx"
    f = load_onnx(model)
    X = load_input_set(str(shared_data / "acasxu" / "vnnlib" / "prop_3.vnnlib"), f.n_inputs)
    out, cert_path = tmp_path / "g.onnx", tmp_path / "g.cert.json"
    cert = reduce_approx_to_files(model, out, cert_path, X, 0.1, "linf", "auto", 60.0)
    eps = cert["guarantee"]["epsilon"]
    x = sample_points(X, 5000, seed=4)
    seen = float(np.max(np.abs(run_onnx(model, x) - run_onnx(out, x))))
    assert seen <= eps <= 0.1
    assert cert["stats"]["neurons_after"] <= reduce_on_set(f, X).reduced.n_hidden
    ctx = CheckContext(cert_path, model, out)
    ev = next(e for e in cert["evidence"] if e["backend"] in DIFFERENTIAL_BACKENDS)
    assert check_evidence_entry(cert, ctx, ev).holds


def test_epsilon_too_small_is_refused(rng, tmp_path):
    from lumpver.errors import CheckFailed

    net = _planted(rng)
    orig = tmp_path / "f.onnx"
    save_onnx(net, orig)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    with pytest.raises(CheckFailed):
        reduce_approx_to_files(orig, tmp_path / "g.onnx", None, X, 0.0, "linf", "auto", 30.0)
    assert not (tmp_path / "g.onnx").exists()


def test_cli_bound_interval_certificate_rechecks(rng, tmp_path):
    """``lumpver bound --backend interval`` evidence (no box caps) is replayed by the bounded checker."""
    f = Network([Layer(np.float32(rng.standard_normal((8, 2))), np.float32(rng.standard_normal(8)), "relu"),
                 Layer(np.float32(rng.standard_normal((2, 8))), np.float32([0.1, -0.2]), "identity")])
    g = f.with_layers([Layer(np.float32(np.round(f.layers[0].weight * 4) / 4), f.layers[0].bias, "relu"),
                       f.layers[1]])
    a, b, spec, cert = (tmp_path / n for n in ("a.onnx", "b.onnx", "x.vnnlib", "c.json"))
    save_onnx(f, a)
    save_onnx(g, b)
    _spec(spec, 2, 2, -1, 1)
    r = _cli("bound", a, b, "--input-set", spec, "--backend", "interval", "--certificate", cert, "--timeout", 3, "-q")
    assert r.returncode == 0, r.stderr
    assert _cli("check", cert).returncode == 0
    c = json.loads(cert.read_text())
    x = sample_points(InputSet([Box(-np.ones(2), np.ones(2))]), 4000, seed=2)
    c["guarantee"]["epsilon"] = 0.9 * float(np.max(np.abs(run_onnx(a, x) - run_onnx(b, x))))
    cert.write_text(json.dumps(c))
    assert _cli("check", cert).returncode == 1


def test_lbfgs_fit_lowers_error_and_its_certificate_covers_the_milp_maximum(rng):
    """The L-BFGS-B refit (approx_fit.finetune) lowers the sampled error of a least-squares
    candidate on held-out points, and the certified bound of the fitted network (pruned twin
    with re-fitted tracking rows) is at least the exact maximum |f - g| of a MILP (tests/milp_reference.py)."""
    from lumpver.reductions.approx import tracking_rows
    from lumpver.reductions.approx_fit import finetune
    from lumpver.reductions.certify import certify
    from tests.milp_reference import max_difference

    net = _planted(rng)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    pts, held = sample_points(X, 1500, seed=1), sample_points(X, 1500, seed=2)
    acts, yf = net.activations(pts), net.forward(pts)
    kept = kept_after(net, removal_order(net, acts), 12)
    g_ls, _ = refit_pruned(net, acts, kept)
    g = finetune(g_ls, net, acts, kept, yf, (net.preprocess(held), net.forward(held)))
    x = sample_points(X, 4000, seed=9)
    err_ls, err = (float(np.max(np.abs(h.forward(x) - net.forward(x)))) for h in (g_ls, g))
    assert err < err_ls  # planted net: the joint fit must help here
    assert all(np.array_equal(w.astype(np.float32), w) for w in (layer.weight for layer in g.layers))
    lo, hi = -0.3 * np.ones(3), 0.3 * np.ones(3)  # certificate and MILP on a sub-box: the MILP takes seconds
    res = certify(net, g, InputSet([Box(lo, hi)]), "linf", Chain(None, kept, dropped_rows=tracking_rows(net, g, acts, kept)),
                  timeout=10.0, max_boxes=40)
    exact = max(max_difference(net, g, lo, hi, s * np.eye(2)[j])[0] for j in range(2) for s in (1.0, -1.0))
    xs = sample_points(InputSet([Box(lo, hi)]), 4000, seed=9)
    assert float(np.max(np.abs(g.forward(xs) - net.forward(xs)))) <= exact + 1e-9 and exact <= res.epsilon


@pytest.mark.parametrize("tighten", [True, "live"])
def test_phase_lps_in_certify_recheck_and_cover_the_milp_maximum(rng, tmp_path, monkeypatch, tighten):
    """With a phase stage (certify.PhaseBudget) the deterministic search records phase trees on the
    pruned (aligned) twin, with the budget's root tightening (recorded); the written certificate
    re-checks and its bound covers the MILP maximum |f - g|, and a claim below that maximum does not re-check."""
    from lumpver.reductions import certify as C
    from tests.milp_reference import max_difference

    net = _planted(rng)
    lo, hi = -0.3 * np.ones(3), 0.3 * np.ones(3)
    X = InputSet([Box(lo, hi)])
    pts = sample_points(X, 1000, seed=1)
    acts = net.activations(pts)
    kept = kept_after(net, removal_order(net, acts), 12)
    g, dropped = refit_pruned(net, acts, kept)
    monkeypatch.setattr(C, "BAB_BOXES", 20)  # leaves stay open, so the phase stage runs
    res = C.certify(net, g, X, "linf", Chain(None, kept, dropped_rows=dropped), timeout=20.0, max_boxes=20,
                    phase=C.PhaseBudget(lps=200, tighten=tighten))
    assert res.backend == "bab_diff" and any("phase" in r for r in res.evidence["regions"])
    assert res.evidence["phase_tighten"] == tighten
    orig, out, cert_path = (tmp_path / n for n in ("f.onnx", "g.onnx", "g.cert.json"))
    save_onnx(net, orig)
    save_onnx(g, out)
    cert = C.write_bounded(orig, out, cert_path, net, g, X, res, {"method": "test"}, 0.0)
    ctx = CheckContext(cert_path, orig, out)
    ev = next(e for e in cert["evidence"] if e["backend"] in DIFFERENTIAL_BACKENDS)
    assert check_evidence_entry(cert, ctx, ev).holds
    exact = max(max_difference(net, g, lo, hi, s * np.eye(2)[j])[0] for j in range(2) for s in (1.0, -1.0))
    assert exact <= res.epsilon
    bad = json.loads(json.dumps(cert))
    bad["guarantee"]["epsilon"] = exact * 0.99
    assert not check_evidence_entry(bad, ctx, ev).holds


def test_long_budget_tries_the_goal_size_first_and_its_certificate_rechecks(rng, tmp_path, monkeypatch):
    """With the phase stage on (a budget from certify.PHASE_TIMEOUT on) the size search tries half the on-set
    size first; the written reduction's certificate (the search's own when the file is bit-identical)
    re-checks, covers the error onnxruntime shows on samples (plus the float32 term), and half its claim is
    refused."""
    from lumpver.reductions import certify as C

    net = _planted(rng)
    X = InputSet([Box(-0.3 * np.ones(3), 0.3 * np.ones(3))])
    monkeypatch.setattr(C, "PHASE_TIMEOUT", 3.0)
    monkeypatch.setattr(C, "LONG_PHASE", C.PhaseBudget(lps=300))
    orig, out, cert_path = (tmp_path / n for n in ("f.onnx", "g.onnx", "g.cert.json"))
    save_onnx(net, orig)
    cert = reduce_approx_to_files(orig, out, cert_path, X, 0.05, "linf", "auto", 4.0)
    trials = cert["evidence"][1]["trials"]
    assert trials[0]["hidden"] == reduce_on_set(net, X).reduced.n_hidden // 2, trials
    ctx = CheckContext(cert_path, orig, out)
    ev = next(e for e in cert["evidence"] if e["backend"] in DIFFERENTIAL_BACKENDS)
    assert check_evidence_entry(cert, ctx, ev).holds
    x = sample_points(X, 5000, seed=3)
    seen = float(np.max(np.abs(run_onnx(orig, x) - run_onnx(out, x))))
    claim = cert["guarantee"]["epsilon"]
    assert seen <= claim + cert["guarantee"]["float_tolerance"]["float32_rounding_bound"] and claim <= 0.05
    bad = json.loads(json.dumps(cert))
    bad["guarantee"]["epsilon"] = 0.5 * claim  # below the checker's recomputation
    assert not check_evidence_entry(bad, ctx, ev).holds


def test_snapped_twin_differences_are_exact_and_within_ulps():
    """snap_for_exact_difference: every snapped weight differs from the original network's by a float64
    exactly (checked with rational arithmetic), and moves by at most two ulps of the larger of the two."""
    from fractions import Fraction

    from lumpver.bounds.diff_align import snap_for_exact_difference

    rng = np.random.default_rng(3)
    f = Network([Layer(np.float32(rng.standard_normal((6, 3))), np.float32(rng.standard_normal(6)), "relu"),
                 Layer(np.float32(rng.standard_normal((2, 6))), np.float32(rng.standard_normal(2)), "identity")])
    g = f.with_layers([Layer(l.weight * rng.uniform(0.3, 3.0, l.weight.shape) / 7.0, l.bias / 3.0, l.activation)
                       for l in f.layers])
    snapped = snap_for_exact_difference(f, g)
    inexact = 0
    for lf, lg, ls in zip(f.layers, g.layers, snapped.layers):
        for a, b, s in zip(*(np.concatenate([x.weight.ravel(), x.bias]) for x in (lf, lg, ls))):
            inexact += Fraction(float(a)) - Fraction(float(b)) != Fraction(float(a - b))
            assert Fraction(float(a)) - Fraction(float(s)) == Fraction(float(a - s))
            assert abs(s - b) <= 2 * np.spacing(max(abs(a), abs(b)))
    assert inexact > 0  # the case the snapping is for


def test_quotient_twin_pairs_neuron_by_neuron_within_its_bound(rng):
    """A quotient's twin is bounded on the delta chain (before: refused as inexact, or matched across a
    class's scaled copies, so bab_diff fell back to the far looser product chain), and its float
    discrepancy to g still holds on samples; the differential bound covers the exact MILP maximum."""
    from lumpver.bounds.diff_batched import prepare_diff
    from lumpver.reductions.certify import bab_term
    from tests.milp_reference import max_linf_difference

    net = _planted(rng, 10)
    X = InputSet([Box(-np.ones(3), np.ones(3))])
    pts = sample_points(X, 500)
    g, classes = approximate_quotient(net, pts, 0.05)
    assert g.n_hidden < net.n_hidden
    twin, gap = twin_of(net, g, Chain(classes=classes), X)
    assert prepare_diff(net, twin).kind == "delta"
    assert np.max(np.abs(twin.forward(pts) - g.forward(pts))) <= gap
    u, ev = bab_term(net, twin, X, "linf", 0.0, 20.0)
    exact, _ = max_linf_difference(net, g, -np.ones(3), np.ones(3))
    assert exact <= u + gap


def test_identity_pairing_needs_the_same_activations():
    """Equal shapes but another activation in one layer: no joint chain pairs them (a delta chain would bound
    g with f's activations), so the batched difference bounds refuse the pair instead of bounding it wrongly."""
    from lumpver.bounds.diff_batched import prepare_diff

    f = _planted(np.random.default_rng(8), 6)
    g = f.with_layers([Layer(l.weight * 1.01, l.bias, "sigmoid" if k == 1 else l.activation)
                       for k, l in enumerate(f.layers)])
    for kind in (None, "delta"):
        with pytest.raises(ValueError):
            prepare_diff(f, g, kind)
