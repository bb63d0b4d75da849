"""Reduction that is exact on a declared input set X (DESIGN.md §3).

:func:`reduce_on_set` alternates two steps until neither removes a neuron (at most
``rounds`` times):

1. **on-set**: bounds valid on all of X (every region; boxes optionally split adaptively,
   :mod:`lumpver.bounds.split`) prove neurons stable; stably inactive ReLUs are removed and
   stable linear neurons are linearly lumped (:mod:`lumpver.reductions.onset_fold`);
2. **exact-lumping**: the lead's :func:`lumpver.reductions.exact.exact_lump` on the result.

The evidence is an ordered list of steps ``[{"step": "on-set", ...}, {"step":
"exact-lumping", "claim": ...}, ...]`` that :mod:`lumpver.certificates.onset` replays from the
original network. Every step records a sound bound of its float discrepancy on X (max over
outputs of ``|f_i - g_i|`` in real arithmetic of the stored float32 weights); the result is
"identical to the original on X up to ``discrepancy``" (the sum over steps).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lumpver.bounds.split import set_bounds
from lumpver.certificates.exact import discrepancy_bound
from lumpver.reductions.base import default_certificate_path
from lumpver.reductions.exact import exact_lump
from lumpver.errors import InputError
from lumpver.fileio import check_output_path, write_json_atomic
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.specs.inputset import InputSet
from lumpver.ir.network import Network
from lumpver.reductions.onset_conv import channel_onset
from lumpver.reductions.onset_fold import QR_TOL, choose_folds, fold_discrepancy, fold_network
from lumpver.progress import SILENT, Progress
from lumpver.bounds.region import region_box
from lumpver.certificates.format import make_certificate, model_stats

#: Default number of leaves per box region for adaptive input splitting (low-dimensional inputs).
DEFAULT_MAX_LEAVES = 32
#: Inputs above this dimension are not split by default (splitting rarely pays off there).
SPLIT_MAX_DIM = 16


@dataclass
class OnSetResult:
    """Outcome of :func:`reduce_on_set`."""

    original: Network
    reduced: Network
    input_set: InputSet
    steps: list[dict[str, Any]]  # evidence, in order
    discrepancy: float  # sound bound of sup_X max_i |f_i - g_i| (sum over steps)
    stats: dict[str, Any] = field(default_factory=dict)


def default_max_leaves(net: Network) -> int:
    return DEFAULT_MAX_LEAVES if net.n_inputs <= SPLIT_MAX_DIM else 1


def onset_step(net: Network, input_set: InputSet, method: str = "crown", lp: bool = False,
               max_leaves: int = 1, qr_tol: float = QR_TOL) -> tuple[Network, dict[str, Any]]:
    """One on-set step: the reduced network and its evidence record."""
    sb = set_bounds(net, input_set, method, lp, max_leaves)
    nb = sb.bounds
    folds = choose_folds(net, nb, qr_tol)
    reduced = fold_network(net, folds)
    disc = fold_discrepancy(net, folds, nb, reduced)
    layers = []
    for f in folds:
        claimed = np.concatenate([f.inactive, f.basis, f.folded]).astype(int)
        d = f.to_json()
        d["bounds"] = {str(int(j)): [float(nb.pre_lower[f.layer][j]), float(nb.pre_upper[f.layer][j])] for j in claimed}
        layers.append(d)
    step = {
        "step": "on-set",
        "backend": "bounds",
        "verdict": "proved",
        "method": method,
        "lp": bool(lp),
        "split_trees": sb.trees,
        "n_leaves": sb.n_leaves,
        "qr_tolerance": qr_tol,
        "bound_margin": nb.rounding,
        "layers": layers,
        "discrepancy": float(np.max(disc)),
        "discrepancy_per_output": [float(v) for v in disc],
        "widths_before": net.hidden_widths,
        "widths_after": reduced.hidden_widths,
    }
    return reduced, step


def _lump_step(net: Network, input_set: InputSet) -> Optional[tuple[Network, dict[str, Any]]]:
    """Exact lumping of ``net`` as a step record, or None if it removes nothing."""
    res = exact_lump(net)
    if res.reduced.n_hidden >= net.n_hidden:
        return None
    a, b = discrepancy_bound(net, res.reduced, res.classes, res.tolerance)

    xmax = max(float(np.max(np.abs(np.concatenate([bx.lower, bx.upper])))) for bx in map(region_box, input_set.regions))
    step = {"step": "exact-lumping", "backend": "lumping", "verdict": "proved", "claim": res.claim,
            "discrepancy": float(a + b * xmax), "discrepancy_ab": [a, b],
            "widths_before": net.hidden_widths, "widths_after": res.reduced.hidden_widths}
    return res.reduced, step


def reduce_on_set(net: Network, input_set: InputSet, method: str = "crown", lp: bool = False,
                  max_leaves: Optional[int] = None, qr_tol: float = QR_TOL, lump: bool = True,
                  rounds: int = 3, progress: Progress = SILENT) -> OnSetResult:
    """Reduce ``net`` so that it is unchanged on ``input_set`` (module docstring)."""
    t0 = time.perf_counter()
    if input_set.dim != net.n_inputs:
        raise ValueError(f"input set has {input_set.dim} dimensions, the network {net.n_inputs} inputs")
    if not net.is_dense:  # convolutional layers: stably inactive channels (DESIGN.md §10)
        cur, steps = channel_onset(net, input_set, method, progress, qr_tol)
        disc = float(sum(s["discrepancy"] for s in steps)) * (1 + 1e-6)  # slack as below
        return OnSetResult(net, cur, input_set, steps, disc, {"seconds": time.perf_counter() - t0})
    leaves = default_max_leaves(net) if max_leaves is None else max_leaves
    cur, steps = net, []
    for r in range(rounds):
        before = cur.n_hidden
        red, step = onset_step(cur, input_set, method, lp, leaves, qr_tol)
        if red.n_hidden < cur.n_hidden or not steps:
            cur = red
            steps.append(step)
            progress.say(f"on-set round {r + 1}: {before} -> {cur.n_hidden} hidden neurons")
        lumped = _lump_step(cur, input_set) if lump else None
        if lumped is not None:
            cur = lumped[0]
            steps.append(lumped[1])
            progress.say(f"exact lumping: -> {cur.n_hidden} hidden neurons")
        if cur.n_hidden >= before:
            break
    # the stated bound gets a relative slack of 1e-6 so that a checker's own recomputation (same
    # formulas, possibly summed or rounded differently) stays below it; a larger bound stays sound
    disc = float(sum(s["discrepancy"] for s in steps)) * (1 + 1e-6)
    stats = {"seconds": time.perf_counter() - t0, "neurons_before": net.n_hidden, "neurons_after": cur.n_hidden}
    return OnSetResult(net, cur, input_set, steps, disc, stats)


def reduce_on_set_to_files(original_path: str | os.PathLike, out_path: str | os.PathLike,
                           cert_path: Optional[str | os.PathLike], input_set: InputSet, quiet: bool = True,
                           progress: Optional[Progress] = None, **options: Any) -> dict[str, Any]:
    """Load, reduce on ``input_set``, write the model and its ``exact-on-set`` certificate.

    ``options`` go to :func:`reduce_on_set`. Both files are written atomically; if the
    certificate cannot be written the model is removed again. Returns the certificate.
    """

    progress = progress or Progress(quiet=quiet)
    t0 = time.perf_counter()
    check_output_path(out_path, [original_path])
    cert_path = cert_path or default_certificate_path(out_path)
    check_output_path(cert_path, [original_path, out_path])
    net = load_onnx(original_path)
    if input_set.dim != net.n_inputs:
        raise InputError(f"input set has {input_set.dim} dimensions, the model {net.n_inputs} inputs",
                         str(input_set.source or original_path))
    progress.say(f"on-set reduction of {net.n_hidden} hidden neurons over {len(input_set.regions)} region(s)")
    res = reduce_on_set(net, input_set, progress=progress, **options)
    save_onnx(res.reduced, out_path)
    try:
        guarantee = {
            "kind": "exact-on-set",
            "input_set": input_set.to_json(),
            "norm": "linf",
            "epsilon": res.discrepancy,
            "float_tolerance": {
                "discrepancy_bound": res.discrepancy,
                "statement": "for every x in the input set: max_i |f_i(x) - g_i(x)| <= discrepancy_bound, in exact "
                             "real arithmetic of the stored float32 weights; float32 evaluation by a runtime adds its "
                             "own rounding to both models",
            },
        }
        stats = model_stats(net, res.reduced, time.perf_counter() - t0)
        cert = make_certificate(original_path, out_path, guarantee, stats, res.steps, cert_path)
        write_json_atomic(cert_path, cert)
    except BaseException:
        Path(out_path).unlink(missing_ok=True)
        raise
    progress.say(f"wrote {out_path} ({res.reduced.n_hidden} hidden neurons) and {cert_path}")
    return cert
