"""The Python API of every reduction (``lumpver reduce|prune|quantize``, the steps of ``lumpver run``;
CONTRACT.md, DESIGN.md §2-§8): :func:`apply_pass` runs one :class:`~lumpver.reductions.base.ReductionPass`
on ONNX files after checking the paths and the input set.

>>> from lumpver.api.reduce import apply_pass
>>> from lumpver.reductions.passes import ExactPass
>>> apply_pass(ExactPass(), "model.onnx", "reduced.onnx").certificate["guarantee"]["kind"]
'exact'
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from lumpver.errors import InputError
from lumpver.fileio import check_output_path
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_import import load_model
from lumpver.progress import SILENT, Progress
from lumpver.reductions.exact import DEFAULT_TOLERANCE
from lumpver.reductions.exact_graph import ExactGraphPass
from lumpver.reductions.onset_graph import OnSetGraphPass
from lumpver.reductions.passes import ExactPass, OnSetPass
from lumpver.reductions.base import PassContext, ReductionPass, ReductionResult, default_certificate_path
from lumpver.specs.inputset import InputSet
from lumpver.specs.load import load_input_set

__all__ = ["apply_pass", "default_certificate_path", "reduce_exact_to_files"]


def apply_pass(reduction: ReductionPass, model_path: str | os.PathLike, out_path: str | os.PathLike,
               cert_path: Optional[str | os.PathLike] = None,
               input_set: InputSet | str | os.PathLike | None = None,
               progress: Progress = SILENT) -> ReductionResult:
    """Apply ``reduction`` to the model file; InputError (exit 2) for a missing model, an output that
    would overwrite an input, or an input set of the wrong dimension. ``input_set``: a loaded set or
    a ``.vnnlib``/``.toml`` path. ``cert_path`` defaults to OUTPUT with ``.cert.json``. A graph network
    (residual Add, Concat, MaxPool) takes the graph form of exact and on-set reduction (DESIGN.md §10)."""
    model = Path(model_path)
    if not model.is_file():
        raise InputError("no such model file", str(model))
    cert = Path(cert_path) if cert_path else default_certificate_path(out_path)
    inputs = [model] + ([Path(input_set)] if isinstance(input_set, (str, os.PathLike)) else [])
    check_output_path(out_path, inputs)
    check_output_path(cert, inputs + [Path(out_path)])
    net = load_model(model)
    if input_set is not None:
        input_set = load_input_set(input_set, net.n_inputs)
    if isinstance(reduction, ExactPass) and isinstance(net, GraphNetwork):
        reduction = ExactGraphPass(reduction.tolerance)  # MaxPool, residual Add, Concat (DESIGN.md §10)
    if isinstance(reduction, OnSetPass) and isinstance(net, GraphNetwork):
        reduction = OnSetGraphPass()  # channels 0 on X or dead (DESIGN.md §3, §10)
    return reduction.apply(model, Path(out_path), cert, PassContext(input_set, progress, net))


def reduce_exact_to_files(model_path: str | os.PathLike, out_path: str | os.PathLike,
                          cert_path: Optional[str | os.PathLike] = None, tolerance: float = DEFAULT_TOLERANCE,
                          progress: Progress = SILENT) -> dict:
    """Exact lumping of an ONNX file (README example): the written ``exact`` certificate."""
    return apply_pass(ExactPass(tolerance), model_path, out_path, cert_path, progress=progress).certificate
