"""Falsifier: random sampling, then gradient-guided search (PGD) over the input set (DESIGN.md §5).

The core works on :class:`~lumpver.ir.network.Network` objects (and graph networks). For an equivalence query it
maximises ``||f(x) - g(x)||`` (norms linf, l1, l2, and top1 = top-1 disagreement); for a
property query it maximises the violation margin of the unsafe output set. Gradients are
exact local gradients (vector-Jacobian products through the activation pattern for
piecewise-linear nets, analytic derivatives for sigmoid/tanh).

Soundness: the falsifier can only *refute*. It answers ``violated`` only for a float32
input that lies in X and shows the violation in both a float64 and a float32 forward pass;
callers that know the ONNX files (``lumpver compare``/``verify``) replay it once more with
onnxruntime before reporting it. Otherwise the answer is ``unknown`` with ``lower_bound`` =
the best value found (a lower bound on the supremum, used by ``lumpver bound``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from lumpver.bounds.region import region_box
from lumpver.ir.activations import get_activation
from lumpver.specs.inputset import OutputProperty, Polytope, Region
from lumpver.specs.norms import norm_value
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.network import Network
from lumpver.verifiers.base import Query, Verdict

#: Tolerance (absolute) for a point to count as inside a polytope region.
CONTAINS_TOL = 1e-9


# ----- forward / backward ------------------------------------------------------------------
def forward_vjp(net: Network, x: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Outputs ``(n, m)`` for raw inputs ``x (n, d)`` and a function mapping output seeds
    ``(n, m)`` to input gradients ``(n, d)`` (exact local vector-Jacobian product through the
    operator interface: ``op.forward`` then ``op.backward``, so convolutions stay operators; a graph
    network walks its own nodes, :meth:`lumpver.ir.graph.GraphNetwork.forward_vjp`)."""
    if isinstance(net, GraphNetwork):
        return net.forward_vjp(x)
    scale, shift = net.input_affine()
    h = x * scale + shift
    cache = []
    for layer in net.layers:
        z = layer.op.forward(h) + layer.bias
        h = layer.activate(z)
        cache.append((layer, z, h))

    def vjp(seed: np.ndarray) -> np.ndarray:
        g = seed
        for layer, z, hh in reversed(cache):
            g = layer.op.backward(g * get_activation(layer.activation).derivative(z, hh, layer.alpha))
        return g * scale

    return h, vjp


# ----- objectives ---------------------------------------------------------------------------
def _norm_seed(d: np.ndarray, norm: str) -> np.ndarray:
    if norm == "linf":
        seed = np.zeros_like(d)
        i = np.argmax(np.abs(d), axis=1)
        seed[np.arange(len(d)), i] = np.sign(d[np.arange(len(d)), i]) + (d[np.arange(len(d)), i] == 0)
        return seed
    if norm == "l1":
        return np.sign(d) + (d == 0)
    n = np.sqrt(np.sum(d * d, axis=1, keepdims=True))
    return np.where(n > 0, d / np.maximum(n, 1e-300), 1.0)


def _margin_seed(y: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``max_{j != cls} y_j - y_cls`` and its gradient seed (per row)."""
    rows = np.arange(len(y))
    other = y.copy()
    other[rows, cls] = -np.inf
    j = np.argmax(other, axis=1)
    value = y[rows, j] - y[rows, cls]
    seed = np.zeros_like(y)
    seed[rows, j] = 1.0
    seed[rows, cls] -= 1.0
    return value, seed


def property_margin(y: np.ndarray, prop: OutputProperty) -> tuple[np.ndarray, int, int]:
    """Score ``-min_d max_k (A_d y - b_d)_k`` of one output ``y``; >= 0 means unsafe."""
    best, bd, bk = -np.inf, 0, 0
    for d, (A, b) in enumerate(prop.disjuncts):
        r = A @ y - b
        k = int(np.argmax(r))
        if -r[k] > best:
            best, bd, bk = -float(r[k]), d, k
    return best, bd, bk


@dataclass
class Objective:
    """A scalar score over a batch of raw inputs with its gradient; larger = closer to violation.
    ``target`` (property queries) scores only that disjunct of the unsafe set: a targeted attack,
    which escapes the local optimum the closest disjunct leads the untargeted search into."""

    query: Query
    target: Optional[int] = None

    def score(self, x: np.ndarray, grad: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
        q = self.query
        yf, vjp_f = forward_vjp(q.network, x)
        if q.other is None:
            return self._property(yf, vjp_f, grad)
        yg, vjp_g = forward_vjp(q.other, x)
        if q.norm == "top1":
            a = np.argmax(yf, axis=1)
            b = np.argmax(yg, axis=1)
            v1, s1 = _margin_seed(yg, a)
            v2, s2 = _margin_seed(yf, b)
            use1 = v1 >= v2
            value = np.where(use1, v1, v2)
            if not grad:
                return value, None
            gx = np.where(use1[:, None], vjp_g(s1 * use1[:, None]), vjp_f(s2 * (~use1)[:, None]))
            return value, gx
        d = yf - yg
        value = norm_value(d, q.norm)
        if not grad:
            return value, None
        seed = _norm_seed(d, q.norm)
        return value, vjp_f(seed) - vjp_g(seed)

    def _property(self, y: np.ndarray, vjp, grad: bool):
        """Value: ``-max_k r_k`` of the closest (or targeted) disjunct, ``r = A y - b``. Gradient seed: on a
        conjunction not yet met, ``-sum_k r_k^+ A_k / sum_k r_k^+`` (the penalty ``sum_k (r_k^+)^2``'s direction,
        normalised), which pursues every unmet row at once; the subgradient of the max (the worst row alone)
        made the sign steps alternate between rows and miss small regions where all rows hold (the
        reach_prob_density specs: ``|x_1|, |x_2| <= rad`` and ``log rho >= p``)."""
        prop = self.query.prop
        value = np.empty(len(y))
        seed = np.zeros_like(y)
        for i, yi in enumerate(y):
            if self.target is None:
                value[i], d, k = property_margin(yi, prop)
            else:
                A, b = prop.disjuncts[self.target]
                d, k = self.target, int(np.argmax(A @ yi - b))
                value[i] = -float((A @ yi - b)[k])
            A, b = prop.disjuncts[d]
            seed[i] = -_penalty_weights(A @ yi - b, k) @ A
        return value, (vjp(seed) if grad else None)


def _penalty_weights(r: np.ndarray, k: int) -> np.ndarray:
    """Row weights of the gradient seed of :meth:`Objective._property`: the unmet rows' excesses normalised
    (row ``k`` alone once every row is met)."""
    pos = np.maximum(r, 0.0)
    total = float(np.sum(pos))
    if total > 0 and np.isfinite(total):
        return pos / total
    w = np.zeros_like(r)
    w[k] = 1.0
    return w


# ----- violation test on concrete outputs ------------------------------------------------
def is_violation(query: Query, y_f: np.ndarray, y_g: Optional[np.ndarray]) -> bool:
    """Whether concrete outputs (one sample) violate the query's claim (no tolerance)."""
    y_f = np.asarray(y_f, dtype=np.float64).reshape(-1)
    if query.other is None:
        return query.prop.is_unsafe(y_f, tol=0.0)
    y_g = np.asarray(y_g, dtype=np.float64).reshape(-1)
    if query.norm == "top1":
        return int(np.argmax(y_f)) != int(np.argmax(y_g))
    return float(norm_value((y_f - y_g)[None, :], query.norm)[0]) > query.epsilon


def value_of(query: Query, y_f: np.ndarray, y_g: Optional[np.ndarray]) -> float:
    """The attained norm (equivalence; 1/0 for top1) or margin (property) of one sample."""
    y_f = np.asarray(y_f, dtype=np.float64).reshape(-1)
    if query.other is None:
        return property_margin(y_f, query.prop)[0]
    y_g = np.asarray(y_g, dtype=np.float64).reshape(-1)
    if query.norm == "top1":
        return float(int(np.argmax(y_f)) != int(np.argmax(y_g)))
    return float(norm_value((y_f - y_g)[None, :], query.norm)[0])


def confirms(query: Query, x: np.ndarray) -> bool:
    """Violation shown by both the float64 and the float32 forward pass of the networks."""
    for dt in (np.float64, np.float32):
        yf = query.network.forward(x, dtype=dt)[0]
        yg = None if query.other is None else query.other.forward(x, dtype=dt)[0]
        if not is_violation(query, yf, yg):
            return False
    return True


# ----- geometry -----------------------------------------------------------------------------
def to_float32_inside(x: np.ndarray, region: Region) -> Optional[np.ndarray]:
    """``x`` rounded to float32 values lying in ``region`` (box exactly; polytope within
    :data:`CONTAINS_TOL`), as float64; None if rounding cannot keep it inside."""
    box = region_box(region)
    lo32 = box.lower.astype(np.float32)
    hi32 = box.upper.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) < box.lower, np.nextafter(lo32, np.float32(np.inf)), lo32)
    hi32 = np.where(hi32.astype(np.float64) > box.upper, np.nextafter(hi32, np.float32(-np.inf)), hi32)
    if np.any(lo32 > hi32):
        return None
    xf = np.clip(np.asarray(x, dtype=np.float64).astype(np.float32), lo32, hi32).astype(np.float64)
    return xf if region.contains(xf, tol=CONTAINS_TOL) else None


def project(x: np.ndarray, region: Region, rounds: int = 30) -> np.ndarray:
    """Approximate projection onto the region (box clip; POCS on half-spaces for polytopes)."""
    box = region_box(region)
    x = np.clip(x, box.lower, box.upper)
    if isinstance(region, Polytope):
        A, b = region.A, region.b
        nrm = np.maximum(np.sum(A * A, axis=1), 1e-300)
        for _ in range(rounds):
            viol = x @ A.T - b  # (n, rows)
            if np.all(viol <= 0):
                break
            for r in range(A.shape[0]):
                v = np.maximum(x @ A[r] - b[r], 0.0)
                x = x - (v / nrm[r])[:, None] * A[r][None, :]
            x = np.clip(x, box.lower, box.upper)
    return x


# ----- search -------------------------------------------------------------------------------
@dataclass
class SearchResult:
    best_value: float
    best_x: Optional[np.ndarray]
    counterexample: Optional[np.ndarray]  # confirmed (float32-valued, inside X), or None
    evaluations: int


def search(
    query: Query,
    samples: int = 2000,
    starts: int = 8,
    steps: int = 60,
    deadline: Optional[float] = None,
    rng: Optional[np.random.Generator] = None,
    seeds: Optional[list[np.ndarray]] = None,
    restarts: int = 0,
) -> SearchResult:
    """Sample each region (uniform + corners), then run PGD from the best points (and from
    ``seeds``, e.g. a solver's near-miss). Then up to ``restarts`` rounds of momentum PGD from
    fresh starts (:func:`_restart_round`) while the deadline allows. Stops at the first
    confirmed violation."""
    rng = rng or np.random.default_rng(query.seed)
    deadline = deadline if deadline is not None else time.monotonic() + query.timeout
    obj = Objective(query)
    best = SearchResult(-np.inf, None, None, 0)
    for region in query.input_set.regions:
        if time.monotonic() > deadline:
            break
        box = region_box(region)
        pts = box.sample(batch_cap(query, samples), rng, corners=True)
        if seeds:
            pts = np.vstack([np.asarray(s, dtype=np.float64).reshape(1, -1) for s in seeds] + [pts])
        pts = project(pts, region)
        inside = np.array([region.contains(p, tol=CONTAINS_TOL) for p in pts]) if isinstance(region, Polytope) else None
        if inside is not None:
            pts = pts[inside]
            if len(pts) == 0:
                continue
        vals, _ = obj.score(pts, grad=False)
        best.evaluations += len(pts)
        order = np.argsort(-vals)
        if _update(best, query, pts[order[: 4 * starts]], region):
            return best
        x = pts[order[:starts]].copy()
        if seeds:
            x = np.vstack([project(np.asarray(seeds, dtype=np.float64).reshape(len(seeds), -1), region), x])
        if _pgd(best, query, obj, x, region, steps, deadline):
            return best
    for r in range(restarts):
        for region in query.input_set.regions:
            if time.monotonic() > deadline:
                return best
            if _restart_round(best, query, _round_objective(query, r, best.best_x), region, rng, r, deadline):
                return best
    return best


#: points sampled per restart round, and PGD starts taken from the best of them
RESTART_SAMPLES = 8192
RESTART_STARTS = 16
#: feature values (inputs and every layer's outputs, summed over the batch) one scoring batch may
#: hold: a CNN with tens of thousands of features per sample scores fewer samples per batch
BATCH_FEATURES = 1 << 23


def batch_cap(query: Query, n: int) -> int:
    """``n`` samples, fewer when a batch of them would exceed :data:`BATCH_FEATURES` (at least 16)."""
    nets = [query.network] + ([query.other] if query.other is not None else [])
    per = sum(net.n_features for net in nets)
    return int(max(16, min(n, BATCH_FEATURES // max(1, per))))


def _starts(region: Region, rng: np.random.Generator, best_x: Optional[np.ndarray], n: int, r: int) -> np.ndarray:
    """Candidate starts: random vertices, random points of random faces (some coordinates at a
    bound), uniform points, and points near the best input so far at a radius shrinking with
    the round ``r`` (narrow counterexamples sit next to near-misses)."""
    box = region_box(region)
    lo, hi = box.lower, box.upper
    d = len(lo)
    q = n // 4
    vert = np.where(rng.random((q, d)) < 0.5, lo, hi)
    face = rng.uniform(lo, hi, (q, d))
    pin = rng.random((q, d)) < 0.5
    face = np.where(pin, np.where(rng.random((q, d)) < 0.5, lo, hi), face)
    uni = rng.uniform(lo, hi, (q, d))
    if best_x is None:
        near = rng.uniform(lo, hi, (n - 3 * q, d))
    else:
        radius = (hi - lo) * 0.2 * 0.5 ** (r % 8)
        near = best_x + radius * rng.uniform(-1.0, 1.0, (n - 3 * q, d))
    return project(np.vstack([vert, face, uni, near]), region)


def _round_objective(query: Query, r: int, best_x: Optional[np.ndarray]) -> Objective:
    """Restart round ``r``'s objective: untargeted on even rounds; on odd rounds of a property with
    several disjuncts, targeted at each disjunct in turn, the runners-up at the best input so far
    first (the untargeted rounds already pursue the closest one)."""
    n = 0 if query.prop is None else len(query.prop.disjuncts)
    if n < 2 or r % 2 == 0:
        return Objective(query)
    order = np.arange(n)
    if best_x is not None:
        y = query.network.forward(best_x)[0]
        order = np.argsort([np.max(A @ y - b) for A, b in query.prop.disjuncts], kind="stable")
    return Objective(query, int(order[(r // 2 + 1) % n]))


def _restart_round(best: SearchResult, query: Query, obj: Objective, region: Region, rng: np.random.Generator,
                   r: int, deadline: float, steps: int = 30) -> bool:
    """One round: score a large batch of fresh candidates (:func:`_starts`, vectorised, no
    gradients), then momentum PGD (normalised gradients, sign steps on a cosine schedule from
    5 % to 0.05 % of the box width) from the best of them; candidates are confirmed by
    :func:`_update`."""
    box = region_box(region)
    width = box.upper - box.lower
    pts = _starts(region, rng, best.best_x, batch_cap(query, RESTART_SAMPLES), r)
    v, _ = obj.score(pts, grad=False)
    best.evaluations += len(pts)
    order = np.argsort(-v)
    if _update(best, query, pts[order[:2]], region):
        return True
    x = pts[order[:RESTART_STARTS]]
    m = np.zeros_like(x)
    for t in range(steps):
        if time.monotonic() > deadline:
            return False
        v, g = obj.score(x)
        best.evaluations += len(x)
        if _update(best, query, x[np.argsort(-v)[:2]], region):
            return True
        g = g * width
        m = 0.8 * m + g / np.maximum(np.sum(np.abs(g), axis=1, keepdims=True), 1e-300)
        step = 0.0005 + 0.025 * (1.0 + np.cos(np.pi * t / steps))
        x = project(x + step * width * np.sign(m), region)
    v, _ = obj.score(x, grad=False)
    return _update(best, query, x[np.argsort(-v)[:4]], region)


def _pgd(best: SearchResult, query: Query, obj: Objective, x: np.ndarray, region: Region, steps: int, deadline: float) -> bool:
    box = region_box(region)
    width = box.upper - box.lower
    for t in range(steps):
        if time.monotonic() > deadline:
            return False
        _, g = obj.score(x)
        best.evaluations += len(x)
        step = 0.25 * (1.0 - t / steps) + 0.005
        x = project(x + step * width * np.sign(g), region)
        if _update(best, query, x, region):
            return True
    return False


def _update(best: SearchResult, query: Query, pts: np.ndarray, region: Region) -> bool:
    """Round candidates to float32 inside the region, track the best value, confirm violations."""
    for p in pts:
        xf = to_float32_inside(p, region)
        if xf is None:
            continue
        yf = query.network.forward(xf)[0]
        yg = None if query.other is None else query.other.forward(xf)[0]
        v = value_of(query, yf, yg)
        if v > best.best_value:
            best.best_value, best.best_x = v, xf
        if is_violation(query, yf, yg) and confirms(query, xf):
            best.best_value, best.best_x, best.counterexample = v, xf, xf
            return True
    return False


class Falsifier:
    """Back-end ``falsify``: refutes or reports the best value found as a lower bound."""

    name = "falsify"

    def check(self, query: Query, samples: int = 2000, starts: int = 8, steps: int = 60) -> Verdict:
        t0 = time.monotonic()
        res = search(query, samples=samples, starts=starts, steps=steps, deadline=t0 + query.timeout)
        lb = None if not np.isfinite(res.best_value) else float(res.best_value)
        if query.other is None:
            lb = None  # a property margin is not a norm bound
        details = {"evaluations": res.evaluations, "best_value": None if not np.isfinite(res.best_value) else float(res.best_value)}
        if res.counterexample is not None:
            return Verdict("violated", self.name, "counterexample found (float32 and float64 forward pass)",
                           counterexample=res.counterexample, lower_bound=lb, seconds=time.monotonic() - t0, details=details)
        return Verdict("unknown", self.name, "no counterexample found (the falsifier cannot prove)",
                       lower_bound=lb, seconds=time.monotonic() - t0, details=details)


BACKEND = Falsifier()
