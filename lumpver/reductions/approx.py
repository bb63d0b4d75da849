"""Approximate reductions certified on an input set (DESIGN.md §4, on top of §3).

1. Exact on-set reduction ``f -> h`` (:func:`lumpver.reductions.onset.reduce_on_set`).
2. Activation-based candidates (default search, :func:`reduce_approx`): h's activations on
   samples of X give a greedy removal order (:func:`removal_order`: Optimal-Brain-Surgeon cost
   of dropping a neuron = increase of the least-squares residual of the next layer's
   pre-activations, weighted by each next neuron's output sensitivity). Dropping a neuron whose
   activation is nearly a combination of the kept ones (near-proportional, nearly constant,
   nearly linear on X) or whose contribution is tiny costs little. A candidate keeping
   ``kept`` is :func:`refit_pruned`: every row refitted by least squares over g's own previous
   layer, so the next layer absorbs what was dropped.
3. The error ``sup_X ||f - g||`` is certified by :func:`lumpver.reductions.certify.certify` (on-set
   discrepancy + differential bound of h against g's twin, whose dropped neurons carry rows
   that track h's on the samples; or, when tighter, the quotient twin of
   :func:`partner_classes`, each dropped neuron a positive multiple of a kept one) and
   re-checked from the certificate.
4. Bisection on the number of removed neurons keeps the largest removal whose certified bound
   is ``<= E``; candidates whose *sampled* error already exceeds E are rejected without a
   proof attempt. h itself (nothing removed) is the fallback, so the result is never larger
   than the exact on-set reduction.

:func:`approximate_quotient` (signature clustering with a tolerance, twin by classes) is kept
as the near-lumping quotient of DESIGN.md §4 for callers that want partitions.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lumpver.reductions.approx_fit import FitOptions, finetune
from lumpver.reductions.approx_minimax import MAX_VERTEX_DIMS, ExchangeOptions, ExchangeResult, exchange_refit, f32, \
    fit_rows, preprocessed_acts, refit_layers
from lumpver.reductions.approx_shrink import SEARCH_SLACK, ShrinkOptions, shrink
from lumpver.reductions.base import default_certificate_path, remove_on_failure
from lumpver.reductions.certify import NO_PHASE, Certified, Chain, PhaseBudget, certify, phase_budget
from lumpver.specs.inputset import Box, InputSet
from lumpver.specs.norms import difference_rows
from lumpver.reductions.exact import LayerClasses
from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Layer, Network, require_dense
from lumpver.progress import SILENT, Progress
from lumpver.errors import CheckFailed, InputError
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.reductions.certify import DroppedRows, certify as certify_pair, sample_points, sampled_error, write_bounded
from lumpver.reductions.grouping import group_rows
from lumpver.reductions.onset import reduce_on_set
from lumpver.reductions.smooth_fold import constant_candidates, fold_constants, is_smooth_network

#: activations of the form max(z, s z): positive scales merge neurons exactly (DESIGN.md §4)
SUPPORTED = tuple(name for name, act in ACTIVATIONS.items() if act.negative_slope is not None)
DEFAULT_SAMPLES = 3000
DEFAULT_BOXES = 600
#: largest smooth network given least-squares candidates too: the greedy order took 86 s on a
#: 6x200 sigmoid net (loaded 2-core machine), more than the search budget
SMOOTH_LS_MAX = 600
#: the bisection range for exchange candidates: sizes whose least-squares candidate errs up to this many
#: times epsilon on samples. Exchange refits halve the attained error at a fixed size (ACAS Xu 1_1 at 90
#: neurons 0.0141 -> 0.0071), but the certifier, not the candidates, limits there (RESULTS.md): probes
#: beyond the least-squares limit cost ~100 s of failing certification each on the loaded machine
LS_SLACK = 1.0
#: after the bisection, removals in order that are tried one at a time until this many fail in a row
#: (ACAS Xu 1_1: removing neuron 3 of layer 2 at 114 neurons lifts the certified bound 0.0099 -> 0.18
#: while the attained error stays 0.0013; skipping it lets later removals certify)
GREEDY_FAILS = 6
#: with the phase stage on, one certification may use at most this share of the time left (at least
#: PHASE_CERT_MIN s): a candidate the stage cannot close (ACAS Xu 1_1 at 67 neurons, attained 0.0081: still
#: 0.055 after 1,388 CPU s) then leaves time for larger sizes; 2_3's goal candidate certified in ~900 s wall
PHASE_CERT_SHARE = 0.5
#: the goal-size candidate, tried first, may use this share of the time left: with GOAL_PHASE the ACAS Xu 1_1
#: goal candidate needed 2,323 s wall with 2 workers (bench/RESULTS.md, 2026-12-01)
GOAL_CERT_SHARE = 0.85
#: a gradual-pruning candidate's closing joint refit starts no round after this share of the time left (a 3-input
#: planted net's refit took 73 s of a 30 s budget without it; ACAS Xu candidates take ~250 s of thousands)
BUILD_SHARE = 0.5
#: with the phase stage on, the size tried first, as a fraction of h's hidden neurons (issue 14's goal: half)
GOAL_FRACTION = 0.5
PHASE_CERT_MIN = 900.0


def _check_supported(h: Network) -> None:
    """ValueError naming the first hidden layer whose activation is not in :data:`SUPPORTED`."""
    for k, layer in enumerate(h.layers[:-1]):
        if layer.activation not in SUPPORTED:
            raise ValueError(f"layer {k}: approximate lumping supports {', '.join(SUPPORTED)}, not {layer.activation}")


def _cluster(sig: np.ndarray, weights: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class_of, scale, representatives) for rows ``sig`` weighted by column ``weights``."""
    n = sig.shape[0]
    rows = sig * weights[None, :]
    norms = np.linalg.norm(rows, axis=1)
    live = np.flatnonzero(norms > 0)
    cls = np.arange(n)
    if tau > 0 and live.size > 1:
        gr = group_rows(rows[live], "positive", tau)
        cls[live] = live[gr.rep[gr.label]]
    reps = np.unique(cls)
    number = {int(r): i for i, r in enumerate(reps)}
    label = np.array([number[int(c)] for c in cls], dtype=np.int64)
    scale = np.ones(n)
    for u in range(n):
        r = reps[label[u]]
        if u != r:
            scale[u] = float(rows[u] @ rows[r]) / float(rows[r] @ rows[r])
    bad = scale <= 0  # a non-positive projection cannot be merged: keep it apart
    if np.any(bad):
        return _cluster_fix(sig, weights, label, scale, reps, bad)
    return label, scale, reps


def _cluster_fix(sig, weights, label, scale, reps, bad):
    cls_rep = reps[label].copy()
    cls_rep[bad] = np.flatnonzero(bad)
    reps = np.unique(cls_rep)
    number = {int(r): i for i, r in enumerate(reps)}
    label = np.array([number[int(c)] for c in cls_rep], dtype=np.int64)
    scale = np.where(bad, 1.0, scale)
    scale[reps] = 1.0
    return label, scale, reps


def approximate_quotient(h: Network, samples: np.ndarray, tau: float) -> tuple[Network, list[LayerClasses]]:
    """The reduced network g and its partition of h's hidden layers (module docstring, step 2).

    g's neurons are ordered by class (class ``C`` = ``C``-th representative in index order)."""
    _check_supported(h)
    acts = h.activations(samples)
    g_prev = acts[0]
    layers, classes = [], []
    for k, layer in enumerate(h.layers):
        z = acts[k] @ layer.weight.T + layer.bias
        sig = np.hstack([layer.weight, layer.bias[:, None]]) if k == 0 else fit_rows(g_prev, z)
        sig = f32(sig)
        if k == len(h.layers) - 1:
            layers.append(Layer(sig[:, :-1], sig[:, -1], layer.activation, layer.alpha, layer.source_op))
            break
        rms = np.append(np.sqrt(np.mean(g_prev ** 2, axis=0)), 1.0)
        label, scale, reps = _cluster(sig, rms, tau)
        classes.append(LayerClasses(label, scale, reps, np.ones(reps.size, bool)))
        gl = Layer(sig[reps, :-1], sig[reps, -1], layer.activation, layer.alpha, layer.source_op)
        layers.append(gl)
        g_prev = gl.activate(g_prev @ gl.weight.T + gl.bias)
    return h.with_layers(layers), classes


# ----- activation-based pruning with least-squares refits (the default search) -----------------
def output_sensitivity(h: Network, acts: list[np.ndarray]) -> list[np.ndarray]:
    """Per layer k, per neuron i: RMS over the samples of ``max_o |d y_o / d z_{k,i}|`` (h's Jacobian)."""
    n, m = acts[0].shape[0], h.n_outputs
    depth = len(h.layers)
    sens: list[np.ndarray] = [np.ones(m)] * depth
    jac = np.broadcast_to(np.eye(m), (n, m, m))
    for k in range(depth - 1, 0, -1):
        slope = _slope(h.layers[k - 1], acts[k])  # acts[k]: post-activations of layer k-1
        jac = (jac @ h.layers[k].weight) * slope[:, None, :]
        sens[k - 1] = np.sqrt(np.mean(np.max(np.abs(jac), axis=1) ** 2, axis=0))
    return sens


def _slope(layer: Layer, post: np.ndarray) -> np.ndarray:
    """Activation slope per sample and neuron, read from post-activations (ReLU: 1 where > 0;
    sigmoid, tanh: their derivative, a function of the output)."""
    act = ACTIVATIONS[layer.activation]
    if act.negative_slope is None:
        return act.derivative(post, post, layer.alpha)
    return np.where(post > 0, 1.0, act.negative_slope(layer.alpha))


def _obs_costs(feats: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Increase of the least-squares residual of ``target`` on ``[feats, 1]`` when each feature
    column is removed (Optimal Brain Surgeon formula ``beta_j^2 / (G^-1)_jj``), per sample."""
    a = np.hstack([feats, np.ones((feats.shape[0], 1))])
    return _costs_from_gram(a.T @ a, a.T @ target, feats.shape[0])


def _costs_from_gram(gram: np.ndarray, cross: np.ndarray, n: int) -> np.ndarray:
    """:func:`_obs_costs` from ``G = A^T A`` and ``A^T T`` (last row/column: the constant)."""
    gram = gram + 1e-10 * (np.trace(gram) / gram.shape[0] + 1.0) * np.eye(gram.shape[0])
    inv = np.linalg.inv(gram)
    beta = inv @ cross
    return (np.sum(beta ** 2, axis=1) / np.diag(inv))[:-1] / n


def removal_order(h: Network, acts: list[np.ndarray], min_width: int = 1) -> list[tuple[int, int]]:
    """Greedy order ``[(layer, neuron), ...]`` in which h's hidden neurons are dropped: each step
    drops the neuron whose removal least increases the output-sensitivity-weighted residual of
    the next layer's pre-activations refitted on the remaining neurons (sampled activations).
    Gram matrices are computed once; each step inverts the kept sub-block of two layers."""
    sens = output_sensitivity(h, acts)
    depth = len(h.layers)
    alive = [list(range(w)) for w in h.hidden_widths]
    grams, crosses = [], []
    for k in range(depth - 1):
        a = np.hstack([acts[k + 1], np.ones((acts[k + 1].shape[0], 1))])
        z = acts[k + 1] @ h.layers[k + 1].weight.T + h.layers[k + 1].bias
        grams.append(a.T @ a)
        crosses.append(a.T @ (z * sens[k + 1]))
    n = acts[0].shape[0]

    def layer_costs(k: int) -> np.ndarray:
        idx = alive[k] + [grams[k].shape[0] - 1]
        nxt = alive[k + 1] if k + 1 < depth - 1 else list(range(crosses[k].shape[1]))
        return _costs_from_gram(grams[k][np.ix_(idx, idx)], crosses[k][np.ix_(idx, nxt)], n)

    order: list[tuple[int, int]] = []
    costs = [layer_costs(k) for k in range(depth - 1)]
    while True:
        cands = [(costs[k][j], k, j) for k in range(depth - 1) if len(alive[k]) > min_width
                 for j in range(len(alive[k]))]
        if not cands:
            return order
        _, k, j = min(cands)
        order.append((k, alive[k].pop(j)))
        for kk in (k - 1, k):  # layer k's features and layer k-1's targets changed
            if 0 <= kk < depth - 1:
                costs[kk] = layer_costs(kk)


def kept_after(h: Network, order: list[tuple[int, int]], n_removed: int) -> list[np.ndarray]:
    """Kept neuron indices per hidden layer after the first ``n_removed`` removals of ``order``."""
    gone = [set() for _ in h.hidden_widths]
    for k, j in order[:n_removed]:
        gone[k].add(j)
    return [np.array([j for j in range(w) if j not in gone[k]], dtype=np.int64)
            for k, w in enumerate(h.hidden_widths)]


def refit_pruned(h: Network, acts: list[np.ndarray], kept: list[np.ndarray]) -> tuple[Network, list]:
    """g keeping ``kept`` of h, every row refitted by least squares to h's pre-activations on the
    samples over g's own previous layer (first layer: h's rows), float32
    (:func:`lumpver.reductions.approx_minimax.refit_layers`); and the twin rows of the dropped
    neurons (:func:`tracking_rows`)."""
    g = refit_layers(h, acts, kept)
    return g, tracking_rows(h, g, acts, kept)


def tracking_rows(h: Network, g: Network, acts: list[np.ndarray], kept: list[np.ndarray]) -> list[DroppedRows]:
    """Twin rows of h's neurons that g drops (for :func:`lumpver.reductions.certify.expand_pruned`):
    layer 0 keeps h's rows; deeper layers are least-squares fits of h's pre-activations over g's
    previous layer on the samples, float32, so the twin's dropped neurons track h's."""
    g_prev = acts[0]
    out = []
    for k, rows in enumerate(kept):
        layer = h.layers[k]
        gone = np.setdiff1d(np.arange(layer.width), rows)
        if k == 0:
            w, b = layer.weight[gone], layer.bias[gone]
        else:
            full = f32(fit_rows(g_prev, acts[k] @ layer.weight[gone].T + layer.bias[gone]))
            w, b = full[:, :-1], full[:, -1]
        out.append(DroppedRows(gone, w, b))
        gl = g.layers[k]
        g_prev = gl.activate(g_prev @ gl.weight.T + gl.bias)
    return out


def partner_classes(h: Network, acts: list[np.ndarray], kept: list[np.ndarray]) -> list[LayerClasses]:
    """A partition per hidden layer for the quotient twin (:func:`lumpver.reductions.certify.expand_quotient`):
    each kept neuron represents itself; a dropped neuron u joins the kept neuron t of its layer
    whose sampled activation best matches it as ``h_u ~ c h_t`` with ``c > 0`` (least residual),
    so the twin's neuron u tracks h's globally when the two are near-proportional."""
    out = []
    for k, rows in enumerate(kept):
        a = acts[k + 1]
        width = a.shape[1]
        cls, scale = np.zeros(width, dtype=np.int64), np.ones(width)
        cls[rows] = np.arange(rows.size)
        kn = a[:, rows]
        sq = np.sum(kn * kn, axis=0)
        for u in np.setdiff1d(np.arange(width), rows):
            c = np.where(sq > 0, (a[:, u] @ kn) / np.where(sq > 0, sq, 1.0), 0.0)
            c = np.maximum(c, 1e-6)
            resid = np.sum((a[:, u][:, None] - kn * c[None, :]) ** 2, axis=0)
            best = int(np.argmin(resid))
            cls[u], scale[u] = best, float(c[best])
        out.append(LayerClasses(cls, scale, rows.copy(), np.ones(rows.size, bool)))
    return out


@dataclass
class ApproxResult:
    """Outcome of :func:`reduce_approx`."""

    original: Network
    onset: Network  # h
    reduced: Network  # g
    certified: Certified
    chain: Chain
    onset_bound: float = 0.0
    removed: int = 0  # neurons of h dropped (pruning search)
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    method: str = "prune-refit"


def reduce_approx(f: Network, input_set: InputSet, epsilon: float, norm: str = "linf", timeout: float = 300.0,
                  progress: Progress = SILENT, samples: int = DEFAULT_SAMPLES, max_boxes: int = DEFAULT_BOXES,
                  seed: int = 0, fit: Optional[FitOptions] = FitOptions(),
                  exchange: Optional[ExchangeOptions] = None, gradual: Optional[ShrinkOptions] = None,
                  phase: Optional[PhaseBudget] = None) -> ApproxResult:
    """The smallest approximate reduction found whose certified error on X is ``<= epsilon``.

    Exact on-set reduction h, greedy removal order (:func:`removal_order`), then bisection on the
    number of removed neurons: a candidate whose error on held-out samples (or at the worst points
    found) exceeds epsilon is rejected at once, otherwise it is certified. On ReLU networks over one
    box of at most ``MAX_VERTEX_DIMS`` inputs (L-inf) the candidate is the exchange (minimax) refit of
    :func:`lumpver.reductions.approx_minimax.exchange_refit` when ``exchange`` is given (opt-in: it
    halves the candidates' attained error at a fixed size, but the certified size did not move on ACAS
    Xu and fell on a planted net, 25 -> 29 neurons: RESULTS.md), followed past the bisection's boundary by
    a greedy extension; or, when ``gradual`` is given (opt-in, same inputs), the gradual pruning with joint
    minimax refits of :func:`lumpver.reductions.approx_shrink.shrink` (it chooses the kept neurons itself;
    ~1-2 min CPU per candidate on ACAS Xu); otherwise
    least squares (:func:`refit_pruned`), and where its sampled error
    fails the same removal refitted end to end (:func:`lumpver.reductions.approx_fit.finetune`,
    unless ``fit`` is None). The largest certified removal wins. On networks with sigmoid/tanh layers
    the least-squares candidates drop neurons that are nearly affine in the kept ones on X
    (nearly constant or nearly linear), and the second candidate is
    :mod:`lumpver.reductions.smooth_fold`'s (nearly constant neurons, from sound bounds, folded
    into the next bias). With a long ``timeout`` (:func:`lumpver.reductions.certify.phase_budget`: the
    ReLU-phase stage certifies; ``phase`` overrides that choice) the goal size, half h's hidden neurons, is tried
    first, with GOAL_CERT_SHARE of the time left, and the bisection continues below it when it certifies, above it
    otherwise (issue 14). Raises ValueError when not even h
    is certified within epsilon."""
    require_dense(f, "reduce --mode approx")

    t0 = time.perf_counter()
    deadline = t0 + timeout
    on = reduce_on_set(f, input_set, progress=progress)
    h = on.reduced
    progress.say(f"exact on-set reduction: {f.n_hidden} -> {h.n_hidden} hidden neurons (discrepancy {on.discrepancy:.2e})")
    smooth = is_smooth_network(h)
    if not smooth:
        _check_supported(h)
    pts, held = sample_points(input_set, samples, seed), sample_points(input_set, samples, seed + 1)
    acts, yf = h.activations(pts), f.forward(pts)
    check = (h.preprocess(held), f.forward(held))
    kept0 = [np.arange(w) for w in h.hidden_widths]
    phase = phase_budget(timeout) if phase is None else phase
    base = certify(f, h, input_set, norm, Chain(on.steps, kept0), h, on.discrepancy,
                   timeout=max(1.0, deadline - time.perf_counter()), max_boxes=max_boxes, threshold=epsilon,
                   phase=phase, progress=progress)
    if not base.epsilon <= epsilon:
        raise ValueError(f"even the exact on-set reduction is certified only within {base.epsilon:.3g} > epsilon "
                         f"{epsilon:g}; use --mode on-set or a larger --epsilon")
    if smooth:  # nearly constant sigmoid/tanh neurons folded into the next bias
        const_order, consts = constant_candidates(h, input_set)
    ls = not smooth or h.n_hidden <= SMOOTH_LS_MAX
    order = removal_order(h, acts) if ls else const_order
    trials: list[dict[str, Any]] = []
    best = ApproxResult(f, h, h, base, Chain(on.steps, kept0), on.discrepancy, 0, trials)

    def sampled(r: int, variant: str = "ls") -> tuple[Network, list, list[np.ndarray], float]:
        src = const_order if variant == "const" else order
        return build(tuple(src[:min(r, len(src))]), variant)

    @functools.lru_cache(maxsize=None)
    def build(removed: tuple, variant: str) -> tuple[Network, list, list[np.ndarray], float]:
        if variant == "shrink":  # the gradual pruning chooses its own kept neurons (approx_shrink)
            now = time.perf_counter()  # the closing refit leaves time to certify: BUILD_SHARE of what is left
            kept, ex = shrink(h, pts, input_set.regions[0], h.n_hidden - len(removed), removal_order, gradual,
                              progress, now + BUILD_SHARE * max(0.0, deadline - now))
            return _from_exchange(h, ex, kept, held, check[1], norm)
        kept = kept_after(h, list(removed), len(removed))
        if variant == "const":
            g, dropped = fold_constants(h, kept, consts), None
        else:
            g, dropped = refit_pruned(h, acts, kept)
        attained = 0.0
        if variant == "fit":
            g = finetune(g, h, acts, kept, yf, check, fit)
            dropped = tracking_rows(h, g, acts, kept)
        elif variant == "minimax":
            return _from_exchange(h, exchange_refit(h, pts, kept, input_set.regions[0], exchange), kept, held,
                                  check[1], norm)
        return g, dropped, kept, max(attained, float(np.max(difference_rows(check[1], g.forward(held), norm))))

    def attempt(r: int, variant: str, removed: Optional[tuple] = None,
                share: float = PHASE_CERT_SHARE) -> Optional[ApproxResult]:
        g, dropped, kept, seen = sampled(r, variant) if removed is None else build(removed, variant)
        trial: dict[str, Any] = {"removed": r, "hidden": g.n_hidden, "candidate": variant, "sampled": seen,
                                 "certified": None}
        trials.append(trial)
        if seen > epsilon:
            return None
        chains = [Chain(on.steps, kept, dropped_rows=dropped)]
        if not smooth and variant not in ("minimax", "shrink"):  # refitted rows, not near-proportional merges
            chains.append(Chain(on.steps, None, partner_classes(h, acts, kept)))
        res, chain = _certify_first(f, g, input_set, norm, chains, h, on.discrepancy, deadline, max_boxes, epsilon,
                                    phase, share, progress)
        trial["certified"] = res.epsilon if res.finite else None
        progress.say(f"{g.n_hidden} hidden neurons ({variant}): sampled {seen:.3g}, certified {res.epsilon:.3g}")
        if res.epsilon > epsilon:
            return None
        method = {"ls": "prune-refit", "fit": "prune-refit+lbfgs", "const": "smooth-constant-fold",
                  "minimax": "prune-refit+exchange", "shrink": "gradual-prune+joint-minimax"}[variant]
        return ApproxResult(f, h, g, res, chain, on.discrepancy, r, trials, method=method)

    variants = _variants(h, input_set, smooth, ls, fit is not None, exchange is not None and norm == "linf",
                         gradual is not None and norm == "linf")
    slack = LS_SLACK if "minimax" in variants else SEARCH_SLACK if "shrink" in variants else 1.0
    limit = _sampled_limit(lambda r: sampled(r, "ls" if ls else variants[0])[3], len(order), epsilon * slack)
    if len(variants) > 1 and variants[1] == "const":
        limit = max(limit, _sampled_limit(lambda r: sampled(r, "const")[3], len(const_order), epsilon))
    elif "fit" in variants:  # the fit's own limit would cost a fit per probe: allow 20 % more
        limit = min(len(order), limit + max(2, limit // 5))
    def at_size(mid: int, share: float = PHASE_CERT_SHARE) -> Optional[ApproxResult]:
        found = None
        ranked = sorted(variants, key=lambda v: sampled(mid, v)[3]) if smooth else variants  # smaller error first
        for variant in ranked:
            if variant == "fit" and sampled(mid)[3] <= epsilon:
                break  # least squares failed certification, not sampling: the fit does not tighten (RESULTS.md)
            if found is None and time.perf_counter() < deadline:
                found = attempt(mid, variant, share=share)
        return found

    lo, hi = 0, limit + 1
    if phase.active and len(order) > 1:  # a strong certifier: the goal size (half h's neurons) first, then bisect
        goal = min(len(order), h.n_hidden - int(GOAL_FRACTION * h.n_hidden))
        found = at_size(goal, GOAL_CERT_SHARE)
        lo, best, hi = (goal, found, max(hi, goal + 1)) if found is not None else (lo, best, min(hi, goal))
    while hi - lo > 1 and time.perf_counter() < deadline:
        mid = (lo + hi) // 2
        found = at_size(mid)
        if found is not None:
            lo, best = mid, found
        else:
            hi = mid
    if variants == ("minimax",):  # past the boundary: skip the removals that break certification (RESULTS.md)
        removed, fails = list(order[:best.removed]), 0
        for cand in order[best.removed + (1 if hi <= limit else 0):]:  # order[lo] failed when hi was tried
            if time.perf_counter() > deadline or fails >= GREEDY_FAILS:
                break
            found = attempt(len(removed) + 1, "minimax", tuple(removed + [cand]))
            removed, best, fails = (removed + [cand], found, 0) if found is not None else (removed, best, fails + 1)
    best.seconds = time.perf_counter() - t0
    return best


def _variants(h: Network, input_set: InputSet, smooth: bool, ls: bool, fit: bool, exchange: bool,
              gradual: bool = False) -> tuple[str, ...]:
    """Candidates tried per size, in order (see :func:`reduce_approx`): the second only where the first fails."""
    if smooth:  # constant folding beside least squares
        return ("ls", "const") if ls else ("const",)
    if (exchange or gradual) and len(input_set.regions) == 1 and isinstance(input_set.regions[0], Box) \
            and input_set.dim <= MAX_VERTEX_DIMS:  # wider inputs (MNIST): 9 neurons kept where least squares kept 2
        return ("shrink",) if gradual else ("minimax",)
    return ("ls", "fit") if fit else ("ls",)


def _from_exchange(h: Network, ex: ExchangeResult, kept: list[np.ndarray], held: np.ndarray, y_held: np.ndarray,
                   norm: str) -> tuple[Network, list, list[np.ndarray], float]:
    """(g, twin rows of the dropped neurons, kept, the larger of the attained and the held-out sampled error)
    of an exchange-style candidate (attained against h: within the on-set discrepancy of f's)."""
    g = ex.network
    dropped = tracking_rows(h, g, preprocessed_acts(h, ex.fit_x), kept)
    return g, dropped, kept, max(ex.attained, float(np.max(difference_rows(y_held, g.forward(held), norm))))


def _certify_first(f, g, input_set, norm, chains, h, onset_bound, deadline, max_boxes, epsilon,
                   phase: PhaseBudget = NO_PHASE, share: float = PHASE_CERT_SHARE, progress: Progress = SILENT):
    """Certify g with each twin in turn (pruned twin, then quotient twin as a quick probe with a
    quarter of the box budget); the first within epsilon wins, else the tightest. With a phase stage
    (long budgets, :func:`lumpver.reductions.certify.phase_budget`) a candidate may take ``share`` of
    the time left (at least PHASE_CERT_MIN s), else 120 s."""
    best = None
    for i, chain in enumerate(chains):
        left = max(1.0, deadline - time.perf_counter())
        budget = min(left, max(PHASE_CERT_MIN, share * left)) if phase.active else min(left, 120.0)
        res = certify(f, g, input_set, norm, chain, h, onset_bound, timeout=budget,
                      max_boxes=max_boxes if i == 0 else max(1, max_boxes // 4), threshold=epsilon,
                      phase=phase, progress=progress)
        if best is None or res.epsilon < best[0].epsilon:
            best = (res, chain)
        if res.epsilon <= epsilon or time.perf_counter() > deadline:
            break
    return best


def _sampled_limit(err, n: int, epsilon: float) -> int:
    """Largest r in [0, n] with ``err(r) <= epsilon`` found by bisection (0 if none)."""
    if n == 0 or err(n) <= epsilon:
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if err(mid) <= epsilon else (lo, mid)
    return lo


def _same_weights(a: Network, b: Network) -> bool:
    """Bit-identical dense layers, activations and input steps (then a certificate of one is one of the other)."""
    if len(a.layers) != len(b.layers) or len(a.input_ops) != len(b.input_ops) or not (a.is_dense and b.is_dense):
        return False
    same_in = all(p.op == q.op and np.array_equal(p.constant, q.constant) for p, q in zip(a.input_ops, b.input_ops))
    return same_in and all(
        p.activation == q.activation and p.alpha == q.alpha and np.array_equal(p.weight, q.weight)
        and np.array_equal(p.bias, q.bias) for p, q in zip(a.layers, b.layers))


#: ``reduce --search``: how the candidates of :func:`reduce_approx` are built ("auto": :func:`candidate_options`)
SEARCHES = ("auto", "least-squares", "exchange", "gradual")


def candidate_options(search: str, input_set: InputSet, phase: PhaseBudget) -> dict[str, Any]:
    """The candidate keyword of :func:`reduce_approx` for ``search``: least squares (``{}``), the exchange
    refit or the gradual pruning; "auto" is the gradual pruning when the phase stage certifies (long budgets)
    and X is one box of at most MAX_VERTEX_DIMS inputs (where it applies: only it reached the ACAS Xu goal
    size, bench/RESULTS.md 2026-12-01), least squares otherwise."""
    if search not in SEARCHES:
        raise InputError(f"--search must be one of {', '.join(SEARCHES)}, not {search!r}")
    one_box = len(input_set.regions) == 1 and isinstance(input_set.regions[0], Box) and input_set.dim <= MAX_VERTEX_DIMS
    if search == "auto":
        search = "gradual" if phase.active and one_box else "least-squares"
    return {"exchange": {"exchange": ExchangeOptions()}, "gradual": {"gradual": ShrinkOptions()}}.get(search, {})


def reduce_approx_to_files(model_path: str | os.PathLike, out_path: str | os.PathLike,
                           cert_path: Optional[str | os.PathLike], input_set: InputSet, epsilon: float,
                           norm: str = "linf", backend: str = "auto", timeout: float = 300.0,
                           progress: Progress = SILENT, workers: int = 1, search: str = "auto") -> dict[str, Any]:
    """``lumpver reduce --mode approx``: write g and its ``bounded`` certificate; returns the certificate.

    ``backend``: ``interval`` or ``auto`` (the differential back-end; others -> InputError); ``workers``:
    processes of the certifications' ReLU-phase stage; ``search``: how candidates are built (SEARCHES)."""
    if backend not in ("auto", "interval"):
        raise InputError(f"--mode approx certifies with the interval back-end (auto|interval), not {backend!r}")
    phase = phase_budget(timeout, workers)
    candidates = candidate_options(search, input_set, phase)
    t0 = time.perf_counter()
    f = load_onnx(model_path)
    if input_set.dim != f.n_inputs:
        raise InputError(f"input set has {input_set.dim} dimensions, the model {f.n_inputs} inputs",
                         str(input_set.source or model_path))
    try:
        res = reduce_approx(f, input_set, epsilon, norm, timeout, progress, phase=phase, **candidates)
    except ValueError as e:
        raise CheckFailed(str(e)) from None
    cert_path = Path(cert_path) if cert_path else default_certificate_path(out_path)
    save_onnx(res.reduced, out_path)
    with remove_on_failure(out_path):
        g = load_onnx(out_path)  # certify what was written (the search's result when bit-identical)
        final = res.certified if _same_weights(g, res.reduced) else certify_pair(
            f, g, input_set, norm, res.chain, res.onset, res.onset_bound, timeout=max(60.0, timeout), threshold=epsilon,
            phase=phase, progress=progress)
        if not final.epsilon <= epsilon:
            raise CheckFailed(f"the written model certifies only within {final.epsilon:.3g} > {epsilon:g}")
        sampled = sampled_error(model_path, out_path, input_set, norm)
        method = {"method": "approximate-lumping", "search": res.method, "removed": res.removed,
                  "requested_epsilon": epsilon, "onset_hidden": res.onset.n_hidden, "trials": res.trials}
        cert = write_bounded(model_path, out_path, cert_path, f, g, input_set, final, method,
                             time.perf_counter() - t0, sampled)
    progress.say(f"wrote {out_path}: {f.n_hidden} -> {g.n_hidden} hidden neurons, certified {norm} error "
                 f"{final.epsilon:.4g} <= {epsilon:g} (sampled {sampled:.4g})")
    return cert
