"""``lumpver reduce``: exact (default), on-set or approximate reduction with a certificate."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the original ONNX model")
    p.add_argument("-o", "--output", required=True, help="where the reduced ONNX model goes")
    p.add_argument("--certificate", help="certificate JSON (default: OUTPUT with .cert.json)")
    p.add_argument("--report", action="append", default=[], help="report file(s): .md, .html or .json")
    p.add_argument("--mode", choices=["exact", "on-set", "approx"], default="exact",
                   help="exact: no loss on any input; on-set: exact on --input-set; approx: within --epsilon")
    p.add_argument("--input-set", help="input set: a .vnnlib file or a lumpver spec (.toml)")
    p.add_argument("--epsilon", type=float, help="error budget (approx mode)")
    p.add_argument("--norm", choices=["linf", "l1", "l2", "top1"], default="linf")
    p.add_argument("--backend", default="auto", help="back-end certifying approximate reductions")
    p.add_argument("--tolerance", type=float, default=None,
                   help="relative tolerance of signature equality for float32 weights (default 1e-5)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for certification (approx mode)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lumpver.errors import InputError
    from lumpver.fileio import check_output_path
    from lumpver.reductions.exact import DEFAULT_TOLERANCE
    from lumpver.progress import Progress
    from lumpver.api.reduce import default_certificate_path

    progress = Progress(args.quiet)
    tol = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    if not (0 < tol < 0.1):
        raise InputError(f"--tolerance must be in (0, 0.1), got {tol}")
    if not Path(args.model).is_file():
        raise InputError("no such model file", args.model)
    cert_path = args.certificate or str(default_certificate_path(args.output))
    inputs = [args.model] + ([args.input_set] if args.input_set else [])
    for out in [args.output, cert_path, *args.report]:
        check_output_path(out, inputs)
    if args.mode == "exact":
        from lumpver.api.reduce import reduce_exact_to_files

        cert = reduce_exact_to_files(args.model, args.output, cert_path, tol, progress)
    elif args.mode == "on-set":
        cert = _on_set(args, cert_path, progress)
    else:
        cert = _approx(args, cert_path, progress)
    for rep in args.report:
        from lumpver.reports.render import write_report

        write_report(cert, rep)
    s = cert["stats"]
    print(f"{cert['guarantee']['kind']}: hidden neurons {s['neurons_before']} -> {s['neurons_after']}, "
          f"parameters {s['params_before']} -> {s['params_after']}; certificate {cert_path}")
    return 0


def _load_set(args):
    from lumpver.errors import InputError

    if not args.input_set:
        raise InputError(f"--mode {args.mode} needs --input-set")
    from lumpver.specs.load import load_input_set
    from lumpver.ir.onnx_import import load_onnx

    net = load_onnx(args.model)
    return net, load_input_set(args.input_set, net.n_inputs)


def _on_set(args, cert_path, progress):
    from lumpver.reductions.onset import reduce_on_set_to_files

    _, input_set = _load_set(args)
    return reduce_on_set_to_files(args.model, args.output, cert_path, input_set, args.quiet)


def _approx(args, cert_path, progress):
    from lumpver.errors import InputError

    if args.epsilon is None or args.epsilon < 0:
        raise InputError("--mode approx needs --epsilon E >= 0")
    _, input_set = _load_set(args)
    try:
        from lumpver.reductions.approx import reduce_approx_to_files
    except ImportError:
        raise InputError("--mode approx is not available in this version of lumpver") from None
    return reduce_approx_to_files(args.model, args.output, cert_path, input_set, args.epsilon, args.norm,
                                  args.backend, args.timeout, progress)
