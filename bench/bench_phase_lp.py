"""Benchmark: LP ReLU-phase search vs the batched one on f - g (issue 14 item 2; DESIGN.md §3, §5, §11).

mnist-net_256x2 and its 8-bit per-tensor quantisation (QDQ file, loaded back) on the L-inf boxes of its
VNN-LIB properties. On each box, with the same wall budget, run one after the other (CPU seconds of this
process are reported, the machine being shared):

* ``lp``: :func:`lumpver.verifiers.bab_phase.phase_search` (every node an LP over both networks through
  HiGHS, every row bounded; the root from :func:`lumpver.verifiers.bab_phase.leaf_root`);
* ``batched``: :func:`lumpver.verifiers.bab_phase_batched.phase_search` (CROWN-style delta relaxation,
  48 sub-problems per numpy pass), as ``certify`` runs it on wide inputs.

Both bounds are sound upper bounds of ``max ||f - g||_inf`` on the box (real arithmetic); lower is better.

Usage: nice -n 5 python bench/bench_phase_lp.py [--props 0,1,2,3,4] [--seconds 25]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.bounds.diff_batched import REFINE, prepare_diff  # noqa: E402
from lumpver.bounds.region import region_box  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.reductions.quantize import quantize_network, save_quantized  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402
from lumpver.verifiers.bab_phase import PairNet, leaf_root, phase_search as lp_search  # noqa: E402
from lumpver.verifiers.bab_phase_batched import PhaseOptions, phase_search  # noqa: E402

MNIST = ROOT / ".." / "shared" / "data" / "mnist_fc"


def run(which: str, model, lo: np.ndarray, hi: np.ndarray, seconds: float) -> tuple[float, int, float]:
    """``(bound, nodes, CPU seconds)`` of one search."""
    c0 = time.process_time()
    deadline = time.monotonic() + seconds
    if which == "lp":
        net = PairNet.of(model)
        res = lp_search(net, leaf_root(net, model, lo, hi, REFINE), lo, hi, lambda: 0.0, deadline, 10 ** 9)
        return res.upper, res.nodes, time.process_time() - c0
    res = phase_search(model, lo, hi, "linf", lambda: 0.0, deadline, PhaseOptions(max_nodes=10 ** 9))
    return res.upper, res.nodes, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--props", default="0,1,2,3,4")
    ap.add_argument("--seconds", type=float, default=25.0)
    args = ap.parse_args()
    f = load_onnx(MNIST / "onnx" / "mnist-net_256x2.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q8.onnx"
        g, qls = quantize_network(f, 8, per_channel=False)
        save_quantized(g, qls, path)
        model = prepare_diff(f, load_onnx(path), "delta")
    print("| prop | LP search: bound / nodes / CPU s | batched: bound / nodes / CPU s |")
    print("|---|---|---|")
    for prop in args.props.split(","):
        box = region_box(load_input_set(str(MNIST / "vnnlib" / f"prop_{prop}_0.03.vnnlib"), f.n_inputs).regions[0])
        lo, hi = np.asarray(box.lower, np.float64), np.asarray(box.upper, np.float64)
        a = run("lp", model, lo, hi, args.seconds)
        b = run("batched", model, lo, hi, args.seconds)
        print(f"| {prop} | {a[0]:.4g} / {a[1]} / {a[2]:.0f} | {b[0]:.4g} / {b[1]} / {b[2]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
