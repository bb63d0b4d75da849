"""ReLU-phase branch and bound on ``f - g`` inside one input box, every node bounded by a linear
program over both networks (DESIGN.md §3 LP tightening, §5 differential bounds, §11 branch and bound;
issue 14 item 1).

For an aligned pair (:class:`lumpver.bounds.diff_batched.DiffModel` of kind ``delta``: same depth,
ReLU hidden layers, identity output, equal input affine) and a box with sound layer bounds
(:func:`lumpver.bounds.diff_batched.pair_layer_bounds`: f's, g's and ``delta z = z^f - z^g``), the LP
over ``v = [x, h^f_0, h^g_0, h^f_1, h^g_1, ..]`` holds per neuron of each network its phase
(``h = z``; ``h = 0``, with the row ``z <= 0`` when fixed by a split) or its triangle, and per
neuron pair ``j`` whose phases are not both fixed the chords of ``delta h = relu(z^g + dz) -
relu(z^g)`` in ``dz`` (:func:`lumpver.bounds.diff.delta_relax`'s hull: ``delta h`` between
``min(0, dz)`` and ``max(0, dz)``). Each row ``+-(f_r - g_r)`` is bounded from above through HiGHS's
dual (:func:`lumpver.bounds.region.lp_solve_sound`, outward rounded); rows computed in floating point
(triangle and chord slopes, their offsets) are loosened by :data:`SLACK` relative to their magnitude,
so the LP is a relaxation of the pair on the box.

A split fixes the phases of the pair ``(f_j, g_j)`` of one layer jointly: the children are the
combinations ``(p^f, p^g)`` in ``{-, +}^2`` (a neuron already fixed keeps its phase) that are not
strictly empty by the node's bounds (``+`` with ``u < 0``, ``-`` with ``l > 0``, ``(-, +)`` with
``dl > 0``, ``(+, -)`` with ``du < 0``), so the children cover the node. With both phases fixed the
pair's ``delta h`` is linear; with every unstable pair fixed the LP is exact (the maximum of
``f - g`` on the node up to the rounding margin). Rows whose bound is at most the threshold stay
closed in the children (their sets are subsets). The split pair is the one with the largest
relaxation gap at the worst row's LP optimum (earliest layer on ties).

Evidence: the tree in preorder, ``-1`` a leaf, else ``16 * flat + mask`` (``flat`` the pair's index
over the hidden layers, ``mask`` the children kept, bit ``2 a + b`` for ``p^f = (-1, +1)[a]``,
``p^g = (-1, +1)[b]``); :func:`replay` re-bounds it (the checker, :mod:`lumpver.certificates.bounded_bab`).
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lumpver.bounds.diff_batched import DiffModel, PairLayers, Refine, pair_layer_bounds, same_shape
from lumpver.bounds.region import lp_solve_sound
from lumpver.bounds.rounding import add_hi

#: relative loosening of the rows computed in floating point (their float64 error is ~1e-15 relative)
SLACK = 1e-9
#: upper bound of the elastic variable of the emptiness test (any finite value is sound)
S_MAX = 1e4
COMBOS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass
class PairNet:
    """The pair's affine maps as float64 matrices (stored float32 weights: exact), hidden layers then
    the output layer."""

    Wf: list[np.ndarray]
    bf: list[np.ndarray]
    Wg: list[np.ndarray]
    bg: list[np.ndarray]

    @classmethod
    def of(cls, model: DiffModel) -> Optional["PairNet"]:
        """None unless the pair is aligned (or a product of two networks of one shape: retrained copies),
        ReLU then identity, with the identity input map."""
        f, g = model.f, model.g
        if f is None or g is None or not (model.kind == "delta" or (model.kind == "product" and same_shape(model))):
            return None
        if any(a != "relu" for a in f.acts[:-1] + g.acts[:-1]) or f.acts[-1] != "identity" or g.acts[-1] != "identity":
            return None
        for ch in (f, g):
            n = ch.input.op.in_features
            if not (np.array_equal(ch.input.op.forward(np.eye(n)), np.eye(n)) and not np.any(ch.input.bias)):
                return None
        dense = [(s.op.dense().astype(np.float64), np.asarray(s.bias, np.float64)) for s in f.steps]
        gdense = [(s.op.dense().astype(np.float64), np.asarray(s.bias, np.float64)) for s in g.steps]
        return cls([w for w, _ in dense], [b for _, b in dense], [w for w, _ in gdense], [b for _, b in gdense])

    @property
    def widths(self) -> list[int]:
        return [w.shape[0] for w in self.Wf[:-1]]

    def flat(self, k: int, j: int) -> int:
        return int(sum(self.widths[:k]) + j)

    def unflat(self, flat: int) -> tuple[int, int]:
        for k, w in enumerate(self.widths):
            if flat < w:
                return k, flat
            flat -= w
        raise ValueError("pair index beyond the hidden layers")


@dataclass
class Node:
    """Bounds (copies of the box's, clamped by the phases) and phases (+1 / -1 fixed, 0 free)."""

    b: PairLayers
    pf: list[np.ndarray]
    pg: list[np.ndarray]
    rows: np.ndarray  # per row (2m) a sound upper bound of +-(f - g) on the node
    depth: int = 0
    id: int = 0


def root_node(lb: PairLayers, rows: np.ndarray) -> Node:
    """The box as a node (``lb``: one box's bounds, leading batch axis of size one allowed)."""
    sq = [[np.asarray(a, np.float64).reshape(-1).copy() for a in getattr(lb, n)] for n in ("fl", "fu", "gl", "gu", "dl", "du")]
    b = PairLayers(*sq)
    for k in range(len(b.fl)):  # the difference of the two networks' bounds also bounds delta z
        b.dl[k] = np.maximum(b.dl[k], b.fl[k] - b.gu[k] - SLACK * (np.abs(b.fl[k]) + np.abs(b.gu[k])))
        b.du[k] = np.minimum(b.du[k], b.fu[k] - b.gl[k] + SLACK * (np.abs(b.fu[k]) + np.abs(b.gl[k])))
    return Node(b, [np.zeros(a.size) for a in b.fl], [np.zeros(a.size) for a in b.fl], np.asarray(rows, np.float64))


def children(node: Node, k: int, j: int, mask: Optional[int] = None) -> tuple[int, list[Node]]:
    """The kept children of splitting pair ``(k, j)`` (module docstring) and their mask; with ``mask``
    (a checker), ValueError when it omits a child that is not strictly empty."""
    b = node.b
    fl, fu, gl, gu, dl, du = (getattr(b, n)[k][j] for n in ("fl", "fu", "gl", "gu", "dl", "du"))
    empty = {(-1, -1): fl > 0 or gl > 0, (-1, 1): fl > 0 or gu < 0 or dl > 0,
             (1, -1): fu < 0 or gl > 0 or du < 0, (1, 1): fu < 0 or gu < 0}
    keep = 0
    for bit, (a, c) in enumerate(COMBOS):
        fixed = (node.pf[k][j] not in (0, a)) or (node.pg[k][j] not in (0, c))
        if not (empty[(a, c)] or fixed):
            keep |= 1 << bit
    if mask is not None:
        if keep & ~mask:
            raise ValueError(f"phase split of pair ({k}, {j}) omits a child that is not empty")
        keep = mask
    kids = []
    for bit, (a, c) in enumerate(COMBOS):
        if not (keep >> bit) & 1:
            continue
        nb = PairLayers(*[[x.copy() for x in getattr(b, n)] for n in ("fl", "fu", "gl", "gu", "dl", "du")])
        pf, pg = [p.copy() for p in node.pf], [p.copy() for p in node.pg]
        pf[k][j], pg[k][j] = a, c
        for lo, hi, p in ((nb.fl, nb.fu, a), (nb.gl, nb.gu, c)):
            if p > 0:
                lo[k][j] = max(lo[k][j], 0.0)
            else:
                hi[k][j] = min(hi[k][j], 0.0)
        kids.append(Node(nb, pf, pg, node.rows.copy(), node.depth + 1))
    return keep, kids


# ----- the LP ----------------------------------------------------------------------------------
class _Rows:
    """Triplets of the sparse constraint matrix."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.rhs: list[float] = []

    def add(self, cols: np.ndarray, vals: np.ndarray, rhs: float) -> None:
        self.r.append(np.full(cols.size, len(self.rhs)))
        self.c.append(cols)
        self.v.append(vals)
        self.rhs.append(rhs)


def _layout(net: PairNet) -> tuple[list[int], list[int]]:
    """Start of h^f_k and h^g_k in ``v``."""
    n = net.Wf[0].shape[1]
    of, og, at = [], [], n
    for w in net.widths:
        of.append(at)
        og.append(at + w)
        at += 2 * w
    return of, og


def build_lp(net: PairNet, node: Node, lo: np.ndarray, hi: np.ndarray):
    """``A v <= b``, variable bounds and the offsets of the LP of ``node`` (module docstring)."""
    from scipy import sparse  # solver: imported where used

    of, og = _layout(net)
    n = lo.size
    rows = _Rows()
    lbs, ubs = [np.asarray(lo, np.float64)], [np.asarray(hi, np.float64)]
    prev_f = prev_g = np.arange(n)
    mag = float(np.max(np.abs(np.concatenate([lo, hi]))))  # largest |value| of the previous layer's variables
    for k, _w in enumerate(net.widths):
        b = node.b
        hf, hg = of[k] + np.arange(_w), og[k] + np.arange(_w)
        for W, bias, l, u, p, prev, hv in ((net.Wf[k], net.bf[k], b.fl[k], b.fu[k], node.pf[k], prev_f, hf),
                                           (net.Wg[k], net.bg[k], b.gl[k], b.gu[k], node.pg[k], prev_g, hg)):
            _neurons(rows, W, bias, l, u, p, prev, hv, mag)
            lbs.append(np.maximum(l, 0.0))
            ubs.append(np.where((u <= 0) | (p < 0), 0.0, np.maximum(u, 0.0)))
        _chords(rows, net, node, k, prev_f, prev_g, hf, hg, mag)
        prev_f, prev_g = hf, hg
        mag = float(max(np.max(np.maximum(b.fu[k], 0.0), initial=0.0), np.max(np.maximum(b.gu[k], 0.0), initial=0.0)))
    size = og[-1] + net.widths[-1] if net.widths else n
    if rows.rhs:
        A = sparse.csr_matrix((np.concatenate(rows.v), (np.concatenate(rows.r), np.concatenate(rows.c))),
                              shape=(len(rows.rhs), size))
    else:
        A = sparse.csr_matrix((0, size))
    return A, np.array(rows.rhs, dtype=np.float64), np.concatenate(lbs), np.concatenate(ubs), (prev_f, prev_g)


def _neurons(rows: _Rows, W, bias, l, u, p, prev, hv, mag: float) -> None:
    """Per neuron: identity rows, triangle rows, or the split row ``z <= 0`` (h fixed to 0 by its bounds)."""
    zero = (u <= 0) | (p < 0)
    ident = ~zero & ((l >= 0) | (p > 0))
    for j in np.flatnonzero(~zero | (p < 0)):
        nz = np.flatnonzero(W[j])
        cols, w = prev[nz], W[j, nz]
        if zero[j]:  # split inactive, u > 0: z <= 0
            rows.add(cols, w, -bias[j])
        elif ident[j]:  # h = z
            rows.add(np.append(cols, hv[j]), np.append(w, -1.0), -bias[j])
            rows.add(np.append(cols, hv[j]), np.append(-w, 1.0), bias[j])
        else:  # triangle: h >= z, h <= s (z - l)
            s = u[j] / (u[j] - l[j])
            rows.add(np.append(cols, hv[j]), np.append(w, -1.0), -bias[j])
            rhs = s * (bias[j] - l[j])
            slack = SLACK * (abs(rhs) + s * float(np.sum(np.abs(w))) * mag + abs(u[j]) + 1e-300)
            rows.add(np.append(cols, hv[j]), np.append(-s * w, 1.0), rhs + slack)


def _chords(rows: _Rows, net: PairNet, node: Node, k: int, prev_f, prev_g, hf, hg, mag: float) -> None:
    """``delta h`` between ``min(0, dz)`` and ``max(0, dz)`` (chords over ``[dl, du]``) for the pairs whose
    phases are not both fixed or stable."""
    b = node.b
    fixed_f = (node.pf[k] != 0) | (b.fl[k] >= 0) | (b.fu[k] <= 0)
    fixed_g = (node.pg[k] != 0) | (b.gl[k] >= 0) | (b.gu[k] <= 0)
    zero_f, zero_g = (b.fu[k] <= 0) | (node.pf[k] < 0), (b.gu[k] <= 0) | (node.pg[k] < 0)
    Wf, Wg = net.Wf[k], net.Wg[k]
    for j in np.flatnonzero(~(fixed_f & fixed_g)):
        dl, du = float(b.dl[k][j]), float(b.du[k][j])
        if not (np.isfinite(dl) and np.isfinite(du)):
            continue
        nf, ng = np.flatnonzero(Wf[j]), np.flatnonzero(Wg[j])
        zc = np.concatenate([prev_f[nf], prev_g[ng]])  # dz = zw . v + db
        zw = np.concatenate([Wf[j, nf], -Wg[j, ng]])
        hc = np.array([c for c, z in ((hf[j], zero_f[j]), (hg[j], zero_g[j])) if not z], dtype=np.int64)
        hw = np.array([s for s, z in ((1.0, zero_f[j]), (-1.0, zero_g[j])) if not z])
        db = net.bf[k][j] - net.bg[k][j]
        scale = float(np.sum(np.abs(zw))) * mag + abs(net.bf[k][j]) + abs(net.bg[k][j]) + abs(dl) + abs(du)
        if dl >= 0:  # 0 <= dh <= dz
            rows.add(hc, -hw, 0.0)
            rows.add(np.concatenate([hc, zc]), np.concatenate([hw, -zw]), db + SLACK * scale)
        elif du <= 0:  # dz <= dh <= 0
            rows.add(hc, hw, 0.0)
            rows.add(np.concatenate([hc, zc]), np.concatenate([-hw, zw]), -db + SLACK * scale)
        else:  # dh <= a (dz - dl), dh >= c (du - dz) with a = du / (du - dl), c = dl / (du - dl)
            a, c = du / (du - dl), dl / (du - dl)
            rows.add(np.concatenate([hc, zc]), np.concatenate([hw, -a * zw]), a * db - a * dl + SLACK * scale)
            rows.add(np.concatenate([hc, zc]), np.concatenate([-hw, -c * zw]), c * db - c * du + SLACK * scale)


def bound_rows(net: PairNet, node: Node, lo: np.ndarray, hi: np.ndarray, open_rows: np.ndarray,
               deadline: float = np.inf):
    """Sound upper bounds of the rows ``open_rows`` (``r < m``: ``f_r - g_r``; ``m + r``: ``g_r - f_r``)
    on the node, intersected with ``node.rows`` in place (rows left at the deadline keep their bound),
    and the LP point of the worst (a hint) and the number of LPs solved."""
    from scipy.optimize import linprog  # solver: imported where used

    A, b, lb, ub, (last_f, last_g) = build_lp(net, node, lo, hi)
    m = net.Wf[-1].shape[0]
    best, point, lps = -np.inf, None, 0
    for r in open_rows:
        if time.monotonic() > deadline:
            break
        i, sign = int(r) % m, (1.0 if r < m else -1.0)
        c = np.zeros(A.shape[1])
        c[last_f] = -sign * net.Wf[-1][i]
        c[last_g] = sign * net.Wg[-1][i]
        val, v = lp_solve_sound(linprog, c, A, b, lb, ub)
        lps += 1
        if val is None:
            if _empty(A, b, lb, ub):  # no point of the box has the node's phases
                node.rows[:] = -np.inf
                return None, lps + 1
            lps += 1
            continue
        up = float(add_hi(add_hi(np.float64(-val), np.float64(sign * net.bf[-1][i])), np.float64(-sign * net.bg[-1][i])))
        node.rows[r] = min(node.rows[r], up)
        if v is not None and up > best:
            best, point = up, v
    return point, lps


def _empty(A, b: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> bool:
    """True when the elastic LP ``min s, A v - s <= b, s in [0, S_MAX]`` has a sound bound > 0: the
    multipliers are a Farkas certificate that ``A v <= b`` has no point within the variable bounds."""
    from scipy import sparse  # solver: imported where used
    from scipy.optimize import linprog

    Ae = sparse.hstack([A, sparse.csr_matrix(-np.ones((A.shape[0], 1)))]).tocsr()
    c = np.zeros(Ae.shape[1])
    c[-1] = 1.0
    val = lp_solve_sound(linprog, c, Ae, b, np.append(lb, 0.0), np.append(ub, S_MAX))[0]
    return val is not None and val > 0


def branch(net: PairNet, node: Node, v: np.ndarray, lo: np.ndarray) -> Optional[tuple[int, int]]:
    """The pair with the largest relaxation gap ``h - relu(z)`` of f's and g's neuron at ``v`` (earliest
    layer on ties); None when every pair is fixed or stable."""
    of, og = _layout(net)
    n = lo.size
    prev_f = prev_g = v[:n]
    best, arg = 0.0, None
    for k, w in enumerate(net.widths):
        hf, hg = v[of[k]:of[k] + w], v[og[k]:og[k] + w]
        zf, zg = net.Wf[k] @ prev_f + net.bf[k], net.Wg[k] @ prev_g + net.bg[k]
        b = node.b
        free_f = (node.pf[k] == 0) & (b.fl[k] < 0) & (b.fu[k] > 0)
        free_g = (node.pg[k] == 0) & (b.gl[k] < 0) & (b.gu[k] > 0)
        gap = (np.where(free_f, np.abs(hf - np.maximum(zf, 0)), 0) + np.where(free_g, np.abs(hg - np.maximum(zg, 0)), 0)
               + np.where(free_f | free_g, np.abs((hf - hg) - (np.maximum(zf, 0) - np.maximum(zg, 0))), 0))
        gap = np.where(free_f | free_g, gap + 1e-12, -1.0)
        j = int(np.argmax(gap))
        if gap[j] > best * (1 + 1e-9) and gap[j] > 0:
            best, arg = float(gap[j]), (k, j)
        prev_f, prev_g = hf, hg
    return arg


# ----- the search --------------------------------------------------------------------------
@dataclass
class PhaseResult:
    """``upper``: sound bound of the norm (linf) on the box; ``tree``: preorder evidence; ``points``:
    LP points (candidates to evaluate)."""

    upper: float
    tree: list[int]
    lps: int
    nodes: int
    points: list[np.ndarray] = field(default_factory=list)


def phase_search(net: PairNet, root: Node, lo: np.ndarray, hi: np.ndarray, threshold: Callable[[], float],
                 deadline: float, max_lps: int, say: Optional[Callable[[str], None]] = None) -> PhaseResult:
    """Best-first phase branch and bound on the box until every leaf is within ``threshold()`` (read
    again each step: ``bound`` raises it as witnesses come in), the deadline, or ``max_lps`` LPs."""
    nodes: list[Node] = [root]
    split: dict[int, int] = {}
    kids: dict[int, list[int]] = {}
    points: list[np.ndarray] = []
    lps = 0
    opened = np.flatnonzero(root.rows > threshold())
    v, n = bound_rows(net, root, lo, hi, opened, deadline)
    lps += n
    if v is not None:
        points.append(v[:lo.size])
    heap = [(-float(np.max(root.rows)), 0, v)]
    while heap and lps < max_lps and time.monotonic() < deadline:
        neg, i, v = heapq.heappop(heap)
        node = nodes[i]
        if say is not None:
            say(f"phase split: worst open node {-neg:.4g}, {len(nodes)} nodes, {lps} LPs")
        if -neg <= threshold():
            heapq.heappush(heap, (neg, i, v))
            break
        arg = branch(net, node, v, lo) if v is not None else None
        if arg is None:  # exact or the LP failed: nothing to split
            continue
        mask, ch = children(node, *arg)
        split[i] = 16 * net.flat(*arg) + mask
        kids[i] = []
        for c in ch:
            c.id = len(nodes)
            nodes.append(c)
            kids[i].append(c.id)
            cv, n = bound_rows(net, c, lo, hi, np.flatnonzero(c.rows > threshold()), deadline)
            lps += n
            if cv is not None:
                points.append(cv[:lo.size])
            heapq.heappush(heap, (-float(np.max(c.rows)), c.id, cv))
    leaves = _leaves(split, kids)
    upper = max((float(np.max(nodes[i].rows)) for i in leaves), default=-np.inf)
    return PhaseResult(upper, _preorder(split, kids), lps, len(nodes), points)


def _leaves(split: dict[int, int], kids: dict[int, list[int]]) -> list[int]:
    out, stack = [], [0]
    while stack:
        i = stack.pop()
        if i in split:
            stack.extend(kids[i])
        else:
            out.append(i)
    return out


def _preorder(split: dict[int, int], kids: dict[int, list[int]]) -> list[int]:
    out, stack = [], [0]
    while stack:
        i = stack.pop()
        out.append(split.get(i, -1))
        if i in split:
            stack.extend(reversed(kids[i]))
    return out


def replay(net: PairNet, root: Node, lo: np.ndarray, hi: np.ndarray, tree: list[int], claim: float) -> float:
    """The checker's bound of a recorded phase tree on the box: the children re-derived and checked to
    cover each node, every node's rows above ``claim`` re-bounded by LP; the largest leaf bound.
    ValueError when the tree is malformed."""
    stack, pos, worst = [root], 0, -np.inf
    while stack:
        if pos >= len(tree):
            raise ValueError("phase tree ends early")
        node, code = stack.pop(), int(tree[pos])
        pos += 1
        bound_rows(net, node, lo, hi, np.flatnonzero(node.rows > claim))
        if code < 0 or float(np.max(node.rows)) <= claim:
            worst = max(worst, float(np.max(node.rows)))
            if code >= 0:  # closed early: skip its recorded subtree
                pos = _skip(net, node, tree, pos, code)
            continue
        _, ch = children(node, *net.unflat(code // 16), mask=code % 16)
        stack.extend(reversed(ch))
    if pos != len(tree):
        raise ValueError("phase tree has trailing entries")
    return worst


def _skip(net: PairNet, node: Node, tree: list[int], pos: int, code: int) -> int:
    """Position after the subtree of a node split by ``code`` (children counted from the recorded mask)."""
    todo = bin(code % 16).count("1")
    while todo:
        if pos >= len(tree):
            raise ValueError("phase tree ends early")
        c = int(tree[pos])
        pos += 1
        todo -= 1
        if c >= 0:
            todo += bin(c % 16).count("1")
    return pos


def leaf_root(net: PairNet, model: DiffModel, lo: np.ndarray, hi: np.ndarray, refine: Refine) -> Node:
    """The root node of a box: the pair's layer bounds (``refine`` as recorded), every row open."""
    lb = pair_layer_bounds(model, lo[None], hi[None], refine)
    return root_node(lb, np.full(2 * net.Wf[-1].shape[0], np.inf))


def finish_leaf(net: PairNet, model: DiffModel, lo: np.ndarray, hi: np.ndarray, refine: Refine,
                threshold: Callable[[], float], deadline: float, max_lps: int) -> PhaseResult:
    """:func:`phase_search` on one box of the differential search (:mod:`lumpver.verifiers.bab_diff`)."""
    return phase_search(net, leaf_root(net, model, lo, hi, refine), lo, hi, threshold, deadline, max_lps)
