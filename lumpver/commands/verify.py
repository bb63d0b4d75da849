"""``lumpver verify MODEL.onnx PROP.vnnlib``: a VNN-LIB property check with a result file in the
VNN-COMP format (CONTRACT.md; API in lumpver/api/verify.py)."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes

EPILOG = """The last line of stdout (and the first line of --result) is sat, unsat, unknown,
timeout or error. After sat the result file holds the counterexample ((X_0 v) ... (Y_0 v) ...)
with Y computed by onnxruntime on the original model and checked against the property.
exit status: 0 for unsat, unknown and timeout; 1 for sat (the property fails); 2 on bad input
(also 'error' on stdout when a back-end crashed, exit 1)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("model", help="ONNX model")
    p.add_argument("property", help="VNN-LIB property (the unsafe set)")
    p.add_argument("--backend", choices=["bab", "smt", "marabou", "auto", "falsify", "interval"], default="auto",
                   help="auto = bab (branch and bound over ReLU phases / input boxes with alpha-optimised "
                        "bounds, falsifier between rounds), then smt (input splitting, z3) on an early unknown")
    p.add_argument("--reduce", action="store_true",
                   help="split each case's input region by bounds, reduce the network exactly on every open "
                        "sub-box (on-set reduction) and run the back-end on the reduced networks")
    p.add_argument("--timeout", type=argtypes.seconds, default=60.0, help="wall-clock seconds for the whole property")
    p.add_argument("--workers", type=argtypes.positive_int, default=1,
                   help="processes bounding branch-and-bound sub-problems (bab/auto)")
    p.add_argument("--result", help="write the VNN-COMP result file here (atomic)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumpver.errors import InputError
    from lumpver.fileio import check_output_path, write_text_atomic
    from lumpver.progress import Progress
    from lumpver.api.verify import verify_property

    for p in (args.model, args.property):
        if not Path(p).is_file():
            raise InputError("file not found", p)
    if args.result:
        check_output_path(args.result, [args.model, args.property])
    progress = Progress(args.quiet)
    r = verify_property(args.model, args.property, args.backend, args.reduce, args.timeout, progress,
                         workers=args.workers)
    if args.result:
        write_text_atomic(args.result, r.text())
    print(f"{r.reason} ({r.seconds:.2f} s)")
    if r.result == "sat":
        print(r.text().split("\n", 1)[1].rstrip())
    print(r.result)
    return 1 if r.result in ("sat", "error") else 0
