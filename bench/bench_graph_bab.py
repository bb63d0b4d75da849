"""Benchmark of branch and bound over ReLU phases on graph networks (issues 12, 13; DESIGN.md §10, §11).

    python bench/bench_graph_bab.py resnet [--channels 8] [--blocks 2] [--eps 1] [--timeout 90] [--props 6]
    python bench/bench_graph_bab.py milp [--pairs 30] [--timeout 5] [--input-split]

``resnet``: a ResNet-like random CNN on CIFAR-size inputs (3x32x32; :func:`lumpver.ir.planted_resnet.random_resnet`),
properties ``y_j - y_top >= t`` on an L-inf ball of radius ``eps/255`` around a random image, with ``t``
between the best value a PGD attack reaches (``lb``, attained) and the root CROWN bound (``ub``):
``t = lb + f (ub - lb)``; ``bab`` with input splitting only (before: ``input_split_dims`` huge) and
with ReLU splitting (after, the default), same timeout; prints answers and seconds.

``milp``: soundness on many small graph nets (residual conv / dense, concat, max pool) against the
exact optimum of the big-M MILP of tests/milp_graph.py, 9 thresholds per net 0.3-30 % from it;
prints decided counts per kind and asserts no wrong answer.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.bounds.graph_engine import graph_objective_bounds, prepare_graph, propagate_graph  # noqa: E402
from lumpver.ir.planted_resnet import random_resnet  # noqa: E402
from lumpver.progress import Progress  # noqa: E402
from lumpver.specs.inputset import Box, InputSet, OutputProperty  # noqa: E402
from lumpver.verifiers.bab import BabBackend, BabOptions  # noqa: E402
from lumpver.verifiers.base import Query  # noqa: E402


def pgd_max(g, c: np.ndarray, box: Box, rng, starts: int = 8, steps: int = 60) -> float:
    """Largest ``c . y`` a projected-gradient ascent reaches in the box (attained: a lower bound of the max)."""
    x = rng.uniform(box.lower, box.upper, size=(starts, box.lower.size))
    step = 0.25 * (box.upper - box.lower)
    best = -np.inf
    for k in range(steps):
        y, vjp = g.forward_vjp(x)
        best = max(best, float(np.max(y @ c)))
        x = np.clip(x + step * np.sign(vjp(np.tile(c, (len(x), 1)))) * (1 - k / steps), box.lower, box.upper)
    return max(best, float(np.max(g.forward(x) @ c)))


def resnet(args) -> None:
    g = random_resnet((3, 32, 32), args.channels, args.blocks, 2, 32, 10, args.seed)
    rng = np.random.default_rng(args.seed)
    x0 = rng.uniform(0.1, 0.9, g.n_inputs)
    top = int(np.argmax(g.forward(x0)[0]))
    box = Box(np.clip(x0 - args.eps / 255, 0, 1), np.clip(x0 + args.eps / 255, 0, 1))
    pg = prepare_graph(g)
    t = time.time()
    gb = propagate_graph(pg, box)
    print(f"net: {g.n_features} values, root CROWN {time.time() - t:.1f} s, {gb.n_unstable()} unstable ReLUs", flush=True)
    lam = np.delete(np.eye(10) - np.eye(10)[top], top, axis=0)
    ub = graph_objective_bounds(pg, gb, lam, box)[1]
    classes = [j for j in np.argsort(-ub)][: max(1, args.props // 3)]
    rows = []
    for j in classes:
        c = lam[j]
        lb = pgd_max(g, c, box, rng)
        for f in (0.02, 0.15, 0.4)[: args.props]:
            thr = lb + f * (ub[j] - lb)
            prop = OutputProperty([(-c[None], np.array([-thr]))])
            res = []
            for dims in (10**7, 10):
                q = Query(g, InputSet([box]), prop=prop, timeout=args.timeout)
                t = time.time()
                v = BabBackend(BabOptions(input_split_dims=dims, progress=Progress(quiet=args.quiet))).check(q)
                res.append((v.verdict, time.time() - t, v.details.get("stats", {})))
            rows.append((j, f, lb, ub[j], thr, res))
            print(f"class {j} f={f:.2f} lb={lb:.4f} ub={ub[j]:.4f} t={thr:.4f}: input split {res[0][0]} "
                  f"{res[0][1]:.1f} s | ReLU split {res[1][0]} {res[1][1]:.1f} s ({res[1][2].get('bounded')} "
                  f"sub-problems)", flush=True)
    for name, k in (("input splitting (before)", 0), ("ReLU splitting (after)", 1)):
        dec = [r for r in rows if r[5][k][0] != "unknown"]
        print(f"{name}: {len(dec)}/{len(rows)} decided, {sum(r[5][k][1] for r in rows):.0f} s total")


def milp(args) -> None:
    from tests.test_bab_graph_relu import C, NETS, RELATIVE, _box, _options, _query
    from tests.milp_graph import graph_milp_max

    wrong = 0
    for name, (make, radius) in NETS.items():
        counts = {"proved": 0, "violated": 0, "unknown": 0}
        for seed in range(args.pairs // len(NETS)):
            g = make(10 + seed)
            box = _box(g, 10 + seed, radius)
            best, _ = graph_milp_max(g, C, box)
            for rel in RELATIVE:
                opts = _options(input_split_dims=10**7) if args.input_split else _options()
                v = BabBackend(opts).check(_query(g, box, best + rel * (1 + abs(best)), args.timeout))
                counts[v.verdict] += 1
                wrong += (v.verdict == "proved" and rel < 0) or (v.verdict == "violated" and rel > 0)
        print(f"{name}: {counts}", flush=True)
    print(f"wrong answers: {wrong}")
    assert wrong == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resnet")
    r.add_argument("--channels", type=int, default=8)
    r.add_argument("--blocks", type=int, default=2)
    r.add_argument("--eps", type=float, default=1.0)
    r.add_argument("--timeout", type=float, default=90.0)
    r.add_argument("--props", type=int, default=6)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quiet", action="store_true")
    m = sub.add_parser("milp")
    m.add_argument("--pairs", type=int, default=30)
    m.add_argument("--timeout", type=float, default=5.0)
    m.add_argument("--input-split", action="store_true", help="input splitting only (the search before ReLU splitting)")
    args = ap.parse_args()
    resnet(args) if args.cmd == "resnet" else milp(args)


if __name__ == "__main__":
    main()
