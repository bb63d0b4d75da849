"""VNN-LIB reader: every shared property file against independent extractions, malformed files
with their exact line:col, DNF semantics against a tiny direct evaluator, and a round-trip property."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lumpver.errors import InputError
from lumpver.specs.inputset import Box, Polytope
from lumpver.specs.vnnlib import parse_vnnlib, read_vnnlib

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BAD = Path(__file__).resolve().parent / "data" / "bad_vnnlib"
ALL_FILES = sorted(DATA.glob("*/vnnlib/*.vnnlib")) + sorted((DATA / "test").glob("*.vnnlib"))


# ----- independent helpers -------------------------------------------------------------------
def regex_boxes(text: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Input boxes by plain regexes: one per single-line ``(and ...)`` group that mentions X, else
    one from all X bounds in the file."""
    text = re.sub(r";[^\n]*", "", text)
    groups = [g for g in re.findall(r"\(and ([^\n]*)\)", text) if "X_" in g] or [text]
    boxes = []
    for g in groups:
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        for op, i, c in re.findall(r"\((<=|>=) X_(\d+) ([-+\d.eE]+)\)", g):
            i, c = int(i), float(c)
            if op == "<=":
                hi[i] = min(hi[i], c)
            else:
                lo[i] = max(lo[i], c)
        boxes.append((lo, hi))
    return boxes


def sexprs(text: str) -> list:
    """Nested lists of a whole file (recursive; fine for the small files used here)."""
    toks = re.findall(r"\(|\)|[^\s()]+", re.sub(r";[^\n]*", "", text))
    pos = 0

    def read():
        nonlocal pos
        t = toks[pos]
        pos += 1
        if t != "(":
            return t
        out = []
        while toks[pos] != ")":
            out.append(read())
        pos += 1
        return out

    out = []
    while pos < len(toks):
        out.append(read())
    return out


def holds(expr, env: dict) -> bool:
    """The plain meaning of a formula at a point."""
    head = expr[0]
    if head == "and":
        return all(holds(e, env) for e in expr[1:])
    if head == "or":
        return any(holds(e, env) for e in expr[1:])
    a, b = (env[t] if t in env else float(t) for t in expr[1:])
    return a <= b if head == "<=" else a >= b


def formula_holds(formula: list, x: np.ndarray, y: np.ndarray) -> bool:
    env = {f"X_{i}": v for i, v in enumerate(x)} | {f"Y_{j}": v for j, v in enumerate(y)}
    return all(holds(f, env) for f in formula)


def file_is_unsafe(text: str, x: np.ndarray, y: np.ndarray) -> bool:
    return formula_holds([s[1] for s in sexprs(text) if s[0] == "assert"], x, y)


def spec_is_unsafe(spec, x, y) -> bool:
    return any(c.region.contains(x) and c.unsafe.is_unsafe(y) for c in spec.cases)


# ----- the shared benchmark files ------------------------------------------------------------
def test_all_shared_files_are_found():
    assert len(ALL_FILES) >= 10 + 10 + 4  # ACAS Xu props, MNIST props, test props


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_boxes_match_regex_extraction(path: Path):
    text = path.read_text()
    spec = read_vnnlib(path)
    assert spec.n_inputs == len(re.findall(r"declare-const X_", text))
    assert spec.n_outputs == len(re.findall(r"declare-const Y_", text))
    expected = regex_boxes(text, spec.n_inputs)
    got = spec.input_set().boxes()
    assert len(got) == len(expected)
    for box, (lo, hi) in zip(got, expected):
        assert isinstance(box, Box)
        np.testing.assert_array_equal(box.lower, lo)
        np.testing.assert_array_equal(box.upper, hi)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_unsafe_set_matches_direct_evaluation(path: Path):
    text = path.read_text()
    spec = read_vnnlib(path)
    formula = [s[1] for s in sexprs(text) if s[0] == "assert"]
    consts = [float(c) for c in re.findall(r"Y_\d+ ([-+\d.eE]+)\)", text)] or [0.0]
    rng = np.random.default_rng(0)
    boxes = spec.input_set().boxes()
    lo = np.min([b.lower for b in boxes], axis=0)
    hi = np.max([b.upper for b in boxes], axis=0)
    width = hi - lo + 1e-3
    hits = 0
    for k in range(150):
        if k % 2:
            x = rng.uniform(lo - 0.1 * width, hi + 0.1 * width)
        else:
            x = boxes[k % len(boxes)].sample(1, rng, corners=False)[0]
        y = rng.normal(0.0, 4.0, spec.n_outputs)
        if k % 5 == 0:
            y[rng.integers(spec.n_outputs)] = y[0]  # ties exercise the non-strict atoms
        if k % 3 == 0:  # near and on the file's output constants
            y = rng.choice(consts, spec.n_outputs) + rng.choice([-1e-3, 0.0, 1e-3], spec.n_outputs)
        want = formula_holds(formula, x, y)
        assert spec_is_unsafe(spec, x, y) == want, (k, x, y)
        hits += want
    assert hits > 0  # the sample reached the unsafe set at least once


def test_prop6_is_a_union_of_two_boxes_sharing_the_output_disjunction():
    spec = read_vnnlib(DATA / "acasxu/vnnlib/prop_6.vnnlib")
    assert len(spec.cases) == 2 and len(spec.input_set().regions) == 2
    assert all(len(c.unsafe.disjuncts) == 4 for c in spec.cases)
    with pytest.raises(InputError, match="prop_6.vnnlib: .*2 different input regions"):
        spec.output_property()


def test_prop2_output_conjunction():
    spec = read_vnnlib(DATA / "acasxu/vnnlib/prop_2.vnnlib")
    prop = spec.output_property()
    assert len(prop.disjuncts) == 1 and prop.disjuncts[0][0].shape == (4, 5)
    assert prop.is_unsafe([5, 1, 2, 3, 4]) and not prop.is_unsafe([1, 5, 2, 3, 4])


def test_dimensions_are_checked_against_the_model():
    path = DATA / "acasxu/vnnlib/prop_1.vnnlib"
    read_vnnlib(path, n_inputs=5, n_outputs=5)
    with pytest.raises(InputError, match=r"prop_1\.vnnlib: declares 5 inputs .* the model has 6"):
        read_vnnlib(path, n_inputs=6)
    with pytest.raises(InputError, match=r"prop_1\.vnnlib: declares 5 outputs .* the model has 10"):
        read_vnnlib(path, n_outputs=10)


# ----- malformed files -----------------------------------------------------------------------
BAD_CASES = {
    "assert_two.vnnlib": ("3:20", "expected one constraint in (assert ...), found '('"),
    "bad_number.vnnlib": ("4:19", "expected a number or a variable, found '1.5.2'"),
    "bad_sort.vnnlib": ("1:20", "expected the sort Real, found 'Int'"),
    "declared_twice.vnnlib": ("2:16", "variable X_0 is declared twice"),
    "empty.vnnlib": ("2:16", "empty input set: X_1 has lower bound 1.0 > upper bound 0.5"),
    "extra_paren.vnnlib": ("3:20", "unbalanced parentheses: unexpected ')'"),
    "missing_bound.vnnlib": ("2:16", "missing upper bound for input X_1"),
    "missing_operand.vnnlib": ("5:17", "expected a number or a variable, found ')'"),
    "mixed_xy.vnnlib": ("5:9", "comparing an input X_i with an output Y_j is not supported"),
    "non_numeric.vnnlib": ("3:17", "unknown variable 'abc': expected X_<i>, Y_<j> or a number"),
    "unclosed.vnnlib": ("5:1", "unbalanced parentheses: this '(' is never closed"),
    "unclosed_before_next.vnnlib": ("3:9", "this '(' is not closed before the next command at 6:1"),
    "undeclared.vnnlib": ("5:13", "undeclared variable X_1"),
    "unknown_command.vnnlib": ("6:2", "unknown command 'define-fun'"),
    "unknown_op.vnnlib": ("5:14", "unknown operator 'xor'"),
    "unknown_var.vnnlib": ("2:16", "unknown variable 'Z_0'"),
    "wrong_index.vnnlib": ("2:16", "wrong index: X_2 is declared but X_1 is not"),
}


def test_every_bad_file_has_a_case():
    assert sorted(p.name for p in BAD.glob("*.vnnlib")) == sorted(BAD_CASES)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_malformed_file_names_line_and_column(name: str):
    where, what = BAD_CASES[name]
    path = BAD / name
    with pytest.raises(InputError) as info:
        read_vnnlib(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{where}: "), message
    assert what in message
    assert "\n" not in message


def test_unreadable_and_non_utf8(tmp_path: Path):
    with pytest.raises(InputError, match="missing.vnnlib: cannot read"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    bad = tmp_path / "latin.vnnlib"
    bad.write_bytes(b"; caf\xe9\n")
    with pytest.raises(InputError, match="latin.vnnlib: not UTF-8"):
        read_vnnlib(bad)


# ----- semantics of the subset ---------------------------------------------------------------
HEAD = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
XBOX = "(>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1)"
XBOX2 = "(>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1)"


def test_same_input_part_gives_one_case_with_several_output_disjuncts():
    spec = parse_vnnlib(HEAD + f"(assert (or (and {XBOX} (<= Y_0 Y_1)) (and {XBOX} (>= Y_0 5))))")
    assert len(spec.cases) == 1 and len(spec.cases[0].unsafe.disjuncts) == 2
    prop = spec.output_property()
    assert prop.is_unsafe([0, 1]) and prop.is_unsafe([6, 0]) and not prop.is_unsafe([2, 1])


def test_different_input_parts_give_one_case_each():
    spec = parse_vnnlib(HEAD + f"(assert (or (and {XBOX} (<= Y_0 Y_1)) (and {XBOX2} (>= Y_0 5))))")
    assert len(spec.cases) == 2
    assert spec.input_set().contains([2.5, 0.5]) and not spec.input_set().contains([1.5, 0.5])
    assert spec_is_unsafe(spec, np.array([2.5, 0.5]), np.array([6, 0]))
    assert not spec_is_unsafe(spec, np.array([0.5, 0.5]), np.array([6, 0]))


def test_top_level_conjunction_of_disjunctions_is_factored():
    text = HEAD + f"(assert (or (and {XBOX}) (and {XBOX2})))\n" + "(assert (or (<= Y_0 0) (<= Y_1 0)))\n"
    text += "(assert (or (>= Y_0 -1) (>= Y_1 -1)))\n"
    spec = parse_vnnlib(text)
    assert len(spec.cases) == 2 and all(len(c.unsafe.disjuncts) == 4 for c in spec.cases)
    rng = np.random.default_rng(1)
    for _ in range(200):
        x, y = rng.uniform(-0.5, 3.5, 2), rng.uniform(-2, 2, 2)
        assert spec_is_unsafe(spec, x, y) == file_is_unsafe(text, x, y)


def test_constants_on_either_side_scientific_and_negation():
    spec = parse_vnnlib(HEAD + "(assert (<= -2.5E+02 X_0))(assert (>= 1e-3 X_0))\n"
                               "(assert (<= (- 1.5) X_1)) (assert (<= X_1 +2.))\n(assert (<= Y_0 .5))")
    box = spec.cases[0].region
    np.testing.assert_array_equal(box.lower, [-250.0, -1.5])
    np.testing.assert_array_equal(box.upper, [1e-3, 2.0])
    assert spec.output_property().is_unsafe([0.5, 9]) and not spec.output_property().is_unsafe([0.6, 9])


def test_linear_input_atoms_give_a_polytope_with_bounding_box():
    spec = parse_vnnlib(HEAD + f"(assert (and {XBOX} (<= X_0 X_1)))")
    region = spec.cases[0].region
    assert isinstance(region, Polytope) and region.bounding_box is not None
    for x in ([0.2, 0.7], [0.7, 0.2], [1.0, 1.0], [1.2, 1.5]):
        assert region.contains(x) == (0 <= x[0] <= 1 and 0 <= x[1] <= 1 and x[0] <= x[1])


def test_polytope_without_all_bounds_keeps_its_bounds_as_rows():
    spec = parse_vnnlib(HEAD + "(assert (>= X_0 0)) (assert (<= X_0 X_1)) (assert (<= X_1 4))")
    region = spec.cases[0].region
    assert isinstance(region, Polytope) and region.bounding_box is None
    for x in ([1, 2], [-1, 2], [3, 2], [1, 5]):
        assert region.contains(x) == (x[0] >= 0 and x[0] <= x[1] and x[1] <= 4)


def test_strict_atoms_are_closed_and_counted():
    spec = parse_vnnlib(HEAD + f"(assert (and {XBOX} (< Y_0 1) (> Y_1 2)))")
    assert spec.strict_relaxed == 2
    assert spec.output_property().is_unsafe([1.0, 2.0])  # boundary included (closure)


def test_empty_case_is_dropped_from_a_union_and_false_output_disjunct_removed():
    spec = parse_vnnlib(HEAD + f"(assert (or (and {XBOX} (<= Y_0 0)) (and (>= X_0 2) (<= X_0 1) (>= X_1 0) (<= X_1 1))))"
                               "\n(assert (or (<= 1 0) (<= Y_1 3)))")
    assert spec.dropped_empty == 1 and len(spec.cases) == 1
    assert len(spec.cases[0].unsafe.disjuncts) == 1


def test_comments_and_statements_over_several_lines():
    text = HEAD + "(assert ; the first bound\n  (<=\n X_0 ; inner comment\n 1))\n(assert (>= X_0 0))" \
                  "(assert (and (>= X_1 ; c\n 0)(<= X_1 1)))"
    box = parse_vnnlib(text).cases[0].region
    np.testing.assert_array_equal(box.lower, [0, 0])
    np.testing.assert_array_equal(box.upper, [1, 1])


def test_large_synthetic_file_parses_exactly():
    n = 20_000
    rng = np.random.default_rng(3)
    lo = rng.normal(size=n)
    hi = lo + rng.uniform(0, 1, n)
    parts = [f"(declare-const X_{i} Real)\n" for i in range(n)] + ["(declare-const Y_0 Real)\n"]
    parts += [f"(assert (<= X_{i} {float(hi[i])!r}))\n(assert (>= X_{i} {float(lo[i])!r}))\n" for i in range(n)]
    box = parse_vnnlib("".join(parts) + "(assert (<= Y_0 0))").cases[0].region
    np.testing.assert_array_equal(box.lower, lo)
    np.testing.assert_array_equal(box.upper, hi)


# ----- round trip (hypothesis) ---------------------------------------------------------------
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def boxes_as_text(draw):
    n = draw(st.integers(1, 6))
    a = draw(st.lists(finite, min_size=n, max_size=n))
    b = draw(st.lists(finite, min_size=n, max_size=n))
    lo, hi = np.minimum(a, b), np.maximum(a, b)

    def ws():
        return draw(st.sampled_from([" ", "  ", "\n", "\t", " ; note (assert\n", "\n\n  "]))

    def num(v):
        return draw(st.sampled_from([repr(float(v)), f"{v:.17e}", f"{v:.17E}"]))

    atoms = []
    for i in range(n):
        for value, upper in ((hi[i], True), (lo[i], False)):
            if draw(st.booleans()):  # variable on the left
                atoms.append(f"({'<=' if upper else '>='}{ws()}X_{i}{ws()}{num(value)}{ws()})")
            else:  # constant on the left
                atoms.append(f"({'>=' if upper else '<='}{ws()}{num(value)}{ws()}X_{i})")
    order = draw(st.permutations(range(len(atoms))))
    decls = "".join(f"(declare-const{ws()}X_{i}{ws()}Real){ws()}" for i in range(n)) + "(declare-const Y_0 Real)\n"
    if draw(st.booleans()):
        body = "".join(f"(assert{ws()}{atoms[k]}){ws()}" for k in order)
    else:
        body = f"(assert{ws()}(and{ws()}" + ws().join(atoms[k] for k in order) + "))"
    return decls + body + "\n(assert (<= Y_0 0))\n", lo, hi


@settings(max_examples=150, deadline=None)
@given(boxes_as_text())
def test_random_boxes_round_trip(case):
    text, lo, hi = case
    spec = parse_vnnlib(text)
    assert len(spec.cases) == 1
    np.testing.assert_array_equal(spec.cases[0].region.lower, lo)
    np.testing.assert_array_equal(spec.cases[0].region.upper, hi)


ACAS_1_1 = "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx"


def _inputs_only(path: Path, lo: float, hi: float, n: int = 5) -> Path:
    decl = [f"(declare-const X_{i} Real)" for i in range(n)]
    bounds = [f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))" for i in range(n)]
    path.write_text("\n".join(decl + bounds) + "\n")
    return path


def test_inputs_only_vnnlib_is_an_input_set_not_a_property(tmp_path, shared_data):
    """CONTRACT.md: a .vnnlib that declares only inputs is a valid --input-set (the format other
    equivalence checkers use); as a verify property it is refused before any work."""
    from lumpver.specs.load import load_input_set

    src = _inputs_only(tmp_path / "x.vnnlib", -0.1, 0.1)
    box = load_input_set(src, 5).regions[0]
    assert np.array_equal(box.lower, np.full(5, -0.1)) and np.array_equal(box.upper, np.full(5, 0.1))
    with pytest.raises(InputError, match="no output variable"):
        read_vnnlib(src, n_inputs=5, n_outputs=5)
    r = subprocess.run([sys.executable, "-m", "lumpver", "verify", str(shared_data / ACAS_1_1), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no output variable" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_inputs_only_vnnlib_drives_on_set_reduction(tmp_path, shared_data):
    """An inputs-only file drives on-set reduction; onnxruntime agrees on points of the box."""
    from lumpver.ir.runtime import run_onnx

    src = _inputs_only(tmp_path / "x.vnnlib", -0.05, 0.05)
    out = tmp_path / "r.onnx"
    r = subprocess.run([sys.executable, "-m", "lumpver", "reduce", "-q", str(shared_data / ACAS_1_1), "-o", str(out),
                        "--mode", "on-set", "--input-set", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(0).uniform(-0.05, 0.05, size=(200, 5)).astype(np.float32)
    assert np.max(np.abs(run_onnx(shared_data / ACAS_1_1, x) - run_onnx(out, x))) < 1e-4
