"""ReLU-splitting policy of branch and bound on deep fully connected ReLU chains (DESIGN.md §11; issue 13).

Deep MNIST-like networks (784 inputs, 4-9 hidden layers of 200-256 ReLUs) are decided, by the peers, with
ReLU splitting on *fixed* intermediate bounds: the root's pre-activation bounds are tightened once by
alpha-CROWN (every unstable neuron re-bounded with its own optimised slopes,
:func:`lumpver.bounds.intermediate.refine_layers`), and a child keeps its parent's bounds, the split entering
its bound through the clamp of the split neuron and a beta multiplier (beta-CROWN), so a numpy pass bounds
many more sub-problems than when every child re-bounds every layer after its split. :class:`ReluSearch` holds
the knobs; :func:`root_layer_bounds`, :func:`tighten_root` and :func:`recompute_children` are what ``verifiers/bab.py`` asks.

Soundness: both only change which sound bounds are used: optimised intermediate bounds are intersected with
CROWN's (any slope in ``[0, 1]`` is sound, outward rounding of :mod:`lumpver.bounds.rounding`), and a child's
parent bounds stay valid on the child (a subset of the parent).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lumpver.bounds.batched import ALPHA_ACTS, layer_bounds, recompute_pays
from lumpver.bounds.diff_batched import Refine
from lumpver.bounds.engine import Chain
from lumpver.bounds.intermediate import refine_layers
from lumpver.verifiers.bab_branch import Domain, babsr_candidates, input_split, split_neuron


@dataclass
class ReluSearch:
    """Knobs of the ReLU-splitting search on ReLU chains (measured on the deep MNIST-like proxies,
    bench/RESULTS.md, "Deep MNIST-like ReLU networks")."""

    #: optimised intermediate bounds at a root that CROWN leaves open (alpha-CROWN per unstable neuron; ``Refine()``:
    #: off). 5 Adam steps: on the 256x4 proxy prop_2 root the output bound went 32.4 (CROWN) -> 30.4 (5 steps,
    #: 1.2 s) -> 30.3 (20 steps, 4.4 s)
    root_refine: Refine = field(default_factory=lambda: Refine(5, 0.25, 10**6))
    #: children of a ReLU chain keep their parent's intermediate bounds when it has at least this many hidden
    #: layers (beta-CROWN); shallower chains re-bound the layers after the split (0: never keep)
    fixed_from_depth: int = 3
    #: filtered smart branching (:func:`fsb_split_and_bound`) among this many BaBSR candidates where children keep
    #: their parent's bounds (1: plain BaBSR)
    fsb_top: int = 1


def is_relu_chain(chain: Chain) -> bool:
    """Every hidden activation ReLU-like (what the alpha/beta machinery splits exactly)."""
    return all(a in ALPHA_ACTS for a in chain.acts[:-1])


def recompute_children(chain: Chain, relu: ReluSearch) -> bool:
    """Whether a ReLU-split child re-bounds the layers after its split (see :func:`recompute_pays`), or keeps its
    parent's bounds: kept on deep dense ReLU chains (``relu.fixed_from_depth`` hidden layers or more)."""
    if not recompute_pays(chain):
        return False
    deep = relu.fixed_from_depth > 0 and chain.depth - 1 >= relu.fixed_from_depth and is_relu_chain(chain)
    return not deep


def root_layer_bounds(chain: Chain, lo: np.ndarray, hi: np.ndarray) -> tuple[list, list]:
    """CROWN pre-activation bounds of the root boxes ``(B, n_in)`` (:func:`layer_bounds`)."""
    inf = [np.full((lo.shape[0], step.op.out_features), np.inf) for step in chain.steps]
    return layer_bounds(chain, lo, hi, [-a for a in inf], inf)


def tighten_root(chain: Chain, lo: np.ndarray, hi: np.ndarray, zl: list, zu: list,
                 refine: Refine) -> Optional[tuple[list, list]]:
    """The root bounds ``zl, zu`` tightened by alpha-CROWN on every unstable neuron (intersected) when
    ``refine.iters > 0`` and the chain is a ReLU chain, else None; the search asks only when its root stays open."""
    if refine.iters > 0 and is_relu_chain(chain):
        return refine_layers(chain, lo, hi, zl, zu, refine.iters, refine.lr, refine.max_unstable)
    return None


BoundFn = Callable[[list[Domain], Optional[int]], list[Domain]]


def fsb_split_and_bound(todo: list[Domain], chain: Chain, top: int, bound: BoundFn) -> list[Domain]:
    """Filtered smart branching: per domain the ``top`` BaBSR candidates are split, all trial children bounded
    in one pass without slope steps (``bound(doms, 0)``: the parent's slopes and multipliers, so the trial costs
    one back-substitution), the candidate whose worse child has the lowest bound is kept, and its open children
    are bounded again with the search's steps (``bound(doms, None)``). A domain without an unstable neuron
    is bisected on its input box. Every bound kept is one of ``bound``'s sound bounds."""
    trials, spans, plain = [], [], []
    for d in todo:
        cands = babsr_candidates(d, chain, top)
        if not cands:
            plain.extend(input_split(d))
            continue
        spans.append((len(trials), len(cands)))
        for k, i in cands:
            trials.extend(split_neuron(d, k, i))
    tried = bound(trials, 0) if trials else []
    kept = []
    for at, n in spans:
        pairs = [tried[at + 2 * c: at + 2 * c + 2] for c in range(n)]
        kept.extend(min(pairs, key=lambda p: max(c.score for c in p)))
    closed = [d for d in kept if d.score < 0]
    redo = [d for d in kept if d.score >= 0] + plain
    return closed + (bound(redo, None) if redo else [])
