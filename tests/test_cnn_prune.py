"""Pruning and quantisation of CNNs (issue 12 item 5, DESIGN.md §5-§8, §10).

References are independent of the reducers: the ONNX files' own initialisers (channel counts, zeros,
integer weights), a numpy reference of what the reduced file should compute (explicit window sums,
not lumpver's im2col) against onnxruntime on the written file, sampled onnxruntime errors never above
the certified bound, scipy's binomial tail for the Learn-then-Test p-value, and the independent
checkers (which import no reduction code) for re-checking and tampering."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from scipy.stats import binom

from lumpver.api.reduce import apply_pass
from lumpver.certificates.format import check_certificate
from lumpver.errors import InputError
from lumpver.fileio import sha256_file
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.confident import ConfidentConfig
from lumpver.reductions.pruning import channel_keep_sets
from lumpver.reductions.passes import ConfidentPass, CoresetPass, MagnitudePrunePass, QuantizePass
from lumpver.specs.inputset import Box, InputSet
from tests.onnx_builders import bn_gap_softmax_model, conv1d_model, conv_pool_model, f32, make_model, nhwc_model

SHAPE = (2, 8, 8)
N_IN = int(np.prod(SHAPE))


# ----- the model and its numpy reference ---------------------------------------------------------
def _params(rng) -> dict[str, np.ndarray]:
    p = {"W1": rng.normal(size=(6, 2, 3, 3)) / 4, "B1": rng.normal(size=6) * 0.1,
         "W2": rng.normal(size=(5, 6, 3, 3)) / 7, "B2": rng.normal(size=5) * 0.1,
         "W3": rng.normal(size=(7, 5 * 4 * 4)) / 9, "B3": rng.normal(size=7) * 0.1,
         "W4": rng.normal(size=(3, 7)) / 3, "B4": rng.normal(size=3) * 0.1}
    p["W2"][:, 2] = 0.0  # channel 2 of the first conv feeds nothing: its score is 0
    return {k: f32(v) for k, v in p.items()}


def _model(p: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Conv(pad 1) -> Relu -> AveragePool 2x2 -> Conv(pad 1) -> Relu -> Flatten -> Gemm -> Relu -> Gemm."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("AveragePool", ["r1"], ["a1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["a1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["g3"], transB=1), helper.make_node("Relu", ["g3"], ["r3"]),
             helper.make_node("Gemm", ["r3", "W4", "B4"], ["y"], transB=1)]
    return make_model(nodes, p, "x", ["N", *SHAPE], "y", ["N", 3])


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 cross-correlation with zero padding 1, by explicit window sums."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2], x.shape[3]
    out = sum(np.einsum("nchw,oc->nohw", xp[:, :, u:u + h, v:v + wd], w[:, :, u, v]) for u in range(3) for v in range(3))
    return out + b[None, :, None, None]


def _forward(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    h = relu(_conv(x.reshape(-1, *SHAPE).astype(np.float64), p["W1"], p["B1"]))
    h = h.reshape(h.shape[0], h.shape[1], 4, 2, 4, 2).mean(axis=(3, 5))
    h = relu(_conv(h, p["W2"], p["B2"])).reshape(h.shape[0], -1)
    h = relu(h @ p["W3"].T.astype(np.float64) + p["B3"])
    return h @ p["W4"].T.astype(np.float64) + p["B4"]


def _top(score: np.ndarray, keep: float) -> np.ndarray:
    n = max(1, math.ceil(keep * score.size - 1e-9))
    return np.sort(np.lexsort((np.arange(score.size), -score))[:n])


def _channel_pruned(p: dict[str, np.ndarray], keep: float) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Magnitude channel pruning as the module docstring states it, computed here from the initialisers."""
    sq = lambda a: (np.asarray(a, np.float64) ** 2)  # noqa: E731
    blocks = sq(p["W3"]).reshape(7, 5, 16).sum(axis=(0, 2))
    s1 = np.sqrt(sq(p["W1"]).sum(axis=(1, 2, 3)) + sq(p["B1"])) * np.sqrt(sq(p["W2"]).sum(axis=(0, 2, 3)))
    s2 = np.sqrt(sq(p["W2"]).sum(axis=(1, 2, 3)) + sq(p["B2"])) * np.sqrt(blocks)
    s3 = np.sqrt(sq(p["W3"]).sum(axis=1) + sq(p["B3"])) * np.sqrt(sq(p["W4"]).sum(axis=0))
    k1, k2, k3 = _top(s1, keep), _top(s2, keep), _top(s3, keep)
    cols = (k2[:, None] * 16 + np.arange(16)[None, :]).reshape(-1)
    q = {"W1": p["W1"][k1], "B1": p["B1"][k1], "W2": p["W2"][np.ix_(k2, k1)], "B2": p["B2"][k2],
         "W3": p["W3"][np.ix_(k3, cols)], "B3": p["B3"][k3], "W4": p["W4"][:, k3], "B4": p["B4"]}
    return q, [k1, k2, k3]


def _inits(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _weighted_shapes(path) -> list[tuple[int, ...]]:
    """Shapes of the weight tensors read by the Conv/Gemm nodes, in graph order."""
    m = onnx.load(str(path))
    inits, out = _inits(path), []
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            src = n.input[1]
            dq = next((d for d in m.graph.node if d.output[0] == src and d.op_type == "DequantizeLinear"), None)
            out.append(tuple(inits[dq.input[0] if dq is not None else src].shape))
    return out


@pytest.fixture
def cnn(tmp_path, rng):
    p = _params(rng)
    path = tmp_path / "cnn.onnx"
    onnx.save(_model(p), str(path))
    x = rng.uniform(-1, 1, (64, N_IN)).astype(np.float32)
    assert np.allclose(run_onnx(path, x), _forward(p, x), atol=1e-5)  # the reference is right
    return path, p


def _box(rng, radius=0.05) -> InputSet:
    c = rng.uniform(-0.5, 0.5, N_IN)
    return InputSet([Box(c - radius, c + radius)])


def _sampled(a, b, input_set: InputSet, rng, n=3000) -> float:
    box = input_set.regions[0]
    x = rng.uniform(box.lower, box.upper, (n, N_IN))
    x[: n // 10] = np.where(rng.random((n // 10, N_IN)) < 0.5, box.lower, box.upper)  # corners
    x = x.astype(np.float32)
    return float(np.max(np.abs(run_onnx(a, x) - run_onnx(b, x))))


# ----- magnitude pruning ---------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_channel_pruning_removes_filters_and_next_slices(cnn, tmp_path, rng, keep):
    path, p = cnn
    out = tmp_path / "p.onnx"
    res = apply_pass(MagnitudePrunePass(keep, "channel"), path, out)
    expect, kept = _channel_pruned(p, keep)
    assert 2 not in kept[0]  # the channel that feeds nothing goes first
    assert _weighted_shapes(out) == [expect[k].shape for k in ("W1", "W2", "W3", "W4")]
    x = rng.uniform(-1, 1, (64, N_IN)).astype(np.float32)
    assert np.allclose(run_onnx(out, x), _forward(expect, x), atol=1e-5)
    assert res.summary[0] == f"channels per hidden layer [6, 5, 7] -> {[k.size for k in kept]}"
    assert res.certificate_path is None and "input set" in res.note


def test_weight_pruning_zeroes_smallest_stored_filter_entries(cnn, tmp_path, rng):
    path, p = cnn
    out = tmp_path / "w.onnx"
    apply_pass(MagnitudePrunePass(0.4, "weight"), path, out)
    hidden = ["W1", "W2", "W3"]
    flat = np.concatenate([np.abs(p[k]).ravel() for k in hidden])
    n_zero = math.floor(0.6 * flat.size + 1e-9)
    order = np.lexsort((np.arange(flat.size), flat))
    mask = np.ones(flat.size, bool)
    mask[order[:n_zero]] = False
    expect, start = dict(p), 0
    for k in hidden:
        expect[k] = np.where(mask[start:start + p[k].size].reshape(p[k].shape), p[k], 0).astype(np.float32)
        start += p[k].size
    inits = _inits(out)
    got = [a for a in inits.values() if a.ndim in (2, 4) and a.size > 21]  # the hidden conv filters and the Gemm
    assert sum(int(np.count_nonzero(a == 0)) for a in got) == n_zero  # filter entries, not unrolled positions
    x = rng.uniform(-1, 1, (64, N_IN)).astype(np.float32)
    assert np.allclose(run_onnx(out, x), _forward(expect, x), atol=1e-5)


def test_refusals_name_the_reason(tmp_path, rng, cnn):
    grouped = tmp_path / "grouped.onnx"
    onnx.save(conv_pool_model(rng), str(grouped))
    with pytest.raises(InputError, match="grouped convolution"):
        apply_pass(MagnitudePrunePass(0.5, "channel"), grouped, tmp_path / "g.onnx")
    with pytest.raises(InputError, match="use --granularity channel"):
        apply_pass(MagnitudePrunePass(0.5, "neuron"), cnn[0], tmp_path / "n.onnx")
    apply_pass(MagnitudePrunePass(0.5, "weight"), grouped, tmp_path / "gw.onnx")  # weights of a grouped conv: fine
    conv = next(n for n in onnx.load(str(tmp_path / "gw.onnx")).graph.node if n.op_type == "Conv")
    assert next(a.i for a in conv.attribute if a.name == "group") == 2
    assert np.count_nonzero(_inits(tmp_path / "gw.onnx")[conv.input[1]] == 0) > 0


#: per builder: (initialiser reading the channels of hidden layer k, how to view it as [..., channel, ...])
READERS = {"conv1d": [("W2", lambda w: w.reshape(4, 2, 2), 0)],  # MatMul (in, out), in = channel-major (4, 2)
           "bn_gap": [("W2", lambda w: w, 1), ("W3", lambda w: w, 1)]}


@pytest.mark.parametrize("name,build", [("conv1d", conv1d_model), ("bn_gap", bn_gap_softmax_model)])
def test_channel_pruning_of_1d_conv_and_folded_batchnorm_equals_silencing(tmp_path, rng, name, build):
    """Removing channels computes what the original computes with the dropped channels' readers zeroed
    (onnxruntime on an edited copy of the original file; Softmax outputs compared as they are)."""
    model = build(rng)
    src, out, ref = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "ref.onnx"
    onnx.save(model, str(src))
    apply_pass(MagnitudePrunePass(0.5, "channel"), src, out)
    kept = channel_keep_sets(load_onnx(src), 0.5)
    inits = {i.name: i for i in model.graph.initializer}
    for (init, view, axis), k in zip(READERS[name], kept):
        w = numpy_helper.to_array(inits[init]).copy()
        v = view(w)
        dropped = np.setdiff1d(np.arange(v.shape[axis]), k)
        np.moveaxis(v, axis, 0)[dropped] = 0.0
        inits[init].CopyFrom(numpy_helper.from_array(v.reshape(w.shape).astype(np.float32), init))
    onnx.save(model, str(ref))
    x = rng.uniform(-1, 1, (32, int(np.prod([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]))))
    assert np.allclose(run_onnx(out, x.astype(np.float32)), run_onnx(ref, x.astype(np.float32)), atol=1e-6)
    expect = {"conv1d": [2], "bn_gap": [3, 2]}[name]  # ceil(0.5 * [4] or [5, 3])
    assert [k.size for k in kept] == expect
    convs = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Conv"]
    assert [_inits(out)[n.input[1]].shape[0] for n in convs] == expect


def test_nhwc_layout_is_refused_for_channel_removal_but_weights_prune(tmp_path, rng):
    src = tmp_path / "nhwc.onnx"
    onnx.save(nhwc_model(rng), str(src))
    with pytest.raises(InputError, match=r"layer 1: .*PermuteOperator.*each channel alike"):
        apply_pass(MagnitudePrunePass(0.5, "channel"), src, tmp_path / "p.onnx")
    apply_pass(MagnitudePrunePass(0.5, "weight"), src, tmp_path / "w.onnx")
    x = rng.uniform(-1, 1, (1, 90)).astype(np.float32)
    assert run_onnx(tmp_path / "w.onnx", x).shape == (1, 3)


# ----- certification -------------------------------------------------------------------------------
def _tamper_fails(cert_path, edit) -> bool:
    cert = json.loads(cert_path.read_text())
    edit(cert)
    cert_path.write_text(json.dumps(cert))
    return not check_certificate(cert_path).holds


def test_channel_pruning_certificate_bounds_sampled_error_and_catches_tampering(cnn, tmp_path, rng):
    path, _ = cnn
    out, cert_path = tmp_path / "p.onnx", tmp_path / "p.cert.json"
    xset = _box(rng)
    res = apply_pass(MagnitudePrunePass(0.5, "channel", timeout=3), path, out, cert_path, xset)
    eps = res.certificate["guarantee"]["epsilon"]
    seen = _sampled(path, out, xset, rng)
    assert 0 < seen <= eps < math.inf
    assert res.certificate["stats"]["channels_after"] == [3, 3, 4]
    assert check_certificate(cert_path).holds
    assert _tamper_fails(cert_path, lambda c: c["guarantee"].update(epsilon=seen / 2))

    def too_many(c):  # more kept channels than g has: not a channel removal of h
        c["guarantee"]["epsilon"] = eps
        c["evidence"][0]["chain"]["kept"][0] = list(range(6))
    assert _tamper_fails(cert_path, too_many)


def test_coreset_filter_pruning_reweights_kept_slices_and_certifies(cnn, tmp_path, rng):
    path, p = cnn
    out, cert_path = tmp_path / "c.onnx", tmp_path / "c.cert.json"
    xset = _box(rng)
    res = apply_pass(CoresetPass(0.5, seed=3, timeout=3), path, out, cert_path, xset)
    layers = next(ev for ev in res.certificate["evidence"] if ev.get("method") == "coreset")["layers"]
    k1, k2, k3 = (np.array(lc["kept"]) for lc in layers)
    assert [k.size for k in (k1, k2, k3)] == [3, 3, 4] and 2 not in k1  # a zero-sensitivity filter is never drawn
    g = _inits(out)
    w1, w2 = (a for a in g.values() if a.ndim == 4)
    w3, w4 = (a for a in g.values() if a.ndim == 2 and a.size > 6)
    assert np.array_equal(w1, p["W1"][k1])  # kept filters are the original ones
    for i, t in enumerate(k1):  # their outgoing slices are positive multiples of the original slices
        ratio = w2[:, i] / p["W2"][np.ix_(k2, [t])][:, 0]
        assert np.allclose(ratio, ratio.flat[0], rtol=1e-6) and ratio.flat[0] > 0
    expect = {"W1": w1, "B1": p["B1"][k1], "W2": w2, "B2": p["B2"][k2], "W3": w3, "B3": p["B3"][k3], "W4": w4,
              "B4": p["B4"]}
    x = rng.uniform(-1, 1, (64, N_IN)).astype(np.float32)
    assert np.allclose(run_onnx(out, x), _forward(expect, x), atol=1e-5)
    assert _sampled(path, out, xset, rng) <= res.certificate["guarantee"]["epsilon"]
    assert check_certificate(cert_path).holds
    assert _tamper_fails(cert_path, lambda c: c["guarantee"].update(epsilon=c["guarantee"]["epsilon"] / 10))


# ----- quantisation --------------------------------------------------------------------------------
def test_per_channel_qdq_conv_runs_in_onnxruntime_and_certifies(cnn, tmp_path, rng):
    path, p = cnn
    out, cert_path = tmp_path / "q.onnx", tmp_path / "q.cert.json"
    xset = _box(rng)
    res = apply_pass(QuantizePass(4, per_channel=True, timeout=3), path, out, cert_path, xset)
    m = onnx.load(str(out))
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and all(n.input[1] in dq for n in convs)
    inits, expect = _inits(out), dict(p)
    for name, node in zip(("W1", "W2"), convs):
        d = dq[node.input[1]]
        q, scale = inits[d.input[0]], inits[d.input[1]]
        assert q.dtype == np.int8 and scale.shape == (p[name].shape[0],)
        assert next(a.i for a in d.attribute if a.name == "axis") == 0
        s_ref = (np.abs(p[name]).reshape(len(scale), -1).max(axis=1) / 7).astype(np.float32)
        assert np.array_equal(scale, s_ref)
        assert np.array_equal(q, np.clip(np.round(p[name] / s_ref.astype(np.float64)[:, None, None, None]), -8, 7))
        expect[name] = (q.astype(np.float32) * s_ref[:, None, None, None]).astype(np.float32)
    for name in ("W3", "W4"):  # dense layers: per output row
        s_ref = (np.abs(p[name]).max(axis=1) / 7).astype(np.float32)
        expect[name] = (np.clip(np.round(p[name] / s_ref.astype(np.float64)[:, None]), -8, 7).astype(np.float32)
                        * s_ref[:, None])
    x = rng.uniform(-1, 1, (64, N_IN)).astype(np.float32)
    assert np.allclose(run_onnx(out, x), _forward(expect, x), atol=1e-5)
    seen = _sampled(path, out, xset, rng)
    assert 0 < seen <= res.certificate["guarantee"]["epsilon"]
    assert check_certificate(cert_path).holds
    assert _tamper_fails(cert_path, lambda c: c["guarantee"].update(epsilon=seen / 2))


# ----- confident pruning -----------------------------------------------------------------------------
def test_confident_channel_pruning_recomputes_and_catches_a_wrong_level(cnn, tmp_path, rng):
    path, p = cnn
    cal = tmp_path / "cal.npz"
    x = rng.uniform(-1, 1, (400, N_IN)).astype(np.float32)
    np.savez(cal, x=x)
    out, cert_path = tmp_path / "conf.onnx", tmp_path / "conf.cert.json"
    config = ConfidentConfig(0.3, 0.1, (0.1, 0.2, 0.4, 0.6, 0.8), "disagreement")
    res = apply_pass(ConfidentPass(cal, config), path, out, cert_path)
    ev = next(e for e in res.certificate["evidence"] if e["backend"] == "learn-then-test")
    assert ev["pruning"]["granularity"] == "channel"  # the family of a CNN
    level = ev["chosen_level"]
    expect, kept = _channel_pruned(p, round(1 - level, 12))
    assert sum(k.size for k in kept) < 6 + 5 + 7  # channels were removed
    assert _weighted_shapes(out) == [expect[k].shape for k in ("W1", "W2", "W3", "W4")]
    k = int(np.sum(run_onnx(path, x).argmax(1) != run_onnx(out, x).argmax(1)))
    assert k / len(x) == pytest.approx(ev["risks"][ev["chosen_index"]])
    assert binom.cdf(k, len(x), 0.3) < 0.1  # the null R > alpha is rejected at the chosen level
    assert check_certificate(cert_path).holds
    other = tmp_path / "other.onnx"  # a file pruned at another level than the certificate says
    apply_pass(MagnitudePrunePass(1.0 if level >= 0.5 else 0.3, "channel"), path, other)
    out.write_bytes(other.read_bytes())
    cert = json.loads(cert_path.read_text())
    cert["reduced"]["sha256"] = sha256_file(out)  # a consistent hash: the checker must recompute to catch it
    cert_path.write_text(json.dumps(cert))
    rep = check_certificate(cert_path)
    assert not rep.holds and any("not the magnitude pruning" in line for line in rep.lines)


def test_confident_weight_family_is_refused_on_a_cnn(cnn, tmp_path, rng):
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rng.uniform(-1, 1, (50, N_IN)).astype(np.float32))
    with pytest.raises(InputError, match="--granularity channel"):
        apply_pass(ConfidentPass(cal, ConfidentConfig(0.3, 0.1, granularity="weight")), cnn[0], tmp_path / "o.onnx")
