"""Benchmark: certified vs sampled error of quantisation and pruning on MNIST (DESIGN.md §4-§8, issue 6).

``mnist-net_256x2`` on the L-inf boxes of its VNN-LIB properties. For each box and method:
the certified L-inf bound of ``sup_X |f - g|`` (:func:`lumpver.reductions.certify.certify`, interval
and bab_diff back-ends, real arithmetic of the stored float32 weights) and the largest error seen by
onnxruntime on sampled points of the box (files as written), and the attained value: the larger of that
and the falsifier's (:func:`lumpver.api.bound.falsified_lower_bound`, PGD, replayed with onnxruntime).
Methods: symmetric 8-bit and 4-bit per-tensor quantisation (QDQ files), coreset pruning keeping 50 % of
the neurons (DESIGN.md §6) and, for comparison, activation-based pruning to 50 % with least-squares refits
(:mod:`lumpver.reductions.approx`). Times (build + write + certify) are ratios to one onnxruntime pass of
the original over 1000 points, measured in the same run.

With ``--exact SECONDS`` (quantisation methods: g aligned with f), the exact reference of
:mod:`bench.milp_exact` (a MILP over both networks, HiGHS, SECONDS per output row; independent of the
certifier): its best value (the MILP point replayed with onnxruntime as well) and its dual bound, so the
true maximum lies in ``[best, dual]``; equal when HiGHS closed the gap.

With ``--before``, each case is also certified without the batched ReLU-phase search (``PHASE_NODES = 0``:
the bisection search of ``bab_diff`` as before issue 14's phase search), in the same run. The search's own
attained value (float64 forward passes at its candidate points; a lower bound of the true maximum in real
arithmetic) is printed beside the onnxruntime ones.

Usage: python bench/bench_mnist_quant.py [--props 0,1,...] [--radius 0.03] [--max-boxes N] [--before] [--exact S]
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
sys.path.insert(0, str(ROOT / "bench"))

from milp_exact import dense_layers, exact_linf_max  # noqa: E402
from lumpver.api.bound import falsified_lower_bound  # noqa: E402
from lumpver.bounds.region import region_box  # noqa: E402
import lumpver.reductions.certify as certify_mod  # noqa: E402
from lumpver.reductions.certify import Chain, certify, sample_points, sampled_error  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402
from lumpver.ir.onnx_export import save_onnx  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402

MNIST = ROOT / ".." / "shared" / "data" / "mnist_fc"
MODEL = MNIST / "onnx" / "mnist-net_256x2.onnx"


def build(method: str, f, X, path: Path):
    """(g as written and loaded back, certification chain) for one method."""
    if method.startswith("quant"):
        from lumpver.reductions.quantize import quantize_network, save_quantized

        g, qls = quantize_network(f, int(method[5:]), per_channel=False)
        save_quantized(g, qls, path)
        return load_onnx(path), None
    if method == "coreset50":
        from lumpver.reductions.coreset import coreset_prune, input_betas

        res = coreset_prune(f, 0.5, input_betas(f, X), seed=0)
        save_onnx(res.reduced, path)
        return load_onnx(path), Chain(kept=res.kept)
    from lumpver.reductions.approx import kept_after, refit_pruned, removal_order

    pts = sample_points(X, 3000, seed=0)
    acts = f.activations(pts)
    order = removal_order(f, acts)
    kept = kept_after(f, order, f.n_hidden // 2)
    g, dropped = refit_pruned(f, acts, kept)
    save_onnx(g, path)
    return load_onnx(path), Chain(kept=kept, dropped_rows=dropped)


def inside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``x`` as float32, moved by one ulp where the cast left the box."""
    x32 = x.astype(np.float32)
    x32 = np.where(x32 < lo, np.nextafter(x32, np.float32(np.inf)), x32)
    return np.where(x32 > hi, np.nextafter(x32, np.float32(-np.inf)), x32).astype(np.float32)


def exact(f, g, X, path: Path, seconds: float) -> tuple[float, float, float]:
    """``(MILP best, its point's onnxruntime error, MILP dual bound)`` of ``max ||f - g||_inf`` on X's box."""
    box = region_box(X.regions[0])
    res = exact_linf_max(dense_layers(f), dense_layers(g), box.lower, box.upper, seconds)
    x = inside(res.x, box.lower, box.upper)[None]
    ort = float(np.max(np.abs(run_onnx(str(MODEL), x) - run_onnx(str(path), x))))
    print(f"  exact (MILP, {res.seconds:.0f} s, {res.binaries} binaries): best {res.best:.4g} (onnxruntime at its "
          f"point {ort:.4g}), dual bound {res.dual:.4g}, gap {res.gap:.1%}; rows: {'; '.join(res.status)}", flush=True)
    return res.best, ort, res.dual


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--props", default="0,1,2,3,4")
    ap.add_argument("--radius", default="0.03")
    ap.add_argument("--methods", default="quant8,quant4,coreset50,refit50")
    ap.add_argument("--max-boxes", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--attack", type=float, default=5.0, help="seconds of the falsifier (PGD) per case")
    ap.add_argument("--before", action="store_true", help="also certify without the phase search (same run)")
    ap.add_argument("--exact", type=float, default=0.0, help="MILP seconds per output row (quantisation; 0: off)")
    args = ap.parse_args()
    f = load_onnx(MODEL)
    x0 = np.random.default_rng(0).uniform(0, 1, (1000, f.n_inputs)).astype(np.float32)
    run_onnx(str(MODEL), x0[:10])  # warm-up
    t0 = time.perf_counter()
    run_onnx(str(MODEL), x0)
    base = time.perf_counter() - t0
    print(f"baseline: one onnxruntime pass of 1000 points {base * 1e3:.1f} ms")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prop in args.props.split(","):
            X = load_input_set(str(MNIST / "vnnlib" / f"prop_{prop}_{args.radius}.vnnlib"), f.n_inputs)
            for method in args.methods.split(","):
                path = Path(tmp) / f"{method}_{prop}.onnx"
                t0 = time.perf_counter()
                g, chain = build(method, f, X, path)
                res = certify(f, g, X, "linf", chain, timeout=args.timeout, max_boxes=args.max_boxes)
                dt = time.perf_counter() - t0
                if args.before:
                    nodes, certify_mod.PHASE_NODES = certify_mod.PHASE_NODES, 0
                    old = certify(f, g, X, "linf", chain, timeout=args.timeout, max_boxes=args.max_boxes).epsilon
                    certify_mod.PHASE_NODES = nodes
                    print(f"prop_{prop} {method}: before (no phase search) certified {old:.4g}, now {res.epsilon:.4g} "
                          f"({res.backend}, {res.evidence.get('regions', [{}])[0].get('boxes', '-')} sub-problems); "
                          f"search attained (float64) {res.evidence.get('attained', float('nan')):.4g}", flush=True)
                seen = sampled_error(MODEL, path, X, "linf", n=2000, seed=3)
                att = max(seen, falsified_lower_bound(MODEL, path, f, g, X, "linf", args.attack, 0)[0] or 0.0)
                ex = exact(f, g, X, path, args.exact) if args.exact > 0 and method.startswith("quant") else None
                att = max(att, ex[1]) if ex else att
                rows.append((method, prop, res.epsilon, seen, dt / base, g.n_hidden, att, ex))
                print(f"prop_{prop} {method}: hidden {g.n_hidden}, certified {res.epsilon:.4g}, sampled {seen:.4g}, "
                      f"attained {att:.4g}, ratio {res.epsilon / max(seen, 1e-300):.1f} / "
                      f"{res.epsilon / max(att, 1e-300):.1f}, time {dt / base:.0f}x ort pass", flush=True)
    print("\n| method | hidden | median certified | median sampled | median certified/sampled | median attained | "
          "median certified/attained | median time / ort pass |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        mine = [r for r in rows if r[0] == method]
        print(f"| {method} | {mine[0][5]} | {statistics.median(r[2] for r in mine):.3g} | "
              f"{statistics.median(r[3] for r in mine):.3g} | {statistics.median(r[2] / r[3] for r in mine):.1f} | "
              f"{statistics.median(r[6] for r in mine):.3g} | {statistics.median(r[2] / r[6] for r in mine):.1f} | "
              f"{statistics.median(r[4] for r in mine):.0f} |")
    if any(r[7] for r in rows):
        print("\n| method | prop | certified | sampled | exact max in [best, dual] | certified / sampled | "
              "certified / exact best | certified / exact dual |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r[7]:
                best, _, dual = r[7]
                print(f"| {r[0]} | {r[1]} | {r[2]:.4g} | {r[3]:.4g} | [{best:.4g}, {dual:.4g}] | {r[2] / r[3]:.1f} | "
                      f"{r[2] / best:.2f} | {r[2] / dual:.2f} |")


if __name__ == "__main__":
    main()
