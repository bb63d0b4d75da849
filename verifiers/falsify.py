"""Falsifier: batched targeted APGD, random sampling and gradient-guided search (PGD) over the input set
(DESIGN.md §5).

The core works on :class:`~lumpver.ir.network.Network` objects (and graph networks). For an equivalence query it
maximises ``||f(x) - g(x)||`` (norms linf, l1, l2, and top1 = top-1 disagreement); for a
property query it maximises the violation margin of the unsafe output set. Gradients are
exact local gradients (vector-Jacobian products through the activation pattern for
piecewise-linear nets, analytic derivatives for sigmoid/tanh). A property query is attacked first by
:func:`attack_round`: every unsafe disjunct a target, all targets and starts rows of one batch, APGD step sizes.

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

from lumpver.bounds.blas import blas_single_thread
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

    def __post_init__(self) -> None:
        self._targets = Targets.of(self.query.prop) if self.query.prop is not None and self.query.prop.disjuncts \
            else None

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

    def rank(self, x: np.ndarray) -> np.ndarray:
        """Values that only order candidates (the best go to :func:`_update`, which scores them in float64): on
        property queries of logit networks from a float32 forward pass without the gradient's cache."""
        if self._targets is None or getattr(self.query.network, "output_softmax", False):
            return self.score(x, grad=False)[0]
        y = self.query.network.forward(x, dtype=np.float32).astype(np.float64)
        t = self._targets.closest(y) if self.target is None else np.full(len(y), self.target)
        return self._targets.score(y, t)[0]

    def _property(self, y: np.ndarray, vjp, grad: bool):
        """Value: ``-max_k r_k`` of the closest (or targeted) disjunct, ``r = A y - b``. Gradient seed: on a
        conjunction not yet met, ``-sum_k r_k^+ A_k / sum_k r_k^+`` (the penalty ``sum_k (r_k^+)^2``'s direction,
        normalised), which pursues every unmet row at once; the subgradient of the max (the worst row alone)
        made the sign steps alternate between rows and miss small regions where all rows hold (the
        reach_prob_density specs: ``|x_1|, |x_2| <= rad`` and ``log rho >= p``). Vectorised over the batch and
        the disjuncts (:class:`Targets`)."""
        tg = self._targets
        if tg is None:  # no unsafe disjunct: nothing to reach
            return np.full(len(y), -np.inf), (np.zeros((len(y), self.query.network.n_inputs)) if grad else None)
        t = tg.closest(y) if self.target is None else np.full(len(y), self.target)
        value, seed = tg.score(y, t)
        return value, (vjp(seed) if grad else None)


@dataclass
class Targets:
    """The unsafe disjuncts stacked: ``A (D, K, m)``, ``b (D, K)``, shorter conjunctions padded with rows
    ``0 y <= +inf`` (residual ``-inf``: never the worst row, never unmet), so a batch whose rows each
    pursue their own disjunct (a targeted attack per row) is scored in one pass."""

    A: np.ndarray
    b: np.ndarray

    @classmethod
    def of(cls, prop: OutputProperty) -> "Targets":
        k = max(np.atleast_2d(A).shape[0] for A, _ in prop.disjuncts)
        m = np.atleast_2d(prop.disjuncts[0][0]).shape[1]
        A = np.zeros((len(prop.disjuncts), k, m))
        b = np.full((len(prop.disjuncts), k), np.inf)
        for d, (Ad, bd) in enumerate(prop.disjuncts):
            Ad = np.atleast_2d(np.asarray(Ad, dtype=np.float64))
            A[d, : len(Ad)], b[d, : len(Ad)] = Ad, np.asarray(bd, dtype=np.float64).reshape(-1)
        return cls(A, b)

    @property
    def count(self) -> int:
        return len(self.A)

    def residuals(self, y: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``A_t y - b_t`` per row ``(n, K)`` for the rows' targets ``t (n,)``."""
        return np.einsum("nm,nkm->nk", y, self.A[t]) - self.b[t]

    def closest(self, y: np.ndarray) -> np.ndarray:
        """Per row the disjunct whose worst row is least violated (the first on ties, as
        :func:`property_margin` picks it)."""
        r = np.einsum("nm,dkm->ndk", y, self.A) - self.b[None]
        return np.argmin(np.max(r, axis=2), axis=1)

    def score(self, y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Value ``-max_k r_k`` (>= 0: inside the unsafe disjunct ``t``) and the output seed per row (the
        normalised penalty direction of the unmet rows; the worst row alone once all are met)."""
        r = self.residuals(y, t)
        rows = np.arange(len(y))
        k = np.argmax(r, axis=1)
        pos = np.maximum(r, 0.0)
        total = np.sum(pos, axis=1, keepdims=True)
        unmet = (total[:, 0] > 0) & np.isfinite(total[:, 0])
        w = np.where(unmet[:, None], pos / np.where(unmet[:, None], total, 1.0), 0.0)
        w[rows[~unmet], k[~unmet]] = 1.0
        return -r[rows, k], -np.einsum("nk,nkm->nm", w, self.A[t])


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


# ----- batched targeted attack (APGD-style) ---------------------------------------------------
@dataclass
class AttackOptions:
    """One round of :func:`attack_round` (DESIGN.md §5): ``restarts`` starting points per unsafe disjunct, every
    disjunct and start a row of one batch (one forward and one backward pass per step), ``steps`` APGD steps
    (Croce & Hein 2020: sign steps from a full box width, momentum ``momentum``, a row's step halved at the
    checkpoints where it improved on fewer than ``rho`` of its steps or stalled, the row then restarting from its
    best point)."""

    restarts: int = 2
    steps: int = 30
    momentum: float = 0.75
    rho: float = 0.75
    #: an APGD round from fresh starts before every ``every``-th restart round of :func:`search`, on networks with
    #: more than ``low_dims`` inputs only: in a few dimensions the sampled restart rounds find the narrow
    #: counterexamples (ACAS Xu 1_5 prop_2: no APGD round after the first found one, and they took 25 % of the time)
    every: int = 1
    low_dims: int = 10


#: the attack :func:`search` runs by default (None: the search without APGD rounds)
DEFAULT_ATTACK = AttackOptions()


def checkpoints(steps: int) -> set[int]:
    """APGD's checkpoint steps: fractions 0.22, then gaps shrinking by 0.03 down to 0.06, of ``steps``."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {int(np.ceil(q * steps - 1e-9)) for q in p[1:] if q < 1.0}


def search(
    query: Query,
    samples: int = 2000,
    starts: int = 8,
    steps: int = 60,
    deadline: Optional[float] = None,
    rng: Optional[np.random.Generator] = None,
    seeds: Optional[list[np.ndarray]] = None,
    restarts: int = 0,
    attack: Optional[AttackOptions] = DEFAULT_ATTACK,
) -> SearchResult:
    """Property queries with ``attack``: first a batched targeted APGD round per region (:func:`attack_round`).
    Then sample each region (uniform + corners) and run PGD from the best points (and from ``seeds``, e.g. a
    solver's near-miss). Then up to ``restarts`` rounds of momentum PGD from fresh starts (:func:`_restart_round`),
    each after an APGD round from fresh starts (with ``attack``), while the deadline allows. Stops at the first
    confirmed violation. ``attack=None``: the search before the APGD rounds (the benchmarks' baseline). Runs with
    one OpenBLAS thread (small batches; mnist-net_256x2 prop_4_0.05 on the loaded machine: 0.10 s vs 1.27 s with
    two, bench/RESULTS.md)."""
    rng = rng or np.random.default_rng(query.seed)
    deadline = deadline if deadline is not None else time.monotonic() + query.timeout
    with blas_single_thread():
        return _search(query, samples, starts, steps, deadline, rng, seeds, restarts, attack)


def _search(query: Query, samples: int, starts: int, steps: int, deadline: float, rng: np.random.Generator,
            seeds: Optional[list[np.ndarray]], restarts: int, attack: Optional[AttackOptions]) -> SearchResult:
    """The body of :func:`search`."""
    best = SearchResult(-np.inf, None, None, 0)
    attack = attack if query.prop is not None and query.prop.disjuncts else None
    for region in query.input_set.regions:
        if time.monotonic() > deadline:
            break
        if attack is not None and attack_round(best, query, region, rng, 0, deadline, attack, seeds):
            return best
    obj = Objective(query)
    for region in query.input_set.regions:
        if time.monotonic() > deadline:
            break
        if _sample_and_pgd(best, query, obj, region, rng, samples, starts, steps, seeds, deadline):
            return best
    if attack is not None and query.network.n_inputs <= attack.low_dims:
        attack = None
    for r in range(restarts):
        for region in query.input_set.regions:
            if time.monotonic() > deadline:
                return best
            if attack is not None and r % attack.every == 0 and attack_round(best, query, region, rng, r + 1, deadline,
                                                                             attack):
                return best
            if _restart_round(best, query, _round_objective(query, r, best.best_x), region, rng, r, deadline):
                return best
    return best


def _sample_and_pgd(best: SearchResult, query: Query, obj: Objective, region: Region, rng: np.random.Generator,
                    samples: int, starts: int, steps: int, seeds: Optional[list[np.ndarray]], deadline: float) -> bool:
    """Score uniform samples and corners of the region (and ``seeds``), then sign-gradient PGD from the best."""
    box = region_box(region)
    pts = box.sample(batch_cap(query, samples), rng, corners=True)
    if seeds:
        pts = np.vstack([np.asarray(s, dtype=np.float64).reshape(1, -1) for s in seeds] + [pts])
    pts = project(pts, region)
    if isinstance(region, Polytope):
        pts = pts[np.array([region.contains(p, tol=CONTAINS_TOL) for p in pts])]
        if len(pts) == 0:
            return False
    vals = obj.rank(pts)
    best.evaluations += len(pts)
    order = np.argsort(-vals)
    if _update(best, query, pts[order[: 4 * starts]], region):
        return True
    x = pts[order[:starts]].copy()
    if seeds:
        x = np.vstack([project(np.asarray(seeds, dtype=np.float64).reshape(len(seeds), -1), region), x])
    return _pgd(best, query, obj, x, region, steps, deadline)


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
    v = obj.rank(pts)
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


def attack_round(best: SearchResult, query: Query, region: Region, rng: np.random.Generator, r: int,
                 deadline: float, opt: AttackOptions, seeds: Optional[list[np.ndarray]] = None) -> bool:
    """One batched targeted APGD round on a property query: round 0 starts every disjunct's attack at the box
    centre and at random points (and each seed at its closest disjunct); later rounds at vertices, points of faces,
    uniform points and points near the best input so far (:func:`_starts`). True once a violation is confirmed."""
    tg = Targets.of(query.prop)
    n = max(1, min(tg.count * opt.restarts, batch_cap(query, tg.count * opt.restarts)))
    t = np.arange(n) % tg.count
    box = region_box(region)
    if r == 0:
        x = np.vstack([np.tile(0.5 * (box.lower + box.upper), (min(n, tg.count), 1)),
                       rng.uniform(box.lower, box.upper, (n - min(n, tg.count), box.dim))])
    else:
        x = _starts(region, rng, best.best_x, n, r)
    if seeds:
        s = project(np.asarray(seeds, dtype=np.float64).reshape(len(seeds), -1), region)
        x, t = np.vstack([s, x]), np.concatenate([tg.closest(query.network.forward(s)), t])
    return _apgd(best, query, tg, region, project(x, region), t, opt, deadline)


def _targeted(query: Query, tg: Targets, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's value for its own disjunct ``t`` and the input gradient of it."""
    y, vjp = forward_vjp(query.network, x)
    v, seed = tg.score(y, t)
    return v, vjp(seed)


def _apgd(best: SearchResult, query: Query, tg: Targets, region: Region, x: np.ndarray, t: np.ndarray,
          opt: AttackOptions, deadline: float) -> bool:
    """APGD on every row at once (:class:`AttackOptions`); candidates go through :func:`_confirm_rows`."""
    box = region_box(region)
    width = box.upper - box.lower
    v, g = _targeted(query, tg, x, t)
    best.evaluations += len(x)
    if _confirm_rows(best, query, region, x, v):
        return True
    xb, vb, gb = x.copy(), v.copy(), g.copy()
    eta, prev = np.ones(len(x)), x.copy()
    incr, last, halved, vb_ck = np.zeros(len(x)), 0, np.zeros(len(x), dtype=bool), vb.copy()
    ck = checkpoints(opt.steps)
    for i in range(opt.steps):
        if time.monotonic() > deadline:
            return False
        a = 1.0 if i == 0 else opt.momentum
        z = project(x + eta[:, None] * width * np.sign(g), region)
        x, prev = project(x + a * (z - x) + (1.0 - a) * (x - prev), region), x
        vn, g = _targeted(query, tg, x, t)
        best.evaluations += len(x)
        incr += vn > v
        v = vn
        up = v > vb
        xb[up], vb[up], gb[up] = x[up], v[up], g[up]
        if _confirm_rows(best, query, region, x, v):
            return True
        if i + 1 in ck:
            cut = (incr < opt.rho * (i + 1 - last)) | (~halved & (vb <= vb_ck))
            eta[cut] *= 0.5
            x[cut], prev[cut], g[cut], v[cut] = xb[cut], xb[cut], gb[cut], vb[cut]
            incr[:], last, halved, vb_ck = 0, i + 1, cut, vb.copy()
    return False


def _confirm_rows(best: SearchResult, query: Query, region: Region, x: np.ndarray, v: np.ndarray) -> bool:
    """:func:`_update` on the rows that reach the unsafe set (value >= 0, best first, at most 4) and on the best
    row when it beats the best value so far (it seeds later rounds' starts near it)."""
    order = np.argsort(-v)
    rows = [i for i in order[:4] if v[i] >= 0.0]
    if not rows and v[order[0]] > best.best_value:
        rows = [order[0]]
    return bool(rows) and _update(best, query, x[rows], region)


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
