"""Error types shared by the package; the CLI maps them to exit codes (CONTRACT.md)."""
from __future__ import annotations


class LumpverError(Exception):
    """Base class of lumpver's own errors."""


class InputError(LumpverError):
    """Bad input (malformed/unsupported model, spec or data file): exit code 2.

    The message is one line naming the file and, where there is one, the place
    (``file:line:col`` or the ONNX node).
    """

    def __init__(self, message: str, path: str | None = None, where: str | None = None) -> None:
        self.path = path
        self.where = where
        prefix = path or ""
        if where:
            prefix = f"{prefix}:{where}" if prefix else where
        super().__init__(f"{prefix}: {message}" if prefix else message)


class CheckFailed(LumpverError):
    """A check that was asked for does not hold: exit code 1."""
