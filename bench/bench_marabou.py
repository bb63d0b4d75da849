"""Benchmark: Marabou alone vs on-set reduction + Marabou on ACAS Xu (DESIGN.md §3, §5).

For each selected instance of ``instances.csv`` (network, VNN-LIB property), in the same run
and with the same per-instance timeout:

* baseline: the ``marabou`` back-end on the original network;
* reduced: ``lumpver.reductions.onset.reduce_on_set`` on the property's input set (time included), then
  the ``marabou`` back-end on the reduced network (counterexamples replayed with onnxruntime
  on the *original* ONNX file).

Prints per-instance verdicts and times, solved counts, disagreements (proved vs violated) and
the ratio of total times (reduced pipeline / baseline). Verdicts: proved = unsat, violated = sat.

Usage: python bench/bench_marabou.py [--timeout S] [--every K] [--props 1,2,3] [--limit N]
Default: every 9th instance (21 of 186), 15 s timeout — about 10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.specs.inputset import InputSet  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402
from lumpver.specs.vnnlib import read_vnnlib  # noqa: E402
from lumpver.verifiers.base import Query, get_backend  # noqa: E402

ACAS = ROOT / ".." / "shared" / "data" / "acasxu"


def verify(net, spec, timeout: float, onnx_path: Path) -> tuple[str, float]:
    """Aggregate verdict over the spec's cases (violated if any, proved if all) and seconds."""
    backend = get_backend("marabou")
    t0 = time.perf_counter()
    verdicts = []
    for case in spec.cases:
        left = timeout - (time.perf_counter() - t0)
        v = backend.check(Query(net, InputSet([case.region]), prop=case.unsafe, timeout=max(left, 0.0)))
        if v.verdict == "violated":
            y = run_onnx(onnx_path, v.counterexample)[0]
            verdicts.append("violated" if case.unsafe.is_unsafe(y) else "unknown")
            if verdicts[-1] == "violated":
                break
        else:
            verdicts.append(v.verdict)
            if v.verdict == "unknown":
                break
    secs = time.perf_counter() - t0
    if "violated" in verdicts:
        return "violated", secs
    return ("proved" if verdicts and all(x == "proved" for x in verdicts) and len(verdicts) == len(spec.cases)
            else "unknown"), secs


def reduce(net, spec):
    from lumpver.reductions.onset import reduce_on_set

    t0 = time.perf_counter()
    res = reduce_on_set(net, InputSet([c.region for c in spec.cases]))
    return res.reduced, time.perf_counter() - t0, res.discrepancy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=15.0)
    ap.add_argument("--every", type=int, default=9, help="take every K-th instance of instances.csv")
    ap.add_argument("--props", default="", help="comma-separated property numbers to keep (default all)")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    rows = [r for r in csv.reader(open(ACAS / "instances.csv")) if r]
    if args.props:
        keep = {f"vnnlib/prop_{p}.vnnlib" for p in args.props.split(",")}
        rows = [r for r in rows if r[1] in keep]
    rows = rows[:: max(1, args.every)]
    if args.limit:
        rows = rows[: args.limit]
    try:
        import lumpver.reductions.onset  # noqa: F401
        have_onset = True
    except ImportError:
        have_onset = False
    print(f"{len(rows)} instances, timeout {args.timeout:g} s, on-set reduction {'on' if have_onset else 'unavailable'}")
    print(f"{'instance':44s} {'base':>9s} {'t_base':>7s} {'red':>9s} {'t_red':>7s} {'t_marab':>7s} {'kept':>7s} {'discrep':>8s}")
    tot_b = tot_r = 0.0
    solved_b = solved_r = 0
    disagreements = []
    for onnx_rel, vnn_rel, _ in rows:
        path = ACAS / onnx_rel
        net = load_onnx(path)
        spec = read_vnnlib(ACAS / vnn_rel, net.n_inputs, net.n_outputs)
        vb, tb = verify(net, spec, args.timeout, path)
        name = f"{Path(onnx_rel).stem.replace('ACASXU_run2a_', '').replace('_batch_2000', '')} {Path(vnn_rel).stem}"
        if have_onset:
            g, t_red, disc = reduce(net, spec)
            vr, tm = verify(g, spec, args.timeout, path)  # counterexamples replayed on the original file
            kept = f"{g.n_hidden}/{net.n_hidden}"
        else:
            vr, tm, t_red, disc, kept = "n/a", 0.0, 0.0, float("nan"), "-"
        tr = t_red + tm
        tot_b += tb
        tot_r += tr
        solved_b += vb != "unknown"
        solved_r += vr in ("proved", "violated")
        if {vb, vr} == {"proved", "violated"}:
            disagreements.append(name)
        print(f"{name:44s} {vb:>9s} {tb:7.2f} {vr:>9s} {tr:7.2f} {tm:7.2f} {kept:>7s} {disc:8.1e}", flush=True)
    print(f"solved: baseline {solved_b}/{len(rows)}, reduced+marabou {solved_r}/{len(rows)}")
    print(f"total seconds: baseline {tot_b:.1f}, reduced+marabou {tot_r:.1f}, ratio {tot_r / max(tot_b, 1e-9):.3f}")
    print(f"disagreements (proved vs violated): {disagreements or 'none'}")


if __name__ == "__main__":
    main()
