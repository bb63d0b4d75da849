"""The back-end interface and the verdict type (DESIGN.md §5).

A query is either an *equivalence* question — is ``sup_{x in X} ||f(x) - g(x)|| <= epsilon``
for two networks — or a *property* question — does network f map every x in X outside the
unsafe output set (VNN-LIB convention). Every back-end answers with a :class:`Verdict`:

* ``proved``   — the claim holds on all of X (sound: never a guess);
* ``violated`` — a counterexample ``x`` in X is attached, replayed on the original ONNX files;
* ``unknown``  — with ``reason`` (timeout, solver error, numerical doubt, incomplete method).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from lumpver.specs.inputset import InputSet, OutputProperty
from lumpver.ir.network import Network

VERDICTS = ("proved", "violated", "unknown")
NORMS = ("linf", "l1", "l2", "top1")


@dataclass
class Query:
    """What a back-end is asked. Exactly one of ``other`` (equivalence) or ``prop`` is set."""

    network: Network
    input_set: InputSet
    other: Optional[Network] = None  # the reduced network g, for equivalence queries
    epsilon: float = 0.0
    norm: str = "linf"
    prop: Optional[OutputProperty] = None
    timeout: float = 60.0  # seconds, wall clock
    memory_mb: Optional[int] = None
    seed: int = 0
    quiet: bool = True


@dataclass
class Verdict:
    """The one answer type of every back-end."""

    verdict: str  # one of VERDICTS
    backend: str
    reason: str = ""
    counterexample: Optional[np.ndarray] = None  # raw flattened input x
    upper_bound: Optional[float] = None  # certified sup ||f - g|| (equivalence) or None
    lower_bound: Optional[float] = None  # attained ||f(x) - g(x)|| at some x (falsifier)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # back-end evidence for certificates

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == "violated" and self.counterexample is None:
            raise ValueError("a violated verdict needs a counterexample")

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "verdict": self.verdict,
            "reason": self.reason,
            "counterexample": None if self.counterexample is None else np.asarray(self.counterexample).tolist(),
            "upper_bound": self.upper_bound,
            "lower_bound": self.lower_bound,
            "seconds": self.seconds,
            **({"details": self.details} if self.details else {}),
        }


class Backend(Protocol):
    """What every back-end module provides (as a class or object named ``BACKEND``)."""

    name: str

    def check(self, query: Query) -> Verdict:  # pragma: no cover - protocol
        ...


#: back-end name -> "module:attribute"; modules are imported only when asked for.
REGISTRY = {
    "interval": "lumpver.verifiers.interval:BACKEND",
    "smt": "lumpver.verifiers.smt:BACKEND",
    "sdp": "lumpver.verifiers.sdp:BACKEND",
    "falsify": "lumpver.verifiers.falsify:BACKEND",
    "marabou": "lumpver.verifiers.marabou:BACKEND",
}


def get_backend(name: str) -> Backend:
    """The back-end registered under ``name`` (imports its module on first use)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown back-end {name!r}; known: {', '.join(REGISTRY)}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)
