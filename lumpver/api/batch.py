"""Run a benchmark suite (``instances.csv``) in parallel: ``lumpver batch`` (CONTRACT.md, DESIGN.md §5).

Rows are ``onnx,vnnlib,timeout_s`` with paths relative to the CSV's folder (the VNN-COMP
layout). Each instance runs ``lumpver verify`` in its **own process** (a pool of ``jobs`` worker
threads, each driving one subprocess at a time): a crash or a memory blow-up of one instance
cannot take the others down, and the wall-clock limit is enforced by killing the process
(result ``timeout``). The per-instance result files (VNN-COMP format, counterexamples
included) are kept under ``OUT/results/``; ``summary.csv`` and ``summary.md`` are written
atomically at the end.
"""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lumpver.errors import InputError
from lumpver.progress import SILENT, Progress
from lumpver.api.verify import VerifyResult, verify_property
from lumpver.fileio import write_text_atomic
from lumpver.ir.onnx_import import load_onnx


RESULTS = ("sat", "unsat", "unknown", "timeout", "error")
#: seconds granted beyond an instance's timeout before its process is killed
GRACE = 5.0
SUMMARY_FIELDS = ("index", "onnx", "vnnlib", "timeout_s", "result", "seconds", "neurons_before", "neurons_after",
                  "note")


@dataclass
class Instance:
    index: int
    onnx: Path
    vnnlib: Path
    timeout: float
    row: tuple[str, str, str]  # the CSV text, for the summary


@dataclass
class Outcome:
    index: int
    onnx: str
    vnnlib: str
    timeout_s: float
    result: str
    seconds: float
    neurons_before: Optional[int] = None
    neurons_after: Optional[int] = None
    note: str = ""


@dataclass
class BatchResult:
    outcomes: list[Outcome]
    wall_seconds: float
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)


def read_instances(csv_path: str | os.PathLike, timeout_scale: float = 1.0) -> list[Instance]:
    """Parse ``instances.csv``; InputError ``file:line: ...`` on a malformed row or a missing file."""
    p = Path(csv_path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", str(p)) from None
    base, out = p.parent, []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 3:
            raise InputError(f"expected 3 fields onnx,vnnlib,timeout_s, found {len(row)}", str(p), str(lineno))
        onnx, vnnlib, tos = (c.strip() for c in row)
        try:
            timeout = float(tos)
        except ValueError:
            raise InputError(f"timeout_s is not a number: {tos!r}", str(p), str(lineno)) from None
        if not timeout > 0:
            raise InputError(f"timeout_s must be > 0, got {tos}", str(p), str(lineno))
        for f in (onnx, vnnlib):
            if not (base / f).is_file():
                raise InputError(f"no such file {f!r} (paths are relative to the CSV's folder)", str(p), str(lineno))
        out.append(Instance(len(out) + 1, base / onnx, base / vnnlib, timeout * timeout_scale, (onnx, vnnlib, tos)))
    if not out:
        raise InputError("no instances", str(p))
    return out


def verify_argv(inst: Instance, result_file: Path, reduce: bool, backend: Optional[str]) -> list[str]:
    """The worker command line of one instance: ``lumpver verify`` through its Python API
    (:func:`lumpver.api.verify.verify_property`, same result file), plus a JSON side file with the
    per-case record (reduced sizes)."""
    return [sys.executable, "-m", "lumpver.api.batch", str(inst.onnx), str(inst.vnnlib), f"{inst.timeout!r}",
            str(result_file), "1" if reduce else "0", backend or "auto"]


def worker(argv: list[str]) -> int:
    """``python -m lumpver.api.batch ONNX VNNLIB TIMEOUT RESULT REDUCE BACKEND`` (one instance)."""
    onnx, vnnlib, timeout, result, reduce, backend = argv
    try:
        r = verify_property(onnx, vnnlib, backend, reduce == "1", float(timeout))
    except InputError as e:
        print(f"lumpver batch: error: {e}", file=sys.stderr)
        write_text_atomic(result, "error\n")
        return 2
    write_result(Path(result), r)
    return 0


def write_result(result_file: Path, r: VerifyResult) -> None:
    """The VNN-COMP result file of one instance and its JSON side file (per-case records)."""
    import json


    write_text_atomic(result_file, r.text())
    write_text_atomic(str(result_file) + ".json", json.dumps({"result": r.result, "reason": r.reason,
                                                              "cases": r.cases}, default=float) + "\n")


def _neurons_after(result_file: Path) -> Optional[int]:
    """Largest reduced size over the property's cases (from the worker's side file), if reduced."""
    import json

    try:
        cases = json.loads(Path(str(result_file) + ".json").read_text())["cases"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return reduced_size(cases)


def reduced_size(cases: list) -> Optional[int]:
    """Largest reduced size over a property's case records (``reduced_to``), None when nothing was reduced."""
    sizes: list[int] = []
    for c in cases:
        v = c.get("reduced_to") if isinstance(c, dict) else None
        sizes += [int(s) for s in (v if isinstance(v, list) else [v]) if isinstance(s, (int, float))]
    return max(sizes) if sizes else None  # a case may report one size or one per reduced sub-box


class Launcher:
    """Starts instance processes until :meth:`stop` is called, then ends every running one
    (Ctrl-C: stop launching, end what runs; CONTRACT.md)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopped = False

    def start(self, argv: list[str]) -> Optional[subprocess.Popen]:
        """The started process, or None once stopped (the instance is not launched)."""
        with self._lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            self._running.add(proc)
            return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def stop(self) -> None:
        """No new launches; kill the process group of every running instance."""
        with self._lock:
            self.stopped = True
            for proc in self._running:
                _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_instance(inst: Instance, out_dir: Path, reduce: bool, backend: Optional[str] = None,
                 argv_for: Callable[..., list[str]] = verify_argv, launcher: Optional[Launcher] = None) -> Optional[Outcome]:
    """Run one instance in its own process group; kill it after ``timeout + GRACE`` seconds.
    None when ``launcher`` was stopped before the instance started or while it ran."""
    launcher = launcher or Launcher()
    result_file = result_path(out_dir, inst)
    result_file.unlink(missing_ok=True)
    Path(str(result_file) + ".json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = launcher.start(argv_for(inst, result_file, reduce, backend))
    if proc is None:
        return None
    try:
        stdout, stderr = proc.communicate(timeout=inst.timeout + GRACE)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return outcome(inst, "timeout", time.perf_counter() - t0, note="killed at the time limit")
    finally:
        launcher.done(proc)
    if launcher.stopped:
        return None
    secs = time.perf_counter() - t0
    first = _first_line(result_file)
    if first in RESULTS:
        note = "" if first != "error" else _last_line(stderr)
        return outcome(inst, first, secs, _neurons_after(result_file) if reduce else None, note)
    return outcome(inst, "error", secs, note=_last_line(stderr) or f"exit code {proc.returncode}, no result file")


def result_path(out_dir: Path, inst: Instance) -> Path:
    """Where the result file of one instance goes (``OUT/results/NNNN_model_property.txt``)."""
    return out_dir / "results" / f"{inst.index:04d}_{inst.onnx.stem}_{inst.vnnlib.stem}.txt"


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [s for s in text.strip().splitlines() if s.strip()]
    return lines[-1][:300] if lines else ""


def outcome(inst: Instance, result: str, secs: float, after: Optional[int] = None, note: str = "") -> Outcome:
    return Outcome(inst.index, inst.row[0], inst.row[1], inst.timeout, result, round(secs, 3), None, after, note)


def hidden_sizes(instances: list[Instance]) -> dict[Path, Optional[int]]:
    """Hidden neurons of each distinct model (None when it does not load)."""
    sizes: dict[Path, Optional[int]] = {}
    for inst in instances:
        if inst.onnx not in sizes:
            try:
                sizes[inst.onnx] = load_onnx(inst.onnx).n_hidden
            except InputError:
                sizes[inst.onnx] = None
    return sizes


class _CtrlC:
    """Ctrl-C (SIGINT) as a flag while a batch runs, in the main thread; the previous handler is restored after.
    A KeyboardInterrupt raised at an arbitrary point of the main thread could land inside concurrent.futures'
    locks, and a SIGINT the kernel delivers to a worker thread only trips Python's flag: a main thread blocked
    without a timeout (as_completed) handled it when the next instance ended, 60 s later in the CI run of
    2026-12-01. The handler calls ``on_hit`` (the launcher's stop: its lock is taken by worker threads alone, never
    held by the main thread) and sets the flag; the loop polls every 0.05 s."""

    def __init__(self, on_hit: Callable[[], None]) -> None:
        self.hit, self._old, self._on_hit = False, None, on_hit

    def __enter__(self) -> "_CtrlC":
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.hit = True
        self._on_hit()

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def run_batch(csv_path: str | os.PathLike, out_dir: str | os.PathLike, jobs: Optional[int] = None,
              timeout_scale: float = 1.0, reduce: bool = False, backend: Optional[str] = None,
              progress: Progress = SILENT,
              argv_for: Callable[..., list[str]] = verify_argv) -> BatchResult:
    """Run every instance (``jobs`` at a time, default: the number of cores) and write the summaries."""
    if not timeout_scale > 0:
        raise InputError(f"--timeout-scale must be > 0, got {timeout_scale}")
    instances = read_instances(csv_path, timeout_scale)
    out = Path(out_dir)
    (out / "results").mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or os.cpu_count() or 1)
    sizes = hidden_sizes(instances)
    progress.say(f"{len(instances)} instance(s) from {csv_path}, {jobs} at a time"
                 + (", with on-set reduction" if reduce else ""))
    t0, outcomes, launcher = time.perf_counter(), [], Launcher()
    with _CtrlC(launcher.stop) as ctrl_c, ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(run_instance, inst, out, reduce, backend, argv_for, launcher) for inst in instances}
        while pending and not ctrl_c.hit:
            done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            for fut in done:
                o = fut.result()
                if o is None:  # stopped by Ctrl-C before or while it ran
                    continue
                o.neurons_before = sizes.get(instances[o.index - 1].onnx)
                outcomes.append(o)
                progress.say(f"[{len(outcomes)}/{len(instances)}] {o.result:7s} {o.seconds:8.2f}s  {o.onnx} {o.vnnlib}")
        if ctrl_c.hit:  # launching stopped, what ran ended (the handler); keep what finished (exit 130 in the CLI)
            for f in pending:
                f.cancel()
            progress.say(f"interrupted: {len(outcomes)} of {len(instances)} instance(s) finished; summary of those in {out}")
            summarize(outcomes, time.perf_counter() - t0, out, csv_path, jobs)
            raise KeyboardInterrupt
    return summarize(outcomes, time.perf_counter() - t0, out, csv_path, jobs)


def summarize(outcomes: list[Outcome], wall: float, out_dir: Path, csv_path: str | os.PathLike,
              jobs: int) -> BatchResult:
    """The result of the instances finished so far (sorted by index, counted) with its summaries written."""
    outcomes = sorted(outcomes, key=lambda o: o.index)
    res = BatchResult(outcomes, wall, out_dir, {r: sum(o.result == r for o in outcomes) for r in RESULTS})
    write_summaries(res, csv_path, jobs)
    return res


def write_summaries(res: BatchResult, csv_path: str | os.PathLike, jobs: int) -> None:
    """``summary.csv`` (one row per instance) and ``summary.md`` (table and totals), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    w.writeheader()
    for o in res.outcomes:
        w.writerow({k: ("" if v is None else v) for k, v in asdict(o).items()})
    write_text_atomic(res.out_dir / "summary.csv", buf.getvalue())
    write_text_atomic(res.out_dir / "summary.md", summary_markdown(res, csv_path, jobs))


def summary_markdown(res: BatchResult, csv_path: str | os.PathLike, jobs: int) -> str:
    total = sum(o.seconds for o in res.outcomes)
    lines = [f"# lumpver batch: {csv_path}", "",
             f"{len(res.outcomes)} instances, {jobs} in parallel; wall clock {res.wall_seconds:.1f} s, "
             f"sum of instance times {total:.1f} s (parallel speed-up {total / max(res.wall_seconds, 1e-9):.2f}x).", "",
             "| result | instances |", "|---|---:|"]
    lines += [f"| {r} | {n} |" for r, n in res.counts.items()]
    lines += ["", "| # | onnx | vnnlib | timeout s | result | seconds | hidden before | hidden after | note |",
              "|---:|---|---|---:|---|---:|---:|---:|---|"]
    for o in res.outcomes:
        cells = [o.index, o.onnx, o.vnnlib, f"{o.timeout_s:g}", o.result, f"{o.seconds:.2f}",
                 "" if o.neurons_before is None else o.neurons_before,
                 "" if o.neurons_after is None else o.neurons_after, o.note.replace("|", "/")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    before = [o.neurons_before for o in res.outcomes if o.neurons_before is not None and o.neurons_after is not None]
    after = [o.neurons_after for o in res.outcomes if o.neurons_before is not None and o.neurons_after is not None]
    lines += ["", "Totals: " + ", ".join(f"{n} {r}" for r, n in res.counts.items() if n)
              + f"; {total:.1f} s of verification"
              + (f"; hidden neurons {sum(before)} -> {sum(after)} over the {len(after)} reduced instance(s)"
                 if after else "") + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
