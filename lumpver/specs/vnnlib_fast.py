"""Bulk fast path of the VNN-LIB reader (DESIGN.md §3 input sets; the subset of lumpver.specs.vnnlib).

Contract: :func:`fast_parse` returns exactly the :class:`~lumpver.specs.vnnlib.VnnlibSpec` the exact
scanner (``lumpver.specs.vnnlib_parser.Parser``) returns, or ``None`` when the text is outside the shapes it
understands or is malformed in any way; the caller then re-parses with the exact scanner, which
produces the result or the precise ``file:line:col`` message. It never raises on bad input.

Shapes handled (nearly all of the bytes of public benchmark files): comments anywhere; line
breaks and any whitespace between tokens; declarations and the ignored SMT-LIB commands before the
first ``assert``; assertions ``(assert atom)``, ``(assert (and atom+))``, ``(assert (or g+))``
with ``g`` an atom or ``(and atom+)``; an atom is ``(op a b)``, ``op`` one of ``<= >= < >`` and
``a``, ``b`` each a declared ``X_i``/``Y_j`` or a plain decimal/scientific constant. Everything else
(``(- c)``, nested ``(and (or ...))``, empty groups, non-ASCII text, ...) is declined.

Method: the comment-free text is tokenized by numpy over its bytes (token starts and ends from
the whitespace/parenthesis mask), token kinds come from first byte and length (keywords checked
byte by byte), atoms ``( op t t )``, ``(assert atom)`` and declarations are recognised as
fixed-length kind patterns with shifted comparisons, variable indices are decoded digit by digit
in bulk, and constants are converted with one ``float`` each (the scanner's own conversion, so the
values are bitwise the same). Single-variable input bounds are reduced with numpy (keep-first
minimum/maximum in file order, as the scanner does). Python touches only the tokens left after
that (statement and group boundaries) with a small stack machine, and the atoms that give rows.
The resulting conjunctions go to the scanner's own ``build`` step: the semantics are shared.
"""
from __future__ import annotations

import re

import numpy as np

from lumpver.errors import InputError
from lumpver.specs.vnnlib_ast import IGNORED_COMMANDS, Conj
from lumpver.specs.vnnlib_parser import Parser

_COMMENT = re.compile(r";[^\n]*")
# token kinds: ( 1, ) 2, <= 3, >= 4, < 5, > 6, assert 7, and 8, or 9, declare-const 10, Real 11;
# every other word (operands, unknown words) is 0
_LP, _RP, _ASSERT, _DECLARE, _REAL = 1, 2, 7, 10, 11
_ITEM_LEFT, _ITEM_ATOM, _ITEM_SATOM, _ITEM_DECL = 0, 1, 2, 3
_NUMBER_CHARS = b"0123456789.eE+- "
_CHUNK = 1 << 22
_PLAIN = bytes(range(9, 14)) + bytes(range(28, 128))  # whitespace and printable ASCII


class _Reject(Exception):
    """The fast path does not handle this text: use the exact scanner."""


def fast_parse(text: str, path: str):
    """The spec of ``text`` exactly as the exact scanner gives it, or ``None`` (see module doc)."""
    if ";" in text:
        text = _COMMENT.sub("", text)
    parser = Parser(text, path)
    try:
        _Body(text, parser).run()
        return parser.build()
    except (_Reject, InputError, KeyError, ValueError, OverflowError, IndexError):
        return None


# ----- body ------------------------------------------------------------------------------------
class _Frame:
    __slots__ = ("head", "items")

    def __init__(self) -> None:
        self.head: str | None = None
        self.items: list = []  # ("run", a, b) | ("each", a, b) | ("conj", Conj) | ("dnf", list)


class _Body:
    """Tokens and atoms in bulk (numpy over the bytes), then the statement structure over the rest."""

    def __init__(self, text: str, parser) -> None:
        self.parser, self.text = parser, text
        b, self.start, self.end = _tokenize(text)
        n = self.start.size
        first = b[self.start]
        length = self.end - self.start
        kind = np.zeros(n + 12, np.int8)  # padded on both sides by 6 sentinels (-1)
        kind[:6] = kind[n + 6:] = -1
        kd = kind[6:n + 6]
        kd[first == 40] = _LP
        kd[first == 41] = _RP
        two = np.zeros(n, bool)
        two[length == 2] = b[self.start[length == 2] + 1] == 61  # '='
        for ch, code1, code2 in ((60, 5, 3), (62, 6, 4)):  # '<' / '>': < <= and > >=
            at = first == ch
            kd[at & (length == 1)] = code1
            kd[at & two] = code2
        for word, code in (("assert", _ASSERT), ("and", 8), ("or", 9), ("declare-const", _DECLARE), ("Real", _REAL)):
            kd[_words_equal(b, self.start, length, first, word)] = code
        k = [kind[6 + d:n + 6 + d] for d in range(-2, 6)]  # k[d + 2][i] = kind of token i + d
        is_atom = (k[2] == _LP) & (k[3] >= 3) & (k[3] <= 6) & (k[4] == 0) & (k[5] == 0) & (k[6] == _RP)
        wrapped = is_atom & (k[0] == _LP) & (k[1] == _ASSERT) & (k[7] == _RP)
        is_decl = (k[2] == _LP) & (k[3] == _DECLARE) & (k[4] == 0) & (k[5] == _REAL) & (k[6] == _RP)
        atoms, decls = np.flatnonzero(is_atom), np.flatnonzero(is_decl)
        keep = np.ones(n, bool)
        for d in (1, 2, 3, 4):
            keep[atoms + d] = False
            keep[decls + d] = False
        w = np.flatnonzero(wrapped)
        keep[w - 1] = keep[w] = keep[w + 5] = False
        typ = np.zeros(n, np.int8)
        typ[atoms] = _ITEM_ATOM
        typ[w - 2] = _ITEM_SATOM
        typ[decls] = _ITEM_DECL
        self.items = np.flatnonzero(keep)
        self.ityp = typ[self.items]
        self.kind = kd
        first_assert = np.flatnonzero(kd == _ASSERT)
        if first_assert.size == 0 or (decls.size and decls[-1] > first_assert[0]):
            raise _Reject  # no assertion, or a declaration after one: the scanner decides
        is_x, idx = _variables(b, self.start[decls + 2], self.end[decls + 2])
        parser.counts = (_count(idx[is_x]), _count(idx[~is_x]))
        self.n = atoms.size
        self.wrapped = wrapped[atoms]
        self.operands(b, atoms, parser)

    def word(self, tok: int) -> str:
        return self.text[int(self.start[tok]):int(self.end[tok])]

    def operands(self, b: np.ndarray, atoms: np.ndarray, parser) -> None:
        n = atoms.size
        ops = self.kind[atoms + 1] - 3  # 0 <=, 1 >=, 2 <, 3 >
        pos = np.stack([atoms + 2, atoms + 3], 1).ravel()  # left, right, left, right, ...
        s, e = self.start[pos], self.end[pos]
        fb = b[s]
        is_var = (fb == 88) | (fb == 89)  # X, Y
        is_num = ~is_var
        code = np.zeros(2 * n, np.int64)
        vx, vi = _variables(b, s[is_var], e[is_var])
        if np.any(vi[vx] >= parser.counts[0]) or np.any(vi[~vx] >= parser.counts[1]):
            raise _Reject  # undeclared
        code[is_var] = np.where(vx, vi, ~vi)
        text = self.text
        nums = list(map(text.__getitem__, map(slice, s[is_num].tolist(), e[is_num].tolist())))
        if " ".join(nums).encode().translate(None, _NUMBER_CHARS):
            raise _Reject  # not a plain decimal constant (a name, 1_0, inf, ...)
        val = np.zeros(2 * n)
        val[is_num] = np.fromiter(map(float, nums), float, len(nums))  # ValueError: malformed
        is_num, val, code = is_num.reshape(n, 2), val.reshape(n, 2), code.reshape(n, 2)
        swap = (ops == 1) | (ops == 3)  # a >= b  <=>  b <= a
        p = swap.astype(np.int64)
        r = np.arange(n)
        self.pnum, self.pval, self.pcode = is_num[r, p], val[r, p], code[r, p]
        self.qnum, self.qval, self.qcode = is_num[r, 1 - p], val[r, 1 - p], code[r, 1 - p]
        pn, qn = self.pnum, self.qnum
        if np.any(~pn & ~qn & ((self.pcode >= 0) != (self.qcode >= 0))):
            raise _Reject  # X compared with Y: an error the scanner reports
        self.hi = ~pn & (self.pcode >= 0) & qn  # X_i <= c
        self.lo = pn & ~qn & (self.qcode >= 0)  # c <= X_i
        self.slow = np.flatnonzero(~(self.hi | self.lo))  # rows, constant atoms: a Python loop
        parser.strict += int(np.count_nonzero(ops >= 2))

    def run(self) -> None:
        ityp = self.ityp
        m = ityp.size
        if m == 0:
            raise _Reject
        new = np.ones(m, bool)
        new[1:] = (ityp[1:] != ityp[:-1]) | (ityp[1:] == _ITEM_LEFT)
        starts = np.flatnonzero(new)
        stops = np.append(starts[1:], m)
        is_atom_item = (ityp == _ITEM_ATOM) | (ityp == _ITEM_SATOM)
        ordinal = np.cumsum(is_atom_item) - 1  # atom number of each atom item
        stack: list[_Frame] = []
        common: list = []
        seen_assert = False
        for a, b in zip(starts.tolist(), stops.tolist()):
            t = ityp[a]
            if t == _ITEM_LEFT:
                tok = int(self.items[a])
                seen_assert = seen_assert or self.kind[tok] == _ASSERT
                self.token(stack, common, self.word(tok))
            elif t == _ITEM_DECL:
                if stack or seen_assert:
                    raise _Reject
            else:
                self.run_of_atoms(stack, common, t == _ITEM_SATOM, int(ordinal[a]), int(ordinal[b - 1]) + 1)
                seen_assert = seen_assert or t == _ITEM_SATOM
        if stack:
            raise _Reject
        self.parser.common = self.conj(common)

    def run_of_atoms(self, stack: list[_Frame], common: list, wrapped: bool, a: int, b: int) -> None:
        if not stack and wrapped:
            common.append(("run", a, b))
        elif wrapped or not stack or stack[-1].head not in ("and", "or") or len(stack) < 2:
            raise _Reject
        else:
            stack[-1].items.append(("run" if stack[-1].head == "and" else "each", a, b))

    def token(self, stack: list[_Frame], common: list, tok: str) -> None:
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
            allowed = {None: ("assert",) + IGNORED_COMMANDS, "assert": ("and", "or"), "or": ("and",)}.get(parent, ())
            if tok not in allowed:
                raise _Reject
            top.head = tok
        elif top.head not in IGNORED_COMMANDS or len(stack) > 1:
            raise _Reject  # a bare word among constraints

    def close(self, f: _Frame, stack: list[_Frame], common: list) -> None:
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
                        c = Conj()
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

        c = Conj()
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


def _tokenize(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bytes and the [start, end) of every token: ``(``, ``)`` or a maximal word.

    Works in chunks of :data:`_CHUNK` bytes so that the byte-sized temporaries stay small (one
    pass over a 100 MB file with whole-file temporaries was several times slower).
    """
    if not text.isascii():
        raise _Reject
    raw = text.encode("ascii")
    if raw.translate(None, _PLAIN):
        raise _Reject  # control characters: the scanner decides
    b = np.frombuffer(raw, np.uint8)
    if b.size >= 2**31 - 1:
        raise _Reject
    starts, lasts = [], []
    for a in range(0, b.size, _CHUNK):
        c = min(a + _CHUNK, b.size)
        x = b[a:c]
        paren = (x == 40) | (x == 41)
        sep = (x <= 32) | paren
        word = ~sep
        prev = np.empty(c - a, bool)  # is the previous byte a separator
        prev[0] = a == 0 or b[a - 1] <= 32 or b[a - 1] in (40, 41)
        prev[1:] = sep[:-1]
        nxt = np.empty(c - a, bool)  # is the next byte a separator
        nxt[-1] = c == b.size or b[c] <= 32 or b[c] in (40, 41)
        nxt[:-1] = sep[1:]
        starts.append((np.flatnonzero(paren | (word & prev)) + a).astype(np.int32))
        lasts.append((np.flatnonzero(word & nxt) + (a + 1)).astype(np.int32))
    start = np.concatenate(starts) if starts else np.zeros(0, np.int32)
    end = start + 1
    first = b[start]
    end[(first != 40) & (first != 41)] = np.concatenate(lasts) if lasts else end[:0]
    return b, start, end


def _words_equal(b: np.ndarray, start: np.ndarray, length: np.ndarray, first: np.ndarray, word: str) -> np.ndarray:
    """Indices of the tokens equal to ``word``."""
    cand = np.flatnonzero((length == len(word)) & (first == ord(word[0])))
    ok = np.ones(cand.size, bool)
    for k, ch in enumerate(word[1:], 1):
        ok &= b[start[cand] + k] == ord(ch)
    return cand[ok]


def _variables(b: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is X, index) of variable names ``X_<i>``/``Y_<j>`` (no leading zeros); else reject."""
    length = e - s
    if s.size == 0:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    if length.min() < 3 or length.max() > 12:
        raise _Reject
    fb = b[s]
    ok = ((fb == 88) | (fb == 89)) & (b[s + 1] == 95) & ~((b[s + 2] == 48) & (length > 3))  # X|Y, '_', no 0 lead
    idx = np.zeros(s.size, np.int64)
    for k in range(2, int(length.max())):
        more = k < length
        digit = b[np.where(more, s + k, s)].astype(np.int64) - 48
        ok &= ~more | ((digit >= 0) & (digit <= 9))
        idx = np.where(more, idx * 10 + digit, idx)
    if not ok.all():
        raise _Reject
    return fb == 88, idx


def _count(idx: np.ndarray) -> int:
    """n when ``idx`` is exactly 0..n-1 once each (else the scanner reports the error)."""
    if idx.size == 0 or idx.max() != idx.size - 1 or np.bincount(idx).max() > 1:
        raise _Reject
    return int(idx.size)


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
