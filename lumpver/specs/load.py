"""The one input-set loader: ``--input-set SPEC`` of every command, the ``input_set`` argument of
the Python API (CONTRACT.md). DESIGN.md §3: input sets live in the space of the model's raw
flattened input.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from lumpver.errors import InputError
import numpy as np

from lumpver.specs.inputset import Box, InputSet, Polytope
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
        return require_nonempty(source, source.source)
    p = Path(source)
    kind = next((s for s in SUFFIXES if p.name.lower().endswith(s)), None)
    if kind is None:
        raise InputError(f"unsupported input-set file: expected a .vnnlib, .vnnlib.gz or .toml file, got "
                         f"{p.suffix or 'no suffix'!r}", str(source))
    if not p.is_file():
        raise InputError("file not found", str(source))
    if kind == ".toml":
        return require_nonempty(load_spec(p).input_set(n_inputs), str(source))
    return require_nonempty(read_vnnlib(p, n_inputs=n_inputs).input_set(), str(source))


def require_nonempty(input_set: InputSet, source: Optional[str] = None) -> InputSet:
    """``input_set`` unchanged, or InputError (naming ``source``) when a region is empty: a box with
    ``lower > upper`` or a polytope ``A x <= b`` (within its bounding box) that an LP (scipy HiGHS)
    finds infeasible. On an empty set every claim holds vacuously, so it is refused as bad input."""
    if not input_set.regions:
        raise InputError("the input set has no region", source)
    for k, region in enumerate(input_set.regions, start=1):
        where = f"region {k} of {len(input_set.regions)}" if len(input_set.regions) > 1 else None
        if isinstance(region, Box):
            if region.is_empty():
                i = int(np.argmax(region.lower > region.upper))
                raise InputError(f"the input set is empty: lower > upper for input {i} "
                                 f"({region.lower[i]!r} > {region.upper[i]!r})", source, where)
        elif not _feasible(region):
            raise InputError("the input set is empty: the polytope A x <= b (within its bounds) has no point "
                             "(LP infeasible)", source, where)
    return input_set


def _feasible(p: Polytope) -> bool:
    """An LP feasibility test; a solver failure other than 'infeasible' is not taken as emptiness."""
    from scipy.optimize import linprog

    bb = p.bounding_box
    if bb is not None and bb.is_empty():
        return False
    bounds = [(None, None)] * p.dim if bb is None else list(zip(bb.lower, bb.upper))
    res = linprog(np.zeros(p.dim), A_ub=p.A, b_ub=p.b, bounds=bounds, method="highs")
    return res.status != 2  # 2: infeasible
