"""Probe: attained error of approximate-reduction candidates per size and variant (issue 14, DESIGN.md §4).

For ACAS Xu networks on the prop_3 box: h = the exact on-set reduction; per hidden size and variant a
candidate g; its *attained* error = the largest max_o |h_o - g_o| found by
:func:`lumpver.reductions.approx_joint.attained_error` (50,000 uniform points + the box's vertices + 400-start
projected gradient ascent, float64; a lower bound of the true error, so a candidate above epsilon cannot be
certified). Variants:
  ls       the reducer's default: removal_order on h, least-squares refit (approx.refit_pruned)
  exchange the same kept neurons, exchange (minimax) refit (approx_minimax.exchange_refit)
  joint    exchange, then the joint L^p minimax refit of every kept weight (approx_joint.joint_refit)
  shrink   gradual pruning with joint refits (approx_shrink.shrink), which chooses its own kept neurons
CPU = process CPU seconds to build the candidate (the machine is shared: compare within one run).

Usage: python bench/bench_approx_candidates.py [--nets 1_1,2_3] [--sizes 1_1:90,80,67/2_3:85,75,62]
       [--variants ls,exchange,joint,shrink] [--shrink 'candidates=8'] [--final 'rounds=12'] [--json PATH]
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.reductions.approx import kept_after, refit_pruned, removal_order  # noqa: E402
from lumpver.reductions.approx_joint import JointOptions, attained_error, joint_refit  # noqa: E402
from lumpver.reductions.approx_minimax import exchange_refit  # noqa: E402
from lumpver.reductions.approx_shrink import ShrinkOptions, shrink  # noqa: E402
from lumpver.reductions.certify import sample_points  # noqa: E402
from lumpver.reductions.onset import reduce_on_set  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402

ACAS = ROOT / ".." / "shared" / "data" / "acasxu"
SIZES = {"1_1": [90, 80, 67], "2_3": [85, 75, 62]}  # 67, 62: half the on-set size (the goal)


def _kwargs(text: str) -> dict:
    """``'a=1,b=(2,3)'`` -> ``{'a': 1, 'b': (2, 3)}`` (literal values only)."""
    call = ast.parse(f"f({text})", mode="eval").body
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def candidates(name: str, sizes: list[int], variants: list[str], shrink_opts: ShrinkOptions) -> list[dict]:
    f = load_onnx(ACAS / "onnx" / f"ACASXU_run2a_{name}_batch_2000.onnx")
    X = load_input_set(str(ACAS / "vnnlib" / "prop_3.vnnlib"), f.n_inputs)
    box = X.regions[0]
    h = reduce_on_set(f, X).reduced
    pts = sample_points(X, 3000, 0)
    acts = h.activations(pts)
    order = removal_order(h, acts)
    rows = []
    for size in sizes:
        kept = kept_after(h, order, h.n_hidden - size)
        ex = None
        for variant in variants:
            t0 = time.process_time()
            if variant == "ls":
                g = refit_pruned(h, acts, kept)[0]
            elif variant == "exchange":
                ex = exchange_refit(h, pts, kept, box)
                g = ex.network
            elif variant == "joint":
                ex = ex if ex is not None else exchange_refit(h, pts, kept, box)
                g = joint_refit(h, ex, box, shrink_opts.final).network
            else:
                g = shrink(h, pts, box, size, removal_order, shrink_opts)[1].network
            cpu = time.process_time() - t0
            err = attained_error(h, g, box)
            rows.append({"net": name, "hidden": g.n_hidden, "variant": variant, "attained": err, "cpu": cpu,
                         "widths": g.hidden_widths})
            print(f"{name} {g.n_hidden:4d} {variant:9s} attained {err:.5f}  cpu {cpu:6.1f} s  {g.hidden_widths}",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default="1_1,2_3")
    ap.add_argument("--sizes", default="", help="e.g. 1_1:90,67/2_3:62 (default: SIZES)")
    ap.add_argument("--variants", default="ls,exchange,joint,shrink")
    ap.add_argument("--shrink", default="", help="ShrinkOptions fields, e.g. 'candidates=8,steps=16'")
    ap.add_argument("--final", default="", help="JointOptions fields of the closing joint refit (joint, shrink)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    sizes = dict(SIZES)
    for part in filter(None, args.sizes.split("/")):
        net, _, vals = part.partition(":")
        sizes[net] = [int(v) for v in vals.split(",")]
    opts = ShrinkOptions(**_kwargs(args.shrink), final=JointOptions(**_kwargs(args.final)))
    rows = []
    for name in args.nets.split(","):
        rows += candidates(name, sizes[name], args.variants.split(","), opts)
    print("\n| net | hidden | " + " | ".join(args.variants.split(",")) + " |")
    print("|---|---|" + "---|" * len(args.variants.split(",")))
    for name in args.nets.split(","):
        for size in sizes[name]:
            cells = [next((f"{r['attained']:.4f} ({r['cpu']:.0f} s)" for r in rows
                           if r["net"] == name and r["variant"] == v and r["hidden"] == size), "-")
                     for v in args.variants.split(",")]
            print(f"| {name} | {size} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
