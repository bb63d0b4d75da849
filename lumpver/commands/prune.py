"""``lumpver prune``: magnitude, coreset or confident (Learn then Test) pruning (CONTRACT.md);
the passes are in :mod:`lumpver.reductions.passes` (DESIGN.md §5-§7)."""
from __future__ import annotations

import argparse
import sys

from lumpver.commands import argtypes

METHODS = ("magnitude", "coreset", "confident")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model to prune")
    p.add_argument("-o", "--output", required=True, help="pruned ONNX model to write")
    p.add_argument("--method", required=True, choices=METHODS, help="pruning method")
    p.add_argument("--certificate", help="certificate JSON to write")
    g = p.add_argument_group("magnitude / coreset")
    g.add_argument("--keep", type=argtypes.keep_fraction,
                   help="fraction of hidden weights (or neurons, channels, filters) to keep, in (0, 1]")
    g.add_argument("--granularity", choices=("weight", "neuron", "channel"),
                   help="prune single weights (conv filters' entries included), whole hidden neurons (dense "
                        "networks) or whole channels (a conv filter with the next layer's weights reading it; a "
                        "dense neuron is a channel; on a graph with residual Add/Concat/MaxPool the pruned channels "
                        "are zeroed and removed where their whole linked group goes, the rest stay zeroed). Default: "
                        "weight for magnitude; for confident the family is channel on a CNN and weight on a dense "
                        "network; coreset always samples neurons/filters (on a graph: of the conv/dense nodes read "
                        "only by conv/dense nodes)")
    g.add_argument("--scope", choices=("global", "layer"),
                   help="rank magnitudes over all hidden layers or per layer "
                        "(default: global for weights, layer for neurons, whose scores differ in scale across layers)")
    g.add_argument("--input-set", help="certify the pruning error on this set (.vnnlib or .toml)")
    g.add_argument("--seed", type=int, default=0, help="random seed (sampling methods)")
    g.add_argument("--timeout", type=argtypes.seconds, default=120.0,
                   help="seconds for certifying the error on --input-set (default 120)")
    c = p.add_argument_group("confident (Learn then Test, DESIGN.md section 7)")
    c.add_argument("--calibration", help=".npz with 'x' (n inputs) and optional integer labels 'y'")
    c.add_argument("--alpha", type=argtypes.open_unit, help="risk level: expected loss <= alpha")
    c.add_argument("--delta", type=argtypes.open_unit, help="error probability: the guarantee holds w.p. >= 1 - delta")
    c.add_argument("--grid", help="pruning levels, increasing: 'a,b,c' or 'start:stop:step' "
                                  "(default 0.10:0.95:0.05)")
    c.add_argument("--loss", default="disagreement",
                   choices=("disagreement", "zero-one", "deviation", "deviation-clipped"),
                   help="per-sample loss (default disagreement of top-1 with the dense model)")
    c.add_argument("--threshold", type=argtypes.positive, help="T for the deviation losses (||f - g||_inf > T)")
    c.add_argument("--pvalue", default="auto", choices=("auto", "binomial", "hb"),
                   help="auto: exact binomial for 0-1 losses, Hoeffding-Bentkus otherwise")
    c.add_argument("--procedure", default="fixed-sequence", choices=("fixed-sequence", "bonferroni", "holm"),
                   help="family-wise error control (default fixed-sequence from the least pruning)")
    c.add_argument("--evaluator", default="onnxruntime", choices=("onnxruntime", "float32"),
                   help="how model outputs are computed (default onnxruntime on the ONNX files)")


def run(args: argparse.Namespace) -> int:
    from lumpver.api.reduce import apply_pass
    from lumpver.progress import Progress

    cert = args.certificate
    if args.method != "confident" and args.certificate and not args.input_set:
        print(f"lumpver prune: note: no certificate written; {args.method} pruning is certified only on an "
              "--input-set", file=sys.stderr)
        cert = None
    res = apply_pass(_pass(args), args.model, args.output, cert, args.input_set, Progress(quiet=args.quiet))
    for line in res.summary:
        print(line)
    print(f"wrote {args.output}" + (f" and {res.certificate_path}" if res.certificate_path else ""))
    return 0


def _pass(args: argparse.Namespace):
    from lumpver.errors import InputError
    from lumpver.reductions.confident import ConfidentConfig
    from lumpver.reductions.passes import ConfidentPass, CoresetPass, MagnitudePrunePass

    if args.method == "magnitude":
        return MagnitudePrunePass(args.keep, args.granularity or "weight", args.scope, args.timeout)
    if args.method == "coreset":
        return CoresetPass(args.keep, args.seed, args.timeout)
    for name in ("calibration", "alpha", "delta"):
        if getattr(args, name) is None:
            raise InputError(f"--method confident needs --{name}", args.model)
    if args.granularity == "neuron":
        raise InputError("--method confident prunes weights or channels (--granularity weight|channel)", args.model)
    config = ConfidentConfig(args.alpha, args.delta, parse_grid(args.grid), args.loss, args.threshold,
                             args.pvalue, args.procedure, args.evaluator, args.granularity or "auto")
    return ConfidentPass(args.calibration, config, write_certificate=bool(args.certificate))


def parse_grid(text: str | None) -> tuple[float, ...]:
    """``'a,b,c'`` or ``'start:stop:step'`` (stop included) -> levels; InputError if malformed."""
    from lumpver.errors import InputError
    from lumpver.reductions.confident import DEFAULT_GRID

    if text is None:
        return DEFAULT_GRID
    try:
        if ":" in text:
            start, stop, step = (float(t) for t in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(round((stop - start) / step + 1e-9)) + 1
            return tuple(round(start + i * step, 12) for i in range(n))
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise InputError(f"malformed --grid {text!r} (use 'a,b,c' or 'start:stop:step')") from None
