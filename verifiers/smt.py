"""SMT back-end (z3): exact decision over the reals with branch and bound on input boxes (DESIGN.md §5).

Decides ``sup_{x in X} ||f(x) - g(x)|| <= eps`` (linf, l1, top1 exactly; l2 by a sufficient
check, see :mod:`lumpver.verifiers.smt_spec`) and VNN-LIB properties (no x in a region maps into an
unsafe polytope). The search:

1. a short falsifier run (random + PGD) over X — a confirmed violation ends the search;
2. depth-first branch and bound over input boxes: on each sub-box, sound bound propagation
   (``lumpver.bounds.engine``, CROWN, both networks stacked on the shared input) closes every
   disjunct whose row bound excludes it — without z3;
3. a sub-box with few unstable neurons (or at the depth cap) goes to z3: exact rationals of
   the float weights, stable neurons fixed, Boolean phases and triangle constraints for the
   unstable ones (:mod:`lumpver.verifiers.smt_encode`); one disjunct (one output and sign) at a time
   with push/pop on one solver; ``unsat`` closes the box, ``unknown`` splits it further;
4. otherwise split the input dimension with the largest ``width * |gradient|`` (smear).

Soundness: ``proved`` only when every sub-box is closed by sound bounds or by a z3 ``unsat``
(real arithmetic on the exact float values: the float32 rounding of the deployed model is not
part of the claim). ``violated`` only with an input rounded to float32, inside X, whose
violation is reproduced by float64 and float32 forward passes (and, by the command layer, by
onnxruntime on the files). Timeouts, z3 ``unknown``, non-piecewise-linear activations where
bounds do not suffice, and z3 models that float replay does not reproduce give ``unknown``.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

import numpy as np

from lumpver.bounds.region import bisect_box, region_box
from lumpver.specs.inputset import Box, InputSet
from lumpver.errors import InputError
from lumpver.ir.network import Network, require_dense
from lumpver.verifiers import falsify
from lumpver.verifiers.base import Query, SearchStats, Verdict
from lumpver.verifiers.smt_encode import encode
from lumpver.verifiers.smt_spec import (
    BOUND_TOL,
    Spec,
    build_spec,
    count_unstable,
    is_piecewise_linear,
    open_disjuncts,
    region_with_box,
    spec_bounds,
    stacked_network,
)


@dataclass
class SmtOptions:
    """Search knobs (defaults suit ACAS-Xu-sized nets)."""

    max_unstable: int = 6  # hand a sub-box to z3 at or below this many unstable neurons (z3 slows down fast)
    max_depth: int = 60  # never split deeper than this
    cap_unstable: int = 24  # at the depth cap, give up (unknown) rather than hand z3 more unstable neurons
    call_timeout: float = 2.0  # seconds per z3 check; an unknown sub-box is split further
    falsify_seconds: float = 1.0  # budget of the initial falsifier run (capped at 10% of timeout)
    falsify_every: float = 2.0  # seconds of search between interleaved falsifier rounds
    falsify_share: float = 0.25  # length of such a round, as a share of falsify_every
    bound_method: str = "crown"
    naive: bool = False  # baseline: all-ite ReLUs, no bounds, no splitting, no falsifier
    #: one solver with push/pop per sub-box. Off by default: z3 then skips its preprocessing
    #: (equality elimination) and was several times slower per query in our measurements (bench/RESULTS.md).
    incremental: bool = False


@dataclass
class _Stats(SearchStats):
    #: z3 answers by kind ("calls", "unsat", "sat", "unknown")
    z3: Counter = field(default_factory=Counter)
    max_depth: int = 0
    doubts: list[str] = field(default_factory=list)


class SmtBackend:
    """Back-end ``smt``: see the module docstring."""

    name = "smt"

    def __init__(self, options: Optional[SmtOptions] = None) -> None:
        self.options = options or SmtOptions()

    def check(self, query: Query, options: Optional[SmtOptions] = None) -> Verdict:
        opt = options or self.options
        t0 = time.monotonic()
        try:
            v = _Search(query, opt, t0).run()
        except MemoryError:
            v = Verdict("unknown", self.name, "out of memory")
        except InputError as e:  # a network the encoding does not cover (convolutions)
            v = Verdict("unknown", self.name, str(e))
        except Exception as e:  # a solver error is unknown, never proved
            if type(e).__name__ == "Z3Exception":
                v = Verdict("unknown", self.name, f"z3 error: {e}")
            else:
                raise
        v.seconds = time.monotonic() - t0
        return v


class _Search:
    def __init__(self, query: Query, opt: SmtOptions, t0: float) -> None:
        self.q, self.opt, self.t0 = query, opt, t0
        self.deadline = t0 + query.timeout
        self.nets: list[Network] = [query.network] + ([query.other] if query.other is not None else [])
        for net in self.nets:  # the z3 encoding reads dense weight matrices
            require_dense(net, "the smt back-end")
        self.spec: Spec = build_spec(query)
        self.pwl = is_piecewise_linear(self.nets)
        self.stats = _Stats()
        self.cache: dict = {}
        self.rng = np.random.default_rng(query.seed)
        self._rounds = 0
        self._region, self._depth = None, 0

    # ----- verdicts ----------------------------------------------------------------------
    def _details(self) -> dict:
        return {
            "stats": self.stats.as_dict(),
            "spec": self.spec.note or ("property" if self.q.other is None else f"{self.q.norm} exact"),
            "arithmetic": "exact rationals of the float weights (real arithmetic)",
            "bound_tolerance_rel": BOUND_TOL,
            "contains_tolerance": falsify.CONTAINS_TOL,
            "options": dict(self.opt.__dict__),
        }

    def _unknown(self, reason: str, lb: Optional[float] = None) -> Verdict:
        return Verdict("unknown", "smt", reason, lower_bound=lb, details=self._details())

    def _violated(self, x: np.ndarray, how: str) -> Verdict:
        yf = self.q.network.forward(x)[0]
        yg = None if self.q.other is None else self.q.other.forward(x)[0]
        lb = None if self.q.other is None else falsify.value_of(self.q, yf, yg)
        return Verdict("violated", "smt", how, counterexample=x, lower_bound=lb, details=self._details())

    def _proved(self) -> Verdict:
        ub = float(self.q.epsilon) if self.q.other is not None and self.q.norm != "top1" else None
        return Verdict("proved", "smt", "every sub-box closed by sound bounds or z3 unsat", upper_bound=ub, details=self._details())

    # ----- search ------------------------------------------------------------------------
    def run(self) -> Verdict:
        if self.q.memory_mb:
            import z3

            z3.set_param("memory_max_size", int(self.q.memory_mb))
        if not self.opt.naive:
            budget = min(self.opt.falsify_seconds, 0.1 * self.q.timeout)
            res = falsify.search(self.q, samples=500, starts=4, steps=30, deadline=time.monotonic() + budget,
                                 rng=self.rng, restarts=10**6)
            if res.counterexample is not None:
                return self._violated(res.counterexample, "falsifier counterexample (float32/float64 replay)")
        stack = [(r, region_box(r), 0) for r in self.q.input_set.regions]
        last = time.monotonic()
        while stack:
            if time.monotonic() > self.deadline:
                return self._unknown(f"timeout after {self.q.timeout:g} s ({len(stack)} sub-boxes open)")
            if not self.opt.naive and time.monotonic() - last > self.opt.falsify_every:
                out = self._falsify_more(stack[-1])
                if out is not None:
                    return out
                last = time.monotonic()
            region, box, depth = stack.pop()
            self._region, self._depth = region, depth
            out = self._box(region, box, depth)
            if isinstance(out, Verdict):
                return out
            stack.extend((region, b, depth + 1) for b in out)
        if self.stats.doubts:
            return self._unknown(self.stats.doubts[0])
        return self._proved()

    def _falsify_more(self, top) -> Optional[Verdict]:
        """A falsifier round interleaved with the search (DESIGN.md §5): alternately over the
        whole input set and over the open sub-box on top of the stack, about
        ``falsify_share`` of the time. Narrow counterexamples are found here, not by z3."""
        self._rounds += 1
        q = self.q
        if self._rounds % 2 == 0:
            region, box, _ = top
            q = Query(q.network, InputSet([region_with_box(region, box)]), q.other, q.epsilon, q.norm, q.prop,
                      timeout=q.timeout, seed=q.seed)
        budget = self.opt.falsify_share * self.opt.falsify_every
        res = falsify.search(q, samples=200, starts=2, steps=20, rng=self.rng, restarts=10**6,
                             deadline=min(self.deadline, time.monotonic() + budget))
        if res.counterexample is not None:
            return self._violated(res.counterexample, "falsifier counterexample during the search (float32/float64 replay)")
        return None

    def _box(self, region, box: Box, depth: int):
        """Close the sub-box, return a verdict, or return sub-boxes to explore."""
        st = self.stats
        st.boxes += 1
        st.max_depth = max(st.max_depth, depth)
        sub = region_with_box(region, box)
        if self.opt.naive:
            return self._solve(sub, list(range(len(self.spec.disjuncts))), None, depth, final=True)
        bounds = spec_bounds(self.nets, self.spec, sub, self.opt.bound_method)
        live = open_disjuncts(self.spec, bounds)
        if not live:
            st.closed_by_bounds += 1
            return []
        at_cap = depth >= self.opt.max_depth or float(np.max(box.upper - box.lower)) <= 0.0
        n_unstable = count_unstable(bounds)
        if at_cap and n_unstable > self.opt.cap_unstable:
            st.doubts.append(f"depth cap with {n_unstable} unstable neurons")
            return []
        if self.pwl and (n_unstable <= self.opt.max_unstable or at_cap):
            return self._solve(sub, live, bounds, depth, final=at_cap)
        if at_cap:
            why = "non-piecewise-linear activation, bounds not tight enough" if not self.pwl else "depth cap"
            st.doubts.append(why)
            return []
        return self._split(box, live)

    def _split(self, box: Box, live: list[int]) -> list[Box]:
        left, right, _, _ = bisect_box(box, self._split_dim(box, live))
        return [right, left]

    def _split_dim(self, box: Box, live: list[int]) -> int:
        # alternate the bound-driven and the gradient choice: either alone stalls on some ACAS Xu nets
        return split_dim(self.nets, self.spec, box, live, self._region, self.opt.bound_method, by_bounds=self._depth % 2 == 0)

    # ----- z3 ----------------------------------------------------------------------------
    def _solve(self, sub, live: list[int], bounds, depth: int, final: bool):
        import z3

        st = self.stats
        if not self.pwl:
            st.doubts.append("non-piecewise-linear activation (sigmoid/tanh): z3 not applicable")
            return []
        enc = encode(self.nets, sub, None if bounds is None else bounds.neurons, naive=self.opt.naive, cache=self.cache)
        ys = [z3.RealVal(0) if y == "0" else z3.Real(y) for y in enc.outputs]
        xs = [z3.Real(x) for x in enc.inputs]
        solver = None
        for d in live:
            left = self.deadline - time.monotonic()
            if left <= 0:
                st.doubts.append("timeout")
                return self._unknown(f"timeout after {self.q.timeout:g} s")
            if solver is None or not self.opt.incremental:
                solver = z3.Solver()
                solver.set("timeout", max(1, int(1000 * min(self.opt.call_timeout, left))))
                solver.from_string(enc.text)
            if self.opt.incremental:
                solver.push()  # (push on a fresh solver internalises the formula without a time limit: avoided)
            for row in self.spec.disjuncts[d]:
                solver.add(_row(row, ys))
            solver.set("timeout", max(1, int(1000 * min(self.opt.call_timeout, left))))
            st.z3["calls"] += 1
            r = solver.check()
            if r == z3.unsat:
                st.z3["unsat"] += 1
            elif r == z3.sat:
                st.z3["sat"] += 1
                x = np.array([float(_frac(solver.model().eval(v, model_completion=True))) for v in xs])
                out = self._confirm(x, sub)
                if out is not None:
                    return out
                if not final and not self.opt.naive:
                    self._pop(solver)
                    return self._split(region_box(sub), live)
                st.doubts.append("z3 model not reproduced by float replay" if self.spec.exact else f"sufficient check inconclusive ({self.spec.note})")
            else:
                st.z3["unknown"] += 1
                why = solver.reason_unknown()
                if not final and not self.opt.naive:
                    self._pop(solver)
                    return self._split(region_box(sub), live)
                st.doubts.append(f"z3 unknown ({why})")
                self._pop(solver)
                return []
            self._pop(solver)
        return []

    def _pop(self, solver) -> None:
        if self.opt.incremental:
            solver.pop()

    def _confirm(self, x: np.ndarray, sub) -> Optional[Verdict]:
        """A replayed counterexample near the z3 model ``x``, or None."""
        xf = falsify.to_float32_inside(x, sub)
        if xf is not None and falsify.confirms(self.q, xf):
            return self._violated(xf, "z3 model, replayed in float32 and float64")
        q = Query(self.q.network, InputSet([sub]), self.q.other, self.q.epsilon, self.q.norm, self.q.prop,
                  timeout=max(0.0, min(2.0, self.deadline - time.monotonic())), seed=self.q.seed)
        res = falsify.search(q, samples=200, starts=2, steps=30, seeds=[x])
        if res.counterexample is not None:
            return self._violated(res.counterexample, "falsifier near a z3 model, replayed in float32 and float64")
        return None


#: up to this many inputs, a split dimension is chosen by trying every dimension (bound-driven)
TRY_ALL_DIMS = 8


def split_dim(nets: list[Network], spec: Spec, box: Box, live: list[int], region=None, method: str = "crown",
              by_bounds: bool = True) -> int:
    """The input dimension to bisect ``box`` along.

    Up to :data:`TRY_ALL_DIMS` inputs: the dimension whose two halves have the best worst-case
    bound, i.e. maximising ``min_half min_live_disjunct max_row lower(row)`` (a disjunct is closed
    once one of its rows has a positive lower bound). The gradient heuristic below kept halving
    the same few dimensions of ACAS Xu boxes (one dimension never split at depth 34).
    When no dimension improves on the box's own score, with more inputs, or ``by_bounds=False``: the largest ``width * max_row |d row / d x_i|`` at the centre (smear)."""
    width = box.upper - box.lower
    if by_bounds and box.dim <= TRY_ALL_DIMS:
        parent = _closure_score(spec, spec_bounds(nets, spec, box if region is None else region_with_box(region, box), method), live)
        best, arg = -np.inf, None
        for i in np.nonzero(width > 0)[0]:
            worst = np.inf
            for half in bisect_box(box, int(i))[:2]:
                sub = half if region is None else region_with_box(region, half)
                worst = min(worst, _closure_score(spec, spec_bounds(nets, spec, sub, method), live))
            if worst > best:
                best, arg = worst, int(i)
        if arg is not None and best > parent + 1e-9 * (1.0 + abs(parent)):
            return arg  # otherwise no half improves: fall back to smear
    rows = [r for d in live for r in spec.disjuncts[d]]
    try:
        net = stacked_network(nets, rows)
    except Exception:
        return int(np.argmax(width))
    centre = 0.5 * (box.lower + box.upper)
    _, vjp = falsify.forward_vjp(net, np.repeat(centre[None, :], len(rows), axis=0))
    g = np.max(np.abs(vjp(np.eye(len(rows)))), axis=0)
    score = width * g
    return int(np.argmax(score)) if np.max(score) > 0 else int(np.argmax(width))


def _closure_score(spec: Spec, bounds, live: list[int]) -> float:
    """``min_{d in live} max_{row in d} lower(row)``: positive once every live disjunct is closed."""
    starts = np.cumsum([0] + [len(d) for d in spec.disjuncts])
    return float(min(np.max(bounds.rows_lower[starts[d]:starts[d + 1]]) for d in live))


def _frac(v) -> Fraction:
    if hasattr(v, "as_fraction"):
        return v.as_fraction()
    return Fraction(str(v.as_decimal(30)).rstrip("?"))  # algebraic numbers (not expected in LRA)


def _row(row, ys):
    import z3

    terms = [z3.RealVal(Fraction(*float(c).as_integer_ratio())) * y for c, y in zip(row.c, ys) if c != 0]
    expr = z3.Sum(terms) + z3.RealVal(Fraction(*float(row.c0).as_integer_ratio())) if terms else z3.RealVal(Fraction(*float(row.c0).as_integer_ratio()))
    return expr < 0 if row.strict else expr <= 0


BACKEND = SmtBackend()
