"""The shared data of the two VNN-LIB readers (:mod:`lumpver.specs.vnnlib_parser`, the exact scanner,
and :mod:`lumpver.specs.vnnlib_fast`, the bulk path): parsed cases, conjunctions of atoms and their
disjunctive normal form, and the region helpers both use (DESIGN.md §3, §5; semantics in
:mod:`lumpver.specs.vnnlib`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from lumpver.errors import InputError
from lumpver.specs.inputset import Box, InputSet, OutputProperty, Polytope

#: Largest number of (input case x output disjunct) pairs an expansion may produce.
MAX_DISJUNCTS = 100_000
#: SMT-LIB commands that are read and ignored.
IGNORED_COMMANDS = ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit")

Region = Union[Box, Polytope]

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
            seen.setdefault(region_key(case.region), case.region)
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


# ----- conjunctions ------------------------------------------------------------------------
# A variable is an int: X_i -> i, Y_j -> ~j (negative). A constant is a float.
# A normalised atom is a pair (p, q) meaning p <= q.
Row = tuple[tuple[tuple[int, float], ...], float]  # sum coef * var <= b


class Conj:
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

    def merge(self, other: "Conj") -> None:
        for k, v in other.lo.items():
            if k not in self.lo or v > self.lo[k]:
                self.lo[k] = v
        for k, v in other.hi.items():
            if k not in self.hi or v < self.hi[k]:
                self.hi[k] = v
        self.xrows.extend(other.xrows)
        self.yrows.extend(other.yrows)
        self.false = self.false or other.false

    def copy(self) -> "Conj":
        c = Conj()
        c.merge(self)
        return c

    def has_x(self) -> bool:
        return bool(self.lo or self.hi or self.xrows)

    def x_only(self) -> "Conj":
        c = Conj()
        c.lo, c.hi, c.xrows, c.false = dict(self.lo), dict(self.hi), list(self.xrows), self.false
        return c

    def x_key(self) -> tuple:
        return (tuple(sorted(self.lo.items())), tuple(sorted(self.hi.items())), tuple(self.xrows), self.false)


def and_dnf(children: list) -> list[Conj]:
    """DNF of a conjunction of atoms and DNFs (product only over real disjunctions)."""
    base = Conj()
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


def or_dnf(children: list) -> list[Conj]:
    dnf: list[Conj] = []
    for child in children:
        if isinstance(child, tuple):
            c = Conj()
            c.add(*child)
            dnf.append(c)
        else:
            dnf.extend(child)
    return dnf


# ----- regions -----------------------------------------------------------------------------
def rows_to_matrix(rows: list[Row], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with one row per ``sum coef * var <= b`` (variables already 0-based)."""
    A = np.zeros((len(rows), n))
    b = np.empty(len(rows))
    for r, (coefs, rhs) in enumerate(rows):
        for v, c in coefs:
            A[r, v] += c
        b[r] = rhs
    return A, b


def output_property(ys: list[list[Row]], n_out: int) -> OutputProperty:
    return OutputProperty([rows_to_matrix(rows, n_out) for rows in ys])


def region_empty(region: Region) -> bool:
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


def region_key(r: Region) -> tuple:
    """Equal keys exactly when the regions have equal arrays (bitwise)."""
    if isinstance(r, Box):
        return ("box", r.lower.tobytes(), r.upper.tobytes())
    bb = None if r.bounding_box is None else region_key(r.bounding_box)
    return ("polytope", r.A.shape, r.A.tobytes(), r.b.tobytes(), bb)
