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
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Protocol, Sequence

import numpy as np

from lumpver.specs.inputset import InputSet, OutputProperty
from lumpver.ir.network import Network

VERDICTS = ("proved", "violated", "unknown")


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

    # ----- combinators (one place for how answers of several stages or cases combine) -----------
    @staticmethod
    def best_lower(verdicts: Iterable["Verdict"]) -> Optional[float]:
        """The largest attained value (``lower_bound``) any verdict reports; None if none does."""
        values = [v.lower_bound for v in verdicts if v.lower_bound is not None]
        return max(values) if values else None

    @staticmethod
    def tightest_upper(verdicts: Iterable["Verdict"]) -> Optional[float]:
        """The smallest finite certified ``upper_bound`` among the verdicts that are not ``violated``."""
        values = [v.upper_bound for v in verdicts
                  if v.verdict != "violated" and v.upper_bound is not None and math.isfinite(v.upper_bound)]
        return min(values) if values else None

    @classmethod
    def conjunction(cls, verdicts: Sequence["Verdict"], backend: str) -> "Verdict":
        """The verdict on a union of cases: the first ``violated``; else ``unknown`` when any case
        is (the reasons, in order); else ``proved`` (also for no case: nothing to refute)."""
        for v in verdicts:
            if v.verdict == "violated":
                return v
        open_ = [v.reason for v in verdicts if v.verdict == "unknown"]
        seconds = sum(v.seconds for v in verdicts)
        if open_:
            return cls("unknown", backend, "; ".join(open_), seconds=seconds)
        return cls("proved", backend, f"all {len(verdicts)} case(s) proved", seconds=seconds)

    # ----- JSON -------------------------------------------------------------------------------
    def report_json(self, **context: Any) -> dict[str, Any]:
        """The ``--json`` document of ``lumpver compare`` / ``bound`` (CONTRACT.md): the verdict fields,
        then ``context`` (norm, epsilon, models, input set), then the details as plain JSON."""
        cex = None if self.counterexample is None else [float(t) for t in np.asarray(self.counterexample).reshape(-1)]
        return {"verdict": self.verdict, "upper_bound": self.upper_bound, "lower_bound": self.lower_bound,
                "counterexample": cex, "seconds": round(self.seconds, 6), "backend": self.backend,
                "reason": self.reason, **context, "details": jsonable(self.details)}

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


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON: numpy values converted, non-finite floats as strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


@dataclass
class SearchStats:
    """Counters of an input-splitting search, for a verdict's ``details`` (JSON via :meth:`as_dict`:
    floats rounded to 4 digits, lists cut to their first 20 entries)."""

    boxes: int = 0
    closed_by_bounds: int = 0

    def as_dict(self) -> dict[str, Any]:
        def shown(v: Any) -> Any:
            if isinstance(v, float):
                return round(v, 4)
            if isinstance(v, list):
                return [getattr(x, "__dict__", x) for x in v[:20]]
            return v

        return {k: shown(v) for k, v in self.__dict__.items()}


class Backend(Protocol):
    """What every back-end module provides (as a class or object named ``BACKEND``)."""

    name: str

    def check(self, query: Query) -> Verdict:  # pragma: no cover - protocol
        ...


#: back-end name -> "module:attribute"; modules are imported only when asked for.
REGISTRY = {
    "interval": "lumpver.verifiers.interval:BACKEND",
    "smt": "lumpver.verifiers.smt:BACKEND",
    "bab": "lumpver.verifiers.bab:BACKEND",
    "bab_diff": "lumpver.verifiers.bab_diff:BACKEND",
    "graph_diff": "lumpver.verifiers.graph_diff:BACKEND",
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
