"""SDP bound benchmark (DESIGN.md §5): tightness against the exact maximum and scaling.

Tightness: the paper's test shape (Li, Drummond, Duncan, arXiv 2012.00138): 1-2 inputs, four
hidden ReLU layers of 10, random weights; g = f pruned 20 % (magnitude) or rounded to 3 bits.
Baseline measured in the same run: the exact maximum ``max_x |f(x) - g(x)|`` on [-1, 1]^n by a
big-M MILP (scipy HiGHS, tests/milp_reference.py); figures are ratios upper bound / exact.
Scaling: two hidden layers of width w in each network, w = 10 .. 100; time and ratio against
the falsifier's attained lower bound (the MILP is too slow there); plot bench/sdp_scaling.png.
Each figure is given for the default (input splitting, cheap interval bound per leaf, SDP on
small leaves) and for the same splitting with the SDP switched off (``max_d=0``), so the SDP's
own contribution is visible; ``--unsplit`` adds the single-SDP formulation (previous default).

    python bench/bench_sdp.py [--instances N] [--widths 10,20,50,100] [--timeout S] [--unsplit]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.specs.inputset import Box, InputSet  # noqa: E402
from tests.milp_reference import max_linf_difference  # noqa: E402
from tests.test_sdp import pruned, quantised, random_net  # noqa: E402
from lumpver.verifiers.sdp import SdpOptions, sdp_bound  # noqa: E402


def variants(opts: SdpOptions, unsplit: bool) -> dict[str, SdpOptions]:
    from dataclasses import replace

    out = {"split+sdp": opts, "split only (no SDP)": replace(opts, max_d=0)}
    if unsplit:
        out["single SDP"] = replace(opts, split=False, max_d=10**6)
    return out


def tightness(n: int, timeout: float, vs: dict[str, SdpOptions]) -> list[dict]:
    rows = []
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        n0 = 1 + i % 2
        f = random_net(rng, n0, [10] * 4, 1)
        g = pruned(f, 0.2) if i % 4 < 2 else quantised(f, 3)
        lo, hi = -np.ones(n0), np.ones(n0)
        t0 = time.perf_counter()
        exact, _ = max_linf_difference(f, g, lo, hi)
        t_milp = time.perf_counter() - t0
        for name, opts in vs.items():
            res = sdp_bound(f, g, InputSet([Box(lo, hi)]), "linf", opts, timeout)
            ratio = res.upper_bound / exact if res.certified and exact > 0 else float("nan")
            rows.append({"i": i, "n0": n0, "kind": "prune20" if i % 4 < 2 else "3bit", "variant": name, "exact": exact,
                         "ub": res.upper_bound, "ratio": ratio, "d": res.max_matrix_size, "sdp_s": res.seconds,
                         "solver_s": res.solver_seconds, "milp_s": t_milp, "reason": res.reason})
            print(f"tight {i} [{name}]: n0={n0} {rows[-1]['kind']} exact={exact:.4g} ub={res.upper_bound:.4g} "
                  f"ratio={ratio:.3f} d<={res.max_matrix_size} total={res.seconds:.1f}s solver={res.solver_seconds:.1f}s "
                  f"milp={t_milp:.2f}s {res.reason}", flush=True)
    return rows


def scaling(widths: list[int], timeout: float, vs: dict[str, SdpOptions]) -> list[dict]:
    from lumpver.verifiers.base import Query
    from lumpver.verifiers.falsify import search

    rows = []
    for w in widths:
        rng = np.random.default_rng(w)
        f = random_net(rng, 2, [w, w], 1)
        g = pruned(f, 0.2)
        X = InputSet([Box(-np.ones(2), np.ones(2))])
        t0 = time.perf_counter()
        lb = search(Query(f, X, other=g, epsilon=np.inf, timeout=10)).best_value
        t_f = time.perf_counter() - t0
        for name, opts in vs.items():
            res = sdp_bound(f, g, X, "linf", opts, timeout)
            ratio = res.upper_bound / lb if res.certified and lb > 0 else float("nan")
            rows.append({"w": w, "variant": name, "lb": lb, "ub": res.upper_bound, "ratio": ratio,
                         "d": res.max_matrix_size, "sdp_s": res.seconds, "solver_s": res.solver_seconds,
                         "falsify_s": t_f, "reason": res.reason})
            print(f"scale w={w} [{name}]: d<={res.max_matrix_size} ub={res.upper_bound} lb={lb:.4g} ratio={ratio:.3f} "
                  f"total={res.seconds:.1f}s solver={res.solver_seconds:.1f}s (falsifier {t_f:.1f}s) {res.reason}",
                  flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == name]
        ax[0].plot([r["w"] for r in sel], [r["sdp_s"] for r in sel], "o-", label=name)
        ax[1].plot([r["w"] for r in sel], [r["ratio"] for r in sel], "o-", label=name)
    ax[0].set(xlabel="hidden width (2 layers per network)", ylabel="seconds (bound + re-check inside)", yscale="log")
    ax[1].set(xlabel="hidden width", ylabel="upper bound / falsified lower bound")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--widths", default="10,20,50,100")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--lp", action="store_true", help="LP-tightened bounds (bounds_lp)")
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--unsplit", action="store_true", help="also the single-SDP formulation (slow)")
    a = ap.parse_args()
    vs = variants(SdpOptions(solver=a.solver, bounds_lp=a.lp), a.unsplit)
    rows = tightness(a.instances, a.timeout, vs)
    for name in vs:
        sel = [r for r in rows if r["variant"] == name]
        ratios = [r["ratio"] for r in sel if np.isfinite(r["ratio"])]
        if ratios:
            print(f"TIGHTNESS [{name}] median ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
                  f"max {max(ratios):.3f}) over {len(ratios)}/{len(sel)} certified; median time "
                  f"{statistics.median(r['sdp_s'] for r in sel):.1f}s")
    if a.widths:
        srows = scaling([int(w) for w in a.widths.split(",")], a.timeout, vs)
        plot(srows, ROOT / "bench" / "sdp_scaling.png")


if __name__ == "__main__":
    main()
