"""Batched graph CROWN with optimisable ReLU lower slopes and split multipliers: the hot loop of
branch and bound over ReLU phases on graph networks (DESIGN.md §3, §10, §11).

The graph form of :mod:`lumpver.bounds.batched`. Sub-problem ``b`` of a :class:`GraphBatch` is a raw
input box ``[lo[b], hi[b]]`` plus sound bounds of every node read by a relaxation (the input of each
activation and max pool) and the ReLU splits it imposes (``phase[a][b, i] = +1``: ``z_i >= 0`` at
the input ``z`` of activation node ``a``, ``-1``: ``z_i <= 0``; the bounds carry the split as a clamp).

* :func:`backsub_graph` walks the nodes in reverse topological order as
  :func:`lumpver.bounds.graph_engine.back_substitute_graph` does (coefficients summed at branch
  points, split at concats, max-pool relaxation), on coefficient arrays ``(B, m, n)``; the lower
  slope of each unstable ReLU-like neuron is a free parameter ``alpha`` in ``[neg, 1]`` (alpha-CROWN),
  and ``beta >= 0`` times ``phase * z`` is added to the bounded function at every split (beta-CROWN:
  that term is ``>= 0`` on the sub-problem, so the result still bounds ``lam . y`` there). With
  ``grad`` it returns the gradient of the bound with respect to ``alpha`` and ``beta`` by reverse
  mode done by hand: a forward pass of ``d upper / d x`` through the linearised graph.
* :func:`optimise_graph` runs projected Adam (:class:`lumpver.bounds.batched.Adam`) on both and keeps
  the best bound per sub-problem and row.

Soundness: relaxations come from :mod:`lumpver.bounds.relaxations`; any ``alpha`` in ``[neg, 1]``
and any ``beta >= 0`` give a valid bound; every returned bound carries the outward margin of
:mod:`lumpver.bounds.rounding`, with a magnitude bound computed by the absolute-value forward pass
(the graph engine's ``A_mag``/``c_mag`` summed over the input box).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lumpver.bounds.batched import ALPHA_ACTS, Adam
from lumpver.bounds.graph_engine import PreparedGraph
from lumpver.bounds.relaxations import LinearRelaxation, MaxPoolRelaxation, get_relaxation, maxpool_relaxation
from lumpver.bounds.rounding import POLICY


def relaxed_inputs(pg: PreparedGraph) -> list[str]:
    """Nodes whose bounds a relaxation reads: the input of every activation and max pool."""
    out: list[str] = []
    for nid in pg.net.order[1:]:
        node = pg.net.node(nid)
        if node.kind in ("act", "maxpool") and node.inputs[0] not in out:
            out.append(node.inputs[0])
    return out


def act_nodes(pg: PreparedGraph) -> list[str]:
    return [n for n in pg.net.order[1:] if pg.net.node(n).kind == "act"]


def splittable(pg: PreparedGraph, nid: str) -> bool:
    """Activation nodes whose neurons are split at ``z = 0`` (ReLU-like with a convex relaxation)."""
    node = pg.net.node(nid)
    return node.kind == "act" and node.activation in ALPHA_ACTS and _neg(pg, nid) <= 1.0


def _neg(pg: PreparedGraph, nid: str) -> float:
    node = pg.net.node(nid)
    return 0.0 if node.activation == "relu" else float(node.alpha)


@dataclass
class GraphBatch:
    """``B`` sub-problems of one graph (module docstring); arrays are ``(B, n)``."""

    lo: np.ndarray
    hi: np.ndarray
    lower: dict[str, np.ndarray]  # every node of :func:`relaxed_inputs`
    upper: dict[str, np.ndarray]
    phase: dict[str, np.ndarray] = field(default_factory=dict)  # activation node -> +1 / -1 / 0

    @property
    def size(self) -> int:
        return self.lo.shape[0]


@dataclass
class BatchRelax:
    """Relaxations of every activation and max pool for a batch (fields ``(B, n)``)."""

    act: dict[str, LinearRelaxation]
    free: dict[str, np.ndarray]  # activation node -> (B, n) mask of free lower slopes
    pool: dict[str, MaxPoolRelaxation]


def relax_graph(pg: PreparedGraph, batch: GraphBatch) -> BatchRelax:
    """The registry relaxations (tight variant) of every activation and max pool of the batch."""
    act, free, pool = {}, {}, {}
    for nid in pg.net.order[1:]:
        node = pg.net.node(nid)
        if node.kind not in ("act", "maxpool"):
            continue
        lo, hi = batch.lower[node.inputs[0]], batch.upper[node.inputs[0]]
        if node.kind == "maxpool":
            rs = [maxpool_relaxation(node.pool.windows, lo[b], hi[b]) for b in range(batch.size)]
            pool[nid] = MaxPoolRelaxation(*(np.stack([getattr(r, f) for r in rs]) for f in MaxPoolRelaxation.__dataclass_fields__))
            continue
        r = get_relaxation(node.activation).tight_linear(lo.reshape(-1), np.maximum(hi, lo).reshape(-1), node.alpha)
        act[nid] = LinearRelaxation(*(f.reshape(lo.shape) for f in r.fields()))
        free[nid] = (lo < 0) & (hi > 0) if splittable(pg, nid) else np.zeros(lo.shape, dtype=bool)
    return BatchRelax(act, free, pool)


# ----------------------------------------------------------------------------------------
# per-sub-problem gathers and scatters (max pool indices differ between sub-problems)
# ----------------------------------------------------------------------------------------
def _rows(a: np.ndarray, fn) -> np.ndarray:
    B, m, n = a.shape
    out = fn(a.reshape(B * m, n))
    return out.reshape(B, m, out.shape[-1])


def _gather(F: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``F[b, r, idx[b, j]]`` -> ``(B, m, k)``."""
    B, m, _ = F.shape
    return np.take_along_axis(F, np.broadcast_to(idx[:, None, :], (B, m, idx.shape[1])), axis=2)


def _scatter(vals: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``vals[b, r, j]`` into position ``idx[b, j]`` of an array ``(B, m, n)``."""
    B, m, k = vals.shape
    flat = (np.arange(B * m).reshape(B, m, 1) * n + idx[:, None, :]).ravel()
    return np.bincount(flat, weights=vals.ravel(), minlength=B * m * n).reshape(B, m, n)


# ----------------------------------------------------------------------------------------
# back-substitution over a batch
# ----------------------------------------------------------------------------------------
@dataclass
class GraphBound:
    """Sound ``upper[b, i]`` of row ``i`` of sub-problem ``b``, its linear function in x, the
    coefficients on every activation's output, and (if asked) gradients."""

    upper: np.ndarray  # (B, m)
    A_x: np.ndarray  # (B, m, n_in)
    coef: dict[str, np.ndarray]  # activation node -> (B, m, n), before its relaxation
    grads: dict[str, np.ndarray] = field(default_factory=dict)  # d upper / d alpha
    bgrads: dict[str, np.ndarray] = field(default_factory=dict)  # d upper / d beta


def _slopes(rel: BatchRelax, nid: str, alpha: Optional[dict]) -> np.ndarray:
    sl = rel.act[nid].sl[:, None, :]
    if alpha is not None and alpha.get(nid) is not None:
        sl = np.where(rel.free[nid][:, None, :], alpha[nid], sl)
    return sl


def backsub_graph(pg: PreparedGraph, rel: BatchRelax, batch: GraphBatch, lam: np.ndarray,
                  alpha: Optional[dict] = None, beta: Optional[dict] = None, grad: bool = False) -> GraphBound:
    """Sound upper bound of ``lam[b] . v_out`` over sub-problem ``b`` (``lam``: ``(B, m, n_out)``;
    ``alpha[a]``, ``beta[a]``: ``(B, m, n)`` per activation node; see the module docstring)."""
    net = pg.net
    A = np.array(lam, dtype=np.float64)
    B, m, _ = A.shape
    coef: dict[str, np.ndarray] = {net.output: A}
    saved: dict[str, np.ndarray] = {}
    c = np.zeros((B, m))
    for nid in reversed(net.order[1:]):
        if nid not in coef:
            continue
        A = coef.pop(nid)
        node = net.node(nid)
        if nid in pg.steps:
            step = pg.steps[nid]
            c = c + A @ step.bias
            parts = [_rows(A, step.op.backward)]
        elif node.kind == "act":
            saved[nid] = A
            r = rel.act[nid]
            pos, neg = np.maximum(A, 0.0), np.minimum(A, 0.0)
            c = c + np.einsum("bmn,bn->bm", pos, r.tu) + np.einsum("bmn,bn->bm", neg, r.tl)
            A = pos * r.su[:, None, :] + neg * _slopes(rel, nid, alpha)
            if beta is not None and nid in batch.phase:
                A = A + beta[nid] * batch.phase[nid][:, None, :]
            parts = [A]
        elif node.kind == "maxpool":
            saved[nid] = A
            r = rel.pool[nid]
            n_in = node.pool.in_features
            pos, neg = np.maximum(A, 0.0), np.minimum(A, 0.0)
            c = c + np.einsum("bmn,bn->bm", pos, r.up_const)
            parts = [_scatter(pos * r.up_coef[:, None, :] + neg, r.lo_idx, n_in)
                     + _scatter(pos * r.up_coef2[:, None, :], r.up_idx2, n_in)]
        elif node.kind == "add":
            parts = [A, A]
        else:  # concat
            cuts = np.cumsum([net.node(i).size for i in node.inputs])[:-1]
            parts = np.split(A, cuts, axis=2)
        for src, a in zip(node.inputs, parts):
            coef[src] = coef[src] + a if src in coef else a
    A_x = coef.get("input", np.zeros((B, m, net.n_inputs)))
    centre, radius = 0.5 * (batch.lo + batch.hi), 0.5 * (batch.hi - batch.lo)
    val = np.einsum("bmn,bn->bm", A_x, centre) + np.einsum("bmn,bn->bm", np.abs(A_x), radius) + c
    V = _magnitude(pg, rel, centre, radius)
    mag = np.einsum("bmn,bn->bm", np.abs(np.asarray(lam, dtype=np.float64)), V[net.output]) + np.abs(val)
    if beta is not None:
        for a, ph in batch.phase.items():
            mag = mag + np.einsum("bmn,bn->bm", np.abs(beta[a] * ph[:, None, :]), V[net.node(a).inputs[0]])
    n_relax = len(rel.act) + len(rel.pool)
    upper = val + POLICY.margin(mag, pg.chain_length(net.output) + 2 * n_relax + net.n_inputs + 4)
    out = GraphBound(upper, A_x, saved)
    if grad:
        _gradients(pg, rel, batch, saved, A_x, centre, radius, alpha, out)
    return out


def _magnitude(pg: PreparedGraph, rel: BatchRelax, centre: np.ndarray, radius: np.ndarray) -> dict[str, np.ndarray]:
    """``V[v]`` (B, n_v) with ``|lam| . V[out]`` bounding the magnitude of every term of the
    back-substitution (what :func:`lumpver.bounds.graph_engine.back_substitute_graph` carries as
    ``A_mag``, ``c_mag``, evaluated on the box): the absolute-value forward pass through ``|op|``,
    ``|bias|``, each relaxation's largest slope magnitude (1 for a free slope) and intercepts."""
    net = pg.net
    V = {"input": np.abs(centre) + radius}
    for nid in net.order[1:]:
        node = net.node(nid)
        u = V[node.inputs[0]]
        if nid in pg.steps:
            V[nid] = pg.steps[nid].abs_op.forward(u) + np.abs(pg.steps[nid].bias)
        elif node.kind == "act":
            r = rel.act[nid]
            s = np.where(rel.free[nid], np.maximum(np.maximum(np.abs(r.su), np.abs(r.sl)), 1.0),
                         np.maximum(np.abs(r.su), np.abs(r.sl)))
            V[nid] = s * u + np.maximum(np.abs(r.tu), np.abs(r.tl)) + r.tmag
        elif node.kind == "maxpool":
            r = rel.pool[nid]
            lo_v = np.take_along_axis(u, r.lo_idx, axis=1)
            V[nid] = (np.abs(r.up_coef) + 1.0) * lo_v + np.abs(r.up_coef2) * np.take_along_axis(u, r.up_idx2, axis=1) \
                + np.abs(r.up_const) + r.tmag
        elif node.kind == "add":
            V[nid] = u + V[node.inputs[1]]
        else:
            V[nid] = np.concatenate([V[i] for i in node.inputs], axis=1)
    return V


def _gradients(pg: PreparedGraph, rel: BatchRelax, batch: GraphBatch, saved: dict, A_x: np.ndarray,
               centre: np.ndarray, radius: np.ndarray, alpha: Optional[dict], out: GraphBound) -> None:
    """``d upper / d alpha`` and ``d upper / d beta`` (margins ignored: every iterate is sound): the
    derivative of the bound with respect to the coefficient on node ``v`` is ``F[v]``, the forward
    pass of ``d upper / d x = centre + sign(A_x) radius`` through the chosen linear lines."""
    net = pg.net
    left = {nid: net.graph.out_degree(nid) for nid in net.order}
    F = {"input": centre[:, None, :] + np.sign(A_x) * radius[:, None, :]}
    for nid in net.order[1:]:
        node = net.node(nid)
        Fu = F[node.inputs[0]]
        A = saved.get(nid)
        if nid in pg.steps:
            F[nid] = _rows(Fu, pg.steps[nid].op.forward) + pg.steps[nid].bias
        elif node.kind == "act":
            r = rel.act[nid]
            up = Fu * r.su[:, None, :] + r.tu[:, None, :]
            if A is None:
                F[nid] = up
            else:
                F[nid] = np.where(A > 0, up, Fu * _slopes(rel, nid, alpha) + r.tl[:, None, :])
                out.grads[nid] = np.where(rel.free[nid][:, None, :], Fu * np.minimum(A, 0.0), 0.0)
                if nid in batch.phase:
                    out.bgrads[nid] = Fu * batch.phase[nid][:, None, :]
        elif node.kind == "maxpool":
            r = rel.pool[nid]
            low = _gather(Fu, r.lo_idx)
            up = low * r.up_coef[:, None, :] + _gather(Fu, r.up_idx2) * r.up_coef2[:, None, :] + r.up_const[:, None, :]
            F[nid] = up if A is None else np.where(A > 0, up, low)
        elif node.kind == "add":
            F[nid] = Fu + F[node.inputs[1]]
        else:
            F[nid] = np.concatenate([F[i] for i in node.inputs], axis=2)
        for src in node.inputs:  # free what no later node reads
            left[src] -= 1
            if left[src] <= 0:
                F.pop(src, None)


# ----------------------------------------------------------------------------------------
# optimised objective bound (alpha-beta-CROWN on graphs)
# ----------------------------------------------------------------------------------------
@dataclass
class GraphObjective:
    """Best bound found for ``lam . y + offset`` per sub-problem and row, and what produced it."""

    upper: np.ndarray  # (B, m), sound
    A_x: np.ndarray  # (B, m, n_in)
    coef: dict[str, np.ndarray]  # activation node -> (B, m, n)
    alpha: dict[str, np.ndarray]  # (B, m, n) per splittable activation
    beta: dict[str, np.ndarray]  # (B, m, n) per activation with splits
    relax: BatchRelax


def init_alpha(pg: PreparedGraph, rel: BatchRelax, m: int) -> dict[str, np.ndarray]:
    """The registry's adaptive lower slopes, one copy per row."""
    return {a: np.repeat(r.sl[:, None, :], m, axis=1) for a, r in rel.act.items() if splittable(pg, a)}


def _keep(best: dict, new: dict, better: np.ndarray) -> dict:
    return {k: np.where(better[:, :, None], new[k], v) for k, v in best.items()}


def optimise_graph(pg: PreparedGraph, batch: GraphBatch, lam: np.ndarray, offset: np.ndarray,
                   alpha: Optional[dict] = None, beta: Optional[dict] = None, iters: int = 10,
                   lr: float = 0.2) -> GraphObjective:
    """Minimise the sound upper bound of ``lam . y + offset`` (``lam``: ``(m, n_out)`` or ``(B, m,
    n_out)``, ``offset``: ``(m,)``, added with its own margin) over the lower slopes and the split
    multipliers by projected Adam; every iterate is sound, the best per (sub-problem, row) is kept;
    stops early once every sub-problem has a row bounded below 0 (closed). ``alpha``/``beta`` warm
    start (missing entries: the registry slopes, zero)."""
    B = batch.size
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (B,) + np.shape(lam)[-2:])
    m = lam.shape[1]
    rel = relax_graph(pg, batch)
    start = init_alpha(pg, rel, m)
    if alpha is not None:
        start.update({k: np.array(v, dtype=np.float64) for k, v in alpha.items() if k in start})
    keys = sorted(start)
    opt_a = Adam([start[k] for k in keys], [_neg(pg, k) for k in keys], 1.0, lr)
    bkeys = sorted(batch.phase)
    b0 = {k: np.zeros((B, m, batch.phase[k].shape[1])) for k in bkeys}
    if beta is not None:
        b0.update({k: np.array(v, dtype=np.float64) for k, v in beta.items() if k in b0})
    opt_b = Adam([b0[k] for k in bkeys], [0.0] * len(bkeys), np.inf, 0.5 * lr)
    best: Optional[GraphObjective] = None
    for it in range(iters + 1):
        al, be = dict(zip(keys, opt_a.params)), dict(zip(bkeys, opt_b.params))
        gb = backsub_graph(pg, rel, batch, lam, al, be if bkeys else None, grad=it < iters)
        up = gb.upper + offset + POLICY.margin(np.abs(gb.upper) + np.abs(offset), 2)
        if best is None:
            best = GraphObjective(up, gb.A_x, gb.coef, al, be, rel)
        else:
            better = up < best.upper
            best.upper = np.where(better, up, best.upper)
            best.A_x = np.where(better[:, :, None], gb.A_x, best.A_x)
            best.coef, best.alpha, best.beta = _keep(best.coef, gb.coef, better), _keep(best.alpha, al, better), \
                _keep(best.beta, be, better)
        if it == iters or np.all(np.min(best.upper, axis=1) < 0):
            break
        opt_a.step([gb.grads.get(k) for k in keys])
        opt_b.step([gb.bgrads.get(k) for k in bkeys])
    assert best is not None
    return best
