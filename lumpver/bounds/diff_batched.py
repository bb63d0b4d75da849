"""Batched, alpha-optimised bounds on ``f(x) - g(x)`` over many input boxes (DESIGN.md §5, §11).

The hot loop of the differential branch and bound (:mod:`lumpver.verifiers.bab_diff`) and of its
certificate checker (:mod:`lumpver.certificates.bounded_bab`). :func:`prepare_diff` builds one
joint chain of the pair (:mod:`lumpver.bounds.diff_align`):

* ``delta`` (same depth and activations; widths aligned by permutation and zero padding):
  NeuroDiff's stacked chain over ``(delta h_k, h^g_k)``. Per box, f's and g's own pre-activation
  bounds come from :func:`lumpver.bounds.batched.layer_bounds`, and on boxes with few unstable
  ReLUs from optimised slopes (:func:`lumpver.bounds.intermediate.refine_layers`, settings
  :class:`Refine`: on small ACAS Xu boxes single neurons that CROWN leaves unstable held the whole
  bound); layer by layer the pre-activation
  delta ``delta z_k`` is bounded by ReluDiff's interval, by the difference of the two networks'
  bounds and, for every neuron whose secant-slope range is not a single value, by
  back-substitution through the stacked chain; ``delta h_k = s delta z_k`` is relaxed by the
  chords of :func:`lumpver.bounds.diff.delta_relax` and ``h^g_k`` by g's registry relaxation;
* ``product`` (any other pair of dense networks whose activations pair up, or by choice:
  :func:`lumpver.verifiers.bab_diff.choose_pairing`): the chain of ``x -> [f(x); g(x)]``; its layers are
  block-diagonal, so its neurons' CROWN bounds (refined the same way) are computed on f's and g's own chains.

The final bound of ``+-(f_i - g_i)`` back-substitutes through the joint chain
(:func:`lumpver.bounds.batched.backsub`) with the lower slopes of g's unstable ReLUs (``delta``) or
of both networks' (``product``) optimised by projected Adam from the registry's adaptive slopes
(alpha-CROWN; every iterate is sound, the best per box and row is kept), and is intersected with
the difference of the two networks' output intervals. The computation is deterministic (cold
start, fixed iteration count), so a checker re-bounding a box gets the same number up to the
last bits. Soundness: registry relaxations, outward rounding of :mod:`lumpver.bounds.rounding` in
every back-substitution, addition and product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from lumpver.bounds.batched import alpha_free, backsub, interval_step, layer_bounds, relax_batch
from lumpver.bounds.diff import delta_interval, delta_relax
from lumpver.bounds.diff_align import align_pair, delta_chain, identity_pair, product_chain
from lumpver.bounds.engine import Chain, prepare
from lumpver.bounds.intermediate import optimise_rows, refine_layers, unstable_count
from lumpver.bounds.relaxations import LinearRelaxation, get_relaxation
from lumpver.bounds.rounding import add_hi, add_lo
from lumpver.ir.network import Network
from lumpver.specs.inputset import Box

#: Adam steps and step size of the final bound (recorded in certificates; the checker uses them)
ITERS = 4
LR = 0.25


@dataclass(frozen=True)
class Refine:
    """Optimised intermediate bounds (:func:`lumpver.bounds.intermediate.refine_layers`): Adam steps,
    step size, and the most unstable neurons a box may have to be refined (recorded in certificates)."""

    iters: int = 0
    lr: float = 0.25
    max_unstable: int = 0


#: the search's setting (bench/RESULTS.md, "Branch and bound on f - g")
REFINE = Refine(10, 0.25, 60)


@dataclass
class DiffModel:
    """A pair prepared for batched difference bounds (module docstring)."""

    kind: str  # "delta" or "product"
    joint: Chain
    f: Optional[Chain]  # f's own chain (aligned widths), ``delta`` only
    g: Optional[Chain]
    n_outputs: int


@dataclass
class BoxBounds:
    """``lower[b] <= f(x) - g(x) <= upper[b]`` on box ``b``; ``A_x[b, r]`` the linear bound of row ``r``
    (rows ``i``: ``f_i - g_i``, rows ``m + i``: ``g_i - f_i``) in x, for candidate points."""

    lower: np.ndarray  # (B, m)
    upper: np.ndarray  # (B, m)
    A_x: np.ndarray  # (B, 2m, n_in)
    unstable: np.ndarray  # (B,) unstable ReLUs of the networks' own bounds (the larger count of f's and g's)


def prepare_diff(f: Network, g: Network, kind: Optional[str] = None) -> DiffModel:
    """The joint chain of ``f`` and ``g`` (``kind``: force ``delta`` or ``product``; default: ``delta``
    when the pair aligns, else ``product``). ValueError when neither applies."""
    if f.n_inputs != g.n_inputs or f.n_outputs != g.n_outputs:
        raise ValueError(f"networks differ in interface: {f.n_inputs}->{f.n_outputs} vs {g.n_inputs}->{g.n_outputs}")
    if kind in (None, "delta"):
        for aligned in _alignments(f, g):
            chain = delta_chain(*aligned)
            if chain is not None:
                return DiffModel("delta", chain, prepare(aligned[0]), prepare(aligned[1]), f.n_outputs)
    if kind in (None, "product"):
        chain = product_chain(f, g)
        if chain is not None:
            return DiffModel("product", chain, prepare(f), prepare(g), f.n_outputs)
    raise ValueError("the two networks cannot be paired layer by layer (dense layers with matching activations; "
                     "a shallower network must end in ReLU layers)")


def _alignments(f: Network, g: Network) -> list[tuple[Network, Network]]:
    """The pairings the delta chain may use, in order: :func:`align_pair`'s matching, then, for equal widths,
    neuron i with neuron i (a twin built neuron by neuron: the matching can tie a class's members, whose rows
    are scaled copies, and pair them so that a weight difference is no longer exact in float64)."""
    return [pair for pair in (align_pair(f, g), identity_pair(f, g)) if pair is not None]


def bound_boxes(model: DiffModel, lo: np.ndarray, hi: np.ndarray, iters: int = ITERS, lr: float = LR,
                refine: Refine = Refine(), done: Optional[Callable[[BoxBounds], np.ndarray]] = None) -> BoxBounds:
    """Sound bounds of ``f - g`` on each box ``[lo[b], hi[b]]`` (module docstring); ``refine``:
    optimised intermediate bounds of the networks' own layers, on every box, or with ``done`` (a
    mask of the boxes whose plain bounds suffice) only on the others, whose plain bounds are then
    replaced by the refined ones (what the search and the checker both do)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    out = _bound(model, lo, hi, iters, lr, refine if done is None else Refine())
    if done is None or refine.iters <= 0:
        return out
    redo = np.flatnonzero(~done(out) & (out.unstable <= refine.max_unstable))
    if redo.size:
        sub = _bound(model, lo[redo], hi[redo], iters, lr, refine)
        out.lower[redo], out.upper[redo], out.A_x[redo] = sub.lower, sub.upper, sub.A_x
    return out


def _bound(model: DiffModel, lo: np.ndarray, hi: np.ndarray, iters: int, lr: float, refine: Refine) -> BoxBounds:
    if model.kind == "delta":
        rel, free, (out_lo, out_hi), unstable = _delta_layers(model, lo, hi, refine)
    else:
        rel, free, (out_lo, out_hi), unstable = _product_layers(model, lo, hi, refine)
    m = model.n_outputs
    up, A_x = optimise_rows(model.joint, rel, free, _objective(model, lo.shape[0]), lo, hi, iters, lr)
    return BoxBounds(np.maximum(-up[:, m:], out_lo), np.minimum(up[:, :m], out_hi), A_x, unstable)


def _objective(model: DiffModel, B: int) -> np.ndarray:
    """Rows ``f_i - g_i`` then ``g_i - f_i`` on the joint chain's output (delta: ``(delta y, y^g)``;
    product: ``(y^f, y^g)``)."""
    m = model.n_outputs
    eye = np.eye(m)
    other = np.zeros((m, m)) if model.kind == "delta" else -eye
    lam = np.vstack([np.hstack([eye, other]), -np.hstack([eye, other])])
    return np.broadcast_to(lam, (B,) + lam.shape)


def _open(chain: Chain, B: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    widths = [s.op.out_features for s in chain.steps]
    return [np.full((B, w), -np.inf) for w in widths], [np.full((B, w), np.inf) for w in widths]


def _cat(a: LinearRelaxation, b: LinearRelaxation) -> LinearRelaxation:
    return LinearRelaxation(*(np.concatenate([x, y], axis=-1) for x, y in zip(a.fields(), b.fields())))


def _exact(shape: tuple[int, int]) -> LinearRelaxation:
    one, zero = np.ones(shape), np.zeros(shape)
    return LinearRelaxation(one, zero, one.copy(), zero.copy(), zero.copy())


# ----- the two layer passes ----------------------------------------------------------------
def _own_bounds(ch: Chain, lo: np.ndarray, hi: np.ndarray, refine: Refine, init: Optional[tuple[list, list]] = None):
    """Pre-activation bounds of one chain: CROWN, then optimised where ``refine`` says; and the
    number of unstable neurons of CROWN's. ``init``: valid bounds of the hidden layers to intersect
    with (a ReLU-phase sub-problem's, :mod:`lumpver.bounds.diff_phase`)."""
    zl, zu = _open(ch, lo.shape[0])
    if init is not None:
        zl[:len(init[0])], zu[:len(init[1])] = init
    zl, zu = layer_bounds(ch, lo, hi, zl, zu)
    return (*refine_layers(ch, lo, hi, zl, zu, refine.iters, refine.lr, refine.max_unstable),
            unstable_count(ch, zl, zu))


def _product_layers(model: DiffModel, lo: np.ndarray, hi: np.ndarray, refine: Refine):
    """Relaxations, free-slope masks and the output interval of ``f - g`` for the product chain. The
    product's layers are block-diagonal, so its neurons' CROWN bounds are each network's own: they are
    computed on f's and g's own chains (``(w_f^3 + w_g^3)`` per layer instead of ``(w_f + w_g)^3``, and
    no work on the identity ReLU layers that pad the shallower network: their bounds are the ReLU of
    the last hidden layer's, exact) and placed side by side."""
    ch, m = model.joint, model.n_outputs
    fzl, fzu, gzl, gzu, unstable = _product_own(model, lo, hi, refine)
    first = interval_step(ch.steps[0], *interval_step(ch.input, lo, hi))
    zl, zu = [first[0]], [first[1]]
    for k in range(ch.depth - 1):
        (fl, fu), (gl, gu) = _padded(fzl, fzu, k, ch.depth - 1), _padded(gzl, gzu, k, ch.depth - 1)
        zl.append(np.hstack([fl, gl]))
        zu.append(np.hstack([fu, gu]))
    rel = [relax_batch(ch, k, zl[k], zu[k]) for k in range(ch.depth)]
    free = [alpha_free(ch, k, zl[k], zu[k]) for k in range(ch.depth)]
    yl, yu = zl[-1], zu[-1]
    return rel, free, (add_lo(yl[:, :m], -yu[:, m:]), add_hi(yu[:, :m], -yl[:, m:])), unstable


def _product_own(model: DiffModel, lo: np.ndarray, hi: np.ndarray, refine: Refine):
    """f's and g's own pre-activation bounds (CROWN; optimised per ``refine`` on the boxes whose pair
    count of unstable neurons is at most ``refine.max_unstable``, as on the joint chain) and that count."""
    assert model.f is not None and model.g is not None
    fzl, fzu, f_unstable = _own_bounds(model.f, lo, hi, Refine())
    gzl, gzu, g_unstable = _own_bounds(model.g, lo, hi, Refine())
    small = f_unstable + g_unstable <= refine.max_unstable
    if refine.iters > 0 and np.any(small):
        for own, (zl_, zu_) in ((model.f, (fzl, fzu)), (model.g, (gzl, gzu))):
            rl, ru = refine_layers(own, lo[small], hi[small], [a[small] for a in zl_], [a[small] for a in zu_],
                                   refine.iters, refine.lr, refine.max_unstable)
            for k in range(own.depth):
                zl_[k][small], zu_[k][small] = rl[k], ru[k]
    return fzl, fzu, gzl, gzu, f_unstable + g_unstable


def _padded(zl: list[np.ndarray], zu: list[np.ndarray], k: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of layer ``k`` of a network of ``len(zl)`` layers padded to ``depth`` by identity ReLU layers
    before its output layer (:func:`lumpver.bounds.diff_align.product_chain`): a padding layer's input
    is the last hidden layer's ReLU output, computed exactly."""
    own = len(zl)
    if k < own - 1:
        return zl[k], zu[k]
    if k == depth - 1:
        return zl[own - 1], zu[own - 1]
    return np.maximum(zl[own - 2], 0.0), np.maximum(zu[own - 2], 0.0)


@dataclass
class PairLayers:
    """Sound pre-activation bounds of an aligned pair on a batch of boxes, per layer ``k`` of the
    networks: f's (``fl, fu``, tightened by g's plus the delta's), g's, and of ``delta z = z^f - z^g``."""

    fl: list[np.ndarray]
    fu: list[np.ndarray]
    gl: list[np.ndarray]
    gu: list[np.ndarray]
    dl: list[np.ndarray]
    du: list[np.ndarray]


def pair_layer_bounds(model: DiffModel, lo: np.ndarray, hi: np.ndarray, refine: Refine = Refine()) -> PairLayers:
    """The layer bounds the pass computes on the boxes (for LP relaxations of the pair,
    :mod:`lumpver.verifiers.bab_phase`): ``delta``: f's, g's and the delta's; ``product`` (networks of one
    shape, no padding): each network's own bounds, ``delta z`` unbounded (the LP uses ``z^f - z^g``'s)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    out = PairLayers([], [], [], [], [], [])
    if model.kind == "product" and same_shape(model):
        fzl, fzu, gzl, gzu, _ = _product_own(model, lo, hi, refine)
        for k in range(model.f.depth - 1):
            for name, v in zip(("fl", "fu", "gl", "gu", "dl", "du"), (fzl[k], fzu[k], gzl[k], gzu[k],
                                                                       np.full_like(fzl[k], -np.inf), np.full_like(fzl[k], np.inf))):
                getattr(out, name).append(v)
        return out
    if model.kind != "delta":
        raise ValueError("pair layer bounds need an aligned (delta) pair or a product of one shape")
    _delta_layers(model, lo, hi, refine, out)
    return out


def same_shape(model: DiffModel) -> bool:
    """Whether f's and g's own chains have the same depth and widths (no padding, neurons side by side)."""
    f, g = model.f, model.g
    return f is not None and g is not None and f.depth == g.depth and all(
        a.op.out_features == b.op.out_features for a, b in zip(f.steps, g.steps))


def _delta_layers(model: DiffModel, lo: np.ndarray, hi: np.ndarray, refine: Refine,
                  trace: Optional[PairLayers] = None, init: Optional[PairLayers] = None):
    """Relaxations, free-slope masks and the output interval of ``f - g`` for the delta chain
    (``trace``: filled with the layer bounds; ``init``: valid layer bounds to intersect with)."""
    f, g, ch = model.f, model.g, model.joint
    assert f is not None and g is not None
    B, n = lo.shape
    gzl, gzu, g_unstable = _own_bounds(g, lo, hi, refine, None if init is None else (init.gl, init.gu))
    fzl, fzu, f_unstable = _own_bounds(f, lo, hi, refine, None if init is None else (init.fl, init.fu))
    s0_lo, s0_hi = interval_step(ch.steps[0], *interval_step(ch.input, lo, hi))
    d_lo, d_hi, hg_lo, hg_hi = s0_lo[:, :n], s0_hi[:, :n], s0_lo[:, n:], s0_hi[:, n:]
    rel, free = [_exact((B, 2 * n))], [np.zeros((B, 2 * n), dtype=bool)]
    for k in range(g.depth):
        w = gzl[k].shape[1]
        il, iu = interval_step(ch.steps[k + 1], np.hstack([d_lo, hg_lo]), np.hstack([d_hi, hg_hi]))
        il, iu = il[:, :w], iu[:, :w]
        il, iu = np.maximum(il, add_lo(fzl[k], -gzu[k])), np.minimum(iu, add_hi(fzu[k], -gzl[k]))
        if init is not None:
            il, iu = np.maximum(il, init.dl[k]), np.minimum(iu, init.du[k])
        act = get_relaxation(g.acts[k])
        _, (s_lo, s_hi) = _slopes(act, g.alphas[k], (gzl[k], gzu[k]), (fzl, fzu), k, il, iu)
        need = (s_lo != s_hi) & (il < 0) & (iu > 0)
        zd_lo, zd_hi = _symbolic_delta_rows(ch, rel, need, k + 1, lo, hi, il, iu)
        f_pre, (s_lo, s_hi) = _slopes(act, g.alphas[k], (gzl[k], gzu[k]), (fzl, fzu), k, zd_lo, zd_hi)
        if trace is not None:
            for name, v in zip(("fl", "fu", "gl", "gu", "dl", "du"), (*f_pre, gzl[k], gzu[k], zd_lo, zd_hi)):
                getattr(trace, name).append(v)
        rel.append(_cat(delta_relax(zd_lo, zd_hi, s_lo, s_hi), relax_batch(g, k, gzl[k], gzu[k])))
        gfree = alpha_free(g, k, gzl[k], gzu[k])
        free.append(np.hstack([np.zeros_like(gfree), gfree]))
        g_post = act.interval(gzl[k], gzu[k], g.alphas[k])
        d_lo, d_hi = delta_interval(s_lo, s_hi, zd_lo, zd_hi, act.interval(*f_pre, g.alphas[k]), g_post)
        hg_lo, hg_hi = g_post
    return rel, free, (d_lo, d_hi), np.maximum(f_unstable, g_unstable)


def _slopes(act, alpha: float, g_pre: tuple[np.ndarray, np.ndarray], f_own, k: int, zd_lo: np.ndarray,
            zd_hi: np.ndarray):
    """f's pre-activation bounds (g's plus the delta's, intersected with f's own ``f_own``)
    and the secant-slope range on the hull of f's and g's."""
    f_lo, f_hi = add_lo(g_pre[0], zd_lo), add_hi(g_pre[1], zd_hi)
    f_lo, f_hi = np.maximum(f_lo, f_own[0][k]), np.minimum(f_hi, f_own[1][k])
    return (f_lo, f_hi), act.slopes(np.minimum(g_pre[0], f_lo), np.maximum(g_pre[1], f_hi), alpha)


def _symbolic_delta_rows(ch: Chain, rel: list[LinearRelaxation], need: np.ndarray, top: int, lo: np.ndarray,
                         hi: np.ndarray, zl: np.ndarray, zu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[zl, zu]`` of ``delta z`` at joint layer ``top`` intersected, where ``need``, with the
    back-substituted bounds (each box's own rows, padded to the batch's largest count)."""
    count = int(np.max(np.sum(need, axis=1), initial=0))
    if count == 0:
        return zl, zu
    B, w = need.shape
    idx = np.argsort(~need, axis=1, kind="stable")[:, :count]  # (B, count) neuron of each row
    valid = np.take_along_axis(need, idx, axis=1)
    lam = np.zeros((B, 2 * count, 2 * w))
    rows = np.arange(count)[None, :]
    lam[np.arange(B)[:, None], rows, idx] = 1.0
    lam[np.arange(B)[:, None], count + rows, idx] = -1.0
    up = backsub(ch, rel, lam, top, False, lo, hi).upper
    zl, zu = zl.copy(), zu.copy()
    got_u = np.minimum(np.take_along_axis(zu, idx, axis=1), np.where(valid, up[:, :count], np.inf))
    got_l = np.maximum(np.take_along_axis(zl, idx, axis=1), np.where(valid, -up[:, count:], -np.inf))
    np.put_along_axis(zu, idx, got_u, axis=1)
    np.put_along_axis(zl, idx, got_l, axis=1)
    return zl, zu


# ----- bisection trees (the search records them, checkers rebuild the leaves) -------------------
def halves(lo: np.ndarray, hi: np.ndarray, dim: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The two halves of a box at the midpoint of ``dim`` (they share the face: they cover the box)."""
    at = min(max(0.5 * (lo[dim] + hi[dim]), lo[dim]), hi[dim])
    left_hi, right_lo = hi.copy(), lo.copy()
    left_hi[dim] = right_lo[dim] = at
    return (lo, left_hi), (right_lo, hi)


def leaves_of(box: Box, tree: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The leaf boxes ``(lo, hi)`` of a preorder tree over ``box`` (ValueError when malformed)."""
    los, his, stack, pos = [], [], [(box.lower.astype(np.float64), box.upper.astype(np.float64))], 0
    while stack:
        if pos >= len(tree):
            raise ValueError("bisection tree ends early")
        lo, hi = stack.pop()
        d = int(tree[pos])
        pos += 1
        if d < 0:
            los.append(lo)
            his.append(hi)
        elif d < box.dim:
            left, right = halves(lo, hi, d)
            stack.extend([right, left])
        else:
            raise ValueError(f"bisection tree splits dimension {d} of a {box.dim}-dimensional box")
    if pos != len(tree):
        raise ValueError("bisection tree has trailing entries")
    return np.array(los).reshape(-1, box.dim), np.array(his).reshape(-1, box.dim)
