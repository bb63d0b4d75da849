"""The reduction passes (interface: :mod:`lumpver.reductions.base`): exact lumping (DESIGN.md §2),
on-set reduction (§3), approximate lumping (§4), magnitude and coreset pruning (§5, §6), confident
pruning (§7) and quantisation (§8). Each binds its options and writes model + certificate.

Magnitude, coreset and quantisation are certified (kind ``bounded``) only on a declared input set;
without one they write the model alone and say so in ``note``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lumpver.certificates.exact import discrepancy_bound
from lumpver.certificates.exact_conv import channels_per_layer
from lumpver.certificates.format import file_ref, make_certificate, model_stats
from lumpver.errors import CheckFailed, InputError
from lumpver.fileio import write_json_atomic
from lumpver.ir.network import Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.onnx_import import load_model, load_onnx
from lumpver.reductions import confident
from lumpver.reductions.approx import reduce_approx_to_files
from lumpver.reductions.base import PassContext, ReductionResult, remove_on_failure
from lumpver.reductions.certify import Chain, certify_files
from lumpver.reductions.coreset import coreset_prune, input_betas
from lumpver.reductions.exact import DEFAULT_TOLERANCE, exact_lump
from lumpver.reductions.onset import reduce_on_set_to_files
from lumpver.reductions.channel_conv import stored_arrays
from lumpver.reductions.coreset_graph import coreset_prune_graph, input_norms
from lumpver.reductions.pruning import channel_keep_sets, magnitude_prune, neuron_keep_sets, sparsity
from lumpver.reductions.pruning_graph import certify_removed, magnitude_prune_graph
from lumpver.reductions.quantize import quantize_graph, quantize_network, quantize_summary, save_quantized
from lumpver.specs.calibration import load_calibration

EXACT_STATEMENT = ("for every input x: max_i |f_i(x) - g_i(x)| <= a + b * ||x||_inf, in exact real arithmetic of "
                   "the stored float32 weights; float32 evaluation by a runtime adds its own rounding to both models")


def _bounded_summary(cert: dict[str, Any], norm: str, extra: str = "") -> list[str]:
    return [f"bounded: {norm} error <= {cert['guarantee']['epsilon']:.6g} on the input set{extra}"]


@dataclass
class ExactPass:
    """Exact lumping, certificate kind ``exact`` (DESIGN.md §2)."""

    tolerance: float = DEFAULT_TOLERANCE
    name: str = "exact"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        if not 0 < self.tolerance < 0.1:
            raise InputError(f"tolerance must be in (0, 0.1) for exact lumping, got {self.tolerance}")
        t0 = time.perf_counter()
        net = ctx.model if isinstance(ctx.model, Network) else load_onnx(model_path)
        ctx.progress.say(f"loaded {model_path}; lumping {net.n_hidden} hidden neurons in {len(net.layers) - 1} layers")
        result = exact_lump(net, self.tolerance, ctx.progress)
        a, b = discrepancy_bound(net, result.reduced, result.classes, self.tolerance, result.raw_signatures)
        ctx.progress.say(f"writing {out_path} ({result.reduced.n_hidden} hidden neurons)")
        save_onnx(result.reduced, out_path)
        with remove_on_failure(out_path):
            discrepancy = {"a": a, "b": b, "statement": EXACT_STATEMENT}
            guarantee = {"kind": "exact", "norm": "linf", "float_tolerance": {
                "grouping_tolerance": self.tolerance, "discrepancy_bound": discrepancy}}
            evidence = [{"backend": "lumping", "verdict": "proved", "claim": result.claim, "discrepancy": discrepancy}]
            stats = model_stats(net, result.reduced, time.perf_counter() - t0)
            cert = make_certificate(model_path, out_path, guarantee, stats, evidence, cert_path)
            write_json_atomic(cert_path, cert)
        return ReductionResult(Path(out_path), Path(cert_path), cert)


@dataclass
class OnSetPass:
    """Exact reduction on the input set, certificate kind ``exact-on-set`` (DESIGN.md §3)."""

    name: str = "on-set"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        input_set = ctx.need_input_set("on-set reduction")
        cert = reduce_on_set_to_files(model_path, out_path, cert_path, input_set, ctx.progress.quiet,
                                      ctx.progress)
        return ReductionResult(Path(out_path), Path(cert_path), cert)


@dataclass
class ApproxPass:
    """Approximate lumping within ``epsilon`` on the input set, kind ``bounded`` (DESIGN.md §4)."""

    epsilon: float
    norm: str = "linf"
    backend: str = "auto"
    timeout: float = 300.0
    workers: int = 1  # processes of the certifications' ReLU-phase stage
    search: str = "auto"  # how candidates are built (approx.SEARCHES)
    name: str = "approx"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        if not self.epsilon >= 0:
            raise InputError(f"approximate lumping needs epsilon >= 0, got {self.epsilon}")
        input_set = ctx.need_input_set("approximate lumping")
        cert = reduce_approx_to_files(model_path, out_path, cert_path, input_set, self.epsilon, self.norm,
                                      self.backend, self.timeout, ctx.progress, self.workers, self.search)
        return ReductionResult(Path(out_path), Path(cert_path), cert)


def _check_keep(keep: Optional[float], method: str) -> float:
    if keep is None:
        raise InputError(f"{method} pruning needs --keep FRACTION")
    if not 0.0 < keep <= 1.0:
        raise InputError(f"--keep must lie in (0, 1], got {keep}")
    return keep


def _certify_or_note(model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext, chain: Optional[Chain],
                     method: dict[str, Any], seconds: float, what: str, norm: str = "linf",
                     timeout: float = 120.0) -> ReductionResult:
    """Certify the written model on the input set (kind ``bounded``), or say why there is no certificate."""
    if ctx.input_set is None:
        return ReductionResult(Path(out_path), note=f"no certificate: {what} is certified only on a declared input set")
    with remove_on_failure(out_path):
        cert = certify_files(str(model_path), str(out_path), str(cert_path), ctx.input_set, norm, chain, method,
                             seconds, timeout, ctx.progress)
    return ReductionResult(Path(out_path), Path(cert_path), cert, _bounded_summary(cert, norm))


@dataclass
class MagnitudePrunePass:
    """Deterministic magnitude pruning to ``keep`` (DESIGN.md §5)."""

    keep: float
    granularity: str = "weight"  # or "neuron"
    scope: Optional[str] = None  # default: global for weights, layer for neurons and channels
    timeout: float = 120.0  # seconds for certification (with an input set)
    name: str = "prune (magnitude)"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        keep = _check_keep(self.keep, "magnitude")
        scope = self.scope or ("global" if self.granularity == "weight" else "layer")
        net = load_model(model_path)
        t0 = time.perf_counter()
        if isinstance(net, GraphNetwork):  # residual Add, Concat, MaxPool: channels removed where the group allows
            res = magnitude_prune_graph(net, keep, self.granularity, scope, ctx.progress)
            save_graph(res.reduced, out_path)
            method = {"method": "magnitude", "keep": keep, "granularity": self.granularity, "scope": scope,
                      "graph": True, "sparsity": sparsity(res.zeroed), "channels_pruned": res.pruned,
                      "channels_removed": res.removed, "channels_zeroed": res.pruned - res.removed}
            out = _certify_removed_or_note(model_path, out_path, cert_path, ctx, res.rows, method,
                                           time.perf_counter() - t0, "magnitude pruning", self.timeout)
            counts = [res.summary()] if self.granularity == "channel" else []
            out.summary[:0] = [_graph_sizes(net, res.reduced)] + counts
            return out
        pruned = magnitude_prune(net, keep, self.granularity, scope)
        save_onnx(pruned, out_path)
        ctx.progress.say(f"magnitude pruning ({self.granularity}, {scope}) kept {keep}: {_sizes(net, pruned)}, "
                         f"hidden-weight sparsity {sparsity(pruned):.3f}")
        kept = {"neuron": neuron_keep_sets, "channel": channel_keep_sets}.get(self.granularity)
        chain = Chain(kept=kept(net, keep, scope)) if kept is not None else None
        method = {"method": "magnitude", "keep": keep, "granularity": self.granularity, "scope": scope}
        out = _certify_or_note(model_path, out_path, cert_path, ctx, chain, method, time.perf_counter() - t0,
                               "magnitude pruning", timeout=self.timeout)
        out.summary.insert(0, _sizes(net, pruned))
        return out


def _certify_removed_or_note(model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext, rows: list,
                             method: dict[str, Any], seconds: float, what: str, timeout: float) -> ReductionResult:
    """:func:`_certify_or_note` for a graph whose pruned channels were removed (``rows`` per node):
    certified with them restored as zeros (:func:`lumpver.reductions.pruning_graph.certify_removed`)."""
    if ctx.input_set is None or not any(rows):
        return _certify_or_note(model_path, out_path, cert_path, ctx, None, method, seconds, what, timeout=timeout)
    with remove_on_failure(out_path):
        cert = certify_removed(model_path, out_path, cert_path, ctx.input_set, rows, method, seconds, timeout,
                               ctx.progress)
    return ReductionResult(Path(out_path), Path(cert_path), cert, _bounded_summary(cert, "linf"))


def _graph_sizes(before: GraphNetwork, after: GraphNetwork) -> str:
    """Channels per hidden node and parameters of a graph, before -> after."""
    return (f"channels per hidden node {before.hidden_channels} -> {after.hidden_channels}; "
            f"parameters {before.n_params} -> {after.n_params} (nonzero {nonzero_params(before)} -> "
            f"{nonzero_params(after)})")


def _sizes(before: Network, after: Network) -> str:
    """Hidden widths (dense) or channels per hidden layer (CNN), before -> after."""
    if before.is_dense:
        return f"hidden widths {before.hidden_widths} -> {after.hidden_widths}"
    return f"channels per hidden layer {channels_per_layer(before)} -> {channels_per_layer(after)}"


@dataclass
class CoresetPass:
    """Sensitivity-sampled neuron or filter pruning (DESIGN.md §6); the actual error is certified on X."""

    keep: float
    seed: int = 0
    timeout: float = 120.0  # seconds for certification (with an input set)
    name: str = "prune (coreset)"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        keep = _check_keep(self.keep, "coreset")
        net = load_model(model_path)
        if isinstance(net, GraphNetwork):
            return self._graph(net, keep, model_path, out_path, cert_path, ctx)
        t0 = time.perf_counter()
        betas = input_betas(net, ctx.input_set) if ctx.input_set is not None else 1.0
        res = coreset_prune(net, keep, betas, seed=self.seed)
        save_onnx(res.reduced, out_path)
        bound = sum(lc.coreset_bound for lc in res.layers)
        ctx.progress.say(f"coreset pruning kept {keep}: {_sizes(net, res.reduced)}; "
                         f"coreset (probabilistic) bound indication {bound:.4g}")
        method = self._method(keep, betas, bound, [lc.to_json() for lc in res.layers])
        out = _certify_or_note(model_path, out_path, cert_path, ctx, Chain(kept=res.kept), method,
                               time.perf_counter() - t0, "coreset pruning", timeout=self.timeout)
        out.summary = [_sizes(net, res.reduced)] + [line + f" (coreset indication {bound:.4g})" for line in out.summary]
        return out

    def _method(self, keep: float, betas: Any, bound: float, layers: list[dict]) -> dict[str, Any]:
        return {"method": "coreset", "keep": keep, "seed": self.seed, "betas": betas, "coreset_bound": bound,
                "coreset_bound_note": "sensitivity-framework indication with constant 1 and delta 0.1 "
                "(probabilistic, not certified)", "layers": layers}

    def _graph(self, net: GraphNetwork, keep: float, model_path: Path, out_path: Path, cert_path: Path,
               ctx: PassContext) -> ReductionResult:
        """Filters of the conv/dense nodes read only by conv/dense nodes (:mod:`lumpver.reductions.coreset_graph`)."""
        t0 = time.perf_counter()
        norms = input_norms(net, ctx.input_set) if ctx.input_set is not None else None
        res = coreset_prune_graph(net, keep, norms, self.seed, progress=ctx.progress)
        save_graph(res.reduced, out_path)
        bound = sum(lc.coreset_bound for lc in res.layers.values())
        betas = {net.node(n).source or n: (norms or {}).get(net.node(n).inputs[0], 1.0) for n in res.layers}
        method = self._method(keep, betas, bound, res.to_json(net)) | {"graph": True}
        out = _certify_removed_or_note(model_path, out_path, cert_path, ctx, res.rows, method,
                                       time.perf_counter() - t0, "coreset pruning", self.timeout)
        kept = [net.node(n).source or n for n in res.untouched]
        note = (f"filters sampled in {len(res.layers)} conv/dense node(s); {len(kept)} hidden node(s) kept as they "
                f"are (their channels feed an Add, a Concat or the output){': ' + ', '.join(kept) if kept else ''}")
        out.summary = [_graph_sizes(net, res.reduced), note] + [
            line + f" (coreset indication {bound:.4g})" for line in out.summary]
        return out


@dataclass
class ConfidentPass:
    """Learn then Test over magnitude-pruning levels (DESIGN.md §7; graph networks §10); abstains with CheckFailed."""

    calibration: Path
    config: confident.ConfidentConfig
    write_certificate: bool = True
    name: str = "prune (confident)"

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        config = self.config
        try:
            config.validate()
        except ValueError as e:
            raise InputError(str(e), str(model_path)) from None
        net = load_model(model_path)  # a chain, or a graph (residual Add, Concat, MaxPool)
        calib = load_calibration(self.calibration, net.n_inputs, net.n_outputs, need_labels=config.loss == "zero-one")
        ctx.progress.say(f"confident pruning: n={calib.n}, loss={config.loss}, p-value={config.pvalue_method}, "
                         f"{config.procedure}, alpha={config.alpha}, delta={config.delta}, {len(config.levels)} levels")
        result = confident.confident_prune(net, model_path, calib, config, ctx.progress)
        sel = result.selection
        for level, r, p in zip(config.levels, sel.risks, sel.pvalues):
            ctx.progress.say(f"  level {level:.4g}: empirical risk {r:.4f}, p-value {p:.3g}")
        if result.abstained:
            raise CheckFailed(f"abstained: no pruning level passed the {config.procedure} test at delta "
                              f"{config.delta} (p-value at the least pruning {config.levels[0]}: {sel.pvalues[0]:.3g}; "
                              f"smallest: {min(sel.pvalues):.3g}); no model written")
        (save_graph if isinstance(net, GraphNetwork) else save_onnx)(result.reduced, out_path)
        line = (f"pruned {result.level:.4g} of the hidden {result.config.granularity}s "
                f"(p = {sel.pvalues[sel.chosen]:.3g} < delta = {config.delta}): expected {config.loss} loss <= {config.alpha} with confidence {1 - config.delta:g}")
        if not self.write_certificate:
            return ReductionResult(Path(out_path), summary=[line, self._sizes(net, result)])
        with remove_on_failure(out_path):
            stats = model_stats(net, result.reduced, result.seconds)
            stats.update(nonzero_params_before=nonzero_params(net), nonzero_params_after=nonzero_params(result.reduced))
            ref = file_ref(self.calibration, Path(cert_path).resolve().parent)
            cert = make_certificate(model_path, out_path, confident.guarantee(result), stats,
                                    [confident.evidence(result, ref)], cert_path)
            write_json_atomic(cert_path, cert)
        return ReductionResult(Path(out_path), Path(cert_path), cert, [line, self._sizes(net, result)])

    @staticmethod
    def _sizes(net: Network | GraphNetwork, result: confident.ConfidentResult) -> str:
        if isinstance(net, Network):
            return _sizes(net, result.reduced)
        return (f"channels per hidden node {net.hidden_channels} -> {result.reduced.hidden_channels}; "
                f"{result.sparsities[result.selection.chosen]:.3f} of the hidden "
                f"{'weights zeroed' if result.config.granularity == 'weight' else 'channels removed or zeroed'}")


def nonzero_params(net: Network | GraphNetwork) -> int:
    """Nonzero weights and biases (the size that pruning actually changes) of a chain or a graph."""
    affine = net.layers if isinstance(net, Network) else \
        [net.node(n) for n in net.order if net.node(n).kind == "affine"]
    return sum(sum(int(np.count_nonzero(a)) for a in stored_arrays(x.op)) + int(np.count_nonzero(x.bias))
               for x in affine)


@dataclass
class QuantizePass:
    """Symmetric uniform weight quantisation with QDQ export (DESIGN.md §8)."""

    bits: int = 8
    per_channel: bool = False
    norm: str = "linf"
    float_weights: bool = False  # write dequantised float32 weights instead of int8 + DequantizeLinear
    timeout: float = 120.0
    name: str = field(default="quantize")

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        if self.bits not in (4, 8):
            raise InputError(f"quantisation needs 4 or 8 bits, got {self.bits}")
        t0 = time.perf_counter()
        net = load_model(model_path)
        quantize = quantize_graph if isinstance(net, GraphNetwork) else quantize_network
        g, qls = quantize(net, self.bits, self.per_channel)
        save_quantized(g, qls, out_path, self.float_weights)
        ctx.progress.say(f"{self.bits}-bit {'per-channel' if self.per_channel else 'per-tensor'} quantisation "
                         f"written to {out_path} ({Path(model_path).stat().st_size} -> "
                         f"{Path(out_path).stat().st_size} bytes)")
        method = quantize_summary(qls, self.bits, self.per_channel) | {"float_weights": bool(self.float_weights)}
        return _certify_or_note(model_path, out_path, cert_path, ctx, None, method, time.perf_counter() - t0,
                                "quantisation", self.norm, self.timeout)
