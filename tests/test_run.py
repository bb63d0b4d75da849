"""``lumpver run``: every self-contained spec in specs/ end to end, outputs checked independently."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lumpver.certificates.format import check_certificate
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.runtime import run_onnx
from lumpver.specs.runspec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def _self_contained(p: Path) -> bool:
    """A spec whose every referenced file lives inside the repository."""
    text = p.read_text()
    return "../../shared" not in text and "shared/data" not in text


SELF_CONTAINED = sorted(p for p in SPECS.glob("*.toml") if _self_contained(p))


def test_demo_spec_is_self_contained():
    assert SPECS / "demo.toml" in SELF_CONTAINED


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from lumpver.api.run import run_spec

    out = tmp_path_factory.mktemp("run") / "demo"
    return run_spec(SPECS / "demo.toml", out, quiet=True)


def test_demo_outputs_and_chain(demo_run):
    out = demo_run.out_dir
    spec = load_spec(SPECS / "demo.toml")
    names = sorted(p.name for p in out.iterdir())
    assert {"report.md", "report.html", "report.json"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")] and not list(out.parent.glob(".demo.staging-*"))
    steps = demo_run.document["steps"]
    assert [s["method"] for s in steps] == [r.method for r in spec.reductions]
    prev = load_onnx(spec.model)
    x = spec.input_set(prev.n_inputs).boxes()[0].sample(500, np.random.default_rng(0))
    y0 = run_onnx(spec.model, x)
    for s in steps:
        model = out / s["model_path"]
        net = load_onnx(model)
        # the report's widths are those of the written files (independent load)
        assert s["stats"]["layers_before"] == prev.hidden_widths
        assert s["stats"]["layers_after"] == net.hidden_widths
        # each certificate names the previous step's model and re-checks from the files alone
        assert check_certificate(out / s["certificate_path"]).holds
        assert s["recheck"]["holds"] is True
        prev = net
    # on the declared box the final model agrees with the original (onnxruntime, float32)
    y1 = run_onnx(out / steps[-1]["model_path"], x)
    assert np.max(np.abs(y1 - y0)) <= 1e-4 * max(1.0, float(np.max(np.abs(y0))))
    assert prev.n_hidden < load_onnx(spec.model).n_hidden


def test_demo_report_json_matches_files(demo_run):
    doc = json.loads((demo_run.out_dir / "report.json").read_text())
    assert doc["format"] == "lumpver-report/1"
    final = load_onnx(demo_run.out_dir / doc["steps"][-1]["model_path"])
    assert f"has {final.n_hidden} hidden neurons" in doc["headline"][0]
    assert doc["overall"]["kind"] == "exact-on-set" and doc["overall"]["holds"] is True
    # the composed bound on the set is the sum of the step bounds (triangle inequality)
    parts = []
    for s in doc["steps"]:
        ft = s["certificate"]["guarantee"]["float_tolerance"]["discrepancy_bound"]
        parts.append(ft["a"] + ft["b"] * 0.1 if isinstance(ft, dict) else ft)
    assert doc["overall"]["bound_on_set"] == pytest.approx(sum(parts), rel=1e-12)
    md = (demo_run.out_dir / "report.md").read_text()
    assert "## In plain words" in md and "| total hidden | " in md


def test_demo_backends_sound(demo_run):
    """A back-end's proved bound must lie above the largest error onnxruntime sees on the set."""
    doc = demo_run.document
    spec = load_spec(SPECS / "demo.toml")
    x = spec.input_set(8).boxes()[0].sample(2000, np.random.default_rng(1))
    seen = float(np.max(np.abs(run_onnx(spec.model, x) - run_onnx(demo_run.out_dir / doc["steps"][-1]["model_path"], x))))
    assert doc["backends"], "demo declares back-ends"
    for b in doc["backends"]:
        assert b["verdict"] in ("proved", "unknown")
        if b["upper_bound"] is not None:
            assert b["upper_bound"] >= seen - 1e-6
        if b["verdict"] == "proved":
            assert b["upper_bound"] is None or b["upper_bound"] <= spec.tolerance.epsilon


def test_other_self_contained_specs_run(tmp_path):
    """Every other self-contained spec in specs/ runs end to end (the demo has its own tests)."""
    from lumpver.api.run import run_spec

    for k, spec_path in enumerate(p for p in SELF_CONTAINED if p.name != "demo.toml"):
        out = tmp_path / f"out{k}"
        res = run_spec(spec_path, out, quiet=True)
        assert res.exit_code == 0, spec_path
        for s in res.document["steps"]:
            assert (out / s["model_path"]).is_file()
            if s["certificate_path"]:
                assert check_certificate(out / s["certificate_path"]).holds


def _spec(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(f'model = "{(SPECS / "planted_demo.onnx").as_posix()}"\n' + body)
    return p


def test_failing_step_leaves_nothing(tmp_path):
    """A step that fails (approx with an epsilon no reduction can meet) leaves the output folder as it was."""
    from lumpver.errors import LumpverError
    from lumpver.api.run import run_spec

    spec = _spec(tmp_path, '[input_set]\ntype = "box"\nlower = -0.1\nupper = 0.1\n'
                           '[tolerance]\nnorm = "linf"\nepsilon = 0.0\n'
                           '[[reductions]]\nmethod = "exact"\n[[reductions]]\nmethod = "approx"\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LumpverError):
        run_spec(spec, out, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".out.staging-*"))


def test_cli_run_bad_spec_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "nope.onnx"\n[[reductions]]\nmethod = "exakt"\n')
    r = subprocess.run([sys.executable, "-m", "lumpver", "run", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "bad.toml" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_run_default_out_and_quiet(tmp_path):
    spec = _spec(tmp_path, '[[reductions]]\nmethod = "exact"\n[output]\ndir = "res"\nreports = ["md"]\n')
    r = subprocess.run([sys.executable, "-m", "lumpver", "run", str(spec), "-q"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("exact: hidden neurons ") and "re-checked: holds" in last, last
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["report.md", "step1_exact.cert.json",
                                                                      "step1_exact.onnx"]


def test_prune_and_quantize_steps_run_as_passes(tmp_path):
    """Pruning and quantisation steps: certified on the declared set, each bound above the error that
    onnxruntime shows between consecutive step files; without a set the step says why it has no certificate."""
    from lumpver.api.run import run_spec

    box = '[input_set]\ntype = "box"\nlower = -0.5\nupper = 0.5\n'
    steps = ('[[reductions]]\nmethod = "prune"\nprune_method = "magnitude"\nkeep = 0.7\n'
             '[[reductions]]\nmethod = "prune"\nprune_method = "coreset"\nkeep = 0.8\n'
             '[[reductions]]\nmethod = "quantize"\nbits = 8\n')
    res = run_spec(_spec(tmp_path, box + steps), tmp_path / "o", quiet=True)
    spec = load_spec(tmp_path / "s.toml")
    x = spec.input_set(load_onnx(spec.model).n_inputs).boxes()[0].sample(2000, np.random.default_rng(2))
    prev = spec.model
    assert [s["method"] for s in res.document["steps"]] == ["prune (magnitude)", "prune (coreset)", "quantize (8-bit)"]
    for s in res.document["steps"]:
        assert s["recheck"]["holds"] is True and s["certificate"]["guarantee"]["kind"] == "bounded"
        model = res.out_dir / s["model_path"]
        seen = np.max(np.abs(run_onnx(prev, x) - run_onnx(model, x)))
        assert seen <= s["certificate"]["guarantee"]["epsilon"]
        prev = model
    bare = run_spec(_spec(tmp_path, steps), tmp_path / "p", quiet=True)
    for s in bare.document["steps"]:
        assert s["certificate_path"] is None and "input set" in s["note"]
        assert not (bare.out_dir / s["model_path"].replace(".onnx", ".cert.json")).exists()
