"""End-to-end refit of a pruned network with L-BFGS-B (DESIGN.md §4, issue 14 item 2).

After :func:`lumpver.reductions.approx.refit_pruned` (layer-wise least squares), every kept
weight and bias of g is refitted jointly, through the activations, on samples of X:

    loss(g) = mean_x ||g(x) - f(x)||_p^p / p                          (end-to-end output error)
            + lam * sum_k mean_x ||z_g,k(x) - z_h,k(x)[kept_k]||^2 / s_k  (neuron-wise deltas)

where ``z_h,k`` are h's pre-activations at the kept neurons of layer k and ``s_k`` their mean
square (so layers weigh alike). The second term keeps g close to h neuron by neuron, which is
what the differential certificate compares (:mod:`lumpver.reductions.certify`); ``p = 2`` first,
then optionally a larger even ``p`` pushes on the largest errors (the certified norm is L-inf).
Gradients are written by hand (numpy, back-propagation; products by ``np.einsum``, which runs
on one thread: multi-threaded BLAS on these thin matrices was 15x slower on the loaded 2-core
machine, measured); the optimiser is
:func:`scipy.optimize.minimize` with ``L-BFGS-B`` (quasi-Newton, no framework needed, fast on
the few thousand parameters of a reduced network). The result is rounded to float32; the caller
keeps it only if it certifies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import minimize

from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Layer, Network
from lumpver.reductions.approx_minimax import f32, logits


@dataclass
class FitOptions:
    """Knobs of :func:`finetune` (defaults measured on ACAS Xu prop_3, bench/bench_approx_acasxu.py)."""

    lam: float = 1e-3  # weight of the neuron-wise delta penalty (outputs scaled to unit RMS)
    max_iter: int = 60  # L-BFGS-B iterations per stage
    powers: tuple[int, ...] = (2, 4)  # output-error exponents, one stage each


def unpack(theta: np.ndarray, shapes: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Layer parameters ``[(W, b), ...]`` of shapes ``[(rows, cols), ...]`` from the flat vector ``theta``."""
    out, i = [], 0
    for r, c in shapes:
        w = theta[i:i + r * c].reshape(r, c)
        i += r * c
        out.append((w, theta[i:i + r]))
        i += r
    return out


def pack(params: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The flat vector of :func:`unpack`."""
    return np.concatenate([np.concatenate([w.ravel(), b]) for w, b in params])


#: an output loss: the error matrix ``g(x) - target`` -> (loss, d loss / d error)
OutputLoss = Callable[[np.ndarray], tuple[float, np.ndarray]]


def power_loss(p: int) -> OutputLoss:
    """``mean_x sum_o |err|^p / p`` (the module docstring's first term)."""
    def loss(err: np.ndarray) -> tuple[float, np.ndarray]:
        n = err.shape[0]
        return float(np.sum(np.abs(err) ** p)) / (p * n), np.sign(err) * np.abs(err) ** (p - 1) / n
    return loss


def loss_grad(theta: np.ndarray, shapes: list[tuple[int, int]], acts_fn: list[tuple[str, float]], x: np.ndarray,
              y_target: np.ndarray, out_loss: OutputLoss, z_targets: Sequence[np.ndarray] = (),
              scales: Sequence[float] = (), lam: float = 0.0) -> tuple[float, np.ndarray]:
    """(loss, gradient) at ``theta``: ``out_loss(g(x) - y_target)`` plus the neuron-wise delta
    penalty of the module docstring (layers with a ``z_targets`` entry); hand-written backprop."""
    params = unpack(theta, shapes)
    n = x.shape[0]
    pre, post = [], [x]
    for (w, b), (act, alpha) in zip(params, acts_fn):
        z = np.einsum("ij,kj->ik", post[-1], w) + b
        pre.append(z)
        post.append(ACTIVATIONS[act](z, alpha))
    loss, d_post = out_loss(post[-1] - y_target)
    grads: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(len(params) - 1, -1, -1):
        act, alpha = acts_fn[k]
        d_pre = d_post * ACTIVATIONS[act].derivative(pre[k], post[k + 1], alpha)
        if k < len(z_targets) and lam > 0:
            delta = pre[k] - z_targets[k]
            loss += lam * float(np.sum(delta ** 2)) / (n * scales[k])
            d_pre = d_pre + 2.0 * lam * delta / (n * scales[k])
        grads.append((np.einsum("ni,nj->ij", d_pre, post[k]), d_pre.sum(axis=0)))
        d_post = np.einsum("ni,ij->nj", d_pre, params[k][0])
    return loss, pack(grads[::-1])


def finetune(g: Network, h: Network, acts_h: list[np.ndarray], kept: list[np.ndarray], y_target: np.ndarray,
             check: tuple[np.ndarray, np.ndarray], options: FitOptions = FitOptions()) -> Network:
    """g with every weight refitted end to end (module docstring); float32-representable values.

    ``acts_h``: h's activations on the samples (index 0: preprocessed inputs, as
    :meth:`Network.activations`); ``kept[k]``: h's neurons that g keeps in hidden layer k;
    ``y_target``: f's outputs on the same samples; ``check``: (preprocessed inputs, f's outputs)
    on *other* samples of X. Returns g unchanged if the fit does not lower the L-inf error on
    ``check`` (the fit sees only its own samples and can overfit them). Outputs are scaled to
    unit RMS inside the fit so that L-BFGS-B's tolerances mean the same on every network."""
    x = acts_h[0]
    z_targets, scales = [], []
    for k, rows in enumerate(kept):
        layer = h.layers[k]
        z = (acts_h[k] @ layer.weight.T + layer.bias)[:, rows]
        z_targets.append(z)
        scales.append(max(float(np.mean(z ** 2)), 1e-12))
    shapes = [(layer.width, layer.fan_in) for layer in g.layers]
    acts_fn = [(layer.activation, layer.alpha) for layer in g.layers]
    s = max(float(np.sqrt(np.mean(y_target ** 2))), 1e-12)
    last = len(g.layers) - 1
    theta = pack([(layer.weight / (s if k == last else 1.0), layer.bias / (s if k == last else 1.0))
                   for k, layer in enumerate(g.layers)])
    for p in options.powers:
        res = minimize(loss_grad, theta, args=(shapes, acts_fn, x, y_target / s, power_loss(p), z_targets, scales,
                                               options.lam),
                       jac=True, method="L-BFGS-B",
                       options={"maxiter": options.max_iter, "ftol": 1e-15, "gtol": 1e-12})
        theta = res.x
    layers = [Layer(f32(w * (s if k == last else 1.0)), f32(b * (s if k == last else 1.0)),
                    old.activation, old.alpha, old.source_op)
              for k, ((w, b), old) in enumerate(zip(unpack(theta, shapes), g.layers))]
    fitted = g.with_layers(layers)
    before = np.max(np.abs(logits(g, check[0]) - check[1]))
    after = np.max(np.abs(logits(fitted, check[0]) - check[1]))
    return fitted if after < before else g
