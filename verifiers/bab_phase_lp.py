"""The LP of the ReLU-phase search on ``f - g`` (:mod:`lumpver.verifiers.bab_phase`) as one persistent,
warm-started HiGHS model per box (:class:`lumpver.bounds.highs_model.SoundLp`; DESIGN.md §3, §5, §11).

Columns: ``x``, then per hidden layer ``k`` f's pre-activations ``z^f_k``, post-activations ``h^f_k``,
and g's ``z^g_k``, ``h^g_k``. Rows (the same for every node of the box; a node changes column bounds,
right-hand sides and one or two coefficients per neuron):

* ``z - W h_prev = b`` per neuron of each network (exact: the stored float32 weights in float64);
* ``z - h <= 0`` and ``h - a z <= r`` per neuron: ``h = z`` when active (``a = 1, r = 0``), ``h <= 0``
  when inactive (``a = 0``; with ``h``'s bound 0 the first row is the split row ``z <= 0``), the
  triangle's chord when unstable (``a >= u / (u - l)`` rounded up, ``r >= -a l`` rounded up, so the row
  holds at every real point of ``[l, u]``);
* per neuron pair the hull of ``delta h = relu(z^f) - relu(z^g)`` in ``delta z = z^f - z^g`` over
  ``[dl', du'] = [min(dl, 0), max(du, 0)]``: ``delta h <= a (delta z - dl')`` and
  ``delta h >= c (du' - delta z)`` with ``a >= du' / (du' - dl')`` rounded up (at most 1) and
  ``c <= dl' / (du' - dl')`` rounded down (at least -1); valid for any real ``z^f, z^g`` (relu is
  monotone and 1-Lipschitz), so kept for fixed pairs too.

Bounds: ``z in [l, u]`` (the node's sound layer bounds, clamped by its phases), ``h in [max(l, 0),
max(u, 0)]``, ``h = 0`` when inactive. Every value goes through the dual (outward rounded); an
infeasible node is empty only on a re-checked Farkas ray (:class:`SoundLp`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lumpver.bounds.highs_model import Solved, SoundLp
from lumpver.bounds.rounding import add_hi

#: relative widening of the computed slopes (their float64 error is a few ulp)
WIDEN = 1e-15


def _up(v: np.ndarray) -> np.ndarray:
    return np.nextafter(np.asarray(v, np.float64), np.inf)


class PairLp:
    """The model of one box for a :class:`lumpver.verifiers.bab_phase.PairNet` (module docstring), its
    structure fixed by the box's root node: neurons dead at the root have no post-activation column
    (and no pre-activation either unless their partner is unstable), neurons active at the root one
    column ``z = h``, unstable ones ``z`` and ``h`` with their two rows; pair rows only where a neuron of
    the pair is unstable (where both are stable ``delta h`` is exact)."""

    def __init__(self, net, lo: np.ndarray, hi: np.ndarray, root) -> None:
        from scipy import sparse  # solver: imported where used

        self.net, self.n = net, lo.size
        self.depth, self.H = len(net.widths), int(sum(net.widths))
        fl, fu, gl, gu, _, _ = self._flat(root)
        uf, ug = (fl < 0) & (fu > 0), (gl < 0) & (gu > 0)
        pair = uf | ug
        ncol = [self.n]
        self.sides = [self._columns(l, u, unst, pair, ncol) for l, u, unst in ((fl, fu, uf), (gl, gu, ug))]
        er, ec, ev, e = [], [], [], []
        for side, Ws, bs in zip(self.sides, (net.Wf, net.Wg), (net.bf, net.bg)):
            self._eq_rows(side, Ws, bs, er, ec, ev, e)
        E = sparse.csr_matrix((np.concatenate(ev), (np.concatenate(er), np.concatenate(ec))), shape=(len(e), ncol[0]))
        rows: list = [[], [], []]
        n_le = [0]

        def put(r, cols, vals):
            rows[0].append(r)
            rows[1].append(cols)
            rows[2].append(np.broadcast_to(np.asarray(vals, np.float64), np.shape(r)).copy())

        for side in self.sides:  # R1: z - h <= 0, R2: h - a z <= r over the root-unstable neurons
            t = side["unst"]
            r1, r2 = n_le[0] + np.arange(t.size), n_le[0] + t.size + np.arange(t.size)
            n_le[0] += 2 * t.size
            put(r1, side["pre"][t], 1.0)
            put(r1, side["post"][t], -1.0)
            put(r2, side["post"][t], 1.0)
            put(r2, side["pre"][t], -1.0)
            side["r2"] = r2
        self.pairs = np.flatnonzero(pair)
        P, f, g = self.pairs, self.sides[0], self.sides[1]
        self.c1, self.c2 = n_le[0] + np.arange(P.size), n_le[0] + P.size + np.arange(P.size)
        n_le[0] += 2 * P.size
        for r, sgn in ((self.c1, 1.0), (self.c2, -1.0)):
            for side, s2 in ((f, sgn), (g, -sgn)):  # h of a neuron active at the root is its z column: set per node
                live = (side["post"][P] >= 0) & (side["post"][P] != side["pre"][P])
                put(r[live], side["post"][P][live], s2)
            put(r, f["pre"][P], -1.0)  # -a (C1) / -c (C2), set per node
            put(r, g["pre"][P], 1.0)
        A = sparse.csr_matrix((np.concatenate(rows[2]), (np.concatenate(rows[0]), np.concatenate(rows[1]))),
                              shape=(n_le[0], ncol[0]))
        lb = np.concatenate([lo, np.zeros(ncol[0] - self.n)])
        ub = np.concatenate([hi, np.zeros(ncol[0] - self.n)])
        self.lp = SoundLp(E, np.array(e, np.float64), A, np.zeros(n_le[0]), lb, ub)
        self.n_le = n_le[0]
        self.coef_rows = np.concatenate([f["r2"], g["r2"], self.c1, self.c1, self.c2, self.c2])
        self.coef_cols = np.concatenate([f["pre"][f["unst"]], g["pre"][g["unst"]], f["pre"][P], g["pre"][P],
                                         f["pre"][P], g["pre"][P]])
        self.coef_pos = self.lp.le_positions(self.coef_rows, self.coef_cols)
        self.dead_end = [_dead_ends(Ws, net.widths) for Ws in (net.Wf, net.Wg)]
        self.load(root)

    def _flat(self, node):
        b, d = node.b, self.depth
        return tuple(np.concatenate(getattr(b, k)[:d]) if self.H else np.zeros(0)
                     for k in ("fl", "fu", "gl", "gu", "dl", "du"))

    def _columns(self, l: np.ndarray, u: np.ndarray, unst: np.ndarray, pair: np.ndarray, ncol: list) -> dict:
        """Column indices of one network's neurons (-1: none): ``pre`` (z), ``post`` (h; z itself when
        active at the root)."""
        dead = u <= 0
        has_pre = ~dead | pair
        pre = np.full(self.H, -1)
        pre[has_pre] = ncol[0] + np.arange(int(has_pre.sum()))
        ncol[0] += int(has_pre.sum())
        post = np.where(dead, -1, pre)
        post[unst] = ncol[0] + np.arange(int(unst.sum()))
        ncol[0] += int(unst.sum())
        return {"pre": pre, "post": post, "unst": np.flatnonzero(unst)}

    def _eq_rows(self, side: dict, Ws, bs, er, ec, ev, e) -> None:
        """``z - W h_prev = b`` for every neuron with a ``z`` column (dead inputs contribute nothing)."""
        at, prev = 0, np.arange(self.n)
        prev_idx = np.arange(self.n)
        for k, w in enumerate(self.net.widths):
            pre, post = side["pre"][at:at + w], side["post"][at:at + w]
            W = Ws[k][:, prev_idx]
            for j in np.flatnonzero(pre >= 0):
                nz = np.flatnonzero(W[j])
                row = len(e)
                er += [np.array([row]), np.full(nz.size, row)]
                ec += [pre[j:j + 1], prev[nz]]
                ev += [np.ones(1), -W[j, nz]]
                e.append(float(bs[k][j]))
            live = post >= 0
            prev, prev_idx = post[live], np.flatnonzero(live)
            at += w

    def load(self, node) -> None:
        """Bounds, slopes and offsets of the node (module docstring), changed only where they differ."""
        fl, fu, gl, gu, dl, du = self._flat(node)
        pf, pg = ((np.concatenate(p[:self.depth]) if self.H else np.zeros(0)) for p in (node.pf, node.pg))
        lp, coefs, rhs = self.lp, [], np.zeros(self.n_le)
        for side, l, u, p in zip(self.sides, (fl, gl), (fu, gu), (pf, pg)):
            t, pre = side["unst"], side["pre"]
            has = pre >= 0
            lp.set_bounds(pre[has], l[has], u[has])
            a, r, hl, hu = _neuron(l[t], u[t], p[t])
            lp.set_bounds(side["post"][t], hl, hu)
            coefs.append(-a)
            rhs[side["r2"]] = r
        P = self.pairs
        hmax = [np.where(s["post"][P] >= 0, np.maximum(u[P], 0.0), 0.0) for s, u in zip(self.sides, (fu, gu))]
        a, r1, c, r2 = _chord(dl[P], du[P], _up(hmax[0]), _up(hmax[1]))
        same_f, same_g = ((s["post"][P] == s["pre"][P]).astype(float) for s in self.sides)  # h = z columns
        coefs += [-a + same_f, a - same_g, -c - same_f, c + same_g]
        rhs[self.c1], rhs[self.c2] = r1, r2
        lp.set_coeffs(self.coef_rows, self.coef_cols, self.coef_pos, np.concatenate(coefs))
        lp.set_rhs(np.arange(self.n_le), rhs)

    def tighten(self, node, live_only: bool = False) -> int:
        """LP-tightened bounds of the node's later layers (in place, intersected), layer after layer, each
        layer's new bounds loaded before the next: per neuron unstable at the root ``min``/``max`` of ``z``
        in f and g and of ``z^f - z^g`` of the pair (sound: the dual of the model, which every real point of
        the node satisfies). ``live_only``: not the neurons that feed nothing (a pruned twin's dropped
        neurons: zero outgoing weights) nor the pairs with such a neuron: their bounds reach the output only
        through the pair's chords (bench/RESULTS.md 2026-12-01, 1_1 at 67 neurons). Returns the number of
        LPs; a node whose bounds cross is left with every row at ``-inf`` (empty)."""
        lps, at = 0, 0
        f, g = self.sides
        names = (("fl", "fu", f, None), ("gl", "gu", g, None), ("dl", "du", f, g))
        skip = [d if live_only else np.zeros_like(d) for d in self.dead_end]
        for k, w in enumerate(self.net.widths):
            if k == 0:
                at += w
                continue
            for lo_name, hi_name, s1, s2 in names:
                cand = self.pairs if s2 is not None else s1["unst"]
                cand = cand[(cand >= at) & (cand < at + w)]
                drop = skip[0][cand] | skip[1][cand] if s2 is not None else skip[0 if s1 is f else 1][cand]
                cand = cand[~drop]
                lo_k, hi_k = getattr(node.b, lo_name)[k], getattr(node.b, hi_name)[k]
                for t in cand:
                    c = np.zeros(self.lp.lb.size)
                    c[s1["pre"][t]] = 1.0
                    if s2 is not None:
                        c[s2["pre"][t]] = -1.0
                    low, high = self._range(c)
                    lps += 2
                    if low == np.inf or high == -np.inf:
                        node.rows[:] = -np.inf
                        return lps
                    lo_k[t - at], hi_k[t - at] = max(lo_k[t - at], low), min(hi_k[t - at], high)
            pairs = (("fl", "fu"), ("gl", "gu"), ("dl", "du"))
            if any(np.any(getattr(node.b, a)[k] > getattr(node.b, b)[k]) for a, b in pairs):
                node.rows[:] = -np.inf
                return lps
            self.load(node)
            at += w
        return lps

    def _range(self, c: np.ndarray) -> tuple[float, float]:
        """Sound ``(min, max)`` of ``c . v`` on the loaded node (``-inf``/``inf`` where unbounded; ``(inf,
        -inf)`` when certified empty)."""
        out = []
        for sign in (1.0, -1.0):
            self.lp.set_cost(sign * c)
            val = self.lp.solve().value
            if val == np.inf:
                return np.inf, -np.inf
            out.append(-sign * np.inf if val is None else sign * val)
        return out[0], out[1]

    def bound_row(self, r: int, basis=None) -> tuple[Solved, Optional[float]]:
        """Sound upper bound of row ``r`` (``r < m``: ``f_r - g_r``; ``m + r``: ``g_r - f_r``) on the loaded
        node (``inf``-valued ``Solved`` when certified empty) and the row's value bound (None: no bound)."""
        net = self.net
        m = net.Wf[-1].shape[0]
        i, sign = int(r) % m, (1.0 if r < m else -1.0)
        c = np.zeros(self.lp.lb.size)
        last = slice(self.H - net.widths[-1], self.H)
        for side, W, s in ((self.sides[0], net.Wf[-1], -sign), (self.sides[1], net.Wg[-1], sign)):
            post = side["post"][last]
            live = post >= 0
            c[post[live]] += s * W[i][live]
        self.lp.set_cost(c)
        s = self.lp.solve(basis)
        if s.value is None or not np.isfinite(s.value):
            return s, None
        up = float(add_hi(add_hi(np.float64(-s.value), np.float64(sign * net.bf[-1][i])),
                          np.float64(-sign * net.bg[-1][i])))
        return s, up

    def row_duals(self) -> np.ndarray:
        """HiGHS's row multipliers of the last solve (a branching hint, never evidence)."""
        return np.asarray(self.lp.model.getSolution().row_dual, np.float64)

    def pair_scores(self, y: np.ndarray) -> np.ndarray:
        """Per hidden neuron pair (flat index) the share of the last bound owed to its relaxation offsets:
        ``|y_row| * rhs_row`` summed over its triangle rows (f's, g's) and its two chord rows (BaBSR's idea
        with the LP's own multipliers). Split pairs have offset 0 and score 0."""
        rhs, e = self.lp.b_ub[2 * self.lp.n_eq:], self.lp.n_eq
        out = np.zeros(self.H)
        for side in self.sides:
            np.add.at(out, side["unst"], np.abs(y[e + side["r2"]]) * rhs[side["r2"]])
        for r in (self.c1, self.c2):
            np.add.at(out, self.pairs, np.abs(y[e + r]) * rhs[r])
        return out

    def point(self, v: np.ndarray) -> np.ndarray:
        """The LP point in :func:`lumpver.verifiers.bab_phase.branch`'s layout ``[x, h^f_0, h^g_0, ..]``."""
        vals = [np.where(s["post"] >= 0, v[np.maximum(s["post"], 0)], 0.0) for s in self.sides]
        parts, at = [v[:self.n]], 0
        for w in self.net.widths:
            parts += [vals[0][at:at + w], vals[1][at:at + w]]
            at += w
        return np.concatenate(parts)


def _dead_ends(Ws: list[np.ndarray], widths: list[int]) -> np.ndarray:
    """Per hidden neuron (flat index) whether it feeds nothing: its column of the next layer's weights is zero."""
    return np.concatenate([~np.any(Ws[k + 1] != 0, axis=0) for k in range(len(widths))]) if widths \
        else np.zeros(0, bool)


def _neuron(l: np.ndarray, u: np.ndarray, p: np.ndarray):
    """Per neuron ``a, r`` of ``h - a z <= r`` and ``h``'s bounds (module docstring)."""
    zero = (u <= 0) | (p < 0)
    ident = ~zero & ((l >= 0) | (p > 0))
    tri = ~(zero | ident)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = _up(np.where(tri, u / np.where(tri, u - l, 1.0), 0.0) * (1.0 + WIDEN))
    a = np.where(ident, 1.0, np.where(tri, s, 0.0))
    r = np.where(tri, _up(-a * l), 0.0)
    return a, r, np.where(zero, 0.0, np.maximum(l, 0.0)), np.where(zero, 0.0, np.maximum(u, 0.0))


def _chord(dl: np.ndarray, du: np.ndarray, huf: np.ndarray, hug: np.ndarray):
    """Per pair ``a, r1, c, r2`` of the rows ``dh - a dz <= r1`` and ``-dh - c dz <= r2`` (module docstring);
    a pair without finite ``delta z`` bounds gets ``dh <= max h^f`` and ``-dh <= max h^g`` (``a = c = 0``)."""
    ok = np.isfinite(dl) & np.isfinite(du)
    lo, hi = np.where(ok, np.minimum(dl, 0.0), -1.0), np.where(ok, np.maximum(du, 0.0), 1.0)
    span = hi - lo
    pos = span > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(pos, np.minimum(1.0, _up(hi / np.where(pos, span, 1.0) * (1.0 + WIDEN))), 0.0)
        c = np.where(pos, np.maximum(-1.0, -_up(-lo / np.where(pos, span, 1.0) * (1.0 + WIDEN))), 0.0)
    r1 = np.where(ok, _up(-a * lo), huf)
    r2 = np.where(ok, _up(-c * hi), hug)
    return np.where(ok, a, 0.0), r1, np.where(ok, c, 0.0), r2
