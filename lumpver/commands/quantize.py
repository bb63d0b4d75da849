"""``lumpver quantize``: symmetric uniform weight quantisation (DESIGN.md §8), QDQ export,
and with ``--input-set`` a ``bounded`` certificate of the error (lumpver/reductions/certify.py)."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes
from lumpver.specs.norm_names import NORMS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model to quantise")
    p.add_argument("-o", "--output", required=True, help="quantised ONNX model to write")
    p.add_argument("--bits", type=int, choices=[8, 4], default=8, help="bits per weight (4-bit values stored in int8)")
    p.add_argument("--per-channel", action="store_true", help="one scale per output channel (default per tensor)")
    p.add_argument("--input-set", help="certify the quantisation error on this set (.vnnlib or .toml)")
    p.add_argument("--certificate", help="certificate JSON (default OUTPUT with .cert.json, with --input-set)")
    p.add_argument("--norm", choices=NORMS, default="linf", help="error norm certified")
    p.add_argument("--float-weights", action="store_true",
                   help="write dequantised float32 weights instead of int8 + DequantizeLinear")
    p.add_argument("--timeout", type=argtypes.seconds, default=120.0, help="seconds for certification")


def run(args: argparse.Namespace) -> int:
    from lumpver.api.reduce import apply_pass
    from lumpver.progress import Progress
    from lumpver.reductions.passes import QuantizePass

    progress = Progress(args.quiet)
    cert = args.certificate
    if cert and not args.input_set:
        progress.say("no certificate written: quantisation is certified only on an --input-set")
        cert = None
    quantize = QuantizePass(args.bits, args.per_channel, args.norm, args.float_weights, args.timeout)
    res = apply_pass(quantize, args.model, args.output, cert, args.input_set, progress)
    for line in res.summary:
        print(line)
    print(f"wrote {args.output}" + (f" and {res.certificate_path}" if res.certificate_path else ""))
    return 0
