"""The Python API behind ``lumpver verify``: VNN-LIB properties in the VNN-COMP result format
(CONTRACT.md; DESIGN.md §3, §5).

A property is a union of cases ``(input region, unsafe output polytopes)``. The model is
``unsat`` (safe) when every case is proved, ``sat`` when one case has a counterexample, else
``timeout`` or ``unknown``; an exception inside a back-end gives ``error``. A ``sat`` answer
is always replayed with onnxruntime on the ORIGINAL model: the input must lie in the case's
region and the onnxruntime output in its unsafe set, or the case counts as ``unknown``.
``auto`` runs branch and bound (back-end ``bab``, ``workers`` processes), then smt on an early unknown
(chain networks only: a graph network, with residual Add, Concat or MaxPool, goes to bab or falsify).
With ``reduce=True`` each case goes through :func:`lumpver.api.reduce_verify.verify_case_reduced`
(falsifier on the original, bounds-driven split, on-set reduction of each open sub-box, the
back-end on each reduced network against the unsafe set widened by its certified discrepancy).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from lumpver.api.reduce_verify import verify_case_reduced
from lumpver.errors import InputError
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_import import load_model
from lumpver.ir.runtime import run_onnx
from lumpver.progress import SILENT, Progress
from lumpver.ir.network import require_logits
from lumpver.specs.inputset import InputSet
from lumpver.specs.vnnlib import read_vnnlib
from lumpver.verifiers.bab import BabBackend, BabOptions
from lumpver.verifiers.base import Query, Verdict, get_backend
from lumpver.verifiers.falsify import CONTAINS_TOL

BACKENDS = ("bab", "smt", "marabou", "auto", "falsify", "interval")
RESULTS = ("sat", "unsat", "unknown", "timeout", "error")
#: back-ends that take a graph network (residual Add, Concat, MaxPool)
GRAPH_BACKENDS = ("auto", "bab", "falsify")


@dataclass
class VerifyResult:
    result: str  # one of RESULTS
    reason: str = ""
    x: Optional[np.ndarray] = None  # counterexample input (raw, flattened), after sat
    y: Optional[np.ndarray] = None  # onnxruntime output of the original model at x
    seconds: float = 0.0
    cases: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, v: Verdict, seconds: float, cases: list[dict[str, Any]]) -> "VerifyResult":
        """The VNN-COMP answer to a proved or unknown property verdict (``sat`` is built with its replay)."""
        if v.verdict == "proved":
            return cls("unsat", v.reason, seconds=seconds, cases=cases)
        reasons = v.reason.split("; ")
        return cls("timeout" if any("timeout" in r for r in reasons) else "unknown", "; ".join(reasons[:3]),
                   seconds=seconds, cases=cases)

    def text(self) -> str:
        """The VNN-COMP result file."""
        if self.result != "sat":
            return self.result + "\n"
        items = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.y)]
        return "sat\n(" + "\n".join(items) + ")\n"


def replay_case(model_path, case, x: np.ndarray) -> tuple[bool, np.ndarray]:
    """onnxruntime output at ``x`` and whether it is a genuine witness for ``case``."""
    y = run_onnx(model_path, np.asarray(x, dtype=np.float32))[0]
    ok = case.region.contains(x, tol=CONTAINS_TOL) and case.unsafe.is_unsafe(y, tol=0.0)
    return ok, y


def _backend_for(name: str, workers: int, progress: Progress, options: Optional[BabOptions] = None):
    """The back-end object for ``name``; ``auto`` is :class:`_Auto` (bab, then smt on what is left)."""
    if name == "auto":
        return _Auto(_bab(workers, progress, options))
    return _bab(workers, progress, options) if name == "bab" else get_backend(name)


def _bab(workers: int, progress: Progress, options: Optional[BabOptions] = None) -> BabBackend:
    return BabBackend(replace(options or BabOptions(), workers=max(1, int(workers)), progress=progress))


class _Auto:
    """``auto``: branch and bound (DESIGN.md §11); when it stops early with ``unknown`` (not a
    timeout), the smt back-end (input splitting + z3) gets the time left."""

    name = "auto"

    def __init__(self, bab: BabBackend) -> None:
        self.bab = bab

    def check(self, query: Query) -> Verdict:
        t0 = time.monotonic()
        v = self.bab.check(query)
        left = query.timeout - (time.monotonic() - t0)
        if v.verdict != "unknown" or "timeout" in v.reason or left < 1.0 or isinstance(query.network, GraphNetwork):
            return v
        q = Query(query.network, query.input_set, prop=query.prop, timeout=left, seed=query.seed)
        w = get_backend("smt").check(q)
        w.reason = f"bab: {v.reason}; smt: {w.reason}"
        return w


def verify_property(
    model_path: str | os.PathLike,
    prop_path: str | os.PathLike,
    backend: str = "auto",
    reduce: bool = False,
    timeout: float = 60.0,
    progress: Progress = SILENT,
    workers: int = 1,
    bab_options: Optional[BabOptions] = None,
) -> VerifyResult:
    """Check a VNN-LIB property (module docstring). InputError on bad files or sizes. ``bab_options``: the
    search knobs of ``bab``/``auto`` (defaults: :class:`BabOptions`; ``workers`` and ``progress`` override)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown back-end {backend!r}; expected one of {', '.join(BACKENDS)}")
    t0 = time.monotonic()
    net = load_model(model_path)
    require_logits(net, "verify")
    if isinstance(net, GraphNetwork) and (reduce or backend not in GRAPH_BACKENDS):
        net.require_chain("verify --reduce" if reduce else f"verify --backend {backend}", str(model_path))
    spec = read_vnnlib(prop_path, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    be = _backend_for(backend, workers, progress, bab_options)
    verdicts: list[Verdict] = []
    cases: list[dict[str, Any]] = []
    for i, case in enumerate(spec.cases):
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            verdicts.append(Verdict("unknown", be.name, "timeout"))
            break
        try:
            if reduce:
                v, note = verify_case_reduced(net, case.region, case.unsafe, be, left)
            else:
                v, note = be.check(Query(net, InputSet([case.region]), prop=case.unsafe, timeout=left)), {}
        except Exception as e:  # a back-end crash is 'error', never a verdict
            return VerifyResult("error", f"case {i}: {type(e).__name__}: {e}", seconds=time.monotonic() - t0, cases=cases)
        cases.append({"case": i, "verdict": v.verdict, "backend": v.backend, "reason": v.reason,
                      "seconds": round(v.seconds, 4), **note})
        progress.say(f"case {i + 1}/{len(spec.cases)}: {v.verdict} ({v.reason})")
        if v.verdict == "violated":
            ok, y = replay_case(model_path, case, v.counterexample)
            if ok:
                return VerifyResult("sat", f"case {i}: {v.reason}; replayed with onnxruntime", np.asarray(v.counterexample),
                                    np.asarray(y), time.monotonic() - t0, cases)
            v = Verdict("unknown", v.backend, "counterexample not reproduced by onnxruntime")
        verdicts.append(Verdict(v.verdict, v.backend, f"case {i}: {v.reason}") if v.verdict == "unknown" else v)
    return VerifyResult.of(Verdict.conjunction(verdicts, be.name), time.monotonic() - t0, cases)
