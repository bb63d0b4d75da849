"""Benchmark of the SMT back-end (issue 4): ACAS Xu properties, ours vs Marabou in the same run,
and equivalence against float16-rounded copies, ours vs a naive all-``ite`` z3 encoding.

    python bench/bench_smt_acasxu.py [--props 1,2] [--nets 1_1,1_2,...] [--timeout 30]
                                     [--equiv 3] [--no-marabou] [--reduce]

Prints per-instance verdicts and times, solved counts, disagreements (must be none) and totals
as ratios against the baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACAS = ROOT / ".." / "shared" / "data" / "acasxu"
DEFAULT_NETS = "1_1,1_2,1_3,2_1,3_3,4_5"


def instances(props: list[str], nets: list[str]) -> list[tuple[Path, Path]]:
    out = []
    with open(ACAS / "instances.csv") as f:
        for onnx, vnnlib, _ in csv.reader(f):
            net = onnx.split("run2a_")[1].split("_batch")[0]
            prop = vnnlib.split("prop_")[1].split(".")[0]
            if prop in props and (net in nets or "all" in nets):
                out.append((ACAS / onnx, ACAS / vnnlib))
    return out


NOTES: dict = {}


def run_verify(model, prop, backend, timeout, reduce=False):
    from lumpver.api.verify import verify_property

    t = time.perf_counter()
    r = verify_property(model, prop, backend=backend, reduce=reduce, timeout=timeout)
    if reduce:  # where the reduced pipeline's time went (lumpver.api.reduce_verify)
        NOTES[(Path(model).name, Path(prop).name)] = [
            {k: c.get(k) for k in ("verdict", "backend", "open_leaves", "closed_by_bounds", "seconds_split_reduce_backend")}
            | {"leaves": len(c.get("reduced_to", [])), "mean_kept": round(float(np.mean(c["reduced_to"])), 1) if c.get("reduced_to") else None}
            for c in r.cases]
    return r.result, time.perf_counter() - t


def solved(r: str) -> bool:
    return r in ("sat", "unsat")


def bench_properties(args) -> list[str]:
    rows, lines = [], []
    configs = [("smt", "smt", False)]
    if not args.no_marabou:
        configs.append(("marabou", "marabou", False))
        if args.reduce:
            configs.append(("reduce+marabou", "marabou", True))
    for model, prop in instances(args.props.split(","), args.nets.split(",")):
        res = {name: run_verify(model, prop, be, args.timeout, red) for name, be, red in configs}
        rows.append((model.name, prop.name, res))
        print(model.name, prop.name, {k: (v[0], round(v[1], 2)) for k, v in res.items()},
              NOTES.get((model.name, prop.name), ""), flush=True)
    names = [c[0] for c in configs]
    lines.append("| instance | " + " | ".join(f"{n} result | {n} s" for n in names) + " |")
    lines.append("|---|" + "---|---|" * len(names))
    for m, p, res in rows:
        lines.append(f"| {m.replace('ACASXU_run2a_', '').replace('_batch_2000.onnx', '')} {p.replace('.vnnlib', '')} | "
                     + " | ".join(f"{res[n][0]} | {res[n][1]:.2f}" for n in names) + " |")
    dis = [(m, p) for m, p, res in rows if len({res[n][0] for n in names if solved(res[n][0])}) > 1]
    lines.append("")
    for n in names:
        lines.append(f"- {n}: solved {sum(solved(r[2][n][0]) for r in rows)}/{len(rows)}, total {sum(r[2][n][1] for r in rows):.1f} s")
    if "marabou" in names:
        tot = {n: sum(r[2][n][1] for r in rows) for n in names}
        lines.append(f"- total time ratio smt / marabou: {tot['smt'] / max(tot['marabou'], 1e-9):.2f}")
        if "reduce+marabou" in names:
            lines.append(f"- total time ratio reduce+marabou / marabou: {tot['reduce+marabou'] / max(tot['marabou'], 1e-9):.2f}")
    if len(rows) > 1 and "marabou" in names:
        both = [r for r in rows if all(solved(r[2][n][0]) for n in names)]
        lines.append(f"- on the {len(both)} instances every configuration solved: "
                     + ", ".join(f"{n} {sum(r[2][n][1] for r in both):.1f} s" for n in names))
    lines.append(f"- disagreements: {len(dis)} {dis if dis else ''}")
    return lines


def bench_equivalence(args) -> list[str]:
    from lumpver.specs.inputset import InputSet
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib
    from lumpver.verifiers.base import Query
    from lumpver.verifiers.smt import SmtBackend, SmtOptions

    region = read_vnnlib(ACAS / "vnnlib" / "prop_1.vnnlib").cases[0].region
    lines = ["| network | ours | ours s | naive all-ite | naive s | boxes | z3 calls |", "|---|---|---|---|---|---|---|"]
    tot_ours = tot_naive = 0.0
    for net_id in args.nets.split(",")[: args.equiv]:
        f = load_onnx(ACAS / "onnx" / f"ACASXU_run2a_{net_id}_batch_2000.onnx")
        g = f.copy()
        for layer in g.layers:
            layer.weight = layer.weight.astype(np.float16).astype(np.float64)
            layer.bias = layer.bias.astype(np.float16).astype(np.float64)
        q = Query(f, InputSet([region]), other=g, epsilon=0.05, norm="linf", timeout=args.timeout)
        a = SmtBackend().check(q)
        b = SmtBackend(SmtOptions(naive=True, call_timeout=args.timeout)).check(q)
        tot_ours += a.seconds
        tot_naive += b.seconds
        st = a.details.get("stats", {})
        lines.append(f"| {net_id} | {a.verdict} | {a.seconds:.2f} | {b.verdict} | {b.seconds:.2f} | {st.get('boxes')} | {st.get('z3', {}).get('calls')} |")
        print(lines[-1], flush=True)
        assert not {a.verdict, b.verdict} == {"proved", "violated"}, "disagreement"
    lines.append(f"- total time ratio naive / ours: {tot_naive / max(tot_ours, 1e-9):.2f} (naive unknown = timeout at {args.timeout:g} s, a lower bound on its time)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--props", default="1,2")
    ap.add_argument("--nets", default=DEFAULT_NETS, help="comma-separated ids like 1_1, or 'all'")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--equiv", type=int, default=3, help="networks for the float16 equivalence part (0 = skip)")
    ap.add_argument("--no-marabou", action="store_true")
    ap.add_argument("--reduce", action="store_true", help="also --reduce + Marabou (lumpver.reductions.onset)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory():
        lines = ["### ACAS Xu properties"] + bench_properties(args)
        if args.equiv:
            lines += ["", "### ACAS Xu vs float16-rounded copy, linf epsilon 0.05 on the prop_1 box"] + bench_equivalence(args)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
