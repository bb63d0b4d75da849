"""Channel pruning and per-channel quantisation of the shared CNNs (issue 12 item 5).

The reference is onnxruntime on an edited copy of the *original* file: pruning channel ``t`` of a
layer must compute what the original computes with every weight reading channel ``t`` set to zero
(the next Conv's input slice, or the next Gemm's block of columns after Flatten); quantising must
compute what the original computes with its weight initialisers replaced by ``q * s`` (float32), with
``q`` and ``s`` from the quantisation formula evaluated here. Channel scores are recomputed here from
the initialisers."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lumpver.api.reduce import apply_pass
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.passes import MagnitudePrunePass, QuantizePass

SHARED_CNNS = ["cnn/verivital/Convnet_avgpool.onnx", "cnn/oval21/nets/cifar_base_kw.onnx"]


def _weights(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(weight, bias) initialiser names of the Conv/Gemm nodes in graph order (all Gemms have transB=1)."""
    return [(n.input[1], n.input[2]) for n in model.graph.node if n.op_type in ("Conv", "Gemm")]


def _reading(w_next: np.ndarray, c: int) -> np.ndarray:
    """``w_next`` as (out, c, -1): the weights reading each of the ``c`` channels before it."""
    return w_next.reshape(w_next.shape[0], c, -1) if w_next.ndim == 2 else w_next.reshape(*w_next.shape[:2], -1)


def _dropped(model: onnx.ModelProto, keep: float) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    names = _weights(model)
    out = []
    for (w, b), (w_next, _) in zip(names, names[1:]):
        c = inits[w].shape[0]
        score = (np.sqrt((inits[w].reshape(c, -1) ** 2).sum(1) + inits[b] ** 2)
                 * np.sqrt((_reading(inits[w_next], c) ** 2).sum(axis=(0, 2))))
        n_keep = max(1, math.ceil(keep * c - 1e-9))
        out.append(np.setdiff1d(np.arange(c), np.lexsort((np.arange(c), -score))[:n_keep]))
    return out


def _edited(model: onnx.ModelProto, path, change) -> None:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        new = change(init.name, numpy_helper.to_array(init))
        if new is not None:
            init.CopyFrom(numpy_helper.from_array(np.asarray(new, np.float32), init.name))
    onnx.save(m, str(path))


@pytest.mark.parametrize("rel", SHARED_CNNS)
def test_channel_pruning_equals_original_with_channels_silenced(shared_data, tmp_path, rng, rel):
    src = shared_data / rel
    model = onnx.load(str(src))
    out = tmp_path / "p.onnx"
    apply_pass(MagnitudePrunePass(0.5, "channel"), src, out)
    dropped = _dropped(model, 0.5)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    names = [w for w, _ in _weights(model)]
    widths = [inits[w].shape[0] for w in names]
    silenced = {names[k + 1]: (widths[k], d) for k, d in enumerate(dropped)}

    def silence(name, arr):
        if name not in silenced:
            return None
        c, d = silenced[name]
        view = _reading(arr.copy(), c)
        view[:, d] = 0.0
        return view.reshape(arr.shape)

    ref = tmp_path / "ref.onnx"
    _edited(model, ref, silence)
    pruned = onnx.load(str(out))
    p_inits = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    rows = [p_inits[w].shape[0] for w, _ in _weights(pruned)]
    assert rows[:-1] == [c - d.size for c, d in zip(widths, dropped)] == [math.ceil(c / 2) for c in widths[:-1]]
    n_in = int(np.prod([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]))
    x = rng.uniform(0, 1, (16, n_in)).astype(np.float32)
    y_ref, y = run_onnx(ref, x), run_onnx(out, x)
    assert np.max(np.abs(y - y_ref)) <= 1e-5 * (1 + np.max(np.abs(y_ref)))


@pytest.mark.parametrize("rel", SHARED_CNNS)
def test_per_channel_quantisation_equals_original_with_dequantised_weights(shared_data, tmp_path, rng, rel):
    src = shared_data / rel
    model = onnx.load(str(src))
    out = tmp_path / "q.onnx"
    apply_pass(QuantizePass(8, per_channel=True), src, out)
    weights = {w for w, _ in _weights(model)}

    def dequantised(name, arr):
        if name not in weights:
            return None
        s = (np.abs(arr).reshape(arr.shape[0], -1).max(axis=1) / 127).astype(np.float32)
        s_b = s.reshape((-1,) + (1,) * (arr.ndim - 1))
        q = np.clip(np.round(arr.astype(np.float64) / s_b.astype(np.float64)), -128, 127)
        return q.astype(np.float32) * s_b

    ref = tmp_path / "ref.onnx"
    _edited(model, ref, dequantised)
    q_model = onnx.load(str(out))
    assert sum(n.op_type == "DequantizeLinear" for n in q_model.graph.node) == len(weights)
    n_in = int(np.prod([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]))
    x = rng.uniform(0, 1, (16, n_in)).astype(np.float32)
    y_ref, y = run_onnx(ref, x), run_onnx(out, x)
    assert np.max(np.abs(y - y_ref)) <= 1e-5 * (1 + np.max(np.abs(y_ref)))
    assert out.stat().st_size < 0.35 * src.stat().st_size
