"""Sigmoid/tanh neurons split at optimised points vs at 0 (GenBaB; issue 13 item 2; DESIGN.md §11).

    python bench/bench_smooth_split.py --data /tmp/deep_smooth [--nets sigmoid_200x6,tanh_200x6] [--timeout 60]
                                       [--props 0,1,...]                       # decided, alternating per instance
    python bench/bench_smooth_split.py --data /tmp/deep_smooth --budget 150    # work budget from one root
    python bench/bench_smooth_split.py --soundness 60                          # 2-input nets, neuron splits only

Decided: per instance of ``instances.csv`` (bench/gen_deep_mnist.py) the search with ``SmoothSplit(points=False)``
(the cut at 0, before) and ``points=True`` (new), alternating, each in a fresh process (``--one``): the answer
(violated only when onnxruntime replays the counterexample), seconds, sub-problems bounded and closed, and the
worst open bound at the end (the largest upper bound of ``b - A y`` left, > 0 open).
Work budget: per instance one root (bounds and both sigmoid/tanh re-bounding passes, as the search does them), then,
for each open disjunct, both policies from that same root until ``--budget`` sub-problems are bounded (batches of 8,
worst first): worst open bound, open count, CPU seconds. Soundness: 2-input sigmoid/tanh properties whose truth a
brute-force grid decides, thresholds close to it (tests/test_smooth_split.py), searched by neuron splits only at
optimised points (``input_split_dims=0``): no answer may contradict the grid.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one(onnx: str, vnnlib: str, points: bool, timeout: float) -> dict:
    """One search (this process): answer, seconds, bounded/closed counts, worst open bound at the end."""
    import lumpver.verifiers.bab as bab
    from lumpver.api.verify import load_model, read_vnnlib, replay_case
    from lumpver.specs.inputset import InputSet
    from lumpver.verifiers.bab_deep import SmoothSplit
    from lumpver.verifiers.base import Query

    seen = {"worst": float("nan")}
    beat = bab._Search._heartbeat

    def record(search, frontier, what):  # the heartbeat, and the worst open bound of every round
        seen["worst"] = frontier.worst_score()
        return beat(search, frontier, what)

    bab._Search._heartbeat = record
    t0 = time.monotonic()
    net = load_model(onnx)
    spec = read_vnnlib(vnnlib, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    out = {"answer": "unsat", "bounded": 0, "closed": 0}
    for case in spec.cases:
        left = timeout - (time.monotonic() - t0)
        v = bab.BabBackend(bab.BabOptions(smooth=SmoothSplit(points=points))).check(
            Query(net, InputSet([case.region]), prop=case.unsafe, timeout=max(left, 0.1)))
        st = (v.details or {}).get("stats", {})
        out["bounded"] += st.get("bounded", 0)
        out["closed"] += st.get("closed", 0)
        if v.verdict == "violated":
            out["answer"] = "sat" if replay_case(onnx, case, v.counterexample)[0] else "unknown"
        elif v.verdict != "proved":
            out["answer"], out["reason"] = "unknown", v.reason
        if v.verdict != "proved":
            break
    out.update(seconds=round(time.monotonic() - t0, 2), worst=seen["worst"] if out["answer"] == "unknown" else None)
    return out


def rows(data: Path, nets: list[str], props: set[int]) -> list[tuple[str, str, float]]:
    out = []
    for onnx, prop, t in csv.reader(open(data / "instances.csv")):
        net = Path(onnx).stem.removeprefix("mnist-proxy").lstrip("-_")
        k = int(Path(prop).stem.split("_prop_")[1].split("_")[0])
        if net in nets and (not props or k in props):
            out.append((str(data / onnx), str(data / prop), float(t)))
    return out


def decided(insts: list, timeout: float) -> None:
    """Both policies per instance, alternating (which goes first alternates too), fresh processes."""
    tally = {False: [0, 0, 0], True: [0, 0, 0]}  # decided, bounded, instances
    print("| instance | cut at 0: answer, s, bounded, worst open | optimised points: answer, s, bounded, worst open |")
    print("|---|---|---|")
    for n, (onnx, prop, t) in enumerate(insts):
        res = {}
        for points in ((False, True) if n % 2 == 0 else (True, False)):
            cmd = [sys.executable, __file__, "--one", onnx, prop, "--points", str(int(points)), "--timeout",
                   f"{timeout or t:g}"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=(timeout or t) + 300)
            res[points] = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {
                "answer": "error", "seconds": 0, "bounded": 0, "worst": None, "reason": p.stderr[-300:]}
            r = res[points]
            tally[points][0] += r["answer"] in ("sat", "unsat")
            tally[points][1] += r["bounded"]
            tally[points][2] += 1

        def cell(r: dict) -> str:
            w = "" if r.get("worst") is None else f", {r['worst']:.3f}"
            return f"{r['answer']}, {r['seconds']:.1f}, {r['bounded']}{w}"

        print(f"| {Path(onnx).stem} {Path(prop).stem} | {cell(res[False])} | {cell(res[True])} |", flush=True)
    for points, (d, b, k) in tally.items():
        print(f"{'optimised points' if points else 'cut at 0'}: {d}/{k} decided, {b} sub-problems bounded")


def budget(insts: list, n_sub: int, timeout: float) -> None:
    """Both policies from the same root, ``n_sub`` sub-problems each, per open disjunct."""
    from lumpver.api.verify import load_model, read_vnnlib
    from lumpver.bounds.blas import blas_single_thread
    from lumpver.bounds.engine import prepare
    from lumpver.bounds.region import region_box
    from lumpver.verifiers.bab_branch import Context, Domain, bound
    from lumpver.verifiers.bab_deep import SmoothSplit, refine_smooth, root_layer_bounds

    print("| instance, disjunct | root bound | relaxation loss by layer | cut at 0: worst open, open, CPU s | "
          "optimised points: worst open, open, CPU s |")
    print("|---|---|---|---|---|")
    for onnx, prop, t in insts:
        net = load_model(onnx)
        chain = prepare(net)
        case = read_vnnlib(prop, n_inputs=net.n_inputs, n_outputs=net.n_outputs).cases[0]
        box = region_box(case.region)
        lo, hi = box.lower.astype(np.float64)[None], box.upper.astype(np.float64)[None]
        with blas_single_thread():
            zl, zu = root_layer_bounds(chain, lo, hi)
            ctxs = [Context(chain, -np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64), 6, 0.25)
                    for A, b in case.unsafe.disjuncts]

            def root(c: Context) -> Domain:
                d = Domain(lo[0], hi[0], [a[0] for a in zl], [a[0] for a in zu], [None] * chain.depth,
                           np.zeros(c.lam.shape[0]), start=chain.depth)
                return bound(c, [d], 30)[0]

            roots = [root(c) for c in ctxs]
            warm: dict = {}
            for done in (0, 1):
                if all(r.score < 0 for r in roots):
                    break
                tight = refine_smooth(chain, lo, hi, zl, zu, done, True, timeout, timeout, warm)
                if tight is not None:
                    zl, zu = tight
                    roots = [root(c) for c in ctxs]
            for j, (c, r) in enumerate(zip(ctxs, roots)):
                if r.score < 0:
                    continue
                cells = [_run_budget(c, r, SmoothSplit(points=p), n_sub) for p in (False, True)]
                loss = " / ".join(f"{v:.2f}" for v in layer_losses(r, chain))
                print(f"| {Path(prop).stem}, {j} | {r.score:.3f} | {loss} | {cells[0]} | {cells[1]} |", flush=True)


def layer_losses(root, chain) -> list[float]:
    """Per hidden layer ``sum_n |a_n| * loss_n`` for the row closest to closing: ``a`` the neuron's coefficient
    in the root's bound, ``loss`` the mean distance (33 points) between the curve and the registry's line that
    ``a``'s sign uses (where the bound loses to the relaxation; a heuristic, the tangent points are optimised)."""
    from lumpver.verifiers.bab_deep import smooth_gap

    row = int(np.argmin(root.upper))
    out = []
    for k in range(chain.depth - 1):
        a, l, u = root.coeffs[k][row], root.zl[k], root.zu[k]
        gap = np.where(a > 0, smooth_gap(chain.acts[k], l, u, True, 33), smooth_gap(chain.acts[k], l, u, False, 33))
        out.append(float(np.sum(np.abs(a) * gap)))
    return out


def _run_budget(ctx, root, split, n_sub: int) -> str:
    from lumpver.verifiers.bab_branch import bound, input_split
    from lumpver.verifiers.bab_deep import neuron_split
    from lumpver.verifiers.bab_input import Frontier

    c0, frontier, done = time.process_time(), Frontier([root]), 0
    while done < n_sub and len(frontier):
        kids = []
        for d in frontier.pop_worst(8):
            s = neuron_split(d, ctx.chain, split)
            kids.extend(s if s is not None else input_split(d))
        kids = bound(ctx, kids)
        done += len(kids)
        frontier.extend([d for d in kids if d.score >= 0])
    worst = frontier.worst_score() if len(frontier) else float("-inf")
    return f"{worst:.3f}, {len(frontier)}, {time.process_time() - c0:.1f}"


def soundness(n_props: int) -> None:
    """2-input sigmoid/tanh properties with a brute-force truth and thresholds close to it
    (tests/test_smooth_split.py), neuron splits only (split points on)."""
    from lumpver.specs.inputset import InputSet, OutputProperty
    from lumpver.verifiers.bab import BabBackend, BabOptions
    from lumpver.verifiers.base import Query
    from tests.test_smooth_split import close_cases

    be = BabBackend(BabOptions(input_split_dims=0, falsify_seconds=0.02))
    counts: dict = {}
    t0, seed, done = time.monotonic(), 2000, 0
    while done < n_props:
        act = ("sigmoid", "tanh")[seed % 2]
        for net, box, c, t, reachable in close_cases(seed, act, 5):
            prop = OutputProperty([(-c[None, :], np.array([-t]))])
            v = be.check(Query(net, InputSet([box]), prop=prop, timeout=3.0))
            assert v.verdict in ("violated" if reachable else "proved", "unknown"), (seed, v.verdict, v.reason)
            if v.verdict == "violated":
                assert box.contains(v.counterexample) and float(c @ net.forward(v.counterexample)[0]) >= t
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
            done += 1
        seed += 1
    print(f"{done} properties, no contradiction with the brute-force grid: {counts} ({time.monotonic() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/deep_smooth")
    ap.add_argument("--nets", default="sigmoid_200x6,tanh_200x6")
    ap.add_argument("--props", default="", help="prop numbers, comma-separated (default: all)")
    ap.add_argument("--timeout", type=float, default=0.0, help="seconds per instance (default: instances.csv's)")
    ap.add_argument("--budget", type=int, default=0, help="sub-problems per policy from one root (work budget)")
    ap.add_argument("--soundness", type=int, default=0, help="properties of the neuron-split soundness check")
    ap.add_argument("--one", nargs=2, metavar=("ONNX", "VNNLIB"))
    ap.add_argument("--points", type=int, default=1)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, bool(args.points), args.timeout or 60.0)))
        return
    if args.soundness:
        return soundness(args.soundness)
    props = {int(p) for p in args.props.split(",") if p}
    insts = rows(Path(args.data), args.nets.split(","), props)
    if args.budget:
        return budget(insts, args.budget, args.timeout or 60.0)
    decided(insts, args.timeout)


if __name__ == "__main__":
    main()
