"""The Python API behind ``lumpver compare`` (CONTRACT.md; DESIGN.md §4, §5).

:func:`compare_models` decides ``sup_{x in X} ||A(x) - B(x)|| <= epsilon`` for two ONNX files.
Every ``violated`` answer is replayed with onnxruntime on *both original files*: the
counterexample must lie in X and the onnxruntime outputs must show the violation, otherwise
the answer becomes ``unknown`` (reason stated). ``auto`` runs the falsifier, then the
differential branch and bound ``bab_diff`` (the ``interval`` back-end for ``top1`` or when the
pair cannot be paired layer by layer), then SMT, each with what is left of the time budget. When either
file is a graph network (residual Add, Concat, MaxPool), both are compared as graphs (a chain through
``GraphNetwork.from_chain``): ``auto`` runs the falsifier, then ``graph_diff`` (product-graph bounds,
:mod:`lumpver.verifiers.graph_diff`), which also answers ``bab_diff`` and ``interval``; the chain-only
back-ends (smt, sdp, marabou) refuse with an InputError naming the graph node. Unless the
answer is ``violated``, ``upper_bound`` is the smallest certified bound any stage found and
``lower_bound`` the largest attained value.
"""
from __future__ import annotations

import os
import time
from typing import Union

import numpy as np

from lumpver.bounds.graph_diff import as_graph
from lumpver.errors import InputError
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.onnx_import import load_model
from lumpver.ir.runtime import run_onnx
from lumpver.bounds.softmax import ends_in_softmax
from lumpver.specs.inputset import InputSet
from lumpver.specs.load import load_input_set
from lumpver.specs.norms import check_norm
from lumpver.verifiers.falsify import CONTAINS_TOL, is_violation, value_of
from lumpver.verifiers.base import Query, Verdict, get_backend
from lumpver.verifiers.softmax_outputs import on_probabilities

BACKENDS = ("bab_diff", "interval", "smt", "sdp", "auto", "falsify", "marabou", "graph_diff")
#: back-ends a graph pair is answered by: the name asked for -> the one that runs
GRAPH_BACKENDS = {"auto": "auto", "falsify": "falsify", "bab_diff": "graph_diff", "interval": "graph_diff",
                  "graph_diff": "graph_diff"}
#: share of the budget of the first (falsifier) stage of ``auto``
AUTO_FALSIFY_SHARE = 0.1
#: share of the remaining budget of a middle stage of ``auto`` (bab_diff before smt): smt decides only
#: small pairs, and bab_diff's search is what decides real-size ones
AUTO_MIDDLE_SHARE = 0.8
#: pairs with more hidden neurons (both networks together) give the middle stage all the time left (smt
#: still runs if it stops early): z3 decides none of the ACAS Xu-size pairs (600+ neurons) within a minute
SMT_MAX_NEURONS = 128


def middle_share(a, b) -> float:
    """The share of the time left that ``auto``'s middle stage gets (:data:`AUTO_MIDDLE_SHARE`)."""
    hidden = sum(layer.width for net in (a, b) for layer in getattr(net, "layers", [])[:-1])
    return AUTO_MIDDLE_SHARE if hidden <= SMT_MAX_NEURONS else 1.0


def auto_stages(norm: str, graph: bool = False) -> list[str]:
    """The back-ends ``auto`` runs in order (module docstring)."""
    if graph:
        return ["falsify", "graph_diff"]
    return ["falsify", "interval" if norm == "top1" else "bab_diff", "smt"]


def is_graph_pair(a, b) -> bool:
    """Whether the pair is compared as graphs (:func:`load_pair` converts both then)."""
    return isinstance(a, GraphNetwork) or isinstance(b, GraphNetwork)


def graph_backend(backend: str, a: GraphNetwork, b: GraphNetwork, paths: tuple) -> str:
    """The back-end that answers ``backend`` on a graph pair; InputError naming the first graph node a
    chain-only back-end cannot read."""
    if backend in GRAPH_BACKENDS:
        return GRAPH_BACKENDS[backend]
    for net, path in zip((a, b), paths):
        node = net.first_dag_node()
        if node is not None:
            raise InputError(f"back-end {backend} supports chains only and this network is a graph (residual Add, "
                             f"Concat or MaxPool); use --backend auto, bab_diff or interval (graph_diff)",
                             str(path), node.source or None)
    return backend


def load_pair(path_a: str | os.PathLike, path_b: str | os.PathLike):
    """Both networks (chains, or both graph networks when either file branches or max-pools);
    InputError naming both files when their input/output sizes differ."""
    a, b = load_model(path_a), load_model(path_b)
    if is_graph_pair(a, b):
        a, b = as_graph(a), as_graph(b)
    ends_in_softmax(a, b)  # both logits or both Softmax (probabilities: verifiers/softmax_outputs.py)
    if (a.n_inputs, a.n_outputs) != (b.n_inputs, b.n_outputs):
        raise InputError(
            f"models differ in size: {a.n_inputs} inputs/{a.n_outputs} outputs vs "
            f"{b.n_inputs} inputs/{b.n_outputs} outputs in {path_b}",
            str(path_a),
        )
    return a, b


def replay_equivalence(path_a, path_b, query: Query, x: np.ndarray) -> tuple[bool, dict]:
    """Whether onnxruntime on both files confirms the violation at ``x`` (which must be in X)."""
    ya = np.asarray(_run(path_a, x)).reshape(-1)
    yb = np.asarray(_run(path_b, x)).reshape(-1)
    inside = query.input_set.contains(x, tol=CONTAINS_TOL)
    ok = inside and is_violation(query, ya, yb)
    return ok, {"onnx_a": ya.tolist(), "onnx_b": yb.tolist(), "onnx_value": value_of(query, ya, yb), "in_input_set": inside}


def _run(path, x):
    return run_onnx(path, np.asarray(x, dtype=np.float32))[0]


def compare_models(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    input_set: Union[InputSet, str, os.PathLike],
    epsilon: float,
    norm: str = "linf",
    backend: str = "auto",
    timeout: float = 60.0,
    seed: int = 0,
    quiet: bool = True,
) -> Verdict:
    """Decide or bound ``sup_X ||A - B||`` (module docstring). Raises InputError on bad input."""
    check_norm(norm)
    if backend not in BACKENDS:
        raise InputError(f"unknown back-end {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not (epsilon >= 0 and np.isfinite(epsilon)):
        raise InputError(f"epsilon must be a finite number >= 0, got {epsilon}")
    t0 = time.monotonic()
    a, b = load_pair(path_a, path_b)
    graph = is_graph_pair(a, b)
    if graph:
        backend = graph_backend(backend, a, b, (path_a, path_b))
    xs = load_input_set(input_set, a.n_inputs)
    query = Query(a, xs, other=b, epsilon=float(epsilon), norm=norm, timeout=float(timeout), seed=seed)
    stages = auto_stages(norm, graph) if backend == "auto" else [backend]
    verdict, ran, tried = None, [], []
    for i, name in enumerate(stages):
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            break
        budget = left
        if backend == "auto" and name == "falsify":
            budget = min(left, AUTO_FALSIFY_SHARE * timeout)
        elif backend == "auto" and i < len(stages) - 1:
            budget = middle_share(a, b) * left  # leave time for the exact back-end on small pairs
        v = on_probabilities(get_backend(name)).check(Query(a, xs, other=b, epsilon=float(epsilon), norm=norm,
                                                            timeout=budget, seed=seed, quiet=quiet))
        ran.append(v)
        if backend == "auto" and name == "bab_diff" and v.upper_bound is None and v.verdict == "unknown":
            stages.insert(i + 1, "interval")  # the pair could not be paired: symbolic differences instead
        if v.verdict == "violated":
            ok, info = replay_equivalence(path_a, path_b, query, v.counterexample)
            v.details = {**v.details, "replay": info}
            if ok:
                verdict = v
                break
            v = Verdict("unknown", v.backend, "counterexample not reproduced by onnxruntime on the files",
                        lower_bound=v.lower_bound, details=v.details)
        tried.append(f"{name}: {v.verdict} ({v.reason})")
        verdict = v
        if v.verdict == "proved":
            break
    if verdict is None:
        verdict = Verdict("unknown", backend, "no back-end ran (timeout)")
    if verdict.verdict != "violated":
        verdict.lower_bound = Verdict.best_lower(ran)
        verdict.upper_bound = Verdict.tightest_upper(ran)  # the best certified bound of any stage (None if none)
    verdict.details = {**verdict.details, "stages": tried, "norm": norm, "epsilon": float(epsilon)}
    verdict.seconds = time.monotonic() - t0
    return verdict
