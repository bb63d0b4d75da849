"""Deterministic magnitude pruning (lumpver.reductions.pruning) and ``lumpver prune --method magnitude``."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lumpver.cli import main
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.reductions.pruning import magnitude_prune, prune_neurons, prune_weights, sparsity, weight_masks
from lumpver.ir.runtime import run_onnx

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ACAS = DATA / "acasxu" / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"


def _net(rng, widths=(6, 12, 10, 4), quantise=False) -> Network:
    layers = []
    for k in range(len(widths) - 1):
        w = rng.normal(size=(widths[k + 1], widths[k])).astype(np.float32)
        if quantise:  # many ties
            w = np.round(w * 2) / 2
        act = "relu" if k < len(widths) - 2 else "identity"
        layers.append(Layer(w, rng.normal(size=widths[k + 1]).astype(np.float32), act))
    return Network(layers)


def _brute_force_zeroed(net: Network, fraction: float) -> set[tuple[int, int, int]]:
    """Positions (layer, row, col) the rule must zero: sort by (|w|, running index) in pure Python."""
    entries = []
    idx = 0
    for k, layer in enumerate(net.layers[:-1]):
        for r in range(layer.weight.shape[0]):
            for c in range(layer.weight.shape[1]):
                entries.append((abs(float(layer.weight[r, c])), idx, (k, r, c)))
                idx += 1
    entries.sort()
    n = int(math.floor(round(fraction * len(entries), 9)))
    return {e[2] for e in entries[:n]}


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.29, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("quantise", [False, True])
def test_global_weight_pruning_matches_brute_force(fraction, quantise):
    rng = np.random.default_rng(3)
    net = _net(rng, quantise=quantise)
    pruned = prune_weights(net, fraction)
    expect = _brute_force_zeroed(net, fraction)
    for k, (a, b) in enumerate(zip(net.layers[:-1], pruned.layers[:-1])):
        for r, c in zip(*np.nonzero(a.weight != b.weight)):
            assert (k, r, c) in expect and b.weight[r, c] == 0
        for kk, r, c in expect:
            if kk == k:
                assert b.weight[r, c] == 0
    # output layer and every bias untouched
    assert np.array_equal(pruned.layers[-1].weight, net.layers[-1].weight)
    for a, b in zip(net.layers, pruned.layers):
        assert np.array_equal(a.bias, b.bias)
    n_hidden = sum(l.weight.size for l in net.layers[:-1])
    zero_before = {(k, r, c) for k, l in enumerate(net.layers[:-1]) for r, c in zip(*np.nonzero(l.weight == 0))}
    assert math.isclose(sparsity(pruned), len(expect | zero_before) / n_hidden)


def test_ties_are_broken_by_index():
    w = np.ones((3, 4))
    net = Network([Layer(w, np.zeros(3), "relu"), Layer(np.ones((1, 3)), np.zeros(1), "identity")])
    pruned = prune_weights(net, 5 / 12)
    assert pruned.layers[0].weight.reshape(-1).tolist() == [0.0] * 5 + [1.0] * 7


def test_per_layer_scope_prunes_each_layer_by_the_fraction():
    rng = np.random.default_rng(4)
    net = _net(rng)
    masks = weight_masks(net, 0.5, "layer")
    for mask, layer in zip(masks, net.layers[:-1]):
        assert (~mask).sum() == layer.weight.size // 2
        assert np.abs(layer.weight[~mask]).max() <= np.abs(layer.weight[mask]).min()


def test_neuron_pruning_equals_masking_the_removed_neurons():
    """A smaller network whose outputs equal the original's with the dropped neurons' activations zeroed."""
    rng = np.random.default_rng(5)
    net = _net(rng, widths=(5, 20, 16, 3))
    pruned = prune_neurons(net, 0.5)
    assert sum(pruned.hidden_widths) == math.ceil(0.5 * 36)
    # recompute the kept sets independently from the scores
    scores = []
    for k, layer in enumerate(net.layers[:-1]):
        s_in = np.sqrt((layer.weight**2).sum(1) + layer.bias**2)
        s_out = np.sqrt((net.layers[k + 1].weight ** 2).sum(0))
        scores.append(s_in * s_out)
    cutoff = np.sort(np.concatenate(scores))[::-1][sum(pruned.hidden_widths) - 1]
    x = rng.normal(size=(50, 5))
    h = x
    for k, layer in enumerate(net.layers):
        h = layer.activate(h @ layer.weight.T + layer.bias)
        if k < len(scores):
            h = h * (scores[k] >= cutoff)
    assert np.allclose(pruned.forward(x), h, atol=1e-9)


def test_keep_zero_neurons_keeps_one_per_layer():
    net = _net(np.random.default_rng(6))
    assert prune_neurons(net, 0.0).hidden_widths == [1, 1]
    with pytest.raises(ValueError):
        magnitude_prune(net, 1.5)


# ----- the command --------------------------------------------------------------------------


def test_cli_magnitude_writes_the_pruned_model(tmp_path, capsys):
    net = _net(np.random.default_rng(7))
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    save_onnx(net, src)
    assert main(["prune", str(src), "-o", str(out), "--method", "magnitude", "--keep", "0.4", "-q"]) == 0
    expect = magnitude_prune(load_onnx(src), 0.4)
    x = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    assert np.allclose(run_onnx(out, x), expect.forward(x, np.float32), atol=1e-5)
    assert math.isclose(sparsity(load_onnx(out)), math.floor(0.6 * 192) / 192)


def test_cli_magnitude_neurons_on_acas(tmp_path):
    out = tmp_path / "p.onnx"
    rc = main(["prune", str(ACAS), "-o", str(out), "--method", "magnitude", "--keep", "0.5",
               "--granularity", "neuron", "-q"])
    assert rc == 0
    pruned = load_onnx(out)
    assert pruned.hidden_widths == [25] * 6  # neurons default to per-layer ranking
    x = np.random.default_rng(1).uniform(-0.5, 0.5, size=(20, 5)).astype(np.float32)
    assert np.allclose(run_onnx(out, x), pruned.forward(x, np.float32), atol=1e-4)


@pytest.mark.parametrize("keep", ["0", "1.5", "-0.1"])
def test_cli_magnitude_bad_keep_is_exit_2(tmp_path, capsys, keep):
    src = tmp_path / "m.onnx"
    save_onnx(_net(np.random.default_rng(8)), src)
    out = tmp_path / "p.onnx"
    assert main(["prune", str(src), "-o", str(out), "--method", "magnitude", "--keep", keep, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep" in err[0]
    assert not out.exists()
