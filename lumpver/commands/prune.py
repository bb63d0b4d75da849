"""``lumpver prune``: magnitude, coreset or confident (Learn then Test) pruning (CONTRACT.md).

Methods are looked up in :data:`METHODS` (name -> ``"module:function"``, imported on use); each
function takes ``(args, progress)`` and returns the exit code. ``coreset`` is a hook for
DESIGN.md §6: its module adds the method when it exists (and may add options in
:func:`add_arguments`).
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: method name -> "module:function(args, progress) -> int".
METHODS = {
    "magnitude": "lumpver.commands.prune:run_magnitude",
    "confident": "lumpver.commands.prune:run_confident",
    "coreset": "lumpver.commands.prune_coreset:run",  # DESIGN.md §6
}


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model to prune")
    p.add_argument("-o", "--output", required=True, help="pruned ONNX model to write")
    p.add_argument("--method", required=True, choices=list(METHODS), help="pruning method")
    p.add_argument("--certificate", help="certificate JSON to write")
    g = p.add_argument_group("magnitude / coreset")
    g.add_argument("--keep", type=_fraction, help="fraction of hidden weights (or neurons) to keep, in (0, 1]")
    g.add_argument("--granularity", choices=("weight", "neuron"), default="weight",
                   help="prune single weights or whole hidden neurons (default weight)")
    g.add_argument("--scope", choices=("global", "layer"),
                   help="rank magnitudes over all hidden layers or per layer "
                        "(default: global for weights, layer for neurons, whose scores differ in scale across layers)")
    g.add_argument("--input-set", help="certify the pruning error on this set (.vnnlib or .toml)")
    g.add_argument("--seed", type=int, default=0, help="random seed (sampling methods)")
    c = p.add_argument_group("confident (Learn then Test, DESIGN.md section 7)")
    c.add_argument("--calibration", help=".npz with 'x' (n inputs) and optional integer labels 'y'")
    c.add_argument("--alpha", type=_fraction, help="risk level: expected loss <= alpha")
    c.add_argument("--delta", type=_fraction, help="error probability: the guarantee holds w.p. >= 1 - delta")
    c.add_argument("--grid", help="pruning levels, increasing: 'a,b,c' or 'start:stop:step' "
                                  "(default 0.10:0.95:0.05)")
    c.add_argument("--loss", default="disagreement",
                   choices=("disagreement", "zero-one", "deviation", "deviation-clipped"),
                   help="per-sample loss (default disagreement of top-1 with the dense model)")
    c.add_argument("--threshold", type=float, help="T for the deviation losses (||f - g||_inf > T)")
    c.add_argument("--pvalue", default="auto", choices=("auto", "binomial", "hb"),
                   help="auto: exact binomial for 0-1 losses, Hoeffding-Bentkus otherwise")
    c.add_argument("--procedure", default="fixed-sequence", choices=("fixed-sequence", "bonferroni", "holm"),
                   help="family-wise error control (default fixed-sequence from the least pruning)")
    c.add_argument("--evaluator", default="onnxruntime", choices=("onnxruntime", "float32"),
                   help="how model outputs are computed (default onnxruntime on the ONNX files)")


def run(args: argparse.Namespace) -> int:
    from lumpver.errors import InputError
    from lumpver.progress import Progress

    module, func = METHODS[args.method].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise InputError(f"pruning method {args.method!r} is not available in this build", args.model) from None
    return int(getattr(mod, func)(args, Progress(quiet=args.quiet)) or 0)


# ----- shared steps --------------------------------------------------------------------------


def _load(args):
    from lumpver.fileio import check_output_path
    from lumpver.ir.onnx_import import load_onnx

    inputs = [args.model] + [getattr(args, k) for k in ("calibration", "input_set") if getattr(args, k, None)]
    check_output_path(args.output, inputs)
    if args.certificate:
        check_output_path(args.certificate, inputs + [args.output])
    return load_onnx(args.model)


def parse_grid(text: str | None) -> tuple[float, ...]:
    """``'a,b,c'`` or ``'start:stop:step'`` (stop included) -> levels; InputError if malformed."""
    from lumpver.reductions.confident import DEFAULT_GRID
    from lumpver.errors import InputError

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


# ----- magnitude -----------------------------------------------------------------------------


def run_magnitude(args, progress) -> int:
    """Deterministic magnitude pruning to ``--keep``; a certificate only with ``--input-set``."""
    import time

    from lumpver.errors import InputError
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.reductions.pruning import magnitude_prune, sparsity

    if args.keep is None:
        raise InputError(f"--method {args.method} needs --keep FRACTION", args.model)
    if not 0.0 < args.keep <= 1.0:
        raise InputError(f"--keep must lie in (0, 1], got {args.keep}", args.model)
    scope = args.scope or ("global" if args.granularity == "weight" else "layer")
    net = _load(args)
    t0 = time.perf_counter()
    pruned = magnitude_prune(net, args.keep, args.granularity, scope)
    certify = _bounded_certifier() if args.input_set else None
    if args.input_set and certify is None:
        raise InputError("certifying pruning on --input-set needs the bounded-error certifier "
                         "(DESIGN.md section 5), which this build lacks; run without --input-set", args.input_set)
    save_onnx(pruned, args.output)
    progress.say(f"magnitude pruning ({args.granularity}, {scope}) kept {args.keep}: hidden widths "
                 f"{net.hidden_widths} -> {pruned.hidden_widths}, hidden-weight sparsity {sparsity(pruned):.3f}")
    if certify is not None:
        return int(certify(args, net, pruned, time.perf_counter() - t0, progress) or 0)
    if args.certificate:
        print("lumpver prune: note: no certificate written; magnitude pruning is certified only on an --input-set",
              file=sys.stderr)
    print(f"wrote {args.output}")
    return 0


#: the bounded-error certifier of pruned models on an input set (DESIGN.md §5; issue 6).
BOUNDED_CERTIFIER = "lumpver.reductions.certify:certify_reduction"


def _bounded_certifier():
    """Hook for bounded-error certification of a pruned model on ``--input-set``.

    Returns the callable ``(args, original, pruned, seconds, progress) -> exit code`` named by
    :data:`BOUNDED_CERTIFIER` when its module exists, else None.
    """
    module, func = BOUNDED_CERTIFIER.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return None
    return getattr(mod, func, None)


# ----- confident -------------------------------------------------------------------------------


def run_confident(args, progress) -> int:
    """Learn then Test over global magnitude-pruning levels; abstain (exit 1, no file) if none passes."""
    from lumpver.specs.calibration import load_calibration
    from lumpver.certificates.format import file_ref, make_certificate, model_stats
    from lumpver.reductions.confident import ConfidentConfig, confident_prune, evidence, guarantee
    from lumpver.errors import CheckFailed, InputError
    from lumpver.fileio import write_json_atomic
    from lumpver.ir.onnx_export import save_onnx

    for name in ("calibration", "alpha", "delta"):
        if getattr(args, name) is None:
            raise InputError(f"--method confident needs --{name}", args.model)
    config = ConfidentConfig(args.alpha, args.delta, parse_grid(args.grid), args.loss, args.threshold,
                             args.pvalue, args.procedure, args.evaluator)
    try:
        config.validate()
    except ValueError as e:
        raise InputError(str(e), args.model) from None
    net = _load(args)
    calib = load_calibration(args.calibration, net.n_inputs, net.n_outputs, need_labels=args.loss == "zero-one")
    progress.say(f"confident pruning: n={calib.n}, loss={config.loss}, p-value={config.pvalue_method}, "
                 f"{config.procedure}, alpha={config.alpha}, delta={config.delta}, {len(config.levels)} levels")
    result = confident_prune(net, args.model, calib, config, progress)
    sel = result.selection
    for level, r, p in zip(config.levels, sel.risks, sel.pvalues):
        progress.say(f"  level {level:.4g}: empirical risk {r:.4f}, p-value {p:.3g}")
    if result.abstained:
        raise CheckFailed(f"abstained: no pruning level passed the {config.procedure} test at delta {config.delta} "
                          f"(p-value at the least pruning {config.levels[0]}: {sel.pvalues[0]:.3g}; smallest: "
                          f"{min(sel.pvalues):.3g}); no model written")
    save_onnx(result.reduced, args.output)
    if args.certificate:
        stats = model_stats(net, result.reduced, result.seconds)
        stats.update(nonzero_params_before=_nonzero(net), nonzero_params_after=_nonzero(result.reduced))
        cert = make_certificate(args.model, args.output, guarantee(result), stats,
                                [evidence(result, file_ref(args.calibration, _cert_base(args.certificate)))],
                                args.certificate)
        write_json_atomic(args.certificate, cert)
    print(f"pruned {result.level:.4g} of the hidden weights (p = {sel.pvalues[sel.chosen]:.3g} < delta = "
          f"{config.delta}): expected {config.loss} loss <= {config.alpha} with confidence {1 - config.delta:g}")
    print(f"wrote {args.output}" + (f" and {args.certificate}" if args.certificate else ""))
    return 0


def _nonzero(net) -> int:
    """Nonzero weights and biases (the size that pruning actually changes)."""
    import numpy as np

    return sum(int(np.count_nonzero(l.weight)) + int(np.count_nonzero(l.bias)) for l in net.layers)


def _cert_base(cert_path: str):
    from pathlib import Path

    return Path(cert_path).resolve().parent
