"""The VNN-LIB fast path against the exact scanner: bitwise-identical specs on every shared file
and on random generated files (comments and line breaks inside statements, strict atoms, rows,
duplicate bounds with +-0 ties, unions of boxes), and never a spec where the scanner fails."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lumpver.errors import InputError
from lumpver.specs.inputset import Box
from lumpver.specs.vnnlib import parse_vnnlib
from lumpver.specs.vnnlib_fast import fast_parse

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ALL_FILES = sorted(DATA.glob("*/vnnlib/*.vnnlib")) + sorted((DATA / "test").glob("*.vnnlib"))


def region_bytes(r) -> tuple:
    if isinstance(r, Box):
        return ("box", r.lower.tobytes(), r.upper.tobytes())
    bb = None if r.bounding_box is None else region_bytes(r.bounding_box)
    return ("polytope", r.A.shape, r.A.tobytes(), r.b.tobytes(), bb)


def assert_same(fast, exact) -> None:
    """Bitwise equality of two specs (every array compared by its bytes)."""
    assert (fast.n_inputs, fast.n_outputs, fast.strict_relaxed, fast.dropped_empty, fast.path) == (
        exact.n_inputs, exact.n_outputs, exact.strict_relaxed, exact.dropped_empty, exact.path)
    assert len(fast.cases) == len(exact.cases)
    for cf, ce in zip(fast.cases, exact.cases):
        assert region_bytes(cf.region) == region_bytes(ce.region)
        assert len(cf.unsafe.disjuncts) == len(ce.unsafe.disjuncts)
        for (af, bf), (ae, be) in zip(cf.unsafe.disjuncts, ce.unsafe.disjuncts):
            assert af.shape == ae.shape and af.tobytes() == ae.tobytes() and bf.tobytes() == be.tobytes()


def exact_or_error(text: str):
    try:
        return parse_vnnlib(text, "gen.vnnlib", exact=True)
    except InputError as e:
        return e


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_shared_files_take_the_fast_path_and_match(path: Path):
    text = path.read_text()
    fast = fast_parse(text, str(path))
    assert fast is not None  # the real benchmark shapes are all on the fast path
    assert_same(fast, parse_vnnlib(text, str(path), exact=True))


# ----- random files ----------------------------------------------------------------------------
SPACES = [" ", "  ", "\n", "\t", " \n  ", " ; note (assert (<= X_0 9))\n", "\n;;\n", "\r\n"]


class Gen:
    """A random VNN-LIB text in the fast path's shapes, with random layout."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.n_in, self.n_out = int(rng.integers(1, 5)), int(rng.integers(1, 4))

    def ws(self, optional: bool = False) -> str:
        if optional and self.rng.random() < 0.5:
            return ""
        return SPACES[self.rng.integers(len(SPACES))] if self.rng.random() < 0.3 else " "

    def num(self, v: float) -> str:
        k = self.rng.integers(6)
        if k == 0:
            return repr(float(v))
        if k == 1:
            return f"{v:.17e}"
        if k == 2:
            return f"{v:.17E}"
        if k == 3:
            return f"{v:.3f}"
        if k == 4:
            return f"{round(v)}" if round(v) != 0 else self.rng.choice(["0", "-0.0", "0.", "+0.0", ".0"])
        return ("+" if v >= 0 else "") + repr(float(v))

    def atom(self, op: str, a: str, b: str) -> str:
        return f"({self.ws(True)}{op}{self.ws()}{a}{self.ws()}{b}{self.ws(True)})"

    def bound(self, i: int, upper: bool, v: float) -> str:
        """An input bound, the variable on either side, strict or not."""
        strict = self.rng.random() < 0.1
        if self.rng.random() < 0.5:
            op = ("<" if upper else ">") + ("" if strict else "=")
            return self.atom(op, f"X_{i}", self.num(v))
        op = (">" if upper else "<") + ("" if strict else "=")
        return self.atom(op, self.num(v), f"X_{i}")

    def box_atoms(self, shift: float = 0.0) -> list[str]:
        atoms = []
        for i in range(self.n_in):
            lo = float(self.rng.choice([0.0, -0.0, self.rng.normal()])) + shift
            hi = lo + float(self.rng.choice([0.0, abs(self.rng.normal())]))
            atoms += [self.bound(i, False, lo), self.bound(i, True, hi)]
            if self.rng.random() < 0.2:  # a duplicate, sometimes the same value with the other zero sign
                same = -lo if lo == 0 else lo
                atoms.append(self.bound(i, False, same if self.rng.random() < 0.5 else lo - 1))
        self.rng.shuffle(atoms)
        return atoms

    def out_atom(self) -> str:
        j = int(self.rng.integers(self.n_out))
        op = str(self.rng.choice(["<=", ">=", "<", ">"]))
        if self.n_out > 1 and self.rng.random() < 0.5:
            k = int(self.rng.integers(self.n_out))
            return self.atom(op, f"Y_{j}", f"Y_{k}")
        if self.rng.random() < 0.5:
            return self.atom(op, f"Y_{j}", self.num(self.rng.normal(0, 3)))
        return self.atom(op, self.num(self.rng.normal(0, 3)), f"Y_{j}")

    def group(self, head: str, parts: list[str]) -> str:
        return f"({self.ws(True)}{head}{self.ws()}" + self.ws().join(parts) + f"{self.ws(True)})"

    def statement(self, body: str) -> str:
        return f"({self.ws(True)}assert{self.ws()}{body}{self.ws(True)})"

    def text(self) -> str:
        rng = self.rng
        decls = [f"X_{i}" for i in range(self.n_in)] + [f"Y_{j}" for j in range(self.n_out)]
        rng.shuffle(decls)
        out = ["(set-logic QF_LRA)\n"] if rng.random() < 0.2 else []
        out += [f"({self.ws(True)}declare-const{self.ws()}{d}{self.ws()}Real{self.ws(True)}){self.ws()}" for d in decls]
        shape = rng.integers(3)
        if shape == 0:  # one box, top-level atoms or one (and ...)
            atoms = self.box_atoms()
            if self.n_in > 1 and rng.random() < 0.3:
                atoms.append(self.atom("<=", "X_0", "X_1"))  # a polytope row
            if rng.random() < 0.5:
                out += [self.statement(a) + self.ws() for a in atoms]
            else:
                out.append(self.statement(self.group("and", atoms)))
        else:  # a union of boxes, each with (or without) its own output atoms
            groups = []
            for g in range(int(rng.integers(1, 4))):
                atoms = self.box_atoms(shift=float(g) * 10 * (shape - 1))
                if rng.random() < 0.5:
                    atoms.append(self.out_atom())
                groups.append(self.group("and", atoms))
            out.append(self.statement(self.group("or", groups)))
        k = rng.integers(3)
        if k == 1:
            out.append(self.statement(self.out_atom()))
        elif k == 2:
            parts = [self.out_atom() if rng.random() < 0.5 else self.group("and", [self.out_atom(), self.out_atom()])
                     for _ in range(int(rng.integers(1, 4)))]
            out.append(self.statement(self.group("or", parts)))
        if rng.random() < 0.2:
            out.append("\n(check-sat)\n")
        return self.ws(True).join(out)


@pytest.mark.parametrize("seed", range(8))
def test_random_files_fast_equals_exact(seed: int):
    rng = np.random.default_rng(seed)
    taken = 0
    for _ in range(60):
        text = Gen(rng).text()
        exact = exact_or_error(text)
        fast = fast_parse(text, "gen.vnnlib")
        if isinstance(exact, InputError):
            assert fast is None, text
            continue
        assert fast is not None, text  # every generated shape is on the fast path
        assert_same(fast, exact)
        taken += 1
    assert taken >= 30


@pytest.mark.parametrize("seed", range(4))
def test_corrupted_files_never_give_a_different_answer(seed: int):
    """Random one-token corruptions: the fast path gives the scanner's spec or declines (None),
    and ``parse_vnnlib`` raises exactly the scanner's message."""
    rng = np.random.default_rng(100 + seed)
    junk = ["(", ")", "X_9", "Y_7", "X_01", "1.5.2", "(- 1)", "and", "or", "assert", "foo", "1_0", "inf",
            "(declare-const X_0 Real)", "Real", "<=", "(and)", "(or)", "\x01", "é", ";", "X_0", "1e999"]
    declined = 0
    for _ in range(120):
        text = Gen(rng).text()
        at = int(rng.integers(len(text) + 1))
        cut = int(rng.integers(0, 4))
        text = text[:at] + (str(rng.choice(junk)) if rng.random() < 0.7 else "") + text[at + cut:]
        exact = exact_or_error(text)
        fast = fast_parse(text, "gen.vnnlib")
        if isinstance(exact, InputError):
            assert fast is None, text
            with pytest.raises(InputError) as info:
                parse_vnnlib(text, "gen.vnnlib")
            assert str(info.value) == str(exact)
            declined += 1
        elif fast is not None:
            assert_same(fast, exact)
    assert declined >= 20  # the corruptions did produce malformed files


def test_large_mixed_file_on_the_fast_path():
    """20k inputs: top-level bounds with duplicates, then a 3-way union of boxes with outputs."""
    rng = np.random.default_rng(7)
    n = 20_000
    lo = rng.normal(size=n)
    hi = lo + rng.uniform(0, 1, n)
    lo[0], hi[0] = -10.0, 10.0
    lo, hi = lo.tolist(), hi.tolist()  # Python floats: repr is the shortest round-trip form
    parts = [f"(declare-const X_{i} Real)\n" for i in range(n)] + ["(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"]
    parts += [f"(assert (<= X_{i} {hi[i]!r}))\n(assert (>= X_{i} {lo[i]!r}))\n" for i in range(n)]
    parts += [f"(assert (<= {lo[i] - 1!r} X_{i}))\n" for i in range(0, n, 7)]  # constant on the left, weaker
    parts.append("(assert (or\n" + "".join(
        f"  (and (<= X_0 {k}.5) (>= X_0 {k}) (<= Y_{k % 2} Y_{1 - k % 2}))\n" for k in range(3)) + "))\n")
    text = "".join(parts)
    fast = fast_parse(text, "big.vnnlib")
    assert fast is not None and len(fast.cases) == 3
    assert_same(fast, parse_vnnlib(text, "big.vnnlib", exact=True))


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_tokenizer_chunk_boundaries(monkeypatch, chunk: int):
    """Tiny chunks put chunk boundaries inside words, between parentheses and at whitespace."""
    import lumpver.specs.vnnlib_fast as fast

    rng = np.random.default_rng(chunk)
    texts = [Gen(rng).text() for _ in range(25)]
    expected = [fast_parse(t, "gen.vnnlib") for t in texts]  # default chunk: one chunk per file
    monkeypatch.setattr(fast, "_CHUNK", chunk)
    for text, want in zip(texts, expected):
        got = fast_parse(text, "gen.vnnlib")
        assert (got is None) == (want is None)
        if want is not None:
            assert_same(got, want)
            assert_same(got, parse_vnnlib(text, "gen.vnnlib", exact=True))
