"""The Python API of a spec run (``lumpver run SPEC.toml``, CONTRACT.md; DESIGN.md §2-§9).

:func:`run_spec` does everything a spec file declares:

1. load the model and the declared input set;
2. apply the ``[[reductions]]`` **in order**, each to the previous step's result, each writing
   its model and certificate (``stepK_METHOD.onnx`` / ``stepK_METHOD.cert.json``) through the
   existing Python APIs (exact: :mod:`lumpver.api.reduce`, on-set: :mod:`lumpver.reductions.onset`, approx:
   :mod:`lumpver.reductions.approx`; prune and quantize through their commands, in process);
3. re-check every certificate independently (:func:`lumpver.certificates.format.check_certificate`);
4. ask every declared ``[[backends]]`` entry whether ``sup_X ||f - g|| <= epsilon`` holds
   between the original f and the final g (``[tolerance]``; needs an input set);
5. write ``report.md`` / ``report.html`` / ``report.json`` (those ``[output].reports`` lists).

Atomicity: everything is produced in a staging folder beside the output folder (same parent, so
the relative model paths inside certificates stay valid) and moved into place only when every
step succeeded; a failing step leaves the output folder untouched.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lumpver.errors import InputError
from lumpver.progress import Progress

DEFAULT_OUT = "lumpver-out"
#: a method's module: when it is missing the step fails with exit 2 "not available"
_METHOD_MODULES = {"exact": "lumpver.api.reduce", "on-set": "lumpver.reductions.onset", "approx": "lumpver.reductions.approx",
                   "prune": "lumpver.commands.prune", "quantize": "lumpver.commands.quantize"}


@dataclass
class RunResult:
    """What :func:`run_spec` produced."""

    out_dir: Path
    document: dict[str, Any]  # the report document (lumpver.reports.render)
    files: list[Path] = field(default_factory=list)  # everything written into out_dir
    exit_code: int = 0  # 0, or 1 when a certificate does not re-check or a back-end finds a violation


@dataclass
class _Ctx:
    spec: Any
    stage: Path
    out_dir: Path
    progress: Progress
    quiet: bool
    input_set: Any = None


def run_spec(spec_path: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None, quiet: bool = False,
             recheck: bool = True) -> RunResult:
    """Run a spec file; see the module docstring. InputError for bad input (exit 2)."""
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.runspec import load_spec

    t0 = time.perf_counter()
    progress = Progress(quiet)
    spec = load_spec(spec_path)
    out = Path(out_dir) if out_dir is not None else Path(spec.output.dir)
    net = load_onnx(spec.model)
    input_set = spec.input_set(net.n_inputs) if spec.input_set_spec is not None else None
    _prepare_out(out, [spec.model, Path(spec_path)])
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        ctx = _Ctx(spec, stage, out, progress, quiet, input_set)
        progress.say(f"spec {spec_path}: model {spec.model.name} ({net.n_hidden} hidden neurons), "
                     f"{len(spec.reductions)} reduction step(s), {len(spec.backends)} back-end(s)")
        steps, final = _run_steps(ctx, net)
        if recheck:
            _recheck(ctx, steps)
        backends = _run_backends(ctx, final, steps)
        doc = _document(ctx, net, steps, backends, time.perf_counter() - t0)
        names = _write_reports(ctx, doc)
        files = _commit(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    failed = any((s["recheck"] or {}).get("holds") is False for s in steps) or \
        any(b["verdict"] == "violated" for b in backends)
    progress.say(f"wrote {len(files)} file(s) into {out}: " + ", ".join(names))
    return RunResult(out, doc, files, 1 if failed else 0)


# ----- output folder ---------------------------------------------------------------------------
def _prepare_out(out: Path, inputs: list[Path]) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", str(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder: {e.strerror}", str(out)) from None
    if not os.access(out, os.W_OK) or not os.access(out.parent, os.W_OK):
        raise InputError("output folder (or its parent, for staging) is not writable", str(out))
    for p in inputs:
        if p.resolve().parent == out.resolve() and p.name.startswith("step"):
            raise InputError("an input file lives in the output folder under a name the run writes", str(p))


def _commit(stage: Path, out: Path) -> list[Path]:
    """Move every staged file into ``out`` (each move is an atomic rename on one file system)."""
    moved = []
    for p in sorted(stage.iterdir()):
        target = out / p.name
        os.replace(p, target)
        moved.append(target)
    return moved


# ----- steps -----------------------------------------------------------------------------------
def _available(method: str) -> None:
    module = _METHOD_MODULES[method]
    if importlib.util.find_spec(module) is None:
        raise InputError(f"reduction method {method!r} is not available in this version of lumpver "
                         f"(module {module} is missing)")


def _run_steps(ctx: _Ctx, net) -> tuple[list[dict[str, Any]], Path]:
    """Apply the reductions in order; returns the step records and the final model path."""
    from lumpver.certificates.format import model_stats
    from lumpver.ir.onnx_import import load_onnx

    current, current_net = Path(ctx.spec.model), net
    steps = []
    for k, step in enumerate(ctx.spec.reductions, start=1):
        _available(step.method)
        name = f"step{k}_{step.method.replace('-', '')}"
        out, cert = ctx.stage / f"{name}.onnx", ctx.stage / f"{name}.cert.json"
        ctx.progress.say(f"step {k}: {step.method}")
        t0 = time.perf_counter()
        note = _STEP_RUNNERS[step.method](ctx, step, k, current, out, cert)
        if not out.is_file():
            raise InputError(f"step {k} ({step.method}) wrote no model", str(ctx.spec.path))
        reduced = load_onnx(out)
        record = {"index": k, "method": _method_label(step), "model_path": out.name,
                  "certificate_path": cert.name if cert.is_file() else None,
                  "certificate": _read_json(cert) if cert.is_file() else None,
                  "stats": model_stats(current_net, reduced, time.perf_counter() - t0), "recheck": None}
        if note:
            record["note"] = note
        steps.append(record)
        current, current_net = out, reduced
    return steps, current


def _method_label(step) -> str:
    if step.method == "prune":
        return f"prune ({step.prune_method})"
    if step.method == "quantize":
        return f"quantize ({step.bits}-bit{', per channel' if step.per_channel else ''})"
    return step.method


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _run_exact(ctx: _Ctx, step, k: int, src: Path, out: Path, cert: Path) -> str:
    from lumpver.reductions.exact import DEFAULT_TOLERANCE
    from lumpver.api.reduce import reduce_exact_to_files

    tol = DEFAULT_TOLERANCE if step.tolerance is None else step.tolerance
    if not 0 < tol < 0.1:
        raise InputError(f"[[reductions]][{k}].tolerance: must be in (0, 0.1) for exact lumping, got {tol}",
                         str(ctx.spec.path))
    reduce_exact_to_files(src, out, cert, tol, ctx.progress)
    return ""


def _unused_tolerance(ctx: _Ctx, step, k: int, what: str) -> str:
    if step.tolerance is None:
        return ""
    msg = f"the declared tolerance {step.tolerance:g} is not used: {what}"
    ctx.progress.say(f"step {k}: note: {msg}")
    return msg


def _run_onset(ctx: _Ctx, step, k: int, src: Path, out: Path, cert: Path) -> str:
    from lumpver.reductions.onset import reduce_on_set_to_files

    reduce_on_set_to_files(src, out, cert, ctx.input_set, ctx.quiet)
    return _unused_tolerance(ctx, step, k, "the on-set reduction fixes its own QR and lumping tolerances "
                                           "(recorded in the certificate)")


def _run_approx(ctx: _Ctx, step, k: int, src: Path, out: Path, cert: Path) -> str:
    from lumpver.reductions.approx import reduce_approx_to_files

    tol = ctx.spec.tolerance
    names = [b.name for b in ctx.spec.backends]
    timeout = sum(b.timeout for b in ctx.spec.backends) or 300.0
    reduce_approx_to_files(src, out, cert, ctx.input_set, tol.epsilon, tol.norm,
                           "interval" if "interval" in names else "auto", timeout, ctx.progress)
    return _unused_tolerance(ctx, step, k, "approximate lumping searches the number of removed neurons by bisection")


def _run_command(ctx: _Ctx, argv: list[str]) -> None:
    """Run a lumpver command in process; its stdout goes to stderr (or nowhere when quiet)."""
    from lumpver.cli import build_parser

    args = build_parser().parse_args(argv + (["--quiet"] if ctx.quiet else []))
    sink = io.StringIO() if ctx.quiet else sys.stderr
    with contextlib.redirect_stdout(sink):
        code = int(args._module.run(args) or 0)
    if code:
        from lumpver.errors import CheckFailed

        raise CheckFailed(f"lumpver {argv[0]} exited with {code}")


def _input_set_args(ctx: _Ctx) -> list[str]:
    return ["--input-set", str(ctx.spec.path)] if ctx.spec.input_set_spec is not None else []


def _run_prune(ctx: _Ctx, step, k: int, src: Path, out: Path, cert: Path) -> str:
    argv = ["prune", str(src), "-o", str(out), "--method", step.prune_method, "--certificate", str(cert)]
    if step.prune_method == "confident":
        argv += ["--calibration", str(step.calibration), "--alpha", repr(step.alpha), "--delta", repr(step.delta)]
    else:
        argv += ["--keep", repr(step.keep)] + _input_set_args(ctx)
    _run_command(ctx, argv)
    return "" if cert.is_file() else "no certificate: this pruning is certified only on a declared input set"


def _run_quantize(ctx: _Ctx, step, k: int, src: Path, out: Path, cert: Path) -> str:
    argv = ["quantize", str(src), "-o", str(out), "--bits", str(step.bits), "--certificate", str(cert)]
    argv += (["--per-channel"] if step.per_channel else []) + _input_set_args(ctx)
    _run_command(ctx, argv)
    return "" if cert.is_file() else "no certificate: quantisation is certified only on a declared input set"


_STEP_RUNNERS = {"exact": _run_exact, "on-set": _run_onset, "approx": _run_approx, "prune": _run_prune,
                 "quantize": _run_quantize}


def _recheck(ctx: _Ctx, steps: list[dict[str, Any]]) -> None:
    from lumpver.certificates.format import check_certificate

    for s in steps:
        if not s["certificate_path"]:
            continue
        try:
            rep = check_certificate(ctx.stage / s["certificate_path"])
        except ModuleNotFoundError as e:  # this build has no checker for the kind
            s["recheck"] = {"holds": None, "lines": [f"no checker available in this build ({e.name})"]}
            ctx.progress.say(f"step {s['index']}: certificate re-check not available ({e.name})")
            continue
        s["recheck"] = {"holds": rep.holds, "lines": rep.lines}
        ctx.progress.say(f"step {s['index']}: certificate re-check: {'holds' if rep.holds else 'DOES NOT HOLD'}")


# ----- back-ends -------------------------------------------------------------------------------
def _run_backends(ctx: _Ctx, final: Path, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each declared back-end on ``sup_X ||f - g|| <= epsilon`` for the original f and the final g."""
    spec = ctx.spec
    if not spec.backends:
        return []
    if ctx.input_set is None or spec.tolerance is None or not steps:
        why = "no [input_set]" if ctx.input_set is None else "no [tolerance]" if spec.tolerance is None else "no step"
        ctx.progress.say(f"back-ends skipped: {why}")
        return [{"backend": b.name, "verdict": "skipped", "reason": why, "epsilon": None, "norm": None}
                for b in spec.backends]
    out = []
    for b in spec.backends:
        ctx.progress.say(f"back-end {b.name}: sup ||f - g||_{spec.tolerance.norm} <= {spec.tolerance.epsilon:g}? "
                         f"(timeout {b.timeout:g} s)")
        v = _compare(Path(spec.model), final, ctx.input_set, spec.tolerance.epsilon, spec.tolerance.norm,
                     b.name, b.timeout)
        rec = {**v, "epsilon": spec.tolerance.epsilon, "norm": spec.tolerance.norm, "timeout": b.timeout}
        ctx.progress.say(f"back-end {b.name}: {rec['verdict']}")
        out.append(rec)
    return out


def _compare(a: Path, b: Path, input_set, epsilon: float, norm: str, backend: str, timeout: float) -> dict[str, Any]:
    """A back-end verdict as JSON; ``lumpver.api.compare`` when present (replays counterexamples)."""
    t0 = time.perf_counter()
    try:
        if importlib.util.find_spec("lumpver.api.compare") is not None:
            from lumpver.api.compare import compare_models

            v = compare_models(str(a), str(b), input_set, epsilon, norm, backend, timeout)
        else:
            v = _compare_direct(a, b, input_set, epsilon, norm, backend, timeout)
    except InputError:
        raise
    except Exception as e:  # a back-end failure is "unknown", never "proved"
        return {"backend": backend, "verdict": "unknown", "reason": f"{type(e).__name__}: {e}",
                "upper_bound": None, "lower_bound": None, "seconds": time.perf_counter() - t0}
    d = v.to_json()
    d.pop("details", None)
    return d


def _compare_direct(a: Path, b: Path, input_set, epsilon: float, norm: str, backend: str, timeout: float):
    import numpy as np

    from lumpver.ir.onnx_import import load_onnx
    from lumpver.ir.runtime import run_onnx
    from lumpver.verifiers.base import Query, Verdict, get_backend

    f, g = load_onnx(a), load_onnx(b)
    v = get_backend(backend).check(Query(f, input_set, other=g, epsilon=epsilon, norm=norm, timeout=timeout))
    if v.verdict == "violated":  # replay on the ONNX files before believing it
        x = np.asarray(v.counterexample, dtype=np.float32).reshape(1, -1)
        d = run_onnx(a, x).reshape(-1) - run_onnx(b, x).reshape(-1)
        size = {"linf": np.max(np.abs(d)), "l1": np.sum(np.abs(d)), "l2": np.linalg.norm(d)}.get(norm)
        if size is None or not size > epsilon:
            return Verdict("unknown", v.backend, "counterexample did not replay on the ONNX files",
                           upper_bound=v.upper_bound, lower_bound=v.lower_bound, seconds=v.seconds)
    return v


# ----- document and reports --------------------------------------------------------------------
def _document(ctx: _Ctx, net, steps, backends, seconds: float) -> dict[str, Any]:
    from lumpver.fileio import sha256_file
    from lumpver.reports.render import REPORT_FORMAT, overall

    spec = ctx.spec
    title = f"lumpver run: {Path(spec.path).name}" + (f" - {spec.description}" if spec.description else "")
    return {
        "format": REPORT_FORMAT, "title": title, "spec": str(spec.path),
        "model": {"path": os.path.relpath(Path(spec.model).resolve(), ctx.out_dir.resolve()),
                  "sha256": sha256_file(spec.model), "hidden_widths": net.hidden_widths,
                  "n_inputs": net.n_inputs, "n_outputs": net.n_outputs, "params": net.n_params},
        "input_set": None if ctx.input_set is None else _set_summary(ctx.input_set),
        "tolerance": None if spec.tolerance is None else {"norm": spec.tolerance.norm,
                                                          "epsilon": spec.tolerance.epsilon},
        "steps": steps, "backends": backends, "overall": overall(steps, _xmax(ctx.input_set)),
        "seconds": round(seconds, 3),
    }


def _xmax(input_set) -> Optional[float]:
    """Largest ``||x||_inf`` over the input set (None when there is none or a region is unbounded)."""
    if input_set is None:
        return None
    try:
        boxes = input_set.boxes()
    except ValueError:
        return None
    return max(float(max(abs(b.lower).max(), abs(b.upper).max())) for b in boxes)


def _set_summary(input_set) -> dict[str, Any]:
    """A short JSON view of the input set (full sets are in the certificates)."""
    regions = []
    for r in input_set.regions[:8]:
        d = r.to_json()
        if d.get("type") == "box" and len(d["lower"]) > 16:
            d = {"type": "box", "dim": len(d["lower"]), "lower_min": min(d["lower"]), "upper_max": max(d["upper"])}
        regions.append(d)
    return {"regions": len(input_set.regions), "dim": input_set.dim, "first_regions": regions,
            "source": input_set.source}


def _write_reports(ctx: _Ctx, doc: dict[str, Any]) -> list[str]:
    from lumpver.fileio import write_text_atomic
    from lumpver.reports.render import render

    names = []
    for kind in ctx.spec.output.reports:
        name = f"report.{kind}"
        write_text_atomic(ctx.stage / name, render(doc, "." + kind))
        names.append(name)
    return names
