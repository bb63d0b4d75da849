"""Pruning of graph networks that removes channels, and coreset filter pruning on graphs (issue 12
item 5; DESIGN.md §5, §6, §10). References computed independently of lumpver's pruning code: the
zeroed model is rebuilt here from the ONNX initialisers (scores, kept sets and zeroing in numpy) and
compared with the written smaller model by onnxruntime; the channel counts of the written ResNet
follow from the kept sets by its topology (a residual channel goes only where the stem and the branch
both dropped it); certified bounds are checked against 2000 onnxruntime samples and, on a tiny
graph, against the exact maximum of a big-M MILP (HiGHS) of the product graph of two graphs with
different channel counts."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lumpver.certificates.format import check_certificate, file_ref
from lumpver.cli import main
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.planted import random_dag_cnn
from lumpver.ir.planted_resnet import random_dense_resnet, random_resnet
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.pruning_graph import magnitude_prune_graph
from lumpver.specs.inputset import Box, InputSet
from lumpver.verifiers.graph_diff import graph_difference_search
from tests.test_graph_compare import MILP_TOL, exact_linf, write_box_spec

KEEP = 0.5


def _resnet():
    return random_resnet(image=(2, 4, 4), channels=6, blocks=1, stem_stride=1, hidden=8, n_outputs=3, seed=1)


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([*map(str, args), "-q"])
    return code, capsys.readouterr().out


def _weighted(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(weight, bias) initialiser names of the Conv/Gemm nodes in graph order (Gemm: transB=1)."""
    return [(n.input[1], n.input[2]) for n in model.graph.node if n.op_type in ("Conv", "Gemm")]


def _params(path) -> int:
    return sum(int(np.prod(i.dims)) for i in onnx.load(str(path)).graph.initializer)


def _score(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(w.reshape(w.shape[0], -1).astype(np.float64) ** 2, axis=1) + b.astype(np.float64) ** 2)


def _zeroed_reference(src, dst, keep: float, linked: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Write ``src`` with the pruned channels of every hidden Conv/Gemm zeroed (filter and bias): the
    ceil(keep * C) channels of largest ||[w_t, b_t]|| kept, ranked jointly (2-norm of the scores) over
    the ``linked`` Conv/Gemm positions (a residual group); return the kept channel sets."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    arrays = [(numpy_helper.to_array(inits[wn]).copy(), numpy_helper.to_array(inits[bn]).copy())
              for wn, bn in _weighted(model)[:-1]]
    scores = [_score(w, b) for w, b in arrays]
    joint = np.sqrt(sum(scores[k] ** 2 for k in linked)) if linked else None
    kept_sets = []
    for k, ((wn, bn), (w, b)) in enumerate(zip(_weighted(model)[:-1], arrays)):
        score = joint if k in linked else scores[k]
        kept = np.sort(np.argsort(-score, kind="stable")[:max(1, math.ceil(round(keep * score.size, 9)))])
        drop = np.setdiff1d(np.arange(w.shape[0]), kept)
        w[drop], b[drop] = 0, 0
        inits[wn].CopyFrom(numpy_helper.from_array(w, wn))
        inits[bn].CopyFrom(numpy_helper.from_array(b, bn))
        kept_sets.append(kept)
    onnx.save(model, str(dst))
    return kept_sets


def _out_channels(path) -> list[int]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [int(inits[wn].shape[0]) for wn, _ in _weighted(model)]


def _box(n: int, width: float, seed: int = 3) -> Box:
    c = np.random.default_rng(seed).uniform(0.2, 0.8, n)
    return Box(c - width, c + width)


def _method(cert: dict) -> dict:
    return next(e for e in cert["evidence"] if e.get("backend") == "reduction")


def _shift_output_bias(src, dst, by: float) -> None:
    model = onnx.load(str(src))
    bn = _weighted(model)[-1][1]
    init = next(i for i in model.graph.initializer if i.name == bn)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(by), bn))
    onnx.save(model, str(dst))


def _certified(tmp_path, capsys, a, out, spec, box: Box, *opts) -> dict:
    """Run ``prune`` with a certificate; check it re-checks, bounds 2000 onnxruntime samples and that
    a halved epsilon is caught. The certificate."""
    cert = out.with_suffix(".json")
    code, text = _cli(capsys, "prune", a, *opts, "--input-set", spec, "-o", out, "--certificate", cert,
                      "--timeout", 0.5)
    assert code == 0, text
    c = json.loads(cert.read_text())
    xs = box.sample(2000, np.random.default_rng(5), corners=True)
    sampled = float(np.abs(run_onnx(a, xs) - run_onnx(out, xs)).max())
    assert c["guarantee"]["epsilon"] + c["guarantee"]["float_tolerance"]["float32_rounding_bound"] >= sampled
    assert check_certificate(cert).holds
    bad = tmp_path / "bad.json"
    c["guarantee"]["epsilon"] = 0.5 * sampled
    bad.write_text(json.dumps(c))
    assert sampled == 0 or not check_certificate(bad).holds
    ev = next(e for e in c["evidence"] if e.get("backend") == "graph_diff")
    if any(ev.get("restored", [])):  # restoring other positions than the removed ones: not g, caught
        c["guarantee"]["epsilon"] = 1e9
        ev["restored"] = [[0] * len(r) for r in ev["restored"]]
        bad.write_text(json.dumps(c))
        assert not check_certificate(bad).holds
    _shift_output_bias(out, tmp_path / "tampered.onnx", 10.0)  # the error grows by 10: caught, sha updated
    c = json.loads(cert.read_text())
    c["reduced"] = file_ref(tmp_path / "tampered.onnx", tmp_path)
    bad.write_text(json.dumps(c))
    assert not check_certificate(bad).holds
    return json.loads(cert.read_text()) | {"_text": text}


def test_channel_prune_of_a_resnet_removes_channels_and_certifies(tmp_path, capsys):
    f = _resnet()
    box = _box(f.n_inputs, 0.05)
    a, spec, out, ref = tmp_path / "f.onnx", tmp_path / "x.vnnlib", tmp_path / "g.onnx", tmp_path / "zeroed.onnx"
    save_graph(f, a)
    write_box_spec(spec, box)
    cert = _certified(tmp_path, capsys, a, out, spec, box, "--method", "magnitude", "--granularity", "channel",
                      "--keep", KEEP)
    stem, conv1, conv2, dense = _zeroed_reference(a, ref, KEEP, linked=(0, 2))  # stem and branch end: one Add
    xs = box.sample(500, np.random.default_rng(7)) * 4 - 1.5  # far outside the box too: equal everywhere
    y_ref, y_out = run_onnx(ref, xs), run_onnx(out, xs)
    np.testing.assert_allclose(y_out, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    np.testing.assert_array_equal(stem, conv2)
    assert _out_channels(out) == [stem.size, conv1.size, conv2.size, dense.size, 3] == [3, 3, 3, 4, 3]
    assert _params(out) < _params(a)
    m = _method(cert)
    assert (m["channels_pruned"], m["channels_removed"]) == (13, 13)  # the residual group ranked jointly: all go
    assert f"{m['channels_removed']} removed, {m['channels_zeroed']} only zeroed" in cert["_text"]


def test_keeping_everything_is_the_original(tmp_path, capsys):
    f = random_dag_cnn("concat", image=(1, 3, 3), channels=3, n_outputs=2, seed=3)
    a, out = tmp_path / "f.onnx", tmp_path / "g.onnx"
    save_graph(f, a)
    code, _ = _cli(capsys, "prune", a, "--method", "magnitude", "--granularity", "channel", "--keep", 1, "-o", out)
    assert code == 0 and _params(out) == _params(a)
    xs = np.random.default_rng(2).uniform(-2, 2, (200, f.n_inputs))
    np.testing.assert_array_equal(run_onnx(out, xs), run_onnx(a, xs))


def test_concat_prune_is_onnxruntime_equal_to_the_zeroed_model(tmp_path, capsys):
    f = random_dag_cnn("concat", image=(1, 3, 3), channels=4, n_outputs=2, seed=4)
    a, out, ref = tmp_path / "f.onnx", tmp_path / "g.onnx", tmp_path / "zeroed.onnx"
    save_graph(f, a)
    code, _ = _cli(capsys, "prune", a, "--method", "magnitude", "--granularity", "channel", "--keep", KEEP, "-o", out)
    assert code == 0
    kept = _zeroed_reference(a, ref, KEEP)
    xs = np.random.default_rng(3).uniform(-2, 2, (300, f.n_inputs))
    y_ref = run_onnx(ref, xs)
    np.testing.assert_allclose(run_onnx(out, xs), y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    assert _out_channels(out) == [k.size for k in kept] + [2]  # the Concat parts shrink at their offsets
    assert _params(out) < _params(a)


def test_coreset_on_a_resnet_samples_filters_and_certifies(tmp_path, capsys):
    f = _resnet()
    box = _box(f.n_inputs, 0.05)
    a, spec, out = tmp_path / "f.onnx", tmp_path / "x.vnnlib", tmp_path / "g.onnx"
    save_graph(f, a)
    write_box_spec(spec, box)
    cert = _certified(tmp_path, capsys, a, out, spec, box, "--method", "coreset", "--keep", KEEP, "--seed", 2)
    # block conv 1 and the dense hidden layer are sampled; the stem and the branch's last conv feed
    # the residual Add and stay as they are (their filters bit-equal)
    assert _out_channels(out)[0] == 6 and _out_channels(out)[2] == 6 and _out_channels(out)[1] <= 3
    assert _out_channels(out)[3] <= 4 and _params(out) < _params(a)
    src, dst = onnx.load(str(a)), onnx.load(str(out))
    si, di = ({i.name: numpy_helper.to_array(i) for i in m.graph.initializer} for m in (src, dst))
    (w0, b0), (v0, c0) = _weighted(src)[0], _weighted(dst)[0]
    np.testing.assert_array_equal(si[w0], di[v0])
    np.testing.assert_array_equal(si[b0], di[c0])
    assert "kept as they are" in cert["_text"] and _method(cert)["method"] == "coreset"


@pytest.mark.parametrize("f", [random_resnet(image=(1, 2, 2), channels=2, blocks=1, stem_stride=1, hidden=3,
                                              n_outputs=2, seed=9),
                               random_dense_resnet(n_inputs=3, width=4, blocks=1, n_outputs=2, seed=6)],
                         ids=["conv-resnet", "dense-resnet"])
def test_product_graph_of_graphs_with_different_channel_counts(f):
    res = magnitude_prune_graph(f, 0.5, "channel", "layer")
    g = res.reduced
    assert g.hidden_channels != f.hidden_channels and res.removed > 0
    box = _box(f.n_inputs, 0.08, seed=8)
    exact = exact_linf(f, g, box)  # big-M MILP of the product graph, independent encoding
    run = graph_difference_search(f, g, InputSet([box]), "linf", timeout=0.5)
    assert run.upper_bound >= exact - MILP_TOL * (1 + exact)
    assert run.lower_bound <= exact + MILP_TOL * (1 + exact)
