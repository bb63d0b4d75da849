"""LP finisher of the input-splitting search: a small complete branch and bound over ReLU phases inside
one input box, every node bounded by a linear program (DESIGN.md §3 LP tightening, §11 branch and bound).

For a box with intermediate bounds ``zl, zu`` (sound: from the batched CROWN pass) and the unsafe
disjunct ``A y <= b`` of a ReLU chain, :func:`finish`

1. optionally (``tighten_first``) tightens the bounds of the unstable neurons of layers ``1 ..`` by LP,
   layer after layer (the triangle relaxation of the earlier layers, each value made sound through the
   solver's dual; on ACAS Xu's deep boxes two LPs per neuron cost more than the splits they saved);
2. bounds the *elastic* LP ``min s  s.t.  A_all v - s <= b_all`` over ``v = [x, h_0, .., h_{L-2}]``
   (the rows of the relaxation, the ReLU phase fixes and the property rows ``A y - b``, each relaxed
   by ``s``) from below through its dual (:func:`lumpver.bounds.region.dual_bound`), all nodes of a box in one
   persistent, warm-started HiGHS model (:class:`BoxLp`, ``highspy``: 12 -> 2.4 ms per LP on ACAS Xu's deep
   boxes, bench/RESULTS.md); :func:`finish_many` steps the boxes of a round together (their phase
   children's CROWN in one batch per layer) and starts each box's first LP from the optimal basis of the
   nearest box already solved (:class:`_Donors`). A sound value ``> 0`` proves that no ``x`` of the box reaches the disjunct
   under the node's phase fixes: a point reaching it satisfies every row with ``s = 0``. An infeasible LP
   closes only through the solver's dual ray re-checked by the same function (a Farkas certificate in
   outward-rounded arithmetic), never on the solver's word;
3. splits the open node's unstable neuron with the largest relaxation gap ``h - relu(z)`` at the LP
   optimum (earliest layer on ties) into ``z <= 0`` and ``z >= 0``; the children's later layers are
   re-bounded by CROWN (:func:`lumpver.bounds.batched.layer_bounds`, intersected with the parent's);
   a node without unstable neurons is exact, and its LP point is a counterexample candidate.

The search gives up (``closed = False``) after ``budget`` LPs: the caller keeps splitting the box.
Only ReLU hidden layers and an identity output layer are handled (:meth:`LpNet.of` is None otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lumpver.bounds.batched import infeasible, layer_bounds
from lumpver.bounds.engine import Chain
from lumpver.bounds.highs_model import silent_highs, solve_sound
from lumpver.bounds.lp import sum_pad
from lumpver.bounds.region import dual_bound, lp_solve_sound

#: upper bound of the elastic variable ``s`` (any finite value: the LP is a relaxation for every s range
#: containing 0; too small only makes an LP infeasible, which leaves the node open)
S_MAX = 1e4
_KEY = 1 << 20  # column and row ids: input i, post-activation KEY + g, pre-activation 2 KEY + g, s / property 3 KEY
_STATUS: list = []  # highspy.HighsBasisStatus by value (filled on first use)


@dataclass
class LpNet:
    """The chain's affine maps as dense float64 matrices; layer 0 composed with the input ops, so the
    LP's first variables are the raw input ``x``."""

    W: list[np.ndarray]
    b: list[np.ndarray]

    @classmethod
    def of(cls, chain: Chain) -> Optional["LpNet"]:
        if any(a != "relu" for a in chain.acts[:-1]) or chain.acts[-1] != "identity":
            return None
        scale, shift = chain.input.op.forward(np.ones((1, chain.input.op.in_features)))[0], chain.input.bias
        W = [s.op.dense().astype(np.float64) for s in chain.steps]
        b = [np.asarray(s.bias, dtype=np.float64) for s in chain.steps]
        b[0] = b[0] + W[0] @ shift
        W[0] = W[0] * scale
        return cls(W, b)

    @property
    def hidden(self) -> int:
        return len(self.W) - 1


@dataclass
class Node:
    """One phase combination of the box: pre-activation bounds and phases (+1 / -1 fixed, 0 free) of the
    hidden layers."""

    zl: list[np.ndarray]
    zu: list[np.ndarray]
    phase: list[np.ndarray]


@dataclass
class FinishResult:
    """``closed``: every node's sound elastic bound was > 0 (the disjunct is excluded on the box);
    ``bound``: the smallest sound bound over the closed leaves (> 0 when closed); ``candidates``: LP
    points of exact leaves (to replay); ``lps``: LPs solved."""

    closed: bool
    bound: float = -np.inf
    lps: int = 0
    nodes: int = 0
    candidates: list[np.ndarray] = field(default_factory=list)


def _active(node: Node, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks of layer k: identity (h = z), unstable (triangle), zero (h = 0), split-inactive (z <= 0 row)."""
    l, u, p = node.zl[k], node.zu[k], node.phase[k]
    zero = (u <= 0) | (p < 0)
    ident = ~zero & ((l >= 0) | (p > 0))
    tri = ~zero & ~ident
    return ident, tri, zero, (p < 0) & (u > 0)


@dataclass
class Layout:
    """The LP's variables ``v = [x, h_0[live_0], .., h_{K-1}[live_{K-1}]]``: neurons fixed to 0 are left out."""

    live: list[np.ndarray]  # per layer, indices of the neurons with a variable
    offs: np.ndarray  # start of each block (x first)

    @classmethod
    def of(cls, node: Node, n_in: int, upto: int) -> "Layout":
        live = [np.flatnonzero(~_active(node, k)[2]) for k in range(upto)]
        return cls(live, np.cumsum([0, n_in] + [i.size for i in live]))

    def prev(self, net: LpNet, k: int) -> np.ndarray:
        """Layer k's weights on the variables of the block before it."""
        return net.W[k] if k == 0 else net.W[k][:, self.live[k - 1]]


def system(net: LpNet, lo: np.ndarray, hi: np.ndarray, node: Node, upto: int):
    """Rows ``A v <= b`` and bounds of the variables (:class:`Layout`) of layers ``< upto``: per neuron its
    relaxation (identity: two rows; triangle: ``h >= z`` and ``h <= u (z - l) / (u - l)``; fixed to 0: no
    variable, and the row ``z <= 0`` when split there); ``h in [max(l, 0), max(u, 0)]``."""
    from scipy import sparse  # solver: imported where used

    lay = Layout.of(node, lo.size, upto)
    offs = lay.offs
    rows, rhs = [], []
    for k in range(upto):
        W, b = lay.prev(net, k), net.b[k]
        ident, tri, _, cut = _active(node, k)
        l, u = node.zl[k], node.zu[k]
        eye = np.eye(net.W[k].shape[0])[:, lay.live[k]]
        s = np.where(tri, u / np.where(tri, u - l, 1.0), 0.0)
        blocks = [(-W[ident], eye[ident], b[ident]), (W[ident], -eye[ident], -b[ident]),  # h = z
                  (W[tri], -eye[tri], -b[tri]),  # h >= z
                  (-s[tri, None] * W[tri], eye[tri], s[tri] * (b[tri] - l[tri])),  # h <= s (z - l)
                  (W[cut], 0 * eye[cut], -b[cut])]  # z <= 0
        for wp, wh, c in blocks:
            if c.size:
                left = np.zeros((c.size, offs[k + 1]))  # x, h_0 .. h_{k-1}: W acts on the last block
                left[:, offs[k]:] = wp
                right = np.zeros((c.size, offs[-1] - offs[k + 2]))
                rows.append(np.hstack([left, wh, right]))
                rhs.append(c)
    A = sparse.csr_matrix(np.vstack(rows)) if rows else sparse.csr_matrix((0, offs[-1]))
    lb = np.concatenate([lo] + [np.maximum(node.zl[k], 0.0)[lay.live[k]] for k in range(upto)])
    ub = np.concatenate([hi] + [np.maximum(node.zu[k], 0.0)[lay.live[k]] for k in range(upto)])
    return A, (np.concatenate(rhs) if rhs else np.zeros(0)), lb, ub, lay


def tighten(net: LpNet, lo: np.ndarray, hi: np.ndarray, node: Node) -> int:
    """LP bounds of the free unstable neurons of layers ``1 .. L-2`` (in place, intersected); returns the
    number of LPs. An infeasible LP leaves the bound as it was (the elastic test decides the node)."""
    from scipy.optimize import linprog  # solver: imported where used

    n_lp = 0
    for k in range(1, net.hidden):
        todo = np.flatnonzero((node.zl[k] < 0) & (node.zu[k] > 0) & (node.phase[k] == 0))
        if todo.size == 0:
            continue
        A, b, lb, ub, lay = system(net, lo, hi, node, k)
        W = lay.prev(net, k)
        for i in todo:
            c = np.zeros(A.shape[1])
            c[lay.offs[k]:] = W[i]
            bias = net.b[k][i]
            low = lp_solve_sound(linprog, c, A, b, lb, ub)[0]
            up = lp_solve_sound(linprog, -c, A, b, lb, ub)[0]
            n_lp += 2
            if low is not None:
                node.zl[k][i] = max(node.zl[k][i], low + bias - sum_pad(low, bias))
            if up is not None:
                node.zu[k][i] = min(node.zu[k][i], -up + bias + sum_pad(up, bias))
    return n_lp


def elastic(net: LpNet, lo: np.ndarray, hi: np.ndarray, node: Node, A_prop: np.ndarray, b_prop: np.ndarray):
    """Sound lower bound of the elastic LP (module docstring, step 2) and its primal point (a hint)."""
    from scipy import sparse  # solver: imported where used
    from scipy.optimize import linprog

    A, b, lb, ub, lay = system(net, lo, hi, node, net.hidden)
    out_w = A_prop @ lay.prev(net, net.hidden)  # property rows over h_{L-2}
    prop = np.hstack([np.zeros((A_prop.shape[0], A.shape[1] - out_w.shape[1])), out_w])
    A = sparse.vstack([A, sparse.csr_matrix(prop)]).tocsr()
    b = np.concatenate([b, b_prop - A_prop @ net.b[-1]])
    A = sparse.hstack([A, sparse.csr_matrix(-np.ones((A.shape[0], 1)))]).tocsr()
    c = np.zeros(A.shape[1])
    c[-1] = 1.0
    val, v = lp_solve_sound(linprog, c, A, b, np.append(lb, -1.0), np.append(ub, S_MAX))
    return val, lay, v


def _coo(rows: list, cols: list, vals: list, r: np.ndarray, c: np.ndarray, v) -> None:
    """Append the triplets ``(r, c, v)`` (``v`` a scalar or an array of ``r``'s size, row-major)."""
    r = np.asarray(r).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    rows.append(r)
    cols.append(np.asarray(c).ravel())
    vals.append(np.full(r.size, v[0]) if v.size == 1 else v)


@dataclass
class BoxLp:
    """A persistent HiGHS model (``highspy``) of the elastic LP of one box (module docstring, step 2), kept
    across the box's phase nodes: loading a node changes column bounds, row bounds and one coefficient per
    changed unstable neuron, and the dual simplex restarts from the parent's basis.

    Neurons dead on the box (``u <= 0`` at the root) have no column. Columns: ``x``, one post-activation
    ``p`` per live neuron (``p = z`` for the neurons active on the whole box) and a pre-activation ``z`` per
    neuron unstable at the root, then ``s``. Rows: ``pre - W p_prev = b`` (exact), and, relaxed by ``s``, for the
    root-unstable neurons ``z - h <= 0`` and ``h - a z <= r`` (the triangle's chord; ``h <= z`` once ``l >= 0``,
    ``h <= 0`` once ``u <= 0``; ``a`` and ``r`` rounded up so that the row holds at every real point), and the
    property rows; bounds ``z in [l, u]``, ``h in [max(l, 0), max(u, 0)]``, ``p in [l, u]`` when active.
    A node is only its bounds: a phase fix sets ``zu = 0`` or ``zl = 0``. Soundness: the value through
    :func:`lumpver.bounds.region.dual_bound` on the same rows written ``A_ub v <= b_ub`` (each equality twice,
    its multiplier split by sign); an infeasible LP closes only through its dual ray checked the same way
    (Farkas)."""

    model: object
    A_ub: np.ndarray  # dense [EQ; -EQ; R1; R2; P] (small: dense products beat scipy's sparse overhead here)
    b_ub: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    n_eq: int
    live: np.ndarray  # flat indices of the live neurons
    unst: np.ndarray  # flat indices of the root-unstable neurons
    p_col: np.ndarray  # per flat neuron its post-activation column (-1: dead)
    z_col: np.ndarray  # per root-unstable neuron (in ``unst`` order) its z column
    l: np.ndarray  # bounds loaded in the model, flat over the hidden neurons
    u: np.ndarray
    col_key: np.ndarray = None  # sorted ids of the columns and rows across boxes (:meth:`basis_from`)
    row_key: np.ndarray = None
    cost: np.ndarray = None  # min s (:meth:`solve`)

    @classmethod
    def of(cls, net: LpNet, lo: np.ndarray, hi: np.ndarray, root: Node, A_prop: np.ndarray,
           b_prop: np.ndarray) -> Optional["BoxLp"]:
        """The model for the box, None when a live neuron's root bound is not finite."""
        l0, u0 = np.concatenate(root.zl), np.concatenate(root.zu)
        live, unst = np.flatnonzero(u0 > 0), np.flatnonzero((u0 > 0) & (l0 < 0))
        if not (np.all(np.isfinite(l0[live])) and np.all(np.isfinite(u0[live]))):
            return None
        n_in, H, nu, m = lo.size, l0.size, unst.size, A_prop.shape[0]
        p_col = np.full(H, -1)
        p_col[live] = n_in + np.arange(live.size)
        z_col = n_in + live.size + np.arange(nu)
        pre = p_col.copy()
        pre[unst] = z_col
        cs, ends = n_in + live.size + nu, np.cumsum([0] + [w.shape[0] for w in net.W[:-1]])
        n_eq, t = live.size, np.arange(nu)
        A = np.zeros((n_eq + 2 * nu + m, cs + 1))
        row_of = np.full(H, -1)
        row_of[live] = np.arange(n_eq)
        for k in range(net.hidden):  # EQ rows: pre - W p_prev = b
            g = live[(live >= ends[k]) & (live < ends[k + 1])]
            W = net.W[k][g - ends[k]]
            if k == 0:
                pc = np.arange(n_in)
            else:
                prev = live[(live >= ends[k - 1]) & (live < ends[k])]
                W, pc = W[:, prev - ends[k - 1]], p_col[prev]
            A[row_of[g], pre[g]] = 1.0
            A[np.ix_(row_of[g], pc)] = -W
        A[n_eq + t, z_col], A[n_eq + t, p_col[unst]] = 1.0, -1.0  # R1: z - h - s <= 0
        A[n_eq + nu + t, p_col[unst]], A[n_eq + nu + t, z_col] = 1.0, -1.0  # R2: h - a z - s <= r
        last = live[live >= ends[-2]]
        A[np.ix_(n_eq + 2 * nu + np.arange(m), p_col[last])] = (A_prop @ net.W[-1])[:, last - ends[-2]]  # P
        A[n_eq:, cs] = -1.0  # P: (A W_L) h_{L-1} - s <= b - A b_L
        b_eq = np.concatenate(net.b[:-1])[live]
        A_ub = np.vstack([A[:n_eq], -A[:n_eq], A[n_eq:]])
        b_ub = np.concatenate([b_eq, -b_eq, np.zeros(2 * nu), b_prop - A_prop @ net.b[-1]])
        lb, ub = np.concatenate([lo, np.zeros(cs - n_in), [-1.0]]), np.concatenate([hi, np.zeros(cs - n_in), [S_MAX]])
        box = cls(None, A_ub, b_ub, lb, ub, n_eq, live, unst, p_col, z_col, np.full(H, np.nan), np.full(H, np.nan))
        box._mirror(root)  # the root's bounds and chords go into the model as it is built
        box.col_key = np.concatenate([np.arange(n_in), _KEY + live, 2 * _KEY + unst, [3 * _KEY]])
        box.row_key = np.concatenate([live, _KEY + unst, 2 * _KEY + unst, 3 * _KEY + np.arange(m)])
        rows = np.r_[0:n_eq, 2 * n_eq:A_ub.shape[0]]
        box.model = _pass(A_ub[rows], b_ub[:n_eq], b_ub[2 * n_eq:], box.lb, box.ub, cs)
        return box

    def _mirror(self, node: Node) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Set the numpy copy of the LP (``A_ub, b_ub, lb, ub``) to the node's bounds, only where they changed:
        the changed columns, the changed chord rows (indices into ``unst``), their slopes and right-hand
        sides; None when nothing changed."""
        l, u = np.concatenate(node.zl), np.concatenate(node.zu)
        changed = ~((l == self.l) & (u == self.u))
        self.l[changed], self.u[changed] = l[changed], u[changed]
        g = self.live[changed[self.live]]
        if g.size == 0:
            return None
        c = self.p_col[g]
        self.lb[c], self.ub[c] = np.maximum(l[g], 0.0), np.maximum(u[g], 0.0)
        t = np.flatnonzero(changed[self.unst])
        lj, uj, zc = l[self.unst[t]], u[self.unst[t]], self.z_col[t]
        self.lb[zc], self.ub[zc] = lj, uj
        tri = (lj < 0) & (uj > 0)
        a = np.where(tri, uj / np.where(tri, uj - lj, 1.0), np.where(lj >= 0, 1.0, 0.0))
        a = np.where(tri, np.nextafter(a * (1.0 + 1e-15), np.inf), a)  # above the real slope: the chord stays valid
        r = np.where(tri, np.nextafter(-a * lj, np.inf), 0.0)
        nu = self.unst.size
        self.A_ub[2 * self.n_eq + nu + t, zc] = -a
        self.b_ub[2 * self.n_eq + nu + t] = r
        return np.concatenate([c, zc]), t, a, r

    def load(self, node: Node) -> None:
        """Set the model's bounds (and chord rows) to the node's, only where they changed."""
        import highspy  # solver: imported where used

        change = self._mirror(node)
        if change is None:
            return
        cols, t, a, r = change
        h, rows = self.model, self.n_eq + self.unst.size + t
        h.changeColsBounds(cols.size, cols, self.lb[cols], self.ub[cols])
        h.changeRowsBounds(t.size, rows, np.full(t.size, -highspy.kHighsInf), r)
        for row, col, aj in zip(rows.tolist(), self.z_col[t].tolist(), (-a).tolist()):
            h.changeCoeff(row, col, aj)

    def _bound(self, c: np.ndarray, y: np.ndarray) -> Optional[float]:
        """dual_bound for HiGHS row multipliers ``y`` (equality multipliers split by sign)."""
        e = self.n_eq
        marg = np.concatenate([np.minimum(y[:e], 0.0), np.minimum(-y[:e], 0.0), y[e:]])
        return dual_bound(c, self.A_ub, self.b_ub, self.lb, self.ub, marg)

    def basis_from(self, donor: "BoxLp", status: tuple[np.ndarray, np.ndarray]) -> object:
        """A starting basis for this box's first LP from another box's (an *alien* basis, which HiGHS repairs
        to a valid one): statuses copied for the columns and rows both models have (same input, neuron or
        property row), new columns at their lower bound, new rows basic. ``status``: the donor basis's column
        and row statuses as integers (:func:`basis_codes`). Only the simplex's start: the bound is the dual
        check's, whatever the basis."""
        import highspy  # solver: imported where used

        if not _STATUS:
            _STATUS.extend(sorted(highspy.HighsBasisStatus.__members__.values(), key=int))
        enums = np.array(_STATUS, dtype=object)

        def mapped(mine, theirs, codes, default):
            out = np.full(mine.size, default)
            pos = np.minimum(np.searchsorted(theirs, mine), theirs.size - 1)
            hit = theirs[pos] == mine
            out[hit] = codes[pos[hit]]
            return enums[out].tolist()

        b = highspy.HighsBasis()
        b.col_status = mapped(self.col_key, donor.col_key, status[0], 0)
        b.row_status = mapped(self.row_key, donor.row_key, status[1], 1)
        b.valid, b.alien = True, True
        return b

    def solve(self, basis=None):
        """Sound lower bound of the loaded node's elastic LP (``inf`` for a Farkas-certified empty node), its
        primal point (a hint) and basis; None for the bound and point when the solver gives neither
        (:func:`lumpver.bounds.highs_model.solve_sound`)."""
        if self.cost is None:
            self.cost = np.eye(1, self.lb.size, self.lb.size - 1).ravel()  # min s (the last column)
        r = solve_sound(self.model, self.cost, self._bound, basis)
        return r.value, r.x, r.basis


def basis_codes(basis) -> tuple[np.ndarray, np.ndarray]:
    """A HiGHS basis's column and row statuses as integer arrays (for :meth:`BoxLp.basis_from`)."""
    return (np.fromiter(map(int, basis.col_status), dtype=np.int64),
            np.fromiter(map(int, basis.row_status), dtype=np.int64))


def _pass(A, b_eq: np.ndarray, b_le: np.ndarray, lb: np.ndarray, ub: np.ndarray, cs: int):
    """A silent HiGHS model of ``min v_cs`` over the rows ``A`` (dense; the first ``b_eq.size`` equalities, the
    rest ``<= b_le``) and the column bounds, passed as arrays (a ``HighsLp`` filled field by field cost 0.4 ms
    more per box)."""
    import highspy  # solver: imported where used

    h, (m, n) = silent_highs(), A.shape
    AT = A.T
    nz = AT != 0  # column-wise nonzeros of the dense matrix
    start = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int32)
    index, value = np.nonzero(nz)[1].astype(np.int32), AT[nz]
    h.passModel(n, m, value.size, int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMinimize), 0.0,
                np.eye(1, n, cs).ravel(), lb, ub, np.concatenate([b_eq, np.full(b_le.size, -highspy.kHighsInf)]),
                np.concatenate([b_eq, b_le]), start, index, value, np.zeros(n, dtype=np.int32))  # all continuous
    return h


def _children(chain: Chain, lo: np.ndarray, hi: np.ndarray, node: Node, k: int, i: int) -> list[Node]:
    """The two phases of neuron (k, i) (:func:`_children_batch` of one request)."""
    return _children_batch(chain, [(lo, hi, node, k, i)])[0]


def _children_batch(chain: Chain, reqs: list[tuple[np.ndarray, np.ndarray, Node, int, int]]) -> list[list[Node]]:
    """Per request ``(lo, hi, node, k, i)`` the two phases of neuron (k, i) of the node, later layers re-bounded
    by CROWN, all requests splitting in layer ``k`` in one batch (the boxes of :func:`finish_many` step
    together: one ``layer_bounds`` call per layer instead of one per pair); empty children (crossing sound
    bounds) dropped."""
    out: list[list[Node]] = [[] for _ in reqs]
    n_out = chain.steps[-1].op.out_features
    for k in sorted({r[3] for r in reqs}):
        idx = [j for j, r in enumerate(reqs) if r[3] == k]
        zl = [np.repeat(np.stack([reqs[j][2].zl[q] for j in idx]), 2, axis=0) for q in range(len(reqs[idx[0]][2].zl))]
        zu = [np.repeat(np.stack([reqs[j][2].zu[q] for j in idx]), 2, axis=0) for q in range(len(zl))]
        rows, cols = np.arange(2 * len(idx)), np.repeat([reqs[j][4] for j in idx], 2)
        zu[k][rows[0::2], cols[0::2]], zl[k][rows[1::2], cols[1::2]] = 0.0, 0.0  # z <= 0, z >= 0
        lo = np.repeat(np.stack([reqs[j][0] for j in idx]), 2, axis=0)
        hi = np.repeat(np.stack([reqs[j][1] for j in idx]), 2, axis=0)
        B = lo.shape[0]
        nl, nu = layer_bounds(chain, lo, hi, zl + [np.full((B, n_out), -np.inf)], zu + [np.full((B, n_out), np.inf)],
                              k + 1, output=False)  # the output layer's bounds are not kept
        empty = infeasible(nl, nu)
        for n, j in enumerate(idx):
            node, i = reqs[j][2], reqs[j][4]
            for c, sign in ((2 * n, -1.0), (2 * n + 1, 1.0)):
                if empty[c]:
                    continue
                ph = [a.copy() for a in node.phase]
                ph[k][i] = sign
                out[j].append(Node([a[c] for a in nl[:-1]], [a[c] for a in nu[:-1]], ph))
    return out


def _branch_point(box: BoxLp, node: Node, v: np.ndarray) -> Optional[tuple[int, int]]:
    """The free unstable neuron with the largest gap ``h - relu(z)`` at the LP point (earliest on ties);
    None when no neuron is free."""
    l, u = np.concatenate(node.zl)[box.unst], np.concatenate(node.zu)[box.unst]
    free = (l < 0) & (u > 0)
    if not np.any(free):
        return None
    z, h = v[box.z_col], v[box.p_col[box.unst]]
    g = int(box.unst[int(np.argmax(np.where(free, h - np.maximum(z, 0.0), -np.inf)))])
    ends = np.cumsum([a.size for a in node.zl])
    k = int(np.searchsorted(ends, g, side="right"))
    return k, g - (int(ends[k - 1]) if k else 0)


@dataclass
class _Donors:
    """Boxes whose root LP was solved, with their optimal bases: a box's root LP starts from the basis of the
    nearest one (centres, in units of the new box's widths): 1.4 -> 1.0 ms per LP on ACAS Xu's deep boxes."""

    centres: list = field(default_factory=list)
    boxes: list = field(default_factory=list)

    def add(self, lo: np.ndarray, hi: np.ndarray, box: BoxLp, basis) -> None:
        self.centres.append(0.5 * (lo + hi))
        self.boxes.append([box, basis])

    def nearest(self, lo: np.ndarray, hi: np.ndarray) -> tuple:
        """The nearest donor and its basis as :func:`basis_codes` (converted once, on first use)."""
        d = np.abs(np.array(self.centres) - 0.5 * (lo + hi)) / np.maximum(hi - lo, 1e-12)
        entry = self.boxes[int(np.argmin(d.sum(axis=1)))]
        if not isinstance(entry[1], tuple):
            entry[1] = basis_codes(entry[1])
        return entry[0], entry[1]


@dataclass
class _Run:
    """One box's LP branch and bound in progress (:func:`finish_many`): its model, its depth-first stack of
    ``(node, parent basis)`` and its result so far (``done``: decided or given up)."""

    lo: np.ndarray
    hi: np.ndarray
    box: Optional[BoxLp]
    stack: list
    out: FinishResult
    done: bool = False

    @classmethod
    def start(cls, net: LpNet, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
              A_prop: np.ndarray, b_prop: np.ndarray, tighten_first: bool) -> "_Run":
        root = Node([np.array(a, dtype=np.float64) for a in zl[:-1]],
                    [np.array(a, dtype=np.float64) for a in zu[:-1]], [np.zeros(a.shape) for a in zl[:-1]])
        run = cls(lo, hi, None, [(root, None)], FinishResult(closed=False, bound=np.inf))
        if tighten_first:
            run.out.lps += tighten(net, lo, hi, root)
        if any(np.any(l > u) for l, u in zip(root.zl, root.zu)):
            run.stack = []  # crossing sound bounds: the box holds no input
            return run.end(True)
        run.box = BoxLp.of(net, lo, hi, root, A_prop, b_prop)
        return run if run.box is not None else run.end(False)

    def end(self, closed: bool) -> "_Run":
        self.done, self.out.closed = True, closed
        if not closed:
            self.out.bound = -np.inf
        return self

    def step(self, budget: int, donors: "_Donors") -> Optional[tuple[Node, int, int, object]]:
        """Solve nodes depth first until one needs children: ``(node, k, i, basis)`` to split neuron (k, i);
        None once the run is done (closed: the stack ran empty; open: budget, solver failure, exact leaf).
        ``donors``: the boxes whose root LP was solved, the nearest one's basis starts this box's root LP."""
        while self.stack:
            if self.out.lps >= budget:
                self.end(False)
                return None
            node, basis = self.stack.pop()  # not empty by bounds: the root checked in start, children by
            self.out.nodes += 1  # _children_batch
            self.box.load(node)
            root = basis is None
            if root and donors.boxes:
                basis = self.box.basis_from(*donors.nearest(self.lo, self.hi))
            val, v, basis = self.box.solve(basis)
            if root and basis is not None:
                donors.add(self.lo, self.hi, self.box, basis)
            self.out.lps += 1
            if val is not None and val > 0:
                self.out.bound = min(self.out.bound, val)
                continue
            if v is None or basis is None:
                self.end(False)  # the solver failed: leave the box to the input splitting
                return None
            arg = _branch_point(self.box, node, v)
            if arg is None:  # exact: the LP point is an input reaching the disjunct (up to rounding)
                self.out.candidates.append(np.clip(v[:self.lo.size], self.lo, self.hi))
                self.end(False)
                return None
            return node, arg[0], arg[1], basis
        self.end(True)
        return None


def finish_many(chain: Chain, net: LpNet, boxes: list[tuple[np.ndarray, np.ndarray, list, list]],
                A_prop: np.ndarray, b_prop: np.ndarray, budget: int, tighten_first: bool = False) -> list[FinishResult]:
    """:func:`finish` on each box ``(lo, hi, zl, zu)``, the boxes stepping together: each round every open box
    solves nodes until one needs children, and the children of all boxes are bounded in one CROWN batch per
    layer (each box's nodes, LPs and result are those of :func:`finish` alone)."""
    runs = [_Run.start(net, np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64), zl, zu,
                       A_prop, b_prop, tighten_first) for lo, hi, zl, zu in boxes]
    active, donors = [r for r in runs if not r.done], _Donors()
    while active:
        want = [(r, r.step(budget, donors)) for r in active]
        want = [(r, w) for r, w in want if w is not None]
        kids = _children_batch(chain, [(r.lo, r.hi, node, k, i) for r, (node, k, i, _) in want])
        for (r, w), ks in zip(want, kids):
            r.stack.extend((kid, w[3]) for kid in ks)
        active = [r for r, _ in want]
    return [r.out for r in runs]


def finish(chain: Chain, net: LpNet, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
           A_prop: np.ndarray, b_prop: np.ndarray, budget: int, tighten_first: bool = False) -> FinishResult:
    """Decide the disjunct ``A_prop y <= b_prop`` on the box by LP branch and bound (module docstring), every
    node's LP solved in one persistent, warm-started model (:class:`BoxLp`). ``zl, zu``: sound pre-activation
    bounds of every layer (the output layer's are ignored)."""
    return finish_many(chain, net, [(lo, hi, zl, zu)], A_prop, b_prop, budget, tighten_first)[0]
