"""Root diagnosis of deep ReLU instances and split-refined intermediate bounds (issue 13; verifiers/bab_refine.py).

    python bench/bench_deep_refine.py --data /tmp/deep_real --props 256x4_prop_2,256x6_prop_1 [--layers 3]
                                      [--per-layer 256] [--rounds 8] [--share 0.5]
                                      [--ab base,slopes,split] [--timeout T]  # the search per config, alternating

Per instance (one process, one BLAS thread): unstable neurons per hidden layer after CROWN, after alpha-CROWN
(the search's root, ``tighten_root``) and after the split refinement; the root bound of every open disjunct row
(the search's ``bound`` at the root, 30 steps) on each set of layer bounds; the CPU seconds of each pass. A row
closes when its bound is < 0.

``--ab``: instead, the ``bab`` search (in this process, one BLAS thread, each instance's ``instances.csv`` timeout
in wall seconds) per configuration, alternating per instance: ``base`` (the root domain without slopes, no split
refinement: the search before this change), ``slopes`` (root slopes), ``split`` (root slopes and split refinement
with the given knobs). Prints verdict, seconds and sub-problems bounded per run.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def root_rows(chain, prop, lo, hi, zl, zu):
    """Per disjunct, the best (smallest) root bound over its rows (< 0: excluded)."""
    import numpy as np

    from lumpver.verifiers.bab_branch import Context, Domain, bound, root_alpha
    
    out = []
    for A, b in prop.disjuncts:
        ctx = Context(chain, -np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64), 6, 0.25)
        root = Domain(lo[0], hi[0], [a[0] for a in zl], [a[0] for a in zu],
                      root_alpha(chain, [a[0] for a in zl], [a[0] for a in zu], ctx.lam.shape[0]),
                      np.zeros(ctx.lam.shape[0]), start=chain.depth)
        out.append(bound(ctx, [root], 30)[0].score)
    return out


def unstable(zl, zu) -> str:
    import numpy as np

    return "/".join(str(int(np.sum((a < 0) & (b > 0)))) for a, b in zip(zl[:-1], zu[:-1]))


def ab_configs(names: list[str], split):
    """Named ``BabOptions`` of ``--ab``."""
    from lumpver.verifiers.bab import BabOptions
    from lumpver.verifiers.bab_deep import ReluSearch
    from lumpver.verifiers.bab_refine import SplitRefine

    off = SplitRefine()  # the refinement is on by default since 2026-12-01: "base"/"slopes" turn it off
    table = {"base": ReluSearch(root_slopes=False, split_refine=off), "slopes": ReluSearch(split_refine=off),
             "split": ReluSearch(split_refine=split),
             "split_noslopes": ReluSearch(split_refine=split, root_slopes=False)}
    return [(n, BabOptions(relu=table[n])) for n in names]


def run_ab(data: Path, rows: list, configs: list, timeout_s: float = 0.0) -> None:
    """The search per configuration and instance (module docstring); ``timeout_s`` > 0 replaces the csv's."""
    from lumpver.api.verify import load_model, read_vnnlib
    from lumpver.specs.inputset import InputSet
    from lumpver.verifiers.bab import BabBackend
    from lumpver.verifiers.base import Query

    for onnx, vnnlib, timeout in rows:
        net = load_model(data / onnx)
        case = read_vnnlib(data / vnnlib, n_inputs=net.n_inputs, n_outputs=net.n_outputs).cases[0]
        for name, opt in configs:
            t0 = time.monotonic()
            q = Query(net, InputSet([case.region]), prop=case.unsafe, timeout=float(timeout_s or timeout))
            v = BabBackend(opt).check(q)
            st = (v.details or {}).get("stats", {})
            print(f"{Path(vnnlib).stem} {name}: {v.verdict} {time.monotonic() - t0:.1f} s, {st.get('bounded', 0)} "
                  f"bounded, {st.get('closed', 0)} closed; {v.reason[:80]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/deep_real")
    ap.add_argument("--props", required=True, help="comma-separated substrings of instances.csv vnnlib names")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--per-layer", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=0.0, help="--ab: seconds per run instead of the csv's")
    ap.add_argument("--ab", default="", help="comma-separated configurations: base, slopes, split, split_noslopes")
    args = ap.parse_args()
    import numpy as np

    from lumpver.api.verify import load_model, read_vnnlib
    from lumpver.bounds.blas import blas_single_thread
    from lumpver.bounds.engine import prepare
    from lumpver.verifiers.bab_deep import ReluSearch, root_layer_bounds, tighten_root
    from lumpver.verifiers.bab_refine import SplitRefine, refine_split_layers

    data = Path(args.data)
    rows = [r for r in csv.reader(open(data / "instances.csv")) if any(p in r[1] for p in args.props.split(","))]
    opt = SplitRefine(args.layers, args.per_layer, args.rounds, args.iters, share=args.share)
    if args.ab:
        with blas_single_thread():
            return run_ab(data, rows, ab_configs(args.ab.split(","), opt), args.timeout)
    with blas_single_thread():
        for onnx, vnnlib, _ in rows:
            net = load_model(data / onnx)
            case = read_vnnlib(data / vnnlib, n_inputs=net.n_inputs, n_outputs=net.n_outputs).cases[0]
            chain = prepare(net)
            lo, hi = case.region.lower[None].astype(np.float64), case.region.upper[None].astype(np.float64)
            t = time.process_time()
            zl, zu = root_layer_bounds(chain, lo, hi)
            t_crown = time.process_time() - t
            t = time.process_time()
            al, au = tighten_root(chain, lo, hi, zl, zu, ReluSearch().root_refine)
            t_alpha = time.process_time() - t
            base = root_rows(chain, case.unsafe, lo, hi, al, au)
            t = time.process_time()
            rl, ru = refine_split_layers(chain, lo, hi, al, au, opt, time.monotonic() + 1e6)
            t_ref = time.process_time() - t
            ref = root_rows(chain, case.unsafe, lo, hi, rl, ru)
            print(f"{Path(vnnlib).stem}: unstable CROWN {unstable(zl, zu)} ({t_crown:.1f} s), alpha {unstable(al, au)}"
                  f" ({t_alpha:.1f} s), split-refined {unstable(rl, ru)} ({t_ref:.1f} s, {opt})", flush=True)
            for d, (a, b) in enumerate(zip(base, ref)):
                if a >= 0:
                    print(f"  disjunct {d}: root bound alpha {a:.3f} -> refined {b:.3f}", flush=True)


if __name__ == "__main__":
    main()
