"""``lumpver run SPEC.toml [--out DIR]``: everything a spec file declares, with certificates and reports."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the spec file (.toml)")
    p.add_argument("--out", help="output folder (default: the spec's [output] dir, else ./lumpver-out beside it)")
    p.add_argument("--no-recheck", action="store_true",
                   help="skip the independent re-check of each certificate (faster; the report says 'not run')")


def run(args: argparse.Namespace) -> int:
    from lumpver.api.run import run_spec

    res = run_spec(args.spec, args.out, quiet=args.quiet, recheck=not args.no_recheck)
    doc = res.document
    for s in doc["steps"]:
        st = s["stats"]
        print(f"step {s['index']} {s['method']}: hidden neurons {st['neurons_before']} -> {st['neurons_after']}"
              + (f"; certificate {res.out_dir / s['certificate_path']}" if s.get("certificate_path") else "; no certificate"))
    for b in doc["backends"]:
        print(f"back-end {b['backend']}: {b['verdict']}")
    print(f"reports in {res.out_dir}")
    ov = doc["overall"]
    print(ov.get("kind") or "none" if res.exit_code == 0 else "check failed")
    return res.exit_code
