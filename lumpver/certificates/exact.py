"""Re-checking an exact-lumping claim from the model files alone (DESIGN.md §2, §9).

:func:`replay_quotient` rebuilds the quotient a claim describes from the original network;
:func:`discrepancy_bound` computes, for the reduced network as stored, a sound bound

    for every input x:  max_i |f_i(x) - g_i(x)|  <=  a + b * ||x||_inf

in exact real arithmetic of the stored float32 weights (DESIGN.md §2, "Floats"). The bound
propagates, layer by layer, an error ``e_u >= |h_u - c_u h^g_rep(u)|`` through the residuals
``|A_uC - c_u W^g_tC|`` of the class-aggregated signatures against the reduced weights and
through magnitude bounds of the activations; both are affine in ``R = ||x||_inf`` (kept as
``(alpha, beta)`` column pairs). float64 rounding of the check itself is covered by a
relative margin of :data:`ROUNDING_MARGIN` on every term.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lumpver.certificates.format import CheckContext, CheckReport
from lumpver.reductions.exact import LayerClasses, _signatures, build_quotient
from lumpver.ir.network import Network, activation_lipschitz

ROUNDING_MARGIN = 1e-12


def replay_quotient(net: Network, claim: dict[str, Any]) -> tuple[Network, list[LayerClasses], CheckReport]:
    """Rebuild the reduced network a quotient claim describes, from ``net`` alone."""
    report = CheckReport(True)
    tol = float(claim["tolerance"])
    classes = [LayerClasses.from_json(d) for d in claim["layers"]]
    if len(classes) != len(net.layers) - 1:
        report.fail(f"claim has {len(classes)} hidden layers, the network {len(net.layers) - 1}")
        return net, classes, report
    sigs = []
    for k, layer in enumerate(net.layers):
        if k < len(classes):
            c = classes[k]
            ok = c.cls.size == layer.width and c.scale.size == layer.width and c.kept.size == c.rep.size
            ok = ok and bool(np.all(c.cls < c.rep.size)) and bool(np.all((c.rep >= 0) & (c.rep < layer.width)))
            ok = ok and bool(np.all(c.cls[c.rep] == np.arange(c.rep.size))) if ok else False
            if not ok:
                report.fail(f"hidden layer {k}: the partition is malformed")
                return net, classes, report
        sigs.append(_signatures(net, classes, k, tol))
    report.ok(f"quotient replayed from the original ({sum(int(c.kept.sum()) for c in classes)} kept classes)")
    return build_quotient(net, classes, sigs), classes, report


def same_weights(a: Network, b: Network, report: CheckReport) -> bool:
    """Layer shapes and activations equal and weights equal to within one float32 ulp."""
    if len(a.layers) != len(b.layers):
        report.fail(f"reduced model has {len(b.layers)} layers, the replayed quotient {len(a.layers)}")
        return False
    for k, (la, lb) in enumerate(zip(a.layers, b.layers)):
        if la.weight.shape != lb.weight.shape or la.activation != lb.activation:
            report.fail(f"layer {k}: shape/activation {lb.weight.shape}/{lb.activation} differs from the "
                        f"replayed {la.weight.shape}/{la.activation}")
            return False
        for name, x, y in (("weight", la.weight, lb.weight), ("bias", la.bias, lb.bias)):
            ulp = np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)
            bad = np.abs(x - y) > ulp
            if np.any(bad):
                idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
                report.fail(f"layer {k} {name}{list(idx)} is {y[idx]!r}, the replayed quotient gives {x[idx]!r}")
                return False
    report.ok("every weight of the reduced model equals the replayed quotient (within 1 float32 ulp)")
    return True


def _expand_rows(reduced_w: np.ndarray, prev: LayerClasses | None, n_prev_cls: int) -> np.ndarray:
    """Reduced weights as columns over all previous classes (zero for dropped classes)."""
    if prev is None:
        return reduced_w
    out = np.zeros((reduced_w.shape[0], n_prev_cls))
    cols = np.flatnonzero(prev.kept)
    if cols.size:
        out[:, cols] = reduced_w[:, : cols.size]
    return out


def discrepancy_bound(original: Network, reduced: Network, classes: list[LayerClasses], tol: float,
                      raw_signatures: list | None = None) -> tuple[float, float]:
    """Sound ``(a, b)`` with ``max_i |f_i(x) - g_i(x)| <= a + b ||x||_inf`` for all x (module docstring).

    ``raw_signatures`` (per layer the unsnapped ``(A, b_eff)``) may be passed to skip recomputing
    them; the checker never passes it."""
    from lumpver.reductions.exact import aggregate, constant_contribution

    scale, shift = original.input_affine()
    m_prev = np.column_stack([np.abs(shift), np.abs(scale)])  # |x'| <= |t| + |s| R
    e_prev = np.zeros_like(m_prev)
    mq_prev = m_prev
    prev: LayerClasses | None = None
    for k, layer in enumerate(original.layers):
        cur = classes[k] if k < len(classes) else None
        n_prev_cls = prev.rep.size if prev is not None else layer.fan_in
        if raw_signatures is not None:
            agg, b_eff = raw_signatures[k]
        else:
            agg, _ = aggregate(layer.weight, prev, n_prev_cls)
            b_eff = layer.bias + constant_contribution(layer.weight, prev)
        red = reduced.layers[k]
        if cur is None:  # output layer: every neuron is its own representative
            cls, c = np.arange(layer.width), np.ones(layer.width)
            wq, bq = _expand_rows(red.weight, prev, n_prev_cls), red.bias
        else:
            cls, c = cur.cls, cur.scale
            wq = agg[cur.rep].copy()
            bq = b_eff[cur.rep].copy()
            kept = np.flatnonzero(cur.kept)
            if kept.size:
                wq[kept] = _expand_rows(red.weight[: kept.size], prev, n_prev_cls)
                bq[kept] = red.bias[: kept.size]
        absw = np.abs(layer.weight)
        both = absw @ np.hstack([e_prev, m_prev])
        prop, wm = both[:, :2], both[:, 2:]  # sum_s |w_us| e_s and sum_s |w_us| M_s
        margin = ROUNDING_MARGIN * (wm + np.abs(layer.bias)[:, None] + np.abs(agg) @ mq_prev)
        lip = activation_lipschitz(layer.activation, layer.alpha)
        live = cls >= 0
        resid = np.zeros((layer.width, n_prev_cls))
        resid[live] = np.abs(agg[live] - c[live][:, None] * wq[cls[live]])
        resid[~live] = np.abs(agg[~live])
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


def _magnitude(layer, zmag: np.ndarray) -> np.ndarray:
    """Affine bound of |act(z)| from an affine bound of |z|."""
    if layer.activation in ("sigmoid", "tanh"):
        out = np.zeros_like(zmag)
        out[:, 0] = 1.0
        return out
    return activation_lipschitz(layer.activation, layer.alpha) * zmag


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
    from lumpver.ir.onnx_import import load_onnx

    report = CheckReport(True)
    original = load_onnx(ctx.original_path)
    reduced = load_onnx(ctx.reduced_path)
    ev = next((e for e in cert["evidence"] if e.get("backend") == "lumping"), None)
    if ev is None or "claim" not in ev:
        return report.fail("no lumping evidence in the certificate")
    if not same_interface(original, reduced, report):
        return report
    replayed, classes, sub = replay_quotient(original, ev["claim"])
    report.lines.extend(sub.lines)
    if not sub.holds or not same_weights(replayed, reduced, report):
        report.holds = False
        return report
    a, b = discrepancy_bound(original, reduced, classes, float(ev["claim"]["tolerance"]))
    claimed = ev.get("discrepancy", {})
    ca, cb = float(claimed.get("a", -1)), float(claimed.get("b", -1))
    if a > ca * (1 + 1e-6) + 1e-300 or b > cb * (1 + 1e-6) + 1e-300:
        return report.fail(f"discrepancy bound recomputed as {a:.3e} + {b:.3e}*||x||_inf exceeds the claimed "
                           f"{ca:.3e} + {cb:.3e}*||x||_inf")
    report.ok(f"for all x: max_i |f_i(x) - g_i(x)| <= {a:.3e} + {b:.3e}*||x||_inf (real arithmetic, recomputed)")
    return report
