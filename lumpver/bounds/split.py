"""Bounds over an input set by adaptive input splitting (DESIGN.md §3).

A neuron is stable on a region when it is stable on every leaf of a split of that region; the
hull of the leaves' bounds (:func:`lumpver.bounds.engine.hull_bounds`) is a sound bound on the region.
The split is a binary tree encoded in preorder as a JSON list: a leaf is ``null``, an inner
node is ``[dim, at]`` followed by its left (``x_dim <= at``) and right (``x_dim >= at``)
subtrees. :func:`leaves_from_tree` rebuilds the leaves; children share the face ``x_dim = at``
and the checker confirms ``lower <= at <= upper``, so the leaves always cover the region.

The splitter refines only where it can help: neurons seen with both signs on sampled points
are truly unstable and are ignored; the leaf with the most remaining unstable candidates is
bisected (widest side relative to the region) until ``max_leaves``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lumpver.bounds.engine import NetworkBounds, compute_bounds, hull_bounds, prepare
from lumpver.bounds.region import bisect_box
from lumpver.specs.inputset import Box, InputSet, Polytope
from lumpver.ir.network import Network


@dataclass
class SetBounds:
    """Bounds valid on a whole input set, with the split tree used for each region."""

    bounds: NetworkBounds  # hull over regions and leaves
    trees: list[Any]  # one preorder tree per region (``[None]`` = not split)
    n_leaves: int


def leaves_from_tree(box: Box, tree: list[Any]) -> list[Box]:
    """The leaf boxes of a preorder split tree; ValueError if it is malformed or leaves the box."""
    out: list[Box] = []
    pos = 0

    def walk(b: Box) -> None:
        nonlocal pos
        if pos >= len(tree):
            raise ValueError("split tree ends early")
        node = tree[pos]
        pos += 1
        if node is None:
            out.append(b)
            return
        dim, at = int(node[0]), float(node[1])
        if not (0 <= dim < b.dim) or not (b.lower[dim] <= at <= b.upper[dim]):
            raise ValueError(f"split at x_{dim} = {at} lies outside its box")
        lu, rl = b.upper.copy(), b.lower.copy()
        lu[dim], rl[dim] = at, at
        walk(Box(b.lower.copy(), lu))
        walk(Box(rl, b.upper.copy()))

    walk(box)
    if pos != len(tree):
        raise ValueError("split tree has trailing entries")
    return out


def _hidden_pre(net: Network, x: np.ndarray) -> np.ndarray:
    """Pre-activations of all hidden layers, concatenated, for a batch of raw inputs."""
    acts = net.activations(x)
    return np.hstack([net.layers[k].op.forward(acts[k]) + net.layers[k].bias for k in range(len(net.layers) - 1)])


def _flat(nb: NetworkBounds) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(nb.pre_lower[:-1]), np.concatenate(nb.pre_upper[:-1])


def split_bounds(net: Network, box: Box, method: str = "crown", lp: bool = False,
                 max_leaves: int = 1, seed: int = 0) -> tuple[list[NetworkBounds], list[Any]]:
    """Adaptive splitting of ``box``: the leaves' bounds and the preorder tree."""
    chain = prepare(net)
    root = compute_bounds(net, box, method, lp, chain)
    if max_leaves <= 1 or len(net.layers) < 2:
        return [root], [None]
    rng = np.random.default_rng(seed)
    z = _hidden_pre(net, box.sample(256, rng))
    seen_pos, seen_neg = np.any(z > 0, axis=0), np.any(z < 0, axis=0)
    width0 = np.where(box.upper > box.lower, box.upper - box.lower, 1.0)
    # tree nodes: dict(box, bounds, children)
    nodes: list[dict] = [{"box": box, "nb": root, "kids": None}]
    leaves = [0]
    while len(leaves) < max_leaves:
        cand = ~(seen_pos & seen_neg)
        scores = []
        for i in leaves:
            lo, hi = _flat(nodes[i]["nb"])
            scores.append(int(np.sum(cand & (lo < 0) & (hi > 0))))
        best = int(np.argmax(scores))
        if scores[best] == 0:
            break
        i = leaves.pop(best)
        b = nodes[i]["box"]
        left, right, dim, at = bisect_box(b, int(np.argmax((b.upper - b.lower) / width0)))
        kids = []
        for child in (left, right):
            nodes.append({"box": child, "nb": compute_bounds(net, child, method, lp, chain), "kids": None})
            kids.append(len(nodes) - 1)
            leaves.append(len(nodes) - 1)
        nodes[i]["kids"] = (dim, at, kids)
        zc = _hidden_pre(net, np.vstack([left.sample(4, rng, corners=False), right.sample(4, rng, corners=False)]))
        seen_pos |= np.any(zc > 0, axis=0)
        seen_neg |= np.any(zc < 0, axis=0)
    tree: list[Any] = []

    def emit(i: int) -> None:
        if nodes[i]["kids"] is None:
            tree.append(None)
            return
        dim, at, (a, c) = nodes[i]["kids"]
        tree.append([int(dim), float(at)])
        emit(a)
        emit(c)

    emit(0)
    return [nodes[i]["nb"] for i in range(len(nodes)) if nodes[i]["kids"] is None], tree


def set_bounds(net: Network, input_set: InputSet, method: str = "crown", lp: bool = False,
               max_leaves: int = 1, seed: int = 0) -> SetBounds:
    """Bounds valid on every region of ``input_set`` (boxes split adaptively, polytopes whole)."""
    parts: list[NetworkBounds] = []
    trees: list[Any] = []
    for region in input_set.regions:
        if isinstance(region, Polytope):
            parts.append(compute_bounds(net, region, method, lp))
            trees.append([None])
            continue
        leaves, tree = split_bounds(net, region, method, lp, max_leaves, seed)
        parts.extend(leaves)
        trees.append(tree)
    return SetBounds(hull_bounds(parts), trees, len(parts))


def replay_set_bounds(net: Network, input_set: InputSet, trees: list[Any], method: str = "crown",
                      lp: bool = False) -> SetBounds:
    """Recompute the bounds over the leaves that ``trees`` describe (the checker's side)."""
    if len(trees) != len(input_set.regions):
        raise ValueError(f"{len(trees)} split trees for {len(input_set.regions)} regions")
    parts: list[NetworkBounds] = []
    for region, tree in zip(input_set.regions, trees):
        if isinstance(region, Polytope):
            if tree != [None]:
                raise ValueError("polytope regions are not split")
            parts.append(compute_bounds(net, region, method, lp))
            continue
        chain = prepare(net)
        parts.extend(compute_bounds(net, leaf, method, lp, chain) for leaf in leaves_from_tree(region, tree))
    return SetBounds(hull_bounds(parts), list(trees), len(parts))
