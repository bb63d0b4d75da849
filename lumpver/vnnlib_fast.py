"""Bulk fast path of the VNN-LIB reader (DESIGN.md §3 input sets; the subset of lumpver.vnnlib).

Contract: :func:`fast_parse` returns exactly the :class:`~lumpver.vnnlib.VnnlibSpec` the exact
scanner (``lumpver.vnnlib._Parser``) returns, or ``None`` when the text is outside the shapes it
understands or is malformed in any way; the caller then re-parses with the exact scanner, which
produces the result or the precise ``file:line:col`` message. It never raises on bad input.

Shapes handled (they are nearly all of the bytes of public benchmark files): comments anywhere;
declarations and the ignored SMT-LIB commands before the first ``assert``; then assertions of the
forms ``(assert atom)``, ``(assert (and atom+))``, ``(assert (or g+))`` with ``g`` an atom or
``(and atom+)``, where an atom is ``(op a b)``, ``op`` one of ``<= >= < >`` and ``a``, ``b`` each a
declared ``X_i``/``Y_j`` or a plain decimal/scientific constant.

Method: one ``re.split`` over the comment-free text cuts out every atom (with its ``(assert``
wrapper when it is a whole statement), so the per-atom work is done by the regex engine in C; the
constants are converted in bulk (``map(float, ...)``, the same conversion as the scanner) and the
single-variable input bounds are reduced with numpy (keep-first minimum/maximum in file order, as
the scanner does). Only the text *between* atoms that is not whitespace (statement and group
boundaries) is looked at by Python, with a small stack machine. The resulting conjunctions are
handed to the scanner's own ``build`` step, so the semantics are shared, not duplicated.
"""
from __future__ import annotations

import re

import numpy as np

_VAR = r"[XY]_(?:0|[1-9]\d*)"
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COMMENT = re.compile(r";[^\n]*")
_FIRST_ASSERT = re.compile(r"\(\s*assert(?=[\s()])")
_DECL = re.compile(r"\(\s*declare-const\s+(([XY])_(0|[1-9]\d*))\s+Real\s*\)")
# groups: 1 '(assert' wrapper, 2 op, 3 left var, 4 left number, 5 right var, 6 right number
_ATOMS = re.compile(
    r"(\(\s*assert\s*)?\(\s*(<=|>=|<|>)\s+(?:(" + _VAR + r")|(" + _NUM + r"))\s+(?:(" + _VAR + r")|("
    + _NUM + r"))\s*\)(?(1)\s*\))"
)
_STRIDE = 7
_SEPTOK = re.compile(r"\(|\)|[^\s()]+")
_OPS = {"<=": 0, ">=": 1, "<": 2, ">": 3}


class _Reject(Exception):
    """The fast path does not handle this text: use the exact scanner."""


def fast_parse(text: str, path: str):
    """The spec of ``text`` exactly as the exact scanner gives it, or ``None`` (see module doc)."""
    from lumpver.errors import InputError
    from lumpver.vnnlib import _Parser

    if ";" in text:
        text = _COMMENT.sub("", text)
    m = _FIRST_ASSERT.search(text)
    if m is None or text.find("declare-const", m.start()) != -1:
        return None
    parser = _Parser(text, path)
    try:
        parser.decl = _declarations(text[: m.start()])
        _Body(text[m.start():], parser).run()
        return parser.build()
    except (_Reject, InputError, KeyError, ValueError, OverflowError):
        return None


# ----- header ----------------------------------------------------------------------------------
def _declarations(head: str) -> dict[str, int]:
    """Name -> code (X_i -> i, Y_j -> ~j) of the header's declarations; ignored commands allowed."""
    from lumpver.vnnlib import _IGNORED

    parts = _DECL.split(head)
    for sep in parts[0::4]:
        if sep and not sep.isspace():
            toks = _SEPTOK.findall(sep)
            while toks:  # only complete ignored commands with plain word arguments
                if len(toks) < 3 or toks[0] != "(" or toks[1] not in _IGNORED or ")" not in toks:
                    raise _Reject
                end = toks.index(")")
                if "(" in toks[1:end]:
                    raise _Reject
                toks = toks[end + 1:]
    names, kinds, idx = parts[1::4], parts[2::4], parts[3::4]
    if len(set(names)) != len(names):
        raise _Reject  # declared twice
    num = np.fromiter(map(int, idx), np.int64, len(idx))
    codes = np.where(np.array(kinds) == "X", num, ~num) if names else num
    return dict(zip(names, codes.tolist()))


# ----- body ------------------------------------------------------------------------------------
class _Frame:
    __slots__ = ("head", "items")

    def __init__(self) -> None:
        self.head: str | None = None
        self.items: list = []  # ("run", a, b) | ("conj", _Conj) | ("dnf", list)


class _Body:
    """Atoms in bulk, then the statement structure over the non-blank separators."""

    def __init__(self, body: str, parser) -> None:
        self.parser = parser
        parts = _ATOMS.split(body)
        self.seps = parts[0::_STRIDE]
        n = self.n = len(self.seps) - 1
        self.wrapped = np.fromiter((w is not None for w in parts[1::_STRIDE]), bool, n)
        ops = np.fromiter(map(_OPS.__getitem__, parts[2::_STRIDE]), np.int8, n)
        decl = parser.decl
        lnum, lval, lcode = _side(parts[3::_STRIDE], parts[4::_STRIDE], decl, n)
        rnum, rval, rcode = _side(parts[5::_STRIDE], parts[6::_STRIDE], decl, n)
        swap = (ops == 1) | (ops == 3)  # a >= b  <=>  b <= a
        self.pnum, self.pval, self.pcode = (np.where(swap, r, l) for l, r in ((lnum, rnum), (lval, rval), (lcode, rcode)))
        self.qnum, self.qval, self.qcode = (np.where(swap, l, r) for l, r in ((lnum, rnum), (lval, rval), (lcode, rcode)))
        pn, qn = self.pnum, self.qnum
        if np.any(~pn & ~qn & ((self.pcode >= 0) != (self.qcode >= 0))):
            raise _Reject  # X compared with Y: an error the scanner reports
        self.hi = ~pn & (self.pcode >= 0) & qn  # X_i <= c
        self.lo = pn & ~qn & (self.qcode >= 0)  # c <= X_i
        self.slow = np.flatnonzero(~(self.hi | self.lo))  # rows, constant atoms: a Python loop
        parser.strict += int(np.count_nonzero(ops >= 2))

    def run(self) -> None:
        ids: dict[str, int] = {}
        for s in set(self.seps):
            ids[s] = 0 if (not s or s.isspace()) else len(ids) + 1
        marks = np.flatnonzero(np.fromiter(map(ids.__getitem__, self.seps), np.int32, len(self.seps)))
        stack: list[_Frame] = []
        common: list = []
        start = 0
        for k in marks.tolist():
            if k > start:
                self.run_of_atoms(stack, common, start, k)
            self.tokens(stack, common, _SEPTOK.findall(self.seps[k]))
            start = k
        if self.n > start:
            self.run_of_atoms(stack, common, start, self.n)
        if stack:
            raise _Reject
        self.parser.common = self.conj(common)

    def run_of_atoms(self, stack: list[_Frame], common: list, a: int, b: int) -> None:
        if not stack:
            if not self.wrapped[a:b].all():
                raise _Reject
            common.append(("run", a, b))
            return
        if self.wrapped[a:b].any() or stack[-1].head not in ("and", "or") or len(stack) < 2:
            raise _Reject
        stack[-1].items.append(("run" if stack[-1].head == "and" else "each", a, b))

    def tokens(self, stack: list[_Frame], common: list, toks: list[str]) -> None:
        from lumpver.vnnlib import _IGNORED

        for tok in toks:
            top = stack[-1] if stack else None
            if tok == "(":
                if top is not None and top.head is None:
                    raise _Reject
                stack.append(_Frame())
            elif tok == ")":
                if top is None or top.head is None:
                    raise _Reject
                stack.pop()
                self.close(top, stack, common)
            elif top is None:
                raise _Reject
            elif top.head is None:
                parent = stack[-2].head if len(stack) > 1 else None
                allowed = {None: ("assert",) + _IGNORED, "assert": ("and", "or"), "or": ("and",)}.get(parent, ())
                if tok not in allowed:
                    raise _Reject
                top.head = tok
            elif top.head not in _IGNORED or len(stack) > 1:
                raise _Reject  # a bare word among constraints

    def close(self, f: _Frame, stack: list[_Frame], common: list) -> None:
        from lumpver.vnnlib import _Conj

        if not f.items and f.head in ("assert", "and", "or"):
            raise _Reject  # empty: left to the scanner
        if f.head == "and":
            stack[-1].items.append(("conj", self.conj(f.items)))
        elif f.head == "or":
            dnf = []
            for item in f.items:
                if item[0] == "conj":
                    dnf.append(item[1])
                else:
                    for i in range(item[1], item[2]):
                        c = _Conj()
                        c.add(*self.pq(i))
                        dnf.append(c)
            stack[-1].items.append(("dnf", dnf))
        elif f.head == "assert":
            if len(f.items) != 1 or f.items[0][0] == "run":
                raise _Reject
            kind, value = f.items[0]
            if kind == "conj":
                common.append(("conj", value))
            elif len(value) == 1:
                common.append(("conj", value[0]))
            else:
                self.parser.multi.append((value, 0))  # position only used in an error: rescanned

    # conjunctions -----------------------------------------------------------------------------
    def pq(self, i: int) -> tuple:
        """The normalised atom ``p <= q`` of atom ``i`` as the scanner's Python values."""
        p = float(self.pval[i]) if self.pnum[i] else int(self.pcode[i])
        q = float(self.qval[i]) if self.qnum[i] else int(self.qcode[i])
        return p, q

    def conj(self, items: list):
        """One conjunction of runs of atoms and conjunctions, in file order (keep-first bounds)."""
        from lumpver.vnnlib import _Conj

        c = _Conj()
        lo_i, lo_v, hi_i, hi_v = [], [], [], []
        for item in items:
            if item[0] == "conj":
                d = item[1]
                lo_i.append(np.fromiter(d.lo.keys(), np.int64, len(d.lo)))
                lo_v.append(np.fromiter(d.lo.values(), float, len(d.lo)))
                hi_i.append(np.fromiter(d.hi.keys(), np.int64, len(d.hi)))
                hi_v.append(np.fromiter(d.hi.values(), float, len(d.hi)))
                c.xrows.extend(d.xrows)
                c.yrows.extend(d.yrows)
                c.false = c.false or d.false
                continue
            _, a, b = item
            h, lo = self.hi[a:b], self.lo[a:b]
            hi_i.append(self.pcode[a:b][h])
            hi_v.append(self.qval[a:b][h])
            lo_i.append(self.qcode[a:b][lo])
            lo_v.append(self.pval[a:b][lo])
            s = self.slow[np.searchsorted(self.slow, a):np.searchsorted(self.slow, b)]
            for i in s.tolist():
                c.add(*self.pq(i))  # rows and constant atoms only (never a bound: those are above)
        c.lo = _keep_first(lo_i, lo_v, larger=True)
        c.hi = _keep_first(hi_i, hi_v, larger=False)
        return c


def _side(var: list, num: list, decl: dict, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is-number, value, variable code) of one operand of every atom."""
    is_num = np.zeros(n, bool)
    val = np.zeros(n)
    code = np.zeros(n, np.int64)
    k = n - num.count(None)
    if k == n:
        is_num[:] = True
        val[:] = np.fromiter(map(float, num), float, n)
    elif k == 0:
        code[:] = np.fromiter(map(decl.__getitem__, var), np.int64, n)  # KeyError: undeclared
    else:
        onum = np.array(num, dtype=object)
        is_num = onum != None  # noqa: E711 (elementwise on an object array)
        val[is_num] = np.fromiter(map(float, onum[is_num]), float, k)
        code[~is_num] = np.fromiter(map(decl.__getitem__, np.array(var, dtype=object)[~is_num]), np.int64, n - k)
    return is_num, val, code


def _keep_first(idx: list, val: list, larger: bool) -> dict[int, float]:
    """Per variable the smallest (largest) bound, the first in file order among equal ones."""
    if not idx:
        return {}
    i, v = np.concatenate(idx), np.concatenate(val)
    if i.size == 0:
        return {}
    if np.bincount(i).max() > 1:
        order = np.lexsort((np.arange(i.size), -v if larger else v, i))
        si = i[order]
        first = order[np.r_[True, si[1:] != si[:-1]]]
        i, v = i[first], v[first]
    return dict(zip(i.tolist(), v.tolist()))
