"""The Python API of a spec run (``lumpver run SPEC.toml``, CONTRACT.md; DESIGN.md §2-§9).

:func:`run_spec` does everything a spec file declares:

1. load the model and the declared input set;
2. apply the ``[[reductions]]`` **in order**, each to the previous step's result, each writing
   its model and certificate (``stepK_METHOD.onnx`` / ``stepK_METHOD.cert.json``) through the
   reduction pass (:mod:`lumpver.reductions.passes`, the same passes the commands run);
3. re-check every certificate independently (:func:`lumpver.certificates.format.check_certificate`);
4. ask every declared ``[[backends]]`` entry whether ``sup_X ||f - g|| <= epsilon`` holds
   between the original f and the final g (``[tolerance]``; needs an input set);
5. write ``report.md`` / ``report.html`` / ``report.json`` (those ``[output].reports`` lists).

Atomicity: everything is produced in a staging folder beside the output folder (same parent, so
the relative model paths inside certificates stay valid) and moved into place only when every
step succeeded; a failing step leaves the output folder untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lumpver.api.compare import compare_models
from lumpver.api.reduce import apply_pass
from lumpver.certificates.format import check_certificate, model_stats
from lumpver.errors import InputError
from lumpver.fileio import sha256_file, write_text_atomic
from lumpver.ir.graph import GraphNetwork
from lumpver.ir.network import Network
from lumpver.ir.onnx_import import load_model
from lumpver.progress import Progress
from lumpver.reductions.base import ReductionPass
from lumpver.reductions.confident import ConfidentConfig
from lumpver.reductions.exact import DEFAULT_TOLERANCE
from lumpver.reductions.passes import (
    ApproxPass,
    ConfidentPass,
    CoresetPass,
    ExactPass,
    MagnitudePrunePass,
    OnSetPass,
    QuantizePass,
    nonzero_params,
)
from lumpver.reports.facts import input_set_summary
from lumpver.reports.render import REPORT_FORMAT, overall, render, with_provenance
from lumpver.specs.inputset import InputSet
from lumpver.specs.load import require_nonempty
from lumpver.specs.runspec import ReductionStep, Spec, load_spec
from lumpver.specs.norm_names import VECTOR_NORMS
from lumpver.verifiers.base import Verdict
from lumpver.verifiers.sdp_problem import NORMS as SDP_NORMS


@dataclass
class RunResult:
    """What :func:`run_spec` produced."""

    out_dir: Path
    document: dict[str, Any]  # the report document (lumpver.reports.render)
    files: list[Path] = field(default_factory=list)  # everything written into out_dir
    exit_code: int = 0  # 0, or 1 when a certificate does not re-check or a back-end finds a violation


@dataclass
class _Ctx:
    spec: Spec
    stage: Path
    out_dir: Path
    progress: Progress
    input_set: Optional[InputSet] = None


def run_spec(spec_path: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None, quiet: bool = False,
             recheck: bool = True, command: Optional[str] = None) -> RunResult:
    """Run a spec file; see the module docstring. InputError for bad input (exit 2). ``command``:
    the command line the reports record (default: the Python API)."""
    t0 = time.perf_counter()
    progress: Progress = Progress(quiet)
    spec = load_spec(spec_path)
    out = Path(out_dir) if out_dir is not None else Path(spec.output.dir)
    net = load_model(spec.model)  # a chain, or a graph network (residual Add, Concat, MaxPool)
    input_set = None if spec.input_set_spec is None else require_nonempty(spec.input_set(net.n_inputs), str(spec.path))
    _prepare_out(out, [spec.model, Path(spec_path)])
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    progress = _FinalNames(progress, stage, out)
    try:
        ctx = _Ctx(spec, stage, out, progress, input_set)
        progress.say(f"spec {spec_path}: model {spec.model.name} ({net.n_hidden} hidden neurons), "
                     f"{len(spec.reductions)} reduction step(s), {len(spec.backends)} back-end(s)")
        steps, final = _run_steps(ctx, net)
        if recheck:
            _recheck(ctx, steps)
        backends = _run_backends(ctx, final, steps)
        doc = with_provenance(_document(ctx, net, steps, backends, time.perf_counter() - t0), command)
        _write_reports(ctx, doc)
        files = _commit(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    failed = any((s["recheck"] or {}).get("holds") is False for s in steps) or \
        any(b["verdict"] == "violated" for b in backends)
    progress.say(f"wrote {len(files)} file(s) into {out}: " + ", ".join(p.name for p in files))
    return RunResult(out, doc, files, 1 if failed else 0)


class _FinalNames(Progress):
    """Progress whose lines name the files where they will end up, not the staging folder."""

    def __init__(self, inner: Progress, stage: Path, out: Path) -> None:
        super().__init__(inner.quiet, inner.interval, inner.stream)
        self._t0 = inner._t0
        self._names = (str(stage), str(out))

    def say(self, msg: str) -> None:
        super().say(msg.replace(*self._names))


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
#: why a declared ``tolerance`` is not used by a method (the step records it as a note)
_UNUSED_TOLERANCE = {
    "on-set": "the on-set reduction fixes its own QR and lumping tolerances (recorded in the certificate)",
    "approx": "approximate lumping searches the number of removed neurons by bisection",
}


def _run_steps(ctx: _Ctx, net: Network | GraphNetwork) -> tuple[list[dict[str, Any]], Path]:
    """Apply the reductions in order; returns the step records and the final model path."""
    current, current_net = Path(ctx.spec.model), net
    steps = []
    for k, step in enumerate(ctx.spec.reductions, start=1):
        name = f"step{k}_{step.method.replace('-', '')}"
        out, cert = ctx.stage / f"{name}.onnx", ctx.stage / f"{name}.cert.json"
        ctx.progress.say(f"step {k}: {step.method}")
        t0 = time.perf_counter()
        res = apply_pass(_pass_for(ctx, step, k), current, out, cert, ctx.input_set, ctx.progress)
        reduced = load_model(res.model_path)
        written = res.certificate_path is not None and res.certificate_path.is_file()
        record = {"index": k, "method": _method_label(step), "model_path": out.name,
                  "certificate_path": cert.name if written else None,
                  "certificate": json.loads(cert.read_text(encoding="utf-8")) if written else None,
                  "bytes": out.stat().st_size,
                  "stats": model_stats(current_net, reduced, time.perf_counter() - t0), "recheck": None}
        record["stats"].update(nonzero_params_before=nonzero_params(current_net),  # what pruning changes
                               nonzero_params_after=nonzero_params(reduced))
        note = "; ".join(filter(None, [res.note, _unused_tolerance(ctx, step, k)]))
        if note:
            record["note"] = note
        steps.append(record)
        current, current_net = out, reduced
    return steps, current


def _pass_for(ctx: _Ctx, step: ReductionStep, k: int) -> ReductionPass:
    """The reduction pass a ``[[reductions]]`` entry declares."""
    if step.method == "exact":
        tol = DEFAULT_TOLERANCE if step.tolerance is None else step.tolerance
        if not 0 < tol < 0.1:
            raise InputError(f"[[reductions]][{k}].tolerance: must be in (0, 0.1) for exact lumping, got {tol}",
                             str(ctx.spec.path))
        return ExactPass(tol)
    if step.method == "on-set":
        return OnSetPass()
    if step.method == "approx":
        tol, names = ctx.spec.tolerance, [b.name for b in ctx.spec.backends]
        timeout = sum(b.timeout for b in ctx.spec.backends) or 300.0
        return ApproxPass(tol.epsilon, tol.norm, "interval" if "interval" in names else "auto", timeout)
    if step.method == "quantize":
        return QuantizePass(step.bits, bool(step.per_channel))
    if step.prune_method == "confident":
        return ConfidentPass(step.calibration, ConfidentConfig(step.alpha, step.delta,
                                                               granularity=step.granularity or "auto"))
    if step.prune_method == "coreset":
        return CoresetPass(step.keep)
    return MagnitudePrunePass(step.keep, step.granularity or "weight")


def _method_label(step: ReductionStep) -> str:
    if step.method == "prune":
        return f"prune ({step.prune_method})"
    if step.method == "quantize":
        return f"quantize ({step.bits}-bit{', per channel' if step.per_channel else ''})"
    return step.method


def _unused_tolerance(ctx: _Ctx, step: ReductionStep, k: int) -> str:
    if step.tolerance is None or step.method not in _UNUSED_TOLERANCE:
        return ""
    msg = f"the declared tolerance {step.tolerance:g} is not used: {_UNUSED_TOLERANCE[step.method]}"
    ctx.progress.say(f"step {k}: note: {msg}")
    return msg


def _recheck(ctx: _Ctx, steps: list[dict[str, Any]]) -> None:
    for s in steps:
        if not s["certificate_path"]:
            continue
        rep = check_certificate(ctx.stage / s["certificate_path"])
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
        cannot = _cannot_answer(b.name, spec.tolerance.norm)
        if cannot:
            ctx.progress.say(f"back-end {b.name}: skipped, {cannot}")
            out.append({"backend": b.name, "verdict": "skipped", "reason": cannot,
                        "epsilon": spec.tolerance.epsilon, "norm": spec.tolerance.norm})
            continue
        ctx.progress.say(f"back-end {b.name}: sup ||f - g||_{spec.tolerance.norm} <= {spec.tolerance.epsilon:g}? "
                         f"(timeout {b.timeout:g} s)")
        v = _compare(Path(spec.model), final, ctx.input_set, spec.tolerance.epsilon, spec.tolerance.norm,
                     b.name, b.timeout)
        rec = {**v, "epsilon": spec.tolerance.epsilon, "norm": spec.tolerance.norm, "timeout": b.timeout}
        ctx.progress.say(f"back-end {b.name}: {rec['verdict']}")
        out.append(rec)
    return out


#: back-end -> the difference norms it can decide or bound (the others answer every norm)
NORMS_ANSWERED = {"sdp": SDP_NORMS, "marabou": VECTOR_NORMS}


def _cannot_answer(backend: str, norm: str) -> str:
    """Why ``backend`` cannot answer a question in ``norm`` ('' when it can)."""
    norms = NORMS_ANSWERED.get(backend)
    if norms is None or norm in norms:
        return ""
    return f"it answers {', '.join(norms)} only, not the declared [tolerance].norm {norm}"


def _compare(a: Path, b: Path, input_set: InputSet, epsilon: float, norm: str, backend: str,
             timeout: float) -> dict[str, Any]:
    """A back-end verdict as JSON (:func:`lumpver.api.compare.compare_models`: counterexamples replayed)."""
    t0 = time.perf_counter()
    try:
        v = compare_models(str(a), str(b), input_set, epsilon, norm, backend, timeout)
    except InputError:
        raise
    except Exception as e:  # a back-end failure is "unknown", never "proved"
        v = Verdict("unknown", backend, f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)
    d = v.to_json()
    d.pop("details", None)
    return d


# ----- document and reports --------------------------------------------------------------------
def _document(ctx: _Ctx, net, steps, backends, seconds: float) -> dict[str, Any]:
    spec = ctx.spec
    title = f"lumpver run: {Path(spec.path).name}" + (f" - {spec.description}" if spec.description else "")
    return {
        "format": REPORT_FORMAT, "title": title, "spec": str(spec.path),
        "model": {"path": os.path.relpath(Path(spec.model).resolve(), ctx.out_dir.resolve()),
                  "sha256": sha256_file(spec.model), "hidden_widths": net.hidden_widths,
                  "n_inputs": net.n_inputs, "n_outputs": net.n_outputs, "params": net.n_params,
                  "bytes": Path(spec.model).stat().st_size},
        "input_set": input_set_summary(ctx.input_set, _set_file(spec)),
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


def _set_file(spec: Spec) -> str:
    """Where the input set is declared: its VNN-LIB file, else the spec's [input_set] table."""
    path = getattr(spec.input_set_spec, "path", None)
    return str(path) if path else f"{spec.path} [input_set]"


def _write_reports(ctx: _Ctx, doc: dict[str, Any]) -> list[str]:
    names = []
    for kind in ctx.spec.output.reports:
        name = f"report.{kind}"
        write_text_atomic(ctx.stage / name, render(doc, "." + kind))
        names.append(name)
    return names
