"""Gradual pruning with joint refits: candidates by shrinking h a few neurons at a time (DESIGN.md §4, issue 14).

One-shot pruning (drop the first r neurons of :func:`lumpver.reductions.approx.removal_order`
computed on h, then refit) decides every removal on h's activations, although after the first
removals the kept neurons have moved to replace the dropped ones. :func:`shrink` instead repeats:

1. ``chunk`` times: order g's own neurons by the removal cost on the exchange set (the reducer's
   order function, applied to g and g's activations); for each of the ``candidates`` cheapest,
   drop it and compensate (the next layer's rows refitted by least squares over the remaining
   neurons to its pre-activations before the removal: Optimal Brain Surgeon's update); keep the
   one whose compensated network has the least L^p error on the exchange set;
2. a short joint L-BFGS-B fit of every weight on the L^p mean of ``|g - h|`` over the exchange
   set (:func:`lumpver.reductions.approx_joint.fit_lp`), and an ascent for the worst points of
   the box, which join the set (:func:`lumpver.reductions.approx_joint.exchange_step`);

until ``size`` hidden neurons are left, then finishes with
:func:`lumpver.reductions.approx_joint.joint_refit`. The kept neurons keep their identity (index in
h), so the certifier's pruned twin applies unchanged (:func:`lumpver.reductions.approx.tracking_rows`).
Nothing here is trusted: the caller certifies the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lumpver.ir.network import Layer, Network
from lumpver.progress import SILENT, Progress
from lumpver.reductions.approx_joint import JointOptions, box_bounds, exchange_step, fit_lp, joint_refit, lp_mean_loss
from lumpver.reductions.approx_minimax import ExchangeResult, box_vertices, fit_rows, logits, preprocessed_acts
from lumpver.specs.inputset import Box

#: the reducer's bisection range for these candidates: sizes whose least-squares candidate errs up to this
#: many times epsilon on samples (ACAS Xu 1_1: least squares errs 0.022 at the goal size 67, 2.2 epsilon)
SEARCH_SLACK = 3.0
#: removal order of a network from its activations: [(layer, neuron), ...] cheapest first
OrderFn = Callable[[Network, list[np.ndarray]], list[tuple[int, int]]]


@dataclass
class ShrinkOptions:
    """Knobs of :func:`shrink` (measured on ACAS Xu prop_3, bench/bench_approx_candidates.py)."""

    steps: int = 16  # removal steps from h to the goal size (chunk = removals / steps)
    power: int = 16  # L^p exponent of the fits between removals
    max_iter: int = 40  # L-BFGS-B iterations per removal step
    candidates: int = 8  # cheapest removals (by the order) each tried with its compensation; the least L^p error wins
    final: JointOptions = field(default_factory=JointOptions)  # the closing joint refit
    seed: int = 0


def _drop(g: Network, k: int, j: int, x: np.ndarray) -> Network:
    """g without neuron j of hidden layer k; layer k+1 refitted by least squares on ``x`` (preprocessed)."""
    acts = preprocessed_acts(g, x)
    nxt = g.layers[k + 1]
    target = acts[k + 1] @ nxt.weight.T + nxt.bias
    keep = np.delete(np.arange(g.layers[k].width), j)
    full = fit_rows(acts[k + 1][:, keep], target)
    cur = g.layers[k]
    layers = list(g.layers)
    layers[k] = Layer(cur.weight[keep], cur.bias[keep], cur.activation, cur.alpha, cur.source_op)
    layers[k + 1] = Layer(full[:, :-1], full[:, -1], nxt.activation, nxt.alpha, nxt.source_op)
    return g.with_layers(layers)


def shrink(h: Network, pts: np.ndarray, box: Box, size: int, order_fn: OrderFn,
           options: ShrinkOptions = ShrinkOptions(),
           progress: Progress = SILENT, deadline: Optional[float] = None) -> tuple[list[np.ndarray], ExchangeResult]:
    """(kept indices of h per hidden layer, the candidate) with ``size`` hidden neurons (module docstring);
    ``pts``: raw samples of X. The closing joint refit starts no round after ``deadline`` (perf_counter)."""
    rng = np.random.default_rng(options.seed)
    lo, hi = box_bounds(h, box)
    fit_x = np.vstack([h.preprocess(pts), box_vertices(lo, hi, rng)])
    ids = [np.arange(w) for w in h.hidden_widths]
    g = h.with_layers([layer.copy() for layer in h.layers])
    total = max(0, h.n_hidden - size)
    chunk = max(1, -(-total // max(1, options.steps)))
    worst = np.zeros((0, lo.size))
    step_opts = JointOptions(max_iter=options.max_iter, starts=48, steps=20, keep_worst=16,
                             freeze_first=options.final.freeze_first, seed=options.seed)
    while g.n_hidden > size:
        y = logits(h, fit_x)
        for _ in range(min(chunk, g.n_hidden - size)):
            order = [kj for kj in order_fn(g, preprocessed_acts(g, fit_x)) if g.layers[kj[0]].width > 1]
            tries = [(_drop(g, k, j, fit_x), k, j) for k, j in order[:options.candidates]]
            g, k, j = min(tries, key=lambda t: lp_mean_loss(options.power)(logits(t[0], fit_x) - y)[0])
            ids[k] = np.delete(ids[k], j)
        g = fit_lp(g, fit_x, logits(h, fit_x), (options.power,), step_opts)
        new, attained = exchange_step(h, g, fit_x, lo, hi, rng, step_opts)
        worst = np.vstack([worst, new[:step_opts.keep_worst]])
        fit_x = np.vstack([fit_x, new])
        progress.tick(f"gradual pruning to {size} hidden neurons (attained {attained:.3g}), removed",
                      h.n_hidden - g.n_hidden, total)
    start = ExchangeResult(g, attained, [attained], worst, fit_x)
    return ids, joint_refit(h, start, box, options.final, deadline)
