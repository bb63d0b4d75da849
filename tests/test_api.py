"""The Python API without the CLI: the package facade, reduction passes on files, the one input-set
loader, the norms and the Verdict combinators. Expected values come from onnxruntime on the
written files, numpy's own norms or hand-built verdicts, never from the code under test."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import lumpver
from lumpver.errors import InputError
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.planted import planted_network, random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box, InputSet
from lumpver.specs.load import load_input_set
from lumpver.specs.norms import NORMS, difference_rows, from_max_abs, norm_value, upper_norm
from lumpver.verifiers.base import Verdict

ROOT = Path(__file__).resolve().parents[1]
ACAS_PROP = ROOT.parent / "shared" / "data" / "acasxu" / "vnnlib" / "prop_3.vnnlib"


def test_every_public_name_resolves():
    for name in lumpver.__all__:
        assert getattr(lumpver, name) is not None, name
    with pytest.raises(AttributeError):
        lumpver.no_such_name  # noqa: B018


def test_exact_pass_on_files_matches_onnxruntime(tmp_path):
    src, out = tmp_path / "f.onnx", tmp_path / "g.onnx"
    save_onnx(planted_network(seed=3).network, src)
    res = lumpver.apply_pass(lumpver.ExactPass(), src, out)
    cert = json.loads(res.certificate_path.read_text())
    assert res.certificate_path == tmp_path / "g.cert.json" and cert["guarantee"]["kind"] == "exact"
    assert cert["stats"]["neurons_after"] < cert["stats"]["neurons_before"]
    x = np.random.default_rng(0).uniform(-3, 3, size=(500, 8)).astype(np.float32)
    d = cert["guarantee"]["float_tolerance"]["discrepancy_bound"]
    bound = d["a"] + d["b"] * np.max(np.abs(x), axis=1)
    gap = np.max(np.abs(run_onnx(src, x) - run_onnx(out, x)), axis=1)
    assert np.all(gap <= bound + 1e-4)  # real-arithmetic bound plus float32 rounding of two runs
    assert lumpver.check_certificate(res.certificate_path).holds


def test_magnitude_pass_certifies_only_on_an_input_set(tmp_path):
    net = random_mlp(np.random.default_rng(5), [4, 12, 10, 3], fan_in_scaled=True)
    src = tmp_path / "f.onnx"
    save_onnx(net, src)
    bare = lumpver.apply_pass(lumpver.MagnitudePrunePass(0.5), src, tmp_path / "a.onnx")
    assert bare.certificate is None and "input set" in bare.note and not (tmp_path / "a.cert.json").exists()
    X = InputSet([Box(-np.ones(4), np.ones(4))])
    res = lumpver.apply_pass(lumpver.MagnitudePrunePass(0.5), src, tmp_path / "b.onnx", input_set=X)
    eps = res.certificate["guarantee"]["epsilon"]
    x = np.random.default_rng(1).uniform(-1, 1, size=(4000, 4)).astype(np.float32)
    seen = np.max(np.abs(run_onnx(src, x) - run_onnx(tmp_path / "b.onnx", x)))
    assert 0 < seen <= eps
    assert lumpver.check_certificate(res.certificate_path).holds


def test_pass_refuses_bad_input_before_writing(tmp_path):
    src = tmp_path / "f.onnx"
    save_onnx(random_mlp(np.random.default_rng(2), [4, 6, 2]), src)
    with pytest.raises(InputError, match="--keep"):
        lumpver.apply_pass(lumpver.MagnitudePrunePass(1.5), src, tmp_path / "g.onnx")
    with pytest.raises(InputError, match="needs an input set"):
        lumpver.apply_pass(lumpver.OnSetPass(), src, tmp_path / "g.onnx")
    with pytest.raises(InputError, match="dimensions"):
        lumpver.apply_pass(lumpver.OnSetPass(), src, tmp_path / "g.onnx", input_set=InputSet([Box(-np.ones(3), np.ones(3))]))
    with pytest.raises(InputError, match="overwrite"):
        lumpver.apply_pass(lumpver.ExactPass(), src, src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx"]


def test_loader_reads_gzip_and_checks_sets(tmp_path):
    gz = tmp_path / "prop.vnnlib.gz"
    gz.write_bytes(gzip.compress(ACAS_PROP.read_bytes()))
    plain, packed = load_input_set(ACAS_PROP, 5), load_input_set(gz, 5)
    assert [r.to_json() for r in plain.regions] == [r.to_json() for r in packed.regions]
    assert load_input_set(plain, 5) is plain
    with pytest.raises(InputError, match="dimensions"):
        load_input_set(plain, 7)
    with pytest.raises(InputError, match="unsupported input-set file"):
        load_input_set(tmp_path / "x.vnnlib.zip")


def test_norms_agree_with_numpy():
    rng = np.random.default_rng(4)
    d = rng.normal(size=(50, 7))
    for norm, order in (("linf", np.inf), ("l1", 1), ("l2", 2)):
        assert np.allclose(norm_value(d, norm), np.linalg.norm(d, ord=order, axis=1), rtol=1e-12)
        v = np.abs(d[0])
        assert upper_norm(v, norm) >= np.linalg.norm(v, ord=order)
        assert from_max_abs(float(v.max()), 7, norm) >= np.linalg.norm(np.full(7, v.max()), ord=order)
    yf, yg = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    expect = [float(np.argmax(a) != np.argmax(b)) for a, b in zip(yf, yg)]
    assert difference_rows(yf, yg, "top1").tolist() == expect
    assert NORMS == ("linf", "l1", "l2", "top1")
    with pytest.raises(ValueError):
        norm_value(d, "top1")


def test_verdict_combinators():
    a = Verdict("unknown", "falsify", "budget", lower_bound=0.2)
    b = Verdict("unknown", "interval", "open boxes", upper_bound=0.9, lower_bound=0.1)
    c = Verdict("violated", "smt", "cex", counterexample=np.zeros(2), upper_bound=0.05, lower_bound=0.7)
    d = Verdict("proved", "smt", "", upper_bound=float("inf"))
    assert Verdict.best_lower([a, b, c, d]) == 0.7
    assert Verdict.tightest_upper([a, b, c, d]) == 0.9  # the violated stage's bound and inf do not count
    assert Verdict.best_lower([d]) is None and Verdict.tightest_upper([a]) is None
    assert Verdict.conjunction([d, a, c, b], "x") is c
    both = Verdict.conjunction([d, a, b], "x")
    assert both.verdict == "unknown" and both.reason == "budget; open boxes"
    assert Verdict.conjunction([d, d], "x").verdict == "proved"
    js = c.report_json(norm="linf")
    assert js["counterexample"] == [0.0, 0.0] and js["norm"] == "linf" and js["details"] == {}


def test_input_set_boxes_are_the_declared_boxes():
    from lumpver.specs.inputset import Polytope

    box = Box(-np.ones(2), np.ones(2))
    assert InputSet([box, Polytope(np.eye(2), np.ones(2), box)]).boxes() == [box, box]
    with pytest.raises(ValueError, match="bounding box"):
        InputSet([Polytope(np.eye(2), np.ones(2))]).boxes()
