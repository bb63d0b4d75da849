"""``lumpver bound``: a certified upper bound and a falsified lower bound of
``sup_{x in X} ||A(x) - B(x)||`` (CONTRACT.md; DESIGN.md §5).

The upper bound comes from one back-end (``bab_diff`` by default: the differential branch and bound
:mod:`lumpver.verifiers.bab_diff`, refining until the bound meets the attained value or the time is
used; ``sdp``: :mod:`lumpver.verifiers.sdp`, float32 rounding included; ``interval``/``smt`` through
their ``BACKEND.check``). The lower bound is attained: the best of the falsifier's input and the
search's best point, replayed with onnxruntime on both files, and that input is reported as
``counterexample`` (the witness of the lower bound). With ``cert_path`` a ``bounded`` certificate is
written whose epsilon is the certified bound and whose evidence (``bab_diff``: the bisection trees;
``sdp``: the multipliers) :mod:`lumpver.certificates.bounded` re-verifies without trusting the search.

Graph networks (residual Add, Concat, MaxPool; either file, the other converted with
``GraphNetwork.from_chain``): ``bab_diff`` and ``interval`` are answered by ``graph_diff``
(:mod:`lumpver.verifiers.graph_diff`: product-graph bounds, input splitting for small inputs,
refining until the bound meets the attained value or the time is used; its certificate records the
box cap per region, which :mod:`lumpver.certificates.bounded_graph` re-runs); ``sdp``/``smt`` refuse
with an InputError naming the graph node.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

import numpy as np

from lumpver.api.compare import graph_backend, is_graph_pair, load_pair
from lumpver.bounds.softmax import ends_in_softmax, logit_norm, logits_of, probability_bound
from lumpver.errors import InputError
from lumpver.certificates.format import make_certificate, model_stats
from lumpver.fileio import write_json_atomic
from lumpver.ir.network import Network
from lumpver.ir.runtime import run_onnx
from lumpver.progress import SILENT, Progress
from lumpver.specs.inputset import InputSet
from lumpver.specs.load import load_input_set
from lumpver.specs.norms import norm_value
from lumpver.verifiers.bab_diff import DiffOptions, difference_search
from lumpver.verifiers.base import Query, Verdict, get_backend
from lumpver.verifiers.falsify import CONTAINS_TOL, search
from lumpver.verifiers.graph_diff import graph_difference_search
from lumpver.verifiers.interval import certified_difference_bound
from lumpver.verifiers.sdp import SdpOptions, sdp_bound

BACKENDS = ("bab_diff", "sdp", "interval", "smt", "graph_diff")


def bound_files(path_a: str | os.PathLike, path_b: str | os.PathLike, input_set: InputSet | str | os.PathLike,
                backend: str = "bab_diff", norm: str = "linf", solver: str = "auto", timeout: float = 60.0,
                seed: int = 0, cert_path: Optional[str | os.PathLike] = None, progress: Progress = SILENT) -> Verdict:
    """Bound ``||A - B||`` for two ONNX files on X (a loaded set or a spec path): ``proved`` with the
    certified ``upper_bound``, or ``unknown``; ``lower_bound`` attained at ``counterexample``."""
    t0 = time.perf_counter()
    f, g = load_pair(path_a, path_b)
    if is_graph_pair(f, g):
        backend = graph_backend(backend, f, g, (path_a, path_b))
    sm = ends_in_softmax(f, g)
    if sm and cert_path is not None:
        raise InputError("bound --certificate: no certificate checker for Softmax outputs yet (omit --certificate)")
    X = load_input_set(input_set, f.n_inputs)
    lower, witness = falsified_lower_bound(path_a, path_b, f, g, X, norm, max(1.0, 0.1 * timeout), seed)
    remaining = max(1.0, timeout - (time.perf_counter() - t0))
    upper, reason, details = certified_upper_bound(logits_of(f), logits_of(g), X, backend,
                                                   logit_norm(norm) if sm else norm, solver, remaining,
                                                   0.0 if sm else (lower or 0.0), progress)
    if sm and upper is not None:  # DESIGN.md §5, lumpver/bounds/softmax.py
        reason, upper = f"{reason}; logit bound {upper:.6g} -> probabilities", probability_bound(upper, norm, f.n_outputs)
    lower, witness = _best_witness(path_a, path_b, X, norm, (lower, witness), details.pop("witness", None))
    if upper is not None and lower is not None and upper < lower:  # a contradiction: trust neither claim
        reason = (f"{backend}'s bound {upper!r} is below the attained value {lower!r} (numerical doubt); "
                  "no bound certified")
        upper = None
    res = Verdict("proved" if upper is not None else "unknown", backend, reason, counterexample=witness,
                  upper_bound=upper, lower_bound=lower, seconds=time.perf_counter() - t0, details=details)
    if cert_path is not None and upper is not None:
        write_bound_certificate(path_a, path_b, cert_path, f, g, X, norm, res)
    return res


def certified_upper_bound(f, g, X: InputSet, backend: str, norm: str, solver: str, timeout: float,
                          attained: float = 0.0, progress: Progress = SILENT):
    """``(upper bound or None, reason, evidence details)`` from one back-end (``attained``: a value
    already reached, where ``bab_diff``/``graph_diff`` may stop refining; ``details["witness"]``: its best point)."""
    if backend == "graph_diff":
        run = graph_difference_search(f, g, X, norm, timeout, threshold=attained)
        ev = run.evidence(norm)  # the checker (certificates/bounded_graph.py) re-runs it with these caps
        ev.update(max_boxes=[r.boxes + 1 for r in run.results], threshold=attained)
        stops = "; ".join(ev.get("stopped", [])) or "the bound meets the attained value"
        return run.upper_bound, f"graph_diff (product graph, {ev['boxes_processed']} boxes; {stops})", ev
    if backend == "bab_diff":
        res, ev = difference_search(f, g, X, norm, timeout, known_lower=attained,
                                    options=DiffOptions(progress=progress))
        i = int(np.argmax([r.lower for r in res]))
        ev["witness"] = res[i].x_best
        stops = "; ".join(sorted({r.stopped for r in res if r.stopped})) or "the bound meets the attained value"
        return ev["upper_bound"], f"bab_diff ({ev['pairing']} pairing, {sum(r.boxes for r in res)} boxes; {stops})", ev
    if backend == "sdp":
        r = sdp_bound(f, g, X, norm, SdpOptions(solver=solver), timeout)
        reason = r.reason or f"SDP certified (matrix size {r.max_matrix_size}, solver {r.solver_seconds:.2f}s)"
        return r.upper_bound, reason, r.evidence
    if backend == "interval":  # refine to the time limit on every region; a sampled difference never stops it
        ub, ev = certified_difference_bound(f, g, X, norm, timeout)
        return ub, f"interval bound over all {len(X.regions)} region(s) ({ev['leaves']} sub-box(es))", ev
    v = get_backend(backend).check(Query(f, X, other=g, epsilon=0.0, norm=norm, timeout=timeout))
    if v.upper_bound is None or v.verdict == "violated" or not _covers_set(v):
        return None, v.reason or f"{backend} gave no bound", dict(v.details)
    return float(v.upper_bound), v.reason, {"backend_verdict": v.verdict, **dict(v.details)}


def _covers_set(v: Verdict) -> bool:
    """A back-end's ``upper_bound`` is a bound on the whole set only when it did not stop early (a
    sampled counterexample at epsilon 0 ends the search with the regions seen so far)."""
    return v.counterexample is None


def _best_witness(path_a, path_b, X: InputSet, norm: str, current: tuple, x: Optional[np.ndarray]):
    """The better of ``current`` (value, x) and the point ``x``, both as replayed by onnxruntime."""
    if x is None:
        return current
    x32 = np.asarray(x, dtype=np.float32).reshape(1, -1)
    if not X.contains(x32.reshape(-1).astype(np.float64), tol=CONTAINS_TOL):
        return current
    value = float(norm_value(run_onnx(path_a, x32) - run_onnx(path_b, x32), norm)[0])
    if current[0] is None or value > current[0]:
        return value, x32.reshape(-1)
    return current


def falsified_lower_bound(path_a, path_b, f, g, X: InputSet, norm: str, timeout: float, seed: int):
    """Best attained ``||A(x) - B(x)||`` (onnxruntime on both files) and its x, or (None, None)."""
    q = Query(f, X, other=g, epsilon=np.inf, norm=norm, timeout=timeout, seed=seed)
    res = search(q)
    if res.best_x is None:
        return None, None
    x = np.asarray(res.best_x, dtype=np.float32).reshape(1, -1)
    d = run_onnx(path_a, x) - run_onnx(path_b, x)
    return float(norm_value(d, norm)[0]), x.reshape(-1)


def write_bound_certificate(path_a, path_b, cert_path, f: Network, g: Network, X: InputSet, norm: str,
                            res: Verdict) -> dict[str, Any]:
    """A ``bounded`` certificate with epsilon = the certified upper bound (atomic write)."""
    guarantee = {"kind": "bounded", "input_set": X.to_json(), "norm": norm, "epsilon": res.upper_bound,
                 "statement": "for every x in the input set, ||A(x) - B(x)|| <= epsilon for the float32 models "
                              "(float32 evaluation error included)" if res.backend == "sdp" else
                              f"bound established by back-end {res.backend}"}
    evidence = [{"backend": res.backend, "verdict": "proved", **res.details}]
    if res.lower_bound is not None:
        evidence.append({"backend": "falsify", "verdict": "info", "lower_bound": res.lower_bound,
                         "counterexample": [float(t) for t in res.counterexample]})
    stats = model_stats(f, g, res.seconds)
    cert = make_certificate(path_a, path_b, guarantee, stats, evidence, cert_path)
    write_json_atomic(cert_path, cert)
    return cert
