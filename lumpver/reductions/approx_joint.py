"""Joint minimax refit of every kept weight of a pruned network (DESIGN.md §4, issue 14).

The exchange refit (:mod:`lumpver.reductions.approx_minimax`) fits the hidden rows layer by layer
(least squares) and only the output layer for the worst case. Here every kept weight and bias of
g moves together, through the ReLUs, to lower the *largest* error over an exchange set ``S``:

    minimise  ||g(x) - h(x)||_{p, S} = (mean_{x in S, o} |g_o(x) - h_o(x)|^p)^(1/p)

a smooth maximum (the L^p mean tends to the max as p grows; p is annealed, one L-BFGS-B run per
p, :func:`scipy.optimize.minimize`, gradients by the hand-written backprop of
:func:`lumpver.reductions.approx_fit.loss_grad`). Each round then searches the box for the points
where ``|h - g|`` is largest (projected sign-gradient ascent,
:func:`lumpver.reductions.approx_minimax.worst_points`) and adds them with jittered neighbours to
``S`` (Remez-like exchange); the round with the least *attained* maximum wins. The L^p fit's maximum
moves between rounds (10-20 % on ACAS Xu); the layer-wise weight mean of the last ``average`` fits (same
kept neurons, so the same shapes) is measured too and continues the loop when it attains less. Start: the
exchange refit's network and fit set.

Nothing here is trusted: the caller certifies the result (:mod:`lumpver.reductions.certify`).
Weights are rounded to float32 (the stored precision).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import minimize

from lumpver.ir.network import Layer, Network
from lumpver.reductions.approx_fit import OutputLoss, loss_grad, pack, unpack
from lumpver.reductions.approx_minimax import ExchangeOptions, ExchangeResult, box_vertices, exchange_refit, f32, \
    logits, max_abs_difference, minimax_output, worst_points
from lumpver.specs.inputset import Box


@dataclass
class JointOptions:
    """Knobs of :func:`joint_refit` (measured on ACAS Xu prop_3, bench/bench_approx_candidates.py)."""

    rounds: int = 12  # exchange rounds (fit, search, add)
    powers: tuple[int, ...] = (64, 256)  # L^p exponents of the first round (annealed); later rounds: the last
    max_iter: int = 200  # L-BFGS-B iterations per exponent
    starts: int = 192  # ascent starts per round (worst points of S and random points)
    steps: int = 50  # sign-gradient steps per start
    keep_worst: int = 32  # new worst points added to S per round
    neighbours: int = 4  # jittered copies around each new worst point
    jitter: float = 0.01  # their spread, as a fraction of the box width
    freeze_first: bool = False  # keep layer 0's rows (h's own) fixed
    output_lp: bool = False  # after each fit, the output layer by the minimax LP on the exchange set
    #: from round 2 on, also the weight mean of the last this many rounds' fits, kept when it attains less (0, 1:
    #: off). ACAS Xu 1_1 at 67 neurons (RESULTS.md, 2026-12-01 late): the shrink candidate 0.0081 -> 0.0078; 8 more
    #: rounds from it 0.0073, 8 more 0.0068, where 16 rounds without averaging reached 0.0080
    average: int = 3
    seed: int = 0


def lp_mean_loss(p: int) -> OutputLoss:
    """``(mean |err|^p)^(1/p)`` and its gradient, computed on ``err / max|err|`` (no overflow at large p)."""
    def loss(err: np.ndarray) -> tuple[float, np.ndarray]:
        m = max(float(np.max(np.abs(err))), 1e-300)
        r = np.abs(err) / m
        mean = float(np.mean(r ** p))
        grad = mean ** (1.0 / p - 1.0) * r ** (p - 1) * np.sign(err) / err.size
        return m * mean ** (1.0 / p), grad
    return loss


def fit_lp(g: Network, x: np.ndarray, y: np.ndarray, powers: tuple[int, ...], options: JointOptions) -> Network:
    """g refitted on ``(x, y)`` (preprocessed inputs, h's outputs) by L-BFGS-B on the L^p means of
    ``powers`` in turn; float32."""
    shapes = [(layer.width, layer.fan_in) for layer in g.layers]
    acts_fn = [(layer.activation, layer.alpha) for layer in g.layers]
    theta = pack([(layer.weight, layer.bias) for layer in g.layers])
    bounds = None
    if options.freeze_first:
        n0 = shapes[0][0] * (shapes[0][1] + 1)
        bounds = [(v, v) for v in theta[:n0]] + [(None, None)] * (theta.size - n0)
    for p in powers:
        res = minimize(loss_grad, theta, args=(shapes, acts_fn, x, y, lp_mean_loss(p)), jac=True,
                       method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": options.max_iter, "ftol": 1e-12, "gtol": 1e-12})
        theta = res.x
    layers = [Layer(f32(w), f32(b), old.activation, old.alpha, old.source_op)
              for (w, b), old in zip(unpack(theta, shapes), g.layers)]
    return g.with_layers(layers)


def exchange_step(h: Network, g: Network, fit_x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  rng: np.random.Generator, options: JointOptions) -> tuple[np.ndarray, float]:
    """(points to add to the exchange set: the ``keep_worst`` worst found first, then their jittered
    neighbours; the largest ``max_o |h_o - g_o|`` found on the set and by the ascent) for g."""
    on_set = max_abs_difference(h, g, fit_x)
    cand = np.vstack([fit_x[np.argsort(-on_set)[:options.starts // 2]],
                      lo + rng.random((options.starts - options.starts // 2, lo.size)) * (hi - lo)])
    found, vals = worst_points(h, g, lo, hi, cand, options.steps)
    new = found[np.argsort(-vals)[:options.keep_worst]]
    jitter = new[:, None, :] + options.jitter * (hi - lo) * rng.standard_normal((len(new), options.neighbours, lo.size))
    attained = max(float(np.max(vals)), float(np.max(on_set)))
    return np.vstack([new, np.clip(jitter.reshape(-1, lo.size), lo, hi)]), attained


def box_bounds(h: Network, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The box in h's preprocessed coordinates (lower, upper)."""
    scale, shift = h.input_affine()
    lo, hi = box.lower * scale + shift, box.upper * scale + shift
    return np.minimum(lo, hi), np.maximum(lo, hi)


def joint_refit(h: Network, start: ExchangeResult, box: Box, options: JointOptions = JointOptions(),
                deadline: Optional[float] = None) -> ExchangeResult:
    """The module docstring's loop from ``start`` (h pruned, with its exchange set ``fit_x`` and worst
    ``points``); round 0 re-measures the start, so the result never attains more than the start did
    by the same search. No round starts after ``deadline`` (``time.perf_counter()``), if given."""
    rng = np.random.default_rng(options.seed)
    lo, hi = box_bounds(h, box)
    fit_x = np.vstack([start.fit_x, start.points]) if len(start.points) else start.fit_x
    g, worst = start.network, start.points
    best: Optional[ExchangeResult] = None
    history: list[float] = []
    recent: list[Network] = []
    for r in range(options.rounds + 1):
        if r > 0 and deadline is not None and time.perf_counter() > deadline:
            break
        if r > 0:
            g = fit_lp(g, fit_x, logits(h, fit_x), options.powers if r == 1 else options.powers[-1:], options)
            if options.output_lp:
                g = minimax_output(g, logits(h, fit_x), fit_x)
        add, attained = exchange_step(h, g, fit_x, lo, hi, rng, options)
        if r > 0 and options.average > 1:
            recent = (recent + [g])[-options.average:]
            if len(recent) > 1:  # the averaged weights damp the round-to-round fluctuation of the maximum
                g, add, attained = _averaged(h, g, recent, fit_x, lo, hi, rng, options, add, attained)
        history.append(attained)
        if best is None or attained < best.attained:
            best = ExchangeResult(g, attained, history, worst, fit_x)
        worst = np.vstack([worst, add[:options.keep_worst]])
        fit_x = np.vstack([fit_x, add])
    best.history, best.points, best.fit_x = history, worst, fit_x
    return best


def _averaged(h: Network, g: Network, recent: list[Network], fit_x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              rng: np.random.Generator, options: JointOptions, add: np.ndarray,
              attained: float) -> tuple[Network, np.ndarray, float]:
    """(network, points to add, attained) of this round: g or the layer-wise weight mean of ``recent``
    (same shapes: the kept neurons do not change between rounds), whichever attains less; the worst
    points of both join the exchange set."""
    layers = [Layer(f32(np.mean([n.layers[k].weight for n in recent], axis=0)),
                    f32(np.mean([n.layers[k].bias for n in recent], axis=0)), old.activation, old.alpha, old.source_op)
              for k, old in enumerate(g.layers)]
    avg = g.with_layers(layers)
    add_avg, att_avg = exchange_step(h, avg, fit_x, lo, hi, rng, options)
    both = np.vstack([add_avg, add]) if att_avg < attained else np.vstack([add, add_avg])
    return (avg, both, att_avg) if att_avg < attained else (g, both, attained)


def joint_candidate(h: Network, pts: np.ndarray, kept: list[np.ndarray], box: Box,
                    options: JointOptions = JointOptions(),
                    exchange: ExchangeOptions = ExchangeOptions()) -> ExchangeResult:
    """h pruned to ``kept``: the exchange refit (:func:`exchange_refit` with ``exchange``) followed by
    :func:`joint_refit`."""
    start = exchange_refit(h, pts, kept, box, exchange)
    return joint_refit(h, start, box, options)


def attained_error(h: Network, g: Network, box: Box, starts: int = 400, steps: int = 60, samples: int = 50_000,
                   seed: int = 11) -> float:
    """The largest ``max_o |h_o(x) - g_o(x)|`` found on the box (a lower bound of the true error, float64):
    ``samples`` uniform points and every vertex (:func:`box_vertices`), then projected sign-gradient ascent
    from the ``starts // 2`` worst of them and as many random points (RESULTS.md's "attained")."""
    rng = np.random.default_rng(seed)
    lo, hi = box_bounds(h, box)
    pts = np.vstack([lo + rng.random((samples, lo.size)) * (hi - lo), box_vertices(lo, hi, rng)])
    vals = max_abs_difference(h, g, pts)
    cand = np.vstack([pts[np.argsort(-vals)[:starts // 2]],
                      lo + rng.random((starts - starts // 2, lo.size)) * (hi - lo)])
    _, found = worst_points(h, g, lo, hi, cand, steps)
    return max(float(np.max(vals)), float(np.max(found)))
