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
dual (outward rounded), all nodes of a box in one persistent, warm-started HiGHS model
(:class:`lumpver.verifiers.bab_phase_lp.PairLp`: a node changes bounds, slopes and offsets; the dual
simplex restarts from the parent's basis); slopes and offsets computed in floating point are rounded
so that every row holds at every real point, so the LP is a relaxation of the pair on the box.

A split fixes the phases of the pair ``(f_j, g_j)`` of one layer jointly: the children are the
combinations ``(p^f, p^g)`` in ``{-, +}^2`` (a neuron already fixed keeps its phase) that are not
strictly empty by the node's bounds (``+`` with ``u < 0``, ``-`` with ``l > 0``, ``(-, +)`` with
``dl > 0``, ``(+, -)`` with ``du < 0``), so the children cover the node. With both phases fixed the
pair's ``delta h`` is linear; with every unstable pair fixed the LP is exact (the maximum of
``f - g`` on the node up to the rounding margin). Rows whose bound is at most the threshold stay
closed in the children (their sets are subsets). The split pair (``BRANCH = "dual"``) is the free pair
whose relaxation offsets carry most of the worst row's LP bound, ``|multiplier| x right-hand side`` over
its triangle and chord rows (BaBSR's score with the LP's own multipliers: 30 % fewer LPs than the gap rule
on the ACAS Xu 2_3 goal candidate's leaves, bench/RESULTS.md 2026-12-01); ``"gap"``: the largest
relaxation gap at the worst row's LP optimum (earliest layer on ties). The choice is a heuristic only:
the checker replays whatever tree it is given.

Evidence: the tree in preorder, ``-1`` a leaf, else ``16 * flat + mask`` (``flat`` the pair's index
over the hidden layers, ``mask`` the children kept, bit ``2 a + b`` for ``p^f = (-1, +1)[a]``,
``p^g = (-1, +1)[b]``); :func:`replay` re-bounds it (the checker, :mod:`lumpver.certificates.bounded_bab`).
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np

from lumpver.bounds.diff_batched import DiffModel, PairLayers, Refine, pair_layer_bounds, same_shape
from lumpver.verifiers.bab_phase_lp import PairLp

#: relative loosening of the delta bounds derived from f's and g's bounds (root_node)
SLACK = 1e-9
COMBOS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
#: split choice of the phase search: "dual" (:meth:`PairLp.pair_scores`) or "gap" (the LP point's gap)
BRANCH = "dual"
#: root tightening of a phase search (:meth:`PairLp.tighten`): False (none), True (every unstable neuron and
#: pair of layers 1..), "live" (not the neurons that feed nothing, nor their pairs); recorded in evidence
Tighten = Union[bool, str]
TIGHTEN_MODES = (False, True, "live")


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
    duals: Optional[np.ndarray] = field(default=None, repr=False)  # LP multipliers at the worst row (branching)


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
def _layout(net: PairNet) -> tuple[list[int], list[int]]:
    """Start of h^f_k and h^g_k in the point layout ``[x, h^f_0, h^g_0, h^f_1, ..]`` of :func:`branch`."""
    n = net.Wf[0].shape[1]
    of, og, at = [], [], n
    for w in net.widths:
        of.append(at)
        og.append(at + w)
        at += 2 * w
    return of, og


def bound_rows(lp: PairLp, node: Node, open_rows: np.ndarray, deadline: float = np.inf, basis=None):
    """Sound upper bounds of the rows ``open_rows`` (``r < m``: ``f_r - g_r``; ``m + r``: ``g_r - f_r``)
    on the node by the box's persistent LP (:class:`lumpver.verifiers.bab_phase_lp.PairLp`, the first
    solve warm-started from ``basis``, a parent's), intersected with ``node.rows`` in place (rows left
    at the deadline keep their bound; every row ``-inf`` when the node is certified empty). Returns the
    LP point of the worst row (a hint, :func:`branch`'s layout), the number of LPs and the last basis."""
    lp.load(node)
    best, point, lps = -np.inf, None, 0
    for r in open_rows:
        if time.monotonic() > deadline:
            break
        s, up = lp.bound_row(int(r), basis)
        lps += 1
        if s.value == np.inf:  # a Farkas certificate: no point of the box has the node's phases
            node.rows[:] = -np.inf
            return None, lps, None
        basis = s.basis if s.basis is not None else basis
        if up is None:
            continue
        node.rows[r] = min(node.rows[r], up)
        if s.x is not None and up > best:
            best, point = up, lp.point(s.x)
            if BRANCH == "dual":
                node.duals = lp.row_duals()
    return point, lps, basis


def branch(net: PairNet, node: Node, v: np.ndarray, lo: np.ndarray,
           scores: Optional[np.ndarray] = None) -> Optional[tuple[int, int]]:
    """The free pair with the largest ``scores`` (:meth:`PairLp.pair_scores`) when given and positive
    somewhere, else the largest relaxation gap ``h - relu(z)`` of f's and g's neuron at ``v`` (earliest
    layer on ties); None when every pair is fixed or stable."""
    if scores is not None:
        free = np.concatenate([((node.pf[k] == 0) & (node.b.fl[k] < 0) & (node.b.fu[k] > 0))
                               | ((node.pg[k] == 0) & (node.b.gl[k] < 0) & (node.b.gu[k] > 0))
                               for k in range(len(net.widths))])
        s = np.where(free, scores, -1.0)
        if s.size and float(np.max(s)) > 0:
            return net.unflat(int(np.argmax(s)))
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
                 deadline: float, max_lps: int, say: Optional[Callable[[str], None]] = None,
                 tighten: Tighten = False) -> PhaseResult:
    """Best-first phase branch and bound on the box until every leaf is within ``threshold()`` (read
    again each step: ``bound`` raises it as witnesses come in), the deadline, or ``max_lps`` LPs; with
    ``tighten`` the root's later-layer bounds LP-tightened first (:meth:`PairLp.tighten`, as the checker
    does: 2x fewer LPs per ACAS Xu leaf, bench/RESULTS.md; ``"live"``: only neurons that feed on)."""
    nodes: list[Node] = [root]
    split: dict[int, int] = {}
    kids: dict[int, list[int]] = {}
    points: list[np.ndarray] = []
    lp = PairLp(net, lo, hi, root)
    lps0 = lp.tighten(root, tighten == "live") if tighten else 0
    v, lps, basis = bound_rows(lp, root, np.flatnonzero(root.rows > threshold()), deadline)
    lps += lps0
    if v is not None:
        points.append(v[:lo.size])
    heap = [(-float(np.max(root.rows)), 0, v, basis)]
    while heap and lps < max_lps and time.monotonic() < deadline:
        neg, i, v, basis = heapq.heappop(heap)
        node = nodes[i]
        if say is not None:
            say(f"phase split: worst open node {-neg:.4g}, {len(nodes)} nodes, {lps} LPs")
        if -neg <= threshold():
            heapq.heappush(heap, (neg, i, v, basis))
            break
        scores = lp.pair_scores(node.duals) if node.duals is not None else None
        arg = branch(net, node, v, lo, scores) if v is not None else None
        if arg is None:  # exact or the LP failed: nothing to split
            continue
        mask, ch = children(node, *arg)
        split[i] = 16 * net.flat(*arg) + mask
        kids[i] = []
        for c in ch:
            c.id = len(nodes)
            nodes.append(c)
            kids[i].append(c.id)
            cv, n, cb = bound_rows(lp, c, np.flatnonzero(c.rows > threshold()), deadline, basis)
            lps += n
            if cv is not None:
                points.append(cv[:lo.size])
            heapq.heappush(heap, (-float(np.max(c.rows)), c.id, cv, cb))
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


def replay(net: PairNet, root: Node, lo: np.ndarray, hi: np.ndarray, tree: list[int], claim: float,
           tighten: Tighten = False) -> float:
    """The checker's bound of a recorded phase tree on the box: the root tightened as recorded, the children
    re-derived and checked to cover each node, every node's rows above ``claim`` re-bounded by LP; the
    largest leaf bound. ValueError when the tree is malformed."""
    lp = PairLp(net, lo, hi, root)
    if tighten:
        lp.tighten(root, tighten == "live")
    stack, pos, worst = [(root, None)], 0, -np.inf
    while stack:
        if pos >= len(tree):
            raise ValueError("phase tree ends early")
        (node, basis), code = stack.pop(), int(tree[pos])
        pos += 1
        _, _, basis = bound_rows(lp, node, np.flatnonzero(node.rows > claim), basis=basis)
        if code < 0 or float(np.max(node.rows)) <= claim:
            worst = max(worst, float(np.max(node.rows)))
            if code >= 0:  # closed early: skip its recorded subtree
                pos = _skip(net, node, tree, pos, code)
            continue
        _, ch = children(node, *net.unflat(code // 16), mask=code % 16)
        stack.extend((c, basis) for c in reversed(ch))
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
                threshold: Callable[[], float], deadline: float, max_lps: int, tighten: Tighten = False) -> PhaseResult:
    """:func:`phase_search` on one box of the differential search (:mod:`lumpver.verifiers.bab_diff`)."""
    return phase_search(net, leaf_root(net, model, lo, hi, refine), lo, hi, threshold, deadline, max_lps,
                        tighten=tighten)


#: what a phase-stage worker process holds (set by :func:`worker_init` in each forked worker of
#: :mod:`lumpver.verifiers.bab_diff`'s phase stage)
_WORKER: dict = {}


def worker_init(net: PairNet, model: DiffModel, refine: Refine, tighten: Tighten) -> None:
    """Pool initialiser: the pair, its model and the search settings every leaf of the worker uses."""
    _WORKER.update(net=net, model=model, refine=refine, tighten=tighten)


def worker_leaf(lo: np.ndarray, hi: np.ndarray, threshold: float, deadline: float, lps: int) -> PhaseResult:
    """:func:`finish_leaf` on one leaf in a worker process (the threshold as a value)."""
    w = _WORKER
    return finish_leaf(w["net"], w["model"], lo, hi, w["refine"], lambda: threshold, deadline, lps, w["tighten"])
