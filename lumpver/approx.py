"""Approximate lumping certified on an input set (DESIGN.md §4, on top of §3).

1. Exact on-set reduction ``f -> h`` (:func:`lumpver.onset.reduce_on_set`).
2. For a clustering tolerance ``tau``, :func:`approximate_quotient` walks h's hidden layers
   from the inputs: the *signature* of a neuron is its incoming row fitted by least squares to
   h's pre-activations on samples of X, over the previous layer of the reduced network g
   (columns weighted by the RMS of that layer's activations, so distances measure function);
   signatures whose normalised rows are within ``tau`` merge (:func:`lumpver.grouping.group_rows`,
   positive factors: ReLU is positively homogeneous), the representative keeps its fitted row,
   member ``u`` gets the scale ``c_u`` with ``h_u ~ c_u h_rep``. The next layer is fitted again,
   so merged neurons' outgoing weights are chosen by least squares.
3. The error ``sup_X ||f - g||`` is certified by :func:`lumpver.certify.certify` (on-set
   discrepancy + differential bound of h against g's twin + twin rounding + float32 errors).
4. Bisection over ``tau`` (log scale) keeps the smallest g whose certified bound is ``<= E``;
   candidates whose *sampled* error already exceeds E are rejected without a proof attempt.
   If no tau works, h itself (the on-set reduction, classes = identity) is certified, so the
   result is never larger than the exact on-set reduction.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lumpver.certify import Certified, Chain, certify
from lumpver.inputset import InputSet
from lumpver.lumping import LayerClasses
from lumpver.model import Layer, Network
from lumpver.progress import SILENT, Progress

SUPPORTED = ("relu", "leaky_relu", "identity")
TAU_LO, TAU_HI = 1e-3, 2.0
DEFAULT_SAMPLES = 3000


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _fit(act_prev: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rows ``[W | b]`` with ``act_prev @ W.T + b ~ target``."""
    a = np.hstack([act_prev, np.ones((act_prev.shape[0], 1))])
    sol, *_ = np.linalg.lstsq(a, target, rcond=None)
    return sol.T


def _cluster(sig: np.ndarray, weights: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class_of, scale, representatives) for rows ``sig`` weighted by column ``weights``."""
    from lumpver.grouping import group_rows

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
    for k, layer in enumerate(h.layers[:-1]):
        if layer.activation not in SUPPORTED:
            raise ValueError(f"layer {k}: approximate lumping supports {', '.join(SUPPORTED)}, not {layer.activation}")
    acts = h.activations(samples)
    g_prev = acts[0]
    layers, classes = [], []
    for k, layer in enumerate(h.layers):
        z = acts[k] @ layer.weight.T + layer.bias
        sig = np.hstack([layer.weight, layer.bias[:, None]]) if k == 0 else _fit(g_prev, z)
        sig = _f32(sig)
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


def identity_classes(h: Network) -> list[LayerClasses]:
    return [LayerClasses(np.arange(w), np.ones(w), np.arange(w), np.ones(w, bool)) for w in h.hidden_widths]


@dataclass
class ApproxResult:
    """Outcome of :func:`reduce_approx`."""

    original: Network
    onset: Network  # h
    reduced: Network  # g
    classes: list[LayerClasses]
    certified: Certified
    tau: float
    chain: Chain
    onset_bound: float = 0.0
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def reduce_approx(f: Network, input_set: InputSet, epsilon: float, norm: str = "linf", timeout: float = 300.0,
                  progress: Progress = SILENT, samples: int = DEFAULT_SAMPLES, max_boxes: int = 400,
                  steps: int = 8, seed: int = 0) -> ApproxResult:
    """The smallest approximate quotient found whose certified error on X is ``<= epsilon``.

    Raises ValueError when not even the exact on-set reduction is certified within epsilon."""
    from lumpver.certify import norm_rows, sample_points
    from lumpver.onset import reduce_on_set

    t0 = time.perf_counter()
    deadline = t0 + timeout
    on = reduce_on_set(f, input_set, progress=progress)
    h = on.reduced
    progress.say(f"exact on-set reduction: {f.n_hidden} -> {h.n_hidden} hidden neurons (discrepancy {on.discrepancy:.2e})")
    chain0 = Chain(onset_steps=on.steps, classes=identity_classes(h))
    pts = sample_points(input_set, samples, seed)
    yf = f.forward(pts)

    def attempt(tau: float) -> Optional[tuple[Network, list[LayerClasses], Certified]]:
        g, classes = approximate_quotient(h, pts, tau)
        seen = float(np.max(norm_rows(yf - g.forward(pts), yf, g.forward(pts), norm)))
        trial = {"tau": tau, "hidden": g.n_hidden, "sampled": seen}
        trials.append(trial)
        if g.n_hidden >= best[0].n_hidden:
            trial["certified"] = None
            return "grow"
        if seen > epsilon:
            trial["certified"] = None
            return None
        left = max(1.0, deadline - time.perf_counter())
        res = certify(f, g, input_set, norm, Chain(on.steps, None, classes), h, on.discrepancy,
                      timeout=min(left, 120.0), max_boxes=max_boxes, threshold=epsilon)
        trial["certified"] = res.epsilon if res.finite else None
        progress.say(f"tau {tau:.3g}: {g.n_hidden} hidden neurons, sampled {seen:.3g}, certified {res.epsilon:.3g}")
        return (g, classes, res) if res.epsilon <= epsilon else None

    trials: list[dict[str, Any]] = []
    base = certify(f, h, input_set, norm, chain0, h, on.discrepancy, timeout=max(1.0, deadline - time.perf_counter()),
                   max_boxes=max_boxes, threshold=epsilon)
    if not base.epsilon <= epsilon:
        raise ValueError(f"even the exact on-set reduction is certified only within {base.epsilon:.3g} > epsilon "
                         f"{epsilon:g}; use --mode on-set or a larger --epsilon")
    best: list[Any] = [h, identity_classes(h), base, 0.0]
    lo, hi = math.log(TAU_LO), math.log(TAU_HI)
    for _ in range(steps):
        if time.perf_counter() > deadline:
            break
        mid = (lo + hi) / 2
        got = attempt(math.exp(mid))
        if got == "grow":
            lo = mid
        elif got is not None:
            best = [got[0], got[1], got[2], math.exp(mid)]
            lo = mid
        else:
            hi = mid
    g, classes, res, tau = best
    return ApproxResult(f, h, g, classes, res, tau, Chain(on.steps, None, classes), on.discrepancy, trials,
                        time.perf_counter() - t0)


def reduce_approx_to_files(model_path: str | os.PathLike, out_path: str | os.PathLike,
                           cert_path: Optional[str | os.PathLike], input_set: InputSet, epsilon: float,
                           norm: str = "linf", backend: str = "auto", timeout: float = 300.0,
                           progress: Progress = SILENT) -> dict[str, Any]:
    """``lumpver reduce --mode approx``: write g and its ``bounded`` certificate; returns the certificate.

    ``backend``: ``interval`` or ``auto`` (the differential back-end; others -> InputError)."""
    from lumpver.certify import certify as certify_pair, sampled_error, write_bounded
    from lumpver.errors import CheckFailed, InputError
    from lumpver.onnx_export import save_onnx
    from lumpver.onnx_import import load_onnx

    if backend not in ("auto", "interval"):
        raise InputError(f"--mode approx certifies with the interval back-end (auto|interval), not {backend!r}")
    t0 = time.perf_counter()
    f = load_onnx(model_path)
    if input_set.dim != f.n_inputs:
        raise InputError(f"input set has {input_set.dim} dimensions, the model {f.n_inputs} inputs",
                         str(input_set.source or model_path))
    try:
        res = reduce_approx(f, input_set, epsilon, norm, timeout, progress)
    except ValueError as e:
        raise CheckFailed(str(e)) from None
    cert_path = Path(cert_path) if cert_path else Path(out_path).with_name(Path(out_path).stem + ".cert.json")
    save_onnx(res.reduced, out_path)
    try:
        g = load_onnx(out_path)  # certify what was written
        final = certify_pair(f, g, input_set, norm, res.chain, res.onset, res.onset_bound,
                             timeout=max(60.0, timeout), threshold=epsilon)
        if not final.epsilon <= epsilon:
            raise CheckFailed(f"the written model certifies only within {final.epsilon:.3g} > {epsilon:g}")
        sampled = sampled_error(model_path, out_path, input_set, norm)
        method = {"method": "approximate-lumping", "tau": res.tau, "requested_epsilon": epsilon,
                  "onset_hidden": res.onset.n_hidden, "trials": res.trials}
        cert = write_bounded(model_path, out_path, cert_path, f, g, input_set, final, method,
                             time.perf_counter() - t0, sampled)
    except BaseException:
        Path(out_path).unlink(missing_ok=True)
        raise
    progress.say(f"wrote {out_path}: {f.n_hidden} -> {g.n_hidden} hidden neurons, certified {norm} error "
                 f"{final.epsilon:.4g} <= {epsilon:g} (sampled {sampled:.4g})")
    return cert
