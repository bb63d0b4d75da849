"""An LP bound of ``f - g`` over one small box, both networks and their deltas at once (DESIGN.md §3, §5, §11).

The batched differential bounds (:mod:`lumpver.bounds.diff_batched`) back-substitute through *one*
relaxation per neuron (NeuroDiff's delta chord, or g's triangle). On a small box where few ReLUs
are unstable, the intersection of all of them is much tighter. The LP over

    ``x`` in the box; per network ``N`` in (f, g): ``xn_N = S_N x + t_N``; per layer ``k``:
    ``z_N,k = W_N,k h_N,k-1 + b_N,k`` (equality rows, exact float data), ``z_N,k`` within its known
    bounds; ReLU ``h = relu(z)``: ``h = z`` / ``h = 0`` where stable, the triangle where not;
    per hidden neuron whose delta is not exact: NeuroDiff's chords of ``delta h`` in ``delta z``
    (``delta h = h_f - h_g``, ``delta z = z_f - z_g``) and the delta intervals

maximises ``+-(z_f,L,i - z_g,L,i)`` for each output ``i`` asked for. Every relaxation row holds for
every ``x`` in the box (the bounds it is built from are sound there: the same ones the batched
bound uses, :class:`lumpver.bounds.diff_batched.DeltaLayer`); chord slopes are rounded outward and
right-hand sides widened by the rounding policy. The LP value becomes a sound bound through HiGHS's
dual and weak duality (:func:`lumpver.bounds.region.lp_min_sound`), so neither the solver's
tolerance nor its answer is trusted. The LP is deterministic given the box, so a checker re-solves
it and gets a sound bound of its own (DESIGN.md §9).

Only for ReLU (and identity) layers; :func:`lp_applicable` says whether a pair qualifies.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lumpver.bounds.region import lp_min_sound
from lumpver.bounds.rounding import POLICY


class _Rows:
    """Sparse ``A v <= b`` under construction."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.n = 0

    def add(self, cols: list[np.ndarray], coefs: list[np.ndarray], rhs: np.ndarray) -> None:
        """Rows ``sum_t coefs[t][i] * v[cols[t][i]] <= rhs[i]`` (one row per ``i``)."""
        m = rhs.size
        if m == 0:
            return
        rows = self.n + np.arange(m)
        for col, coef in zip(cols, coefs):
            self.r.append(rows)
            self.c.append(np.broadcast_to(col, (m,)).astype(np.int64))
            self.v.append(np.broadcast_to(np.asarray(coef, dtype=np.float64), (m,)))
        self.b.append(np.asarray(rhs, dtype=np.float64))
        self.n += m

    def equal(self, cols: list[np.ndarray], coefs: list[np.ndarray], rhs: np.ndarray) -> None:
        self.add(cols, coefs, rhs)
        self.add(cols, [-np.asarray(c) for c in coefs], -np.asarray(rhs))

    def matrix(self, n_vars: int):
        from scipy import sparse  # solver: imported where used

        A = sparse.csr_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                              shape=(self.n, n_vars))
        return A, np.concatenate(self.b)


def lp_applicable(acts: list[str]) -> bool:
    """The LP encodes ReLU hidden layers and an identity output layer."""
    return all(a == "relu" for a in acts[1:-1]) and acts[-1] in ("identity", "relu") and acts[0] == "identity"


def _up(a: np.ndarray) -> np.ndarray:
    return np.nextafter(a, np.inf)


class DiffLP:
    """The LP of one box (module docstring). ``layers``: per layer of the aligned pair (hidden then
    output), :class:`lumpver.bounds.diff_batched.DeltaLayer` rows of this box."""

    def __init__(self, f_chain, g_chain, lo: np.ndarray, hi: np.ndarray, layers: list) -> None:
        self.rows, self.lb, self.ub = _Rows(), [lo], [hi]
        self.n_vars = lo.size
        x = np.arange(lo.size)
        hf, hg = self._input(f_chain, x, lo, hi), self._input(g_chain, x, lo, hi)
        depth = len(f_chain.steps)
        for k, L in enumerate(layers):
            last = k == depth - 1
            zf = self._layer(f_chain.steps[k], hf, L.f_lo, L.f_hi)
            zg = self._layer(g_chain.steps[k], hg, L.g_lo, L.g_hi)
            if last:
                self.out_f, self.out_g = zf, zg
                self._delta_bounds(zf, zg, L.zd_lo, L.zd_hi)
                break
            hf, hg = self._relu(zf, L.f_lo, L.f_hi), self._relu(zg, L.g_lo, L.g_hi)
            self._delta(L, zf, zg, hf, hg)
        self.A, self.b = self.rows.matrix(self.n_vars)
        self.lo_v, self.hi_v = np.concatenate(self.lb), np.concatenate(self.ub)

    def _vars(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        idx = self.n_vars + np.arange(lo.size)
        self.n_vars += lo.size
        self.lb.append(np.asarray(lo, dtype=np.float64))
        self.ub.append(np.asarray(hi, dtype=np.float64))
        return idx

    def _input(self, chain, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``xn = S x + t`` (S diagonal): one equality row per input."""
        s = np.diag(chain.input.op.dense()).astype(np.float64)
        t = chain.input.bias
        a, b = s * lo + t, s * hi + t
        pad = POLICY.margin(np.abs(s) * np.maximum(np.abs(lo), np.abs(hi)) + np.abs(t), 4)
        xn = self._vars(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        self.rows.equal([xn, x], [np.ones(x.size), -s], t)
        return xn

    def _layer(self, step, h: np.ndarray, zl: np.ndarray, zu: np.ndarray) -> np.ndarray:
        """``z = W h + b`` (equality rows over the dense matrix, exact data)."""
        W = np.asarray(step.op.dense(), dtype=np.float64)
        z = self._vars(zl, zu)
        m, n = W.shape
        nz = W != 0
        r_idx, c_idx = np.nonzero(nz)
        rows = self.rows
        for sign in (1.0, -1.0):
            base = rows.n + np.arange(m)
            rows.r.extend([base, base[r_idx]])
            rows.c.extend([z, h[c_idx]])
            rows.v.extend([np.full(m, sign), -sign * W[nz]])
            rows.b.append(sign * step.bias)
            rows.n += m
        return z

    def _relu(self, z: np.ndarray, zl: np.ndarray, zu: np.ndarray) -> np.ndarray:
        h = self._vars(np.maximum(zl, 0.0), np.maximum(zu, 0.0))
        act, uns = zl >= 0, (zl < 0) & (zu > 0)
        self.rows.equal([h[act], z[act]], [1.0, -1.0], np.zeros(int(act.sum())))
        l, u = zl[uns], zu[uns]
        s = _up(u / (u - l) * (1.0 + POLICY.slope_ulps * POLICY.unit_roundoff))  # >= u / (u - l): valid on [l, u]
        self.rows.add([h[uns], z[uns]], [-1.0, 1.0], np.zeros(l.size))  # h >= z
        self.rows.add([h[uns], z[uns]], [1.0, -s], _up(_up(-s * l)))  # h <= s z - s l
        return h

    def _delta(self, L, zf, zg, hf, hg) -> None:
        """NeuroDiff's relaxation of ``delta h`` in ``delta z`` (chords where ``delta z`` changes sign, the
        slope range's lines elsewhere) and the delta intervals."""
        r = L.delta
        pad = POLICY.margin(np.abs(r.tl) + np.abs(r.tu) + r.tmag, 4)
        i = np.flatnonzero((r.su != r.sl) | (r.tu != 0) | (r.tl != 0))  # else implied by the ReLU rows
        su, sl = r.su[i], r.sl[i]
        self.rows.add([hf[i], hg[i], zf[i], zg[i]], [1.0, -1.0, -su, su], r.tu[i] + pad[i])  # dh <= su dz + tu
        self.rows.add([hf[i], hg[i], zf[i], zg[i]], [-1.0, 1.0, sl, -sl], -r.tl[i] + pad[i])  # dh >= sl dz + tl
        self._delta_bounds(zf, zg, L.zd_lo, L.zd_hi)
        self._delta_bounds(hf, hg, L.dh_lo, L.dh_hi)

    def _delta_bounds(self, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """``lo <= a - b <= hi`` where finite."""
        fin = np.flatnonzero(np.isfinite(hi))
        self.rows.add([a[fin], b[fin]], [1.0, -1.0], hi[fin])
        fin = np.flatnonzero(np.isfinite(lo))
        self.rows.add([a[fin], b[fin]], [-1.0, 1.0], -lo[fin])

    def upper(self, row: int, m: int) -> Optional[float]:
        """Sound upper bound of row ``row`` of ``(f - g, g - f)`` (``m`` outputs), or None (solver failed)."""
        from scipy.optimize import linprog  # solver: imported where used

        i, sign = (row, 1.0) if row < m else (row - m, -1.0)
        c = np.zeros(self.n_vars)
        c[self.out_f[i]], c[self.out_g[i]] = -sign, sign  # min -(sign (z_f - z_g))
        val = lp_min_sound(linprog, c, self.A, self.b, self.lo_v, self.hi_v)
        return None if val is None else float(-val)
