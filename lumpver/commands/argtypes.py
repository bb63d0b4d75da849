"""Argument types that refuse nonsensical numbers at parse time (exit 2, one line; CONTRACT.md).

Each is an ``argparse`` ``type=`` callable: it returns the parsed value or raises
``argparse.ArgumentTypeError`` with the reason, which :mod:`lumpver.cli` prints as
``lumpver COMMAND: error: argument --NAME: REASON``.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _checked(test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        v = _number(text)
        if not test(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v

    parse.__name__ = what  # argparse names the type in some messages
    return parse


#: wall-clock seconds, epsilons, fractions
seconds = _checked(lambda v: v > 0, "> 0 seconds")
positive = _checked(lambda v: v > 0, "> 0")
nonnegative = _checked(lambda v: v >= 0, ">= 0")
keep_fraction = _checked(lambda v: 0 < v <= 1, "in (0, 1]")
open_unit = _checked(lambda v: 0 < v < 1, "in (0, 1)")


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (recorded by :func:`lumpver.cli.main`), for reports."""
    import shlex

    return "lumpver " + shlex.join(getattr(args, "_argv", None) or [])


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v
