"""Input splitting for the SDP bound: sub-boxes, cheap bounds first, SDP where it matters
(DESIGN.md §5, SDP and differential bound propagation).

One input region is covered by *leaves*: sub-regions obtained by repeated bisection of the
region's bounding box at the midpoint of its widest side (:func:`lumpver.bounds.region.bisect_box`);
a leaf is named by its path of ``L``/``R`` choices, so the checker rebuilds it exactly, and a
set of paths covers the region iff it is prefix-free with Kraft sum 1 (:func:`paths_cover`).
A polytope region stays a polytope on each leaf (its rows plus the leaf box).

Per leaf and per target the certified value is the smaller of

* a *cheap* bound (:func:`lumpver.verifiers.sdp_problem.cheap_values`): the difference of the two
  networks' own output bounds intersected with the difference bounds of :mod:`lumpver.bounds.diff`; and
* the SDP bound of the leaf (:mod:`lumpver.verifiers.sdp_certify`), solved only when the leaf's lifted
  matrix has at most ``max_d`` rows and the cheap bound does not already lie below the bound
  of the other leaves (the total is a maximum over leaves, so such a leaf cannot raise it).

Smaller leaves make more neurons stable (smaller matrices, tighter relaxations). Refinement
(branch and bound) bisects the leaf with the worst bound until the bound is within ``gap`` of
the largest sampled difference, a stop value is reached, ``max_leaves`` exist, or time is up;
a split whose children bound worse than their parent is undone. Every leaf bound is sound, so
stopping at any time still gives a sound bound.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Optional

import numpy as np

from lumpver.bounds.region import bisect_box, region_box
from lumpver.ir.network import Network
from lumpver.specs.inputset import Box, Polytope
from lumpver.verifiers.sdp_certify import certify, target_matrix
from lumpver.verifiers.sdp_problem import combine, region_problem, target_key, targets_for
from lumpver.verifiers.sdp_solve import solve_lmi

#: a leaf is not bisected once its widest side is below this fraction of the root's
MIN_REL_WIDTH = 1e-6


# ------------------------------------------------------------------------------- leaf geometry
def leaf_box(root: Box, path: str) -> Box:
    """The sub-box reached from ``root`` by the bisections in ``path`` (``L``/``R``)."""
    box = root
    for c in path:
        left, right, _, _ = bisect_box(box)
        box = left if c == "L" else right
    return box


def leaf_region(region, root: Box, path: str):
    """The leaf sub-region: a box, or the polytope's rows with the leaf box as bounding box."""
    box = leaf_box(root, path)
    if isinstance(region, Polytope):
        return Polytope(region.A, region.b, box)
    return box


def paths_cover(paths: list[str]) -> bool:
    """True iff the leaves named by ``paths`` partition the root (prefix-free, Kraft sum 1)."""
    if not paths or any(set(p) - {"L", "R"} for p in paths) or len(set(paths)) != len(paths):
        return False
    ordered = sorted(paths)
    if any(b.startswith(a) for a, b in zip(ordered, ordered[1:])):
        return False
    return sum(Fraction(1, 2 ** len(p)) for p in paths) == 1


# ------------------------------------------------------------------------------- one leaf
@dataclass
class Leaf:
    """One processed leaf: its certified leaf bound and the evidence per target."""

    path: str
    box: Box
    bound: float
    lower: float  # largest sampled difference on the leaf (stopping rule only)
    d: int
    evidence: dict[str, Any] = field(default_factory=dict)
    solver_seconds: float = 0.0
    n_sdp: int = 0


def needs_sdp(norm: str, key: tuple, values: dict, ferr: np.ndarray, n_out: int, above: float) -> bool:
    """Can solving ``key`` lower the total? Only if the leaf bound exceeds ``above``."""
    if norm == "linf" and key[0] == "linear":
        return values[key] + float(ferr[key[1]]) > above
    return combine(norm, n_out, values, ferr) > above


def process_leaf(f: Network, g: Network, region, root: Box, path: str, norm: str, options, above: float,
                 deadline: float) -> Leaf:
    """Cheap values, then SDPs (largest cheap value first) while they can lower the total."""
    sub = leaf_region(region, root, path)
    prob = region_problem(f, g, sub, options, options.max_d)
    targets = targets_for(norm, f.n_outputs)
    values = dict(prob.cheap)
    tev = {target_key(t): {"target": t, "method": "interval", "certified": values[target_key(t)]} for t in targets}
    leaf = Leaf(path, prob.box, np.inf, _sampled_lower(f, g, sub, prob.box, norm, path), prob.d)
    if prob.d <= options.max_d:
        for tgt in sorted(targets, key=lambda t: -values[target_key(t)]):
            key = target_key(tgt)
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not needs_sdp(norm, key, values, prob.ferr, f.n_outputs, above):
                continue
            maps = prob.maps()
            sol = solve_lmi(maps, target_matrix(prob.lift, tgt, maps.r), options.solver,
                            min(remaining, options.solve_timeout))
            leaf.solver_seconds += sol.seconds
            leaf.n_sdp += 1
            cert = certify(prob.lift, maps, tgt, sol.t, sol.lam, sol.mu)
            if not cert.ok or cert.value >= values[key]:
                tev[key]["sdp_note"] = cert.reason or "SDP value not below the cheap bound"
                tev[key]["sdp_value"] = cert.value if cert.ok else None
                continue
            values[key] = cert.value
            tev[key] = {"target": tgt, "method": "sdp", "certified": cert.value, "t": sol.t,
                        "lambda_min": cert.lambda_min, "widening": cert.widening, "solver": sol.solver,
                        "status": sol.status, "seconds": round(sol.seconds, 4),
                        "lam": np.maximum(sol.lam, 0.0).tolist(), "mu": sol.mu.tolist()}
    leaf.bound = combine(norm, f.n_outputs, values, prob.ferr)
    leaf.evidence = {"path": path, "matrix_size": prob.d, "float32_error": prob.ferr.tolist(),
                     "leaf_bound": leaf.bound, "targets": list(tev.values())}
    return leaf


def _sampled_lower(f: Network, g: Network, sub, box: Box, norm: str, path: str) -> float:
    """Largest float64 ``||f(x) - g(x)||`` at the leaf centre and a few seeded points."""
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    xs = np.vstack([0.5 * (box.lower + box.upper), box.sample(6, rng, corners=box.dim <= 3)])
    if isinstance(sub, Polytope):
        xs = xs[[sub.contains(x) for x in xs]]
    if xs.shape[0] == 0:
        return -np.inf
    d = f.forward(xs) - g.forward(xs)
    v = {"linf": np.max(np.abs(d), axis=1), "l1": np.sum(np.abs(d), axis=1), "l2": np.linalg.norm(d, axis=1)}[norm]
    return float(np.max(v))


# ------------------------------------------------------------------------------- refinement
@dataclass
class RegionResult:
    leaves: list[Leaf]
    stop_reason: str
    splits: int
    solver_seconds: float = 0.0  # all SDP solves, including those of leaves later split
    n_sdp: int = 0

    @property
    def bound(self) -> float:
        return max(leaf.bound for leaf in self.leaves)

    @property
    def lower(self) -> float:
        return max(leaf.lower for leaf in self.leaves)


def refine_region(f: Network, g: Network, region, norm: str, options, deadline: float,
                  stop_below: Optional[float] = None, log: Optional[Callable[[str], None]] = None) -> RegionResult:
    """Branch and bound over bisections of ``region`` (see the module docstring)."""
    root = region_box(region)
    leaves = [process_leaf(f, g, region, root, "", norm, options, -np.inf, deadline)]
    splits, reason = 0, ""
    spent = [leaves[0].solver_seconds, leaves[0].n_sdp]
    while True:
        U = max(lf.bound for lf in leaves)
        L = max(lf.lower for lf in leaves)
        if stop_below is not None and U <= stop_below:
            reason = f"bound below the stop value {stop_below:g}"
        elif U <= (1 + options.gap) * max(L, 0.0) + 1e-12:
            reason = f"bound within {options.gap:g} of the sampled maximum {L:.6g}"
        elif len(leaves) >= options.max_leaves or not options.split:
            reason = f"{len(leaves)} leaves (limit)"
        elif time.perf_counter() >= deadline:
            reason = "time limit"
        if reason:
            break
        k = int(np.argmax([lf.bound for lf in leaves]))
        worst = leaves[k]
        if np.max(worst.box.upper - worst.box.lower) <= MIN_REL_WIDTH * np.max(root.upper - root.lower):
            reason = "worst leaf too small to split"
            break
        others = max([lf.bound for i, lf in enumerate(leaves) if i != k], default=-np.inf)
        a = process_leaf(f, g, region, root, worst.path + "L", norm, options, others, deadline)
        b = process_leaf(f, g, region, root, worst.path + "R", norm, options, max(others, a.bound), deadline)
        splits += 1
        spent = [spent[0] + a.solver_seconds + b.solver_seconds, spent[1] + a.n_sdp + b.n_sdp]
        if max(a.bound, b.bound) > worst.bound:  # a split only ever helps: keep the parent, stop
            reason = "time limit" if time.perf_counter() >= deadline else "splitting the worst leaf did not help"
            break
        leaves[k:k + 1] = [a, b]
        if log:
            log(f"split {splits}: {len(leaves)} leaves, bound {max(lf.bound for lf in leaves):.6g}")
    return RegionResult(leaves, reason, splits, spent[0], spent[1])
