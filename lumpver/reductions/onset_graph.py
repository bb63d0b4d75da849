"""On-set reduction of graph networks: residual Add, Concat, MaxPool (DESIGN.md §3, §10).

Over the declared input set X the graph bound engine (:mod:`lumpver.bounds.graph_engine`, CROWN
through conv, pool, Add and Concat) proves channels 0 at every position (a ReLU whose
pre-activation upper bound is ``<= 0`` everywhere, and what max pools or sums only such channels).
Channels are linked across element-wise nodes (activation, max pool, Add: the same channel on every
input; Concat: each part's channels at their offset), and a linked group is dropped as a whole when
no member belongs to the input, a normalisation or the output, and every conv/dense node reading a
member either reads a channel proved 0 on X or has all-zero filters on it for its kept outputs (a
dead channel). Dropping output channels of a node can make its inputs' channels dead, so the
selection (:func:`lumpver.reductions.exact_graph.choose_removals`) is repeated until it no longer
changes. Every node keeps at least one channel. The discrepancy on X of this step is 0. Exact graph
lumping (:func:`lumpver.reductions.exact_graph.lump_graph`) of the result follows as a second step
when it merges channels (its bound ``a + b ||x||_inf`` at the largest ``||x||_inf`` on X). The
claims and their re-check are :mod:`lumpver.certificates.onset_graph`.

Stably active channels are folded linearly (:mod:`lumpver.reductions.onset_graph_fold`, a second
step ``on-set-graph-fold`` after the drops) when exact lumping merges nothing: a channel linear at every
position over X whose augmented filter is a linear combination of others of its node goes into its
readers' filters, only where every reader is a conv/dense node (a max pool, and an Add or Concat, are
not linear across channels), with a sound float discrepancy bound for the rounded folded filters.
Channels that are a non-zero constant on X are not folded (a channel constant on X has a constant
input, i.e. all-zero filters, and the lumping step folds those already).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lumpver.certificates.exact_graph import claim_of, graph_discrepancy_bound, structure_problem
from lumpver.certificates.format import make_certificate, model_stats
from lumpver.certificates.graph_channels import removal_problem, same_graph, without_channels
from lumpver.certificates.onset_graph import STATEMENT, STEP, set_xmax, zero_channels
from lumpver.certificates.onset_graph_fold import FOLD_STEP, claims_to_json
from lumpver.errors import InputError
from lumpver.fileio import write_json_atomic
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_graph
from lumpver.progress import SILENT, Progress
from lumpver.reductions.base import PassContext, ReductionResult, remove_on_failure
from lumpver.reductions.exact import DEFAULT_TOLERANCE
from lumpver.reductions.exact_graph import GraphLumpResult, choose_removals, lump_graph
from lumpver.reductions.onset_graph_fold import GraphFold, fold_graph_on_set
from lumpver.specs.inputset import InputSet

@dataclass
class GraphOnSetResult:
    """Outcome of :func:`reduce_graph_on_set`: the drops per node, f without them (``onset``), the
    exact lumping of that (None when it merges nothing) and the final graph."""

    original: GraphNetwork
    onset: GraphNetwork
    reduced: GraphNetwork
    removed: dict[str, np.ndarray]
    n_zero: int  # dropped node channels proved 0 on X
    lumped: Optional[GraphLumpResult] = None
    folds: Optional[GraphFold] = None
    stats: dict[str, Any] = field(default_factory=dict)


def reduce_graph_on_set(f: GraphNetwork, input_set: InputSet, method: str = "crown", lump: bool = True,
                        progress: Progress = SILENT) -> GraphOnSetResult:
    """Drop the channels of ``f`` that are 0 on ``input_set`` or dead, then (``lump``) lump the
    result's channels exactly (module docstring)."""
    if input_set.dim != f.n_inputs:
        raise ValueError(f"input set has {input_set.dim} dimensions, the network {f.n_inputs} inputs")
    zero = zero_channels(f, input_set, method, progress)
    removed = choose_removals(f, zero, progress)
    problem = removal_problem(f, removed, zero)
    if problem is not None:  # the selection and the claim's rule disagree: a bug, never a certificate
        raise AssertionError(f"on-set graph selection is not valid: {problem}")
    g = without_channels(f, removed)
    lumped = _lump(g, progress) if lump else None
    folds = fold_graph_on_set(g, input_set, method, progress=progress) if lumped is None else None
    final = lumped.reduced if lumped is not None else folds.reduced if folds is not None else g
    n_zero = sum(int(np.sum(zero[n][r])) for n, r in removed.items())
    return GraphOnSetResult(f, g, final, removed, n_zero, lumped, folds, model_stats(f, final, 0.0))


def _lump(g: GraphNetwork, progress: Progress) -> Optional[GraphLumpResult]:
    """Exact channel lumping of ``g`` when it merges something (None otherwise, or when the graph
    has something lumping does not support)."""
    try:
        res = lump_graph(g, DEFAULT_TOLERANCE, progress)
    except InputError as e:
        progress.say(f"exact lumping after the on-set step skipped: {e}")
        return None
    return res if sum(res.stats["channels_after"]) < sum(res.stats["channels_before"]) else None


@dataclass
class OnSetGraphPass:
    """On-set reduction of a graph network, certificate kind ``exact-on-set`` (DESIGN.md §3, §10)."""

    method: str = "crown"
    lump: bool = True
    name: str = "on-set"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        input_set = ctx.need_input_set("on-set reduction")
        t0 = time.perf_counter()
        f = load_graph(model_path)
        ctx.progress.say(f"on-set reduction of a graph of {len(f.order)} nodes over {len(input_set.regions)} region(s)")
        try:
            res = reduce_graph_on_set(f, input_set, self.method, self.lump, ctx.progress)
        except InputError as e:  # name the file beside the node
            raise e if e.path else InputError(str(e), str(model_path)) from None
        save_graph(res.reduced, out_path)
        with remove_on_failure(out_path):
            steps, bound = self._steps(model_path, out_path, input_set, res)
            guarantee = {"kind": "exact-on-set", "input_set": input_set.to_json(), "norm": "linf", "epsilon": bound,
                         "float_tolerance": {"discrepancy_bound": bound, "statement": STATEMENT}}
            stats = {**res.stats, "seconds": round(time.perf_counter() - t0, 6)}
            cert = make_certificate(model_path, out_path, guarantee, stats, steps, cert_path)
            write_json_atomic(cert_path, cert)
        ctx.progress.say(f"wrote {out_path}: channels {sum(res.stats['channels_before'])} -> "
                         f"{sum(res.stats['channels_after'])} and {cert_path}")
        return ReductionResult(Path(out_path), Path(cert_path), cert)

    def _steps(self, model_path: Path, out_path: Path, input_set: InputSet,
               res: GraphOnSetResult) -> tuple[list[dict[str, Any]], float]:
        """The evidence steps about the two files, and the bound on X they give (0 without lumping)."""
        f2, g2 = load_graph(model_path), load_graph(out_path)
        removed = [res.removed[n].tolist() for n in res.original.order]
        h = without_channels(f2, dict(zip(f2.order, map(np.asarray, removed))))
        n_all = sum(len(r) for r in removed)
        onset_stats = model_stats(res.original, res.onset, 0.0)
        step = {"step": STEP, "backend": "bounds", "verdict": "proved", "method": self.method, "removed": removed,
                "n_removed": n_all, "n_zero_on_set": res.n_zero, "discrepancy": 0.0,
                "reason": f"graph {self.method} bounds on X proved {res.n_zero} of the {n_all} dropped node channel(s) "
                          "0 at every position; every conv/dense node that reads a dropped channel reads one of "
                          "those or has all-zero filters on it (DESIGN.md §3, §10)",
                "channels_before": onset_stats["channels_before"], "channels_after": onset_stats["channels_after"]}
        if res.folds is not None:
            fold_step = {"step": FOLD_STEP, "backend": "bounds", "verdict": "proved", "method": self.method,
                         "folds": claims_to_json(res.onset, res.folds.claims), "discrepancy": res.folds.discrepancy,
                         "channels_before": onset_stats["channels_after"], "channels_after": res.stats["channels_after"],
                         "reason": f"{sum(c.folded.size for c in res.folds.claims.values())} channel(s) linear at every "
                                   "position on X are linear combinations of others of their node and were folded into "
                                   "their conv/dense readers' filters (DESIGN.md §3, §10)"}
            return [step, fold_step], res.folds.discrepancy * (1 + 1e-6)
        if res.lumped is None:
            problem = same_graph(h, g2)
            if problem is not None:
                raise AssertionError(f"the written graph is not the original without the dropped channels: {problem}")
            return [step], 0.0
        parts = dict(zip(h.order, (res.lumped.parts[n] for n in res.onset.order)))
        problem = structure_problem(h, g2, parts)
        if problem is not None:
            raise AssertionError(f"the written graph does not match its lumping claim: {problem}")
        a, b = graph_discrepancy_bound(h, g2, parts)
        bound = a + b * set_xmax(input_set)
        lump_step = {"step": "exact-lumping", "backend": "lumping", "verdict": "proved",
                     "claim": claim_of(h, parts, DEFAULT_TOLERANCE), "discrepancy": bound, "discrepancy_ab": [a, b],
                     "channels_before": onset_stats["channels_after"], "channels_after": res.stats["channels_after"]}
        # relative slack so that the checker's recomputation (same sound terms) stays below the claim
        return [step, lump_step], bound * (1 + 1e-6)
