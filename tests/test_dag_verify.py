"""``verify`` on graph networks (issue 12 item 4, DESIGN.md §10, §11): answers on planted residual /
concat / max-pool CNNs agree with an independent MILP optimum (unsat just above it, sat just below it
with the counterexample replayed by onnxruntime), and the shared VeriVital max-pool instances get no
answer contradicting the published VNN-COMP 2021 results."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from lumpver.api.verify import verify_property
from lumpver.ir.onnx_graph_export import save_graph
from lumpver.ir.planted import DAG_KINDS, random_dag_cnn
from lumpver.ir.runtime import run_onnx
from lumpver.specs.inputset import Box
from tests.test_dag_bounds import milp_max

ANSWER = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}


def _prop(path, lo, hi, n_out: int, threshold: float) -> None:
    """Unsafe set: ``Y_0 >= threshold`` over the box ``[lo, hi]``."""
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.size)] + [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    lines += [f"(assert (>= X_{i} {float(lo[i])!r}))\n(assert (<= X_{i} {float(hi[i])!r}))" for i in range(lo.size)]
    lines.append(f"(assert (>= Y_0 {float(threshold)!r}))")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("kind", DAG_KINDS)
def test_verify_agrees_with_the_milp_optimum(tmp_path, kind):
    g = random_dag_cnn(kind, image=(1, 2, 2), channels=2, n_outputs=2, seed=4)
    model = tmp_path / "g.onnx"
    save_graph(g, model)
    box = Box(np.zeros(g.n_inputs), np.ones(g.n_inputs))
    best = milp_max(g, np.array([1.0, 0.0]), box)
    gap = 0.01 * (1 + abs(best))
    prop = tmp_path / "p.vnnlib"
    _prop(prop, box.lower, box.upper, g.n_outputs, best + gap)
    res = verify_property(model, prop, timeout=60)
    assert res.result == "unsat", res.reason
    _prop(prop, box.lower, box.upper, g.n_outputs, best - gap)
    res = verify_property(model, prop, timeout=60)
    assert res.result == "sat", res.reason
    assert np.all(res.x >= 0) and np.all(res.x <= 1)
    y = run_onnx(model, res.x)[0]
    assert np.array_equal(y, res.y) and y[0] >= best - gap


def _published(shared) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with open(shared / "cnn" / "published_results_vnncomp2021.csv") as fh:
        for row in csv.reader(fh):
            if len(row) >= 5 and row[1] == "Convnet_maxpool.onnx" and row[4].lower() in ANSWER:
                out.setdefault(row[2], set()).add(ANSWER[row[4].lower()])
    return out


@pytest.mark.parametrize("k", [0, 4, 8])
def test_verivital_maxpool_instances_match_published_results(shared_data, k):
    name = f"prop_{k}_0.004.vnnlib"
    res = verify_property(shared_data / "cnn/verivital/Convnet_maxpool.onnx",
                          shared_data / "cnn/verivital/specs_maxpool" / name, timeout=60)
    peers = _published(shared_data)[name]
    assert peers == {"unsat"}
    assert res.result == "unsat", res.reason  # proved by graph CROWN through the MaxPool relaxation
