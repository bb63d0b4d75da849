"""VNN-COMP glue for lumpver: ``prepare`` (can this instance be handled?) and ``run`` (answer it).

Called by ``prepare_instance.sh`` and ``run_instance.sh``; standalone (``python3 lumpver_vnncomp.py``).

prepare CATEGORY ONNX VNNLIB
    Only checks, as the rules allow outside the timed run: the network loads (supported ops,
    finite weights, fixed shapes) and the property parses against its input and output sizes.
    Exit 0 when lumpver can handle the instance; exit 1 with one line on stderr otherwise, so the
    harness skips the slot. No analysis (no bounds, no reduction) happens here.

run CATEGORY ONNX VNNLIB RESULTS TIMEOUT
    Everything inside the timed run: the exact on-set reduction of the network on the property's
    input set (DESIGN.md §3, :class:`lumpver.reductions.passes.OnSetPass`, in a temporary folder),
    then every case of the property is checked on the reduced network g against the unsafe set
    *widened by the certified discrepancy* d (``A y <= b + d * ||A||_1 rows``, since ``|f - g| <= d``
    on X), so ``unsat`` for g proves ``unsat`` for the original f. A counterexample found on g is
    replayed through onnxruntime on the ORIGINAL model and written only if it violates the
    original property there (else the instance falls back). Back-ends in order: falsify, interval,
    smt (a share of the time each). When that does not decide: ``lumpver verify ONNX VNNLIB
    --reduce`` with the time left. The result file is written atomically in the VNN-COMP format:
    ``sat`` + ``((X_0 v) ... (Y_0 v) ...)``, ``unsat``, ``timeout``, ``unknown`` or ``error``.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, "") and importlib.util.find_spec("lumpver") is None:  # run from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402  (after the path set-up above)

from lumpver.api.reduce import apply_pass  # noqa: E402
from lumpver.api.reduce_verify import widen  # noqa: E402
from lumpver.api.verify import replay_case  # noqa: E402
from lumpver.errors import InputError  # noqa: E402
from lumpver.fileio import write_text_atomic  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.progress import Progress  # noqa: E402
from lumpver.reductions.passes import OnSetPass  # noqa: E402
from lumpver.specs.inputset import InputSet  # noqa: E402
from lumpver.specs.vnnlib import read_vnnlib  # noqa: E402
from lumpver.verifiers.base import Query, get_backend  # noqa: E402

#: share of the instance time budget each back-end of the cached path may use
SHARES = (("falsify", 0.1), ("interval", 0.3), ("smt", 1.0))


def check_instance(onnx: str, vnnlib: str) -> None:
    """InputError (one line naming the file) when lumpver cannot handle the instance."""
    net = load_onnx(onnx)
    read_vnnlib(vnnlib, net.n_inputs, net.n_outputs)


def reduce_in_run(onnx: str, vnnlib: str, folder: Path) -> dict:
    """The exact on-set reduction of ``onnx`` on the property's input set, written into ``folder``
    (part of the timed run): ``meta`` with the certified discrepancy and the sizes."""
    t0 = time.perf_counter()
    cert = apply_pass(OnSetPass(), onnx, folder / "reduced.onnx", folder / "reduced.cert.json", vnnlib,
                      Progress(True)).certificate
    return {"discrepancy": cert["guarantee"]["epsilon"], "neurons_before": cert["stats"]["neurons_before"],
            "neurons_after": cert["stats"]["neurons_after"], "seconds": time.perf_counter() - t0}


def counterexample_text(x, y) -> str:
    """VNN-COMP counterexample: ``((X_0 v)`` ... ``(Y_k v))``, one pair per line."""
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
    return "(" + "\n".join(pairs) + ")\n"


def original_violation(onnx: str, case, x) -> Optional[tuple]:
    """``(x, y)`` when ``x`` lies in the case's region and the ORIGINAL model's onnxruntime output
    is in the case's unsafe set (:func:`lumpver.api.verify.replay_case`); None otherwise."""

    x32 = np.asarray(x, dtype=np.float32).reshape(-1)
    ok, y = replay_case(onnx, case, x32.astype(np.float64))
    return (x32, np.asarray(y).reshape(-1)) if ok else None


def cached_verdict(onnx: str, vnnlib: str, cache: Path, meta: dict, deadline: float) -> tuple[str, str]:
    """``(result, counterexample text)`` from the reduction in ``cache``; result ``unknown`` when undecided."""
    g = load_onnx(cache / "reduced.onnx")
    spec = read_vnnlib(vnnlib, g.n_inputs, g.n_outputs)
    d = float(meta["discrepancy"])
    timed_out = False
    for case in spec.cases:
        wide, decided = widen(case.unsafe, d), False
        for name, share in SHARES:
            left = deadline - time.monotonic()
            if left <= 0.5:
                return ("timeout", "")
            v = get_backend(name).check(Query(g, InputSet([case.region]), prop=wide, timeout=max(0.5, share * left)))
            if v.verdict == "proved":
                decided = True
                break
            if v.verdict == "violated":
                hit = original_violation(onnx, case, v.counterexample)
                if hit is not None:
                    return ("sat", counterexample_text(*hit))
                return ("unknown", "")  # g's witness does not replay on f: let lumpver verify decide
            timed_out = timed_out or "timeout" in (v.reason or "")
        if not decided:
            return ("timeout" if timed_out and time.monotonic() >= deadline - 0.5 else "unknown", "")
    return ("unsat", "")


def verify_fallback(onnx: str, vnnlib: str, results: str, seconds: float) -> str:
    """``lumpver verify ONNX VNNLIB --reduce`` with the time left; returns the first line it wrote."""
    argv = [sys.executable, "-m", "lumpver", "verify", onnx, vnnlib, "--reduce", "--timeout", f"{max(1.0, seconds):g}",
            "--result", results, "--quiet"]
    try:
        subprocess.run(argv, timeout=seconds + 10, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timeout"
    try:
        return Path(results).read_text().split("\n", 1)[0].strip()
    except OSError:
        return "error"


def write_result(results: str, word: str, cex: str = "") -> None:
    write_text_atomic(results, word + "\n" + cex)


def run(onnx: str, vnnlib: str, results: str, timeout: float) -> str:
    """Answer one instance into ``results``; returns the result word."""
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="lumpver-run-") as tmp:
        try:
            meta = reduce_in_run(onnx, vnnlib, Path(tmp))
            print(f"lumpver run_instance: on-set reduction {meta['neurons_before']} -> {meta['neurons_after']} "
                  f"hidden neurons in {meta['seconds']:.2f} s", file=sys.stderr)
            word, cex = cached_verdict(onnx, vnnlib, Path(tmp), meta, deadline)
        except Exception as e:  # the reduction is an accelerator: without it, lumpver verify decides
            print(f"lumpver run_instance: no reduction ({type(e).__name__}: {e})", file=sys.stderr)
            word, cex = "unknown", ""
    if word in ("sat", "unsat", "timeout"):
        write_result(results, word, cex)
        return word
    left = deadline - time.monotonic()
    if left <= 0.5:
        write_result(results, "timeout")
        return "timeout"
    word = verify_fallback(onnx, vnnlib, results, left)
    if word not in ("sat", "unsat", "unknown", "timeout", "error"):
        write_result(results, "error")
        return "error"
    return word


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "prepare":
        try:
            check_instance(argv[2], argv[3])
        except InputError as e:
            print(f"lumpver prepare_instance: cannot handle this instance: {e}", file=sys.stderr)
            return 1
        return 0
    if len(argv) >= 6 and argv[0] == "run":
        try:
            timeout = float(argv[5])
        except ValueError:
            print(f"lumpver run_instance: TIMEOUT is not a number: {argv[5]!r}", file=sys.stderr)
            write_result(argv[4], "error")
            return 0
        try:
            run(argv[2], argv[3], argv[4], timeout)
        except Exception as e:
            print(f"lumpver run_instance: {type(e).__name__}: {e}", file=sys.stderr)
            write_result(argv[4], "error")
        return 0
    print("usage: lumpver_vnncomp.py prepare CATEGORY ONNX VNNLIB | run CATEGORY ONNX VNNLIB RESULTS TIMEOUT",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
