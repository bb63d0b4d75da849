"""Benchmark of `lumpver batch` on an ACAS Xu subset: parallel speed-up and on-set reduction.

Baseline measured in the same run: jobs=1 without --reduce. Prints wall-clock ratios against it,
solved counts (they must agree: no instance may change answer between configurations) and the
hidden neurons before/after reduction.

    python3 bench/bench_batch.py [--nets 1_1,1_2,1_3] [--props 3,4] [--timeout 30]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACAS = ROOT.parent / "shared" / "data" / "acasxu"


def suite_arguments(nets: str) -> argparse.ArgumentParser:
    """The suite's options: ``--nets`` (default ``nets``), ``--props``, ``--timeout``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default=nets)
    ap.add_argument("--props", default="3,4")
    ap.add_argument("--timeout", type=float, default=30.0)
    return ap


def acas_suite(a: argparse.Namespace) -> tuple[Path, list[str]]:
    """``instances.csv`` (in a new temporary folder) of every net in ``a.nets`` on every property in ``a.props``."""
    tmp = Path(tempfile.mkdtemp())
    rows = [f"{ACAS / 'onnx' / f'ACASXU_run2a_{n}_batch_2000.onnx'},{ACAS / 'vnnlib' / f'prop_{p}.vnnlib'},{a.timeout}"
            for p in a.props.split(",") for n in a.nets.split(",")]
    (tmp / "instances.csv").write_text("\n".join(rows) + "\n")
    return tmp, rows


def main() -> int:
    from lumpver.api.batch import run_batch

    a = suite_arguments("1_1,1_2,1_3").parse_args()
    tmp, rows = acas_suite(a)
    configs = [("jobs=1", 1, False), ("jobs=1 --reduce", 1, True), ("jobs=2 --reduce", 2, True)]
    results = {}
    for name, jobs, reduce in configs:
        results[name] = run_batch(tmp / "instances.csv", tmp / name.replace(" ", "_"), jobs, reduce=reduce)
    base = results["jobs=1"].wall_seconds
    print(f"{len(rows)} instances (nets {a.nets}, props {a.props}, timeout {a.timeout:g} s)")
    answers = None
    for name, res in results.items():
        got = [o.result for o in res.outcomes]
        answers = answers or got
        decided = sum(r in ("sat", "unsat") for r in got)
        clash = sum(1 for x, y in zip(answers, got) if {x, y} == {"sat", "unsat"})
        after = [o.neurons_after for o in res.outcomes if o.neurons_after is not None]
        size = f"; hidden neurons 300 -> mean {sum(after) / len(after):.0f}" if after else ""
        print(f"{name:18s} wall {res.wall_seconds:7.1f} s  ratio {res.wall_seconds / base:5.2f}  decided {decided}/{len(got)}"
              f"  sat/unsat clashes with baseline {clash}{size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
