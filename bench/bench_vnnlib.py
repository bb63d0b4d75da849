"""VNN-LIB parse time on synthetic files with millions of atoms, as a ratio to reading the same
file and splitting it on whitespace (``str.split``), both measured in this run.

Two shapes (both >= --atoms atoms):
* ``bounds``: N inputs, each with ``(assert (<= X_i c))`` and ``(assert (>= X_i c))`` at top
  level (the MNIST L-inf shape, scaled up), plus an output disjunction;
* ``disjuncts``: an MNIST-sized box (784 inputs) repeated as K disjuncts of one
  ``(assert (or (and ...) ...))`` with an output atom in each (the VNN-COMP "or of and" shape).

The default reader (bulk fast path, falling back to the exact scanner) and the exact scanner
alone (``parse_vnnlib(..., exact=True)``) are both timed on the same file, and must agree.

Usage: python bench/bench_vnnlib.py [--atoms 2000000] [--repeat 1] [--no-exact]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from lumpver.specs.vnnlib import parse_vnnlib, read_vnnlib  # noqa: E402


def write_bounds(path: Path, atoms: int, rng: np.random.Generator) -> int:
    n = (atoms + 1) // 2
    lo = rng.uniform(-1, 0, n)
    hi = lo + rng.uniform(0, 1, n)
    with open(path, "w") as f:
        f.write("; synthetic: top-level input bounds\n")
        f.writelines(f"(declare-const X_{i} Real)\n" for i in range(n))
        f.writelines(f"(declare-const Y_{j} Real)\n" for j in range(10))
        f.writelines(f"(assert (<= X_{i} {h!r}))\n(assert (>= X_{i} {lo_!r}))\n" for i, (h, lo_) in enumerate(zip(hi.tolist(), lo.tolist())))
        f.write("(assert (or\n" + "".join(f"    (and (>= Y_{j} Y_0))\n" for j in range(1, 10)) + "))\n")
    return 2 * n + 9


def write_disjuncts(path: Path, atoms: int, rng: np.random.Generator) -> int:
    n, k = 784, -(-atoms // (2 * 784 + 1))
    with open(path, "w") as f:
        f.write("; synthetic: a disjunction of MNIST-sized boxes\n")
        f.writelines(f"(declare-const X_{i} Real)\n" for i in range(n))
        f.writelines(f"(declare-const Y_{j} Real)\n" for j in range(10))
        f.write("(assert (or\n")
        for d in range(k):
            lo = rng.uniform(0, 0.5, n)
            hi = lo + 0.05
            body = " ".join(f"(<= X_{i} {hi[i]:.6g}) (>= X_{i} {lo[i]:.6g})" for i in range(n))
            f.write(f"  (and {body} (>= Y_{d % 9 + 1} Y_0))\n")
        f.write("))\n")
    return k * (2 * n + 1)


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def split_file(path: Path) -> None:
    with open(path) as f:
        f.read().split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs of each timing")
    ap.add_argument("--no-exact", action="store_true", help="skip timing the exact scanner")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| shape | atoms | MB | split (s) | parse (s) | parse / split | atoms/s | cases | exact scanner (s) | exact / split |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for shape, writer in (("bounds", write_bounds), ("disjuncts", write_disjuncts)):
            path = Path(tmp) / f"{shape}.vnnlib"
            atoms = writer(path, args.atoms, rng)
            mb = os.path.getsize(path) / 1e6
            t_split = best_of(args.repeat, lambda: split_file(path))
            result = {}
            t_parse = best_of(args.repeat, lambda: result.setdefault("spec", read_vnnlib(path)))
            t_split2 = best_of(args.repeat, lambda: split_file(path))  # load drifts: take the better baseline
            base = min(t_split, t_split2)
            spec = result["spec"]
            exact = "-"
            if not args.no_exact:
                t_exact = best_of(args.repeat, lambda: result.setdefault("exact", parse_vnnlib(path.read_text(), str(path), exact=True)))
                same = len(result["exact"].cases) == len(spec.cases) and all(
                    np.array_equal(a.region.lower, b.region.lower) and np.array_equal(a.region.upper, b.region.upper)
                    for a, b in zip(result["exact"].cases, spec.cases))
                assert same, "fast path and exact scanner disagree"
                exact = f"{t_exact:.2f} | {t_exact / base:.1f}"
            print(f"| {shape} | {atoms:,} | {mb:.0f} | {base:.2f} | {t_parse:.2f} | {t_parse / base:.1f} "
                  f"| {atoms / t_parse:,.0f} | {len(spec.cases)} | {exact} |", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
