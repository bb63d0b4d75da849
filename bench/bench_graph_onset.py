"""On-set reduction of a graph network (issue 12 item 3, DESIGN.md §3, §10): the shared VeriVital
Convnet_maxpool (conv -> relu -> max pool -> dense, a graph because of MaxPool) on the box of each of
its 10 VNN-COMP properties, and on their union.

Per input set: conv channels before/after, node channels dropped (conv, relu, pool; in parentheses
those the bounds prove 0 on X, which is what every reader of a dropped channel reads), the time of
the whole reduction (load, bound, select, save, certificate) as a ratio to load + save of the same
model in the same run (the machine is shared and noisy), the time of ``lumpver check``'s checker,
and the largest |f - g| onnxruntime shows on 500 points of the set (the certificate states 0 in
real arithmetic). The exact (every-input) reduction of the same file is listed for contrast.

Usage: nice -n 5 python bench/bench_graph_onset.py [--points 500]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lumpver.api.reduce import apply_pass  # noqa: E402
from lumpver.certificates.format import check_certificate  # noqa: E402
from lumpver.ir.onnx_graph_export import save_graph  # noqa: E402
from lumpver.ir.onnx_import import load_graph  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402
from lumpver.reductions.passes import ExactPass, OnSetPass  # noqa: E402
from lumpver.specs.inputset import InputSet  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnn" / "verivital"
MODEL = DATA / "Convnet_maxpool.onnx"


def _baseline(tmp: Path) -> float:
    t0 = time.perf_counter()
    save_graph(load_graph(MODEL), tmp / "copy.onnx")
    return time.perf_counter() - t0


def _row(name: str, reduction, input_set, tmp: Path, points: int, base: float) -> str:
    out = tmp / f"{name}.onnx"
    t0 = time.perf_counter()
    res = apply_pass(reduction, MODEL, out, tmp / f"{name}.cert.json", input_set)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    holds = check_certificate(res.certificate_path).holds
    check_s = time.perf_counter() - t1
    cert = json.loads(res.certificate_path.read_text())
    st = cert["stats"]
    if input_set is not None:
        rng = np.random.default_rng(0)
        x = np.vstack([rng.uniform(r.lower, r.upper, size=(points // len(input_set.regions), r.lower.size))
                       for r in input_set.regions]).astype(np.float32).reshape(-1, 1, 28, 28)
        gap = float(np.max(np.abs(run_onnx(MODEL, x) - run_onnx(out, x))))
        step = cert["evidence"][0]
        dropped = f"{step['n_removed']} ({step['n_zero_on_set']})"
    else:
        gap, dropped = float("nan"), f"{sum(len(r) for r in cert['evidence'][0]['claim']['dead'])} (dead)"
    return (f"| {name} | {st['channels_before'][0]} -> {st['channels_after'][0]} | {dropped} | {seconds:.2f} "
            f"({seconds / base:.1f}x) | {check_s:.2f} | {'holds' if holds else 'FAILS'} | {gap:.1e} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=500)
    args = ap.parse_args(argv)
    props = sorted((DATA / "specs_maxpool").glob("prop_*.vnnlib"), key=lambda p: int(p.name.split("_")[1]))
    sets = {p.stem: load_input_set(p, 784) for p in props}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = min(_baseline(tmp) for _ in range(3))
        print(f"load + save baseline: {base:.3f} s (best of 3)")
        print("| input set | conv channels | node channels dropped (proved 0 on X) | reduce s (x baseline) "
              "| check s | check | max onnxruntime gap |")
        print("|---|---|---|---|---|---|---|")
        for name, s in sets.items():
            print(_row(name, OnSetPass(), s, tmp, args.points, base), flush=True)
        union = InputSet([r for s in sets.values() for r in s.regions])
        print(_row("union of the 10", OnSetPass(), union, tmp, args.points, base), flush=True)
        print(_row("exact (every input)", ExactPass(), None, tmp, args.points, base), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
