"""``lumpver compare A.onnx B.onnx --input-set SPEC --epsilon E``: decide or bound
``sup_{x in X} ||A(x) - B(x)||`` (CONTRACT.md; API in lumpver/api/compare.py)."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes
from lumpver.specs.norm_names import NORMS

EPILOG = """exit status: 0 when the claim is proved; 1 when it is violated (a counterexample,
replayed with onnxruntime on both files, is printed and written to --json); 0 with the last
line 'unknown' when no back-end could decide it within the time (the contract's exit 1 is for
a check that fails, and 'unknown' is not a failure: scripts must read the last line);
2 on bad input."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("model_a", help="first ONNX model (the original)")
    p.add_argument("model_b", help="second ONNX model (the reduced one)")
    p.add_argument("--input-set", required=True, help="input set X: a .vnnlib or .toml spec file")
    p.add_argument("--epsilon", type=argtypes.nonnegative, required=True, help="claimed bound on ||A(x) - B(x)|| over X")
    p.add_argument("--norm", choices=NORMS, default="linf",
                   help="difference norm; top1 = the top-1 classes agree (epsilon ignored)")
    p.add_argument("--backend", choices=["bab_diff", "interval", "smt", "sdp", "auto", "falsify", "marabou",
                                         "graph_diff"],
                   default="auto", help="auto: falsifier, then bab_diff (interval for top1 or unpairable networks), "
                                        "then smt; for graph networks (residual Add, Concat, MaxPool) falsifier, "
                                        "then graph_diff (product-graph bounds), which bab_diff/interval also map to")
    p.add_argument("--timeout", type=argtypes.seconds, default=60.0, help="wall-clock seconds for the whole comparison")
    p.add_argument("--seed", type=int, default=0, help="random seed of the falsifier")
    p.add_argument("--json", help="write the verdict as JSON here (atomic)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumpver.api.compare import compare_models
    from lumpver.errors import InputError
    from lumpver.fileio import check_output_path, write_json_atomic
    from lumpver.progress import Progress

    for p in (args.model_a, args.model_b, args.input_set):
        if not Path(p).is_file():
            raise InputError("file not found", p)
    if args.json:
        check_output_path(args.json, [args.model_a, args.model_b, args.input_set])
    progress = Progress(args.quiet)
    progress.say(f"comparing {args.model_a} and {args.model_b} ({args.norm}, epsilon {args.epsilon:g}, {args.backend})")
    v = compare_models(args.model_a, args.model_b, args.input_set, args.epsilon, args.norm, args.backend,
                       args.timeout, args.seed, quiet=args.quiet)
    out = v.report_json(norm=args.norm, epsilon=args.epsilon, models=[args.model_a, args.model_b],
                        input_set=args.input_set)
    if args.json:
        write_json_atomic(args.json, out)
    print(f"backend: {v.backend}; {v.reason}")
    if v.lower_bound is not None:
        print(f"lower bound (attained): {v.lower_bound:.9g}")
    if v.upper_bound is not None:
        print(f"upper bound (certified): {v.upper_bound:.9g}")
    if v.counterexample is not None:
        print("counterexample: " + " ".join(repr(float(t)) for t in v.counterexample))
    print(f"time: {v.seconds:.2f} s")
    print(v.verdict)
    return 1 if v.verdict == "violated" else 0
