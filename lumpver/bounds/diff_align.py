"""Joint chains of two networks for batched difference bounds (DESIGN.md §5, §11).

Two chains over the shared raw input ``x``, both with an identity input step and a first
identity-activation layer holding the two networks' input affines (so the batched engine of
:mod:`lumpver.bounds.batched` sees only dense layers after a diagonal input step):

* :func:`delta_chain`, NeuroDiff's stacked chain over ``(delta h_k, h^g_k)`` with block layers
  ``[[W^f, W^f - W^g], [0, W^g]]`` (see :mod:`lumpver.bounds.diff`). It needs the same depth,
  widths and activations; :func:`align_pair` first makes the widths equal: g's hidden neurons
  are permuted to face their closest neuron of f (Hungarian assignment on normalised rows,
  :func:`scipy.optimize.linear_sum_assignment`) and the narrower side is padded with zero
  neurons (zero row, zero bias, zero outgoing weights). Permuting and padding do not change
  either function, so the pairing only affects tightness, never soundness. Every ``W^f - W^g``
  is checked to be exact in float64 (TwoSum), else the chain is refused;
* :func:`product_chain`, the product network ``x -> [f(x); g(x)]`` (block-diagonal layers), for
  any pair of equal activations per layer; a shallower ReLU network is padded with identity
  ReLU layers before its output layer (``relu(h) = h`` for ``h = relu(.) >= 0``: exact).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lumpver.bounds.engine import AffineStep, Chain
from lumpver.bounds.diff import StackedDiagonal
from lumpver.bounds.rounding import exact_difference, exact_where
from lumpver.ir.conv import DiagonalOperator
from lumpver.ir.network import Layer, Network
from lumpver.ir.operators import DenseOperator


def _dense(net: Network) -> bool:
    return all(isinstance(layer.op, DenseOperator) for layer in net.layers)


def _same_acts(a: list[Layer], b: list[Layer]) -> bool:
    return all(x.activation == y.activation and (x.activation != "leaky_relu" or x.alpha == y.alpha)
               for x, y in zip(a, b))


def snap_for_exact_difference(f: Network, g: Network) -> Network:
    """``g`` with every weight and bias ``t`` that differs inexactly from f's ``h`` at the same place
    replaced by ``t' = fl(h - fl(h - t))`` where that makes ``h - t'`` exact (TwoSum): ``t'`` is within two
    units in the last place of the larger of ``h`` and ``t``. For twins built in float64 (quotient twins:
    their weights are divided by class scales), so the delta chain applies; the caller bounds ``g' - g``
    itself (the twin's discrepancy bound is computed on the snapped twin). Same shapes required, else ``g``
    is returned unchanged."""
    if [l.weight.shape for l in f.layers] != [l.weight.shape for l in g.layers] or not (_dense(f) and _dense(g)):
        return g
    return g.with_layers([Layer(_snap(lf.weight, lg.weight), _snap(lf.bias, lg.bias), lg.activation, lg.alpha,
                                lg.source_op) for lf, lg in zip(f.layers, g.layers)])


def _snap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    snapped = a - (a - b)
    return np.where(exact_where(a, b) | ~exact_where(a, snapped), b, snapped)


# ----- alignment ---------------------------------------------------------------------------
def _unit_rows(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = np.hstack([w, b[:, None]])
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-300)


def _pad_layer(layer: Layer, rows: np.ndarray, cols: Optional[np.ndarray], width: int, fan_in: int) -> Layer:
    """``layer`` with its neuron ``i`` placed at ``rows[i]`` of ``width`` and its input ``j`` at
    ``cols[j]`` of ``fan_in``; other rows and columns zero."""
    w = np.zeros((width, fan_in))
    b = np.zeros(width)
    cols = np.arange(layer.fan_in) if cols is None else cols
    w[np.ix_(rows, cols)] = layer.weight
    b[rows] = layer.bias
    return Layer(w, b, layer.activation, layer.alpha, layer.source_op)


def identity_pair(f: Network, g: Network) -> Optional[tuple[Network, Network]]:
    """``(f, g)`` paired neuron i with neuron i when their dense layers have the same shapes and activations
    (what :func:`delta_chain` needs), else None."""
    if len(f.layers) != len(g.layers) or not (_dense(f) and _dense(g)) or not _same_acts(f.layers, g.layers):
        return None
    if [l.weight.shape for l in f.layers] != [l.weight.shape for l in g.layers]:
        return None
    return f, g


def align_pair(f: Network, g: Network) -> Optional[tuple[Network, Network]]:
    """``(f', g')`` with equal widths, computing the same functions as ``f`` and ``g``, g's neurons
    facing their best match of f; None when depths, activations or layer kinds differ."""
    from scipy.optimize import linear_sum_assignment  # solver: imported where used

    if len(f.layers) != len(g.layers) or not (_dense(f) and _dense(g)) or not _same_acts(f.layers, g.layers):
        return None
    fl, gl = [], []
    f_cols = g_cols = None  # where the previous layer's neurons of f / g sit in the joint indexing
    prev_width = f.n_inputs
    for k, (lf, lg) in enumerate(zip(f.layers, g.layers)):
        last = k == len(f.layers) - 1
        if last:
            f_rows, g_rows, width = np.arange(lf.width), np.arange(lg.width), lf.width
        else:
            f_rows, g_rows, width = _match(lf, lg, f_cols, g_cols, prev_width, linear_sum_assignment)
        fl.append(_pad_layer(lf, f_rows, f_cols, width, prev_width))
        gl.append(_pad_layer(lg, g_rows, g_cols, width, prev_width))
        f_cols, g_cols, prev_width = f_rows, g_rows, width
    return f.with_layers(fl), g.with_layers(gl)


def _match(lf: Layer, lg: Layer, f_cols, g_cols, prev_width: int, lsa) -> tuple[np.ndarray, np.ndarray, int]:
    """Joint positions of f's and g's neurons of one hidden layer: matched pairs share a position."""
    wf = _pad_layer(lf, np.arange(lf.width), f_cols, lf.width, prev_width)
    wg = _pad_layer(lg, np.arange(lg.width), g_cols, lg.width, prev_width)
    uf, ug = _unit_rows(wf.weight, wf.bias), _unit_rows(wg.weight, wg.bias)
    cost = np.linalg.norm(uf[:, None, :] - ug[None, :, :], axis=2)
    ri, ci = lsa(cost)
    width = lf.width + lg.width - ri.size
    f_rows = np.arange(lf.width)
    g_rows = np.empty(lg.width, dtype=np.int64)
    g_rows[ci] = ri
    rest = np.setdiff1d(np.arange(lg.width), ci)
    g_rows[rest] = lf.width + np.arange(rest.size)
    return f_rows, g_rows, width


# ----- chains ------------------------------------------------------------------------------
def _identity_input(n: int) -> AffineStep:
    return AffineStep.of(DiagonalOperator((n,), np.ones(n)), np.zeros(n))


def delta_chain(f: Network, g: Network) -> Optional[Chain]:
    """The stacked ``(delta h, h^g)`` chain of two equally shaped dense networks (module docstring);
    layer 0 is the input affine of both (identity activation). None when a difference is inexact."""
    (sf, tf), (sg, tg) = f.input_affine(), g.input_affine()
    ds, dt = exact_difference(sf, sg), exact_difference(tf, tg)
    if ds is None or dt is None:
        return None
    steps = [AffineStep.of(StackedDiagonal(ds, sg), np.concatenate([dt, tg]))]
    for lf, lg in zip(f.layers, g.layers):
        wf, wg = lf.op.dense(), lg.op.dense()
        dw, db = exact_difference(wf, wg), exact_difference(lf.bias, lg.bias)
        if dw is None or db is None:
            return None
        steps.append(AffineStep.of(DenseOperator(np.block([[wf, dw], [np.zeros_like(wg), wg]])),
                                   np.concatenate([db, lg.bias])))
    return Chain(_identity_input(f.n_inputs), steps, ["identity"] + [l.activation for l in f.layers],
                 [1.0] + [float(l.alpha) for l in f.layers])


def _deepen(net: Network, depth: int) -> Optional[list[Layer]]:
    """``net``'s layers with identity ReLU layers inserted before the output up to ``depth``."""
    layers = list(net.layers)
    extra = depth - len(layers)
    if extra == 0:
        return layers
    if len(layers) < 2 or layers[-2].activation != "relu":
        return None
    w = layers[-2].width
    pad = [Layer(np.eye(w), np.zeros(w), "relu") for _ in range(extra)]
    return layers[:-1] + pad + layers[-1:]


def product_chain(f: Network, g: Network) -> Optional[Chain]:
    """The chain of ``x -> [f(x); g(x)]`` (module docstring), or None when the activations of the
    two networks cannot be paired layer by layer."""
    depth = max(len(f.layers), len(g.layers))
    fl, gl = _deepen(f, depth), _deepen(g, depth)
    if fl is None or gl is None or not (_dense(f) and _dense(g)) or not _same_acts(fl, gl):
        return None
    (sf, tf), (sg, tg) = f.input_affine(), g.input_affine()
    steps = [AffineStep.of(StackedDiagonal(sf, sg), np.concatenate([tf, tg]))]
    for lf, lg in zip(fl, gl):
        wf, wg = lf.op.dense(), lg.op.dense()
        block = np.block([[wf, np.zeros((wf.shape[0], wg.shape[1]))], [np.zeros((wg.shape[0], wf.shape[1])), wg]])
        steps.append(AffineStep.of(DenseOperator(block), np.concatenate([lf.bias, lg.bias])))
    return Chain(_identity_input(f.n_inputs), steps, ["identity"] + [l.activation for l in fl],
                 [1.0] + [float(l.alpha) for l in fl])
