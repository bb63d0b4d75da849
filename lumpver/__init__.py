"""lumpver: make neural networks smaller, with proof.

The Python API mirrors the command line (see README.md):

>>> from lumpver import load_onnx, save_onnx, exact_lump
>>> net = load_onnx("model.onnx")
>>> result = exact_lump(net)
>>> save_onnx(result.reduced, "reduced.onnx", like=net)
"""
from __future__ import annotations

__version__ = "0.1.0"

from lumpver.errors import CheckFailed, InputError, LumpverError

__all__ = [
    "CheckFailed",
    "InputError",
    "InputOp",
    "Layer",
    "LumpverError",
    "Network",
    "exact_lump",
    "load_onnx",
    "save_onnx",
]


def __getattr__(name: str):  # lazy imports keep `import lumpver` (and the CLI) fast
    if name in ("InputOp", "Layer", "Network"):
        from lumpver.ir import network as model

        return getattr(model, name)
    if name == "load_onnx":
        from lumpver.ir.onnx_import import load_onnx

        return load_onnx
    if name == "save_onnx":
        from lumpver.ir.onnx_export import save_onnx

        return save_onnx
    if name == "exact_lump":
        from lumpver.reductions.exact import exact_lump

        return exact_lump
    raise AttributeError(name)
