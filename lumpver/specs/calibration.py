"""Calibration data for confident pruning: loading and validation (DESIGN.md §7).

File format: a NumPy ``.npz`` archive with

* ``x`` — n inputs, either flattened ``(n, n_inputs)`` or in the model's input shape per sample
  ``(n, *shape)`` (any trailing shape whose size is ``n_inputs``); finite numbers;
* ``y`` — optional integer labels ``(n,)`` in ``[0, n_outputs)`` (needed by the 0-1 loss).

Every defect is an :class:`~lumpver.errors.InputError` naming the file and the key.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lumpver.errors import InputError
from lumpver.fileio import sha256_file


@dataclass
class CalibrationData:
    """Validated calibration samples: ``x`` is ``(n, n_inputs)`` float32, ``y`` int64 or None."""

    x: np.ndarray
    y: Optional[np.ndarray]
    path: str
    sha256: str

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise InputError("not an .npz archive (a single array was found; expected keys 'x' and 'y')", path)
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise InputError("calibration file not found", path) from None
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot read calibration data as .npz: {msg}", path) from None


def _check_x(x: np.ndarray, n_inputs: int, path: str) -> np.ndarray:
    if x.dtype.kind not in "iuf":
        raise InputError(f"must hold numbers, found dtype {x.dtype}", path, "x")
    if x.ndim == 0:
        raise InputError("must be an array of samples, found a scalar", path, "x")
    if x.shape[0] == 0:
        raise InputError("holds no samples (empty)", path, "x")
    if x.ndim == 1:
        if n_inputs != 1:
            raise InputError(f"shape {x.shape} is not (n, {n_inputs}) or (n, *input_shape)", path, "x")
        x = x.reshape(-1, 1)
    per_sample = int(np.prod(x.shape[1:]))
    if per_sample != n_inputs:
        raise InputError(
            f"shape {x.shape} gives {per_sample} values per sample, the model takes {n_inputs}", path, "x"
        )
    x = x.reshape(x.shape[0], n_inputs)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)  # the models compute in float32; overflow shows up as inf here
    bad = ~np.isfinite(x32)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"non-finite value {x[i, j]} (as float32) at sample {i}, input {j}", path, "x")
    return x32


def _check_y(y: np.ndarray, n: int, n_outputs: Optional[int], path: str) -> np.ndarray:
    if y.dtype.kind not in "iuf":
        raise InputError(f"labels must be integers, found dtype {y.dtype}", path, "y")
    y = y.reshape(-1) if y.ndim > 1 and y.size == y.shape[0] else y
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"shape {y.shape} does not match the {n} samples of 'x'", path, "y")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise InputError("labels must be finite integers", path, "y")
        frac = y != np.round(y)
        if frac.any():
            i = int(np.argmax(frac))
            raise InputError(f"label {y[i]} at sample {i} is not an integer", path, "y")
    y = y.astype(np.int64)
    hi = n_outputs if n_outputs is not None else np.iinfo(np.int64).max
    out = (y < 0) | (y >= hi)
    if out.any():
        i = int(np.argmax(out))
        raise InputError(f"label {y[i]} at sample {i} is outside [0, {hi})", path, "y")
    return y


def load_calibration(
    path: str | Path, n_inputs: int, n_outputs: Optional[int] = None, need_labels: bool = False
) -> CalibrationData:
    """Load and validate a calibration ``.npz`` for a model with ``n_inputs`` inputs.

    Raises InputError (file and key named) for a missing/unreadable file, a missing ``x``,
    wrong shapes, NaN/inf, an empty set, non-integer or out-of-range labels, or a missing ``y``
    when ``need_labels``.
    """
    p = str(path)
    arrays = _read_npz(p)
    if "x" not in arrays:
        raise InputError(f"missing key 'x' (found: {', '.join(sorted(arrays)) or 'none'})", p, "x")
    x = _check_x(arrays["x"], n_inputs, p)
    y = None
    if "y" in arrays:
        y = _check_y(arrays["y"], x.shape[0], n_outputs, p)
    elif need_labels:
        raise InputError("missing key 'y' (labels are needed by the zero-one loss)", p, "y")
    return CalibrationData(x, y, p, sha256_file(p))
