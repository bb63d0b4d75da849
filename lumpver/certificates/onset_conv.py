"""On-set channel reduction of a convolutional network and its re-check (DESIGN.md §3, §10).

Over the input set X, a ReLU channel whose pre-activation upper bound is ``<= 0`` at every position
outputs exactly 0, so deleting it (its filter and bias, and the readers' input-channel slices) leaves
the network unchanged on X in real arithmetic. A channel whose activation is linear at every position
(ReLU with lower bound ``>= 0``, identity) is ``h_c = s_c (W_c h_prev + b_c)``; when its augmented
filter ``s_c [W_c, b_c]`` is ``sum_j C_cj s_j [W_j, b_j]`` over *basis* channels ``j`` of the same layer
it is *folded*: ``h_c = sum_j C_cj h_j`` on X, and every reader adds ``C_cj`` times its filter slice on
``c`` to its slice on ``j`` (channel-wise steps before the reader's weights, such as average pooling and
padding, commute with this; max pooling is never in a chain).

The step ``on-set-channels`` records ``removed`` channels per hidden layer and, when something is
folded, ``folds`` (per hidden layer ``basis``, ``folded``, ``coefficients``). :func:`replay_channel_step`
recomputes the bounds on every region of X with the bound engine (never the recorded ones) and checks
every claim against them. Without folds the reduced network must be f without the removed channels
(bit-equal); with folds it is taken as it is and :func:`channel_fold_discrepancy` recomputes a sound
bound of ``max_i |f_i - g_i|`` on X in real arithmetic of the stored float32 weights: with ``E`` the
channel embedding of kept channels (kept -> itself, folded -> ``C``, removed -> 0), f's previous
layer is ``h = E h_kept + r`` on X (``r`` non-zero only on folded channels), and per layer

    |z_f - z_g| <= |W_K E - W_g| M + |W_g| d + |W_K| e + |b_K - b_g|          (kept rows K),
    |r_F| <= |V E| M + |V| e + |v|,  V = s_F W_F - C s_B W_B,  v = s_F b_F - C s_B b_B,

applied through f's operator geometry with absolute filters (position by position), where ``M`` bounds
``|h_kept|`` of f (recomputed bounds), ``d`` the previous ``|h_f - h_g|`` on kept channels and ``e`` the
previous ``|r|``; float64 rounding of these sums is covered by ``3 gamma_n`` times the same sums on
absolute values and a relative ``2 gamma_n``. This module must not import :mod:`lumpver.reductions`; the
reducer imports :class:`ChannelBounds`, :func:`channel_slopes` and :func:`channel_fold_discrepancy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from lumpver.bounds.engine import METHODS, compute_bounds
from lumpver.certificates.exact_conv import channel_view, describe, rebuild
from lumpver.errors import InputError
from lumpver.ir.network import Layer, Network
from lumpver.specs.inputset import InputSet

STEP = "on-set-channels"
_U = 2.0**-53


@dataclass
class ChannelBounds:
    """Bounds valid on all of X (hull over its regions): pre-activations per layer, ``|h|`` per layer
    and ``|x|`` of the normalised input, one value per feature."""

    pre_lower: list[np.ndarray]
    pre_upper: list[np.ndarray]
    post_mag: list[np.ndarray]
    input_mag: np.ndarray

    @staticmethod
    def on_set(net: Network, input_set: InputSet, method: str = "crown") -> "ChannelBounds":
        """Recompute the bounds with the bound engine on every region of ``input_set``."""
        hull: Optional[ChannelBounds] = None
        for region in input_set.regions:
            nb = compute_bounds(net, region, method)
            mag = lambda lo, hi: np.maximum(np.abs(lo), np.abs(hi))  # noqa: E731
            cur = ChannelBounds(list(nb.pre_lower), list(nb.pre_upper), list(map(mag, nb.post_lower, nb.post_upper)),
                                mag(nb.input_lower, nb.input_upper))
            hull = cur if hull is None else ChannelBounds(
                list(map(np.minimum, hull.pre_lower, cur.pre_lower)), list(map(np.maximum, hull.pre_upper, cur.pre_upper)),
                list(map(np.maximum, hull.post_mag, cur.post_mag)), np.maximum(hull.input_mag, cur.input_mag))
        assert hull is not None, "an input set has at least one region"
        return hull


def channel_slopes(layer: Layer, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per output channel, the slope ``s`` with ``act(z) = s z`` at every position of ``[lo, hi]``
    (0: a ReLU channel that is 0 on X); NaN where the activation is not linear on the whole channel."""
    n = layer.op.out_channels
    lo, hi = lo.reshape(n, -1).min(axis=1), hi.reshape(n, -1).max(axis=1)
    if layer.activation == "identity":
        return np.ones(n)
    if layer.activation not in ("relu", "leaky_relu"):
        return np.full(n, np.nan)
    neg = 0.0 if layer.activation == "relu" else float(layer.alpha)
    return np.where(lo >= 0, 1.0, np.where(hi <= 0, neg, np.nan))


def inactive_channels(net: Network, cb: ChannelBounds) -> list[np.ndarray]:
    """Per hidden layer, the ReLU channels whose pre-activation upper bound is ``<= 0`` at every
    position on X (at least one channel of a layer is always kept)."""
    out = []
    for k, layer in enumerate(net.layers[:-1]):
        per_channel = cb.pre_upper[k].reshape(layer.op.out_channels, -1).max(axis=1)
        dead = np.flatnonzero(per_channel <= 0) if layer.activation == "relu" else np.zeros(0, np.int64)
        if dead.size == per_channel.size:
            dead = np.delete(dead, int(np.argmax(per_channel)))
        out.append(dead)
    return out


@dataclass
class ChannelClaim:
    """One hidden layer's claims: removed channels (0 on X), basis and folded ones (``h_F = C h_B``)."""

    removed: np.ndarray
    basis: np.ndarray
    folded: np.ndarray
    coeffs: np.ndarray  # (len(folded), len(basis))

    def kept(self, n: int) -> np.ndarray:
        """Channels the reduced layer keeps, in their original order."""
        keep = np.ones(n, dtype=bool)
        keep[self.removed], keep[self.folded] = False, False
        return np.flatnonzero(keep)

    def embedding(self, n: int) -> np.ndarray:
        """``E`` (n x kept): ``h = E h_kept`` on X up to the folded channels' residuals."""
        kept = self.kept(n)
        col = np.full(n, -1)
        col[kept] = np.arange(kept.size)
        emb = np.zeros((n, kept.size))
        emb[kept, col[kept]] = 1.0
        emb[np.ix_(self.folded, col[self.basis])] = self.coeffs
        return emb


def read_claims(step: dict[str, Any]) -> list[ChannelClaim]:
    """The claims of a step (no ``folds``: removals only; KeyError/ValueError/TypeError if malformed)."""
    removed = [np.asarray(r, dtype=np.int64).reshape(-1) for r in step["removed"]]
    folds = step.get("folds") or [{"basis": [], "folded": [], "coefficients": []} for _ in removed]
    if len(folds) != len(removed):
        raise ValueError(f"{len(folds)} layers of folds, {len(removed)} of removed channels")
    claims = []
    for r, d in zip(removed, folds):
        basis, folded = (np.asarray(d[key], dtype=np.int64).reshape(-1) for key in ("basis", "folded"))
        coeffs = np.asarray(d["coefficients"], dtype=np.float64).reshape(folded.size, basis.size)
        claims.append(ChannelClaim(r, basis, folded, coeffs))
    return claims


def remove_channels(net: Network, removed: list[np.ndarray]) -> Network:
    """``net`` without the listed output channels of its hidden layers (weights copied exactly)."""
    layers, prev_keep = [], None
    for k, layer in enumerate(net.layers):
        view = channel_view(layer.op, net.layers[k - 1].op.out_channels if k else None)
        keep = np.setdiff1d(np.arange(view.out_channels), removed[k]) if k < len(removed) else np.arange(view.out_channels)
        cols = prev_keep if prev_keep is not None else np.arange(view.in_channels)
        w3 = view.w3[np.ix_(keep, cols)]
        bias = layer.bias.reshape(view.out_channels, -1)[keep].reshape(-1)
        layers.append(Layer(rebuild(view, w3, prev_keep is not None), bias, layer.activation, layer.alpha, layer.source_op))
        prev_keep = keep
    return net.with_layers(layers)


def _same(a: Network, b: Network) -> bool:
    """Same layers: geometry, activations, and bit-equal filters and biases."""
    if len(a.layers) != len(b.layers):
        return False
    for la, lb in zip(a.layers, b.layers):
        va, vb = channel_view(la.op, None), channel_view(lb.op, None)
        if (describe(la.op) != describe(lb.op) or va.w3.shape != vb.w3.shape or not np.array_equal(va.w3, vb.w3)
                or not np.array_equal(la.bias, lb.bias) or (la.activation, la.alpha) != (lb.activation, lb.alpha)):
            return False
    return True


def _claims_problem(net: Network, claims: list[ChannelClaim], cb: ChannelBounds) -> Optional[str]:
    """Why the claims are malformed or not confirmed by the recomputed bounds (None if they hold)."""
    if len(claims) != len(net.layers) - 1:
        return f"{len(claims)} layers of claims, the network has {len(net.layers) - 1} hidden layers"
    for k, c in enumerate(claims):
        layer, n = net.layers[k], net.layers[k].op.out_channels
        ids = np.concatenate([c.removed, c.basis, c.folded])
        if ids.size != np.unique(ids).size or np.any(ids < 0) or np.any(ids >= n) or c.kept(n).size == 0 \
                or not np.all(np.isfinite(c.coeffs)):
            return f"layer {k}: channel indices repeat, leave the layer or empty it, or coefficients are not finite"
        if c.removed.size and layer.activation != "relu":
            return f"layer {k}: only ReLU channels can be stably inactive"
        worst = cb.pre_upper[k].reshape(n, -1)[c.removed].max(initial=-np.inf)
        if worst > 0:
            return f"layer {k}: a removed channel reaches pre-activation {worst:.3g} > 0 on X"
        s = channel_slopes(layer, cb.pre_lower[k], cb.pre_upper[k])
        bad = [int(j) for j in np.concatenate([c.basis, c.folded]) if not (np.isfinite(s[j]) and s[j] != 0)]
        if bad:
            return f"layer {k} channel {bad[0]}: claimed linear (stably active) on X, the recomputed bounds disagree"
        if c.folded.size:  # the readers must take the folded channel's filter slices
            channel_view(net.layers[k + 1].op, n)
    return None


def _gamma(n: int) -> float:
    """Higham's ``gamma_n``: relative error bound of an n-term float64 sum of products."""
    return n * _U / (1 - n * _U)


def _fold_filters(w3: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """``(W E)[t, j, k] = sum_s w3[t, s, k] E[s, j]``: filters on the previous layer's kept channels."""
    return np.einsum("tsk,sj->tjk", w3, emb)


@dataclass
class AffineMag:
    """f's affine step (a layer, or a graph's affine node with the activation after it) as the bound
    needs it: its channel view and ``|op|`` with other filters in its geometry."""

    layer: Layer
    in_channels: Optional[int]  # the channels of the value it reads (None: the network input)

    def __post_init__(self) -> None:
        self.view = channel_view(self.layer.op, self.in_channels)
        self.first = self.in_channels is None

    def mag(self, w3: np.ndarray, vec: np.ndarray) -> np.ndarray:
        """``|op with filters w3|`` applied to the non-negative feature vector ``vec`` (f's geometry)."""
        return rebuild(self.view, np.abs(w3), not self.first).abs().forward(vec[None, :])[0]


@dataclass
class FoldState:
    """What the bound knows of a value h of f read by the next step: ``m >= |h_kept|`` (f's kept
    channels), ``d >= |h_kept - h_g|``, ``e >= |r|`` over all channels (None: 0) and ``E`` with
    ``h = E h_kept + r`` on X."""

    m: np.ndarray
    d: np.ndarray
    e: Optional[np.ndarray]
    emb: np.ndarray


def g_filters(lf: AffineMag, op, rows: int, cols: int) -> np.ndarray:
    """g's filters of an affine step, checked against f's geometry and the claimed channel counts."""
    vg = channel_view(op, None if lf.first else cols)
    want = (rows, cols, lf.view.w3.shape[2])
    if vg.w3.shape != want or describe(op) != describe(lf.layer.op):
        raise ValueError(f"reduced layer has filters {vg.w3.shape}, the claims need {want} with f's geometry")
    return vg.w3


def affine_gap(lf: AffineMag, rows: np.ndarray, wg: np.ndarray, bg: np.ndarray, st: FoldState) -> np.ndarray:
    """Per feature of the kept ``rows``, a bound of ``|z_f - z_g|`` on X (module docstring, with rounding)."""
    n_out = lf.view.out_channels
    wk, bk = lf.view.w3[rows], lf.layer.bias.reshape(n_out, -1)[rows].reshape(-1)
    gam = _gamma(lf.layer.fan_in + st.emb.shape[1] + 4)
    dz = lf.mag(_fold_filters(wk, st.emb) - wg, st.m) + lf.mag(wg, st.d) + np.abs(bk - bg)
    margin = lf.mag(_fold_filters(np.abs(wk), np.abs(st.emb)), st.m) + lf.mag(wg, st.m + st.d) + np.abs(bk) + np.abs(bg)
    if st.e is not None:
        dz, margin = dz + lf.mag(wk, st.e), margin + lf.mag(wk, st.e)
    return (dz + 3 * gam * margin) * (1 + 2 * gam)


def _g_layer(lf: AffineMag, g_layer: Layer, rows: int, cols: int) -> np.ndarray:
    """g's filters of a chain layer; its activation and width must be f's."""
    wg = g_filters(lf, g_layer.op, rows, cols)
    if (g_layer.activation, g_layer.alpha) != (lf.layer.activation, lf.layer.alpha) \
            or g_layer.width != rows * (lf.layer.width // lf.view.out_channels):
        raise ValueError("reduced layer's activation or width differs from the claims")
    return wg


def channel_fold_discrepancy(f: Network, claims: list[ChannelClaim], cb: ChannelBounds, g: Network) -> float:
    """A sound bound of ``max_i |f_i(x) - g_i(x)|`` over X (module docstring). ``cb`` must be valid on X
    and confirm the claims; g's weights are used as they are (ValueError when g does not fit them)."""
    if len(g.layers) != len(f.layers):
        raise ValueError(f"reduced model has {len(g.layers)} layers, the original {len(f.layers)}")
    st = FoldState(cb.input_mag, np.zeros(f.n_inputs), None, np.eye(channel_view(f.layers[0].op, None).in_channels))
    for k, layer in enumerate(f.layers):
        lf = AffineMag(layer, f.layers[k - 1].op.out_channels if k else None)
        c = claims[k] if k < len(claims) else None
        n_out = lf.view.out_channels
        rows = c.kept(n_out) if c is not None else np.arange(n_out)
        wg = _g_layer(lf, g.layers[k], rows.size, st.emb.shape[1])
        d_next = layer.lipschitz() * affine_gap(lf, rows, wg, g.layers[k].bias, st)
        if c is None:
            return float(np.max(d_next))
        e = residual_bound(lf, c, channel_slopes(layer, cb.pre_lower[k], cb.pre_upper[k]), st)
        st = FoldState(cb.post_mag[k].reshape(n_out, -1)[rows].reshape(-1), d_next, e, c.embedding(n_out))
    raise AssertionError("unreachable: the last layer has no claims")


def residual_bound(lf: AffineMag, c: ChannelClaim, s: np.ndarray, st: FoldState) -> np.ndarray:
    """Per feature of the step's output, a bound of ``|r| = |h_f - E h_f,kept|`` on X (non-zero on
    folded channels; ``s``: the per-channel slopes on X)."""
    n_out = lf.view.out_channels
    out = np.zeros((n_out, lf.layer.width // n_out))
    if c.folded.size == 0:
        return out.reshape(-1)
    w3, bias, sf, sb = lf.view.w3, lf.layer.bias.reshape(n_out, -1), s[c.folded], s[c.basis]
    v = sf[:, None, None] * w3[c.folded] - np.einsum("fb,bsk->fsk", c.coeffs, sb[:, None, None] * w3[c.basis])
    vb = sf[:, None] * bias[c.folded] - c.coeffs @ (sb[:, None] * bias[c.basis])
    v_mag = np.abs(sf[:, None, None] * w3[c.folded]) + np.einsum("fb,bsk->fsk", np.abs(c.coeffs),
                                                                  np.abs(sb[:, None, None] * w3[c.basis]))
    vb_mag = np.abs(sf[:, None] * bias[c.folded]) + np.abs(c.coeffs) @ np.abs(sb[:, None] * bias[c.basis])
    r = lf.mag(_fold_filters(v, st.emb), st.m) + np.abs(vb).reshape(-1)
    margin = lf.mag(_fold_filters(v_mag, np.abs(st.emb)), st.m) + vb_mag.reshape(-1)
    if st.e is not None:
        r, margin = r + lf.mag(v, st.e), margin + lf.mag(v_mag, st.e)
    gam2 = _gamma(lf.layer.fan_in + st.emb.shape[1] + 4) + _gamma(c.basis.size + 2)
    out[c.folded] = ((r + 3 * gam2 * margin) * (1 + 2 * gam2)).reshape(c.folded.size, -1)
    return out.reshape(-1)


def replay_channel_step(net: Network, input_set: InputSet, step: dict[str, Any], target: Optional[Network],
                        report) -> tuple[Optional[Network], float]:
    """Replay one ``on-set-channels`` step on ``net``: (the reduced network or None, its bound on X)."""
    method = str(step.get("method", "crown"))
    try:
        claims = read_claims(step)
        cb = ChannelBounds.on_set(net, input_set, method if method in METHODS else "crown")
        problem = _claims_problem(net, claims, cb)
    except InputError as e:
        problem = f"a reader of a folded channel has no channel structure: {e}"
    if problem is not None:
        report.fail(f"{STEP}: {problem}")
        return None, 0.0
    n_removed, n_folded = sum(c.removed.size for c in claims), sum(c.folded.size for c in claims)
    report.ok(f"{STEP}: {n_removed} channel(s) with pre-activation <= 0 and {n_folded + sum(c.basis.size for c in claims)} "
              "linear at every position on X (bounds recomputed)")
    if n_folded == 0:
        g = remove_channels(net, [c.removed for c in claims])
        if target is not None and not _same(g, target):
            report.fail(f"{STEP}: the reduced model is not the original without the removed channels")
            return None, 0.0
        report.ok(f"{STEP}: removing them changes nothing on X")
        return (target if target is not None else g), 0.0
    if target is None:
        report.fail(f"{STEP}: a step that folds channels must be the last one (it is checked against the reduced file)")
        return None, 0.0
    try:
        bound = channel_fold_discrepancy(net, claims, cb, target)
    except (ValueError, InputError) as e:
        report.fail(f"{STEP}: {e}")
        return None, 0.0
    report.ok(f"{STEP}: {n_folded} folded channel(s); on X, max_i |f_i - g_i| <= {bound:.3e} (recomputed)")
    return target, bound
