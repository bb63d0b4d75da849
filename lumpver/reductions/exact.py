"""Exact lumping: the coarsest forward-lumpable quotient of a network (DESIGN.md §2).

Layer by layer from the inputs, each neuron ``u`` gets a *class-aggregated signature*
``sig_u = (sum_{s in C} w_{u,s} c_s for every class C of the previous layer, b_u + folded
constants)``. Neurons whose signatures are proportional with a factor the activation allows
form a class: ``h_u = c_u h_rep``. All-zero signatures are constants ``act(b)`` folded into the
next layer's bias; classes whose merged outgoing weights all vanish are dead and dropped,
from the outputs back. Grouping is by normalised signatures (:mod:`lumpver.reductions.grouping`), so a
layer costs O(m + n log n) for m weights.

Float32 weights make equality approximate: signatures match within a relative tolerance,
and aggregated entries that cancel to within the tolerance of their own terms are snapped to
zero. The certificate states the tolerance and a sound bound on the resulting discrepancy
(:mod:`lumpver.certificates.exact`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lumpver.reductions.grouping import classify_signatures
from lumpver.ir.network import Layer, Network
from lumpver.reductions.exact_conv import lump_channels
from lumpver.progress import SILENT, Progress

DEFAULT_TOLERANCE = 1e-5


@dataclass
class LayerClasses:
    """The partition of one hidden layer.

    ``cls[u]`` is the class of neuron ``u`` (``-1`` = constant neuron), ``scale[u]`` its factor
    ``c_u`` (``h_u = c_u h_rep(cls[u])``) or its constant value, ``rep[C]`` the representative of
    class ``C`` and ``kept[C]`` whether the class survives dead-neuron removal.
    """

    cls: np.ndarray
    scale: np.ndarray
    rep: np.ndarray
    kept: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "class_of": self.cls.tolist(),
            "scale": [float(v) for v in self.scale],
            "representative": self.rep.tolist(),
            "kept": [bool(k) for k in self.kept],
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> "LayerClasses":
        return LayerClasses(
            np.asarray(d["class_of"], dtype=np.int64),
            np.asarray(d["scale"], dtype=np.float64),
            np.asarray(d["representative"], dtype=np.int64),
            np.asarray(d["kept"], dtype=bool),
        )


@dataclass
class LumpResult:
    """Outcome of :func:`exact_lump`: the reduced network and the quotient claim."""

    original: Network
    reduced: Network
    classes: list[LayerClasses]  # one per hidden layer
    tolerance: float
    stats: dict[str, Any] = field(default_factory=dict)
    #: per layer, the unsnapped class-aggregated weights and effective bias (reused by the bound)
    raw_signatures: list = field(default_factory=list, repr=False)

    @property
    def claim(self) -> dict[str, Any]:
        """The JSON-able quotient claim a checker replays (:func:`lumpver.certificates.exact.replay_quotient`)."""
        return {"tolerance": self.tolerance, "layers": [c.to_json() for c in self.classes]}


def aggregate(weight: np.ndarray, prev: LayerClasses | None, n_classes: int,
              tol: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Class-aggregated weights ``A[u, C] = sum_{s in C} w_{u,s} c_s`` (constant neurons, class -1,
    excluded; see :func:`constant_contribution`).

    With ``tol``, also returns the magnitudes ``sum |w_{u,s} c_s|`` against which cancellation is
    judged, but only where they matter (entries that could be snapped, see
    :func:`snap_cancellations`); elsewhere they are ``inf``. O(m) for m weights.
    """
    if prev is None:  # single-member classes: nothing can cancel
        return weight, None
    from scipy import sparse

    member = np.flatnonzero(prev.cls >= 0)
    pt = sparse.csr_matrix((prev.scale[member], (prev.cls[member], member)), shape=(n_classes, weight.shape[1]))
    agg = np.asarray((pt @ weight.T).T)
    if tol is None:
        return agg, None
    abs_pt = abs(pt)
    row_total = np.abs(weight) @ np.abs(np.where(prev.cls >= 0, prev.scale, 0.0))
    cand = (agg != 0) & (np.abs(agg) <= tol * row_total[:, None])
    mag = np.zeros(agg.shape)  # zero where nothing can be snapped
    if np.count_nonzero(cand) > 0.05 * cand.size:
        mag = np.asarray((abs_pt @ np.abs(weight).T).T)
    else:
        rows, cols = np.nonzero(cand)
        for c in np.unique(cols):
            sel = rows[cols == c]
            members = np.flatnonzero(prev.cls == c)
            mag[sel, c] = np.abs(weight[np.ix_(sel, members)] * prev.scale[members]).sum(axis=1)
    return agg, mag


def constant_contribution(weight: np.ndarray, prev: LayerClasses | None) -> np.ndarray:
    """``sum_{s constant} w_{u,s} v_s`` for every neuron u of the layer."""
    if prev is None:
        return np.zeros(weight.shape[0])
    const = np.flatnonzero(prev.cls < 0)
    return weight[:, const] @ prev.scale[const] if const.size else np.zeros(weight.shape[0])


def snap_cancellations(agg: np.ndarray, mag: np.ndarray | None, tol: float) -> np.ndarray:
    """Set to exactly zero the aggregated entries that cancel to within ``tol`` of their terms."""
    if mag is None:
        return agg
    out = agg.copy()
    out[np.abs(agg) <= tol * mag] = 0.0
    return out


def _classify_layer(sig: np.ndarray, layer: Layer, tol: float) -> LayerClasses:
    """Partition one layer from its signatures ``sig = [A | b_eff]``."""
    n = sig.shape[0]
    weights_zero = ~np.any(sig[:, :-1] != 0, axis=1)
    cls = np.full(n, -1, dtype=np.int64)
    scale = np.zeros(n)
    scale[weights_zero] = layer.activate(sig[weights_zero, -1])  # constant neurons: act(b_eff)
    live = np.flatnonzero(~weights_zero)
    reps = np.zeros(0, dtype=np.int64)
    if live.size:
        cls[live], rep, scale[live] = classify_signatures(sig[live], layer.activation, tol)
        reps = live[rep]
    return LayerClasses(cls, scale, reps, np.ones(reps.size, dtype=bool))


def _signatures(net: Network, classes: list[LayerClasses], k: int, tol: float,
                raw: list | None = None) -> np.ndarray:
    """Signatures of layer k given the classes of layer k-1 (snapped), as ``[A | b_eff]``.

    If ``raw`` is a list, the unsnapped ``(A, b_eff)`` is appended to it (reused by the bound)."""
    layer = net.layers[k]
    prev = classes[k - 1] if k > 0 else None
    n_prev = prev.rep.size if prev is not None else layer.fan_in
    agg, mag = aggregate(layer.weight, prev, n_prev, tol)
    b_eff = layer.bias + constant_contribution(layer.weight, prev)
    if raw is not None:
        raw.append((agg, b_eff))
    agg = snap_cancellations(agg, mag, tol)
    return np.hstack([agg, b_eff[:, None]])


def exact_lump(net: Network, tolerance: float = DEFAULT_TOLERANCE, progress: Progress = SILENT) -> LumpResult:
    """The coarsest exact quotient of ``net`` (within ``tolerance``), constants folded, dead classes removed.

    Returns the reduced network (float32-representable weights, ready to export) and the claim.
    """
    if not net.is_dense:  # convolutional layers: channels are the units (DESIGN.md §10)
        return lump_channels(net, tolerance, progress)  # type: ignore[return-value]
    classes: list[LayerClasses] = []
    sigs: list[np.ndarray] = []
    raw: list[tuple[np.ndarray, np.ndarray]] = []
    n_hidden_layers = len(net.layers) - 1
    for k in range(len(net.layers)):
        sig = _signatures(net, classes, k, tolerance, raw)
        sigs.append(sig)
        if k < n_hidden_layers:
            classes.append(_classify_layer(sig, net.layers[k], tolerance))
            progress.tick("lumping layer", k + 1, n_hidden_layers)
    _remove_dead(classes, sigs)
    reduced = build_quotient(net, classes, sigs)
    return LumpResult(net, reduced, classes, tolerance, raw_signatures=raw)


def _remove_dead(classes: list[LayerClasses], sigs: list[np.ndarray]) -> None:
    """Mark classes whose aggregated outgoing weights to every kept neuron are zero, outputs first."""
    for k in range(len(classes) - 1, -1, -1):
        nxt = sigs[k + 1]
        if k + 1 < len(classes):
            users = classes[k + 1].rep[classes[k + 1].kept]
            used = np.any(nxt[users, :-1] != 0, axis=0) if users.size else np.zeros(nxt.shape[1] - 1, bool)
        else:
            used = np.any(nxt[:, :-1] != 0, axis=0)
        classes[k].kept = used[: classes[k].rep.size]


def build_quotient(net: Network, classes: list[LayerClasses], sigs: list[np.ndarray]) -> Network:
    """The reduced network: one neuron per kept class, weights ``fl32`` of the rep's signature."""
    layers: list[Layer] = []
    for k, layer in enumerate(net.layers):
        rows = classes[k].rep[classes[k].kept] if k < len(classes) else np.arange(layer.width)
        cols = np.flatnonzero(classes[k - 1].kept) if k > 0 else np.arange(layer.fan_in)
        w = sigs[k][np.ix_(rows, cols)]
        b = sigs[k][rows, -1]
        if k < len(classes) and rows.size == 0:  # keep one silent neuron so the layer stays valid
            w, b = np.zeros((1, cols.size)), np.zeros(1)
        if k > 0 and cols.size == 0:
            w = np.zeros((w.shape[0], 1))
        layers.append(Layer(_f32(w), _f32(b), layer.activation, layer.alpha, layer.source_op))
    return net.with_layers(layers)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)
