"""Benchmark: certified vs sampled error of reductions of a max-pool CNN (issue 12 items 4-5; DESIGN.md §5, §10).

``Convnet_maxpool`` (VNN-COMP 2021 verivital: Conv 32 -> ReLU -> MaxPool -> Gemm, a graph network) on
the L-inf boxes of its 10 VNN-LIB properties (radius 0.004). Reduced copies, written and loaded back:
8-bit per-channel and per-tensor QDQ quantisation, 10 % and 50 % of the channels zeroed (magnitude
channel pruning of a graph) and 10 % of the weights zeroed. Per box: ``lumpver bound``'s certified L-inf bound
(:func:`lumpver.api.bound.bound_files`, back-end graph_diff: product-graph CROWN intersected with the
node-wise deltas; root bound only, 784 inputs), its attained value (falsifier, onnxruntime on both
files) and the largest error onnxruntime shows on 2000 sampled points; seconds per ``bound`` call
(falsifier included) and, as the load-independent figure, its ratio to one onnxruntime pass of the
original over 1000 points measured in the same run.

With ``--tiny``: the pairs of tests/test_graph_compare.py (2x2-image residual/concat/max-pool nets,
box radius 0.08): the exact maximum of ``|f - g|`` (big-M MILP, HiGHS, on the product graph), the root
bound and the bound after 2 s of input splitting.

Usage: nice -n 5 python bench/bench_graph_compare.py [--props 0,1,...] [--timeout 20] [--tiny]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.api.bound import bound_files  # noqa: E402
from lumpver.ir.onnx_graph_export import save_graph  # noqa: E402
from lumpver.ir.onnx_import import load_model  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402
from lumpver.reductions.certify import sampled_error  # noqa: E402
from lumpver.reductions.pruning_graph import magnitude_prune_graph  # noqa: E402
from lumpver.reductions.quantize import quantize_graph, save_quantized  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "cnn" / "verivital"
MODEL = DATA / "Convnet_maxpool.onnx"
METHODS = ("q8-channel", "q8-tensor", "channels-10%", "channels-50%", "weights-10%")


def build(method: str, f, path: Path) -> None:
    if method.startswith("q8"):
        g, qls = quantize_graph(f, 8, per_channel=method == "q8-channel")
        save_quantized(g, qls, path)
    else:
        unit, share = method.split("-")
        keep = 1.0 - float(share.rstrip("%")) / 100.0
        res = magnitude_prune_graph(f, keep, unit.rstrip("s"), "layer" if unit == "channels" else "global")
        save_graph(res.zeroed, path)  # channels zeroed, shapes kept (bench_graph_prune.py: removed)


def tiny() -> None:
    from lumpver.bounds.graph_diff import graph_difference_bounds, prepare_graph_pair
    from lumpver.specs.inputset import InputSet
    from lumpver.verifiers.graph_diff import graph_difference_search
    from tests.test_graph_compare import PAIRS, _box, exact_linf

    print("| pair | exact max linf | root bound | after 2 s of splitting | attained (sampled) | boxes |")
    print("|---|---|---|---|---|---|")
    for name, f, g in PAIRS:
        box = _box(f.n_inputs, 3, 0.08)
        ex = exact_linf(f, g, box)
        r = graph_difference_bounds(prepare_graph_pair(f, g), box)
        root = float(np.max(np.maximum(r.upper, -r.lower)))
        run = graph_difference_search(f, g, InputSet([box]), "linf", timeout=2.0)
        print(f"| {name} | {ex:.4g} | {root:.4g} ({root / ex:.2f}x) | {run.upper_bound:.4g} "
              f"({run.upper_bound / ex:.3f}x) | {run.lower_bound:.4g} | {sum(x.boxes for x in run.results)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--props", default=",".join(map(str, range(10))))
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--tiny", action="store_true", help="the test pairs against the exact MILP maximum")
    args = ap.parse_args()
    if args.tiny:
        return tiny()
    f = load_model(MODEL)
    xs = np.random.default_rng(0).uniform(0, 1, (1000, f.n_inputs)).astype(np.float32)
    t = time.perf_counter()
    run_onnx(MODEL, xs)
    ort = time.perf_counter() - t
    tmp = Path(tempfile.mkdtemp())
    print(f"onnxruntime, 1000 points: {ort:.3f} s")
    print("| method | boxes | certified (median) | attained (median) | sampled (median) | certified / attained | "
          "s per bound (median) | / onnxruntime pass |")
    print("|---|---|---|---|---|---|---|---|")
    for method in METHODS:
        path = tmp / f"{method}.onnx"
        build(method, f, path)
        rows = []
        for p in map(int, args.props.split(",")):
            X = load_input_set(DATA / "specs_maxpool" / f"prop_{p}_0.004.vnnlib", f.n_inputs)
            t = time.perf_counter()
            v = bound_files(MODEL, path, X, timeout=args.timeout)
            secs = time.perf_counter() - t
            rows.append((v.upper_bound, v.lower_bound, sampled_error(MODEL, path, X, "linf"), secs))
            assert v.upper_bound is not None and v.upper_bound >= max(v.lower_bound, rows[-1][2])
        up, lo, smp, secs = (statistics.median(c) for c in zip(*rows))
        ratios = [r[0] / r[1] for r in rows if r[1] > 0]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "- (attained 0)"
        print(f"| {method} | {len(rows)} | {up:.4g} | {lo:.4g} | {smp:.4g} | {ratio} | {secs:.1f} | "
              f"{secs / ort:.0f} |")


if __name__ == "__main__":
    main()
