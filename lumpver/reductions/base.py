"""The reduction-pass interface (DESIGN.md §2-§8; README "Architecture").

A pass reads one ONNX file and writes the reduced model and, when the method is certified in the
given context, its certificate. Both files appear or the model is removed again. ``lumpver
reduce|prune|quantize`` and ``lumpver run`` call passes through :func:`lumpver.api.reduce.apply_pass`;
a new reduction is a new class with ``name`` and ``apply`` (see :mod:`lumpver.reductions.passes`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

from lumpver.errors import InputError
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet


@dataclass
class PassContext:
    """What a pass may use besides its own options."""

    input_set: Optional[InputSet] = None  # the declared input set X (raw input space, DESIGN.md §3)
    progress: Progress = SILENT
    #: the model as the caller already loaded it from the pass's model file (a chain Network or a
    #: GraphNetwork), so a pass need not read the file again; None: the pass loads it
    model: Optional[Any] = None

    def need_input_set(self, what: str) -> InputSet:
        """The input set, or InputError naming what needs it."""
        if self.input_set is None:
            raise InputError(f"{what} needs an input set")
        return self.input_set


@dataclass
class ReductionResult:
    """The files one pass wrote."""

    model_path: Path
    certificate_path: Optional[Path] = None  # None: the method is not certified in this context
    certificate: Optional[dict[str, Any]] = None
    summary: list[str] = field(default_factory=list)  # result lines for the command line
    note: str = ""  # why there is no certificate, or an option that was not used


class ReductionPass(Protocol):
    """A reduction method with its options bound (a dataclass in practice)."""

    name: str

    def apply(self, model_path: Path, out_path: Path, cert_path: Path, ctx: PassContext) -> ReductionResult:
        """Write the reduced model to ``out_path`` and (when certified) the certificate to ``cert_path``."""
        ...  # pragma: no cover - protocol


def default_certificate_path(out_path: str | Path) -> Path:
    """``reduced.onnx`` -> ``reduced.cert.json``."""
    p = Path(out_path)
    return p.with_name(p.stem + ".cert.json")


@contextmanager
def remove_on_failure(path: str | Path) -> Iterator[None]:
    """Delete ``path`` when the block raises (never leave a model without its certificate)."""
    try:
        yield
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
