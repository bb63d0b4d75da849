"""On-set reduction of graph networks: residual Add, Concat, MaxPool (DESIGN.md §3, §10).

Over the declared input set X the graph bound engine (:mod:`lumpver.bounds.graph_engine`, CROWN
through conv, pool, Add and Concat) proves channels 0 at every position (a ReLU whose
pre-activation upper bound is ``<= 0`` everywhere, and what max pools or sums only such channels).
Channels are linked across element-wise nodes (activation, max pool, Add: the same channel on every
input; Concat: each part's channels at their offset), and a linked group is dropped as a whole when
no member belongs to the input, a normalisation or the output, and every conv/dense node reading a
member either reads a channel proved 0 on X or has all-zero filters on it for its kept outputs (a
dead channel). Dropping output channels of a node can make its inputs' channels dead, so the
selection is repeated until it no longer changes. Every node keeps at least one channel. The claim
and its re-check are :mod:`lumpver.certificates.onset_graph`; the discrepancy on X is 0.

Not done here: stably active channels are not linearly lumped (a stably active channel is affine
in its input only position by position, and a conv channel's positions share one filter; the
dense-layer algebra of §3 has no channel analogue), and channels that are a non-zero constant on X
are not folded (that needs a float discrepancy bound through the rest of the graph). Exact graph
lumping (``reduce --mode exact``) of the result merges proportional channels.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lumpver.certificates.format import make_certificate
from lumpver.certificates.graph_channels import (channel_views, channels, graph_stats, lumped_input, removal_problem,
                                                same_graph, without_channels)
from lumpver.certificates.onset_graph import STATEMENT, STEP, zero_channels
from lumpver.errors import InputError
from lumpver.fileio import write_json_atomic
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_graph
from lumpver.progress import SILENT, Progress
from lumpver.reductions.base import PassContext, ReductionResult, remove_on_failure
from lumpver.specs.inputset import InputSet

MAX_ROUNDS = 64  # selection rounds (each round drops more or stops)


@dataclass
class GraphOnSetResult:
    """Outcome of :func:`reduce_graph_on_set`: the drops per node and the reduced graph."""

    original: GraphNetwork
    reduced: GraphNetwork
    removed: dict[str, np.ndarray]
    n_zero: int  # dropped channels proved 0 on X (the others are dead)
    stats: dict[str, Any] = field(default_factory=dict)


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


def reduce_graph_on_set(f: GraphNetwork, input_set: InputSet, method: str = "crown",
                        progress: Progress = SILENT) -> GraphOnSetResult:
    """Drop the channels of ``f`` that are 0 on ``input_set`` or dead (module docstring)."""
    if input_set.dim != f.n_inputs:
        raise ValueError(f"input set has {input_set.dim} dimensions, the network {f.n_inputs} inputs")
    zero = zero_channels(f, input_set, method, progress)
    removed = choose_removals(f, zero, progress)
    problem = removal_problem(f, removed, zero)
    if problem is not None:  # the selection and the claim's rule disagree: a bug, never a certificate
        raise AssertionError(f"on-set graph selection is not valid: {problem}")
    g = without_channels(f, removed)
    n_zero = sum(int(np.sum(zero[n][r])) for n, r in removed.items())
    return GraphOnSetResult(f, g, removed, n_zero, graph_stats(f, g))


@dataclass
class OnSetGraphPass:
    """On-set reduction of a graph network, certificate kind ``exact-on-set`` (DESIGN.md §3, §10)."""

    method: str = "crown"
    name: str = "on-set"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        input_set = ctx.need_input_set("on-set reduction")
        t0 = time.perf_counter()
        f = load_graph(model_path)
        ctx.progress.say(f"on-set reduction of a graph of {len(f.order)} nodes over {len(input_set.regions)} region(s)")
        try:
            res = reduce_graph_on_set(f, input_set, self.method, ctx.progress)
        except InputError as e:  # name the file beside the node
            raise e if e.path else InputError(str(e), str(model_path)) from None
        save_graph(res.reduced, out_path)
        with remove_on_failure(out_path):
            cert = self._certificate(model_path, out_path, cert_path, input_set, res, time.perf_counter() - t0)
            write_json_atomic(cert_path, cert)
        ctx.progress.say(f"wrote {out_path}: channels {sum(res.stats['channels_before'])} -> "
                         f"{sum(res.stats['channels_after'])} and {cert_path}")
        return ReductionResult(Path(out_path), Path(cert_path), cert)

    def _certificate(self, model_path: Path, out_path: Path, cert_path: Path, input_set: InputSet,
                     res: GraphOnSetResult, seconds: float) -> dict[str, Any]:
        f2, g2 = load_graph(model_path), load_graph(out_path)  # the claim is about the files
        removed = [res.removed[n].tolist() for n in res.original.order]
        problem = same_graph(without_channels(f2, dict(zip(f2.order, map(np.asarray, removed)))), g2)
        if problem is not None:
            raise AssertionError(f"the written graph is not the original without the dropped channels: {problem}")
        n_all = sum(len(r) for r in removed)
        step = {"step": STEP, "backend": "bounds", "verdict": "proved", "method": self.method, "removed": removed,
                "n_removed": n_all, "n_zero_on_set": res.n_zero, "discrepancy": 0.0,
                "reason": f"graph {self.method} bounds on X proved {res.n_zero} channel(s) 0 at every position; "
                          f"{n_all - res.n_zero} more read by nothing after their removal (dead); all "
                          f"dropped (DESIGN.md §3, §10)",
                "channels_before": res.stats["channels_before"], "channels_after": res.stats["channels_after"]}
        guarantee = {"kind": "exact-on-set", "input_set": input_set.to_json(), "norm": "linf", "epsilon": 0.0,
                     "float_tolerance": {"discrepancy_bound": 0.0, "statement": STATEMENT}}
        stats = {**res.stats, "seconds": round(seconds, 6)}
        return make_certificate(model_path, out_path, guarantee, stats, [step], cert_path)


def reduce_graph_on_set_to_files(model_path: str | os.PathLike, out_path: str | os.PathLike,
                                 cert_path: Optional[str | os.PathLike], input_set: InputSet,
                                 progress: Progress = SILENT) -> dict[str, Any]:
    """:class:`OnSetGraphPass` on files (paths are not checked here: see :func:`lumpver.api.reduce.apply_pass`)."""
    res = OnSetGraphPass().apply(Path(model_path), Path(out_path), Path(cert_path), PassContext(input_set, progress))
    return res.certificate
