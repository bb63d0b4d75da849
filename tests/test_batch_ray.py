"""``lumpver batch --engine ray`` (DESIGN.md §12) against a real Ray head started here.

The head is ``ray start --head --block`` on a free port, node address 127.0.0.1, in its own session
with token authentication (a fresh token in the environment, not ~/.ray); the tests stop it by
signalling that process, then its own process group. Answers are compared with the local process
pool and with the published VNN-COMP 2022 results (ACAS Xu) or the known answers (test nets).
"""
from __future__ import annotations

import csv
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import interruptible

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ACAS = SHARED / "acasxu"
RAY = Path(sys.executable).with_name("ray")
STARTED = re.compile(r"#(\d+) running on (\S+) pid (\d+)")

# (model, property, known answer): ACAS Xu answers from the published VNN-COMP 2022 results file
# (checked below), test-net answers as in tests/test_batch.py
SUITE = [(ACAS / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", ACAS / "vnnlib/prop_1.vnnlib"),
         (ACAS / "onnx/ACASXU_run2a_1_2_batch_2000.onnx", ACAS / "vnnlib/prop_2.vnnlib"),
         (ACAS / "onnx/ACASXU_run2a_1_4_batch_2000.onnx", ACAS / "vnnlib/prop_2.vnnlib"),
         (ACAS / "onnx/ACASXU_run2a_1_4_batch_2000.onnx", ACAS / "vnnlib/prop_4.vnnlib"),
         (SHARED / "test/test_sat.onnx", SHARED / "test/test_prop.vnnlib"),
         (SHARED / "test/test_unsat.onnx", SHARED / "test/test_prop.vnnlib")]
TEST_NET_ANSWERS = {"test_sat.onnx": "sat", "test_unsat.onnx": "unsat"}
SLOW_A = (ACAS / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", ACAS / "vnnlib/prop_3.vnnlib")  # several seconds
HARD = (ACAS / "onnx/ACASXU_run2a_3_3_batch_2000.onnx", ACAS / "vnnlib/prop_2.vnnlib")  # open after 30 s
SLOW_B = (ACAS / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", ACAS / "vnnlib/prop_4.vnnlib")
FAST = (ACAS / "onnx/ACASXU_run2a_1_4_batch_2000.onnx", ACAS / "vnnlib/prop_2.vnnlib")


@dataclass
class Head:
    address: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_env() -> dict[str, str]:
    """Token authentication with a fresh token for this test cluster and its drivers."""
    return dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on a free loopback port (2 CPUs); stopped by its own processes at the end."""
    assert RAY.is_file(), f"{RAY} missing: ray is part of the test extra (pip install -e '.[test]')"
    tmp = Path(tempfile.mkdtemp(prefix="lvray-"))  # short: Ray's unix socket paths are length-limited
    port, env = _free_port(), _ray_env()
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", f"--temp-dir={tmp / 'r'}", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine can be slow to start the head
        while "Ray runtime started" not in (tmp / "head.log").read_text():
            assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start within 180 s"
            time.sleep(0.5)
        yield Head(f"127.0.0.1:{port}", env)
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` (it stops the processes it started), then SIGKILL to what is
    left of its process group (its own session: only this head's processes)."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait()


def _write_suite(path: Path, rows, timeout: float) -> Path:
    path.write_text("".join(f"{m},{p},{timeout:g}\n" for m, p in rows))
    return path


def _batch(suite: Path, out: Path, *extra: str, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", "batch", str(suite), "--out", str(out), "-q", *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def _published() -> dict[tuple[str, str], str]:
    """The decided answer of each ACAS Xu instance on which the VNN-COMP 2022 tools that decided it agree."""
    answers: dict[tuple[str, str], set[str]] = {}
    with open(ACAS / "published_results_vnncomp2022.csv") as f:
        for r in csv.DictReader(f):
            if r["result"] in ("sat", "unsat"):
                answers.setdefault((r["onnx"], r["vnnlib"]), set()).add(r["result"])
    return {k: v.pop() for k, v in answers.items() if len(v) == 1}


def test_address_and_local_cluster_give_the_pool_answers(ray_head, tmp_path):
    suite = _write_suite(tmp_path / "instances.csv", SUITE, 120)
    runs = {"pool": _batch(suite, tmp_path / "pool", "--jobs", "2"),
            "address": _batch(suite, tmp_path / "address", "--engine", "ray", "--address", ray_head.address,
                              env=ray_head.env),
            "local": _batch(suite, tmp_path / "local", "--engine", "ray", "--jobs", "2", env=_ray_env())}
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stderr[-3000:])
    answers = {name: [row["result"] for row in _summary(tmp_path / name)] for name in runs}
    published = _published()
    expected = [TEST_NET_ANSWERS.get(m.name) or published[(m.name, p.name)] for m, p in SUITE]
    assert answers["pool"] == expected
    assert answers["address"] == expected and answers["local"] == expected
    for name in ("address", "local"):
        rows = _summary(tmp_path / name)
        assert [r["index"] for r in rows] == [str(k + 1) for k in range(len(SUITE))]
        assert all(int(r["neurons_before"]) == 300 for r in rows)  # ACAS Xu and the test nets: 6 x 50 hidden
        assert "| sat | 3 |" in (tmp_path / name / "summary.md").read_text()
        sat_file = next((tmp_path / name / "results").glob("0002_*.txt"))  # replayed counterexample, as the pool
        assert sat_file.read_text().startswith("sat\n((X_0 ")


def _watch(proc: subprocess.Popen) -> "queue.Queue[str]":
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(s) for s in proc.stderr], daemon=True).start()
    return lines


def _is_ray_worker(pid: int) -> bool:
    try:
        return "ray" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").lower()
    except OSError:
        return False


def test_killed_worker_is_retried_once_then_error(ray_head, tmp_path):
    """Kill instance 1's worker once (retried, answers) and instance 2's twice (error, suite goes on)."""
    suite = _write_suite(tmp_path / "instances.csv", [SLOW_A, SLOW_B], 120)
    proc = subprocess.Popen([sys.executable, "-m", "lumpver", "batch", str(suite), "--out", str(tmp_path / "o"),
                             "--engine", "ray", "--address", ray_head.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ray_head.env)
    lines, kills, pids = _watch(proc), {1: 1, 2: 2}, {1: [], 2: []}
    log, deadline = [], time.monotonic() + 400
    while proc.poll() is None or not lines.empty():
        assert time.monotonic() < deadline, "".join(log)[-3000:]
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        log.append(line)
        m = STARTED.search(line)
        if m:
            index, pid = int(m.group(1)), int(m.group(3))
            pids[index].append(pid)
            if kills[index] > 0:
                assert _is_ray_worker(pid), line  # the PID the task reported is a Ray worker on this machine
                kills[index] -= 1
                os.kill(pid, signal.SIGKILL)
    assert proc.wait() == 0, "".join(log)[-3000:]
    assert kills == {1: 0, 2: 0} and len(pids[1]) == 2 and len(pids[2]) == 2, pids
    assert len(set(pids[1])) == 2  # the retry ran in another worker process
    a, b = _summary(tmp_path / "o")
    assert a["result"] == _published()[(SLOW_A[0].name, SLOW_A[1].name)] and "retried" in a["note"]
    assert b["result"] == "error" and ("died" in b["note"].lower() or "crash" in b["note"].lower()), b


def test_ctrl_c_keeps_what_finished(ray_head, tmp_path):
    suite = _write_suite(tmp_path / "instances.csv", [SLOW_A, FAST], 120)
    proc = subprocess.Popen([sys.executable, "-m", "lumpver", "batch", str(suite), "--out", str(tmp_path / "o"),
                             "--engine", "ray", "--address", ray_head.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ray_head.env, preexec_fn=interruptible)
    lines, deadline = _watch(proc), time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the fast instance did not finish first"
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if "[1/2]" in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    rows = _summary(tmp_path / "o")
    assert [(r["index"], r["result"]) for r in rows] == [("2", "sat")]


def test_unreachable_address_is_exit_2_before_any_work(tmp_path):
    suite = _write_suite(tmp_path / "instances.csv", [FAST], 60)
    r = _batch(suite, tmp_path / "o", "--engine", "ray", "--address", f"127.0.0.1:{_free_port()}", timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot reach a Ray cluster" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_time_limit_kills_the_task_in_process_cluster(tmp_path, monkeypatch):
    """The Python API on an in-process local cluster; the driver's hard limit (``timeout + GRACE``,
    here made shorter than the instance's own cooperative stop) force-cancels the running task."""
    import io

    from lumpver.api import batch_ray
    from lumpver.progress import Progress

    for k, v in _ray_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(batch_ray, "GRACE", -4.0)  # limit: 5 s - 4 s = 1 s after the task reports its start
    suite = _write_suite(tmp_path / "instances.csv", [HARD], 5)
    log = io.StringIO()
    res = batch_ray.run_batch_ray(suite, tmp_path / "o", jobs=1, progress=Progress(stream=log))
    (o,) = res.outcomes
    assert o.result == "timeout" and o.note == "killed at the time limit" and o.seconds < 1 + 3, (o, log.getvalue())
    assert STARTED.search(log.getvalue()) and "[1/1] timeout" in log.getvalue()
    assert [r["result"] for r in _summary(tmp_path / "o")] == ["timeout"]
