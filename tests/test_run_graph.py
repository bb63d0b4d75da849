"""``lumpver run`` on a graph network (residual Add, Concat, MaxPool; issue 12, DESIGN.md §10): a spec with
exact lumping, on-set reduction and 8-bit quantisation, re-checked, with a back-end's second opinion.

Independent references: the planted construction says which channels are dead on the box, onnxruntime
replays the original and the final file on points of the box, the final file's error is compared with
the bound the run states, and ``lumpver check`` re-verifies every certificate in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest

from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.planted import random_dag_cnn
from lumpver.ir.runtime import run_onnx

IMAGE = (2, 6, 6)


def _net(kind: str):
    """``random_dag_cnn(kind)`` whose first affine node has two channels at bias -50 (0 on [-1, 2]^n)."""
    net = random_dag_cnn(kind, IMAGE, seed=3)
    first = net.node([n for n in net.order if net.node(n).kind == "affine"][0])
    b = first.bias.reshape(first.shape[0], -1)
    b[[0, 2]] = -50.0
    first.bias = b.reshape(-1)
    return net


def _spec(tmp_path, model, lower: float, upper: float):
    spec = tmp_path / "graph.toml"
    spec.write_text(f'model = "{model.name}"\n[input_set]\ntype = "box"\nlower = {lower}\nupper = {upper}\n'
                    '[tolerance]\nnorm = "linf"\nepsilon = 10.0\n'
                    '[[reductions]]\nmethod = "exact"\n[[reductions]]\nmethod = "on-set"\n'
                    '[[reductions]]\nmethod = "quantize"\nbits = 8\n'
                    '[[backends]]\nname = "interval"\ntimeout = 20\n')
    return spec


@pytest.mark.parametrize("kind", ["maxpool", "residual"])
def test_run_spec_on_a_graph_network(tmp_path, kind):
    net = _net(kind)
    model = tmp_path / "m.onnx"
    save_graph(net, model)
    lower, upper = 0.2, 0.3
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "lumpver", "run", str(_spec(tmp_path, model, lower, upper)),
                        "--out", str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads((out / "report.json").read_text())
    steps = doc["steps"]
    assert [s["method"] for s in steps] == ["exact", "on-set", "quantize (8-bit)"]
    assert all(s["recheck"]["holds"] for s in steps)
    onset = steps[1]["stats"]
    assert sum(onset["channels_after"]) <= sum(onset["channels_before"]) - 2  # the two planted dead channels
    final = out / steps[-1]["model_path"]
    ops = Counter(n.op_type for n in onnx.load(str(final)).graph.node)
    assert ops["Conv"] >= 1 and (ops["MaxPool"] >= 1 if kind == "maxpool" else ops["Add"] >= 1)
    # the stated epsilon of the quantisation step covers what onnxruntime shows on the box
    eps = steps[-1]["certificate"]["guarantee"]["epsilon"]
    x = np.random.default_rng(0).uniform(lower, upper, (300, net.n_inputs)).astype(np.float32)
    err = np.abs(run_onnx(model, x) - run_onnx(final, x)).max()
    assert err <= eps + 1e-5
    assert doc["backends"][0]["verdict"] in ("proved", "unknown")  # epsilon 10 is far above err: never violated
    for s in steps:
        c = subprocess.run([sys.executable, "-m", "lumpver", "check", str(out / s["certificate_path"]), "-q"],
                           capture_output=True, text=True, timeout=600)
        assert c.returncode == 0, c.stdout + c.stderr
