"""Probe: where a certification's phase stage spends its work (issue 14; DESIGN.md §11; bench/RESULTS.md).

For an ACAS Xu goal-size candidate of the gradual pruning (``approx_shrink.shrink``, as ``reduce --gradual``
builds it; cached as a pickle in /tmp) against h (the exact on-set reduction) on the prop_3 box, through its
pruned twin: the deterministic box stage of ``bab_diff`` (no phase LPs) with the open leaves snapshotted at each
box count of ``--caps`` (count, bound percentiles, unstable ReLUs of h), then the phase stage exactly as
``bab_diff`` runs it (per-leaf LPs, bisections) on ``--leaves`` open leaves picked evenly over the bound ranking,
once per root-tightening mode of ``--tighten``, alternating per leaf (same run: compare the ratios). CPU seconds
of this process; extrapolated = mean per leaf x open leaves.

With ``--workers N`` (> 1) instead: the phase stage of ``bab_diff`` itself on ``--leaves`` open leaves of the
last cap, in N processes and in one, on copies of the same search (wall/CPU ratio, LPs; the first --tighten mode).

Usage: python bench/bench_phase_leaves.py [--net 1_1] [--size 67] [--caps 1500,24000] [--leaves 16]
       [--tighten 1,live] [--leaf-lps 300] [--workers N]
"""
from __future__ import annotations

import argparse
import copy
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cert_acasxu_candidate import build, cpu  # noqa: E402
from lumpver.bounds.blas import blas_single_thread  # noqa: E402
from lumpver.commands.argtypes import positive_int  # noqa: E402
from lumpver.bounds.diff_batched import REFINE, pair_layer_bounds  # noqa: E402
from lumpver.reductions.certify import twin_of  # noqa: E402
from lumpver.specs.inputset import Box  # noqa: E402
from lumpver.verifiers import bab_diff  # noqa: E402
from lumpver.verifiers.bab_diff import DiffOptions, _Search, choose_pairing  # noqa: E402
from lumpver.verifiers.bab_phase import PairNet  # noqa: E402


def candidate(net: str, size: int) -> dict:
    """h, the twin of the shrink candidate and the on-set term (cached in /tmp; the candidate itself is
    bench/cert_acasxu_candidate.py's)."""
    cache = Path(f"/tmp/bench_phase_leaves_{net}_{size}.pkl")
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    c = build(net, size)
    twin, _ = twin_of(c.h, c.g, c.chain, c.X)
    out = {"h": c.h, "twin": twin, "onset": c.onset_bound, "X": c.X, "widths": c.g.hidden_widths}
    cache.write_bytes(pickle.dumps(out))
    return out


def box_stage(d: dict, model, target: float, caps: list[int]) -> tuple[dict[int, list], _Search]:
    """Open leaves [(lo, hi, bound)] at each cap of one deterministic box search (printed summary per cap), and
    the search (at the largest cap)."""
    snaps: dict[int, tuple] = {}
    t0 = time.process_time()

    class Snap(_Search):
        def _heartbeat(self, heap) -> None:
            for cap in caps:
                if cap not in snaps and len(self.tree.lo) >= cap:
                    snaps[cap] = ([i for nb, i in heap if -nb > self.threshold], time.process_time() - t0,
                                  len(self.tree.lo))

    s = Snap(d["h"], d["twin"], model, d["X"].regions[0], "linf", None, time.monotonic() + 1e7,
             DiffOptions(max_boxes=max(caps), deterministic=True, phase_lps=0), 0.0, target)
    s.run()
    t, out = s.tree, {}
    for cap in caps:
        ids, cpu, boxes = snaps.get(cap, ([i for i in t.leaf_ids() if t.bound[i] > target], time.process_time() - t0,
                                          len(t.lo)))
        lo, hi = np.stack([t.lo[i] for i in ids]), np.stack([t.hi[i] for i in ids])
        b = np.array([t.bound[i] for i in ids])
        lb = pair_layer_bounds(model, lo, hi, REFINE)
        unst = sum(((l < 0) & (u > 0)).sum(axis=1) for l, u in zip(lb.fl, lb.fu))
        pct = lambda a: "/".join(f"{v:.3g}" for v in np.percentile(a, [0, 10, 50, 90, 100]))  # noqa: E731
        print(f"{boxes} boxes ({cpu:.0f} CPU s): {len(ids)} open leaves, bounds {pct(b)}, unstable in h {pct(unst)}",
              flush=True)
        out[cap] = [(lo[j], hi[j], b[j]) for j in range(len(ids))]
    return out, s


def workers_ab(s: _Search, target: float, n_leaves: int, workers: int, opt: DiffOptions) -> None:
    """The phase stage of ``bab_diff`` itself (:meth:`_Search._phase_stage`: pool, bisections, budget) on
    ``n_leaves`` open leaves of the search ``s`` (picked evenly over the bound ranking; the others closed), once
    in ``workers`` processes and once in one, on copies of the same search: wall and CPU seconds (this process
    and its reaped workers), LPs and leaves phase-searched, the stage's bound."""
    t = s.tree
    ranked = sorted((i for i in t.leaf_ids() if t.bound[i] > target), key=lambda i: -t.bound[i])
    picks = {ranked[j] for j in np.linspace(0, len(ranked) - 1, n_leaves).astype(int)}
    base = None
    for w in (workers, 1):
        c = copy.deepcopy(s, {id(s.opt.progress): s.opt.progress})  # the progress stream is shared
        for i in ranked:
            if i not in picks:
                c.tree.bound[i] = 0.0
        c.opt, c.deadline, c.phase_net = replace(opt, workers=w), time.monotonic() + 1e7, PairNet.of(c.model)
        tally = np.zeros(2)
        c._heartbeat_phase = lambda res: tally.__iadd__((res.lps, 1))
        w0, c0 = time.monotonic(), cpu()
        c._phase_stage()
        wall, used = time.monotonic() - w0, cpu() - c0
        base = base or wall
        up = max(c.tree.bound[i] for i in c.tree.leaf_ids())
        print(f"  phase stage on {len(picks)} open leaves, workers={w}: {wall:.1f} s wall (x{wall / base:.2f}), "
              f"{used:.1f} CPU s, {int(tally[0])} LPs over {int(tally[1])} leaf searches, bound {up:.6g} "
              f"(target {target:.6g})", flush=True)


def phase_stage(d: dict, model, target: float, leaf, opt: DiffOptions) -> tuple[float, int, float]:
    """(CPU s, LPs, bound) of the phase stage on one leaf, as bab_diff runs it."""
    lps = [0]
    orig = bab_diff.finish_leaf

    def counted(*a, **k):
        r = orig(*a, **k)
        lps[0] += r.lps
        return r

    bab_diff.finish_leaf = counted
    try:
        t0 = time.process_time()
        r = _Search(d["h"], d["twin"], model, Box(leaf[0], leaf[1]), "linf", None, time.monotonic() + 1e7, opt, 0.0,
                    target).run()
        return time.process_time() - t0, lps[0], r.upper
    finally:
        bab_diff.finish_leaf = orig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="1_1")
    ap.add_argument("--size", type=int, default=67)
    ap.add_argument("--caps", default="1500,24000")
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--tighten", default="1,live", help="root tightening modes: 1 (all), 0 (none), live")
    ap.add_argument("--leaf-lps", type=int, default=300)
    ap.add_argument("--workers", type=positive_int, default=1,
                    help="> 1: instead of the per-leaf probe, the phase stage on --leaves open leaves of the last cap "
                         "in this many processes and in one (same run)")
    args = ap.parse_args()
    modes = [{"1": True, "0": False}.get(m, m) for m in args.tighten.split(",")]
    d = candidate(args.net, args.size)
    target = 0.01 - d["onset"]
    with blas_single_thread():
        model = choose_pairing(d["h"], d["twin"], d["X"])
        print(f"{args.net} at {args.size} ({d['widths']}), pairing {model.kind}, target {target:.6g}", flush=True)
        snaps, search = box_stage(d, model, target, [int(c) for c in args.caps.split(",")])
        if args.workers > 1:
            workers_ab(search, target, args.leaves, args.workers,
                       DiffOptions(deterministic=True, phase_lps=10**7, phase_leaf_lps=args.leaf_lps,
                                   phase_tighten=modes[0]))
            return
        for cap, leaves in snaps.items():
            order = sorted(range(len(leaves)), key=lambda j: -leaves[j][2])
            picks = [order[j] for j in np.linspace(0, len(order) - 1, args.leaves).astype(int)]
            tot = {m: np.zeros(3) for m in modes}
            for n, j in enumerate(picks):
                for m in (modes if n % 2 == 0 else modes[::-1]):
                    opt = DiffOptions(max_boxes=0, deterministic=True, phase_lps=10**7, phase_leaf_lps=args.leaf_lps,
                                      phase_tighten=m)
                    cpu, lps, up = phase_stage(d, model, target, leaves[j], opt)
                    tot[m] += (cpu, lps, up > target)
            base = tot[modes[0]]
            for m in modes:
                cpu, lps, fails = tot[m]
                print(f"  cap {cap}, tighten={m}: {args.leaves} leaves: {cpu / args.leaves:.2f} CPU s and "
                      f"{lps / args.leaves:.0f} LPs per leaf, {int(fails)} not closed; x{cpu / base[0]:.2f} CPU, "
                      f"x{lps / base[1]:.2f} LPs; extrapolated {cpu / args.leaves * len(leaves):.0f} CPU s", flush=True)


if __name__ == "__main__":
    main()
