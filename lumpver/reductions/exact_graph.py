"""Exact channel lumping of graph networks: MaxPool, residual Add, Concat (DESIGN.md §2, §10).

Every node of the DAG gets a channel partition (:mod:`lumpver.certificates.exact_graph` states what
it means and checks it). Affine nodes classify their output channels by the signature
``[A[t] | b_eff[t]]`` (filters with the input's classes summed, bias with its constant channels
folded in) with positive scales only, the scales that commute with ReLU/LeakyReLU, max pooling,
residual sums and the next layer; a zero aggregated filter makes a constant channel. Activations
and max pools pass their input's partition on (constants mapped through them); Concat puts its
parts' partitions side by side; an Add needs the same classes, with the same scales, on both
branches. Where a node cannot take its input's classes (an Add whose branches disagree, an
activation that does not admit a scale, a node left without any class, a lumped output), the
conflicting split is pushed back to the affine nodes the classes came from, as keys the
classification must respect, and the forward pass is repeated: partitions only get finer, so this
ends (at worst with no merge). The reduced graph keeps f's nodes and geometry, one channel per class.

Before lumping, dead channels are dropped (:func:`choose_removals` with no channel 0 on a set): those
that every conv/dense reader reads with all-zero filters, linked across activations, max pools, Adds
and Concats (an Add's channel goes only with both branches), repeated while dropping filters makes
more channels dead. The claim lists them as ``dead``; the checker re-checks them with
:func:`lumpver.certificates.graph_channels.removal_problem`. Dropping them changes nothing for any input.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lumpver.certificates.exact_conv import ChannelPartition, rebuild
from lumpver.certificates.exact_graph import (affine_terms, channels, claim_of, concat_partition, graph_discrepancy_bound,
                                              identity, is_identity, n_classes, pool_constants, structure_problem)
from lumpver.certificates.graph_channels import channel_views, lumped_input, resized_node, without_channels
from lumpver.certificates.format import make_certificate, model_stats
from lumpver.errors import InputError
from lumpver.fileio import write_json_atomic
from lumpver.ir.activations import get_activation
from lumpver.ir.graph import GNode, GraphNetwork
from lumpver.ir.onnx_export import out_shape
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_graph
from lumpver.progress import SILENT, Progress
from lumpver.reductions.base import PassContext, ReductionResult, remove_on_failure
from lumpver.reductions.exact_conv import channel_signatures
from lumpver.reductions.grouping import classify_signatures, group_rows

EXACT_GRAPH_STATEMENT = ("for every input x: max_i |f_i(x) - g_i(x)| <= a + b * ||x||_inf, in exact real arithmetic "
                         "of the stored float32 weights of both graph networks")


@dataclass
class GraphLumpResult:
    original: GraphNetwork
    reduced: GraphNetwork
    parts: dict[str, ChannelPartition]
    tolerance: float
    rounds: int = 1
    stats: dict[str, Any] = field(default_factory=dict)


def _canon(lab: np.ndarray) -> np.ndarray:
    """Labels renumbered by first occurrence; every -1 its own label; -2 (constant) kept."""
    out = np.empty(lab.size, dtype=np.int64)
    seen: dict[int, int] = {}
    for i, v in enumerate(lab.tolist()):
        if v == -2:
            out[i] = -2
        elif v == -1:
            out[i] = len(seen) + 10 ** 9 + i
        else:
            out[i] = seen.setdefault(v, len(seen))
    return out


def _combine(old: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """The common refinement of two key arrays (-1 = a channel of its own)."""
    pairs = np.stack([old, lab], axis=1)
    _, new = np.unique(pairs, axis=0, return_inverse=True)
    return np.where((old < 0) | (lab < 0), -1, new.reshape(-1))


def _classify(agg: np.ndarray, b_eff: np.ndarray, key: np.ndarray, tol: float) -> ChannelPartition:
    """Channel classes within each key group (positive scales); zero filters are constants."""
    n = agg.shape[0]
    flat = agg.reshape(n, -1)
    sig = channel_signatures(agg, b_eff)
    zero = ~np.any(flat != 0, axis=1)
    label, scale = np.full(n, -1, dtype=np.int64), np.ones(n)
    constant = {int(t): b_eff[t].copy() for t in np.flatnonzero(zero & (key >= 0))}
    next_label = 0
    for t in np.flatnonzero(key < 0):
        label[t], next_label = next_label, next_label + 1
    for k in np.unique(key[(key >= 0) & ~zero]):
        idx = np.flatnonzero((key == k) & ~zero)
        lab, _, sc = classify_signatures(sig[idx], "relu", tol)
        label[idx], scale[idx] = lab + next_label, sc
        next_label += int(lab.max()) + 1
    return _renumbered(label, scale, constant)


def _renumbered(label: np.ndarray, scale: np.ndarray, constant: dict) -> ChannelPartition:
    """Classes numbered by first member, which is the representative (scale 1)."""
    cls = np.full(label.size, -1, dtype=np.int64)
    first: dict[int, int] = {}
    reps = []
    for t, v in enumerate(label.tolist()):
        if v >= 0:
            if v not in first:
                first[v] = len(reps)
                reps.append(t)
            cls[t] = first[v]
    rep = np.array(reps, dtype=np.int64)
    if rep.size:
        scale = scale / scale[rep[cls]] * (cls >= 0) + (cls < 0)
        scale[rep] = 1.0
    return ChannelPartition(cls, scale, rep, np.ones(rep.size, dtype=bool), constant)


@dataclass
class _Pass:
    """One forward pass over the graph: partitions, affine terms, and the splits it asks for."""

    f: GraphNetwork
    keys: dict[str, np.ndarray]
    tol: float
    parts: dict[str, ChannelPartition] = field(default_factory=dict)
    terms: dict[str, tuple] = field(default_factory=dict)
    pushes: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def run(self) -> None:
        for nid in self.f.order:
            node = self.f.node(nid)
            ins = [self.parts[i] for i in node.inputs]
            self.parts[nid] = getattr(self, "_" + node.kind)(nid, node, ins)
            p = self.parts[nid]
            if n_classes(p) == 0:
                lab = np.zeros(p.cls.size, dtype=np.int64)
                lab[0] = -1
                self.pushes.append((nid, lab))
        if not is_identity(self.parts[self.f.output]):
            self.pushes.append((self.f.output, np.full(self.parts[self.f.output].cls.size, -1)))

    def _input(self, nid, node, ins):
        return identity(channels(node))

    def _scale(self, nid, node, ins):
        if node.inputs != ("input",):
            raise InputError("exact lumping: an element-wise scale inside the graph is not supported", None,
                             node.source or nid)
        return identity(channels(node))

    def _affine(self, nid, node, ins):
        self.terms[nid] = affine_terms(self.f, nid, ins[0])
        _, agg, b_eff = self.terms[nid]
        return _classify(agg, b_eff, self.keys[nid], self.tol)

    def _act(self, nid, node, ins):
        act, p = get_activation(node.activation), ins[0]
        bad = np.array([t for t in range(p.cls.size) if p.cls[t] >= 0 and not act.admits_scale(float(p.scale[t]))
                        or (not act.positively_homogeneous and p.scale[t] != 1.0)], dtype=np.int64)
        if bad.size:
            lab = np.zeros(p.cls.size, dtype=np.int64)
            lab[bad] = -1
            self.pushes.append((nid, lab))
        return ChannelPartition(p.cls, p.scale, p.rep, p.kept, {t: act(v, node.alpha) for t, v in p.constant.items()})

    def _maxpool(self, nid, node, ins):
        p = ins[0]
        return ChannelPartition(p.cls, p.scale, p.rep, p.kept, pool_constants(node, p))

    def _concat(self, nid, node, ins):
        return concat_partition(ins)

    def _add(self, nid, node, ins):
        a, b = ins
        lab = _meet(a, b, self.tol)
        if not (np.array_equal(_canon(lab), _canon(_key(a))) and np.array_equal(_canon(lab), _canon(_key(b)))
                and np.array_equal(a.rep, b.rep)):
            self.pushes.append((nid, np.where(lab == -2, lab.max() + 1, lab)))
        return ChannelPartition(a.cls, a.scale, a.rep, a.kept,
                                {t: a.constant[t] + b.constant[t] for t in a.constant if t in b.constant})


def _key(p: ChannelPartition) -> np.ndarray:
    return np.where(p.cls >= 0, p.cls, -2)


def _meet(a: ChannelPartition, b: ChannelPartition, tol: float) -> np.ndarray:
    """Channels that may stay together after an Add: same class on both branches with the same scale
    ratio; -2 constant on both; -1 constant on one branch only."""
    lab = np.full(a.cls.size, -2, dtype=np.int64)
    one = (a.cls < 0) != (b.cls < 0)
    lab[one] = -1
    live = np.flatnonzero((a.cls >= 0) & (b.cls >= 0))
    if live.size:
        ratio = group_rows(np.stack([a.scale[live], b.scale[live]], axis=1), "positive", tol).label
        _, ids = np.unique(np.stack([a.cls[live], b.cls[live], ratio], axis=1), axis=0, return_inverse=True)
        lab[live] = ids.reshape(-1)
    return lab


def _push(f: GraphNetwork, keys: dict[str, np.ndarray], nid: str, lab: np.ndarray) -> bool:
    """Ask the affine nodes whose classes reach ``nid`` to respect ``lab``; whether a key changed."""
    node = f.node(nid)
    if node.kind == "affine":
        new = _combine(keys[nid], lab)
        changed = not np.array_equal(_canon(new), _canon(keys[nid]))
        keys[nid] = new
        return changed
    if node.kind in ("act", "maxpool"):
        return _push(f, keys, node.inputs[0], lab)
    if node.kind == "add":
        return _push(f, keys, node.inputs[0], lab) | _push(f, keys, node.inputs[1], lab)
    if node.kind == "concat":
        cuts = np.cumsum([channels(f.node(i)) for i in node.inputs])[:-1]
        return any([_push(f, keys, i, part) for i, part in zip(node.inputs, np.split(lab, cuts))])
    return False


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _reduced_node(f: GraphNetwork, nid: str, p: ChannelPartition, terms: dict) -> GNode:
    node = f.node(nid)
    if node.kind in ("input", "scale"):
        return node
    if node.kind == "affine":
        view, agg, b_eff = terms[nid]
        op = rebuild(view, _f32(agg[p.rep]), f.node(node.inputs[0]).kind not in ("input", "scale"))
        return GNode("affine", node.inputs, out_shape(op), op=op, bias=_f32(b_eff[p.rep]).reshape(-1),
                     source=node.source, source_op=node.source_op)
    return resized_node(node, n_classes(p))


def lump_graph(f: GraphNetwork, tolerance: float, progress: Progress = SILENT) -> GraphLumpResult:
    """The exact channel quotient of a graph network (module docstring)."""
    keys = {n: np.zeros(channels(f.node(n)), dtype=np.int64) for n in f.order if f.node(n).kind == "affine"}
    limit = sum(keys[n].size for n in keys) + 2
    for rounds in range(1, limit + 1):
        fp = _Pass(f, keys, tolerance)
        fp.run()
        progress.say(f"graph lumping pass {rounds}: {sum(n_classes(p) for p in fp.parts.values())} classes")
        changed = [_push(f, keys, nid, lab) for nid, lab in fp.pushes]
        if not fp.pushes:
            break
        if not any(changed):
            raise AssertionError("graph lumping: a conflict that no split resolves")  # pragma: no cover
    g = nx.DiGraph()
    for nid in f.order:
        g.add_node(nid, node=_reduced_node(f, nid, fp.parts[nid], fp.terms))
        g.add_edges_from((src, nid) for src in f.node(nid).inputs)
    reduced = GraphNetwork(g, f.output, f.input_name, f.output_name, list(f.input_shape), list(f.output_shape),
                           f.output_softmax)
    return GraphLumpResult(f, reduced, fp.parts, tolerance, rounds, model_stats(f, reduced, 0.0))


# ----- dropping channels that nothing reads (or that are 0 on a set) ------------------------------
MAX_ROUNDS = 64  # selection rounds (each round drops more or stops)


@dataclass
class _Links:
    """Channels of all nodes numbered one after the other; ``group`` links element-wise nodes."""

    offset: dict[str, int]
    group: np.ndarray
    blocked: np.ndarray  # per group: holds a channel that must stay

    @staticmethod
    def of(f: GraphNetwork) -> "_Links":
        sizes = [channels(f.node(n)) for n in f.order]
        offset = dict(zip(f.order, np.cumsum([0] + sizes[:-1]).tolist()))
        rows, cols = [], []
        for n in f.order:
            node = f.node(n)
            if node.kind in ("act", "maxpool", "add", "concat"):
                at = offset[n]
                for i in node.inputs:
                    k = channels(f.node(i))
                    rows.append(np.arange(at, at + k))
                    cols.append(np.arange(offset[i], offset[i] + k))
                    at += k if node.kind == "concat" else 0
        total = int(sum(sizes))
        r, c = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, int), np.zeros(0, int))
        _, group = connected_components(coo_matrix((np.ones(r.size), (r, c)), shape=(total, total)), directed=False)
        fixed = np.zeros(total, dtype=bool)
        for n in f.order:
            node = f.node(n)
            if node.kind in ("input", "scale") or n == f.output or any(
                    f.node(s).kind == "scale" for s in f.graph.successors(n)):
                fixed[offset[n]:offset[n] + channels(node)] = True
        blocked = np.zeros(int(group.max(initial=-1)) + 1, dtype=bool)
        blocked[group[fixed]] = True
        return _Links(offset, group, blocked)

    def per_node(self, f: GraphNetwork, flags: np.ndarray) -> dict[str, np.ndarray]:
        return {n: flags[self.offset[n]:self.offset[n] + channels(f.node(n))] for n in f.order}


def _select(f: GraphNetwork, links: _Links, zero: dict[str, np.ndarray], views: dict[str, np.ndarray],
            dropped: np.ndarray) -> np.ndarray:
    """Channels to drop given the current drops (their consumers' kept rows): the module rule."""
    ok = ~links.blocked
    cur = links.per_node(f, dropped)
    for c, w3 in views.items():
        src = f.node(c).inputs[0]
        if not lumped_input(f, c):  # reads the input: nothing to drop there
            continue
        read = np.any(w3[~cur[c]] != 0, axis=(0, 2)) & ~zero[src]
        ok[links.group[links.offset[src] + np.flatnonzero(read)]] = False
    out = ok[links.group]
    for n, flags in links.per_node(f, out).items():  # keep one channel of every node
        if flags.all():
            out[links.group == links.group[links.offset[n]]] = False
    return out


def choose_removals(f: GraphNetwork, zero: dict[str, np.ndarray], progress: Progress = SILENT) -> dict[str, np.ndarray]:
    """The channels to drop per node (module docstring): a selection every round of which is valid
    with all rows kept; the last one is the fixed point of :func:`_select`."""
    links, views = _Links.of(f), channel_views(f)
    dropped = np.zeros(links.group.size, dtype=bool)
    for r in range(MAX_ROUNDS):
        new = _select(f, links, zero, views, dropped)
        progress.say(f"on-set graph selection round {r + 1}: {int(new.sum())} channel(s) dropped")
        if np.array_equal(new, dropped):
            break
        dropped = new
    else:  # no fixed point: the first round is valid on its own
        dropped = _select(f, links, zero, views, np.zeros_like(dropped))
    return {n: np.flatnonzero(flags) for n, flags in links.per_node(f, dropped).items()}


@dataclass
class ExactGraphPass:
    """Exact lumping of a graph network, certificate kind ``exact`` (DESIGN.md §2, §10)."""

    tolerance: float
    name: str = "exact"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        t0 = time.perf_counter()
        # the caller's model is lumped; the bound reads both files afresh (f1, g2)
        f0 = ctx.model if isinstance(ctx.model, GraphNetwork) else load_graph(model_path)
        try:
            dead = choose_removals(f0, {n: np.zeros(channels(f0.node(n)), dtype=bool) for n in f0.order})
            f = without_channels(f0, dead)  # dead channels: read by nothing (DESIGN.md §2)
            ctx.progress.say(f"loaded {model_path}: a graph of {len(f.order)} nodes, "
                             f"{sum(r.size for r in dead.values())} dead node channel(s) dropped; lumping channels")
            result = lump_graph(f, self.tolerance, ctx.progress)
        except InputError as e:  # name the file beside the node
            raise e if e.path else InputError(str(e), str(model_path)) from None
        save_graph(result.reduced, out_path)
        with remove_on_failure(out_path):
            f1 = load_graph(model_path)
            dead_rows = [dead[n].tolist() for n in f0.order]
            f2, g2 = without_channels(f1, dict(zip(f1.order, map(np.asarray, dead_rows)))), load_graph(out_path)
            parts = dict(zip(f2.order, (result.parts[n] for n in f.order)))
            problem = structure_problem(f2, g2, parts)
            if problem is not None:
                raise AssertionError(f"reduced graph does not match its claim: {problem}")
            a, b = graph_discrepancy_bound(f2, g2, parts)
            discrepancy = {"a": a, "b": b, "statement": EXACT_GRAPH_STATEMENT}
            guarantee = {"kind": "exact", "norm": "linf", "float_tolerance": {
                "grouping_tolerance": self.tolerance, "discrepancy_bound": discrepancy}}
            claim = {**claim_of(f2, parts, self.tolerance), "dead": dead_rows}
            evidence = [{"backend": "lumping", "verdict": "proved", "claim": claim, "discrepancy": discrepancy}]
            stats = model_stats(f1, g2, time.perf_counter() - t0)
            cert = make_certificate(model_path, out_path, guarantee, stats, evidence, cert_path)
            write_json_atomic(cert_path, cert)
        return ReductionResult(Path(out_path), Path(cert_path), cert)
