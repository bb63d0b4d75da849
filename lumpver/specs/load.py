"""``--input-set SPEC`` on the command line: a ``.vnnlib`` or a lumpver spec file (CONTRACT.md).

DESIGN.md §3: input sets live in the space of the model's raw flattened input.
"""
from __future__ import annotations

import os
from pathlib import Path

from lumpver.errors import InputError
from lumpver.specs.inputset import InputSet

SUFFIXES = (".vnnlib", ".toml")


def load_input_set(path: str | os.PathLike, n_inputs: int | None = None) -> InputSet:
    """The input set a file declares; InputError (naming the file) when it is unreadable,
    malformed, of an unknown kind, or when its dimension differs from ``n_inputs``.

    ``.vnnlib``: the union of the input regions of its cases; ``.toml``: the spec's ``[input_set]``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"unsupported input-set file: expected a .vnnlib or .toml file, got {p.suffix or 'no suffix'!r}", str(path))
    if not p.is_file():
        raise InputError("file not found", str(path))
    if suffix == ".vnnlib":
        from lumpver.specs.vnnlib import read_vnnlib

        return read_vnnlib(p, n_inputs=n_inputs).input_set()
    from lumpver.specs.runspec import load_spec

    return load_spec(p).input_set(n_inputs)
