"""Benchmark: certified approximate reduction of ACAS Xu on the prop_3 box (DESIGN.md §4, issue 6).

For each network and epsilon: hidden neurons kept by :func:`lumpver.reductions.approx.reduce_approx`
(certified L-inf error <= epsilon on the box, real arithmetic of the stored float32 weights),
the certified and sampled errors (sampled = largest |f - g| seen on 20,000 points of the box),
and the time as a ratio to the exact on-set reduction of the same network measured in the same
run (epsilon 0 = the on-set point). Saves the curve to bench/approx_acasxu.png.

Usage: python bench/bench_approx_acasxu.py [--nets 1_1,2_3,...] [--eps 0.001,...] [--timeout S] [--no-fit]
       [--exchange] [--gradual] [--phase-lps N] [--goal-fraction F] [--json PATH] [--certificates DIR] [--workers N]
       (--goal-fraction: first size tried when the phase stage is on, approx.GOAL_FRACTION; --exchange: candidates
       by the exchange (minimax) refit of lumpver.reductions.approx_minimax, opt-in; --gradual: by the gradual pruning with
       joint minimax refits of lumpver.reductions.approx_shrink, opt-in; --phase-lps: ReLU-phase LPs per
       certification, default: certify.phase_budget(timeout)'s (PhaseBudget.lps); --json also
       records every trial; --certificates: write each reduced model and its bounded certificate there, for
       `lumpver check`; --workers: processes of each certification's phase stage, PhaseBudget.workers; the CPU
       seconds printed include the reaped worker processes)
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.commands.argtypes import positive_int  # noqa: E402
from lumpver.reductions import approx  # noqa: E402
from lumpver.reductions.approx import reduce_approx  # noqa: E402
from lumpver.reductions.approx_fit import FitOptions  # noqa: E402
from lumpver.reductions.approx_minimax import ExchangeOptions  # noqa: E402
from lumpver.reductions.approx_shrink import ShrinkOptions  # noqa: E402
from lumpver.reductions import certify  # noqa: E402
from lumpver.reductions.certify import sample_points, write_bounded  # noqa: E402
from lumpver.ir.onnx_export import save_onnx  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402
from lumpver.progress import Progress  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.reductions.onset import reduce_on_set  # noqa: E402

ACAS = ROOT / ".." / "shared" / "data" / "acasxu"
GOAL_EPS = 0.01


def cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the phase stage's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_net(name: str, eps_list: list[float], timeout: float, max_boxes: int, fit: bool = True,
            exchange: bool = False, cert_dir: str = "", gradual: bool = False,
            phase: Optional[certify.PhaseBudget] = None) -> list[dict]:
    model = ACAS / "onnx" / f"ACASXU_run2a_{name}_batch_2000.onnx"
    f = load_onnx(model)
    X = load_input_set(str(ACAS / "vnnlib" / "prop_3.vnnlib"), f.n_inputs)
    t0 = time.perf_counter()
    on = reduce_on_set(f, X)
    t_on = time.perf_counter() - t0
    rows = [{"net": name, "epsilon": 0.0, "hidden": on.reduced.n_hidden, "certified": on.discrepancy,
             "sampled": None, "seconds": t_on, "ratio": 1.0}]
    pts = sample_points(X, 20000, seed=7)
    yf = f.forward(pts)
    for eps in eps_list:
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            res = reduce_approx(f, X, eps, timeout=timeout, max_boxes=max_boxes, fit=FitOptions() if fit else None,
                                exchange=ExchangeOptions() if exchange else None,
                                gradual=ShrinkOptions() if gradual else None, phase=phase,
                                progress=Progress())
        except ValueError as e:
            print(f"{name} eps {eps}: {e}", flush=True)
            continue
        dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        if cert_dir:
            out = Path(cert_dir) / f"{name}_eps{eps:g}.onnx"
            save_onnx(res.reduced, out)
            write_bounded(model, out, out.with_suffix(".cert.json"), f, load_onnx(out), X, res.certified,
                          {"method": "approximate-lumping", "search": res.method, "trials": res.trials}, dt)
        seen = float(np.max(np.abs(yf - res.reduced.forward(pts))))
        rows.append({"net": name, "epsilon": eps, "hidden": res.reduced.n_hidden, "certified": res.certified.epsilon,
                     "sampled": seen, "seconds": dt, "cpu_seconds": cpu, "ratio": dt / t_on, "widths": res.reduced.hidden_widths,
                     "method": res.method, "trials": res.trials})
        print(f"{name} eps {eps:g}: {f.n_hidden} -> on-set {on.reduced.n_hidden} -> {res.reduced.n_hidden} "
              f"certified {res.certified.epsilon:.3g} sampled {seen:.3g} {dt:.1f}s ({cpu:.0f} CPU s) = {dt / t_on:.0f}x on-set",
              flush=True)
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    zero = min(r["epsilon"] for r in rows if r["epsilon"] > 0) / 3
    for name in sorted({r["net"] for r in rows}):
        pts = sorted((r["epsilon"] or zero, r["hidden"]) for r in rows if r["net"] == name)
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.axvline(GOAL_EPS, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"certified L-inf epsilon (leftmost point = exact on-set, plotted at {zero:.1g})")
    ax.set_ylabel("hidden neurons kept (of 300)")
    ax.set_title("ACAS Xu prop_3 box: certified approximate reduction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default="1_1,2_3,3_5,4_7,5_9")
    ap.add_argument("--eps", default="0.001,0.003,0.01,0.03,0.1")
    ap.add_argument("--timeout", type=float, default=150.0)
    ap.add_argument("--max-boxes", type=int, default=600)
    ap.add_argument("--plot", default=str(ROOT / "bench" / "approx_acasxu.png"))
    ap.add_argument("--json", default="")
    ap.add_argument("--certificates", default="", help="directory for the reduced models and their certificates")
    ap.add_argument("--no-fit", action="store_true", help="least-squares refits only (no L-BFGS-B fit)")
    ap.add_argument("--exchange", action="store_true", help="exchange (minimax) refits of the candidates")
    ap.add_argument("--gradual", action="store_true", help="gradual pruning with joint minimax refits")
    ap.add_argument("--phase-lps", type=int, default=None,
                    help="ReLU-phase LPs per certification (PhaseBudget.lps; default: certify.phase_budget)")
    ap.add_argument("--goal-fraction", type=float, default=None,
                    help="first size tried with the phase stage on, a fraction of h's size (approx.GOAL_FRACTION)")
    ap.add_argument("--workers", type=positive_int, default=1,
                    help="processes of each certification's phase stage (PhaseBudget.workers)")
    args = ap.parse_args()
    phase = certify.phase_budget(args.timeout, args.workers)
    if args.goal_fraction is not None:
        approx.GOAL_FRACTION = args.goal_fraction
    if args.phase_lps is not None:
        phase = replace(phase, lps=args.phase_lps)
    eps = [float(e) for e in args.eps.split(",")]
    rows = []
    for name in args.nets.split(","):
        rows += run_net(name, eps, args.timeout, args.max_boxes, not args.no_fit, args.exchange, args.certificates,
                        args.gradual, phase)
    print("\n| net | on-set kept | " + " | ".join(f"eps {e:g}" for e in eps) + " |")
    print("|---|---|" + "---|" * len(eps))
    for name in args.nets.split(","):
        mine = {r["epsilon"]: r for r in rows if r["net"] == name}
        cells = [f"{mine[e]['hidden']} ({mine[e]['ratio']:.0f}x)" if e in mine else "-" for e in eps]
        print(f"| {name} | {mine[0.0]['hidden']} | " + " | ".join(cells) + " |")
    at_goal = [r for r in rows if r["epsilon"] == GOAL_EPS]
    for r in at_goal:
        on = next(q for q in rows if q["net"] == r["net"] and q["epsilon"] == 0.0)
        print(f"{r['net']}: at eps {GOAL_EPS} kept {r['hidden']} = {r['hidden'] / on['hidden']:.0%} of on-set "
              f"{on['hidden']} (goal <= 50%)")
    plot(rows, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
