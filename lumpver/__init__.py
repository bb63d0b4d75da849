"""lumpver: make neural networks smaller, with proof.

The Python API mirrors the command line (README.md, CONTRACT.md); every name below is imported
on first use, so ``import lumpver`` (and the CLI) stays fast:

>>> import lumpver
>>> net = lumpver.load_onnx("model.onnx")
>>> result = lumpver.exact_lump(net)
>>> lumpver.save_onnx(result.reduced, "reduced.onnx", like=net)
>>> cert = lumpver.apply_pass(lumpver.OnSetPass(), "model.onnx", "small.onnx", input_set="prop.vnnlib").certificate
>>> lumpver.compare_models("model.onnx", "small.onnx", "prop.vnnlib", epsilon=1e-4).verdict
'proved'
>>> lumpver.check_certificate("small.cert.json").holds
True
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from lumpver.errors import CheckFailed, InputError, LumpverError

#: public name -> module that defines it
_LAZY = {
    # networks (DESIGN.md §1)
    "InputOp": "lumpver.ir.network", "Layer": "lumpver.ir.network", "Network": "lumpver.ir.network",
    "load_onnx": "lumpver.ir.onnx_import", "save_onnx": "lumpver.ir.onnx_export",
    # input sets and properties (§3)
    "Box": "lumpver.specs.inputset", "Polytope": "lumpver.specs.inputset", "InputSet": "lumpver.specs.inputset",
    "OutputProperty": "lumpver.specs.inputset", "load_input_set": "lumpver.specs.load",
    "read_vnnlib": "lumpver.specs.vnnlib", "load_spec": "lumpver.specs.runspec", "NORMS": "lumpver.specs.norms",
    # reductions (§2-§8): algorithms on networks, passes on files
    "exact_lump": "lumpver.reductions.exact", "reduce_on_set": "lumpver.reductions.onset",
    "ReductionPass": "lumpver.reductions.base", "ReductionResult": "lumpver.reductions.base",
    "ExactPass": "lumpver.reductions.passes", "OnSetPass": "lumpver.reductions.passes",
    "ApproxPass": "lumpver.reductions.passes", "MagnitudePrunePass": "lumpver.reductions.passes",
    "CoresetPass": "lumpver.reductions.passes", "ConfidentPass": "lumpver.reductions.passes",
    "QuantizePass": "lumpver.reductions.passes", "ConfidentConfig": "lumpver.reductions.confident",
    # verification (§5) and certificates
    "Query": "lumpver.verifiers.base", "Verdict": "lumpver.verifiers.base", "get_backend": "lumpver.verifiers.base",
    "check_certificate": "lumpver.certificates.format",
    # orchestration: what the commands call
    "apply_pass": "lumpver.api.reduce", "reduce_exact_to_files": "lumpver.api.reduce",
    "compare_models": "lumpver.api.compare", "bound_files": "lumpver.api.bound",
    "verify_property": "lumpver.api.verify", "run_spec": "lumpver.api.run", "run_batch": "lumpver.api.batch",
}

__all__ = ["CheckFailed", "InputError", "LumpverError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (see :data:`_LAZY`)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'lumpver' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
