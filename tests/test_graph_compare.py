"""compare and bound on graph networks (issue 12 items 4-5, issue 14; DESIGN.md §5, §10): certified
bounds of ``f - g`` for residual / concat / max-pool CNNs never below the exact maximum of a big-M
MILP (tests/test_dag_bounds.py's independent encoding, HiGHS) of the product graph, which itself is
checked against onnxruntime on both files; attained values never above it; ``proved`` never at 0.9x
the maximum; ``violated`` replayed by onnxruntime; CLI exit codes; no chain-only refusal left."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import helper

from lumpver.bounds.graph_diff import graph_difference_bounds, prepare_graph_pair, product_graph
from lumpver.cli import main
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_graph_export import graph_to_onnx, save_graph
from lumpver.ir.planted import DAG_KINDS, random_dag_cnn, random_mlp
from lumpver.ir.runtime import run_onnx
from lumpver.reductions.channel_conv import stored_weight, with_stored_weight
from lumpver.specs.inputset import Box, InputSet
from lumpver.verifiers.graph_diff import graph_difference_search
from tests.test_dag_bounds import milp_max

TINY = dict(image=(1, 2, 2), channels=2, n_outputs=2)
#: the MILP's optimum is exact up to HiGHS's feasibility tolerance (rows to 1e-6, derived bounds
#: loosened by 1e-5): seen 1e-5 relative above the value of f - g at its own optimal input
MILP_TOL = 5e-5


def perturbed(net: GraphNetwork, scale: float, seed: int) -> GraphNetwork:
    """``net`` with every weight and bias moved by ``scale`` times a Gaussian (float32 values)."""
    rng = np.random.default_rng(seed)
    graph = net.graph.copy()
    for nid in net.order:
        node = net.node(nid)
        if node.kind == "affine":
            w = stored_weight(node.op)
            op = with_stored_weight(node.op, (w + scale * rng.standard_normal(w.shape)).astype(np.float32).astype(float))
            bias = (node.bias + scale * rng.standard_normal(node.bias.shape)).astype(np.float32).astype(float)
            graph.nodes[nid]["node"] = dataclasses.replace(node, op=op, bias=bias)
    return dataclasses.replace(net, graph=graph)


def write_box_spec(path, box: Box) -> None:
    num = lambda v: f"(- {abs(float(v))!r})" if v < 0 else repr(float(v))  # noqa: E731
    lines = [f"(declare-const X_{i} Real)" for i in range(box.dim)] + ["(declare-const Y_0 Real)"]
    for i in range(box.dim):
        lines += [f"(assert (>= X_{i} {num(box.lower[i])}))", f"(assert (<= X_{i} {num(box.upper[i])}))"]
    path.write_text("\n".join(lines + ["(assert (>= Y_0 1000.0))"]) + "\n")


def pair_files(tmp_path, f, g, box: Box):
    a, b, spec = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "x.vnnlib"
    for net, path in ((f, a), (g, b)):
        (save_graph if isinstance(net, GraphNetwork) else save_onnx)(net, path)
    write_box_spec(spec, box)
    return a, b, spec


def exact_linf(f, g, box: Box) -> float:
    """``max_x ||f(x) - g(x)||_inf`` on the box: the MILP optimum of ``±(f_i - g_i)`` per output."""
    p = product_graph(f, g)
    m = p.n_outputs
    return max(milp_max(p, s * np.eye(m)[i], box) for i in range(m) for s in (1.0, -1.0))


def assert_bound_result(v: dict, exact: float) -> None:
    """A ``bound`` JSON: the certified bound is at least the exact maximum, or (when the search met
    the maximum exactly and the float32 attained value lies above the real-arithmetic bound) no bound
    is claimed, for numerical doubt; the attained value is the exact maximum up to float32 rounding."""
    tol = MILP_TOL * (1 + exact)
    assert v["lower_bound"] <= exact + tol
    if v["upper_bound"] is None:
        assert "numerical doubt" in v["reason"] and v["lower_bound"] >= exact - tol
    else:
        assert v["upper_bound"] >= exact - tol and v["verdict"] == "proved"


def _box(n: int, seed: int, width: float) -> Box:
    c = np.random.default_rng(seed).uniform(0.2, 0.8, n)
    return Box(c - width, c + width)


def _pairs():
    """(kind, f, g): perturbed copies (aligned graphs: node-wise deltas) and unrelated graphs."""
    out = []
    for i, kind in enumerate(DAG_KINDS):
        f = random_dag_cnn(kind, seed=20 + i, **TINY)
        out.append((kind + "-perturbed", f, perturbed(f, 0.02, i)))
    f = random_dag_cnn("residual", seed=40, **TINY)
    out.append(("residual-vs-concat", f, random_dag_cnn("concat", seed=41, **TINY)))
    return out


PAIRS = _pairs()


@pytest.mark.parametrize("name,f,g", PAIRS, ids=[p[0] for p in PAIRS])
def test_product_graph_is_f_minus_g_on_onnxruntime(tmp_path, name, f, g):
    box = _box(f.n_inputs, 1, 0.3)
    a, b, _ = pair_files(tmp_path, f, g, box)
    xs = box.sample(300, np.random.default_rng(2), corners=True)
    want = run_onnx(a, xs) - run_onnx(b, xs)
    assert np.allclose(product_graph(f, g).forward(xs), want, atol=1e-5)


@pytest.mark.parametrize("name,f,g", PAIRS, ids=[p[0] for p in PAIRS])
def test_certified_bound_never_below_the_milp_maximum(tmp_path, name, f, g):
    box = _box(f.n_inputs, 3, 0.08)
    exact = exact_linf(f, g, box)
    root = graph_difference_bounds(prepare_graph_pair(f, g), box)
    tol = MILP_TOL * (1 + exact)
    assert np.max(np.maximum(root.upper, -root.lower)) >= exact - tol
    run = graph_difference_search(f, g, InputSet([box]), "linf", timeout=2.0)
    assert exact - tol <= run.upper_bound <= 10 * exact + 1e-3  # sound and not vacuous
    assert run.lower_bound <= exact + 1e-6  # attained (sampled) values cannot beat the exact maximum
    xs = box.sample(2000, np.random.default_rng(4), corners=True)
    d = f.forward(xs) - g.forward(xs)
    for norm, value in (("l1", np.abs(d).sum(1)), ("l2", np.sqrt((d * d).sum(1)))):
        assert graph_difference_search(f, g, InputSet([box]), norm, timeout=0.5).upper_bound >= value.max() - 1e-9


def test_node_deltas_tighten_a_small_perturbation():
    f = random_dag_cnn("residual", seed=5)
    g = perturbed(f, 0.002, 6)
    gp = prepare_graph_pair(f, g)
    assert gp.match is not None
    box = _box(f.n_inputs, 7, 0.05)
    with_delta = graph_difference_bounds(gp, box)
    gp.match = None
    symbolic = graph_difference_bounds(gp, box)
    xs = box.sample(2000, np.random.default_rng(8), corners=True)
    d = f.forward(xs) - g.forward(xs)
    assert np.all(with_delta.upper >= d.max(0) - 1e-9) and np.all(with_delta.lower <= d.min(0) + 1e-9)
    assert np.sum(with_delta.upper - with_delta.lower) < 0.5 * np.sum(symbolic.upper - symbolic.lower)


def _cli(capsys, *args) -> tuple[int, str]:
    """Exit code and stdout of ``lumpver ARGS -q`` (stderr kept in ``_cli.err``)."""
    code = main([*map(str, args), "-q"])
    captured = capsys.readouterr()
    _cli.err = captured.err
    return code, captured.out


@pytest.mark.parametrize("kind", DAG_KINDS)
def test_compare_and_bound_cli_on_graph_pairs(tmp_path, capsys, kind):
    f = random_dag_cnn(kind, seed=30, **TINY)
    g = perturbed(f, 0.02, 31)
    box = _box(f.n_inputs, 9, 0.1)
    a, b, spec = pair_files(tmp_path, f, g, box)
    exact = exact_linf(f, g, box)
    out = tmp_path / "v.json"
    code, text = _cli(capsys, "compare", a, b, "--input-set", spec, "--epsilon", 0.9 * exact, "--timeout", 5,
                      "--json", out)
    v = json.loads(out.read_text())
    assert text.strip().splitlines()[-1] != "proved" and v["verdict"] != "proved"
    if v["verdict"] == "violated":
        assert code == 1 and v["details"]["replay"]["onnx_value"] > 0.9 * exact
        x = np.asarray(v["counterexample"], dtype=np.float32)
        assert np.max(np.abs(run_onnx(a, x) - run_onnx(b, x))) > 0.9 * exact
    code, text = _cli(capsys, "compare", a, b, "--input-set", spec, "--epsilon", 3 * exact, "--timeout", 10,
                      "--json", out)
    v = json.loads(out.read_text())
    assert code == 0 and text.strip().splitlines()[-1] == "proved" and v["backend"] == "graph_diff"
    assert exact - MILP_TOL * (1 + exact) <= v["upper_bound"] <= 3 * exact
    code, text = _cli(capsys, "bound", a, b, "--input-set", spec, "--timeout", 3, "--json", out)
    v = json.loads(out.read_text())
    assert code == 0
    assert_bound_result(v, exact)
    x = np.asarray(v["counterexample"], dtype=np.float32)
    assert abs(float(np.max(np.abs(run_onnx(a, x) - run_onnx(b, x)))) - v["lower_bound"]) < 1e-9


def test_compare_top1_and_chain_against_graph(tmp_path, capsys):
    f = random_dag_cnn("maxpool", seed=50, **TINY)
    g = random_mlp(np.random.default_rng(51), [4, 6, 2])  # a chain: compared through GraphNetwork.from_chain
    box = _box(f.n_inputs, 10, 0.1)
    a, b, spec = pair_files(tmp_path, f, g, box)
    exact = exact_linf(f, g, box)
    out = tmp_path / "v.json"
    code, _ = _cli(capsys, "compare", a, b, "--input-set", spec, "--epsilon", 0.9 * exact, "--timeout", 5,
                   "--json", out)
    assert json.loads(out.read_text())["verdict"] != "proved"
    code, _ = _cli(capsys, "bound", a, b, "--input-set", spec, "--timeout", 3, "--json", out)
    assert code == 0
    assert_bound_result(json.loads(out.read_text()), exact)
    xs = box.sample(3000, np.random.default_rng(11), corners=True)
    agree = np.all(np.argmax(run_onnx(a, xs), 1) == np.argmax(run_onnx(b, xs), 1))
    code, text = _cli(capsys, "compare", a, b, "--input-set", spec, "--epsilon", 0, "--norm", "top1",
                      "--timeout", 5, "--json", out)
    v = json.loads(out.read_text())
    assert v["verdict"] != "proved" or agree  # a proved top-1 agreement holds on every sample
    if v["verdict"] == "violated":
        x = np.asarray(v["counterexample"], dtype=np.float32)
        assert np.argmax(run_onnx(a, x)) != np.argmax(run_onnx(b, x))


def _with_softmax(net: GraphNetwork, path) -> None:
    model = graph_to_onnx(net)
    out = model.graph.output[0]
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(helper.make_node("Softmax", ["logits"], [out.name], axis=1))
    onnx.save(model, path)


def test_softmax_graph_pair_bounds_probabilities(tmp_path, capsys):
    f = random_dag_cnn("residual", seed=60, **TINY)
    g = perturbed(f, 0.05, 61)
    box = _box(f.n_inputs, 12, 0.2)
    a, b, spec = pair_files(tmp_path, f, g, box)
    _with_softmax(f, a)
    _with_softmax(g, b)
    xs = box.sample(3000, np.random.default_rng(13), corners=True)
    pa, pb = run_onnx(a, xs), run_onnx(b, xs)
    assert np.allclose(pa.sum(1), 1.0, atol=1e-5)
    out = tmp_path / "v.json"
    for norm in ("linf", "l1", "l2"):
        code, _ = _cli(capsys, "bound", a, b, "--input-set", spec, "--norm", norm, "--timeout", 2, "--json", out)
        v = json.loads(out.read_text())
        d = pa - pb
        seen = {"linf": np.abs(d).max(1), "l1": np.abs(d).sum(1), "l2": np.sqrt((d * d).sum(1))}[norm].max()
        assert code == 0 and v["upper_bound"] >= seen - 1e-7 and v["lower_bound"] <= v["upper_bound"]


def test_bound_certificate_on_a_graph_pair_rechecks(tmp_path, capsys):
    from lumpver.certificates.format import check_certificate

    f = random_dag_cnn("concat", seed=90, **TINY)
    a, b, spec = pair_files(tmp_path, f, perturbed(f, 0.02, 91), _box(f.n_inputs, 17, 0.08))
    cert = tmp_path / "c.json"
    code, _ = _cli(capsys, "bound", a, b, "--input-set", spec, "--timeout", 2, "--certificate", cert)
    c = json.loads(cert.read_text())
    assert code == 0 and c["evidence"][0]["backend"] == "graph_diff" and check_certificate(cert).holds
    c["guarantee"]["epsilon"] = 0.5 * c["evidence"][1]["lower_bound"]  # below the attained value
    cert.write_text(json.dumps(c))
    assert not check_certificate(cert).holds


def test_chain_only_backends_refuse_cleanly(tmp_path, capsys):
    f = random_dag_cnn("residual", seed=70, **TINY)
    a, b, spec = pair_files(tmp_path, f, perturbed(f, 0.01, 71), _box(f.n_inputs, 14, 0.1))
    code, _ = _cli(capsys, "compare", a, b, "--input-set", spec, "--epsilon", 1, "--backend", "smt")
    assert code == 2 and "supports chains only" in _cli.err and "use --backend auto" in _cli.err
    code, _ = _cli(capsys, "bound", a, b, "--input-set", spec, "--backend", "sdp")
    assert code == 2 and "sdp supports chains only" in _cli.err
    for backend in ("bab_diff", "interval"):  # answered by graph_diff: no chain-only refusal
        code, text = _cli(capsys, "compare", a, b, "--input-set", spec, "--epsilon", 10, "--backend", backend,
                          "--timeout", 3)
        assert code == 0 and text.strip().splitlines()[-1] == "proved", text


# ----- certified prune / quantize on graph networks (issue 12 item 5) ---------------------------------
def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("kind", DAG_KINDS)
def test_certified_prune_and_quantize_keep_the_graph_and_recheck(tmp_path, capsys, kind):
    from lumpver.certificates.format import check_certificate

    f = random_dag_cnn(kind, seed=80, image=(1, 2, 2), channels=3, n_outputs=2)
    box = _box(f.n_inputs, 15, 0.05)
    a, _, spec = pair_files(tmp_path, f, f, box)
    want = {"residual": {"Conv", "Add", "MaxPool"}, "concat": {"Conv", "Concat", "MaxPool"}, "maxpool": {"Conv", "MaxPool"}}
    runs = {"q8c": ("quantize", "--bits", 8, "--per-channel"), "q8t": ("quantize", "--bits", 8),
            "pw": ("prune", "--method", "magnitude", "--granularity", "weight", "--keep", 0.7),
            "pc": ("prune", "--method", "magnitude", "--granularity", "channel", "--keep", 0.6)}
    if kind != "residual":  # every reduction on the residual net; two on the others (time)
        runs = {k: runs[k] for k in ("q8c", "pc")}
    for name, (cmd, *opts) in runs.items():
        out, cert = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
        code, text = _cli(capsys, cmd, a, *opts, "--input-set", spec, "-o", out, "--certificate", cert,
                          "--timeout", 20)
        assert code == 0, (name, text, _cli.err)
        assert want[kind] <= _ops(out), name  # convs, residual Adds, Concats and max pools stay
        if cmd == "quantize":
            assert "DequantizeLinear" in _ops(out)
        c = json.loads(cert.read_text())
        eps = c["guarantee"]["epsilon"]
        exact = exact_linf(f, load_graph_or_chain(out), box)
        assert eps >= exact - MILP_TOL * (1 + exact), name
        xs = box.sample(1000, np.random.default_rng(16), corners=True)
        assert eps >= np.abs(run_onnx(a, xs) - run_onnx(out, xs)).max() - 1e-5, name  # onnxruntime, float32
        assert check_certificate(cert).holds, name
        if name != "q8c":
            continue
        bad = tmp_path / f"{name}_bad.json"
        c["guarantee"]["epsilon"] = 0.5 * exact
        bad.write_text(json.dumps(c))
        assert exact == 0 or not check_certificate(bad).holds, name


def load_graph_or_chain(path):
    from lumpver.ir.onnx_import import load_model

    return load_model(path)
