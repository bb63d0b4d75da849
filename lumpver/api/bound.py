"""``lumpver bound``: a certified upper bound and a falsified lower bound of
``sup_{x in X} ||A(x) - B(x)||`` (CONTRACT.md; DESIGN.md §5).

The upper bound comes from one back-end (``sdp`` by default: :mod:`lumpver.verifiers.sdp`, float32
rounding included; ``interval``/``smt`` through their ``BACKEND.check``). The lower bound is
attained: the falsifier's best input, replayed with onnxruntime on both files, and that input
is reported as ``counterexample`` (the witness of the lower bound). With ``cert_path`` a
``bounded`` certificate is written whose epsilon is the certified bound and whose evidence
(for ``sdp``: the multipliers) :mod:`lumpver.certificates.bounded` re-verifies without a solver.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lumpver.specs.inputset import InputSet

BACKENDS = ("sdp", "interval", "smt")


@dataclass
class BoundResult:
    verdict: str  # "proved" (an upper bound is certified) or "unknown"
    upper_bound: Optional[float]
    lower_bound: Optional[float]
    counterexample: Optional[list[float]]  # input attaining lower_bound (onnxruntime replay)
    seconds: float
    backend: str
    norm: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "upper_bound": self.upper_bound, "lower_bound": self.lower_bound,
                "counterexample": self.counterexample, "seconds": round(self.seconds, 6), "backend": self.backend,
                "norm": self.norm, "reason": self.reason, "details": self.details}


def bound_files(path_a: str | os.PathLike, path_b: str | os.PathLike, input_set: InputSet | str | os.PathLike,
                backend: str = "sdp", norm: str = "linf", solver: str = "auto", timeout: float = 60.0,
                seed: int = 0, cert_path: Optional[str | os.PathLike] = None) -> BoundResult:
    """Bound ``||A - B||`` for two ONNX files on X (a loaded set or a spec path)."""
    from lumpver.api.compare import load_pair, resolve_input_set

    t0 = time.perf_counter()
    f, g = load_pair(path_a, path_b)
    X = resolve_input_set(input_set, f.n_inputs)
    lower, witness = falsified_lower_bound(path_a, path_b, f, g, X, norm, max(1.0, 0.1 * timeout), seed)
    remaining = max(1.0, timeout - (time.perf_counter() - t0))
    upper, reason, details = certified_upper_bound(f, g, X, backend, norm, solver, remaining)
    res = BoundResult("proved" if upper is not None else "unknown", upper, lower,
                      None if witness is None else [float(v) for v in witness],
                      time.perf_counter() - t0, backend, norm, reason, details)
    if cert_path is not None and upper is not None:
        write_bound_certificate(path_a, path_b, cert_path, f, g, X, res)
    return res


def certified_upper_bound(f, g, X: InputSet, backend: str, norm: str, solver: str, timeout: float):
    """``(upper bound or None, reason, evidence details)`` from one back-end."""
    if backend == "sdp":
        from lumpver.verifiers.sdp import SdpOptions, sdp_bound

        r = sdp_bound(f, g, X, norm, SdpOptions(solver=solver), timeout)
        reason = r.reason or f"SDP certified (matrix size {r.max_matrix_size}, solver {r.solver_seconds:.2f}s)"
        return r.upper_bound, reason, r.evidence
    from lumpver.verifiers.base import Query, get_backend

    v = get_backend(backend).check(Query(f, X, other=g, epsilon=0.0, norm=norm, timeout=timeout))
    if v.upper_bound is None:
        return None, v.reason or f"{backend} gave no bound", dict(v.details)
    return float(v.upper_bound), v.reason, {"backend_verdict": v.verdict, **dict(v.details)}


def falsified_lower_bound(path_a, path_b, f, g, X: InputSet, norm: str, timeout: float, seed: int):
    """Best attained ``||A(x) - B(x)||`` (onnxruntime on both files) and its x, or (None, None)."""
    from lumpver.ir.runtime import run_onnx
    from lumpver.verifiers.base import Query
    from lumpver.verifiers.falsify import norm_value, search

    q = Query(f, X, other=g, epsilon=np.inf, norm=norm, timeout=timeout, seed=seed)
    res = search(q)
    if res.best_x is None:
        return None, None
    x = np.asarray(res.best_x, dtype=np.float32).reshape(1, -1)
    d = run_onnx(path_a, x) - run_onnx(path_b, x)
    return float(norm_value(d, norm)[0]), x.reshape(-1)


def write_bound_certificate(path_a, path_b, cert_path, f, g, X: InputSet, res: BoundResult) -> dict[str, Any]:
    """A ``bounded`` certificate with epsilon = the certified upper bound (atomic write)."""
    from lumpver.certificates.format import make_certificate, model_stats
    from lumpver.fileio import write_json_atomic

    guarantee = {"kind": "bounded", "input_set": X.to_json(), "norm": res.norm, "epsilon": res.upper_bound,
                 "statement": "for every x in the input set, ||A(x) - B(x)|| <= epsilon for the float32 models "
                              "(float32 evaluation error included)" if res.backend == "sdp" else
                              f"bound established by back-end {res.backend}"}
    evidence = [{"backend": res.backend, "verdict": "proved", **res.details}]
    if res.lower_bound is not None:
        evidence.append({"backend": "falsify", "verdict": "info", "lower_bound": res.lower_bound,
                         "counterexample": res.counterexample})
    cert = make_certificate(path_a, path_b, guarantee, model_stats(f, g, res.seconds), evidence, cert_path)
    write_json_atomic(cert_path, cert)
    return cert
