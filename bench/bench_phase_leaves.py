"""Probe: where a certification's phase stage spends its work (issue 14; DESIGN.md §11; bench/RESULTS.md).

For an ACAS Xu goal-size candidate of the gradual pruning (``approx_shrink.shrink``, as ``reduce --gradual``
builds it; cached as a pickle in /tmp) against h (the exact on-set reduction) on the prop_3 box, through its
pruned twin: the deterministic box stage of ``bab_diff`` (no phase LPs) with the open leaves snapshotted at each
box count of ``--caps`` (count, bound percentiles, unstable ReLUs of h), then the phase stage exactly as
``bab_diff`` runs it (per-leaf LPs, bisections) on ``--leaves`` open leaves picked evenly over the bound ranking,
once per root-tightening mode of ``--tighten``, alternating per leaf (same run: compare the ratios). CPU seconds
of this process; extrapolated = mean per leaf x open leaves.

Usage: python bench/bench_phase_leaves.py [--net 1_1] [--size 67] [--caps 1500,24000] [--leaves 16]
       [--tighten 1,live] [--leaf-lps 300]
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.bounds.blas import blas_single_thread  # noqa: E402
from lumpver.bounds.diff_batched import REFINE, pair_layer_bounds  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.reductions.approx import _from_exchange, removal_order  # noqa: E402
from lumpver.reductions.approx_shrink import ShrinkOptions, shrink  # noqa: E402
from lumpver.reductions.certify import Chain, sample_points, twin_of  # noqa: E402
from lumpver.reductions.onset import reduce_on_set  # noqa: E402
from lumpver.specs.inputset import Box  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402
from lumpver.verifiers import bab_diff  # noqa: E402
from lumpver.verifiers.bab_diff import DiffOptions, _Search, choose_pairing  # noqa: E402

ACAS = ROOT / ".." / "shared" / "data" / "acasxu"


def candidate(net: str, size: int) -> dict:
    """h, the twin of the shrink candidate and the on-set term (cached in /tmp)."""
    cache = Path(f"/tmp/bench_phase_leaves_{net}_{size}.pkl")
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    f = load_onnx(ACAS / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx")
    X = load_input_set(str(ACAS / "vnnlib" / "prop_3.vnnlib"), f.n_inputs)
    on = reduce_on_set(f, X)
    h = on.reduced
    pts, held = sample_points(X, 3000, 0), sample_points(X, 3000, 1)
    kept, ex = shrink(h, pts, X.regions[0], size, removal_order, ShrinkOptions())
    g, dropped, kept, _ = _from_exchange(h, ex, kept, h.preprocess(held), f.forward(held), "linf")
    twin, _ = twin_of(h, g, Chain(on.steps, kept, dropped_rows=dropped), X)
    out = {"h": h, "twin": twin, "onset": on.discrepancy, "X": X, "widths": g.hidden_widths}
    cache.write_bytes(pickle.dumps(out))
    return out


def box_stage(d: dict, model, target: float, caps: list[int]) -> dict[int, list]:
    """Open leaves [(lo, hi, bound)] at each cap of one deterministic box search (printed summary per cap)."""
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
    return out


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
    args = ap.parse_args()
    modes = [{"1": True, "0": False}.get(m, m) for m in args.tighten.split(",")]
    d = candidate(args.net, args.size)
    target = 0.01 - d["onset"]
    with blas_single_thread():
        model = choose_pairing(d["h"], d["twin"], d["X"])
        print(f"{args.net} at {args.size} ({d['widths']}), pairing {model.kind}, target {target:.6g}", flush=True)
        for cap, leaves in box_stage(d, model, target, [int(c) for c in args.caps.split(",")]).items():
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
