"""LP finisher of the input-splitting search: a small complete branch and bound over ReLU phases inside
one input box, every node bounded by a linear program (DESIGN.md §3 LP tightening, §11 branch and bound).

For a box with intermediate bounds ``zl, zu`` (sound: from the batched CROWN pass) and the unsafe
disjunct ``A y <= b`` of a ReLU chain, :func:`finish`

1. optionally (``tighten_first``) tightens the bounds of the unstable neurons of layers ``1 ..`` by LP,
   layer after layer (the triangle relaxation of the earlier layers, each value made sound through the
   solver's dual; on ACAS Xu's deep boxes two LPs per neuron cost more than the splits they saved);
2. bounds the *elastic* LP ``min s  s.t.  A_all v - s <= b_all`` over ``v = [x, h_0, .., h_{L-2}]``
   (the rows of the relaxation, the ReLU phase fixes and the property rows ``A y - b``, each relaxed
   by ``s``) from below through its dual (:func:`lumpver.bounds.region.lp_solve_sound`). A sound
   value ``> 0`` proves that no ``x`` of the box reaches the disjunct under the node's phase fixes: a
   point reaching it satisfies every row with ``s = 0``. The multipliers are a Farkas certificate of
   the emptiness of ``A_all v <= b_all``, re-checked in outward-rounded arithmetic, so infeasible
   phase combinations close by the same test and never on the solver's word;
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
from lumpver.bounds.lp import sum_pad
from lumpver.bounds.region import lp_solve_sound

#: upper bound of the elastic variable ``s`` (any finite value: the LP is a relaxation for every s range
#: containing 0; too small only makes an LP infeasible, which leaves the node open)
S_MAX = 1e4


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


def _branch(net: LpNet, node: Node, lay: Layout, v: np.ndarray) -> Optional[tuple[int, int]]:
    """The free unstable neuron with the largest gap ``h - relu(z)`` at the LP point (earliest layer on
    ties); None when no neuron is free."""
    best, arg, prev = -1.0, None, v[:lay.offs[1]]
    for k in range(net.hidden):
        h = np.zeros(net.W[k].shape[0])
        h[lay.live[k]] = v[lay.offs[k + 1]:lay.offs[k + 2]]
        z = lay.prev(net, k) @ prev + net.b[k]
        prev = h[lay.live[k]]
        free = (node.zl[k] < 0) & (node.zu[k] > 0) & (node.phase[k] == 0)
        if np.any(free):
            gap = np.where(free, h - np.maximum(z, 0.0), -np.inf)
            i = int(np.argmax(gap))
            if gap[i] > best + 1e-9:
                best, arg = float(gap[i]), (k, i)
    return arg


def _children(chain: Chain, lo: np.ndarray, hi: np.ndarray, node: Node, k: int, i: int) -> list[Node]:
    """The two phases of neuron (k, i), later layers re-bounded by CROWN; empty children (crossing sound
    bounds) dropped."""
    kids = []
    for sign in (-1.0, 1.0):
        zl, zu, ph = [a.copy() for a in node.zl], [a.copy() for a in node.zu], [a.copy() for a in node.phase]
        ph[k][i] = sign
        if sign < 0:
            zu[k][i] = 0.0
        else:
            zl[k][i] = 0.0
        full_l = [a[None] for a in zl] + [np.full((1, chain.steps[-1].op.out_features), -np.inf)]
        full_u = [a[None] for a in zu] + [np.full((1, chain.steps[-1].op.out_features), np.inf)]
        nl, nu = layer_bounds(chain, lo[None], hi[None], full_l, full_u, k + 1)
        if infeasible(nl, nu)[0]:
            continue
        kids.append(Node([a[0] for a in nl[:-1]], [a[0] for a in nu[:-1]], ph))
    return kids


def finish(chain: Chain, net: LpNet, lo: np.ndarray, hi: np.ndarray, zl: list[np.ndarray], zu: list[np.ndarray],
           A_prop: np.ndarray, b_prop: np.ndarray, budget: int, tighten_first: bool = False) -> FinishResult:
    """Decide the disjunct ``A_prop y <= b_prop`` on the box by LP branch and bound (module docstring).
    ``zl, zu``: sound pre-activation bounds of every layer (the output layer's are ignored)."""
    root = Node([np.array(a, dtype=np.float64) for a in zl[:-1]], [np.array(a, dtype=np.float64) for a in zu[:-1]],
                [np.zeros(a.shape) for a in zl[:-1]])
    out = FinishResult(closed=False, bound=np.inf)
    if tighten_first:
        out.lps += tighten(net, lo, hi, root)
    stack = [root]
    while stack:
        if out.lps >= budget:
            out.bound = -np.inf
            return out
        node = stack.pop()
        out.nodes += 1
        if any(np.any(l > u) for l, u in zip(node.zl, node.zu)):
            continue  # crossing sound bounds: no input of the box has these phases
        val, lay, v = elastic(net, lo, hi, node, A_prop, b_prop)
        out.lps += 1
        if val is not None and val > 0:
            out.bound = min(out.bound, val)
            continue
        if v is None:
            out.bound = -np.inf
            return out  # the solver failed: leave the box to the input splitting
        arg = _branch(net, node, lay, v)
        if arg is None:  # exact: the LP point is an input reaching the disjunct (up to rounding)
            out.candidates.append(np.clip(v[:lo.size], lo, hi))
            out.bound = -np.inf
            return out
        stack.extend(_children(chain, lo, hi, node, *arg))
    out.closed = True
    return out
