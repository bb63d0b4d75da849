"""The exact VNN-LIB scanner (DESIGN.md §3, §5; subset and semantics in :mod:`lumpver.specs.vnnlib`):
one compiled regular expression scans the whole text (no recursion); it gives the spec or the
precise ``file:line:col`` message. :meth:`Parser.build` turns the collected conjunctions into a
:class:`~lumpver.specs.vnnlib_ast.VnnlibSpec` for both readers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from lumpver.errors import InputError
from lumpver.specs.inputset import Box, Polytope
from lumpver.specs.vnnlib_ast import (
    IGNORED_COMMANDS,
    MAX_DISJUNCTS,
    Case,
    Conj,
    Region,
    Row,
    VnnlibSpec,
    and_dnf,
    or_dnf,
    output_property,
    region_empty,
    rows_to_matrix,
)



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
_COMMANDS = ("declare-const", "assert") + IGNORED_COMMANDS


@dataclass
class _Frame:
    open_pos: int
    head: str | None = None
    head_pos: int = -1
    children: list = field(default_factory=list)  # str | float | atom tuple | DNF list
    pos: list = field(default_factory=list)


class Parser:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.decl: dict[str, int] = {}  # name -> code (X_i -> i, Y_j -> ~j)
        self.common = Conj()
        self.multi: list[tuple[list[Conj], int]] = []
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
                return and_dnf(f.children) if f.head == "and" else or_dnf(f.children)
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
        elif f.head not in IGNORED_COMMANDS:
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
            if not idx and kind == "X":
                raise InputError(f"no {kind}_0 declared: expected (declare-const {kind}_0 Real)", self.path, "1:1")
            if not idx:  # inputs only: an input set (CONTRACT.md), not a property
                continue
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
            if region is None or region_empty(region):
                empty += 1
                first_empty = first_empty or (xc, region)
                continue
            cases.append(Case(region, output_property(ys, n_out)))
        if not cases:
            self.empty_error(first_empty)
        return VnnlibSpec(n_in, n_out, cases, self.path, self.strict, empty)

    def expand(self) -> dict[tuple, tuple[Conj, list[list[Row]]]]:
        """Combine the assertions into cases keyed by their input part (module docstring)."""
        cases: list[tuple[Conj, list[list[Row]]]] = [(self.common.x_only(), [list(self.common.yrows)])]
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
        groups: dict[tuple, tuple[Conj, list[list[Row]]]] = {}
        for xc, ys in cases:
            if xc.false:
                continue
            key = xc.x_key()
            if key in groups:
                groups[key][1].extend(ys)
            else:
                groups[key] = (xc, list(ys))
        return groups

    def region(self, xc: Conj, n: int) -> Region | None:
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
        A, b = rows_to_matrix(rows, n)
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

