"""Softmax outputs in ``compare`` and ``bound`` (lumpver/bounds/softmax.py, verifiers/softmax_outputs.py).

Independent references: numpy softmax on random logit pairs (the bound rule), onnxruntime on a
dense grid of the 2-D input box (the models' real probabilities), onnxruntime replay of every
counterexample."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lumpver.api.bound import bound_files
from lumpver.api.compare import compare_models
from lumpver.bounds.softmax import float_margin, logit_threshold, probability_bound
from lumpver.errors import InputError
from lumpver.ir.network import Layer
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.planted import random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box, InputSet
from lumpver.specs.load import load_input_set
from lumpver.specs.norms import norm_value

BOX = InputSet([Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_probability_bound_covers_random_logit_pairs(norm):
    """||softmax(a) - softmax(b)|| <= probability_bound(||a - b||_inf) on adversarially scaled pairs."""
    rng = np.random.default_rng(3)
    for m in (2, 3, 10):
        a = rng.normal(size=(20000, m)) * rng.choice([0.1, 1.0, 5.0], size=(20000, 1))
        d = rng.normal(size=(20000, m)) * rng.choice([1e-3, 0.1, 1.0, 4.0], size=(20000, 1))
        d[:5000] = np.where(rng.random((5000, m)) < 0.5, 1.0, -1.0) * np.abs(d[:5000]).max(axis=1, keepdims=True)
        u = np.max(np.abs(d), axis=1)
        seen = norm_value(_softmax(a + d) - _softmax(a), norm)
        bound = np.array([probability_bound(v, norm, m) for v in u])
        assert np.all(seen <= bound)
        assert probability_bound(logit_threshold(0.05, norm, m), norm, m) <= 0.05 + 1e-15


def _pair(tmp_path, seed: int, noise: float, tag: str = ""):
    """Two Softmax models: A random, B = A with the output layer perturbed by ``noise``."""
    rng = np.random.default_rng(seed)
    a = random_mlp(rng, [2, 8, 8, 3], fan_in_scaled=True)
    a.output_softmax = True
    last = a.layers[-1]
    w = (last.weight + noise * rng.normal(size=last.weight.shape)).astype(np.float32)
    b = a.with_layers(a.layers[:-1] + [Layer(w, last.bias, last.activation, last.alpha, last.source_op)])
    pa, pb = tmp_path / f"a{tag}.onnx", tmp_path / f"b{tag}.onnx"
    save_onnx(a, pa)
    save_onnx(b, pb)
    return pa, pb


def _grid_max(pa, pb, norm: str) -> float:
    """Largest onnxruntime probability difference on a 301 x 301 grid of the box."""
    t = np.linspace(-1.0, 1.0, 301)
    x = np.stack(np.meshgrid(t, t), axis=-1).reshape(-1, 2).astype(np.float32)
    ya, yb = run_onnx(pa, x), run_onnx(pb, x)
    assert np.allclose(ya.sum(axis=1), 1.0, atol=1e-5)  # the files output probabilities
    return float(np.max(norm_value(ya.astype(np.float64) - yb, norm)))


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_bound_on_softmax_models_brackets_onnxruntime(tmp_path, norm):
    pa, pb = _pair(tmp_path, 0, 0.05)
    seen = _grid_max(pa, pb, norm)
    v = bound_files(pa, pb, BOX, backend="interval", norm=norm, timeout=10.0)
    assert v.verdict == "proved" and seen <= v.upper_bound
    assert v.upper_bound <= {"linf": 1.0, "l1": 2.0}[norm] + float_margin(3)
    x = np.asarray(v.counterexample, dtype=np.float32).reshape(1, -1)
    attained = float(norm_value(run_onnx(pa, x).astype(np.float64) - run_onnx(pb, x), norm)[0])
    assert v.lower_bound == pytest.approx(attained, abs=1e-7) and v.lower_bound <= v.upper_bound


def test_compare_softmax_proves_and_refutes(tmp_path):
    pa, pb = _pair(tmp_path, 1, 0.05)
    seen = _grid_max(pa, pb, "linf")
    upper = bound_files(pa, pb, BOX, backend="interval", norm="linf", timeout=10.0).upper_bound
    proved = compare_models(pa, pb, BOX, epsilon=upper * 1.01, backend="auto", timeout=20.0)
    assert proved.verdict == "proved" and seen <= proved.upper_bound <= upper * 1.01
    refuted = compare_models(pa, pb, BOX, epsilon=0.5 * seen, backend="auto", timeout=20.0)
    assert refuted.verdict == "violated"
    x = np.asarray(refuted.counterexample, dtype=np.float32).reshape(1, -1)
    assert BOX.contains(x.reshape(-1).astype(np.float64), tol=1e-9)
    assert np.max(np.abs(run_onnx(pa, x).astype(np.float64) - run_onnx(pb, x))) > 0.5 * seen


def test_compare_softmax_top1_uses_logits(tmp_path):
    pa, pb = _pair(tmp_path, 2, 0.0)  # identical models: the argmax agrees everywhere
    assert compare_models(pa, pb, BOX, epsilon=0.0, norm="top1", backend="interval", timeout=10.0).verdict == "proved"
    pa2, pb2 = _pair(tmp_path, 2, 3.0, "moved")  # the argmax moves somewhere on the grid
    t = np.linspace(-1.0, 1.0, 201)
    x = np.stack(np.meshgrid(t, t), axis=-1).reshape(-1, 2).astype(np.float32)
    disagree = np.any(np.argmax(run_onnx(pa2, x), axis=1) != np.argmax(run_onnx(pb2, x), axis=1))
    v = compare_models(pa2, pb2, BOX, epsilon=0.0, norm="top1", backend="auto", timeout=20.0)
    assert v.verdict != "proved" if disagree else v.verdict != "violated"


def test_mixed_outputs_and_softmax_certificate_refused(tmp_path):
    pa, _ = _pair(tmp_path, 3, 0.1)
    rng = np.random.default_rng(3)
    plain = tmp_path / "plain.onnx"
    save_onnx(random_mlp(rng, [2, 8, 8, 3], fan_in_scaled=True), plain)
    with pytest.raises(InputError, match="Softmax"):
        compare_models(pa, plain, BOX, epsilon=0.1, timeout=5.0)
    with pytest.raises(InputError, match="Softmax"):
        bound_files(pa, pa, BOX, backend="interval", timeout=5.0, cert_path=tmp_path / "c.json")


def test_vnnlib_with_inputs_only_is_an_input_set(tmp_path):
    spec = tmp_path / "inputs.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
                    "(assert (>= X_0 -0.5))\n(assert (<= X_0 0.25))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n")
    xs = load_input_set(str(spec), 2)
    (box,) = xs.boxes()
    assert np.allclose(box.lower, [-0.5, 0.0]) and np.allclose(box.upper, [0.25, 1.0])
    assert math.isfinite(box.upper.sum())
