"""The one input-set loader: ``--input-set SPEC`` of every command, the ``input_set`` argument of
the Python API (CONTRACT.md). DESIGN.md §3: input sets live in the space of the model's raw
flattened input.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from lumpver.errors import InputError
from lumpver.specs.inputset import InputSet
from lumpver.specs.runspec import load_spec
from lumpver.specs.vnnlib import read_vnnlib

SUFFIXES = (".vnnlib", ".vnnlib.gz", ".toml")


def load_input_set(source: Union[InputSet, str, os.PathLike], n_inputs: Optional[int] = None) -> InputSet:
    """The input set ``source`` declares; InputError (naming the file) when it is unreadable,
    malformed, of an unknown kind, or when its dimension differs from ``n_inputs``.

    ``source``: an :class:`InputSet` (its dimension is checked), a ``.vnnlib``/``.vnnlib.gz`` file
    (the union of the input regions of its cases) or a ``.toml`` spec (its ``[input_set]``).
    """
    if isinstance(source, InputSet):
        if n_inputs is not None and source.dim != n_inputs:
            raise InputError(f"input set has {source.dim} dimensions, the model {n_inputs} inputs", source.source)
        return source
    p = Path(source)
    kind = next((s for s in SUFFIXES if p.name.lower().endswith(s)), None)
    if kind is None:
        raise InputError(f"unsupported input-set file: expected a .vnnlib, .vnnlib.gz or .toml file, got "
                         f"{p.suffix or 'no suffix'!r}", str(source))
    if not p.is_file():
        raise InputError("file not found", str(source))
    if kind == ".toml":
        return load_spec(p).input_set(n_inputs)
    return read_vnnlib(p, n_inputs=n_inputs).input_set()
