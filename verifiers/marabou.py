"""The ``marabou`` back-end: the Marabou solver through maraboupy (DESIGN.md §5; optional extra
``lumpver[marabou]``).

The network is encoded straight from the :class:`~lumpver.ir.network.Network` IR with
maraboupy's query builder (no ONNX round trip): raw input variables, the input ops folded into
the first affine layer, one equation per neuron, ReLU/LeakyReLU/sigmoid constraints.

* Property queries: per input region, the region's bounds (and polytope rows), plus the unsafe
  set (one disjunct: plain inequalities; several: a Marabou disjunction constraint).
  ``unsat`` -> ``proved``; ``sat`` -> ``violated`` once the solution replays (float64 and
  float32 forward pass, clipped into the region); anything else -> ``unknown``.
* Equivalence queries: f and g on shared inputs with ``d = f_out - g_out``; ``linf`` asks
  ``d_j >= eps`` and ``-d_j >= eps`` per output (``unsat`` for all -> ``sup |d_j| < eps``);
  ``l1`` asks ``sum_j relu(d_j) + relu(-d_j) >= eps``; ``l2`` is proved through ``l1``
  (``||d||_2 <= ||d||_1``); ``top1`` is not encoded (``unknown``).

Marabou computes in double precision with its own tolerances, so its ``unsat`` is a statement
about the real-arithmetic network up to those tolerances (recorded in ``details``). Solver
output is silenced; exceptions and timeouts give ``unknown``, never ``proved``.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from lumpver.specs.inputset import Box, InputSet, OutputProperty, Polytope
from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Network, require_dense
from lumpver.verifiers.base import Query, Verdict
from lumpver.verifiers import falsify

NAME = "marabou"
STRICT_GAP = 1e-6  # a sat exactly at epsilon is re-asked at epsilon + STRICT_GAP (1 + epsilon)
TOLERANCE_NOTE = "Marabou solves in double precision with its default feasibility tolerances"


def available() -> bool:
    """True when maraboupy imports."""
    try:
        _maraboupy()
    except Exception:
        return False
    return True


def _maraboupy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from maraboupy import MarabouCore, MarabouUtils
        from maraboupy.MarabouNetwork import MarabouNetwork
    return MarabouCore, MarabouUtils, MarabouNetwork


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null (Marabou's C++ core prints directly)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


# ----- encoding ------------------------------------------------------------------------------
def encode_network(mn, net: Network, x_vars: list[int]) -> list[int]:
    """Add ``net`` on the input variables ``x_vars`` to the maraboupy builder ``mn``; returns
    the output variables. Raises ValueError for activations Marabou lacks (tanh)."""
    require_dense(net, "the marabou back-end")
    scale, shift = net.input_affine()
    h = list(x_vars)
    for k, layer in enumerate(net.layers):
        W, b = layer.weight, layer.bias
        if k == 0:  # fold the input ops: W (scale x + shift) + b
            W, b = W * scale, b + layer.weight @ shift
        z = [mn.getNewVariable() for _ in range(layer.width)]
        for i in range(layer.width):
            nz = np.nonzero(W[i])[0]
            mn.addEquality([h[j] for j in nz] + [z[i]], [float(W[i, j]) for j in nz] + [-1.0], -float(b[i]))
        h = _activation(mn, layer, k, z)
    return h


def _activation(mn, layer, k: int, z: list[int]) -> list[int]:
    act = ACTIVATIONS[layer.activation]
    slope = None if act.negative_slope is None else float(act.negative_slope(layer.alpha))
    if slope == 1.0:  # identity
        return z
    if slope is None and act.onnx_op != "Sigmoid":
        raise ValueError(f"layer {k}: Marabou has no {act.name} constraint")
    if slope not in (None, 0.0) and not 0.0 < slope < 1.0:
        raise ValueError(f"layer {k}: Marabou needs a LeakyReLU slope in (0, 1), got {layer.alpha}")
    out = [mn.getNewVariable() for _ in z]
    for zi, hi in zip(z, out):
        if slope == 0.0:
            mn.addRelu(zi, hi)
        elif slope is not None:
            mn.addLeakyRelu(zi, hi, slope)
        else:
            mn.addSigmoid(zi, hi)
    return out


def _input_region(mn, x_vars: list[int], region) -> Box:
    """Bounds (and polytope rows) of the input variables; returns the bounding box."""
    box = region if isinstance(region, Box) else region.bounding_box
    if box is None:
        raise ValueError("Marabou needs finite input bounds: polytope region without a bounding box")
    for v, lo, hi in zip(x_vars, box.lower, box.upper):
        mn.setLowerBound(v, float(lo))
        mn.setUpperBound(v, float(hi))
    if isinstance(region, Polytope):
        for row, rhs in zip(region.A, region.b):
            nz = np.nonzero(row)[0]
            mn.addInequality([x_vars[j] for j in nz], [float(row[j]) for j in nz], float(rhs))
    return box


def _unsafe_set(mn, MarabouCore, MarabouUtils, y_vars: list[int], prop: OutputProperty) -> None:
    def equations(A: np.ndarray, b: np.ndarray) -> list:
        eqs = []
        for row, rhs in zip(np.atleast_2d(A), np.atleast_1d(b)):
            e = MarabouUtils.Equation(MarabouCore.Equation.LE)
            for j in np.nonzero(row)[0]:
                e.addAddend(float(row[j]), y_vars[j])
            e.setScalar(float(rhs))
            eqs.append(e)
        return eqs

    if len(prop.disjuncts) == 1:
        for e in equations(*prop.disjuncts[0]):
            mn.addEquation(e)
    else:
        mn.addDisjunctionConstraint([equations(A, b) for A, b in prop.disjuncts])


# ----- solving -------------------------------------------------------------------------------
@dataclass
class SolveResult:
    status: str  # "sat" | "unsat" | "timeout" | "error" | "unknown"
    x: Optional[np.ndarray] = None
    message: str = ""
    seconds: float = 0.0


def solve(mn, x_vars: list[int], seconds_left: float, quiet: bool = True) -> SolveResult:
    """Run Marabou on the builder ``mn`` with a whole-second timeout (at least 1 s)."""
    MarabouCore, _, _ = _maraboupy()
    if seconds_left <= 0:
        return SolveResult("timeout", message="no time left")
    opts = MarabouCore.Options()
    opts._verbosity = 0
    opts._timeoutInSeconds = max(1, int(math.ceil(seconds_left)))
    t0 = time.perf_counter()
    try:
        ctx = silenced() if quiet else contextlib.nullcontext()
        with ctx:
            code, vals, stats = mn.solve(options=opts, verbose=False)
    except Exception as exc:  # maraboupy raises on malformed queries and internal errors
        return SolveResult("error", message=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
    secs = time.perf_counter() - t0
    if code == "sat":
        return SolveResult("sat", np.array([vals[v] for v in x_vars], dtype=np.float64), seconds=secs)
    if code == "unsat":
        return SolveResult("unsat", seconds=secs)
    if code == "TIMEOUT" or stats.hasTimedOut():
        return SolveResult("timeout", message="Marabou timed out", seconds=secs)
    return SolveResult("error" if code == "ERROR" else "unknown", message=f"Marabou exit code {code!r}", seconds=secs)


def _builder(net: Network):
    MarabouCore, MarabouUtils, MarabouNetwork = _maraboupy()
    mn = MarabouNetwork()
    x = [mn.getNewVariable() for _ in range(net.n_inputs)]
    mn.inputVars = [np.array(x)]
    return mn, x, MarabouCore, MarabouUtils


# ----- property queries --------------------------------------------------------------------
def _replays_unsafe(net: Network, x: np.ndarray, prop: OutputProperty) -> bool:
    y64 = net.forward(x)[0]
    y32 = net.forward(x, np.float32)[0].astype(np.float64)
    return prop.is_unsafe(y64) and prop.is_unsafe(y32)


def check_property(q: Query) -> Verdict:
    """Property query: no x in any region maps into the unsafe set (VNN-LIB convention)."""
    assert q.prop is not None
    deadline = time.perf_counter() + q.timeout
    runs: list[dict[str, Any]] = []
    for i, region in enumerate(q.input_set.regions):
        mn, x, MarabouCore, MarabouUtils = _builder(q.network)
        y = encode_network(mn, q.network, x)
        mn.outputVars = [np.array(y)]
        box = _input_region(mn, x, region)
        _unsafe_set(mn, MarabouCore, MarabouUtils, y, q.prop)
        r = solve(mn, x, deadline - time.perf_counter(), q.quiet)
        runs.append({"region": i, "status": r.status, "seconds": round(r.seconds, 4), **({"message": r.message} if r.message else {})})
        details = {"runs": runs, "tolerance": TOLERANCE_NOTE}
        if r.status == "sat":
            cex = np.clip(r.x, box.lower, box.upper)
            if region.contains(cex) and _replays_unsafe(q.network, cex, q.prop):
                return Verdict("violated", NAME, reason=f"Marabou: sat on region {i}", counterexample=cex, details=details)
            return Verdict("unknown", NAME, reason="Marabou answered sat but its solution does not replay", details=details)
        if r.status != "unsat":
            return Verdict("unknown", NAME, reason=f"region {i}: {r.status} {r.message}".strip(), details=details)
    return Verdict("proved", NAME, reason="Marabou: unsat on every region", details={"runs": runs, "tolerance": TOLERANCE_NOTE})


# ----- equivalence queries -----------------------------------------------------------------
def _pair_builder(f: Network, g: Network):
    mn, x, MarabouCore, MarabouUtils = _builder(f)
    yf = encode_network(mn, f, x)
    yg = encode_network(mn, g, x)
    d = [mn.getNewVariable() for _ in yf]
    for a, b, c in zip(yf, yg, d):
        mn.addEquality([a, b, c], [1.0, -1.0, -1.0], 0.0)  # d = f - g
    mn.outputVars = [np.array(d)]
    return mn, x, d, MarabouCore, MarabouUtils


def _equivalence_goals(norm: str, m: int) -> list[tuple[str, int, float]]:
    """(kind, output, sign) queries whose joint unsat proves the claim."""
    if norm == "linf":
        return [("linf", j, s) for j in range(m) for s in (1.0, -1.0)]
    return [("l1", -1, 1.0)]


def _add_goal(mn, d: list[int], goal: tuple[str, int, float], eps: float) -> None:
    kind, j, sign = goal
    if kind == "linf":
        mn.addInequality([d[j]], [-sign], -eps)  # sign * d_j >= eps
        return
    parts = []
    for dj in d:  # |d_j| = relu(d_j) + relu(-d_j)
        neg, a, b = mn.getNewVariable(), mn.getNewVariable(), mn.getNewVariable()
        mn.addEquality([dj, neg], [1.0, 1.0], 0.0)
        mn.addRelu(dj, a)
        mn.addRelu(neg, b)
        parts += [a, b]
    mn.addInequality(parts, [-1.0] * len(parts), -eps)  # sum |d_j| >= eps


def _distance(f: Network, g: Network, x: np.ndarray, norm: str, dtype=np.float64) -> float:
    d = (f.forward(x, dtype) - g.forward(x, dtype))[0].astype(np.float64)
    return float({"linf": np.max(np.abs(d)), "l1": np.sum(np.abs(d)), "l2": np.sqrt(np.sum(d * d))}[norm])


def _run_goal(f, g, region, goal, eps, deadline, quiet, runs, i):
    mn, x, d, _, _ = _pair_builder(f, g)
    box = _input_region(mn, x, region)
    _add_goal(mn, d, goal, eps)
    r = solve(mn, x, deadline - time.perf_counter(), quiet)
    runs.append({"region": i, "goal": list(goal), "epsilon": eps, "status": r.status, "seconds": round(r.seconds, 4)})
    return r, box


def check_equivalence(q: Query) -> Verdict:
    """``sup_{x in X} ||f(x) - g(x)|| <= eps`` by one Marabou query per output and sign."""
    f, g = q.network, q.other
    assert g is not None
    if q.norm == "top1":
        return Verdict("unknown", NAME, reason="top1 agreement is not encoded for Marabou")
    if f.n_inputs != g.n_inputs or f.n_outputs != g.n_outputs:
        return Verdict("unknown", NAME, reason="networks differ in input or output size")
    deadline = time.perf_counter() + q.timeout
    runs: list[dict[str, Any]] = []
    eps = float(q.epsilon)
    inconclusive: list[str] = []  # sat answers whose points did not replay (Marabou's float tolerances)
    for i, region in enumerate(q.input_set.regions):
        for goal in _equivalence_goals(q.norm, f.n_outputs):
            r, box = _run_goal(f, g, region, goal, eps, deadline, q.quiet, runs, i)
            details = {"runs": runs, "tolerance": TOLERANCE_NOTE, "norm": q.norm}
            if r.status == "sat":
                dist = _distance(f, g, np.clip(r.x, box.lower, box.upper), q.norm)
                if dist <= eps:  # Marabou's constraint is >= eps: ask again strictly above eps
                    r, box = _run_goal(f, g, region, goal, eps + STRICT_GAP * (1.0 + eps), deadline, q.quiet, runs, i)
                if r.status == "sat":
                    cex = np.clip(r.x, box.lower, box.upper)
                    dist = _distance(f, g, cex, q.norm)
                    if region.contains(cex) and dist > eps and _distance(f, g, cex, q.norm, np.float32) > eps:
                        return Verdict("violated", NAME, reason=f"Marabou: {q.norm} distance {dist:.6g} > {eps:.6g}",
                                       counterexample=cex, lower_bound=dist, details=details)
                found = _seeded_search(q, region, cex if r.status == "sat" else None, deadline)
                if found is not None:
                    return found
                inconclusive.append(f"goal {list(goal)}: Marabou's point did not replay as a violation")
                continue
            if r.status != "unsat":
                return Verdict("unknown", NAME, reason=f"{r.status} {r.message}".strip(), details=details)
    if inconclusive:
        return Verdict("unknown", NAME, reason="Marabou: supremum near epsilon, no replayed violation ("
                       + "; ".join(inconclusive[:2]) + ")", details={"runs": runs, "tolerance": TOLERANCE_NOTE})
    return Verdict("proved", NAME, reason=f"Marabou: no {q.norm} difference >= {eps:.6g}", upper_bound=eps,
                   details={"runs": runs, "tolerance": TOLERANCE_NOTE, "norm": q.norm})


def _seeded_search(q: Query, region, seed: Optional[np.ndarray], deadline: float) -> Optional[Verdict]:
    """A short falsifier run started at Marabou's near-miss: a replayed violation, or None."""
    budget = min(2.0, max(0.0, deadline - time.perf_counter()))
    if seed is None or budget <= 0:
        return None
    sub = Query(q.network, InputSet([region]), other=q.other, epsilon=q.epsilon, norm=q.norm, timeout=budget,
                seed=q.seed)
    res = falsify.search(sub, samples=200, starts=4, steps=40, deadline=time.monotonic() + budget, seeds=[seed])
    if res.counterexample is None:
        return None
    return Verdict("violated", NAME, reason=f"falsifier from Marabou's near-miss: {q.norm} distance "
                   f"{res.best_value:.6g} > {q.epsilon:.6g}", counterexample=res.counterexample,
                   lower_bound=res.best_value)


class MarabouBackend:
    """Complete (up to Marabou's tolerances) back-end for ReLU networks."""

    name = NAME

    def check(self, query: Query) -> Verdict:
        t0 = time.perf_counter()
        try:
            _maraboupy()
        except Exception as exc:
            return Verdict("unknown", NAME, reason=f"maraboupy unavailable ({exc}); install lumpver[marabou]", seconds=0.0)
        try:
            v = check_property(query) if query.prop is not None else check_equivalence(query)
        except Exception as exc:  # encoding or solver failure: never a proof
            v = Verdict("unknown", NAME, reason=f"Marabou adapter error: {type(exc).__name__}: {exc}")
        v.seconds = time.perf_counter() - t0
        return v


BACKEND = MarabouBackend()
