"""Exact reference for benchmarks: ``max_{x in box} ||f(x) - g(x)||_inf`` by a mixed-integer program
(HiGHS through ``highspy``), independent of lumpver's bound engine and certifiers (issue 14).

The program is the product of the two ReLU networks on one shared input ``x``: per hidden neuron a
pre-activation ``z`` (equality row ``z = W h_prev + b``) and an output ``h``; stable neurons are
``h = z`` or ``h = 0``; unstable ones get the big-M encoding with one binary ``d``
(``h >= z, h >= 0, h <= u d, h <= z - l (1 - d)``). The per-neuron bounds ``[l, u]`` are computed
here layer by layer: interval arithmetic, then, for neurons whose interval crosses 0, the LP
relaxation of the program built so far (the big-M LP relaxation is the triangle relaxation), solved
with warm starts and widened by ``MARGIN`` (relative) so that HiGHS's tolerances cannot cut a
feasible point. Per output row ``+-(f_r - g_r)`` the MILP is solved with a time limit; rows are taken
in decreasing order of their LP relaxation bound, and each later row carries the cut
``objective >= best so far`` (a row that cannot beat it is infeasible and costs little).

Result: ``best`` (the largest MILP objective found; its point is also replayed with onnxruntime by the
caller) and ``dual`` (the largest dual bound of any row: the exact maximum lies in ``[best, dual]`` up
to HiGHS's feasibility tolerances, which is a reference, not a certificate; the gap is HiGHS's).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import highspy
import numpy as np

#: relative widening of the LP-computed neuron bounds (and absolute floor)
MARGIN = 1e-6
INF = highspy.kHighsInf


@dataclass
class ExactMax:
    """``best`` attained objective (MILP, float64), ``dual`` upper bound, the row and point of ``best``,
    per-row status, seconds, and the number of binaries."""

    best: float
    dual: float
    row: int
    x: np.ndarray
    status: list[str] = field(default_factory=list)
    seconds: float = 0.0
    binaries: int = 0

    @property
    def gap(self) -> float:
        return (self.dual - self.best) / max(abs(self.best), 1e-300)


class _Model:
    """A HiGHS model grown layer by layer; columns addressed by index."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.n = 0
        self.binaries: list[int] = []
        self.x = self.cols(lo, hi)

    def cols(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        k = len(lo)
        self.h.addVars(k, np.asarray(lo, np.float64), np.asarray(hi, np.float64))
        out = np.arange(self.n, self.n + k)
        self.n += k
        return out

    def rows(self, lower, upper, idx: list[np.ndarray], val: list[np.ndarray]) -> None:
        starts = np.cumsum([0] + [len(i) for i in idx[:-1]]).astype(np.int32)
        self.h.addRows(len(idx), np.asarray(lower, np.float64), np.asarray(upper, np.float64), int(sum(map(len, idx))),
                       starts, np.concatenate(idx).astype(np.int32), np.concatenate(val).astype(np.float64))

    def optimise(self, cols: np.ndarray, coef: np.ndarray, sense_max: bool) -> tuple[Optional[float], np.ndarray]:
        """LP/MILP optimum of ``coef . v[cols]`` (None unless optimal) and the point."""
        self.h.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), np.zeros(self.n))
        self.h.changeColsCost(len(cols), cols.astype(np.int32), np.asarray(coef, np.float64))
        self.h.changeObjectiveSense(highspy.ObjSense.kMaximize if sense_max else highspy.ObjSense.kMinimize)
        self.h.run()
        ok = self.h.getModelStatus() == highspy.HighsModelStatus.kOptimal
        return (self.h.getInfo().objective_function_value if ok else None), np.array(self.h.getSolution().col_value)


def _widen(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return l - MARGIN * (1 + np.abs(l)), u + MARGIN * (1 + np.abs(u))


def _lp_tighten(m: _Model, prev: np.ndarray, W: np.ndarray, b: np.ndarray, l: np.ndarray, u: np.ndarray,
                which: np.ndarray) -> None:
    """Intersect ``[l, u]`` of ``W v[prev] + b`` with its LP bounds over the model so far (rows ``which``)."""
    for j in which:
        nz = np.flatnonzero(W[j])
        for sense in (False, True):
            v, _ = m.optimise(prev[nz], W[j, nz], sense)
            if v is not None:
                lv, uv = _widen(np.array([v + b[j]]), np.array([v + b[j]]))
                if sense:
                    u[j] = min(u[j], uv[0])
                else:
                    l[j] = max(l[j], lv[0])


def _interval(W: np.ndarray, b: np.ndarray, plo: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    return _widen(Wp @ plo + Wn @ phi + b, Wp @ phi + Wn @ plo + b)


def _layer(m: _Model, W: np.ndarray, b: np.ndarray, prev: np.ndarray, plo: np.ndarray, phi: np.ndarray, relu: bool,
           lp_bounds: bool):
    """Add ``z = W h_prev + b`` (and ``h = relu(z)``); returns (z, h or None, bounds of z, of h)."""
    l, u = _interval(W, b, plo, phi)
    if lp_bounds:
        _lp_tighten(m, prev, W, b, l, u, np.flatnonzero((l < 0) & (u > 0)))
    z = m.cols(l, u)
    nzr = [np.flatnonzero(W[j]) for j in range(W.shape[0])]
    m.rows(b, b, [np.append(prev[nz], z[j]) for j, nz in enumerate(nzr)],
           [np.append(-W[j, nz], 1.0) for j, nz in enumerate(nzr)])
    if not relu:
        return z, None, (l, u), (l, u)
    hl, hu = np.maximum(l, 0), np.maximum(u, 0)
    h = m.cols(hl, hu)
    idx, val, rl, ru = [], [], [], []
    for j in range(W.shape[0]):
        if l[j] >= 0:  # h = z
            idx.append(np.array([h[j], z[j]]))
            val.append(np.array([1.0, -1.0]))
            rl.append(0.0)
            ru.append(0.0)
        elif u[j] > 0:  # h >= z; h - u d <= 0; h - z - l d <= -l
            d = m.cols(np.zeros(1), np.ones(1))[0]
            m.binaries.append(d)
            idx += [np.array([h[j], z[j]]), np.array([h[j], d]), np.array([h[j], z[j], d])]
            val += [np.array([1.0, -1.0]), np.array([1.0, -u[j]]), np.array([1.0, -1.0, -l[j]])]
            rl += [0.0, -INF, -INF]
            ru += [INF, 0.0, -l[j]]
    if idx:
        m.rows(rl, ru, idx, val)
    return z, h, (l, u), (hl, hu)


def _couple(m: _Model, zf, zg, hf, hg, bf: tuple, bg: tuple, lp_bounds: bool) -> int:
    """Valid cuts for aligned pairs (speed only; integrality alone makes the program exact): with
    ``dz = z^f - z^g`` in ``[dl, du]``, ``relu(z^f) - relu(z^g)`` lies between ``min(0, dz)`` and
    ``max(0, dz)``, whose hull over ``[dl, du]`` is given by two chords. Returns the pairs coupled."""
    todo = np.flatnonzero(((bf[0] < 0) & (bf[1] > 0)) | ((bg[0] < 0) & (bg[1] > 0)))
    if not todo.size:
        return 0
    dl, du = bf[0] - bg[1], bf[1] - bg[0]
    if lp_bounds:
        for j in todo:
            for sense in (False, True):
                v, _ = m.optimise(np.array([zf[j], zg[j]]), np.array([1.0, -1.0]), sense)
                if v is not None:
                    lv, uv = _widen(np.array([v]), np.array([v]))
                    dl[j], du[j] = (dl[j], min(du[j], uv[0])) if sense else (max(dl[j], lv[0]), du[j])
    idx, val, ru = [], [], []
    for j in todo:
        cols = np.array([hf[j], hg[j], zf[j], zg[j]])
        lo_, hi_ = dl[j], du[j]
        slack = MARGIN * (1 + abs(lo_) + abs(hi_))
        if lo_ >= 0:  # 0 <= dh <= dz
            idx += [cols[:2], cols]
            val += [np.array([-1.0, 1.0]), np.array([1.0, -1.0, -1.0, 1.0])]
            ru += [slack, slack]
        elif hi_ <= 0:  # dz <= dh <= 0
            idx += [cols[:2], cols]
            val += [np.array([1.0, -1.0]), np.array([-1.0, 1.0, 1.0, -1.0])]
            ru += [slack, slack]
        else:  # dh <= a (dz - dl), dh >= c (du - dz), a = du / (du - dl), c = dl / (du - dl)
            a, c = hi_ / (hi_ - lo_), lo_ / (hi_ - lo_)
            idx += [cols, cols]
            val += [np.array([1.0, -1.0, -a, a]), np.array([-1.0, 1.0, -c, c])]
            ru += [-a * lo_ + slack, -c * hi_ + slack]
    m.rows([-INF] * len(ru), ru, idx, val)
    return todo.size


def _encode_pair(m: _Model, f_layers, g_layers, lo: np.ndarray, hi: np.ndarray, lp_bounds: bool, say=print):
    """Output columns of f and of g on the shared ``m.x``; aligned layers (same shapes) are coupled."""
    pf = pg = m.x
    bf = bg = (lo, hi)
    for k, ((Wf, cf, rf), (Wg, cg, rg)) in enumerate(zip(f_layers, g_layers)):
        first = k == 0  # on the box, interval bounds of the first layer are exact: no LP needed
        zf, hf, zbf, bf = _layer(m, Wf, cf, pf, *bf, rf, lp_bounds and not first)
        zg, hg, zbg, bg = _layer(m, Wg, cg, pg, *bg, rg, lp_bounds and not first)
        if rf and rg and Wf.shape == Wg.shape:
            n = _couple(m, zf, zg, hf, hg, zbf, zbg, lp_bounds)
            say(f"  MILP layer {k}: {len(m.binaries)} binaries so far, {n} pairs coupled")
        pf, pg = (hf if rf else zf), (hg if rg else zg)
    return pf, pg


def dense_layers(net) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """``(W, b, relu)`` per layer of a lumpver chain Network with the identity input map, float64."""
    scale, shift = net.input_affine()
    if not (np.all(scale == 1) and np.all(shift == 0)):
        raise ValueError("input normalisation is not supported by this reference")
    out = []
    for layer in net.layers:
        if layer.activation not in ("relu", "identity"):
            raise ValueError(f"activation {layer.activation}")
        out.append((np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64), layer.activation == "relu"))
    return out


def exact_linf_max(f_layers, g_layers, lo: np.ndarray, hi: np.ndarray, time_limit: float = 60.0,
                   lp_bounds: bool = True, say=print) -> ExactMax:
    """``max_x ||f(x) - g(x)||_inf`` over ``[lo, hi]`` (module docstring); ``time_limit`` per row."""
    t0 = time.perf_counter()
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    m = _Model(lo, hi)
    yf, yg = _encode_pair(m, f_layers, g_layers, lo, hi, lp_bounds, say)
    k = len(yf)
    outs = np.concatenate([yf, yg])
    objs = [(np.array([yf[r % k], yg[r % k]]), (1.0 if r < k else -1.0) * np.array([1.0, -1.0])) for r in range(2 * k)]
    relax = [m.optimise(c, v, True)[0] for c, v in objs]
    say(f"  MILP: {len(m.binaries)} binaries, LP relaxation max {max(r for r in relax if r is not None):.4g} "
        f"({time.perf_counter() - t0:.0f} s)")
    m.h.changeColsIntegrality(len(m.binaries), np.array(m.binaries, np.int32),
                              np.array([highspy.HighsVarType.kInteger] * len(m.binaries)))
    m.h.setOptionValue("time_limit", float(time_limit))
    m.h.setOptionValue("mip_rel_gap", 1e-6)
    best, dual, arg, x, status, cut = -np.inf, -np.inf, -1, lo.copy(), [], None
    for r in np.argsort([-(v if v is not None else np.inf) for v in relax]):
        c, v = objs[r]
        if best > -np.inf:  # this row must beat the best so far
            if cut is None:
                m.rows([-INF], [INF], [c], [v])
                cut = m.h.getNumRow() - 1
            for col in outs:
                m.h.changeCoeff(cut, int(col), 0.0)
            for col, a in zip(c, v):
                m.h.changeCoeff(cut, int(col), float(a))
            m.h.changeRowBounds(cut, float(best), INF)
        _, sol = m.optimise(c, v, True)
        st, info = m.h.getModelStatus(), m.h.getInfo()
        if st == highspy.HighsModelStatus.kInfeasible:
            status.append(f"row {r}: <= {best:.4g}")
            continue
        db = info.mip_dual_bound if np.isfinite(info.mip_dual_bound) else np.inf
        dual = max(dual, db)
        pv = info.objective_function_value if info.primal_solution_status == 2 else -np.inf
        status.append(f"row {r}: {pv:.4g} (dual {db:.4g}, {m.h.modelStatusToString(st)})")
        if pv > best:
            best, arg, x = pv, int(r), sol[m.x].copy()
    return ExactMax(best, max(dual, best), arg, x, status, time.perf_counter() - t0, len(m.binaries))
