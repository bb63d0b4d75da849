"""VNN-LIB reader for the subset public verification benchmarks use (DESIGN.md §3 input sets, §5).

Supported: ``declare-const X_i Real`` / ``Y_j Real``; ``assert``; ``and``; ``or``; the atoms
``(<= a b)`` and ``(>= a b)`` where ``a`` and ``b`` are each a declared variable or a constant
(decimal or scientific notation, or the SMT-LIB negation ``(- c)``), so constants may stand on
either side and two variables of the same kind may be compared (``(<= Y_0 Y_1)``); comments
(``;`` to end of line); statements over several lines. The harmless SMT-LIB commands
``set-logic``, ``set-info``, ``set-option``, ``check-sat``, ``get-model`` and ``exit`` are ignored.

Documented choices
------------------
* Strict ``<`` / ``>`` are read as ``<=`` / ``>=`` (their closure) and counted in
  :attr:`VnnlibSpec.strict_relaxed`. Input and unsafe sets only grow, so a proof that no input
  reaches the unsafe set stays sound; a counterexample found exactly on such a boundary must be
  checked against the strict atom by the caller (``verify`` replays counterexamples anyway).
* An atom comparing an input with an output (``(<= X_0 Y_0)``) is not in the subset: error.
* Semantics (VNN-LIB convention): the conjunction of all assertions describes the *unsafe* set.
  It is brought into the form ``OR_k (x in R_k and y in U_k)`` where each ``U_k`` is itself a
  disjunction of polytopes; disjuncts with the same input part are grouped into one
  :class:`Case`, so "input box AND (or over output conjunctions)" gives one case with several
  output disjuncts and ``(or (and X.. Y..) (and X.. Y..))`` gives one case per input region.
  Assertions are combined by factors (input-only, output-only, mixed), never by expanding the
  whole formula, and the expansion is capped at :data:`MAX_DISJUNCTS`.
* A case whose input region is empty is dropped (it adds nothing to a union); if every case is
  empty the file is rejected ("empty input set").

Implementation: two paths with one semantics. :mod:`lumpver.specs.vnnlib_fast` handles the shapes
public benchmarks use (declarations, ``(assert atom)``, ``(assert (and ...))``, ``(assert (or
(and ...) ...))``, comments and line breaks anywhere) in bulk: a numpy tokenizer over the bytes,
vectorised recognition of atoms and variables, one ``float`` per constant. Anything else, and every
malformed file, goes to the exact scanner below, which gives the result or the precise message.
The exact scanner: one compiled regular expression scans the whole text (no recursion); atoms
and ``(assert atom)`` statements are single tokens, and single-variable input bounds go straight
into per-variable bound tables. Both feed the same ``build`` step; line and column are computed
only when an error is reported.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from lumpver.errors import InputError
from lumpver.specs.inputset import Box, InputSet, OutputProperty, Polytope

#: Largest number of (input case x output disjunct) pairs an expansion may produce.
MAX_DISJUNCTS = 100_000

Region = Union[Box, Polytope]

_SKIP = r"(?:\s+|;[^\n]*)*+"  # whitespace and comments, possessive (no backtracking)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = r"(?:(" + _NUM + r")(?=[\s)])|([^\s();]+))"  # a number, or any other word (resolved later)
_ATOM = r"\(\s*(<=|>=|<|>)\s+" + _TERM + r"\s+" + _TERM + r"\s*\)"
_TOKEN = re.compile(
    _SKIP
    + r"(?:(?P<aatom>\(\s*assert\s*" + _ATOM + r"\s*\))"
    + r"|(?P<atom>" + _ATOM + r")"
    + r"|(?P<decl>\(\s*declare-const\s+(?:(([XY])_(0|[1-9]\d*))\s+Real\s*\)|([^\s();]+)\s+([^\s();]+)\s*\)))"
    + r"|(?P<lp>\()|(?P<rp>\))|(?P<sym>[^\s();]+)|(?P<end>\Z))"
)
_G = _TOKEN.groupindex
_AATOM, _ATOMG, _DECL = _G["aatom"], _G["atom"], _G["decl"]
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_VARNAME = re.compile(r"([XY])_(0|[1-9]\d*)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.'!?$%&*/<=>@^~+-]*")
_WORD = re.compile(r"[^\s();]+")
_COMPARE = ("<=", ">=", "<", ">")
_IGNORED = ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit")
_COMMANDS = ("declare-const", "assert") + _IGNORED


@dataclass
class Case:
    """One input region and the unsafe output set to check on it (DESIGN.md §3)."""

    region: Region
    unsafe: OutputProperty


@dataclass
class VnnlibSpec:
    """A parsed VNN-LIB property: the unsafe set as ``OR_k (x in region_k and y in unsafe_k)``."""

    n_inputs: int
    n_outputs: int
    cases: list[Case]
    path: str | None = None
    strict_relaxed: int = 0  # number of strict atoms read as non-strict (module docstring)
    dropped_empty: int = 0  # cases dropped because their input region is empty

    def regions(self) -> list[Region]:
        """The distinct input regions, in file order."""
        seen: dict[tuple, Region] = {}
        for case in self.cases:
            seen.setdefault(_region_key(case.region), case.region)
        return list(seen.values())

    def input_set(self) -> InputSet:
        """The union of the case regions (deduplicated)."""
        return InputSet(self.regions(), self.path)

    def output_property(self) -> OutputProperty:
        """The unsafe output set, when every case has the same input region.

        Raises :class:`InputError` otherwise (then use :attr:`cases`).
        """
        if len(self.regions()) != 1:
            raise InputError(
                f"the property has {len(self.regions())} different input regions; "
                "it has no single output property (check each case)",
                self.path,
            )
        return OutputProperty([d for case in self.cases for d in case.unsafe.disjuncts])


def read_vnnlib(path: str | os.PathLike, n_inputs: int | None = None, n_outputs: int | None = None) -> VnnlibSpec:
    """Parse a ``.vnnlib`` file; check its dimensions against a model's when given.

    Raises :class:`InputError` (``file:line:col: what was expected``) on malformed input.
    """
    name = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", name) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", name) from None
    spec = parse_vnnlib(text, name)
    check_dims(spec, n_inputs, n_outputs)
    return spec


def check_dims(spec: VnnlibSpec, n_inputs: int | None, n_outputs: int | None) -> None:
    """InputError naming the file when the declared sizes differ from the model's."""
    if n_inputs is not None and spec.n_inputs != n_inputs:
        raise InputError(f"declares {spec.n_inputs} inputs X_0..X_{spec.n_inputs - 1}, the model has {n_inputs}", spec.path)
    if n_outputs is not None and spec.n_outputs != n_outputs:
        raise InputError(f"declares {spec.n_outputs} outputs Y_0..Y_{spec.n_outputs - 1}, the model has {n_outputs}", spec.path)


def parse_vnnlib(text: str, path: str = "<string>", exact: bool = False) -> VnnlibSpec:
    """Parse VNN-LIB text (see the module docstring for the subset and the semantics).

    Tries the bulk fast path (:mod:`lumpver.specs.vnnlib_fast`) first; anything it does not handle,
    and every malformed file, goes through the exact scanner, which gives the same result and the
    precise ``file:line:col`` message. ``exact=True`` uses the exact scanner only (tests).
    """
    if not exact:
        from lumpver.specs.vnnlib_fast import fast_parse

        spec = fast_parse(text, path)
        if spec is not None:
            return spec
    return _Parser(text, path).parse()


# ----- conjunctions ------------------------------------------------------------------------
# A variable is an int: X_i -> i, Y_j -> ~j (negative). A constant is a float.
# A normalised atom is a pair (p, q) meaning p <= q.
Row = tuple[tuple[tuple[int, float], ...], float]  # sum coef * var <= b


class _Conj:
    """A conjunction of atoms: input bounds, input rows and output rows (``A y <= b``)."""

    __slots__ = ("lo", "hi", "xrows", "yrows", "false")

    def __init__(self) -> None:
        self.lo: dict[int, float] = {}
        self.hi: dict[int, float] = {}
        self.xrows: list[Row] = []
        self.yrows: list[Row] = []
        self.false = False

    def add(self, p: int | float, q: int | float) -> None:
        pv, qv = p.__class__ is int, q.__class__ is int
        if pv and not qv:
            if p >= 0:
                h = self.hi.get(p)
                if h is None or q < h:
                    self.hi[p] = q
            else:
                self.yrows.append((((~p, 1.0),), q))
        elif qv and not pv:
            if q >= 0:
                lo = self.lo.get(q)
                if lo is None or p > lo:
                    self.lo[q] = p
            else:
                self.yrows.append((((~q, -1.0),), -p))
        elif pv and qv:
            if p == q:
                return  # v <= v always holds
            if p >= 0:
                self.xrows.append((((p, 1.0), (q, -1.0)), 0.0))
            else:
                self.yrows.append((((~p, 1.0), (~q, -1.0)), 0.0))
        elif not p <= q:
            self.false = True

    def merge(self, other: "_Conj") -> None:
        for k, v in other.lo.items():
            if k not in self.lo or v > self.lo[k]:
                self.lo[k] = v
        for k, v in other.hi.items():
            if k not in self.hi or v < self.hi[k]:
                self.hi[k] = v
        self.xrows.extend(other.xrows)
        self.yrows.extend(other.yrows)
        self.false = self.false or other.false

    def copy(self) -> "_Conj":
        c = _Conj()
        c.merge(self)
        return c

    def has_x(self) -> bool:
        return bool(self.lo or self.hi or self.xrows)

    def x_only(self) -> "_Conj":
        c = _Conj()
        c.lo, c.hi, c.xrows, c.false = dict(self.lo), dict(self.hi), list(self.xrows), self.false
        return c

    def x_key(self) -> tuple:
        return (tuple(sorted(self.lo.items())), tuple(sorted(self.hi.items())), tuple(self.xrows), self.false)


def _and(children: list) -> list[_Conj]:
    """DNF of a conjunction of atoms and DNFs (product only over real disjunctions)."""
    base = _Conj()
    lo, hi, add = base.lo, base.hi, base.add
    rest = []
    for child in children:  # atoms first (conjunction commutes); input bounds inline
        if child.__class__ is not tuple:
            rest.append(child)
            continue
        p, q = child
        if q.__class__ is float and p.__class__ is int and p >= 0:
            h = hi.get(p)
            if h is None or q < h:
                hi[p] = q
        elif p.__class__ is float and q.__class__ is int and q >= 0:
            h = lo.get(q)
            if h is None or p > h:
                lo[q] = p
        else:
            add(p, q)
    dnf = [base]
    for child in rest:
        if len(child) == 1:
            for c in dnf:
                c.merge(child[0])
        else:
            if len(dnf) * len(child) > MAX_DISJUNCTS:
                raise OverflowError
            new = []
            for c in dnf:
                for d in child:
                    e = c.copy()
                    e.merge(d)
                    new.append(e)
            dnf = new
    return dnf


def _or(children: list) -> list[_Conj]:
    dnf: list[_Conj] = []
    for child in children:
        if isinstance(child, tuple):
            c = _Conj()
            c.add(*child)
            dnf.append(c)
        else:
            dnf.extend(child)
    return dnf


# ----- the parser --------------------------------------------------------------------------
@dataclass
class _Frame:
    open_pos: int
    head: str | None = None
    head_pos: int = -1
    children: list = field(default_factory=list)  # str | float | atom tuple | DNF list
    pos: list = field(default_factory=list)


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.decl: dict[str, int] = {}  # name -> code (X_i -> i, Y_j -> ~j)
        self.common = _Conj()
        self.multi: list[tuple[list[_Conj], int]] = []
        self.strict = 0
        self.counts: tuple[int, int] | None = None  # (inputs, outputs) when the fast path counted them

    # errors ---------------------------------------------------------------------------------
    def where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        return f"{line}:{pos - self.text.rfind(chr(10), 0, pos)}"

    def fail(self, pos: int, message: str) -> InputError:
        return InputError(message, self.path, self.where(pos))

    def found(self, pos: int) -> str:
        """The token at ``pos``, quoted, for messages."""
        if pos >= len(self.text):
            return "end of file"
        m = _WORD.match(self.text, pos)
        return repr(m.group() if m else self.text[pos])

    # terms ----------------------------------------------------------------------------------
    def term(self, tok: str | float, pos: int) -> int | float:
        if tok.__class__ is float:
            return tok
        v = self.decl.get(tok)
        if v is not None:
            return v
        if _NUMBER.fullmatch(tok):
            return float(tok)
        if _VARNAME.fullmatch(tok):
            raise self.fail(pos, f"undeclared variable {tok} (declare it with (declare-const {tok} Real))")
        if _IDENT.fullmatch(tok):
            raise self.fail(pos, f"unknown variable {tok!r}: expected X_<i>, Y_<j> or a number")
        raise self.fail(pos, f"expected a number or a variable, found {tok!r}")

    def atom(self, op: str, a: int | float, b: int | float, pos: int) -> tuple:
        if op in (">=", ">"):
            a, b = b, a
        if len(op) == 1:
            self.strict += 1
        if a.__class__ is int and b.__class__ is int and (a >= 0) != (b >= 0):
            raise self.fail(pos, "an atom comparing an input X_i with an output Y_j is not supported")
        return (a, b)

    # main loop ------------------------------------------------------------------------------
    def parse(self) -> VnnlibSpec:
        stack: list[_Frame] = []
        hi, lo, add, decl = self.common.hi, self.common.lo, self.common.add, self.decl
        for m in _TOKEN.finditer(self.text):
            kind = m.lastgroup
            if kind == "aatom":  # (assert (op t t)): the bulk of real files
                if stack:
                    self.unclosed(stack, m.start(_AATOM))
                op, ln, lname, rn, rname = m.group(_AATOM + 1, _AATOM + 2, _AATOM + 3, _AATOM + 4, _AATOM + 5)
                if ln:
                    a = float(ln)
                else:
                    a = decl.get(lname)
                    if a is None:
                        a = self.term(lname, m.start(_AATOM + 3))
                b = float(rn) if rn else self.name(rname, m, _AATOM + 5)
                if rn and op == "<=" and a.__class__ is int and a >= 0:
                    h = hi.get(a)
                    if h is None or b < h:
                        hi[a] = b
                elif rn and op == ">=" and a.__class__ is int and a >= 0:
                    h = lo.get(a)
                    if h is None or b > h:
                        lo[a] = b
                else:
                    add(*self.atom(op, a, b, self.text.rfind("(", m.start(_AATOM), m.start(_AATOM + 1))))
            elif kind == "atom":
                top = stack[-1] if stack else None
                op, ln, lname, rn, rname = m.group(_ATOMG + 1, _ATOMG + 2, _ATOMG + 3, _ATOMG + 4, _ATOMG + 5)
                a = float(ln) if ln else decl.get(lname)
                b = float(rn) if rn else decl.get(rname)
                if top is None or top.head is None or a is None or b is None or len(op) == 1 or (
                    a.__class__ is int and b.__class__ is int
                ):
                    self.nested_atom(stack, m)  # the general path: errors, strict atoms, two variables
                else:
                    top.children.append((a, b) if op == "<=" else (b, a))
                    top.pos.append(m.start(_ATOMG))
            elif kind == "decl":
                if stack:
                    self.unclosed(stack, m.start(_DECL))
                name, xy, idx = m.group(_DECL + 1, _DECL + 2, _DECL + 3)
                if name and name not in decl:
                    decl[name] = int(idx) if xy == "X" else ~int(idx)
                elif name:
                    raise self.fail(m.start(_DECL + 1), f"variable {name} is declared twice")
                else:
                    self.declare(m.group(_DECL + 4), m.start(_DECL + 4), m.group(_DECL + 5), m.start(_DECL + 5))
            elif kind == "lp":
                pos = m.start(kind)
                if stack and stack[-1].head is None:
                    raise self.fail(pos, "expected an operator, found '('")
                stack.append(_Frame(pos))
            elif kind == "rp":
                self.close_paren(stack, m.start(kind))
            elif kind == "sym":
                self.symbol(stack, m.group(kind), m.start(kind))
            else:  # end
                if stack:
                    raise self.fail(stack[-1].open_pos, "unbalanced parentheses: this '(' is never closed")
                break
        return self.build()

    def name(self, tok: str, m: re.Match, group: int) -> int | float:
        v = self.decl.get(tok)
        return v if v is not None else self.term(tok, m.start(group))

    def nested_atom(self, stack: list[_Frame], m: re.Match) -> None:
        pos = m.start(_ATOMG)
        if not stack:
            raise self.fail(pos, "expected a command such as (assert ...), found '('")
        top = stack[-1]
        if top.head is None:
            raise self.fail(pos, "expected an operator, found '('")
        op, ln, lname, rn, rname = m.group(_ATOMG + 1, _ATOMG + 2, _ATOMG + 3, _ATOMG + 4, _ATOMG + 5)
        a = float(ln) if ln else self.name(lname, m, _ATOMG + 3)
        b = float(rn) if rn else self.name(rname, m, _ATOMG + 5)
        top.children.append(self.atom(op, a, b, pos))
        top.pos.append(pos)

    def close_paren(self, stack: list[_Frame], pos: int) -> None:
        if not stack:
            raise self.fail(pos, "unbalanced parentheses: unexpected ')'")
        frame = stack.pop()
        if stack:
            stack[-1].children.append(self.close(frame, pos))
            stack[-1].pos.append(frame.open_pos)
        else:
            self.command(frame, pos)

    def symbol(self, stack: list[_Frame], tok: str, pos: int) -> None:
        if not stack:
            raise self.fail(pos, f"expected '(' at the start of a command, found {tok!r}")
        top = stack[-1]
        if top.head is None:
            top.head, top.head_pos = tok, pos
            if len(stack) == 1 and tok not in _COMMANDS:
                raise self.fail(pos, f"unknown command {tok!r}, expected declare-const or assert")
            if tok in _COMMANDS and len(stack) > 1:
                self.unclosed(stack[:-1], top.open_pos)
        else:
            top.children.append(tok)
            top.pos.append(pos)

    def unclosed(self, stack: list[_Frame], next_pos: int) -> None:
        raise self.fail(
            stack[-1].open_pos,
            f"unbalanced parentheses: this '(' is not closed before the next command at {self.where(next_pos)}",
        )

    # frames ---------------------------------------------------------------------------------
    def close(self, f: _Frame, rp: int) -> object:
        """The value of a nested expression: an atom, a DNF, or a constant from ``(- c)``."""
        if f.head is None:
            raise self.fail(rp, "expected an operator, found ')'")
        if f.head in ("and", "or"):
            for child, pos in zip(f.children, f.pos):
                if isinstance(child, (str, float)):
                    raise self.fail(pos, f"expected a constraint such as (<= X_0 1), found {self.found(pos)}")
            try:
                return _and(f.children) if f.head == "and" else _or(f.children)
            except OverflowError:
                raise self.fail(f.open_pos, f"the formula expands to more than {MAX_DISJUNCTS} disjuncts") from None
        if f.head in _COMPARE:
            terms = self.operands(f, rp, 2)
            return self.atom(f.head, terms[0], terms[1], f.open_pos)
        if f.head == "-":
            (c,) = self.operands(f, rp, 1)
            if c.__class__ is not float:
                raise self.fail(f.pos[0], f"expected a number, found {self.found(f.pos[0])}")
            return -c
        raise self.fail(f.head_pos, f"unknown operator {f.head!r}, expected and, or, <=, >=")

    def operands(self, f: _Frame, rp: int, n: int) -> list:
        terms = []
        for k in range(n):
            if k >= len(f.children):
                raise self.fail(rp, "expected a number or a variable, found ')'")
            child, pos = f.children[k], f.pos[k]
            if not isinstance(child, (str, float)):
                raise self.fail(pos, "expected a number or a variable, found '('")
            terms.append(self.term(child, pos))
        if len(f.children) > n:
            raise self.fail(f.pos[n], f"expected ')', found {self.found(f.pos[n])}")
        return terms

    def command(self, f: _Frame, rp: int) -> None:
        if f.head is None:
            raise self.fail(rp, "expected a command such as (assert ...), found ')'")
        if f.head == "declare-const":
            self.declare_frame(f, rp)
        elif f.head == "assert":
            if len(f.children) != 1:
                at = rp if not f.children else f.pos[1] if len(f.children) > 1 else f.pos[0]
                raise self.fail(at, f"expected one constraint in (assert ...), found {self.found(at)}")
            value, pos = f.children[0], f.pos[0]
            if isinstance(value, tuple):
                self.common.add(*value)
            elif isinstance(value, list):
                if len(value) == 1:
                    self.common.merge(value[0])
                else:
                    self.multi.append((value, pos))
            else:
                raise self.fail(pos, f"expected a constraint such as (<= X_0 1), found {self.found(pos)}")
        elif f.head not in _IGNORED:
            raise self.fail(f.head_pos, f"unknown command {f.head!r}, expected declare-const or assert")

    def declare_frame(self, f: _Frame, rp: int) -> None:
        kids = f.children
        for k, kid in enumerate(kids):
            if not isinstance(kid, str):
                raise self.fail(f.pos[k], f"expected {'a variable name' if k == 0 else 'the sort Real'}, found '('")
        if not kids:
            raise self.fail(rp, "expected a variable name X_<i> or Y_<j>, found ')'")
        if len(kids) < 2:
            raise self.fail(rp, "expected the sort Real, found ')'")
        if len(kids) > 2:
            raise self.fail(f.pos[2], f"expected ')', found {self.found(f.pos[2])}")
        self.declare(kids[0], f.pos[0], kids[1], f.pos[1])

    def declare(self, name: str, pos: int, sort: str, sort_pos: int) -> None:
        m = _VARNAME.fullmatch(name)
        if not m:
            raise self.fail(pos, f"unknown variable {name!r}: expected X_<i> (input) or Y_<j> (output)")
        if name in self.decl:
            raise self.fail(pos, f"variable {name} is declared twice")
        if sort != "Real":
            raise self.fail(sort_pos, f"expected the sort Real, found {sort!r}")
        code = int(m.group(2)) if m.group(1) == "X" else ~int(m.group(2))
        self.decl[name] = code

    def decl_at(self, code: int) -> int:
        """Where a variable is declared (searched only when an error is reported)."""
        name = f"X_{code}" if code >= 0 else f"Y_{~code}"
        m = re.search(r"\(\s*declare-const\s+(" + name + r")(?=[\s)])", self.text)
        return m.start(1) if m else 0

    # semantics ------------------------------------------------------------------------------
    def dims(self) -> tuple[int, int]:
        if self.counts is not None:
            return self.counts
        xs = sorted(c for c in self.decl.values() if c >= 0)
        ys = sorted(~c for c in self.decl.values() if c < 0)
        for kind, idx, code in (("X", xs, lambda i: i), ("Y", ys, lambda j: ~j)):
            if not idx:
                raise InputError(f"no {kind}_0 declared: expected (declare-const {kind}_0 Real)", self.path, "1:1")
            if idx[-1] != len(idx) - 1:
                missing = next(i for i in range(len(idx)) if idx[i] != i)
                raise self.fail(
                    self.decl_at(code(idx[-1])),
                    f"wrong index: {kind}_{idx[-1]} is declared but {kind}_{missing} is not "
                    f"(indices must be 0..n-1)",
                )
        return len(xs), len(ys)

    def build(self) -> VnnlibSpec:
        n_in, n_out = self.dims()
        groups = self.expand()
        cases, empty, first_empty = [], 0, None
        for xc, ys in groups.values():
            region = self.region(xc, n_in)
            if region is None or _region_empty(region):
                empty += 1
                first_empty = first_empty or (xc, region)
                continue
            cases.append(Case(region, _output_property(ys, n_out)))
        if not cases:
            self.empty_error(first_empty)
        return VnnlibSpec(n_in, n_out, cases, self.path, self.strict, empty)

    def expand(self) -> dict[tuple, tuple[_Conj, list[list[Row]]]]:
        """Combine the assertions into cases keyed by their input part (module docstring)."""
        cases: list[tuple[_Conj, list[list[Row]]]] = [(self.common.x_only(), [list(self.common.yrows)])]
        for dnf, pos in self.multi:
            dnf = [d for d in dnf if not d.false]
            if not any(d.has_x() for d in dnf):
                cases = [(xc, [y + d.yrows for y in ys for d in dnf]) for xc, ys in cases]
            else:
                new = []
                for xc, ys in cases:
                    for d in dnf:
                        nx = xc.copy()
                        nx.merge(d.x_only())
                        new.append((nx, [y + d.yrows for y in ys] if d.yrows else ys))
                cases = new
            if sum(len(ys) for _, ys in cases) > MAX_DISJUNCTS:
                raise self.fail(pos, f"the assertions expand to more than {MAX_DISJUNCTS} disjuncts")
        if len(cases) == 1:  # nothing to group: skip the (sorting) input-part keys
            xc, ys = cases[0]
            return {} if xc.false else {(): (xc, list(ys))}
        groups: dict[tuple, tuple[_Conj, list[list[Row]]]] = {}
        for xc, ys in cases:
            if xc.false:
                continue
            key = xc.x_key()
            if key in groups:
                groups[key][1].extend(ys)
            else:
                groups[key] = (xc, list(ys))
        return groups

    def region(self, xc: _Conj, n: int) -> Region | None:
        lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
        if xc.lo:
            lower[np.fromiter(xc.lo.keys(), int, len(xc.lo))] = np.fromiter(xc.lo.values(), float, len(xc.lo))
        if xc.hi:
            upper[np.fromiter(xc.hi.keys(), int, len(xc.hi))] = np.fromiter(xc.hi.values(), float, len(xc.hi))
        bounded = bool(np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)))
        if not xc.xrows:
            if not bounded:
                i = int(np.flatnonzero(~np.isfinite(lower) | ~np.isfinite(upper))[0])
                which = "lower" if not np.isfinite(lower[i]) else "upper"
                raise self.fail(self.decl_at(i), f"missing {which} bound for input X_{i} (a box needs both bounds of every input)")
            return Box(lower, upper)
        rows = list(xc.xrows)
        if not bounded:  # no bounding box: keep the finite single-variable bounds as rows
            rows += [(((i, 1.0),), float(upper[i])) for i in np.flatnonzero(np.isfinite(upper))]
            rows += [(((i, -1.0),), -float(lower[i])) for i in np.flatnonzero(np.isfinite(lower))]
        A, b = _rows_to_matrix(rows, n)
        return Polytope(A, b, Box(lower, upper) if bounded else None)

    def empty_error(self, first: tuple | None) -> None:
        if first is None:
            raise InputError("empty input set: the assertions are unsatisfiable", self.path, "1:1")
        xc, region = first
        box = region if isinstance(region, Box) else region.bounding_box if region is not None else None
        if box is not None and box.is_empty():
            i = int(np.flatnonzero(box.lower > box.upper)[0])
            raise self.fail(
                self.decl_at(i),
                f"empty input set: X_{i} has lower bound {float(box.lower[i])!r} > upper bound {float(box.upper[i])!r}",
            )
        raise InputError("empty input set: the input constraints are infeasible", self.path, "1:1")


# ----- helpers -----------------------------------------------------------------------------
def _rows_to_matrix(rows: list[Row], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with one row per ``sum coef * var <= b`` (variables already 0-based)."""
    A = np.zeros((len(rows), n))
    b = np.empty(len(rows))
    for r, (coefs, rhs) in enumerate(rows):
        for v, c in coefs:
            A[r, v] += c
        b[r] = rhs
    return A, b


def _output_property(ys: list[list[Row]], n_out: int) -> OutputProperty:
    return OutputProperty([_rows_to_matrix(rows, n_out) for rows in ys])


def _region_empty(region: Region) -> bool:
    """Exact for boxes; an LP feasibility check (HiGHS) for polytopes."""
    if isinstance(region, Box):
        return region.is_empty()
    bb = region.bounding_box
    if bb is not None and bb.is_empty():
        return True
    from scipy.optimize import linprog

    bounds = list(zip(bb.lower, bb.upper)) if bb is not None else [(None, None)] * region.dim
    res = linprog(np.zeros(region.dim), A_ub=region.A, b_ub=region.b, bounds=bounds, method="highs")
    return res.status == 2  # proven infeasible; any other failure keeps the region (sound: a superset)


def _region_key(r: Region) -> tuple:
    """Equal keys exactly when the regions have equal arrays (bitwise)."""
    if isinstance(r, Box):
        return ("box", r.lower.tobytes(), r.upper.tobytes())
    bb = None if r.bounding_box is None else _region_key(r.bounding_box)
    return ("polytope", r.A.shape, r.A.tobytes(), r.b.tobytes(), bb)
