"""Re-check of ``interval`` evidence in ``bounded`` certificates (DESIGN.md §4, §5, §9).

The certified quantity is ``sup_{x in X} ||f(x) - g(x)||`` in real arithmetic of the stored
float32 weights, a sum of terms recomputed here from the two files, X and the evidence's
``chain`` (nothing of the reducer is used):

* ``onset``: recorded on-set / exact-lumping steps ``f -> h``, replayed by
  :func:`lumpver.certificates.onset.replay_steps` (their bound, per output, is a term; without
  steps ``h = f``);
* ``twin``: a network ``g^`` with h's widths that equals g (``kept``: g's rows at the kept
  neurons, every other neuron feeds nothing; ``classes``: g's rows spread over the members of
  each previous class, bounded against g by :func:`lumpver.certificates.exact.discrepancy_bound`);
* ``interval``: the differential branch and bound of the interval back-end
  (:func:`lumpver.verifiers.interval.certified_difference_bound`, a back-end, not the reducer),
  re-run on ``h`` vs ``g^`` with the recorded box cap per region.

Per-output terms enter an L1/L2 bound times ``n`` / ``sqrt(n)``. The float32 evaluation error of
both models (:func:`lumpver.bounds.float_error.float32_error`) is recomputed for the guarantee's
``float_tolerance.float32_rounding_bound``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from lumpver.bounds.engine import region_box
from lumpver.bounds.diff_align import snap_for_exact_difference
from lumpver.bounds.float_error import float32_errors
from lumpver.bounds.rounding import norm_hi
from lumpver.certificates.exact import classes_fit, discrepancy_bound, read_classes, same_activation, same_interface
from lumpver.certificates.format import CheckContext, CheckReport
from lumpver.certificates.onset import replay_steps
from lumpver.certificates.pruned_conv import channel_twin
from lumpver.errors import InputError
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_import import load_onnx
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.interval import certified_difference_bound

_MALFORMED = (KeyError, ValueError, TypeError, IndexError, AttributeError)


def norm_of(per_output: np.ndarray, norm: str) -> float:
    """Upper bound of ``||v||`` for ``|v_i| <= per_output_i`` (rounded up)."""
    return float(norm_hi(np.abs(np.asarray(per_output, dtype=np.float64)), norm)) * (1 + 1e-12)


def float32_term(f: Network | GraphNetwork, g: Network | GraphNetwork, input_set: InputSet, norm: str) -> float:
    """Bound of the float32 evaluation error of f and g together (chains or graphs), in ``norm``, over X."""
    return norm_of(float32_errors(f, input_set) + float32_errors(g, input_set), norm)


def pruned_twin(h: Network, g: Network, kept: list[np.ndarray], dropped: list) -> Network:
    """``g^`` for pruning: g's rows at the kept neurons; a dropped neuron keeps h's row over the kept
    inputs (or its recorded row) and feeds nothing, so ``g^ = g`` in real arithmetic."""
    layers = []
    for k, (lh, lg) in enumerate(zip(h.layers, g.layers)):
        rows = kept[k] if k < len(kept) else np.arange(lh.width)
        cols = kept[k - 1] if k > 0 else np.arange(lh.fan_in)
        w, b = np.zeros_like(lh.weight), lh.bias.copy()
        w[:, cols] = lh.weight[:, cols]
        rec = dropped[k] if k < len(dropped) else None
        if rec is not None:
            idx = np.asarray(rec["index"], dtype=np.int64).reshape(-1)
            if not np.all(np.isin(idx, np.setdiff1d(np.arange(lh.width), rows))):
                raise ValueError(f"layer {k}: dropped_rows name a kept neuron")
            w[idx] = 0.0
            w[np.ix_(idx, cols)] = np.asarray(rec["weight"], dtype=np.float64).reshape(idx.size, cols.size)
            b[idx] = np.asarray(rec["bias"], dtype=np.float64).reshape(idx.size)
        w[rows] = 0.0
        w[np.ix_(rows, cols)] = lg.weight
        b[rows] = lg.bias
        layers.append(Layer(w, b, lh.activation, lh.alpha, lh.source_op))
    return h.with_layers(layers)


def lumped_twin(h: Network, g: Network, classes: list) -> Network:
    """``g^`` for approximate lumping: row u is ``c_u`` times g's row of its class, spread over the
    previous classes by putting on each representative what the other members lack."""
    layers = []
    for k, lh in enumerate(h.layers):
        cur, prev = (classes[k] if k < len(classes) else None), (classes[k - 1] if k > 0 else None)
        cls = cur.cls if cur is not None else np.arange(lh.width)
        c = cur.scale if cur is not None else np.ones(lh.width)
        target = c[:, None] * g.layers[k].weight[cls]
        w = target if prev is None else lh.weight.copy()
        for C, r in enumerate(prev.rep if prev is not None else []):
            others = np.setdiff1d(np.flatnonzero(prev.cls == C), [r])
            w[:, r] = (target[:, C] - w[:, others] @ prev.scale[others]) / prev.scale[r]
        layers.append(Layer(w, c * g.layers[k].bias[cls], lh.activation, lh.alpha, lh.source_op))
    return h.with_layers(layers)


def _twin(h: Network, g: Network, chain: dict[str, Any], input_set: InputSet, report: CheckReport
          ) -> Optional[tuple[Network, float]]:
    """``(g^, bound of max_i |g^_i - g_i| on X)`` or None (reported)."""
    if len(g.layers) != len(h.layers) or not all(map(same_activation, h.layers, g.layers)):
        report.fail("interval evidence: g has other depth or activations than the network it is compared with")
        return None
    if "kept" in chain and not (h.is_dense and g.is_dense):  # kept channels of a CNN
        try:
            return channel_twin(h, g, list(chain["kept"])), 0.0
        except InputError as e:
            report.fail(f"interval evidence: g is not h with the named channels removed: {e}")
            return None
    if "kept" in chain:
        kept = [np.asarray(k, dtype=np.int64).reshape(-1) for k in chain["kept"]]
        if len(kept) != len(h.layers) - 1 or any(
                k.size != g.layers[i].width or np.unique(k).size != k.size or k.min(initial=0) < 0
                or k.max(initial=0) >= h.layers[i].width for i, k in enumerate(kept)):
            report.fail("interval evidence: kept neurons do not fit the networks")
            return None
        return pruned_twin(h, g, kept, list(chain.get("dropped_rows", []))), 0.0
    if "classes" in chain:
        classes = read_classes({"layers": chain["classes"]})
        if not classes_fit(h, g, classes, report) or any(
                not c.kept.all() or np.any(c.cls < 0) or np.any(c.scale <= 0) for c in classes):
            report.fail("interval evidence: the partition does not fit (every class kept, positive scales)")
            return None
        twin = snap_for_exact_difference(h, lumped_twin(h, g, classes))
        a, b = discrepancy_bound(twin, g, classes)
        xmax = max(float(np.max(np.abs(np.concatenate([bx.lower, bx.upper])))) for bx in map(region_box, input_set.regions))
        return twin, float(a + b * xmax) * (1 + 1e-12)
    if [(l.op.in_features, l.op.out_features) for l in h.layers] != [(l.op.in_features, l.op.out_features)
                                                                       for l in g.layers]:
        report.fail("interval evidence: g has other layer shapes than the network it is compared with")
        return None
    return g, 0.0


def _caps(ev: dict, n_regions: int) -> list[int]:
    """Box cap per region: recorded, or the plain back-end's ``boxes_processed + 1``."""
    caps = [int(c) for c in ev["max_boxes"]] if "max_boxes" in ev else [int(ev["boxes_processed"]) + 1] * n_regions
    if len(caps) != n_regions or min(caps) < 1:
        raise ValueError("one positive box cap per region expected")
    return caps


def _differential(h: Network, twin: Network, input_set: InputSet, norm: str, threshold: float, caps) -> float:
    return max(certified_difference_bound(h, twin, InputSet([r]), norm, 3600.0, cap, threshold)[0]
               for r, cap in zip(input_set.regions, caps))


def recheck_interval(f: Network, g: Network, input_set: InputSet, norm: str, ev: dict,
                     report: CheckReport) -> Optional[float]:
    """The recomputed bound of one interval evidence entry, or None (reported) when it is malformed
    or does not re-check (registered in :mod:`lumpver.certificates.bounded`)."""
    try:
        caps = _caps(ev, len(input_set.regions))
    except _MALFORMED as e:
        report.fail(f"malformed interval evidence: {e!r}")
        return None

    def differential(h: Network, twin: Network, top1: bool) -> float:
        return _differential(h, twin, input_set, "top1" if top1 else norm, 0.0 if top1 else float(ev.get("threshold", 0.0)),
                             caps)

    return recheck_chain(f, g, input_set, norm, ev, report, differential, "interval")


#: ``(h, g^, top1) -> recomputed differential bound`` (raises on malformed evidence)
Differential = Callable[[Network, Network, bool], float]


def recheck_chain(f: Network, g: Network, input_set: InputSet, norm: str, ev: dict, report: CheckReport,
                  differential: Differential, what: str, twin_required: bool = True) -> Optional[float]:
    """The bound of one evidence entry: the recorded chain (on-set steps ``f -> h``, the twin ``g^``)
    replayed here, plus ``differential(h, g^)`` from the entry's back-end, or None (reported).
    Without a chain and ``twin_required`` false, ``g^ = g`` whatever its shape."""
    try:
        if input_set.dim != f.n_inputs or not same_interface(f, g, report):
            report.fail(f"{what} evidence: input set of dimension {input_set.dim} or interfaces do not fit")
            return None
        chain = dict(ev.get("chain", {}))
        if norm == "top1":
            u = differential(f, g, True)
            report.ok(f"top-1 agreement re-verified on every leaf box: bound {u:g}")
            return u
        h, onset = f, 0.0
        if chain.get("onset_steps") is not None:
            h, onset = replay_steps(f, input_set, list(chain["onset_steps"]), None, report)
            if h is None:
                return None
        plain = not twin_required and not any(k in chain for k in ("kept", "classes"))
        twin = (g, 0.0) if plain else _twin(h, g, chain, input_set, report)
        if twin is None:
            return None
        u = differential(h, twin[0], False)
    except _MALFORMED as e:
        report.fail(f"malformed {what} evidence: {e!r}")
        return None
    ones = np.ones(f.n_outputs)
    total = norm_of(onset * ones, norm) + norm_of(twin[1] * ones, norm) + u
    report.ok(f"recomputed: on-set {onset:.3e} + twin {twin[1]:.3e} + differential {u:.4g} = {total:.6g} ({norm}, "
              "real arithmetic)")
    return total


def check_interval_evidence(cert: dict, ctx: CheckContext, ev: dict,
                            recheck: Callable[..., Optional[float]] = recheck_interval) -> CheckReport:
    """Verify one ``{"backend": "interval", ...}`` entry of a ``bounded`` certificate on its own (or,
    with ``recheck``, an entry of another back-end): its recomputed bound must not exceed the
    guarantee's epsilon."""
    report = CheckReport(True)
    try:
        g = cert["guarantee"]
        input_set, norm, eps = InputSet.from_json(g["input_set"]), str(g["norm"]), float(g["epsilon"])
    except _MALFORMED as e:
        return report.fail(f"malformed bounded guarantee: {e!r}")
    total = recheck(load_onnx(ctx.original_path), load_onnx(ctx.reduced_path), input_set, norm, ev, report)
    if total is None:
        report.holds = False
    elif not total <= eps * (1 + 1e-9):
        report.fail(f"guarantee.epsilon: claimed {eps:.6g} but the evidence proves only {total:.6g}")
    return report
