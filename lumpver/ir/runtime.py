"""Running ONNX files with onnxruntime: the independent reference for replaying
counterexamples and for tests (never our own forward pass)."""
from __future__ import annotations

import gzip
import os
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def _session(path: str, mtime: float):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    with open(path, "rb") as f:
        data = f.read()
    model = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data  # .onnx.gz read directly
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def session(path: str | os.PathLike):
    """A cached onnxruntime session for a model file (re-created when the file changes)."""
    p = os.path.abspath(path)
    return _session(p, os.path.getmtime(p))


def _concrete_shape(shape, batch: int) -> list[int]:
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    return [batch if d is None else d for d in dims]


def run_onnx(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Outputs of the model at ``path`` for raw inputs ``x``, flattened per sample.

    ``x`` is one flattened input (n,) or a batch (k, n). Models whose batch dimension is
    fixed to 1 are run one sample at a time. Returns ``(k, n_outputs)`` float64.
    """
    sess = session(path)
    inp = sess.get_inputs()[0]
    x = np.asarray(x, dtype=np.float32)
    n = int(np.prod([d for d in inp.shape if isinstance(d, int) and d > 0])) if inp.shape else 1
    batch = x.reshape(-1, x.size if x.ndim == 1 else x.shape[-1]) if x.ndim <= 2 else x.reshape(x.shape[0], -1)
    shape = list(inp.shape)
    has_free_batch = bool(shape) and not (isinstance(shape[0], int) and shape[0] > 0)
    outs = []
    if has_free_batch:
        feed = batch.reshape(_concrete_shape(shape, batch.shape[0]))
        y = sess.run(None, {inp.name: feed})[0]
        return np.asarray(y, dtype=np.float64).reshape(batch.shape[0], -1)
    for row in batch:
        feed = row.reshape(_concrete_shape(shape, 1)) if shape else row.reshape(())
        if feed.size != row.size:
            raise ValueError(f"input of {n} values expected, got {row.size}")
        outs.append(np.asarray(sess.run(None, {inp.name: feed})[0], dtype=np.float64).reshape(-1))
    return np.stack(outs)
