"""Re-checking an ``exact-on-set`` certificate from the model files alone (DESIGN.md §3, §9).

The evidence is an ordered list of steps, replayed from the original network with this
package's own code (nothing of the reducer):

* ``on-set``: bounds are recomputed (:func:`lumpver.bounds.split.replay_set_bounds` on the leaves
  of the recorded split trees of the certificate's input set X, never the recorded bounds); every
  claim must hold on them: a removed neuron is a ReLU with ``u <= 0`` (``h = 0``), basis and
  folded neurons are linear on their whole range (``h = s z``). A folded neuron ``f`` stands for
  ``C_f h_B``. With the embedding ``E`` (rows: kept neuron -> unit vector, folded -> its
  coefficients, removed -> 0) the original's previous layer is ``h = E h_kept + r``, where
  ``r`` is non-zero only on folded neurons. :func:`fold_discrepancy` bounds, in real arithmetic
  of the stored weights and layer by layer,

      |z_f - z_g| <= |W E - W_g| M + |W_g| d + |b - b_g| + |W| e   (kept rows),
      |r_f| <= |V E| M + |V| e + |v|,  V = s_f W_f - C_f diag(s_B) W_B,  v = s_f b_f - C_f (s_B b_B),

  with ``M`` the recomputed magnitudes of the kept values of f, ``d`` the previous
  ``|h_f - h_g|`` on kept neurons and ``e`` the previous ``|r|``; float64 rounding is covered by
  ``3 gamma_n`` times the same sums on absolute values (:func:`_gamma`);
* ``exact-lumping``: :mod:`lumpver.certificates.exact` (partition checks and its discrepancy bound,
  ``a + b max ||x||_inf`` over X).

The last step is compared with the reduced file itself (its weights are used as they are);
intermediate networks are rebuilt here. The guarantee's ``epsilon`` and
``float_tolerance.discrepancy_bound`` must be at least the sum of the recomputed step bounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from lumpver.bounds.engine import NetworkBounds
from lumpver.bounds.region import region_box
from lumpver.bounds.split import replay_set_bounds
from lumpver.certificates.exact import (classes_fit, discrepancy_bound, quotient_network, read_classes, same_activation,
                                        same_interface, stored_layer)
from lumpver.certificates.onset_conv import STEP, replay_channel_step
from lumpver.certificates.onset_graph import STEP as GRAPH_STEP, check_onset_graph, confirm_on_set_bound
from lumpver.certificates.format import CheckContext, CheckReport
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_import import load_onnx
from lumpver.specs.inputset import InputSet

_MALFORMED = (KeyError, ValueError, TypeError, IndexError)
_U = 2.0**-53


@dataclass
class Claim:
    """One hidden layer's claims: removed, basis and folded neurons (``h_F = C h_B``)."""

    removed: np.ndarray
    basis: np.ndarray
    folded: np.ndarray
    coeffs: np.ndarray

    @staticmethod
    def read(d: dict[str, Any]) -> "Claim":
        ints = [np.asarray(d[key], dtype=np.int64).reshape(-1) for key in ("stably_inactive", "basis", "folded")]
        return Claim(*ints, np.asarray(d["coefficients"], dtype=np.float64).reshape(ints[2].size, ints[1].size))

    def kept(self, width: int) -> np.ndarray:
        return np.setdiff1d(np.arange(width), np.concatenate([self.removed, self.folded]))

    def embedding(self, width: int) -> np.ndarray:
        """``E`` with ``h = E h_kept`` on X up to the folded residuals (module docstring)."""
        kept = self.kept(width)
        e = np.zeros((width, kept.size))
        e[kept, np.arange(kept.size)] = 1.0
        e[np.ix_(self.folded, np.searchsorted(kept, self.basis))] = self.coeffs
        return e


def _gamma(n: int) -> float:
    """Higham's ``gamma_n``: relative error bound of an n-term float64 dot product."""
    return n * _U / (1 - n * _U)


def _slopes(layer: Layer, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``s`` with ``act(z) = s z`` on ``[lo, hi]``; NaN where the activation is not linear there."""
    if layer.activation == "identity":
        return np.ones(lo.size)
    if layer.activation not in ("relu", "leaky_relu"):
        return np.full(lo.size, np.nan)
    neg = 0.0 if layer.activation == "relu" else float(layer.alpha)
    return np.where(lo >= 0, 1.0, np.where(hi <= 0, neg, np.nan))


def _claims_problem(net: Network, claims: list[Claim], nb: NetworkBounds) -> Optional[str]:
    """Why the claims are malformed or not confirmed by the recomputed bounds (None if they hold)."""
    if len(claims) != len(net.layers) - 1:
        return f"{len(claims)} claimed layers, the network has {len(net.layers) - 1} hidden layers"
    for k, (c, layer) in enumerate(zip(claims, net.layers)):
        ids = np.concatenate([c.removed, c.basis, c.folded])
        if ids.size != np.unique(ids).size or np.any(ids < 0) or np.any(ids >= layer.width) \
                or not np.all(np.isfinite(c.coeffs)):
            return f"layer {k}: neuron indices repeat or leave the layer, or coefficients are not finite"
        s = _slopes(layer, nb.pre_lower[k], nb.pre_upper[k])
        bad = [j for j in c.removed if s[j] != 0] + [j for j in np.concatenate([c.basis, c.folded])
               if not (np.isfinite(s[j]) and s[j] != 0)]  # NaN slope: unstable, never linear
        if bad:
            j = bad[0]
            return (f"layer {k} neuron {j}: claimed {'stably inactive' if j in c.removed else 'linear'}, "
                    f"recomputed bounds [{nb.pre_lower[k][j]:.6g}, {nb.pre_upper[k][j]:.6g}]")
    return None


def folded_network(net: Network, claims: list[Claim]) -> Network:
    """The network the claims describe, ``W_kept E_prev`` rounded to float32 (intermediate steps)."""
    layers, emb = [], np.eye(net.n_inputs)
    for k, layer in enumerate(net.layers):
        rows = claims[k].kept(layer.width) if k < len(claims) else np.arange(layer.width)
        layers.append(stored_layer(layer, layer.weight[rows] @ emb, layer.bias[rows]))
        emb = claims[k].embedding(layer.width) if k < len(claims) else emb
    return net.with_layers(layers)


def _g_block(f: Layer, g: Layer, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """g's weights over the kept neurons; an emptied layer's silent neuron must feed nothing."""
    rows, cols = max(n_rows, 1), max(n_cols, 1)
    if not same_activation(f, g):
        raise ValueError(f"reduced layer has activation {g.activation}, the original {f.activation}")
    if g.weight.shape != (rows, cols):
        raise ValueError(f"reduced layer has shape {g.weight.shape}, the claims give {(rows, cols)}")
    if n_cols == 0 and np.any(g.weight != 0):
        raise ValueError("reduced layer uses the silent neuron of an emptied layer")
    return g.weight[:n_rows, :n_cols], g.bias[:n_rows]


def fold_discrepancy(net: Network, claims: list[Claim], nb: NetworkBounds, g: Network) -> np.ndarray:
    """Per output, a sound bound of ``|f(x) - g(x)|`` over X (module docstring; claims confirmed)."""
    absmax = lambda lo, hi: np.maximum(np.abs(lo), np.abs(hi))  # noqa: E731
    emb = np.eye(net.n_inputs)
    m = absmax(nb.input_lower, nb.input_upper)  # |h_kept| of f
    d, e = np.zeros(net.n_inputs), np.zeros(net.n_inputs)  # |h_f - h_g| (kept), |r| (all)
    for k, layer in enumerate(net.layers):
        c = claims[k] if k < len(claims) else None
        rows = c.kept(layer.width) if c is not None else np.arange(layer.width)
        w, absw, gam = layer.weight, np.abs(layer.weight), _gamma(layer.fan_in + emb.shape[1] + 4)
        gw, gb = _g_block(layer, g.layers[k], rows.size, emb.shape[1])
        we_mag = absw[rows] @ np.abs(emb)
        dz = (np.abs(w[rows] @ emb - gw) @ m + np.abs(gw) @ d + np.abs(layer.bias[rows] - gb) + absw[rows] @ e)
        dz += 3 * gam * ((we_mag + np.abs(gw)) @ m + np.abs(gw) @ d + np.abs(layer.bias[rows]) + np.abs(gb)
                         + absw[rows] @ e)
        d_next = layer.lipschitz() * dz * (1 + 4 * _U)
        if c is None:
            return d_next
        e = _residuals(layer, c, nb.pre_lower[k], nb.pre_upper[k], emb, m, e, gam)
        emb, m, d = c.embedding(layer.width), absmax(nb.post_lower[k], nb.post_upper[k])[rows], d_next
    raise AssertionError("unreachable")


def _residuals(layer: Layer, c: Claim, lo, hi, emb, m, e_prev, gam) -> np.ndarray:
    """``|r_f| = |h_f - C_f h_B|`` bounds for this layer's folded neurons (zero elsewhere)."""
    out = np.zeros(layer.width)
    if c.folded.size == 0:
        return out
    s = _slopes(layer, lo, hi)
    w, b, sb = layer.weight, layer.bias, s[c.basis]
    v = s[c.folded, None] * w[c.folded] - c.coeffs @ (sb[:, None] * w[c.basis])
    vb = s[c.folded] * b[c.folded] - c.coeffs @ (sb * b[c.basis])
    v_mag = np.abs(s[c.folded, None] * w[c.folded]) + np.abs(c.coeffs) @ np.abs(sb[:, None] * w[c.basis])
    vb_mag = np.abs(s[c.folded] * b[c.folded]) + np.abs(c.coeffs) @ np.abs(sb * b[c.basis])
    gam2 = _gamma(c.basis.size + 2) + gam
    r = np.abs(v @ emb) @ m + np.abs(v) @ e_prev + np.abs(vb)
    r += 3 * gam2 * ((v_mag @ np.abs(emb)) @ m + v_mag @ e_prev + vb_mag)
    out[c.folded] = r * (1 + 4 * _U)
    return out


def replay_onset_step(net: Network, input_set: InputSet, step: dict[str, Any], target: Optional[Network],
                      report: CheckReport) -> tuple[Optional[Network], float]:
    """Replay one on-set step on ``net``: (the step's reduced network or None on failure, its bound)."""
    method, lp = str(step["method"]), bool(step["lp"])
    try:
        sb = replay_set_bounds(net, input_set, step["split_trees"], method, lp)
        claims = [Claim.read(d) for d in step["layers"]]
        if [int(d["layer"]) for d in step["layers"]] != list(range(len(claims))):
            raise ValueError("claims are not listed layer by layer from the first hidden layer")
    except ValueError as e:
        report.fail(f"on-set step: {e}")
        return None, 0.0
    problem = _claims_problem(net, claims, sb.bounds)
    if problem is not None:
        report.fail(f"on-set step: {problem}")
        return None, 0.0
    n_claims = sum(c.removed.size + c.basis.size + c.folded.size for c in claims)
    report.ok(f"on-set step: {n_claims} stability claims confirmed by recomputed {method}{'+lp' if lp else ''} "
              f"bounds over {sb.n_leaves} leaf region(s)")
    g = target if target is not None else folded_network(net, claims)
    try:
        disc = float(np.max(fold_discrepancy(net, claims, sb.bounds, g)))
    except ValueError as e:
        report.fail(f"on-set step: {e}")
        return None, 0.0
    report.ok(f"on-set step: discrepancy on X <= {disc:.3e} (recomputed)")
    return g, disc


def replay_lumping_step(net: Network, input_set: InputSet, step: dict[str, Any], target: Optional[Network],
                        report: CheckReport) -> tuple[Optional[Network], float]:
    """Replay one exact-lumping step on ``net``: (its reduced network or None, bound on X)."""
    classes = read_classes(step["claim"])
    g = target if target is not None else quotient_network(net, classes)
    if not classes_fit(net, g, classes, report):
        return None, 0.0
    a, b = discrepancy_bound(net, g, classes)
    xmax = max(float(np.max(np.abs(np.concatenate([bx.lower, bx.upper])))) for bx in map(region_box, input_set.regions))
    report.ok(f"exact-lumping step: partition valid, discrepancy on X <= {a:.3e} + {b:.3e} * {xmax:.6g} (recomputed)")
    return g, float(a + b * xmax) * (1 + 4 * _U)


STEPS = {"on-set": replay_onset_step, "exact-lumping": replay_lumping_step, STEP: replay_channel_step}


def replay_steps(f: Network, input_set: InputSet, steps: list, last: Optional[Network],
                 report: CheckReport) -> tuple[Optional[Network], float]:
    """Replay a chain of steps from ``f`` (the last one against ``last`` if given): (network, summed bound)."""
    cur, total = f, 0.0
    for i, step in enumerate(steps):
        replay = STEPS.get(step.get("step")) if isinstance(step, dict) else None
        if replay is None:
            report.fail(f"step {i}: unknown step {step.get('step') if isinstance(step, dict) else step!r}")
            return None, 0.0
        try:
            cur, d = replay(cur, input_set, step, last if i == len(steps) - 1 else None, report)
        except _MALFORMED as e:
            report.fail(f"step {i} ({step.get('step')}): malformed: {e!r}")
            return None, 0.0
        if cur is None:
            return None, 0.0
        total += d
    return cur, total


def check_exact_on_set(cert: dict, ctx: CheckContext) -> CheckReport:
    """Re-verify an ``exact-on-set`` certificate (module docstring)."""
    report = CheckReport(True)
    g = cert["guarantee"]
    try:
        input_set = InputSet.from_json(g["input_set"])
    except (*_MALFORMED, AttributeError) as e:
        return report.fail(f"guarantee.input_set: not an input set: {e!r}")
    steps = cert["evidence"] if isinstance(cert["evidence"], list) else []
    if not steps:
        return report.fail("the certificate has no reduction steps")
    if isinstance(steps[0], dict) and steps[0].get("step") == GRAPH_STEP:
        return check_onset_graph(cert, ctx, input_set, report)  # graph networks (DESIGN.md §10)
    f, reduced = load_onnx(ctx.original_path), load_onnx(ctx.reduced_path)
    if input_set.dim != f.n_inputs:
        return report.fail(f"guarantee.input_set: {input_set.dim} dimensions, the original has {f.n_inputs} inputs")
    if not same_interface(f, reduced, report):
        return report
    report.confirm("input_set", f"{len(input_set.regions)} region(s) of dimension {input_set.dim}; every bound "
                   "below is recomputed on it")
    last, total = replay_steps(f, input_set, steps, reduced, report)
    if last is None:
        report.holds = False
        return report
    return confirm_on_set_bound(report, g, total)
