"""``lumpver quantize``: symmetric uniform weight quantisation (DESIGN.md §8), QDQ export,
and with ``--input-set`` a ``bounded`` certificate of the error (lumpver/reductions/certify.py)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model to quantise")
    p.add_argument("-o", "--output", required=True, help="quantised ONNX model to write")
    p.add_argument("--bits", type=int, choices=[8, 4], default=8, help="bits per weight (4-bit values stored in int8)")
    p.add_argument("--per-channel", action="store_true", help="one scale per output channel (default per tensor)")
    p.add_argument("--input-set", help="certify the quantisation error on this set (.vnnlib or .toml)")
    p.add_argument("--certificate", help="certificate JSON (default OUTPUT with .cert.json, with --input-set)")
    p.add_argument("--norm", choices=["linf", "l1", "l2", "top1"], default="linf", help="error norm certified")
    p.add_argument("--float-weights", action="store_true",
                   help="write dequantised float32 weights instead of int8 + DequantizeLinear")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for certification")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from lumpver.errors import InputError
    from lumpver.fileio import check_output_path
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.progress import Progress
    from lumpver.reductions.quantize import quantize_network, quantize_summary, save_quantized

    progress = Progress(args.quiet)
    if not Path(args.model).is_file():
        raise InputError("no such model file", args.model)
    inputs = [args.model] + ([args.input_set] if args.input_set else [])
    check_output_path(args.output, inputs)
    cert_path = args.certificate or (str(Path(args.output).with_name(Path(args.output).stem + ".cert.json"))
                                     if args.input_set else None)
    if cert_path:
        check_output_path(cert_path, inputs + [args.output])
    t0 = time.perf_counter()
    net = load_onnx(args.model)
    input_set = None
    if args.input_set:
        from lumpver.reductions.certify import load_set_for

        input_set = load_set_for(args.input_set, net.n_inputs)
    g, qls = quantize_network(net, args.bits, args.per_channel)
    save_quantized(g, qls, args.output, args.float_weights)
    progress.say(f"{args.bits}-bit {'per-channel' if args.per_channel else 'per-tensor'} quantisation written to "
                 f"{args.output} ({Path(args.model).stat().st_size} -> {Path(args.output).stat().st_size} bytes)")
    if input_set is None:
        if args.certificate:
            progress.say("no certificate written: quantisation is certified only on an --input-set")
        print(f"wrote {args.output}")
        return 0
    from lumpver.reductions.certify import certify_files

    method = quantize_summary(qls, args.bits, args.per_channel) | {"float_weights": bool(args.float_weights)}
    try:
        cert = certify_files(args.model, args.output, cert_path, input_set, args.norm, None, method,
                             time.perf_counter() - t0, args.timeout, progress)
    except BaseException:
        Path(args.output).unlink(missing_ok=True)
        raise
    print(f"bounded: {args.norm} error <= {cert['guarantee']['epsilon']:.6g} on the input set; wrote {args.output} "
          f"and {cert_path}")
    return 0
