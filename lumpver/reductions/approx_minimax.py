"""Worst-case (minimax) refits of a pruned network: an exchange loop (DESIGN.md §4, issue 14 item 2).

Least squares on uniform samples of X fits the *average* error; the certified quantity is the
*largest* ``|h(x) - g(x)|`` over the box, which on ACAS Xu sits in corners the samples miss
(bench/RESULTS.md, "Approximate reductions that are small"). :func:`exchange_refit` is a
Remez-like exchange:

1. fit set = samples of X, the box's vertices (all of them up to :data:`MAX_VERTEX_DIMS` inputs,
   random ones beyond) and the worst points found so far with their neighbourhoods, weighted;
2. refit g's hidden rows by weighted least squares to h's pre-activations at the kept neurons
   (:func:`refit_layers`, the same layer-wise fit as plain least squares), then the output layer
   by a minimax LP on the fit set (:func:`minimax_rows`: ``min t`` s.t. ``|A w - y| <= t`` per
   output, HiGHS through :func:`scipy.optimize.linprog`), which targets L-inf directly;
3. search for the points of the box where ``|h - g|`` is largest (:func:`worst_points`: projected
   sign-gradient ascent from the worst fit points and random starts; and, when given, the
   differential branch and bound's attained point, :func:`lumpver.verifiers.bab_diff.difference_search`);
4. repeat a few rounds, keep the round whose *attained* maximum (the worst point found, a lower
   bound of the true error) is least.

Nothing here is trusted: the caller certifies the result (:mod:`lumpver.reductions.certify`).
Weights are rounded to float32 (the stored precision).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy.optimize import linprog

from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Layer, Network
from lumpver.specs.inputset import Box

#: inputs up to this many dimensions: every vertex of the box joins the fit set (2^8 = 256 points)
MAX_VERTEX_DIMS = 8


@dataclass
class ExchangeOptions:
    """Knobs of :func:`exchange_refit` (measured on ACAS Xu prop_3, bench/bench_approx_acasxu.py)."""

    rounds: int = 4  # exchange rounds (fit, search, add)
    starts: int = 96  # ascent starts per round (worst fit points and random points)
    steps: int = 40  # sign-gradient steps per start
    neighbours: int = 8  # jittered copies added around each new worst point
    keep_worst: int = 24  # new worst points added per round
    weight: float = 4.0  # least-squares weight of vertices and worst points (samples: 1)
    lawson: float = 0.0  # Lawson's reweighting exponent: weights *= (error / mean error) ** lawson each round
    seed: int = 0


def fit_rows(feats: np.ndarray, target: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Least-squares rows ``[W | b]`` with ``feats @ W.T + b ~ target``, each sample weighted by
    ``weights`` (normal equations with a 1e-10 relative ridge: the ridge only matters for exactly
    collinear features)."""
    a = np.hstack([feats, np.ones((feats.shape[0], 1))])
    aw = a if weights is None else a * weights[:, None]
    gram = aw.T @ a
    gram += 1e-10 * (np.trace(gram) / gram.shape[0] + 1.0) * np.eye(gram.shape[0])
    return np.linalg.solve(gram, aw.T @ target).T


def f32(a: np.ndarray) -> np.ndarray:
    """Round to float32 (the stored precision), kept as float64."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def refit_layers(h: Network, acts: list[np.ndarray], kept: list[np.ndarray],
                 weights: Optional[np.ndarray] = None) -> Network:
    """g keeping ``kept`` of h: layer 0 keeps h's rows; every deeper row is refitted (weighted least
    squares) to h's pre-activations over g's own previous layer on the samples; float32."""
    g_prev = acts[0]
    layers = []
    for k, layer in enumerate(h.layers):
        rows = kept[k] if k < len(kept) else np.arange(layer.width)
        if k == 0:
            full = np.hstack([layer.weight[rows], layer.bias[rows, None]])
        else:
            full = f32(fit_rows(g_prev, acts[k] @ layer.weight[rows].T + layer.bias[rows], weights))
        gl = Layer(full[:, :-1], full[:, -1], layer.activation, layer.alpha, layer.source_op)
        layers.append(gl)
        g_prev = gl.activate(g_prev @ gl.weight.T + gl.bias)
    return h.with_layers(layers)


def minimax_rows(feats: np.ndarray, target: np.ndarray) -> Optional[np.ndarray]:
    """Rows ``[W | b]`` minimising ``max_n |feats_n @ W.T + b - target_n|`` per output (one LP each,
    HiGHS); None if an LP fails. Features are scaled to unit range inside the LP."""
    n, d = feats.shape
    scale = np.maximum(np.max(np.abs(feats), axis=0), 1e-12)
    a = np.hstack([feats / scale, np.ones((n, 1))])
    cost = np.zeros(d + 2)
    cost[-1] = 1.0
    ones = -np.ones((n, 1))
    a_ub = np.vstack([np.hstack([a, ones]), np.hstack([-a, ones])])
    rows = []
    for o in range(target.shape[1]):
        res = linprog(cost, A_ub=a_ub, b_ub=np.concatenate([target[:, o], -target[:, o]]),
                      bounds=[(None, None)] * (d + 1) + [(0, None)], method="highs")
        if res.status != 0:
            return None
        rows.append(res.x[:-1])
    out = np.array(rows)
    out[:, :-1] /= scale
    return out


def _forward_grad(net: Network, x: np.ndarray, seed_fn: Callable[[np.ndarray], np.ndarray]):
    """(outputs, input gradient of ``sum seed * outputs``) for preprocessed inputs ``x``."""
    posts, pres = [x], []
    for layer in net.layers:
        z = posts[-1] @ layer.weight.T + layer.bias
        pres.append(z)
        posts.append(layer.activate(z))
    seed = seed_fn(posts[-1])
    grad = seed
    for layer, z, p in zip(reversed(net.layers), reversed(pres), reversed(posts[1:])):
        grad = (grad * ACTIVATIONS[layer.activation].derivative(z, p, layer.alpha)) @ layer.weight
    return posts[-1], grad


def max_abs_difference(h: Network, g: Network, x: np.ndarray) -> np.ndarray:
    """Per row of preprocessed inputs ``x``: ``max_o |h_o(x) - g_o(x)|``."""
    return np.max(np.abs(logits(h, x) - logits(g, x)), axis=1)


def worst_points(h: Network, g: Network, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray,
                 steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Projected sign-gradient ascent of ``max_o |h_o - g_o|`` in the box ``[lo, hi]`` (preprocessed
    coordinates) from ``starts``; returns the best point per start and its value (float64)."""
    x = np.clip(starts, lo, hi)
    best, val = x.copy(), max_abs_difference(h, g, x)
    width = hi - lo
    for s in range(steps):
        d = logits(h, x) - logits(g, x)
        idx = np.argmax(np.abs(d), axis=1)
        sign = np.sign(d[np.arange(len(d)), idx])

        def seed(y, idx=idx, sign=sign):
            out = np.zeros_like(y)
            out[np.arange(len(y)), idx] = sign
            return out

        _, gh = _forward_grad(h, x, seed)
        _, gg = _forward_grad(g, x, seed)
        step = 0.25 * width * (1.0 - s / steps) ** 2 + 1e-4 * width
        x = np.clip(x + step * np.sign(gh - gg), lo, hi)
        v = max_abs_difference(h, g, x)
        better = v > val
        best[better], val[better] = x[better], v[better]
    return best, val


def box_vertices(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, cap: int = 256) -> np.ndarray:
    """Every vertex of ``[lo, hi]`` up to :data:`MAX_VERTEX_DIMS` dimensions, else ``cap`` random ones."""
    n = lo.size
    if n <= MAX_VERTEX_DIMS:
        bits = np.array(list(itertools.product((0.0, 1.0), repeat=n)))
    else:
        bits = rng.integers(0, 2, (cap, n)).astype(np.float64)
    return lo + bits * (hi - lo)


@dataclass
class ExchangeResult:
    """Best network of :func:`exchange_refit` and what was measured on the way."""

    network: Network
    attained: float  # largest |h - g| found for it (a lower bound of its true error)
    history: list[float]  # attained maximum per round (round 0: the least-squares start)
    points: np.ndarray  # the worst points found (preprocessed coordinates)
    fit_x: np.ndarray  # the final fit set (preprocessed coordinates): samples, vertices, worst points


def exchange_refit(h: Network, pts: np.ndarray, kept: list[np.ndarray], box: Box,
                   options: ExchangeOptions = ExchangeOptions(),
                   extra_worst: Callable[[Network], Optional[np.ndarray]] = lambda g: None) -> ExchangeResult:
    """The module docstring's loop for h pruned to ``kept``; ``pts``: raw samples of X.

    ``extra_worst(g)``, when it returns raw points (e.g. the differential search's attained
    point), adds them to each round's worst points."""
    rng = np.random.default_rng(options.seed)
    scale, shift = h.input_affine()
    lo, hi = box.lower * scale + shift, box.upper * scale + shift
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    fit_x = np.vstack([h.preprocess(pts), box_vertices(lo, hi, rng)])
    weights = np.concatenate([np.ones(len(pts)), np.full(len(fit_x) - len(pts), options.weight)])
    worst = np.zeros((0, lo.size))
    best: Optional[ExchangeResult] = None
    history: list[float] = []
    for r in range(options.rounds + 1):
        acts = preprocessed_acts(h, fit_x)
        g = refit_layers(h, acts, kept, weights if r > 0 else None)
        if r > 0:
            g = minimax_output(g, acts[-1], fit_x)
        cand = np.vstack([fit_x[np.argsort(-max_abs_difference(h, g, fit_x))[:options.starts // 2]],
                          lo + rng.random((options.starts - options.starts // 2, lo.size)) * (hi - lo)])
        found, vals = worst_points(h, g, lo, hi, cand, options.steps)
        more = extra_worst(g)
        if more is not None and len(more):
            m = h.preprocess(np.atleast_2d(more))
            found, vals = np.vstack([found, m]), np.concatenate([vals, max_abs_difference(h, g, m)])
        attained = max(float(np.max(vals)), float(np.max(max_abs_difference(h, g, fit_x))))
        history.append(attained)
        if best is None or attained < best.attained:
            best = ExchangeResult(g, attained, history, worst, fit_x)
        if options.lawson > 0:
            err = max_abs_difference(h, g, fit_x)
            weights = weights * np.clip(err / max(float(np.mean(err)), 1e-300), 0.1, 10.0) ** options.lawson
            weights *= len(weights) / float(np.sum(weights))
        new = found[np.argsort(-vals)[:options.keep_worst]]
        jitter = new[:, None, :] + 0.01 * (hi - lo) * rng.standard_normal((len(new), options.neighbours, lo.size))
        add = np.vstack([new, np.clip(jitter.reshape(-1, lo.size), lo, hi)])
        worst = np.vstack([worst, new])
        fit_x = np.vstack([fit_x, add])
        weights = np.concatenate([weights, np.full(len(add), options.weight)])
    best.history, best.points = history, worst
    return best


def preprocessed_acts(h: Network, x: np.ndarray) -> list[np.ndarray]:
    """h's activations from preprocessed inputs (index 0: ``x``), as :meth:`Network.activations`."""
    out = [x]
    for layer in h.layers:
        out.append(layer.activate(out[-1] @ layer.weight.T + layer.bias))
    return out


def minimax_output(g: Network, y_h: np.ndarray, fit_x: np.ndarray) -> Network:
    """g with its output layer refitted by :func:`minimax_rows` to h's outputs ``y_h`` on ``fit_x``."""
    feats = preprocessed_acts(g, fit_x)[-2]
    rows = minimax_rows(feats, y_h)
    if rows is None:
        return g
    rows = f32(rows)
    last = g.layers[-1]
    return g.with_layers(g.layers[:-1] + [Layer(rows[:, :-1], rows[:, -1], last.activation, last.alpha,
                                                  last.source_op)])


def logits(net: Network, x: np.ndarray) -> np.ndarray:
    """Outputs of ``net`` from already preprocessed inputs."""
    for layer in net.layers:
        x = layer.activate(x @ layer.weight.T + layer.bias)
    return x
