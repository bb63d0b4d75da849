"""The Python API behind ``lumpver verify``: VNN-LIB properties in the VNN-COMP result format
(CONTRACT.md; DESIGN.md §3, §5).

A property is a union of cases ``(input region, unsafe output polytopes)``. The model is
``unsat`` (safe) when every case is proved, ``sat`` when one case has a counterexample, else
``timeout`` or ``unknown``; an exception inside a back-end gives ``error``. A ``sat`` answer
is always replayed with onnxruntime on the ORIGINAL model: the input must lie in the case's
region and the onnxruntime output in its unsafe set, or the case counts as ``unknown``.
With ``reduce=True`` each case goes through :func:`lumpver.api.reduce_verify.verify_case_reduced`
(falsifier on the original, bounds-driven split, on-set reduction of each open sub-box, the
back-end on each reduced network against the unsafe set widened by its certified discrepancy).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lumpver.errors import InputError
from lumpver.ir.network import require_logits
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.base import Query, Verdict, get_backend

BACKENDS = ("smt", "marabou", "auto", "falsify", "interval")
RESULTS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass
class VerifyResult:
    result: str  # one of RESULTS
    reason: str = ""
    x: Optional[np.ndarray] = None  # counterexample input (raw, flattened), after sat
    y: Optional[np.ndarray] = None  # onnxruntime output of the original model at x
    seconds: float = 0.0
    cases: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        """The VNN-COMP result file."""
        if self.result != "sat":
            return self.result + "\n"
        items = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.y)]
        return "sat\n(" + "\n".join(items) + ")\n"


def replay_case(model_path, case, x: np.ndarray) -> tuple[bool, np.ndarray]:
    """onnxruntime output at ``x`` and whether it is a genuine witness for ``case``."""
    from lumpver.ir.runtime import run_onnx
    from lumpver.verifiers.falsify import CONTAINS_TOL

    y = run_onnx(model_path, np.asarray(x, dtype=np.float32))[0]
    ok = case.region.contains(x, tol=CONTAINS_TOL) and case.unsafe.is_unsafe(y, tol=0.0)
    return ok, y


def _backend_for(name: str) -> str:
    if name != "auto":
        return name
    return "smt"  # smt runs the falsifier first


def verify_property(
    model_path: str | os.PathLike,
    prop_path: str | os.PathLike,
    backend: str = "auto",
    reduce: bool = False,
    timeout: float = 60.0,
    progress=None,
) -> VerifyResult:
    """Check a VNN-LIB property (module docstring). InputError on bad files or sizes."""
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib

    if backend not in BACKENDS:
        raise InputError(f"unknown back-end {backend!r}; expected one of {', '.join(BACKENDS)}")
    t0 = time.monotonic()
    net = load_onnx(model_path)
    require_logits(net, "verify")
    spec = read_vnnlib(prop_path, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    be = get_backend(_backend_for(backend))
    res = VerifyResult("unsat")
    undecided: list[str] = []
    for i, case in enumerate(spec.cases):
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            undecided.append("timeout")
            break
        try:
            if reduce:
                from lumpver.api.reduce_verify import verify_case_reduced

                v, note = verify_case_reduced(net, case.region, case.unsafe, be, left)
            else:
                v, note = be.check(Query(net, InputSet([case.region]), prop=case.unsafe, timeout=left)), {}
        except Exception as e:  # a back-end crash is 'error', never a verdict
            return VerifyResult("error", f"case {i}: {type(e).__name__}: {e}", seconds=time.monotonic() - t0, cases=res.cases)
        res.cases.append({"case": i, "verdict": v.verdict, "backend": v.backend, "reason": v.reason,
                          "seconds": round(v.seconds, 4), **note})
        if progress is not None:
            progress.say(f"case {i + 1}/{len(spec.cases)}: {v.verdict} ({v.reason})")
        if v.verdict == "violated":
            ok, y = replay_case(model_path, case, v.counterexample)
            if ok:
                return VerifyResult("sat", f"case {i}: {v.reason}; replayed with onnxruntime", np.asarray(v.counterexample),
                                    np.asarray(y), time.monotonic() - t0, res.cases)
            undecided.append(f"case {i}: counterexample not reproduced by onnxruntime")
        elif v.verdict == "unknown":
            undecided.append(f"case {i}: {v.reason}")
    res.seconds = time.monotonic() - t0
    if undecided:
        res.result = "timeout" if any("timeout" in u for u in undecided) else "unknown"
        res.reason = "; ".join(undecided[:3])
    else:
        res.reason = f"all {len(spec.cases)} case(s) proved"
    return res
