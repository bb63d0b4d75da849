"""Benchmark: a LiNNA-style table (issue 14 item 5; DESIGN.md §3, §4): hidden neurons kept vs
certified epsilon vs sampled error, for exact lumping, exact on-set reduction and the certified
approximate reduction (``reduce_approx``: least squares + L-BFGS-B fit for ReLU, constant folding
for sigmoid/tanh), on ACAS Xu (prop_3 box), mnist-net_256x2 (prop_0 box, radius 0.03) and a
planted 784-6x200-10 sigmoid network (ERAN ffnnSIGMOID-like; ../shared has none) on an L-inf box
of radius 0.015. Certified = L-inf bound in real arithmetic of the stored float32 weights (the
certificate's epsilon); sampled = largest L-inf error on 20,000 points of the box (f64 forward).

Usage: python bench/bench_linna_table.py [--cases acas1_1,acas3_5,mnist,sigmoid] [--timeout S]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.ir.planted import saturated_mlp  # noqa: E402
from lumpver.reductions.approx import reduce_approx  # noqa: E402
from lumpver.reductions.certify import sample_points  # noqa: E402
from lumpver.reductions.exact import exact_lump  # noqa: E402
from lumpver.reductions.onset import reduce_on_set  # noqa: E402
from lumpver.specs.inputset import Box, InputSet  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"


def case(name: str):
    """(network, input set, epsilons) of one table block."""
    if name.startswith("acas"):
        f = load_onnx(DATA / "acasxu" / "onnx" / f"ACASXU_run2a_{name[4:]}_batch_2000.onnx")
        return f, load_input_set(str(DATA / "acasxu" / "vnnlib" / "prop_3.vnnlib"), f.n_inputs), (0.01, 0.1)
    if name == "mnist":
        f = load_onnx(DATA / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx")
        return f, load_input_set(str(DATA / "mnist_fc" / "vnnlib" / "prop_0_0.03.vnnlib"), f.n_inputs), (0.1, 1.0)
    rng = np.random.default_rng(0)
    f = saturated_mlp(rng, [784] + [200] * 6 + [10], "sigmoid")
    c = rng.uniform(0.1, 0.9, 784)
    return f, InputSet([Box(c - 0.015, c + 0.015)]), (0.01, 0.1)


def rows_for(name: str, timeout: float) -> list[tuple]:
    f, X, eps_list = case(name)
    pts = sample_points(X, 20000, seed=7)
    yf = f.forward(pts)

    def seen(g) -> float:
        return float(np.max(np.abs(yf - g.forward(pts))))

    rows = [(name, "original", f.n_hidden, 0.0, 0.0, 0.0)]
    t0 = time.perf_counter()
    ex = exact_lump(f)
    rows.append((name, "exact lumping", ex.reduced.n_hidden, 0.0, seen(ex.reduced), time.perf_counter() - t0))
    t0 = time.perf_counter()
    on = reduce_on_set(f, X)
    rows.append((name, "on-set (exact on X)", on.reduced.n_hidden, on.discrepancy, seen(on.reduced),
                 time.perf_counter() - t0))
    for eps in eps_list:
        t0 = time.perf_counter()
        try:
            res = reduce_approx(f, X, eps, timeout=timeout)
        except ValueError as e:
            print(f"{name} eps {eps}: {e}", flush=True)
            continue
        rows.append((name, f"approx eps {eps:g} ({res.method})", res.reduced.n_hidden, res.certified.epsilon,
                     seen(res.reduced), time.perf_counter() - t0))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="acas1_1,acas3_5,mnist,sigmoid")
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args()
    rows = []
    for name in args.cases.split(","):
        rows += rows_for(name, args.timeout)
    print("\n| network | reduction | hidden kept | % of original | certified L-inf | sampled L-inf | seconds |")
    print("|---|---|---|---|---|---|---|")
    total = {r[0]: r[2] for r in rows if r[1] == "original"}
    for name, what, kept, cert, smp, dt in rows:
        print(f"| {name} | {what} | {kept} | {kept / total[name]:.0%} | {cert:.3g} | {smp:.3g} | {dt:.1f} |")


if __name__ == "__main__":
    main()
