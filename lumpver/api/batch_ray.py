"""``lumpver batch --engine ray``: a suite's instances as Ray tasks (DESIGN.md §12, CONTRACT.md ``batch``).

Without an address, an in-process local Ray cluster (``jobs`` CPUs, default: the cores); with
``HOST:PORT``, the existing cluster there (lumpver and its dependencies installed on every node). An
unreachable address is an :class:`InputError` (exit 2) raised before any work.

Each instance is one task running :func:`lumpver.api.verify.verify_property` in a Ray worker. The
model and property files travel as bytes through the object store (each distinct file put once, so
a node fetches it once), so the nodes need no shared file system. A task reports ``(index, node,
pid)`` through a queue when it starts; the driver force-cancels it ``timeout + GRACE`` seconds later
(result ``timeout``). A task whose worker dies (killed, out of memory) is retried once by Ray, then
reported as ``error`` with the reason, and the suite goes on. Result files (``OUT/results/``) and
``summary.csv``/``summary.md`` are written as results arrive with the local pool's functions, so an
interrupted run keeps what finished; Ctrl-C cancels what is running, writes the summary of what
finished and re-raises (exit 130).

Ray is the optional extra ``lumpver[ray]``: it is imported only inside the functions of this module.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lumpver.api.batch import (GRACE, RESULTS, BatchResult, Instance, Outcome, hidden_sizes, outcome,
                               read_instances, reduced_size, result_path, summarize, write_result)
from lumpver.api.verify import VerifyResult, verify_property
from lumpver.errors import InputError
from lumpver.progress import SILENT, Progress

#: seconds to wait for a TCP connection to ``--address`` before calling it unreachable
CONNECT_TIMEOUT = 10.0
#: seconds the driver waits for a result before checking time limits and progress again
POLL = 0.5
#: system failures (worker killed, out of memory) retried before the instance is an ``error``
MAX_RETRIES = 1


@dataclass
class Running:
    """Driver-side state of one submitted task."""
    inst: Instance
    started: Optional[float] = None  # perf_counter of the last (re)start reported by the task
    attempts: list[str] = field(default_factory=list)  # "node pid" of each attempt


def run_instance_task(index: int, onnx_name: str, onnx_bytes: bytes, vnnlib_name: str, vnnlib_bytes: bytes,
                      timeout: float, reduce: bool, backend: Optional[str], started: Any) -> VerifyResult:
    """The body of one Ray task: report the start, write the files to a private folder, verify.

    ``started`` is a ``ray.util.queue.Queue`` receiving ``(index, node address, pid)``; bad input
    files give an ``error`` result with the reason (not an exception: nothing to retry)."""
    import ray

    started.put((index, ray.util.get_node_ip_address(), os.getpid()))
    with tempfile.TemporaryDirectory(prefix="lumpver-task-") as tmp:
        onnx, vnnlib = Path(tmp) / onnx_name, Path(tmp) / vnnlib_name
        onnx.write_bytes(onnx_bytes)
        vnnlib.write_bytes(vnnlib_bytes)
        try:
            return verify_property(onnx, vnnlib, backend or "auto", reduce, timeout)
        except InputError as e:
            return VerifyResult("error", str(e))


def check_address(address: str) -> None:
    """InputError (exit 2) unless ``HOST:PORT`` accepts a TCP connection (before any Ray call)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"--address must be HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise InputError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


def connect(address: Optional[str], jobs: Optional[int], quiet: bool) -> int:
    """Start the in-process local cluster (``address`` None) or join the one at ``address``;
    return the cluster's CPU count."""
    import logging

    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'lumpver[ray]'") from None
    if address is not None:
        check_address(address)
    opts: dict[str, Any] = dict(include_dashboard=False, log_to_driver=not quiet,
                                logging_level=logging.ERROR if quiet else logging.WARNING)
    try:
        if address is None:
            ray.init(num_cpus=max(1, jobs or os.cpu_count() or 1), **opts)
        else:
            ray.init(address=address, **opts)
    except Exception as e:  # any failure to start or join is a setup problem of the user's: exit 2, one line
        what = f"join the Ray cluster at {address}" if address else "start a local Ray cluster"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = (" (a cluster with token authentication needs RAY_AUTH_MODE=token and its token)"
                if address and not os.environ.get("RAY_AUTH_MODE") else "")
        raise InputError(f"cannot {what}: {first}{hint}") from None
    return int(ray.cluster_resources().get("CPU", 1))


def run_batch_ray(csv_path: str | os.PathLike, out_dir: str | os.PathLike, jobs: Optional[int] = None,
                  timeout_scale: float = 1.0, reduce: bool = False, backend: Optional[str] = None,
                  progress: Progress = SILENT, address: Optional[str] = None) -> BatchResult:
    """Run every instance as a Ray task (module docstring) and write the summaries as results arrive.

    ``jobs`` caps the tasks in flight (default: all submitted, Ray schedules them on the free CPUs)."""
    import ray

    if not timeout_scale > 0:
        raise InputError(f"--timeout-scale must be > 0, got {timeout_scale}")
    instances = read_instances(csv_path, timeout_scale)
    cpus = connect(address, jobs, progress.quiet)
    try:
        out = Path(out_dir)
        (out / "results").mkdir(parents=True, exist_ok=True)
        sizes = hidden_sizes(instances)
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        progress.say(f"{len(instances)} instance(s) from {csv_path} on {where} ({cpus} CPUs)"
                     + (", with on-set reduction" if reduce else ""))
        return _drive(instances, out, csv_path, min(jobs or len(instances), len(instances)), cpus, sizes,
                      reduce, backend, progress)
    finally:
        ray.shutdown()


def _drive(instances: list[Instance], out: Path, csv_path: str | os.PathLike, in_flight: int, cpus: int,
           sizes: dict, reduce: bool, backend: Optional[str], progress: Progress) -> BatchResult:
    """Submit, watch time limits and collect; a summary after every result; Ctrl-C keeps what finished."""
    import ray
    from ray.util.queue import Queue

    task = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(run_instance_task)
    started, files = Queue(actor_options={"num_cpus": 0}), _put_files(instances)
    todo, running, outcomes = list(reversed(instances)), {}, []
    t0 = time.perf_counter()
    try:
        while todo or running:
            while todo and len(running) < in_flight:
                inst = todo.pop()
                ref = task.remote(inst.index, inst.onnx.name, files[inst.onnx], inst.vnnlib.name,
                                  files[inst.vnnlib], inst.timeout, reduce, backend, started)
                running[ref] = Running(inst)
            _note_starts(started, running, progress)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL)
            finished = [(ref, _collect(ref, running[ref], out, reduce)) for ref in ready]
            finished += _enforce_limits(running, set(ready))
            for ref, o in finished:
                o.neurons_before = sizes.get(running.pop(ref).inst.onnx)
                outcomes.append(o)
                summarize(outcomes, time.perf_counter() - t0, out, csv_path, cpus)
                _say_done(progress, o, outcomes, running, len(instances))
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        summarize(outcomes, time.perf_counter() - t0, out, csv_path, cpus)
        raise
    return summarize(outcomes, time.perf_counter() - t0, out, csv_path, cpus)


def _put_files(instances: list[Instance]) -> dict[Path, Any]:
    """Each distinct model/property file into the object store once (its bytes: no shared file system)."""
    import ray

    refs: dict[Path, Any] = {}
    for inst in instances:
        for p in (inst.onnx, inst.vnnlib):
            if p not in refs:
                refs[p] = ray.put(p.read_bytes())
    return refs


def _note_starts(started: Any, running: dict[Any, Running], progress: Progress) -> None:
    """Record the (re)starts the tasks reported; a restart resets the instance's clock."""
    by_index = {r.inst.index: r for r in running.values()}
    for index, node, pid in started.get_nowait_batch(started.qsize()):
        r = by_index.get(index)
        if r is None:
            continue  # finished (or cancelled) meanwhile
        r.started = time.perf_counter()
        r.attempts.append(f"{node} pid {pid}")
        progress.say(f"#{index} running on {node} pid {pid}"
                     + (f" (retry {len(r.attempts) - 1}: the previous worker died)" if len(r.attempts) > 1 else ""))


def _collect(ref: Any, r: Running, out: Path, reduce: bool) -> Outcome:
    """The outcome of a finished task; a task whose worker died twice is an ``error`` with the reason."""
    import ray

    secs = time.perf_counter() - (r.started or time.perf_counter())
    retried = "; retried after the worker died" if len(r.attempts) > 1 else ""
    try:
        v: VerifyResult = ray.get(ref)
    except ray.exceptions.RayError as e:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return outcome(r.inst, "error", secs, note=f"{type(e).__name__}: {reason}{retried}")
    write_result(result_path(out, r.inst), v)
    after = reduced_size(v.cases) if reduce else None
    note = (v.reason if v.result == "error" else "") + retried
    return outcome(r.inst, v.result if v.result in RESULTS else "error", secs, after, note.lstrip("; "))


def _enforce_limits(running: dict[Any, Running], ready: set) -> list[tuple[Any, Outcome]]:
    """Force-cancel (kill the worker of) every unfinished task past ``timeout + GRACE`` since its last
    start, or started more than ``1 + MAX_RETRIES`` times (Ray may retry out-of-memory kills on its own
    policy: the limit of one retry is kept here)."""
    import ray

    now, stopped = time.perf_counter(), []
    for ref, r in running.items():
        if ref in ready or r.started is None:
            continue
        if len(r.attempts) > 1 + MAX_RETRIES:
            ray.cancel(ref, force=True)
            note = f"the worker died {len(r.attempts) - 1} times (killed or out of memory); last on {r.attempts[-2]}"
            stopped.append((ref, outcome(r.inst, "error", now - r.started, note=note)))
        elif now - r.started > r.inst.timeout + GRACE:
            ray.cancel(ref, force=True)
            stopped.append((ref, outcome(r.inst, "timeout", now - r.started, note="killed at the time limit")))
    return stopped


def _say_done(progress: Progress, o: Outcome, outcomes: list[Outcome], running: dict, total: int) -> None:
    n_run = sum(r.started is not None for r in running.values())
    decided = {k: sum(x.result == k for x in outcomes) for k in ("sat", "unsat")}
    progress.say(f"[{len(outcomes)}/{total}] {o.result:7s} {o.seconds:8.2f}s  {o.onnx} {o.vnnlib}  "
                 f"(running {n_run}, left {total - len(outcomes) - n_run}; "
                 f"decided {decided['sat'] + decided['unsat']}: {decided['sat']} sat, {decided['unsat']} unsat)")
