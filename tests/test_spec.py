"""Spec files (TOML) and the --input-set loader: the example specs, every validation message
(file + key path), TOML syntax positions against tomllib's own report, dimension checks."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from lumpver.errors import InputError
from lumpver.specs.inputset import Box, Polytope
from lumpver.specs.load import load_input_set
from lumpver.specs.runspec import load_spec
from lumpver.specs.vnnlib import read_vnnlib

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
DATA = ROOT.parent / "shared" / "data"
ACAS = DATA / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx"
EXAMPLES = sorted(p for p in SPECS.glob("*.toml") if not p.name.startswith("demo"))


# ----- the example specs -------------------------------------------------------------------
def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"acasxu_prop3.toml", "mnist_linf.toml", "acasxu_polytope.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_load(path: Path):
    spec = load_spec(path)
    assert spec.model.is_file() and spec.model.suffix == ".onnx"
    raw = tomllib.loads(path.read_text())
    assert [r.method for r in spec.reductions] == [r["method"] for r in raw.get("reductions", [])]
    assert [b.name for b in spec.backends] == [b["name"] for b in raw.get("backends", [])]
    assert spec.input_set().dim > 0


def test_acasxu_prop3_input_set_is_the_property_box():
    spec = load_spec(SPECS / "acasxu_prop3.toml")
    got = spec.input_set(5).regions
    want = read_vnnlib(DATA / "acasxu/vnnlib/prop_3.vnnlib").cases[0].region
    assert len(got) == 1
    np.testing.assert_array_equal(got[0].lower, want.lower)
    np.testing.assert_array_equal(got[0].upper, want.upper)
    assert spec.tolerance.norm == "linf" and spec.tolerance.epsilon == 0.05
    with pytest.raises(InputError, match=r"prop_3\.vnnlib: declares 5 inputs .* the model has 7"):
        spec.input_set(7)


def test_mnist_linf_ball_equals_the_vnncomp_box():
    """The ball (center .npy, radius 0.03, clip [0, 1]) against prop_0_0.03.vnnlib, whose bounds
    were written in float32: equal up to float32 rounding, never smaller by more than that."""
    box = load_spec(SPECS / "mnist_linf.toml").input_set(784).regions[0]
    want = read_vnnlib(DATA / "mnist_fc/vnnlib/prop_0_0.03.vnnlib").cases[0].region
    np.testing.assert_allclose(box.lower, want.lower, atol=1e-7)
    np.testing.assert_allclose(box.upper, want.upper, atol=1e-7)
    step = load_spec(SPECS / "mnist_linf.toml").reductions
    assert (step[0].prune_method, step[0].keep, step[1].bits, step[1].per_channel) == ("magnitude", 0.5, 8, True)


def test_polytope_example_membership():
    region = load_spec(SPECS / "acasxu_polytope.toml").input_set(5).regions[0]
    assert isinstance(region, Polytope) and region.bounding_box is not None
    rng = np.random.default_rng(0)
    for x in region.bounding_box.sample(300, rng):
        direct = x[3] - x[4] <= 0 and x[1] + x[2] <= 0.5 and region.bounding_box.contains(x)
        assert region.contains(x) == direct


# ----- the loader dispatch -----------------------------------------------------------------
def test_load_input_set_vnnlib_union_and_toml():
    union = load_input_set(DATA / "acasxu/vnnlib/prop_6.vnnlib", n_inputs=5)
    assert len(union.regions) == 2 and union.source.endswith("prop_6.vnnlib")
    ball = load_input_set(SPECS / "mnist_linf.toml", n_inputs=784)
    assert ball.dim == 784
    with pytest.raises(InputError, match=r"prop_6\.vnnlib: declares 5 inputs"):
        load_input_set(DATA / "acasxu/vnnlib/prop_6.vnnlib", n_inputs=784)
    with pytest.raises(InputError, match=r"mnist_linf\.toml: \[input_set\]: has dimension 784, the model has 5"):
        load_input_set(SPECS / "mnist_linf.toml", n_inputs=5)


def test_load_input_set_rejects_unknown_suffix_and_missing_file(tmp_path: Path):
    other = tmp_path / "set.json"
    other.write_text("{}")
    with pytest.raises(InputError, match=r"set\.json: unsupported input-set file"):
        load_input_set(other)
    with pytest.raises(InputError, match=r"nope\.vnnlib: file not found"):
        load_input_set(tmp_path / "nope.vnnlib")


def test_spec_without_input_set(tmp_path: Path):
    path = write(tmp_path, "")
    with pytest.raises(InputError, match=r"spec\.toml: \[input_set\]: missing"):
        load_input_set(path)


# ----- validation messages -----------------------------------------------------------------
def write(tmp_path: Path, body: str, model: str | None = None) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(f'model = "{model or ACAS}"\n' + body)
    return path


BOX = '[input_set]\ntype = "box"\nlower = [0, 0, 0, 0, 0]\nupper = [1, 1, 1, 1, 1]\n'

BAD_SPECS = [
    ('[[reductions]]\nmethod = "quantize"\nbits = 3\n', "[[reductions]][1].bits: expected 4 or 8, got 3"),
    ('[[reductions]]\nmethod = "exact"\n[[reductions]]\nmethod = "quantize"\nbit = 8\n',
     "[[reductions]][2].bit: unknown key"),
    ('[[reductions]]\nmethod = "shrink"\n', "[[reductions]][1].method: expected one of exact, on-set, approx, prune, quantize, got 'shrink'"),
    ('[[reductions]]\nkeep = 0.5\n', "[[reductions]][1].method: missing"),
    ('[[reductions]]\nmethod = "quantize"\n', "[[reductions]][1].bits: missing"),
    ('[[reductions]]\nmethod = "quantize"\nbits = 8\nper_channel = 1\n', "[[reductions]][1].per_channel: expected true or false, got 1"),
    ('[[reductions]]\nmethod = "prune"\nkeep = 0\n', "[[reductions]][1].keep: expected a number in (0, 1], got 0"),
    ('[[reductions]]\nmethod = "prune"\nprune_method = "confident"\nalpha = 0.1\n',
     "[[reductions]][1].calibration: missing (required by prune_method = 'confident')"),
    ('[[reductions]]\nmethod = "prune"\nkeep = 0.5\nalpha = 0.1\n', "[[reductions]][1].alpha: not an option of prune_method = 'magnitude'"),
    ('[[reductions]]\nmethod = "on-set"\n', "[[reductions]][1].method: 'on-set' needs an [input_set]"),
    (BOX + '[[reductions]]\nmethod = "approx"\n', "[[reductions]][1].method: 'approx' needs a [tolerance]"),
    ('[tolerance]\nnorm = "l3"\n', "[tolerance].norm: expected one of linf, l1, l2, top1, got 'l3'"),
    ('[tolerance]\nepsilon = -1\n', "[tolerance].epsilon: expected a number in [0, inf], got -1"),
    ('[tolerance]\nepsilon = true\n', "[tolerance].epsilon: expected a finite number, got True"),
    ('[tolerance]\nepsilon = nan\n', "[tolerance].epsilon: expected a finite number, got nan"),
    ('[[backends]]\nname = "cplex"\n', "[[backends]][1].name: expected one of interval, smt, sdp, falsify, marabou, got 'cplex'"),
    ('[[backends]]\nname = "smt"\ntimeout = 0\n', "[[backends]][1].timeout: expected a number in (0, inf], got 0"),
    ('[[backends]]\ntimeout = 5\n', "[[backends]][1].name: missing"),
    ('backends = "smt"\n', "backends: expected an array of tables [[backends]], got a string"),
    ('[output]\nreports = ["pdf"]\n', "[output].reports[0]: expected one of md, html, json, got 'pdf'"),
    ('[output]\ndirectory = "x"\n', "[output].directory: unknown key"),
    ('modle = "x.onnx"\n', "modle: unknown key"),
    ('[input_set]\nlower = [0]\nupper = [1]\n', "[input_set].type: missing"),
    ('[input_set]\ntype = "ball"\n', "[input_set].type: expected one of box, linf_ball, polytope, vnnlib, got 'ball'"),
    ('[input_set]\ntype = "box"\nlower = [0, 0]\nupper = [1]\n', "[input_set].upper: expected 2 numbers, got 1"),
    ('[input_set]\ntype = "box"\nlower = [0, 2]\nupper = [1, 1]\n', "[input_set].lower[1]: lower 2.0 exceeds upper 1.0 (empty box)"),
    ('[input_set]\ntype = "box"\nlower = [0, "a"]\nupper = [1, 1]\n', "[input_set].lower[1]: expected a finite number, got 'a'"),
    ('[input_set]\ntype = "box"\nlower = 0\nupper = 1\ndim = 0\n', "[input_set].dim: expected a positive integer, got 0"),
    ('[input_set]\ntype = "box"\nlower = 0\nupper = 1\ncenter = [1]\n', "[input_set].center: unknown key (allowed here: type, lower, upper, dim)"),
    ('[input_set]\ntype = "linf_ball"\ncenter = [0.5]\nradius = -0.1\n', "[input_set].radius: expected a number in [0, inf], got -0.1"),
    ('[input_set]\ntype = "linf_ball"\ncenter = [0.5]\nradius = 0.1\nclip = [1, 0]\n', "[input_set].clip: expected [lo, hi] with lo <= hi"),
    ('[input_set]\ntype = "linf_ball"\ncenter = "c.txt"\nradius = 0.1\n', "[input_set].center: expected a .npy file, got 'c.txt'"),
    ('[input_set]\ntype = "linf_ball"\ncenter = "none.npy"\nradius = 0.1\n', "[input_set].center: file not found"),
    ('[input_set]\ntype = "polytope"\nA = [[1, 0], [0]]\nb = [1, 1]\n', "[input_set].A[1]: expected 2 numbers, got 1"),
    ('[input_set]\ntype = "polytope"\nA = [[1, 0]]\nb = [1, 1]\n', "[input_set].b: expected 1 numbers, got 2"),
    ('[input_set]\ntype = "polytope"\nA = [[1, 0]]\nb = [1]\nlower = 0\n', "[input_set].upper: missing (a bounding box needs both"),
    ('[input_set]\ntype = "vnnlib"\npath = "p.txt"\n', "[input_set].path: expected a .vnnlib file, got 'p.txt'"),
    ('[input_set]\ntype = "vnnlib"\n', "[input_set].path: missing"),
    ("input_set = 3\n", "[input_set]: expected a table, got 3"),
    ('description = 5\n', "description: expected a string, got 5"),
]


@pytest.mark.parametrize("body,message", BAD_SPECS, ids=[m.split(":")[0] for _, m in BAD_SPECS])
def test_validation_messages(tmp_path: Path, body: str, message: str):
    path = write(tmp_path, body)
    with pytest.raises(InputError) as info:
        load_spec(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {message}"), text
    assert "\n" not in text


def test_model_errors(tmp_path: Path):
    with pytest.raises(InputError, match=r"spec\.toml: model: file not found"):
        load_spec(write(tmp_path, "", model=str(tmp_path / "none.onnx")))
    with pytest.raises(InputError, match=r"spec\.toml: model: expected a \.onnx file"):
        load_spec(write(tmp_path, "", model="x.pt"))
    (tmp_path / "spec.toml").write_text("[tolerance]\nnorm = 'l1'\n")
    with pytest.raises(InputError, match=r"spec\.toml: model: missing \(required\)"):
        load_spec(tmp_path / "spec.toml")
    with pytest.raises(InputError, match=r"absent\.toml: cannot read"):
        load_spec(tmp_path / "absent.toml")


@pytest.mark.parametrize("body", ['model = "a.onnx"\nx = [1, 2\n', 'model = "a.onnx"\n[tolerance\n', 'model = \n', "a = 1\na = 2\n"])
def test_toml_syntax_errors_carry_tomllib_position(tmp_path: Path, body: str):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(tomllib.TOMLDecodeError) as ref:
        tomllib.loads(body)
    found = re.search(r"line (\d+), column (\d+)", str(ref.value))
    if found:
        line, col = found.groups()
    else:  # "(at end of document)": the place just after the last character
        assert "end of document" in str(ref.value)
        line, col = body.count("\n") + 1, len(body.split("\n")[-1]) + 1
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}:{line}:{col}: TOML syntax error: ")
    assert "(at line" not in str(info.value)


def test_invalid_vnnlib_in_spec_reports_the_vnnlib_position(tmp_path: Path):
    (tmp_path / "p.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)\n")
    with pytest.raises(InputError, match=r"p\.vnnlib:2:1: unbalanced parentheses"):
        load_spec(write(tmp_path, '[input_set]\ntype = "vnnlib"\npath = "p.vnnlib"\n'))


# ----- input-set kinds ---------------------------------------------------------------------
def test_scalar_box_broadcast(tmp_path: Path):
    spec = load_spec(write(tmp_path, '[input_set]\ntype = "box"\nlower = -1\nupper = 2.5\n'))
    box = spec.input_set(5).regions[0]
    np.testing.assert_array_equal(box.lower, np.full(5, -1.0))
    np.testing.assert_array_equal(box.upper, np.full(5, 2.5))
    with pytest.raises(InputError, match=r"spec\.toml: \[input_set\]\.dim: needed to broadcast"):
        spec.input_set()
    with_dim = load_spec(write(tmp_path, '[input_set]\ntype = "box"\nlower = 0\nupper = [1, 2, 3]\n'))
    np.testing.assert_array_equal(with_dim.input_set().regions[0].lower, [0, 0, 0])
    dim = load_spec(write(tmp_path, '[input_set]\ntype = "box"\nlower = 0\nupper = 1\ndim = 3\n'))
    assert dim.input_set().dim == 3
    with pytest.raises(InputError, match="has dimension 3, the model has 5"):
        dim.input_set(5)


def test_linf_ball_with_inline_center_and_clip(tmp_path: Path):
    spec = load_spec(write(tmp_path, '[input_set]\ntype = "linf_ball"\ncenter = [0.0, 0.5, 1.0]\nradius = 0.25\nclip = [0, 1]\n'))
    box = spec.input_set(3).regions[0]
    np.testing.assert_array_equal(box.lower, [0.0, 0.25, 0.75])
    np.testing.assert_array_equal(box.upper, [0.25, 0.75, 1.0])


def test_linf_ball_center_npy_is_flattened_row_major(tmp_path: Path):
    center = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "c.npy", center)
    spec = load_spec(write(tmp_path, '[input_set]\ntype = "linf_ball"\ncenter = "c.npy"\nradius = 1\n'))
    box = spec.input_set(6).regions[0]
    np.testing.assert_array_equal(box.lower, center.reshape(-1) - 1)
    np.save(tmp_path / "s.npy", np.array(["a"]))
    with pytest.raises(InputError, match=r"\[input_set\]\.center: .*s\.npy: expected a non-empty array of finite numbers"):
        load_spec(write(tmp_path, '[input_set]\ntype = "linf_ball"\ncenter = "s.npy"\nradius = 1\n'))


def test_polytope_without_box_and_full_spec_fields(tmp_path: Path):
    body = ('[input_set]\ntype = "polytope"\nA = [[1, 1], [-1, 0], [0, -1]]\nb = [1, 0, 0]\n'
            '[tolerance]\nnorm = "l2"\nepsilon = 1e-3\n'
            '[[reductions]]\nmethod = "approx"\ntolerance = 0.01\n'
            '[[reductions]]\nmethod = "prune"\nprune_method = "confident"\ncalibration = "cal.npz"\nalpha = 0.1\ndelta = 0.05\n'
            '[output]\ndir = "results"\nreports = ["html", "html", "json"]\n')
    np.savez(tmp_path / "cal.npz", x=np.zeros((2, 2)))
    spec = load_spec(write(tmp_path, body))
    region = spec.input_set(2).regions[0]
    assert isinstance(region, Polytope) and region.bounding_box is None
    assert region.contains([0.5, 0.5]) and not region.contains([0.8, 0.8]) and not region.contains([-0.1, 0.5])
    prune = spec.reductions[1]
    assert (prune.calibration, prune.alpha, prune.delta) == (tmp_path / "cal.npz", 0.1, 0.05)
    assert spec.output.dir == tmp_path / "results" and spec.output.reports == ["html", "json"]
    assert (spec.tolerance.norm, spec.tolerance.epsilon) == ("l2", 1e-3)
    assert isinstance(load_spec(write(tmp_path, BOX)).input_set(5).regions[0], Box)
