"""The ``lumpver`` command line: a thin layer over the Python API (CONTRACT.md).

Each command lives in ``lumpver/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import at module level only what their arguments need
(the standard library and small constant tables such as :mod:`lumpver.specs.norms`) so that the
CLI starts fast; the API (and through it the solvers) is imported inside ``run``.

Exit codes: 0 success, 1 a requested check does not hold, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lumpver import __version__
from lumpver.errors import CheckFailed, InputError
from lumpver.progress import Heartbeat

#: command name -> one-line help. Module: lumpver.commands.<name>.
COMMANDS = {
    "reduce": "reduce a network (exact, on-set or approximate) and write a certificate",
    "check": "re-check a certificate from the model files alone",
    "compare": "decide or bound sup ||A(x) - B(x)|| over an input set",
    "bound": "certified upper bound and falsified lower bound of ||A(x) - B(x)||",
    "verify": "check a VNN-LIB property (VNN-COMP result format)",
    "prune": "magnitude, coreset or confident (Learn-then-Test) pruning",
    "quantize": "symmetric uniform quantisation, optionally certified",
    "run": "run everything a spec file declares and write reports",
    "batch": "run a suite of instances (instances.csv) in parallel",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` for every option with a default worth stating (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        d = action.default
        if d is None or d is False or d == [] or d is argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit 2 (CONTRACT.md), not the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lumpver", description="Make neural networks smaller, with proof.", formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"lumpver {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (also after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"lumpver.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        # SUPPRESS: a -q given before the command is not reset by the sub-parser's default
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress on stderr")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad arguments (exit 2, one line already printed), --help, --version
        return e.code if isinstance(e.code, int) else 2
    args._argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "_module", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        with Heartbeat(f"lumpver {args.command}", quiet=args.quiet, limit=getattr(args, "timeout", None)):
            return int(args._module.run(args) or 0)
    except InputError as e:
        print(f"lumpver {args.command}: error: {e}", file=sys.stderr)
        return 2
    except CheckFailed as e:
        print(f"lumpver {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lumpver {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
