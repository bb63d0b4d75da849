"""``lumpver check CERT.json``: re-check a certificate from the model files alone (exit 0 holds, 1 not)."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("certificate", help="certificate JSON written by lumpver")
    p.add_argument("--workers", type=argtypes.positive_int, default=1,
                   help="processes replaying the ReLU-phase trees of bab_diff evidence (default 1)")


def run(args: argparse.Namespace) -> int:
    from lumpver.certificates.format import check_certificate  # lazy: keeps the CLI start fast

    report = check_certificate(args.certificate, args.workers)
    if not args.quiet:
        for line in report.lines:
            print(line)
    print("holds" if report.holds else "does not hold")
    return 0 if report.holds else 1
