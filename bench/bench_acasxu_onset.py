"""Benchmark: on-set exact reduction of ACAS Xu on every instance of instances.csv (DESIGN.md §3).

For each (network, property) instance: hidden neurons kept by ``reduce_on_set`` on the
property's input set (a union of boxes for prop_6), its time, and as the baseline measured
in the same run the time of one onnxruntime evaluation of a 1000-point batch on the same
model. Prints per-property medians, the overall median, and saves a histogram of the kept
fraction to bench/acasxu_onset_kept.png.

Usage: python bench/bench_acasxu_onset.py [--max-leaves N] [--lp] [--limit N] [--plot PATH]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.reductions.onset import reduce_on_set  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402
from lumpver.specs.vnnlib import read_vnnlib  # noqa: E402

ACAS = ROOT / ".." / "shared" / "data" / "acasxu"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-leaves", type=int, default=32)
    ap.add_argument("--lp", action="store_true")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--plot", default=str(ROOT / "bench" / "acasxu_onset_kept.png"))
    args = ap.parse_args()
    rows = list(csv.reader(open(ACAS / "instances.csv")))
    if args.limit:
        rows = rows[: args.limit]
    results = []
    rng = np.random.default_rng(0)
    for onnx_rel, vnn_rel, _ in rows:
        path = ACAS / onnx_rel
        net = load_onnx(path)
        iset = read_vnnlib(ACAS / vnn_rel).input_set()
        x = rng.uniform(-0.5, 0.5, size=(1000, net.n_inputs))
        run_onnx(path, x[:1])  # session warm-up
        t = time.perf_counter()
        run_onnx(path, x)
        t_base = time.perf_counter() - t
        t = time.perf_counter()
        res = reduce_on_set(net, iset, lp=args.lp, max_leaves=args.max_leaves)
        t_red = time.perf_counter() - t
        kept = res.reduced.n_hidden / net.n_hidden
        prop = Path(vnn_rel).stem
        results.append((prop, kept, t_red, t_base, res.discrepancy))
        print(f"{Path(onnx_rel).stem:32s} {prop:8s} kept {res.reduced.n_hidden:3d}/{net.n_hidden} ({kept:5.1%}) "
              f"{t_red:6.2f}s = {t_red / t_base:7.0f}x ort-batch  disc {res.discrepancy:.1e}", flush=True)
    summarize(results, args)


def summarize(results, args) -> None:
    props = sorted({r[0] for r in results}, key=lambda p: int(p.split("_")[1]))
    print(f"\nsettings: max_leaves={args.max_leaves} lp={args.lp}  instances={len(results)}")
    print("property  n  median-kept  min   max   median-s  median(time/ort-batch)")
    for p in props:
        rs = [r for r in results if r[0] == p]
        ks = [r[1] for r in rs]
        print(f"{p:8s} {len(rs):3d}  {statistics.median(ks):6.1%}   {min(ks):5.1%} {max(ks):5.1%}  "
              f"{statistics.median(r[2] for r in rs):6.2f}  {statistics.median(r[2] / r[3] for r in rs):8.0f}x")
    ks = [r[1] for r in results]
    print(f"ALL      {len(ks):3d}  {statistics.median(ks):6.1%}   {min(ks):5.1%} {max(ks):5.1%}  "
          f"{statistics.median(r[2] for r in results):6.2f}  {statistics.median(r[2] / r[3] for r in results):8.0f}x")
    print(f"max certified discrepancy: {max(r[4] for r in results):.2e}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    data = [[100 * r[1] for r in results if r[0] == p] for p in props]
    ax.hist(data, bins=np.linspace(0, 100, 41), stacked=True, label=props)
    ax.axvline(100 * statistics.median(ks), color="k", ls="--", label="median (all)")
    ax.set_xlabel("hidden neurons kept (%)")
    ax.set_ylabel("instances")
    ax.set_title(f"ACAS Xu on-set reduction ({len(results)} instances, max_leaves={args.max_leaves})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
