"""``lumpver reduce``: exact (default), on-set or approximate reduction with a certificate."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes
from lumpver.specs.norm_names import NORMS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the original ONNX model")
    p.add_argument("-o", "--output", required=True, help="where the reduced ONNX model goes")
    p.add_argument("--certificate", help="certificate JSON (default: OUTPUT with .cert.json)")
    p.add_argument("--report", action="append", default=[], help="report file(s): .md, .html or .json")
    p.add_argument("--mode", choices=["exact", "on-set", "approx"], default="exact",
                   help="exact: no loss on any input; on-set: exact on --input-set; approx: within --epsilon")
    p.add_argument("--input-set", help="input set: a .vnnlib file or a lumpver spec (.toml)")
    p.add_argument("--epsilon", type=argtypes.nonnegative, help="error budget (approx mode)")
    p.add_argument("--norm", choices=NORMS, default="linf", help="error norm (approx mode)")
    p.add_argument("--backend", default="auto", help="back-end certifying approximate reductions")
    p.add_argument("--tolerance", type=argtypes.positive, default=None,
                   help="relative tolerance of signature equality for float32 weights (default 1e-5)")
    p.add_argument("--timeout", type=argtypes.seconds, default=300.0,
                   help="seconds for the whole approx-mode search (default 300). From 900 s on "
                        "(certify.phase_budget) each certification adds a ReLU-phase LP stage (up to 400,000 "
                        "LPs) and may use half the time left (at least 900 s), and the goal size (half the on-set "
                        "network) is tried first with 85 %% of it: smaller certified networks, but one "
                        "certification of a hard candidate costs minutes (ACAS Xu 2_3 at 62 neurons: ~6-9 CPU "
                        "min). From 3600 s on the stage gets up to 2,000,000 LPs and 24,000 boxes (ACAS Xu 1_1 at "
                        "67 neurons: ~72 CPU min, 39 min with --workers 2)")
    p.add_argument("--workers", type=argtypes.positive_int, default=1,
                   help="processes of that ReLU-phase stage (approx mode; default 1): its open leaves are "
                        "independent")
    p.add_argument("--search", choices=["auto", "least-squares", "exchange", "gradual"], default="auto",
                   help="how approx-mode candidates are built (default auto): least-squares refits of the kept "
                        "weights (with an L-BFGS fit where they miss), the exchange (minimax) refit, or the gradual "
                        "pruning with joint minimax refits (boxes of <= 8 inputs; ~2-4 CPU min per candidate on "
                        "ACAS Xu; the only one that reached half the on-set size there); auto: gradual from "
                        "--timeout 900 on where it applies, else least-squares")


def run(args: argparse.Namespace) -> int:
    from lumpver.api.reduce import apply_pass, default_certificate_path
    from lumpver.fileio import check_outputs
    from lumpver.progress import Progress
    from pathlib import Path

    from lumpver.reports.render import check_report_path, document_from_certificate, write_report

    cert_path = args.certificate or str(default_certificate_path(args.output))
    for rep in args.report:
        check_report_path(rep)
    check_outputs([args.output, cert_path, *args.report], [args.model, args.input_set])
    reduction = _pass(args)
    res = apply_pass(reduction, args.model, args.output, cert_path, args.input_set, Progress(args.quiet))
    cert = res.certificate
    sizes = {"original": Path(args.model).stat().st_size, "reduced": Path(args.output).stat().st_size}
    for rep in args.report:
        write_report(document_from_certificate(cert, sizes=sizes), rep, command=argtypes.command_line(args))
    s = cert["stats"]
    print(f"{cert['guarantee']['kind']}: hidden neurons {s['neurons_before']} -> {s['neurons_after']}, "
          f"parameters {s['params_before']} -> {s['params_after']}; certificate {cert_path}")
    return 0


def _pass(args: argparse.Namespace):
    from lumpver.errors import InputError
    from lumpver.reductions.exact import DEFAULT_TOLERANCE
    from lumpver.reductions.passes import ApproxPass, ExactPass, OnSetPass

    tol = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    if not (0 < tol < 0.1):
        raise InputError(f"--tolerance must be in (0, 0.1), got {tol}")
    if args.mode != "exact" and not args.input_set:
        raise InputError(f"--mode {args.mode} needs --input-set")
    if args.mode == "exact":
        return ExactPass(tol)
    if args.mode == "on-set":
        return OnSetPass()
    if args.epsilon is None or args.epsilon < 0:
        raise InputError("--mode approx needs --epsilon E >= 0")
    return ApproxPass(args.epsilon, args.norm, args.backend, args.timeout, args.workers, args.search)
