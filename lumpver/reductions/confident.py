"""Confident pruning: Learn then Test over a grid of global magnitude-pruning levels (DESIGN.md §7).

The candidate models are ``prune_weights(net, lambda_k)`` for a grid ``lambda_1 < ... < lambda_K``
(see :mod:`lumpver.reductions.pruning`: hidden-layer weights only, biases and output layer kept, ties by
index), or with ``granularity="channel"`` (the family for convolutional networks, DESIGN.md §10)
``prune_channels(net, 1 - lambda_k)``: the ``lambda_k`` fraction of each hidden layer's channels
with the smallest magnitude scores removed (filters and the next layer's slices). They depend on
the dense network alone, never on the calibration data, which is what makes the Learn-then-Test guarantee hold: with probability at least ``1 - delta`` over an i.i.d.
calibration draw, the chosen model's expected loss is at most ``alpha``.

Losses (per sample, in [0, 1]; ``f`` dense, ``g`` pruned):

* ``disagreement``: ``1[argmax f(x) != argmax g(x)]`` (first maximal index), no labels needed;
* ``zero-one``: ``1[argmax g(x) != y]``, needs labels;
* ``deviation``: ``1[||f(x) - g(x)||_inf > T]``;
* ``deviation-clipped``: ``min(1, ||f(x) - g(x)||_inf / T)`` (continuous: Hoeffding-Bentkus only).

Outputs come from onnxruntime on ONNX files (``evaluator="onnxruntime"``, the default: the
guarantee is about the written file as run by onnxruntime) or from ``Network.forward`` in
float32 (``evaluator="float32"``: the guarantee is about that arithmetic); the certificate says
which, and the checker recomputes the same way.

Graph networks (residual Add, Concat, MaxPool; DESIGN.md §10): the family comes from
:mod:`lumpver.reductions.confident_graph` (graph channel or weight pruning), evaluated the same ways
(onnxruntime on the exported candidate, or the graph's own float32 forward pass); the evidence then
also describes each channel candidate so that the checker can rebuild it (``structures``).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from lumpver.reductions import ltt
from lumpver.reductions.confident_graph import GRAPH_CHANNEL_RULE, GRAPH_WEIGHT_RULE, graph_candidate
from lumpver.specs.calibration import CalibrationData
from lumpver.certificates.exact_conv import channels_per_layer
from lumpver.errors import InputError
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.network import Network
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.progress import SILENT, Progress
from lumpver.reductions.pruning import prune_channels, prune_weights, sparsity
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.runtime import run_onnx

LOSSES = ("disagreement", "zero-one", "deviation", "deviation-clipped")
BINARY_LOSSES = ("disagreement", "zero-one", "deviation")
EVALUATORS = ("onnxruntime", "float32")
DEFAULT_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(18))  # 0.10, 0.15, ..., 0.95
PRUNING_RULE = {
    "method": "global magnitude pruning",
    "granularity": "weight",
    "scope": "global",
    "pruned": "hidden-layer weights (layers[:-1]); biases, input ops and the output layer kept",
    "count": "floor(level * N) of the N hidden weights, smallest |w| first",
    "ties": "by index (hidden layers in order, row-major)",
}
CHANNEL_RULE = {
    "method": "magnitude channel pruning",
    "granularity": "channel",
    "scope": "layer",
    "pruned": "output channels of every hidden layer (filters with their bias, and the next layer's weights "
              "reading them); the output layer keeps its outputs",
    "score": "sqrt(sum filter_t^2 + mean over positions of b_t^2) * sqrt(sum of the next layer's weights reading t, "
             "squared), in float64 as written",
    "count": "max(1, ceil(round(round(1 - level, 12) * C, 9))) of the C channels kept per hidden layer, largest "
             "scores first",
    "ties": "by index",
}
GRANULARITIES = ("weight", "channel", "auto")  # auto: channel for a CNN, weight for a dense network


@dataclass
class ConfidentConfig:
    """What the user asked for. ``pvalue="auto"``: binomial for binary losses, HB otherwise."""

    alpha: float
    delta: float
    levels: tuple[float, ...] = DEFAULT_GRID
    loss: str = "disagreement"
    threshold: Optional[float] = None
    pvalue: str = "auto"
    procedure: str = "fixed-sequence"
    evaluator: str = "onnxruntime"
    granularity: str = "auto"  # the pruning family: "weight", "channel" (CNNs) or "auto"

    def validate(self) -> None:
        """ValueError with a one-line reason for any inconsistent setting."""
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")
        if not self.levels:
            raise ValueError("the grid of pruning levels is empty")
        if any(not 0.0 <= v <= 1.0 for v in self.levels):
            raise ValueError("pruning levels must lie in [0, 1]")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:])):
            raise ValueError("pruning levels must be strictly increasing (fixed sequence from the least pruning)")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.loss.startswith("deviation") and not (self.threshold is not None and self.threshold > 0):
            raise ValueError(f"the {self.loss} loss needs a threshold T > 0 (--threshold)")
        if self.pvalue not in ("auto",) + ltt.PVALUES:
            raise ValueError(f"unknown p-value {self.pvalue!r}")
        if self.pvalue == "binomial" and self.loss not in BINARY_LOSSES:
            raise ValueError(f"the binomial p-value is invalid for the continuous loss {self.loss}; use hb")
        if self.procedure not in ltt.PROCEDURES:
            raise ValueError(f"unknown procedure {self.procedure!r}")
        if self.evaluator not in EVALUATORS:
            raise ValueError(f"unknown evaluator {self.evaluator!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown pruning family {self.granularity!r}; known: {', '.join(GRANULARITIES)}")

    def rule(self, graph: bool = False) -> dict:
        """The pruning family as the certificate states it (``graph``: of a graph network)."""
        if graph:
            return GRAPH_CHANNEL_RULE if self.granularity == "channel" else GRAPH_WEIGHT_RULE
        return CHANNEL_RULE if self.granularity == "channel" else PRUNING_RULE

    def candidate(self, net: Network | GraphNetwork, level: float) -> Network | GraphNetwork:
        """The family's model at ``level`` (a function of ``net`` and ``level`` only)."""
        if isinstance(net, GraphNetwork):
            return graph_candidate(net, level, self.granularity).model
        if self.granularity == "channel":
            return prune_channels(net, round(1.0 - level, 12), "layer")[0]
        return prune_weights(net, level)

    @property
    def pvalue_method(self) -> str:
        if self.pvalue != "auto":
            return self.pvalue
        return "binomial" if self.loss in BINARY_LOSSES else "hb"


@dataclass
class ConfidentResult:
    """Outcome: the selection over the grid and, unless abstaining, the chosen pruned network."""

    config: ConfidentConfig
    n: int
    selection: ltt.Selection
    reduced: Optional[Network | GraphNetwork]
    sparsities: list[float] = field(default_factory=list)
    seconds: float = 0.0
    structures: Optional[list] = None  # graph networks: each level's description for the checker

    @property
    def abstained(self) -> bool:
        return self.selection.chosen is None

    @property
    def level(self) -> Optional[float]:
        c = self.selection.chosen
        return None if c is None else self.config.levels[c]


# ----- losses ------------------------------------------------------------------------------------


def loss_values(loss: str, dense: np.ndarray, pruned: np.ndarray, y: Optional[np.ndarray] = None,
                threshold: Optional[float] = None) -> np.ndarray:
    """Per-sample losses ``(n,)`` in [0, 1] from dense and pruned outputs ``(n, n_outputs)``."""
    if loss == "disagreement":
        return (np.argmax(dense, axis=1) != np.argmax(pruned, axis=1)).astype(np.float64)
    if loss == "zero-one":
        if y is None:
            raise ValueError("the zero-one loss needs labels")
        return (np.argmax(pruned, axis=1) != y).astype(np.float64)
    dev = np.max(np.abs(np.asarray(dense, np.float64) - np.asarray(pruned, np.float64)), axis=1)
    if loss == "deviation":
        return (dev > threshold).astype(np.float64)
    if loss == "deviation-clipped":
        return np.minimum(1.0, dev / threshold)
    raise ValueError(f"unknown loss {loss!r}")


# ----- model outputs ---------------------------------------------------------------------------


def outputs_of_file(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Outputs of an ONNX file by onnxruntime, ``(n, n_outputs)`` float64."""
    return run_onnx(path, x)


def outputs_of_network(net: Network | GraphNetwork, x: np.ndarray, evaluator: str,
                       workdir: Optional[str] = None) -> np.ndarray:
    """Outputs of ``net`` (chain or graph): float32 forward pass, or onnxruntime on its export in ``workdir``."""
    if evaluator == "float32":
        return np.asarray(net.forward(np.asarray(x, np.float32), dtype=np.float32), dtype=np.float64)

    with tempfile.TemporaryDirectory(dir=workdir) as d:
        p = Path(d) / "level.onnx"
        (save_graph if isinstance(net, GraphNetwork) else save_onnx)(net, p)
        return outputs_of_file(p, x)


def dense_outputs(net: Network | GraphNetwork, original_path: Optional[str | os.PathLike], x: np.ndarray, evaluator: str) -> np.ndarray:
    """Outputs of the dense model: the original file itself under onnxruntime."""
    if evaluator == "onnxruntime" and original_path is not None:
        return outputs_of_file(original_path, x)
    return outputs_of_network(net, x, evaluator)


def loss_matrix(net: Network | GraphNetwork, original_path: Optional[str | os.PathLike], calib: CalibrationData,
                config: ConfidentConfig, progress: Progress = SILENT,
                chosen_file: Optional[tuple[int, str | os.PathLike]] = None,
                models: Optional[list] = None) -> np.ndarray:
    """Losses ``(n, K)`` of every grid level on the calibration set (column k = level k).

    ``chosen_file=(k, path)`` evaluates level k from an existing file (the checker's reduced model);
    ``models`` are the candidates when already built (else built here).
    """
    dense = dense_outputs(net, original_path, calib.x, config.evaluator)
    cols = []
    for k, level in enumerate(config.levels):
        if chosen_file is not None and chosen_file[0] == k and config.evaluator == "onnxruntime":
            out = outputs_of_file(chosen_file[1], calib.x)
        else:
            model = models[k] if models is not None else config.candidate(net, level)
            out = outputs_of_network(model, calib.x, config.evaluator)
        cols.append(loss_values(config.loss, dense, out, calib.y, config.threshold))
        progress.tick("confident: evaluated level", k + 1, len(config.levels))
    return np.stack(cols, axis=1)


# ----- the procedure ---------------------------------------------------------------------------


def confident_prune(net: Network | GraphNetwork, original_path: Optional[str | os.PathLike], calib: CalibrationData,
                    config: ConfidentConfig, progress: Progress = SILENT) -> ConfidentResult:
    """Learn then Test over the grid (DESIGN.md §7): the largest level whose null ``R > alpha``
    is rejected, or an abstention (``reduced is None``)."""
    config.validate()
    if config.granularity == "auto":  # channels for a CNN, weights for a dense network
        config = replace(config, granularity="weight" if net.is_dense else "channel")
    if config.loss == "zero-one" and calib.y is None:
        raise ValueError("the zero-one loss needs labels ('y' in the calibration file)")
    if isinstance(net, GraphNetwork):  # both families: the graph pruning keeps every shape it does not remove
        return _confident_prune_graph(net, original_path, calib, config, progress)
    if config.granularity == "weight" and not net.is_dense:
        raise InputError("confident pruning of a convolutional network removes channels (--granularity channel); "
                         "the weight family is for dense networks")
    t0 = time.perf_counter()
    losses = loss_matrix(net, original_path, calib, config, progress)
    sel = ltt.select(losses, config.alpha, config.delta, config.pvalue_method, config.procedure)
    reduced = None if sel.chosen is None else config.candidate(net, config.levels[sel.chosen])
    spars = [sparsity(prune_weights(net, v)) if config.granularity == "weight"
             else 1.0 - sum(channels_per_layer(config.candidate(net, v))) / max(1, sum(channels_per_layer(net)))
             for v in config.levels]
    return ConfidentResult(config, calib.n, sel, reduced, spars, time.perf_counter() - t0)


def _confident_prune_graph(net: GraphNetwork, original_path: Optional[str | os.PathLike], calib: CalibrationData,
                           config: ConfidentConfig, progress: Progress) -> ConfidentResult:
    """:func:`confident_prune` of a graph network: every candidate built once (module docstring)."""
    t0 = time.perf_counter()
    cands = []
    for k, level in enumerate(config.levels):
        cands.append(graph_candidate(net, level, config.granularity))
        progress.tick("confident: built level", k + 1, len(config.levels))
    losses = loss_matrix(net, original_path, calib, config, progress, models=[c.model for c in cands])
    sel = ltt.select(losses, config.alpha, config.delta, config.pvalue_method, config.procedure)
    reduced = None if sel.chosen is None else cands[sel.chosen].model
    return ConfidentResult(config, calib.n, sel, reduced, [c.pruned_fraction for c in cands],
                           time.perf_counter() - t0, [c.structure for c in cands])


def guarantee(result: ConfidentResult) -> dict:
    """The certificate's ``guarantee`` block (kind ``statistical``)."""
    c = result.config
    norm = {"disagreement": "top1", "zero-one": None}.get(c.loss, "linf")
    return {
        "kind": "statistical",
        "input_set": None,
        "norm": norm,
        "epsilon": c.threshold if c.loss.startswith("deviation") else None,
        "confidence": 1.0 - c.delta,
        "risk_bound": c.alpha,
        "loss": c.loss,
        "statement": (f"with probability >= 1 - {c.delta} over the i.i.d. draw of the calibration set, "
                      f"the expected {c.loss} loss of the reduced model is <= {c.alpha} "
                      "on the calibration data's distribution"),
    }


def evidence(result: ConfidentResult, calibration_ref: dict) -> dict:
    """The certificate's evidence entry: everything the checker needs to recompute the choice."""
    c, s = result.config, result.selection
    return {
        "backend": "learn-then-test",
        "verdict": "statistical",
        "alpha": c.alpha,
        "delta": c.delta,
        "confidence": 1.0 - c.delta,
        "n": result.n,
        "loss": c.loss,
        "threshold": c.threshold,
        "pvalue": c.pvalue_method,
        "procedure": c.procedure,
        "evaluator": c.evaluator,
        "evaluator_note": ("outputs by onnxruntime on the ONNX files (dense: the original file; chosen level: "
                           "the reduced file; other levels: their export)") if c.evaluator == "onnxruntime"
        else "outputs by Network.forward in float32 (not the ONNX runtime)",
        "pruning": c.rule(result.structures is not None),
        **({"graph": True, "structures": result.structures} if result.structures is not None else {}),
        "grid": list(c.levels),
        "risks": s.risks,
        "pvalues": s.pvalues,
        "rejected": s.rejected,
        "chosen_index": s.chosen,
        "chosen_level": result.level,
        "sparsity": result.sparsities[s.chosen] if s.chosen is not None else None,
        "sparsity_meaning": ("fraction of hidden weights zeroed" if c.granularity == "weight"
                             else "fraction of hidden channels removed" if result.structures is None
                             else "fraction of hidden channels removed or left with a zero filter and bias"),
        "calibration": calibration_ref,
        "tolerance": {"pvalue_rtol": PVALUE_RTOL, "risk_atol": RISK_ATOL},
        "seconds": round(result.seconds, 6),
    }


#: the checker's tolerances when comparing recomputed statistics (stated in the certificate).
PVALUE_RTOL = 1e-9
RISK_ATOL = 1e-12


def config_from_evidence(ev: dict) -> ConfidentConfig:
    """Rebuild the configuration recorded in an evidence entry (KeyError/ValueError if malformed)."""
    cfg = ConfidentConfig(
        alpha=float(ev["alpha"]), delta=float(ev["delta"]), levels=tuple(float(v) for v in ev["grid"]),
        loss=str(ev["loss"]), threshold=None if ev.get("threshold") is None else float(ev["threshold"]),
        pvalue=str(ev["pvalue"]), procedure=str(ev["procedure"]), evaluator=str(ev["evaluator"]),
        granularity=str(ev.get("pruning", {}).get("granularity", "weight")),
    )
    cfg.validate()
    return cfg
