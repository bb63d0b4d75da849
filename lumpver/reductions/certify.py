"""Certify the actual error of a reduced network g against the original f on an input set X
(DESIGN.md §4, §5, §9): the ``bounded`` certificate shared by approximate lumping, pruning and
quantisation.

The certified quantity is ``sup_{x in X} ||f(x) - g(x)||`` for the two *files* as run in float32.
It is a sum of sound terms, each re-checkable from the files, X and the recorded evidence
(by the independent checker :mod:`lumpver.certificates.bounded_interval`):

* ``onset`` — optional exact on-set steps ``f -> h`` (DESIGN.md §3), replayed by
  :mod:`lumpver.certificates.onset`; their discrepancy bound (max over outputs) is a term.
  Without them ``h = f``.
* a *twin* ``g^`` of g with h's layer widths, so that the differential back-end can compare
  neuron by neuron (ReluDiff deltas, much tighter than comparing unlike networks):

  - ``kept`` (pruning): g keeps neurons ``kept[k]`` of h; ``g^`` has g's rows at the kept
    neurons, h's rows elsewhere (or the recorded ``dropped_rows``, see below) and zero outgoing
    weights from the others, so ``g^ = g`` exactly. Any row of a dropped neuron is sound (it
    feeds nothing); the reducer records rows that track h's neuron on samples of X (least
    squares over the kept neurons of the previous layer), which keeps the neuron-wise deltas
    small and the differential bound tight;
  - ``classes`` (approximate lumping): g is the quotient of ``g^`` by a partition with
    scales (:class:`lumpver.reductions.exact.LayerClasses`); ``g^``'s row of neuron u distributes
    ``c_u`` times g's row of its representative over the members of each previous class,
    keeping h's weights on the non-representatives. ``|g^ - g|`` is bounded soundly by
    :func:`lumpver.certificates.exact.discrepancy_bound` (float rounding of the distribution), a
    term;
  - none: ``g^ = g``.
* ``interval`` — :func:`lumpver.verifiers.interval.certified_difference_bound` of ``h`` vs ``g^`` on X,
  deterministic: branch and bound with a recorded box cap per region (the checker re-runs it);
  when that bound is not yet within the threshold, the differential branch and bound
  :func:`lumpver.verifiers.bab_diff.difference_search` runs with the time left and replaces it
  when it certifies less (evidence ``bab_diff``: the bisection trees, whose leaves the checker
  :mod:`lumpver.certificates.bounded_bab` re-bounds). On inputs of at most ``BAB_FIRST_DIMS``
  dimensions (ACAS Xu) the search runs first and the interval term only when it is not within the
  threshold (bench/RESULTS.md, issue 14). On wider inputs (MNIST) an aligned ReLU pair is searched by
  ReLU-phase splits instead (:mod:`lumpver.verifiers.bab_phase_batched`, evidence ``bab_diff`` with a
  ``phase_batched`` tree per region), then in linf by the LP phase search with the time left
  (:mod:`lumpver.verifiers.bab_phase`, a ``phase`` tree on the unsplit region where it is tighter),
  other pairs by the bisection search.
* ``float32`` — a sound bound of the float32 evaluation error of f and of g
  (:func:`lumpver.bounds.float_error.float32_error`: local roundings carried to the outputs by
  back-substitution). It is worst-case (gamma_n per dot product, |J| over the box) and still exceeds
  the real error by orders of magnitude on deep nets (ACAS Xu 1_1 on prop_3: 0.076 against 1.4e-6
  seen), so it is *stated beside*
  epsilon, not added: ``epsilon`` holds in real arithmetic of the stored float32 weights (as in
  the exact and on-set certificates); ``epsilon + float32`` holds for the float32 models as run.

Per-output (L-inf) terms enter an L1/L2 bound multiplied by ``n`` / ``sqrt(n)``. ``top1`` is
certified directly between f and g (argmax provably the same on every leaf box; real
arithmetic): the bound is 0 (agreement everywhere) or 1.

Graph networks (either file has a residual Add, Concat or MaxPool): :func:`certify_graph`, one term
``graph_diff`` (:func:`lumpver.verifiers.graph_diff.graph_difference_search`: product-graph bounds with
a recorded box cap per region, which :mod:`lumpver.certificates.bounded_graph` re-runs), and the
``float32`` evaluation term of both graphs (:func:`lumpver.bounds.float_error.float32_error_graph`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from lumpver.bounds.diff_batched import prepare_diff
from lumpver.bounds.float_error import float32_errors
from lumpver.bounds.region import region_box
from lumpver.certificates.format import make_certificate, model_stats
from lumpver.fileio import write_json_atomic
from lumpver.progress import SILENT, Progress
from lumpver.verifiers.bab_diff import DiffOptions, difference_search
from lumpver.verifiers.bab_phase import Tighten
from lumpver.verifiers.bab_phase_batched import PhaseOptions, lp_refine, phase_difference
from lumpver.verifiers.graph_diff import graph_difference_search
from lumpver.verifiers.interval import certified_difference_bound
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_import import load_model
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.base import default_certificate_path
from lumpver.reductions.exact import LayerClasses
from lumpver.specs.inputset import Box, InputSet
from lumpver.specs.norms import NORMS, difference_rows, from_max_abs, upper_norm
from lumpver.ir.network import Layer, Network
from lumpver.bounds.diff_align import snap_for_exact_difference
from lumpver.certificates.exact import discrepancy_bound
from lumpver.certificates.pruned_conv import channel_twin

#: relative padding of a stated bound over the computed one (the checker's recomputation may
#: differ in the last bits; a larger bound stays sound)
PAD = 1e-6
DEFAULT_MAX_BOXES = 400
#: boxes the differential branch and bound bounds at most per region and certification: a box cap, not
#: the clock, ends it, so a reduction certified during the search certifies again from the written file
#: (approximate reduction certifies many candidates); BAB_SECONDS is a safety limit only
BAB_BOXES = 1500
BAB_SECONDS = 120.0
#: inputs of at most this many dimensions are certified by the branch and bound first (see _difference_term)
BAB_FIRST_DIMS = 8
#: box cap of the interval term where it only backs up the branch and bound (inputs of at most BAB_FIRST_DIMS
#: dimensions): it costs ~20 ms a box against ~0.7 ms for the search (3-16-16-2 planted net: 400 boxes took
#: 8-10 s per rejected candidate, 6 of 8 certifications of a reduction, and never certified one the search did not)
INTERVAL_FALLBACK_BOXES = 100
#: ReLU-phase LPs per leaf of the phase stage before the leaf is bisected (DiffOptions.phase_leaf_lps)
BAB_PHASE_LEAF_LPS = 300


@dataclass(frozen=True)
class PhaseBudget:
    """The ReLU-phase stage of a certification's differential search on inputs of at most BAB_FIRST_DIMS
    dimensions (:class:`lumpver.verifiers.bab_diff.DiffOptions`; DESIGN.md §11): ``lps`` phase LPs per region
    (0: no stage; it splits f/g neuron pairs of the twin on the leaves the bisection leaves open, 2-3 ms per
    LP on ACAS Xu), ``boxes`` bisection boxes first (0: BAB_BOXES), ``extra_boxes`` boxes the stage may add by
    bisecting leaves it leaves open (None: DiffOptions' default, 4,000), ``tighten`` its root tightening
    (:data:`lumpver.verifiers.bab_phase.TIGHTEN_MODES`), ``workers`` processes (open leaves are independent)."""

    lps: int = 0
    boxes: int = 0
    extra_boxes: Optional[int] = None
    tighten: Tighten = True
    workers: int = 1

    @property
    def active(self) -> bool:
        """Whether the stage runs at all."""
        return self.lps > 0

    def to_json(self) -> dict[str, Any]:
        return {"lps": self.lps, "boxes": self.boxes, "extra_boxes": self.extra_boxes, "tighten": self.tighten,
                "workers": self.workers}


#: no phase stage: at 20,000 LPs the ACAS Xu reductions kept the same size at 600 s (2_3 89, 1_1 113) and the
#: suite's reduction tests took 357 s instead of 154 s (bench/RESULTS.md, 2026-12-01)
NO_PHASE = PhaseBudget()
#: reductions given at least PHASE_TIMEOUT seconds (``reduce --timeout``): the ACAS Xu 2_3 candidate at the goal
#: size (62 neurons) needs ~200,000 LPs (bench/RESULTS.md, 2026-12-01), far beyond the suite's short budgets
PHASE_TIMEOUT = 900.0
LONG_PHASE = PhaseBudget(lps=400_000)
#: from GOAL_PHASE_TIMEOUT seconds on: the budget that certified the ACAS Xu 1_1 goal-size candidate (67 of 135
#: neurons) in 2,323 s wall / 4,333 CPU s with 2 workers (bench/RESULTS.md, 2026-12-01; 1,500 boxes first cost
#: ~7,100 CPU s, 24,000 ~4,700; "live" tightening saved ~12 %; 4,000 extra boxes stopped at the cap, 0.0179)
GOAL_PHASE_TIMEOUT = 3600.0
GOAL_PHASE = PhaseBudget(lps=2_000_000, boxes=24_000, extra_boxes=40_000, tighten="live")


def phase_budget(timeout: float, workers: int = 1) -> PhaseBudget:
    """The phase stage of a reduction given ``timeout`` seconds, in ``workers`` processes: GOAL_PHASE from
    GOAL_PHASE_TIMEOUT on, LONG_PHASE from PHASE_TIMEOUT on, else none."""
    tier = GOAL_PHASE if timeout >= GOAL_PHASE_TIMEOUT else LONG_PHASE if timeout >= PHASE_TIMEOUT else NO_PHASE
    return replace(tier, workers=workers)


#: sub-problems per region of the batched phase search on wider inputs (bench/RESULTS.md, MNIST 256x2; 0: off)
PHASE_NODES = 250
#: LPs per region of the LP phase search that follows it in linf with the time left (0: off)
PHASE_LPS = 600
#: boxes per region the graph back-end bounds at most when certifying (inputs small enough to split)
GRAPH_BOXES = 100


def expand_pruned(h: Network, g: Network, kept: list[np.ndarray],
                  dropped_rows: Optional[list[Optional["DroppedRows"]]] = None) -> Network:
    """``g^``: h's widths, g's weights at the kept neurons; equal to g in real arithmetic.

    ``dropped_rows[k]`` (optional) replaces the rows of layer k's dropped neurons (weights over
    the kept neurons of layer k-1, or over the inputs for k = 0)."""
    layers = []
    for k, layer in enumerate(h.layers):
        rows = np.asarray(kept[k]) if k < len(kept) else np.arange(layer.width)
        cols = np.asarray(kept[k - 1]) if k > 0 else np.arange(layer.fan_in)
        w = layer.weight.copy() if k < len(kept) else np.zeros_like(layer.weight)
        b = layer.bias.copy()
        w[rows, :] = 0.0
        w[np.ix_(rows, cols)] = g.layers[k].weight
        b[rows] = g.layers[k].bias
        if k > 0:  # neurons g dropped feed nothing onward
            dropped = np.setdiff1d(np.arange(layer.fan_in), cols)
            w[:, dropped] = 0.0
        d = dropped_rows[k] if dropped_rows is not None and k < len(dropped_rows) else None
        if d is not None and d.index.size:
            w[d.index, :] = 0.0
            w[np.ix_(d.index, cols)] = d.weight
            b[d.index] = d.bias
        layers.append(Layer(w, b, layer.activation, layer.alpha, layer.source_op))
    return h.with_layers(layers)


@dataclass
class DroppedRows:
    """Twin rows of the dropped neurons ``index`` of one hidden layer (see :func:`expand_pruned`)."""

    index: np.ndarray  # (n,) neuron indices in h
    weight: np.ndarray  # (n, kept neurons of the previous layer or inputs)
    bias: np.ndarray  # (n,)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index.tolist(), "weight": self.weight.tolist(), "bias": self.bias.tolist()}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "DroppedRows":
        idx = np.asarray(d["index"], dtype=np.int64).reshape(-1)
        w = np.asarray(d["weight"], dtype=np.float64).reshape(idx.size, -1)
        return DroppedRows(idx, w, np.asarray(d["bias"], dtype=np.float64).reshape(-1))


def expand_quotient(h: Network, g: Network, classes: list) -> Network:
    """``g^``: h's widths; aggregated over the previous classes, row u is ``c_u`` times g's row of
    u's class (see the module docstring). Equal to g up to float rounding of the distribution."""
    layers = []
    for k, layer in enumerate(h.layers):
        cur = classes[k] if k < len(classes) else None
        prev = classes[k - 1] if k > 0 else None
        cls = cur.cls if cur is not None else np.arange(layer.width)
        c = cur.scale if cur is not None else np.ones(layer.width)
        gw, gb = g.layers[k].weight, g.layers[k].bias
        w = layer.weight.copy()
        target = c[:, None] * gw[cls]  # (width, n_prev_classes or fan_in)
        if prev is None:
            w = target
        else:
            for C, r in enumerate(prev.rep):
                members = np.flatnonzero(prev.cls == C)
                others = members[members != r]
                w[:, r] = (target[:, C] - w[:, others] @ prev.scale[others]) / prev.scale[r]
        layers.append(Layer(w, c * gb[cls], layer.activation, layer.alpha, layer.source_op))
    return h.with_layers(layers)


# ----- terms ----------------------------------------------------------------------------------
def interval_term(h: Network, twin: Network, input_set: InputSet, norm: str, threshold: float,
                  max_boxes: list[int] | int, timeout: float) -> tuple[float, dict[str, Any]]:
    """Differential bound of ``h - twin`` region by region with a box cap (deterministic)."""

    caps = max_boxes if isinstance(max_boxes, list) else [int(max_boxes)] * len(input_set.regions)
    deadline = time.perf_counter() + timeout
    bound, used, stops = 0.0, [], []
    for region, cap in zip(input_set.regions, caps):
        left = max(1e-3, deadline - time.perf_counter())
        ub, det = certified_difference_bound(h, twin, InputSet([region]), norm, left, int(cap), threshold)
        bound = max(bound, ub)
        used.append(int(det["boxes_processed"]) + 1)
        stops.extend(det.get("stopped", []))
    return bound, {"threshold": threshold, "max_boxes": used, "stopped": sorted(set(stops))}


def bab_term(h: Network, twin: Network, input_set: InputSet, norm: str, threshold: float,
             timeout: float, phase: PhaseBudget = NO_PHASE, progress: Progress = SILENT
             ) -> tuple[float, dict[str, Any]]:
    """The differential branch and bound's bound of ``h - twin`` on X (refined down to ``threshold``), with
    the ReLU-phase stage of ``phase`` on inputs of at most BAB_FIRST_DIMS dimensions; ``progress`` gets the
    search's heartbeat."""
    if input_set.dim > BAB_FIRST_DIMS:
        phase = NO_PHASE
    opt = DiffOptions(max_boxes=phase.boxes if phase.active and phase.boxes > 0 else BAB_BOXES,
                      deterministic=True, phase_lps=phase.lps, phase_leaf_lps=BAB_PHASE_LEAF_LPS,
                      phase_tighten=phase.tighten, workers=phase.workers, progress=progress,
                      **({} if phase.extra_boxes is None else {"phase_boxes": phase.extra_boxes}))
    results, ev = difference_search(h, twin, input_set, norm, timeout, close_at=threshold, options=opt)
    ev["threshold"] = threshold
    ev["attained"] = max(r.lower for r in results)  # a float64 value of |h - twin| reached (not a bound)
    return max(r.upper for r in results), ev


def phase_term(h: Network, twin: Network, input_set: InputSet, norm: str, threshold: float,
               timeout: float) -> tuple[float, dict[str, Any]]:
    """Wide inputs (MNIST's 784: bisection does not pay): the batched ReLU-phase branch and bound on the
    aligned pair (:func:`lumpver.verifiers.bab_phase_batched.phase_difference`, PHASE_NODES sub-problems
    per region), then, in linf with the time left, the LP phase search on each region
    (:func:`lumpver.verifiers.bab_phase_batched.lp_refine`, at most PHASE_LPS LPs), the tighter per region
    (bench/RESULTS.md: each wins on some MNIST boxes); ``(inf, {})`` for a pair it cannot take."""
    if PHASE_NODES <= 0:
        return math.inf, {}
    t_end = time.monotonic() + timeout
    try:
        model = prepare_diff(h, twin, "delta")
        run = phase_difference(h, twin, input_set, norm, threshold, timeout, PhaseOptions(max_nodes=PHASE_NODES),
                               model=model)
    except ValueError:
        return math.inf, {}
    if norm == "linf" and PHASE_LPS > 0 and run.upper > threshold:
        run = lp_refine(run, model, input_set, threshold, t_end, PHASE_LPS)
    u, ev = run.upper, run.evidence
    ev["threshold"] = threshold
    return u, ev


def _difference_term(h: Network, twin: Network, input_set: InputSet, norm: str, t_int: float,
                     max_boxes: int, timeout: float, t0: float, phase: PhaseBudget = NO_PHASE,
                     progress: Progress = SILENT) -> tuple[float, dict[str, Any], str]:
    """``(bound of h - twin, evidence, back-end)``. Inputs of at most BAB_FIRST_DIMS dimensions (ACAS Xu):
    the differential branch and bound first (bisection pays there; it also stops at once when its attained
    value exceeds ``t_int``, i.e. the candidate is not within it), the interval term (at most
    INTERVAL_FALLBACK_BOXES boxes) only if it fails; wider
    inputs: the interval term first and the search with the time left when that is not within ``t_int``.
    With a phase stage the search may use the whole ``timeout`` (else at most BAB_SECONDS)."""
    def bab(left: float) -> tuple[float, dict[str, Any]]:
        try:
            return bab_term(h, twin, input_set, norm, t_int, left, phase, progress)
        except ValueError:  # a pair the search cannot take
            return math.inf, {}

    if input_set.dim <= BAB_FIRST_DIMS and norm in ("linf", "l1", "l2"):
        u, ev = bab(timeout if phase.active else min(BAB_SECONDS, timeout))
        if u <= t_int or ev.get("attained", 0.0) > t_int:
            return u, ev, "bab_diff"
        left = max(0.5, timeout - (time.perf_counter() - t0))
        u2, ev2 = interval_term(h, twin, input_set, norm, t_int, min(max_boxes, INTERVAL_FALLBACK_BOXES), left)
        return (u, ev, "bab_diff") if u <= u2 else (u2, ev2, "interval")
    u, ev = interval_term(h, twin, input_set, norm, t_int, max_boxes, timeout / 2)
    left = min(BAB_SECONDS, timeout - (time.perf_counter() - t0))
    if u > t_int and left > 0.5:
        u2, ev2 = phase_term(h, twin, input_set, norm, t_int, left)
        if u2 == math.inf:
            u2, ev2 = bab(left)
        if u2 < u:
            return u2, ev2, "bab_diff"
    return u, ev, "interval"


@dataclass
class Chain:
    """How g relates to f for certification (module docstring)."""

    onset_steps: Optional[list[dict[str, Any]]] = None
    kept: Optional[list[np.ndarray]] = None
    classes: Optional[list] = None  # LayerClasses per hidden layer of h
    dropped_rows: Optional[list[Optional[DroppedRows]]] = None  # with ``kept`` only

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.onset_steps is not None:
            d["onset_steps"] = self.onset_steps
        if self.kept is not None:
            d["kept"] = [np.asarray(k).tolist() for k in self.kept]
        if self.dropped_rows is not None:
            d["dropped_rows"] = [r.to_json() if r is not None else None for r in self.dropped_rows]
        if self.classes is not None:
            d["classes"] = [c.to_json() for c in self.classes]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Chain":

        return Chain(d.get("onset_steps"),
                     [np.asarray(k, dtype=np.int64) for k in d["kept"]] if "kept" in d else None,
                     [LayerClasses.from_json(c) for c in d["classes"]] if "classes" in d else None,
                     [DroppedRows.from_json(r) if r is not None else None for r in d["dropped_rows"]]
                     if "dropped_rows" in d else None)


def twin_of(h: Network, g: Network, chain: Chain, input_set: InputSet) -> tuple[Network, float]:
    """``(g^, bound of max_i |g^_i - g_i| on X)``."""
    if chain.kept is not None:
        if not (h.is_dense and g.is_dense):  # kept channels of a CNN
            return channel_twin(h, g, chain.kept), 0.0
        return expand_pruned(h, g, chain.kept, chain.dropped_rows), 0.0
    if chain.classes is not None:

        twin = snap_for_exact_difference(h, expand_quotient(h, g, chain.classes))
        a, b = discrepancy_bound(twin, g, chain.classes, 0.0)
        xmax = max(float(np.max(np.abs(np.concatenate([bx.lower, bx.upper]))))
                   for bx in map(region_box, input_set.regions))
        return twin, float(a + b * xmax) * (1 + 1e-9)
    return g, 0.0


@dataclass
class Certified:
    """A certified bound and its terms (all sound upper bounds, see the module docstring)."""

    epsilon: float  # stated bound (padded); inf if nothing could be certified
    norm: str
    terms: dict[str, float]
    evidence: dict[str, Any]
    seconds: float = 0.0
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    backend: str = "interval"  # the back-end of the differential term (names the evidence entry)

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.epsilon))


def certify(f: Network, g: Network, input_set: InputSet, norm: str = "linf", chain: Optional[Chain] = None,
            h: Optional[Network] = None, onset_bound: float = 0.0, timeout: float = 60.0,
            max_boxes: int = DEFAULT_MAX_BOXES, threshold: float = 0.0, phase: PhaseBudget = NO_PHASE,
            progress: Progress = SILENT) -> Certified:
    """Certified ``sup_X ||f(x) - g(x)||`` for the float32 models (interval back-end).

    ``h`` is the network after ``chain.onset_steps`` (with ``onset_bound`` its discrepancy);
    ``threshold``: boxes whose bound is already below it are not split further; ``phase``: the ReLU-phase
    stage of the differential search (:func:`phase_budget`); ``progress``: its heartbeat.
    """
    t0 = time.perf_counter()
    chain = chain or Chain()
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}")
    if norm == "top1":
        return _certify_top1(f, g, input_set, timeout, max_boxes, t0)
    h = f if h is None else h
    twin, twin_gap = twin_of(h, g, chain, input_set)
    # the differential term's target leaves room for the other terms and the PAD of their sum, so a search that
    # just closes at it gives a total <= threshold (without it 1_1 at 67 certified 0.0100000013 for 0.01)
    t_int = max(0.0, threshold / (1 + PAD) - from_max_abs(onset_bound + twin_gap, f.n_outputs, norm))
    try:
        u, ev, backend = _difference_term(h, twin, input_set, norm, t_int, max_boxes, timeout, t0, phase,
                                          progress)
    except ValueError as e:  # unsupported activation, polytope without a box
        return Certified(math.inf, norm, {}, {}, time.perf_counter() - t0, str(e))
    ferr = float32_errors(f, input_set) + float32_errors(g, input_set)
    terms = {"onset": from_max_abs(onset_bound, f.n_outputs, norm),
             "twin": from_max_abs(twin_gap, f.n_outputs, norm), "interval": u}
    total = sum(terms.values()) * (1 + PAD)
    terms["float32"] = upper_norm(ferr, norm) * (1 + PAD)
    ev.update({"chain": chain.to_json(), "terms": terms})
    return Certified(total, norm, terms, ev, time.perf_counter() - t0, backend=backend)


def certify_graph(f, g, input_set: InputSet, norm: str = "linf", timeout: float = 60.0,
                  max_boxes: int = GRAPH_BOXES) -> Certified:
    """Certified ``sup_X ||f(x) - g(x)||`` (real arithmetic) for graph networks (module docstring)."""
    t0 = time.perf_counter()
    caps, bound, ev = [], 0.0, {}
    for region in input_set.regions:
        left = max(1e-3, timeout - (time.perf_counter() - t0)) / max(1, len(input_set.regions) - len(caps))
        run = graph_difference_search(f, g, InputSet([region]), norm, left, max_boxes=max_boxes)
        bound = max(bound, run.upper_bound)
        caps.append(sum(r.boxes for r in run.results) + 1)
        ev = run.evidence(norm) if not ev else ev
        ev.setdefault("stopped", [])
        ev["stopped"] = sorted(set(ev["stopped"]) | set(run.evidence(norm).get("stopped", [])))
    ev.pop("sub_boxes", None)
    ev.update({"max_boxes": caps, "threshold": 0.0, "terms": {"graph_diff": bound}, "upper_bound": bound})
    total = bound if norm == "top1" else bound * (1 + PAD)
    terms = {"graph_diff": bound}
    if norm != "top1":
        terms["float32"] = upper_norm(float32_errors(f, input_set) + float32_errors(g, input_set), norm) * (1 + PAD)
    return Certified(total, norm, terms, ev, time.perf_counter() - t0, backend="graph_diff")


def _certify_top1(f, g, input_set, timeout, max_boxes, t0) -> Certified:
    u, ev = interval_term(f, g, input_set, "top1", 0.0, max_boxes, timeout)
    ev.update({"chain": {}, "terms": {"interval": u}})
    return Certified(u, "top1", {"interval": u}, ev, time.perf_counter() - t0,
                     "" if u == 0 else "argmax agreement not proved on every box")


# ----- sampling -------------------------------------------------------------------------------
def sample_points(input_set: InputSet, n: int, seed: int = 0) -> np.ndarray:
    """About ``n`` points of X (uniform in each region's box, plus corners; polytopes filtered)."""
    rng = np.random.default_rng(seed)
    per = max(1, n // len(input_set.regions))
    out = []
    for region in input_set.regions:
        pts = region_box(region).sample(per, rng, corners=True)
        if not isinstance(region, Box):
            pts = pts[[region.contains(p, 1e-9) for p in pts]]
        out.append(pts)
    return np.vstack(out).astype(np.float32).astype(np.float64)


def sampled_error(f_path: str | os.PathLike, g_path: str | os.PathLike, input_set: InputSet, norm: str = "linf",
                  n: int = 2000, seed: int = 0) -> float:
    """Largest ``||f(x) - g(x)||`` seen by onnxruntime on the two files over sampled points of X."""

    x = sample_points(input_set, n, seed)
    if not len(x):
        return 0.0
    yf, yg = run_onnx(f_path, x), run_onnx(g_path, x)
    return float(np.max(difference_rows(yf, yg, norm)))


# ----- certificates ---------------------------------------------------------------------------
def bounded_certificate(original_path: str | os.PathLike, reduced_path: str | os.PathLike,
                        cert_path: str | os.PathLike, f: Network, g: Network, input_set: InputSet,
                        result: Certified, method: dict[str, Any], seconds: float,
                        sampled: Optional[float] = None) -> dict[str, Any]:
    """The ``bounded`` certificate (CONTRACT.md) for a certified result; not written."""

    guarantee = {"kind": "bounded", "input_set": input_set.to_json(), "norm": result.norm,
                 "epsilon": result.epsilon,
                 "float_tolerance": {"float32_rounding_bound": result.terms.get("float32"),
                                     "statement": "epsilon holds in exact real arithmetic of the stored float32 "
                                                  "weights; evaluating both models in float32 adds at most "
                                                  "float32_rounding_bound (a sound worst-case bound)"},
                 "statement": "for every x in the input set, ||f(x) - g(x)|| <= epsilon (real arithmetic of the "
                              "stored float32 weights)"
                              if result.norm != "top1" else
                              "for every x in the input set, argmax f(x) = argmax g(x) (real arithmetic of the "
                              "stored float32 weights) when epsilon is 0"}
    evidence = [{"backend": result.backend, "verdict": "proved", "upper_bound": result.epsilon, "norm": result.norm,
                 **result.evidence},
                {"backend": "reduction", "verdict": "info", **method}]
    if sampled is not None:
        evidence.append({"backend": "sampling", "verdict": "info", "lower_bound": sampled,
                         "statement": "largest error seen by onnxruntime on sampled points of X"})
    stats = model_stats(f, g, seconds)
    return make_certificate(original_path, reduced_path, guarantee, stats, evidence, cert_path)


def write_bounded(original_path, reduced_path, cert_path, f, g, input_set, result, method, seconds,
                  sampled=None) -> dict[str, Any]:
    """Build and atomically write the ``bounded`` certificate; returns it."""

    cert = bounded_certificate(original_path, reduced_path, cert_path, f, g, input_set, result, method, seconds,
                               sampled)
    write_json_atomic(cert_path, cert)
    return cert


def certify_files(original_path: str, reduced_path: str, cert_path: Optional[str], input_set: InputSet, norm: str,
                  chain: Optional[Chain], method: dict[str, Any], seconds: float, timeout: float = 120.0,
                  progress=None) -> dict[str, Any]:
    """Certify two written model files (g loaded back from its file) and write the certificate."""

    f, g = load_model(original_path), load_model(reduced_path)
    graph = isinstance(f, GraphNetwork) or isinstance(g, GraphNetwork)
    res = certify_graph(f, g, input_set, norm, timeout) if graph else certify(f, g, input_set, norm, chain,
                                                                             timeout=timeout)
    sampled = sampled_error(original_path, reduced_path, input_set, norm)
    if progress is not None:
        progress.say(f"certified {norm} error <= {res.epsilon:.6g} on the input set (sampled maximum {sampled:.6g})")
    cert_path = cert_path or str(default_certificate_path(reduced_path))
    return write_bounded(original_path, reduced_path, cert_path, f, g, input_set, res, method, seconds, sampled)
