"""Benchmark of the branch-and-bound back-end (issue 13, DESIGN.md §11) against published peers.

    python bench/bench_bab.py [--suite acasxu|mnist] [--timeout 30] [--workers 2] [--limit N] [--filter S]
    python bench/bench_bab.py --suite random --limit 600     # soundness: random nets vs an exact MILP

Runs ``verify --backend bab`` on the shared instances (``../shared/data/<suite>/instances.csv``),
one after another, and prints per instance the answer, the seconds and the published answers of
VNN-COMP 2022 peers; then decided counts, wall time and our ``unsat`` answers where a peer
published ``sat`` (to be examined: a peer can be wrong, e.g. cgdtest's ACAS ``sat`` answers that
nnenum and alpha_beta_crown contradict; our ``sat`` answers carry a counterexample replayed with
onnxruntime, so a peer's ``unsat`` there is the peer's error).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data"


def published(suite: str) -> dict[tuple[str, str], dict[str, tuple[str, float]]]:
    out: dict = defaultdict(dict)
    with open(DATA / suite / "published_results_vnncomp2022.csv") as f:
        for row in csv.DictReader(f):
            out[(Path(row["onnx"]).name, Path(row["vnnlib"]).name)][row["tool"]] = (row["result"], float(row["seconds"]))
    return out


def random_suite(n_props: int) -> None:
    """Random ReLU nets, thresholds on ``c . y`` around the exact MILP optimum (tests/test_bab.py's
    cases): every answer must match the MILP; both splitting modes (3 and 12 inputs)."""
    from tests.test_bab import _cases, _check

    t0, done, verdicts = time.monotonic(), 0, defaultdict(int)
    seed = 1000
    while done < n_props:
        n_in = (3, 12, 2)[seed % 3]
        widths = (6, 6, 6) if n_in == 2 else (10, 8)
        for case in _cases(seed, n_in, widths, 5):
            verdicts[_check(*case)] += 1  # asserts agreement with the MILP
            done += 1
        seed += 1
    print(f"{done} random properties, all answers agree with the exact MILP: {dict(verdicts)} "
          f"({time.monotonic() - t0:.0f} s)")


def main() -> None:
    from lumpver.api.verify import verify_property

    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="mnist")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    if args.suite == "random":
        return random_suite(args.limit or 500)
    suite = {"mnist": "mnist_fc"}.get(args.suite, args.suite)
    pub = published(suite)
    rows = list(csv.reader(open(DATA / suite / "instances.csv")))
    rows = [r for r in rows if args.filter in r[0] + r[1]][: args.limit or None]
    decided, wrong, t0 = 0, [], time.monotonic()
    peers_decided: dict[str, int] = defaultdict(int)
    for onnx, vnnlib, *_ in rows:
        r = verify_property(DATA / suite / onnx, DATA / suite / vnnlib, backend="bab", timeout=args.timeout,
                            workers=args.workers)
        key = (Path(onnx).name, Path(vnnlib).name)
        answers = {t: a for t, (a, _) in pub.get(key, {}).items() if a in ("sat", "unsat")}
        for t in answers:
            peers_decided[t] += 1
        if r.result in ("sat", "unsat"):
            decided += 1
            if r.result == "unsat" and "sat" in answers.values():  # our sat answers replay on onnxruntime
                wrong.append(key)
        best = min((s for a, s in pub.get(key, {}).values() if a in ("sat", "unsat")), default=float("nan"))
        print(f"{key[0]} {key[1]}: {r.result} {r.seconds:.1f} s (peers: {sorted(set(answers.values()))}, "
              f"fastest {best:.1f} s)", flush=True)
    wall = time.monotonic() - t0
    print(f"decided {decided}/{len(rows)} in {wall:.0f} s wall (timeout {args.timeout:g} s, workers {args.workers}); "
          f"unsat where a peer says sat: {wrong or 'none'}")
    print("peers decided:", dict(sorted(peers_decided.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
