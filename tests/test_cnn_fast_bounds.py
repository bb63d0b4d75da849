"""Fast paths of CNN bounding (issue 13 item 1, issue 12 item 4; DESIGN.md §3, §10, §11).

Checked against independent computations: the sparse transposed convolution against the im2col
transpose it replaces (``conv2d_transpose``) and against the adjoint identity ``<M x, a> = <x, M^T a>``
with the im2col forward; the batched root bounds (interval first, CROWN rows only where the interval
leaves a ReLU unstable) against onnxruntime outputs and a float64 layer-by-layer forward on samples
of an oval21 property box; branch and bound without re-bounding split children against the
published VNN-COMP 2021 answer.
"""
from __future__ import annotations

import numpy as np
from lumpver.api.verify import verify_property
from lumpver.bounds.batched import layer_bounds, optimise_alpha, recompute_pays
from lumpver.bounds.engine import compute_bounds, prepare
from lumpver.bounds.float_error import float32_error
from lumpver.bounds.region import region_box
from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.conv import AvgPoolOperator, ConvOperator, conv2d_transpose
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.planted import planted_cnn, planted_network
from lumpver.ir.runtime import run_onnx
from lumpver.specs.vnnlib import read_vnnlib

OVAL = "cnn/oval21"
NET = "nets/cifar_base_kw.onnx"
IMG2908 = "vnnlib/cifar_base_kw-img2908-eps0.019869281045751634.vnnlib"


def _ops(rng):
    return [
        ConvOperator((3, 9, 7), rng.normal(size=(6, 3, 3, 2)), (2, 1), (1, 0, 2, 1), (1, 2), 1),
        ConvOperator((4, 11), rng.normal(size=(6, 2, 3)), (2,), (1, 2), (1,), 2),
        ConvOperator((4, 8, 8), rng.normal(size=(4, 1, 3, 3)), (1, 1), (1, 1, 1, 1), (1, 1), 4),
        ConvOperator((3, 12, 12), rng.normal(size=(5, 3, 4, 4)), (2, 2), (1, 1, 1, 1), (1, 1), 1),
        AvgPoolOperator((3, 7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
        AvgPoolOperator((3, 7, 7), (2, 2), (2, 2), (0, 0, 1, 1), True),
    ]


def _im2col_transpose(op, a: np.ndarray) -> np.ndarray:
    """The previous backward path: the im2col transposed convolution."""
    y = a.reshape(a.shape[0], *op._x4_shape(op.out_shape))
    if isinstance(op, ConvOperator):
        out = conv2d_transpose(y, op._w4(np.float64), op.geom, op.groups)
    else:
        out = conv2d_transpose(y / op._divisor, op._ones(np.float64), op.geom, op.in_shape[0])
    return out.reshape(a.shape[0], -1)


def test_sparse_transpose_matches_im2col_and_adjoint(rng):
    """Strides, dilations, asymmetric pads, groups, depthwise, 1-D, pooling with and without pad counting."""
    for op in _ops(rng):
        a = rng.normal(size=(7, op.out_features))
        x = rng.normal(size=(7, op.in_features))
        back = op.backward(a)
        assert np.allclose(back, _im2col_transpose(op, a), rtol=1e-12, atol=1e-12), type(op).__name__
        assert np.allclose(np.sum(op.forward(x) * a, axis=1), np.sum(x * back, axis=1), rtol=1e-10, atol=1e-10)


def test_sparse_transpose_follows_changed_filters(rng):
    """The cached sparse matrix is rebuilt when the filters are changed in place."""
    op = _ops(rng)[0]
    a = rng.normal(size=(3, op.out_features))
    op.backward(a)
    op.weight *= -2.0
    assert np.allclose(op.backward(a), _im2col_transpose(op, a), rtol=1e-12, atol=1e-12)


def _layer_values(net, x: np.ndarray) -> list[np.ndarray]:
    """Pre-activations of every layer by a float64 forward (the im2col convolution, not the sparse path)."""
    scale, shift = net.input_affine()
    h, out = x * scale + shift, []
    for layer in net.layers:
        z = layer.op.forward(h) + layer.bias
        out.append(z)
        h = ACTIVATIONS[layer.activation](z, layer.alpha)
    return out


def test_root_bounds_bracket_samples_on_oval21(shared_data, rng):
    """Batched root bounds of every layer contain the float64 pre-activations, and the output bounds
    and an alpha-optimised objective contain onnxruntime's outputs, on samples of an oval21 box
    (corners included); the interval-first filter leaves no more unstable ReLUs than the engine's
    CROWN bounds (one schedule on every row) leave."""
    path = shared_data / OVAL / NET
    net = load_onnx(path)
    spec = read_vnnlib(shared_data / OVAL / IMG2908, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    box = region_box(spec.cases[0].region)
    xs = np.vstack([box.sample(60, rng, corners=True), np.where(rng.random((20, box.dim)) < 0.5, box.lower, box.upper)])
    chain = prepare(net)
    inf = [np.full((1, layer.width), np.inf) for layer in net.layers]
    zl, zu = layer_bounds(chain, box.lower[None], box.upper[None], [-a for a in inf], inf)
    for k, z in enumerate(_layer_values(net, xs)):
        assert np.all(z >= zl[k] - 1e-9) and np.all(z <= zu[k] + 1e-9), k
    y = run_onnx(path, xs.astype(np.float32))
    err = float32_error(net, box, compute_bounds(net, box, "interval", chain=chain))
    assert np.all(y >= zl[-1] - err) and np.all(y <= zu[-1] + err)
    lam = rng.normal(size=(1, 4, net.n_outputs))
    obj = optimise_alpha(chain, box.lower[None], box.upper[None], zl, zu, lam, np.zeros(4), iters=5)
    assert np.all(y @ lam[0].T <= obj.upper[0] + np.abs(lam[0]) @ err)
    engine = compute_bounds(net, box, "crown", chain=chain)
    unstable = [int(np.sum((lo < 0) & (hi > 0))) for lo, hi in zip(zl[:-1], zu[:-1])]
    before = [int(np.sum((lo < 0) & (hi > 0))) for lo, hi in zip(engine.pre_lower[:-1], engine.pre_upper[:-1])]
    assert sum(unstable) <= sum(before) + 2, (unstable, before)


def test_recompute_policy():
    """Split children keep their parent's layer bounds on a chain with a convolution, not on a dense chain."""
    assert recompute_pays(prepare(planted_network(seed=0).network))
    assert not recompute_pays(prepare(planted_cnn().network))


def test_bab_without_rebounding_children_agrees_with_published(shared_data):
    """oval21 img2908 (a-b-CROWN and VeriNet: unsat) needs ReLU splits; children keep their parent's
    layer bounds on this conv chain, and the answer is unsat (or unknown under heavy load), never sat."""
    net = load_onnx(shared_data / OVAL / NET)
    assert not recompute_pays(prepare(net))
    r = verify_property(shared_data / OVAL / NET, shared_data / OVAL / IMG2908, backend="bab", timeout=60)
    assert r.result in ("unsat", "timeout", "unknown"), r.reason
