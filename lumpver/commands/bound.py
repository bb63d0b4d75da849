"""``lumpver bound A.onnx B.onnx --input-set SPEC``: certified upper bound and falsified lower
bound of ``sup_{x in X} ||A(x) - B(x)||`` (CONTRACT.md; API in lumpver/api/bound.py)."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes
from lumpver.specs.norm_names import VECTOR_NORMS

EPILOG = """The last line of stdout is 'proved' when an upper bound is certified, 'unknown' otherwise
(timeout, solver failure, numerical doubt); exit 0 in both cases, 2 on bad input."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("model_a", help="first ONNX model (the original)")
    p.add_argument("model_b", help="second ONNX model (the reduced one)")
    p.add_argument("--input-set", required=True, help="input set X: a .vnnlib or .toml spec file")
    p.add_argument("--backend", choices=["bab_diff", "sdp", "interval", "smt", "graph_diff"], default="bab_diff",
                   help="upper-bound back-end (bab_diff: branch and bound on f - g, refining until the bound meets "
                        "the attained value or the time is used; graph networks with residual Add, Concat or "
                        "MaxPool use graph_diff, product-graph bounds)")
    p.add_argument("--norm", choices=VECTOR_NORMS, default="linf", help="difference norm")
    p.add_argument("--solver", choices=["auto", "clarabel", "scs", "mosek"], default="auto",
                   help="SDP solver (auto: Clarabel for small matrices, SCS for large)")
    p.add_argument("--timeout", type=argtypes.seconds, default=120.0, help="wall-clock seconds (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the falsifier")
    p.add_argument("--json", help="write the result as JSON here (atomic)")
    p.add_argument("--certificate", help="write a 'bounded' certificate (epsilon = the certified bound)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumpver.api.bound import bound_files
    from lumpver.errors import InputError
    from lumpver.fileio import check_outputs, write_json_atomic
    from lumpver.progress import Progress

    inputs = [args.model_a, args.model_b, args.input_set]
    for p in inputs:
        if not Path(p).is_file():
            raise InputError("file not found", p)
    check_outputs([args.json, args.certificate], inputs)
    progress = Progress(args.quiet)
    progress.say(f"bounding ||{args.model_a} - {args.model_b}||_{args.norm} ({args.backend})")
    r = bound_files(args.model_a, args.model_b, args.input_set, args.backend, args.norm, args.solver,
                    args.timeout, args.seed, args.certificate, progress)
    if args.json:
        write_json_atomic(args.json, r.report_json(norm=args.norm, models=[args.model_a, args.model_b],
                                                   input_set=args.input_set))
    print(f"backend: {r.backend}; {r.reason}")
    print("upper bound (certified): " + ("none" if r.upper_bound is None else f"{r.upper_bound:.9g}"))
    print("lower bound (attained): " + ("none" if r.lower_bound is None else f"{r.lower_bound:.9g}"))
    print(f"time: {r.seconds:.2f} s")
    print(r.verdict)
    return 0
