"""Checker for certificates of kind ``statistical`` (confident pruning, DESIGN.md §7, §9).

Trusts nothing the reducer computed; every step is recomputed here from the original model,
the reduced model and the calibration file named in the certificate (SHA-256 checked):

1. magnitude pruning of the hidden-layer weights at each grid level (``floor(level * N)``
   smallest ``|w|`` zeroed, ties by position; the rule the evidence's ``pruning`` states),
   and the reduced file must hold exactly the chosen level's weights;
2. per-sample losses of every level on the calibration data with the recorded evaluator
   (onnxruntime on the files / an export, or a float32 forward pass);
3. Learn-then-Test p-values of ``H: R > alpha`` (Angelopoulos et al., arXiv 2110.01052):
   binomial ``P(Binom(n, alpha) <= k)`` for 0/1 losses, Hoeffding-Bentkus
   ``min(exp(-n KL(min(Rhat, alpha) || alpha)), e P(Binom(n, alpha) <= ceil(n Rhat)))``
   otherwise, with scipy.stats.binom; the recorded multiple-testing procedure must reject the
   chosen level's null at ``delta``.

Graph networks (residual Add, Concat, MaxPool; evidence ``graph: true``): step 1 rebuilds each level
by :mod:`lumpver.certificates.statistical_graph` (the recorded channel drops are proved harmless
there, never trusted), and the reduced file must be the chosen level's graph node for node, bit for bit.

The guarantee block may not claim more than this proves: ``risk_bound >= alpha``,
``confidence <= 1 - delta``, ``epsilon >= threshold`` (deviation losses), ``loss`` and ``norm``
as the evidence's loss defines them.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from scipy.special import rel_entr
from scipy.stats import binom

from lumpver.certificates.format import CheckContext, CheckReport, check_bound, check_equal, confirm_prose
from lumpver.certificates.graph_channels import interface_problem, same_graph
from lumpver.certificates.pruned_conv import channel_pruned, layers_differ
from lumpver.certificates.statistical_graph import rebuilt_candidate
from lumpver.errors import InputError
from lumpver.fileio import sha256_file
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.network import Network
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_graph, load_onnx
from lumpver.ir.runtime import run_onnx
from lumpver.specs.calibration import load_calibration

#: the norm a loss's guarantee speaks about
LOSS_NORM = {"disagreement": "top1", "zero-one": None, "deviation": "linf", "deviation-clipped": "linf"}
PVALUE_RTOL = 1e-9


def magnitude_pruned(net: Network, level: float) -> Network:
    """``net`` with the ``floor(level * N)`` smallest-|w| hidden-layer weights zeroed (ties: position)."""
    hidden = net.layers[:-1]
    sizes = [layer.weight.size for layer in hidden]
    flat = np.concatenate([np.abs(layer.weight).ravel() for layer in hidden]) if hidden else np.zeros(0)
    n_zero = int(math.floor(round(level * flat.size, 9)))
    order = np.lexsort((np.arange(flat.size), flat))  # by |w|, then by position
    keep = np.ones(flat.size, dtype=bool)
    keep[order[:n_zero]] = False
    layers = [layer.copy() for layer in net.layers]
    for layer, mask in zip(layers, np.split(keep, np.cumsum(sizes)[:-1]) if sizes else []):
        layer.weight = np.where(mask.reshape(layer.weight.shape), layer.weight, 0.0)
    return net.with_layers(layers)


def _outputs(net: Network | GraphNetwork, path: Optional[Path], x: np.ndarray, evaluator: str) -> np.ndarray:
    if evaluator == "float32":
        return net.forward(np.asarray(x, np.float32), dtype=np.float32).astype(np.float64)
    if path is not None:
        return run_onnx(path, x)
    with tempfile.TemporaryDirectory() as d:
        (save_graph if isinstance(net, GraphNetwork) else save_onnx)(net, Path(d) / "level.onnx")
        return run_onnx(Path(d) / "level.onnx", x)


def _losses(ev: dict, dense: np.ndarray, out: np.ndarray, y: Optional[np.ndarray]) -> np.ndarray:
    loss, t = ev["loss"], ev.get("threshold")
    if loss == "disagreement":
        return (dense.argmax(1) != out.argmax(1)).astype(float)
    if loss == "zero-one":
        return (out.argmax(1) != y).astype(float)
    gap = np.abs(dense - out).max(1)
    if loss == "deviation":
        return (gap > float(t)).astype(float)
    if loss == "deviation-clipped":
        return np.minimum(1.0, gap / float(t))
    raise ValueError(f"unknown loss {loss!r}")


def ltt_pvalue(losses: np.ndarray, alpha: float, method: str) -> float:
    """p-value of ``H: E[loss] > alpha`` from one level's losses (module docstring)."""
    n, total = losses.size, math.fsum(losses.tolist())
    if method == "binomial":
        if not np.all((losses == 0) | (losses == 1)):
            raise ValueError("binomial p-values need 0/1 losses")
        return float(binom.cdf(round(total), n, alpha))
    if method != "hb":
        raise ValueError(f"unknown p-value method {method!r}")
    r = min(total / n, alpha)
    hoeffding = math.exp(-n * float(rel_entr(r, alpha) + rel_entr(1 - r, 1 - alpha)))
    bentkus = math.e * float(binom.cdf(min(n, math.ceil(total)), n, alpha))
    return min(1.0, hoeffding, bentkus)


def rejected_nulls(p: list[float], delta: float, procedure: str) -> list[int]:
    """Levels whose null is rejected at family-wise error ``delta``."""
    k = len(p)
    if procedure == "fixed-sequence":
        n_ok = next((i for i, v in enumerate(p) if not v < delta), k)
        return list(range(n_ok))
    if procedure == "bonferroni":
        return [i for i in range(k) if p[i] < delta / k]
    if procedure == "holm":
        ranked = sorted(range(k), key=lambda i: (p[i], i))
        n_ok = next((j for j, i in enumerate(ranked) if not p[i] < delta / (k - j)), k)
        return sorted(ranked[:n_ok])
    raise ValueError(f"unknown procedure {procedure!r}")


def _evidence(cert: dict, where: str) -> dict:
    for ev in cert.get("evidence", []):
        if isinstance(ev, dict) and ev.get("backend") == "learn-then-test":
            return ev
    raise InputError("statistical certificate has no learn-then-test evidence", where, "evidence")


def _same_weights(a: Network, b: Network) -> Optional[str]:
    """None if the two networks have identical layers and interface, else what differs."""
    if [(l.weight.shape, l.activation, l.alpha) for l in a.layers] != [(l.weight.shape, l.activation, l.alpha)
                                                                         for l in b.layers]:
        return "layer shapes or activations differ"
    for k, (la, lb) in enumerate(zip(a.layers, b.layers)):
        if not (np.array_equal(la.weight, lb.weight) and np.array_equal(la.bias, lb.bias)):
            return f"layer {k}: {int(np.count_nonzero(la.weight != lb.weight))} weights or the biases differ"
    return None if (a.input_name, a.output_name) == (b.input_name, b.output_name) else "input/output names differ"


def _chain_family(ev: dict, ctx: CheckContext) -> tuple[Network, Network, Callable[[int], Network], Optional[str]]:
    """Original, reduced, the rebuilt candidate of each level, and what differs at the chosen level."""
    grid, chosen = [float(v) for v in ev["grid"]], int(ev["chosen_index"])
    original, reduced = load_onnx(ctx.original_path), load_onnx(ctx.reduced_path)
    channels = dict(ev.get("pruning") or {}).get("granularity") == "channel"  # the CNN family
    prune_at = channel_pruned if channels else magnitude_pruned
    compare = layers_differ if channels or not original.is_dense else _same_weights
    return original, reduced, lambda k: prune_at(original, grid[k]), compare(prune_at(original, grid[chosen]), reduced)


def _graph_family(ev: dict, ctx: CheckContext) -> tuple[GraphNetwork, GraphNetwork, Callable[[int], GraphNetwork],
                                                        Optional[str]]:
    """:func:`_chain_family` of a graph network (module docstring)."""
    grid, chosen = [float(v) for v in ev["grid"]], int(ev["chosen_index"])
    family, structures = str(dict(ev.get("pruning") or {}).get("granularity")), ev.get("structures")
    if not isinstance(structures, list) or len(structures) != len(grid):
        raise ValueError("the evidence records no structure per grid level")
    original, reduced = load_graph(ctx.original_path), load_graph(ctx.reduced_path)

    def at(k: int) -> GraphNetwork:
        return rebuilt_candidate(original, grid[k], family, structures[k])

    return original, reduced, at, interface_problem(original, reduced) or same_graph(at(chosen), reduced)


def _recompute(ev: dict, ctx: CheckContext, cal_path: Path, rep: CheckReport) -> Optional[tuple[list, list]]:
    """(p-values, risks) of every grid level, or None (reported) if the reduced file does not fit."""
    grid, chosen = [float(v) for v in ev["grid"]], int(ev["chosen_index"])
    original, reduced, prune_at, diff = (_graph_family if ev.get("graph") else _chain_family)(ev, ctx)
    if diff is not None:
        rep.fail(f"reduced model is not the magnitude pruning of the original at level {grid[chosen]}: {diff}")
        return None
    rep.ok(f"reduced model equals the original pruned at level {grid[chosen]} (recomputed)")
    calib = load_calibration(cal_path, original.n_inputs, original.n_outputs, need_labels=ev["loss"] == "zero-one")
    if calib.n != ev.get("n"):
        rep.fail(f"calibration has {calib.n} samples, certificate says {ev.get('n')}")
    evaluator = str(ev["evaluator"])
    dense = _outputs(original, ctx.original_path, calib.x, evaluator)
    pv, risks = [], []
    for k, level in enumerate(grid):
        net, path = (reduced, ctx.reduced_path) if k == chosen else (prune_at(k), None)
        losses = _losses(ev, dense, _outputs(net, path, calib.x, evaluator), calib.y)
        pv.append(ltt_pvalue(losses, float(ev["alpha"]), str(ev["pvalue"])))
        risks.append(math.fsum(losses.tolist()) / losses.size)
    return pv, risks


def check_statistical(cert: dict, ctx: CheckContext) -> CheckReport:
    """Re-check a confident-pruning certificate from the files alone (see the module doc)."""
    rep = CheckReport(True)
    where = str(ctx.cert_path)
    ev = _evidence(cert, where)
    try:
        alpha, delta, grid, chosen = float(ev["alpha"]), float(ev["delta"]), list(ev["grid"]), ev["chosen_index"]
        cal_ref = ev["calibration"]
        cal_path = ctx.resolve(cal_ref["path"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed learn-then-test evidence: {e}", where, "evidence") from None
    if not (isinstance(chosen, int) and 0 <= chosen < len(grid)) or not (0 < alpha < 1 and 0 < delta < 1):
        return rep.fail(f"chosen_index {chosen!r}, alpha {alpha} or delta {delta} out of range")
    if not cal_path.exists():
        raise InputError(f"the calibration file named by the certificate is missing: {cal_path}", where)
    digest = sha256_file(cal_path)
    if digest != cal_ref.get("sha256"):
        return rep.fail(f"calibration file {cal_path} has SHA-256 {digest[:16]}..., certificate says "
                        f"{str(cal_ref.get('sha256'))[:16]}...")
    rep.ok(f"calibration file {cal_path.name} matches its SHA-256")
    try:
        got = _recompute(ev, ctx, cal_path, rep)
        if got is None:
            return rep
        pv, risks = got
        rejected = rejected_nulls(pv, delta, str(ev["procedure"]))
    except (KeyError, TypeError, ValueError) as e:
        return rep.fail(f"learn-then-test evidence cannot be recomputed: {e}")
    _compare(rep, ev, pv, risks, rejected)
    if chosen not in rejected:
        return rep.fail(f"the recomputed {ev['procedure']} test does not reject R > {alpha} at level {grid[chosen]} "
                        f"(p = {pv[chosen]:.3g}, delta = {delta})")
    rep.ok(f"recomputed: level {grid[chosen]} has p = {pv[chosen]:.3g} and is rejected by {ev['procedure']} at "
           f"delta = {delta} (empirical risk {risks[chosen]:.4g}, alpha {alpha})")
    _check_guarantee(rep, cert["guarantee"], ev)
    return rep


def _compare(rep: CheckReport, ev: dict, pv: list, risks: list, rejected: list) -> None:
    """The evidence's recorded statistics must be the recomputed ones."""
    rec = ev.get("pvalues")
    if not isinstance(rec, list) or len(rec) != len(pv) or not all(
            math.isclose(float(a), b, rel_tol=PVALUE_RTOL, abs_tol=1e-300) for a, b in zip(rec, pv)):
        rep.fail(f"recorded p-values {rec} differ from the recomputed {pv}")
    rec_r = ev.get("risks")
    if not isinstance(rec_r, list) or len(rec_r) != len(risks) or any(abs(float(a) - b) > 1e-12 for a, b in zip(rec_r, risks)):
        rep.fail("recorded empirical risks differ from the recomputed ones")
    if list(ev.get("rejected", [])) != rejected:
        rep.fail(f"recorded rejected set {ev.get('rejected')} differs from the recomputed {rejected}")


def _check_guarantee(rep: CheckReport, g: dict[str, Any], ev: dict) -> None:
    """Each guarantee field against what the recomputed test proves (module docstring)."""
    alpha, delta, loss = float(ev["alpha"]), float(ev["delta"]), ev["loss"]
    check_bound(rep, g, "risk_bound", alpha)
    conf = g.get("confidence")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not conf <= (1.0 - delta) * (1 + 1e-12):
        rep.fail(f"guarantee.confidence: claimed {conf!r} but the test at delta = {delta} proves only {1.0 - delta}")
    else:
        rep.confirm("confidence", f"{conf} <= 1 - delta = {1.0 - delta}")
    check_equal(rep, g, "loss", loss, "the evidence's loss")
    check_equal(rep, g, "norm", LOSS_NORM.get(loss), f"the norm of the {loss} loss")
    if loss.startswith("deviation"):
        check_bound(rep, g, "epsilon", float(ev["threshold"]))
    confirm_prose(rep, g, ("statement",))
