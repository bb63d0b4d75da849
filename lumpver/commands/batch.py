"""``lumpver batch instances.csv``: a benchmark suite in parallel, with summary.csv and summary.md."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("instances", help="CSV with rows onnx,vnnlib,timeout_s (paths relative to its folder)")
    p.add_argument("--jobs", type=argtypes.positive_int, default=None, help="instances run at the same time (default: the number of cores)")
    p.add_argument("--timeout-scale", type=argtypes.positive, default=1.0, help="multiply every instance's timeout by F")
    p.add_argument("--out", default="lumpver-batch", help="folder for summary.csv, summary.md and results/")
    p.add_argument("--reduce", action="store_true", help="verify after the on-set reduction (lumpver verify --reduce)")
    p.add_argument("--backend", help="back-end passed to lumpver verify (default: its own)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: a process pool on this machine (default); ray: Ray tasks (pip install 'lumpver[ray]')")
    p.add_argument("--address", metavar="HOST:PORT", help="with --engine ray: the Ray cluster to join "
                                                          "(default: an in-process local cluster)")


def run(args: argparse.Namespace) -> int:
    from lumpver.api.batch import run_batch
    from lumpver.errors import InputError
    from lumpver.progress import Progress

    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    if args.address is not None and args.engine != "ray":
        raise InputError("--address needs --engine ray")
    if args.engine == "ray":
        from lumpver.api.batch_ray import run_batch_ray

        res = run_batch_ray(args.instances, args.out, args.jobs, args.timeout_scale, args.reduce, args.backend,
                            Progress(args.quiet), args.address)
    else:
        res = run_batch(args.instances, args.out, args.jobs, args.timeout_scale, args.reduce, args.backend,
                        Progress(args.quiet))
    print(", ".join(f"{n} {r}" for r, n in res.counts.items() if n) + f" in {res.wall_seconds:.1f} s; "
          f"summary in {res.out_dir / 'summary.md'}")
    return 0
