"""Re-checking an exact-lumping claim from the model files alone (DESIGN.md §2, §9).

The claim is a partition of every hidden layer of the original f: neuron ``u`` is
``c_u`` times the representative of its class (``h_u = c_u h_rep``), or a constant (class -1,
value ``c_u``); dropped classes feed nothing. The checker trusts none of the reducer's code:

* :func:`read_classes` / :func:`classes_fit` validate the partition, that every scale is one
  the activation admits (``act(c z) = c act(z)``, :mod:`lumpver.ir.activations`) and that the
  reduced network g has exactly one neuron per kept class;
* :func:`discrepancy_bound` computes, for g as stored, a sound bound

      for every input x:  max_i |f_i(x) - g_i(x)|  <=  a + b * ||x||_inf

  in exact real arithmetic of the stored float32 weights (DESIGN.md §2, "Floats"). It propagates,
  layer by layer, an error ``e_u >= |h_u - c_u h^g_rep(u)|`` through the residuals
  ``|A_uC - c_u W^g_tC|`` of the class-aggregated weights ``A_uC = sum_{s in C} w_us c_s``
  (computed here) against g's weights, and magnitude bounds of the activations; both are
  affine in ``R = ||x||_inf`` (``(alpha, beta)`` column pairs). A dropped class is tracked as
  the virtual neuron computed from its representative's aggregated row. float64 rounding of the
  check itself is covered by a relative margin of :data:`ROUNDING_MARGIN` on every term.

The guarantee's ``float_tolerance.discrepancy_bound.a/.b`` must be at least the recomputed
``a, b``; ``grouping_tolerance`` must be the tolerance the evidence's partition was made with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy import sparse

from lumpver.certificates.exact_conv import channel_classes_fit, channel_discrepancy_bound, read_channel_classes
from lumpver.certificates.exact_graph import GRAPH_UNIT, check_exact_graph
from lumpver.certificates.partition import partition_problem
from lumpver.certificates.format import CheckContext, CheckReport, confirm_discrepancy
from lumpver.ir.network import Layer, Network, activation_lipschitz
from lumpver.ir.onnx_import import load_onnx

ROUNDING_MARGIN = 1e-12


@dataclass
class Partition:
    """One hidden layer's claimed partition (see the module docstring)."""

    cls: np.ndarray  # class of each neuron, -1 = constant
    scale: np.ndarray  # c_u, or the constant's value
    rep: np.ndarray  # representative neuron of each class
    kept: np.ndarray  # whether the class survives in g


def read_classes(claim: dict[str, Any]) -> list[Partition]:
    """The partitions of a quotient claim (KeyError/ValueError/TypeError if malformed)."""
    return [Partition(np.asarray(d["class_of"], dtype=np.int64).reshape(-1),
                      np.asarray(d["scale"], dtype=np.float64).reshape(-1),
                      np.asarray(d["representative"], dtype=np.int64).reshape(-1),
                      np.asarray(d["kept"], dtype=bool).reshape(-1)) for d in claim["layers"]]


def same_activation(a: Layer, b: Layer) -> bool:
    """Same activation function (name and, where it matters, the LeakyReLU slope)."""
    return a.activation == b.activation and (a.activation != "leaky_relu" or a.alpha == b.alpha)


def _width(p: Partition) -> int:
    """g's width for a layer: one neuron per kept class (one silent neuron if none is kept)."""
    return max(1, int(p.kept.sum()))


def classes_fit(f: Network, g: Network, classes: list[Partition], report: CheckReport) -> bool:
    """The partitions are well formed and g has one neuron per kept class (reported if not)."""
    if len(classes) != len(f.layers) - 1 or len(g.layers) != len(f.layers):
        return not report.fail(f"claim has {len(classes)} hidden layers, the networks {len(f.layers) - 1} "
                               f"and {len(g.layers) - 1}")
    for k, (lf, lg) in enumerate(zip(f.layers, g.layers)):
        problem = partition_problem(lf.width, lf.activation, classes[k]) if k < len(classes) else None
        rows = _width(classes[k]) if k < len(classes) else lf.width
        cols = _width(classes[k - 1]) if k > 0 else lf.fan_in
        if problem is None and (lg.weight.shape != (rows, cols) or not same_activation(lf, lg)):
            problem = f"reduced layer is {lg.weight.shape} {lg.activation}, the claim needs {(rows, cols)} {lf.activation}"
        if problem is None and k > 0 and not classes[k - 1].kept.any() and np.any(lg.weight != 0):
            problem = "the silent neuron of an emptied layer feeds the next layer"
        if problem is not None:
            return not report.fail(f"layer {k}: {problem}")
    return True


def aggregated(weight: np.ndarray, prev: Optional[Partition]) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b_const)``: ``A[u, C] = sum_{s in C} w_us c_s`` and ``sum_{s constant} w_us c_s``."""
    if prev is None:
        return weight, np.zeros(weight.shape[0])
    live = prev.cls >= 0
    member_of = sparse.csc_matrix((prev.scale[live], (np.flatnonzero(live), prev.cls[live])),
                                  shape=(weight.shape[1], prev.rep.size))
    a = np.asarray(member_of.T.dot(weight.T)).T
    return a, weight[:, ~live] @ prev.scale[~live]


def _over_classes(g_weight: np.ndarray, prev: Optional[Partition]) -> np.ndarray:
    """g's weights as columns over all previous classes (zero for dropped classes)."""
    if prev is None:
        return g_weight
    out = np.zeros((g_weight.shape[0], prev.rep.size))
    cols = np.flatnonzero(prev.kept)
    out[:, cols] = g_weight[:, : cols.size]
    return out


def discrepancy_bound(original: Network, reduced: Network, classes: list, tol: float = 0.0,
                      raw_signatures: list | None = None) -> tuple[float, float]:
    """Sound ``(a, b)`` with ``max_i |f_i(x) - g_i(x)| <= a + b ||x||_inf`` for all x (module docstring).

    ``classes`` are per hidden layer objects with ``cls, scale, rep, kept`` (validated by
    :func:`classes_fit`); ``raw_signatures`` (per layer ``(A, A-folded bias)``) may be passed by
    the reducer to skip recomputing them, the checker never passes it. ``tol`` is unused (kept
    for the reducers' call sites). A network with convolutions: channel classes, see
    :func:`lumpver.certificates.exact_conv.channel_discrepancy_bound`."""
    if not original.is_dense:
        return channel_discrepancy_bound(original, reduced, classes, raw_signatures)
    scale, shift = original.input_affine()
    m_prev = np.column_stack([np.abs(shift), np.abs(scale)])  # |x'| <= |t| + |s| R
    e_prev = np.zeros_like(m_prev)
    mq_prev = m_prev
    prev = None
    for k, layer in enumerate(original.layers):
        cur = classes[k] if k < len(classes) else None
        if raw_signatures is not None:
            agg, b_eff = raw_signatures[k]
        else:
            agg, b_const = aggregated(layer.weight, prev)
            b_eff = layer.bias + b_const
        red = reduced.layers[k]
        if cur is None:  # output layer: every neuron is its own representative
            cls, c = np.arange(layer.width), np.ones(layer.width)
            wq, bq = _over_classes(red.weight, prev), red.bias
        else:
            cls, c = cur.cls, cur.scale
            wq, bq = agg[cur.rep].copy(), b_eff[cur.rep].copy()
            kept = np.flatnonzero(cur.kept)
            wq[kept] = _over_classes(red.weight[: kept.size], prev)
            bq[kept] = red.bias[: kept.size]
        absw = np.abs(layer.weight)
        both = absw @ np.hstack([e_prev, m_prev])
        prop, wm = both[:, :2], both[:, 2:]  # sum_s |w_us| e_s and sum_s |w_us| M_s
        margin = ROUNDING_MARGIN * (wm + np.abs(layer.bias)[:, None] + np.abs(agg) @ mq_prev)
        lip = activation_lipschitz(layer.activation, layer.alpha)
        live = cls >= 0
        resid = np.abs(agg)
        resid[live] = np.abs(agg[live] - c[live][:, None] * wq[cls[live]])
        bias_gap = np.zeros(layer.width)
        bias_gap[live] = np.abs(b_eff[live] - c[live] * bq[cls[live]])
        r = resid @ mq_prev + prop + margin
        r[:, 0] += bias_gap
        e = lip * r * (1 + 1e-9)
        if cur is not None and np.any(~live):
            e[~live, 0] += np.abs(layer.activate(b_eff[~live]) - c[~live]) * (1 + 1e-9)
        m = _magnitude(layer, wm + np.column_stack([np.abs(layer.bias), np.zeros(layer.width)]))
        if cur is None:
            return float(np.max(e[:, 0])), float(np.max(e[:, 1]))
        mq_prev = m[cur.rep] + e[cur.rep]
        m_prev, e_prev, prev = m, e, cur
    raise AssertionError("unreachable")


def _magnitude(layer: Layer, zmag: np.ndarray) -> np.ndarray:
    """Affine bound of |act(z)| from an affine bound of |z|."""
    if layer.activation in ("sigmoid", "tanh"):
        out = np.zeros_like(zmag)
        out[:, 0] = 1.0
        return out
    return activation_lipschitz(layer.activation, layer.alpha) * zmag


def stored_layer(like: Layer, w: np.ndarray, b: np.ndarray) -> Layer:
    """A layer with ``like``'s activation and ``(w, b)`` rounded to float32, as a reduced file stores
    it: an emptied layer keeps one silent neuron, a layer without inputs one zero column."""
    if w.shape[0] == 0:
        w, b = np.zeros((1, w.shape[1])), np.zeros(1)
    if w.shape[1] == 0:
        w = np.zeros((w.shape[0], 1))
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
    return Layer(f32(w), f32(b), like.activation, like.alpha, like.source_op)


def quotient_network(f: Network, classes: list[Partition]) -> Network:
    """A network with one neuron per kept class: the representative's aggregated row (float32).

    Used for intermediate steps of a chain, where no file holds the reduced network; any network
    of these shapes is fine, :func:`discrepancy_bound` is then computed against it."""
    layers, prev = [], None
    for k, layer in enumerate(f.layers):
        cur = classes[k] if k < len(classes) else None
        agg, b_const = aggregated(layer.weight, prev)
        rows = cur.rep[cur.kept] if cur is not None else np.arange(layer.width)
        w = agg[rows][:, prev.kept] if prev is not None else agg[rows]
        layers.append(stored_layer(layer, w, (layer.bias + b_const)[rows]))
        prev = cur
    return f.with_layers(layers)


def same_interface(a: Network, b: Network, report: CheckReport) -> bool:
    """Same input/output names, shapes and input normalisation ops."""
    ok = (a.input_name, a.output_name, list(a.input_shape), list(a.output_shape)) == (
        b.input_name, b.output_name, list(b.input_shape), list(b.output_shape))
    ok = ok and len(a.input_ops) == len(b.input_ops) and all(
        x.op == y.op and np.array_equal(x.constant, y.constant) for x, y in zip(a.input_ops, b.input_ops))
    if not ok:
        report.fail("the reduced model's inputs, outputs or input normalisation differ from the original's")
    else:
        report.ok("same input/output names, shapes and input normalisation")
    return ok


def check_exact(cert: dict[str, Any], ctx: CheckContext) -> CheckReport:
    """Checker for certificates of kind ``exact`` (registered in :mod:`lumpver.certificates.format`)."""
    ev = next((e for e in cert["evidence"] if isinstance(e, dict) and e.get("backend") == "lumping"), None)
    if isinstance(ev, dict) and isinstance(ev.get("claim"), dict) and ev["claim"].get("unit") == GRAPH_UNIT:
        return check_exact_graph(cert, ctx)
    report = CheckReport(True)
    original, reduced = load_onnx(ctx.original_path), load_onnx(ctx.reduced_path)
    dense = original.is_dense
    try:
        read = read_classes if dense else read_channel_classes
        classes, tol = read(ev["claim"]), float(ev["claim"]["tolerance"])
    except (KeyError, ValueError, TypeError) as e:
        return report.fail(f"no well-formed lumping evidence in the certificate: {e!r}")
    fit = classes_fit if dense else channel_classes_fit
    if not same_interface(original, reduced, report) or not fit(original, reduced, classes, report):
        report.holds = False
        return report
    report.ok(f"partition valid: {sum(int(c.kept.sum()) for c in classes)} kept classes, scales admitted "
              "by the activations, one reduced neuron per kept class")
    a, b = discrepancy_bound(original, reduced, classes)
    return confirm_discrepancy(report, cert["guarantee"], a, b, tol)
