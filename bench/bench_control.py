"""lumpver (and NeuralSAT) on low-dimensional control networks with conjunctive output specs (issue 13).

    python bench/bench_control.py --data /tmp/control [--timeout 10] [--neuralsat] [--limit N] [--only vdp]
                                  [--out bench_control.csv]
    python bench/bench_control.py --soundness 240   # conjunctive 5-row specs on random nets vs an exact MILP

Instances: ``instances.csv`` of a folder written by ``bench/gen_control_nets.py`` (proxies of VNN-COMP 2022's
reach_prob_density vdp/robot; data never in the repository). Each instance runs ``lumpver verify -q --timeout T``
in a fresh process (and, with ``--neuralsat``, NeuralSAT from /work/venv-neuralsat, alternating, as
bench/bench_neuralsat.py runs it). Every ``sat`` answer's counterexample is replayed here with onnxruntime on the
ONNX file and checked against the VNN-LIB output constraints (:func:`replay`); a sat that does not replay is
printed as WRONG. Prints per network family the decided counts and summed seconds (the table of
bench_neuralsat.py).
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_neuralsat import Run, run_lumpver, run_neuralsat, table  # noqa: E402
from lumpver.specs.vnnlib import read_vnnlib  # noqa: E402


def counterexample(result: Path) -> np.ndarray | None:
    """The ``X_i`` values of a VNN-COMP result file (None when there are none)."""
    text = result.read_text() if result.exists() else ""
    xs = sorted((int(i), float(v)) for i, v in re.findall(r"\(X_(\d+)\s+([-+0-9.eE]+)\)", text))
    return np.array([v for _, v in xs]) if xs else None


def replay(onnx: Path, prop: Path, x: np.ndarray) -> bool:
    """``x`` lies in the VNN-LIB input set and onnxruntime's output of it satisfies some unsafe disjunct."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    y = sess.run(None, {inp.name: x.astype(np.float32).reshape(1, -1)})[0].reshape(-1).astype(np.float64)
    spec = read_vnnlib(prop)
    inside = any(r.contains(x, tol=0.0) for r in spec.input_set().regions)
    return inside and spec.output_property().is_unsafe(y, tol=0.0)


def run_checked(onnx: Path, prop: Path, timeout: float, tmp: Path) -> Run:
    r = run_lumpver(onnx, prop, timeout, 1, tmp)
    if r.answer == "sat":
        x = counterexample(tmp / "lumpver.txt")
        if x is None or not replay(onnx, prop, x):
            print(f"WRONG: {prop.name}: sat without a replaying counterexample", flush=True)
            r.answer = "wrong"
    return r


def soundness(n_props: int) -> None:
    """tests/test_bab_conjunction.py's cases at scale: random ReLU nets with 2-5 and 12 inputs, reach_prob_density-like
    5-row conjunctions shifted to an exact MILP slack of +-0.005..0.1; every sat/unsat answer must match (sat
    replayed with onnxruntime; unknown, a timeout, is counted), and the row combination's closures are counted."""
    import time

    from lumpver.specs.inputset import InputSet, OutputProperty
    from lumpver.verifiers.base import Query
    from tests.test_bab_conjunction import BAB, cases, ort_forward

    t0, done, joint, verdicts, seed = time.monotonic(), 0, 0, {"violated": 0, "proved": 0, "unknown": 0}, 2000
    while done < n_props:
        for net, box, A, b, reachable in cases(seed, (2, 3, 4, 5, 12)[seed % 5], 4):  # 12: the ReLU-phase search
            prop = OutputProperty([(A, b)])
            v = BAB.check(Query(net, InputSet([box]), prop=prop, timeout=30.0))
            assert v.verdict in ("unknown", "violated" if reachable else "proved"), (seed, v.verdict, v.reason)
            if v.verdict == "violated":
                assert box.contains(v.counterexample) and prop.is_unsafe(ort_forward(net, v.counterexample))
            joint += v.details["stats"].get("joint_closed", 0) if v.details else 0
            verdicts[v.verdict] += 1
            done += 1
        seed += 1
    print(f"{done} conjunctive properties vs the exact MILP, no wrong answer: {verdicts}, {joint} boxes closed by the "
          f"row combination ({time.monotonic() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/control")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--neuralsat", nargs="?", const="/work/venv-neuralsat", default="")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--only", default="", help="substring of the instances' ONNX names")
    ap.add_argument("--out", default="bench_control.csv")
    ap.add_argument("--soundness", type=int, default=0, help="only the MILP soundness suite, this many properties")
    args = ap.parse_args()
    if args.soundness:
        return soundness(args.soundness)
    data = Path(args.data)
    rows = [r for r in csv.reader(open(data / "instances.csv")) if r and args.only in r[0]][: args.limit or None]
    fields = ["class", "onnx", "vnnlib"] + [f"{t}_{k}" for t in ("lumpver", "neuralsat") for k in ("answer", "own", "wall")]
    done = []
    with open(args.out, "w", newline="") as f, tempfile.TemporaryDirectory() as tmp:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for net, spec, _ in rows:
            onnx, prop = data / net, data / spec
            a = run_checked(onnx, prop, args.timeout, Path(tmp))
            b = (run_neuralsat(Path(args.neuralsat), onnx, prop, args.timeout, Path(tmp)) if args.neuralsat
                 else Run("skipped", float("nan"), 0.0))
            row = {"class": net.split("_")[0], "onnx": net, "vnnlib": spec,
                   **{f"lumpver_{k}": v for k, v in vars(a).items()}, **{f"neuralsat_{k}": v for k, v in vars(b).items()}}
            w.writerow(row)
            f.flush()
            done.append(row)
            print(f"{spec}: lumpver {a.answer} {a.own:.1f} s, NeuralSAT {b.answer} {b.own:.1f} s", flush=True)
    print(table(done, args.timeout))


if __name__ == "__main__":
    main()
