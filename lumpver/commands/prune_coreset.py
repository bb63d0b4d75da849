"""``lumpver prune --method coreset`` (DESIGN.md §6): sensitivity-sampled neuron pruning; with
``--input-set`` the actual error is certified (kind ``bounded``, lumpver/reductions/certify.py)."""
from __future__ import annotations


def run(args, progress) -> int:
    import time

    from lumpver.commands.prune import _load
    from lumpver.reductions.coreset import coreset_prune, input_betas
    from lumpver.errors import InputError
    from lumpver.ir.onnx_export import save_onnx

    if args.keep is None or not 0.0 < args.keep <= 1.0:
        raise InputError(f"--keep must lie in (0, 1], got {args.keep}", args.model)
    net = _load(args)
    t0 = time.perf_counter()
    input_set = None
    if args.input_set:
        from lumpver.reductions.certify import load_set_for

        input_set = load_set_for(args.input_set, net.n_inputs)
    betas = input_betas(net, input_set) if input_set is not None else 1.0
    res = coreset_prune(net, args.keep, betas, seed=args.seed)
    save_onnx(res.reduced, args.output)
    bound = sum(lc.coreset_bound for lc in res.layers)
    progress.say(f"coreset pruning kept {args.keep}: hidden widths {net.hidden_widths} -> {res.reduced.hidden_widths}; "
                 f"coreset (probabilistic) bound indication {bound:.4g}")
    if input_set is None:
        if args.certificate:
            progress.say("no certificate written: coreset pruning is certified only on an --input-set")
        print(f"wrote {args.output}")
        return 0
    from lumpver.reductions.certify import Chain, certify_files

    method = {"method": "coreset", "keep": args.keep, "seed": args.seed, "betas": betas,
              "coreset_bound": bound, "coreset_bound_note": "sensitivity-framework indication with constant 1 and "
              "delta 0.1 (probabilistic, not certified)", "layers": [lc.to_json() for lc in res.layers]}
    try:
        cert = certify_files(args.model, args.output, args.certificate, input_set, "linf", Chain(kept=res.kept),
                             method, time.perf_counter() - t0, progress=progress)
    except BaseException:
        from pathlib import Path

        Path(args.output).unlink(missing_ok=True)
        raise
    print(f"bounded: linf error <= {cert['guarantee']['epsilon']:.6g} on the input set (coreset indication "
          f"{bound:.4g}); wrote {args.output}")
    return 0
