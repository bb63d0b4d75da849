"""``lumpver batch``: parallel runs, hard time limits, summaries, CSV errors, and real verify on test nets."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import interruptible
from lumpver.api.batch import GRACE, read_instances, run_batch
from lumpver.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT.parent / "shared" / "data" / "test"

# A stand-in for `lumpver verify`: sleeps as long as the vnnlib file's name says, then writes
# the word the file contains. It lets the pool, the time limit and the summary be tested
# without depending on any verifier.
FAKE = ("import sys, time, pathlib; v = pathlib.Path(sys.argv[1]); r = pathlib.Path(sys.argv[2]); "
        "time.sleep(float(v.stem.split('_')[1])); r.write_text(v.read_text())")


def fake_argv(inst, result_file, reduce, backend):
    return [sys.executable, "-c", FAKE, str(inst.vnnlib), str(result_file)]


def _suite(tmp_path: Path, rows: list[tuple[str, float, str]]) -> Path:
    """rows: (answer written, sleep seconds, timeout_s); one shared real model file."""
    model = tmp_path / "net.onnx"
    model.write_bytes((ROOT / "specs" / "planted_demo.onnx").read_bytes())
    lines = []
    for k, (word, sleep, timeout) in enumerate(rows):
        v = tmp_path / f"p{k}_{sleep}.vnnlib"
        v.write_text(word + "\n")
        lines.append(f"net.onnx,{v.name},{timeout}")
    (tmp_path / "instances.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "instances.csv"


def test_parallel_timeouts_and_summary(tmp_path):
    rows = [("sat", 0.5, "30"), ("unsat", 0.5, "30"), ("unknown", 0.5, "30"), ("unsat", 60, "1")]
    suite = _suite(tmp_path, rows)
    t0 = time.perf_counter()
    res = run_batch(suite, tmp_path / "out", jobs=4, argv_for=fake_argv)
    wall = time.perf_counter() - t0
    assert [o.result for o in res.outcomes] == ["sat", "unsat", "unknown", "timeout"]
    # the 60 s instance was killed at its limit (1 s + grace), not waited for
    assert res.outcomes[3].seconds < 1 + GRACE + 3 and wall < 1 + GRACE + 6
    # the three 0.5 s instances ran side by side with the slow one
    assert wall < sum(o.seconds for o in res.outcomes)
    from lumpver.ir.onnx_import import load_onnx

    n = load_onnx(tmp_path / "net.onnx").n_hidden
    with open(tmp_path / "out" / "summary.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["result"] for r in got] == ["sat", "unsat", "unknown", "timeout"]
    assert all(int(r["neurons_before"]) == n for r in got)
    assert [r["vnnlib"] for r in got] == [f"p{k}_{s}.vnnlib" for k, (_, s, _) in enumerate(rows)]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| sat | 1 |" in md and "| timeout | 1 |" in md and "| unsat | 2 |" not in md and "| unsat | 1 |" in md


def test_timeout_scale(tmp_path):
    suite = _suite(tmp_path, [("sat", 1.5, "1")])
    assert read_instances(suite, 3.0)[0].timeout == 3.0
    res = run_batch(suite, tmp_path / "o", jobs=1, timeout_scale=3.0, argv_for=fake_argv)
    assert res.outcomes[0].result == "sat"  # 1.5 s fits in 3 s


def test_missing_result_is_error(tmp_path):
    suite = _suite(tmp_path, [("garbage", 0, "10")])
    res = run_batch(suite, tmp_path / "o", jobs=1, argv_for=fake_argv)
    assert res.outcomes[0].result == "error"


@pytest.mark.parametrize("text, where", [("a.onnx,b.vnnlib\n", "1"), ("net.onnx,p.vnnlib,abc\n", "1"),
                                         ("\nnet.onnx,missing.vnnlib,5\n", "2"), ("net.onnx,p.vnnlib,-1\n", "1")])
def test_bad_csv(tmp_path, text, where):
    (tmp_path / "net.onnx").write_bytes(b"x")
    (tmp_path / "p.vnnlib").write_text("x")
    (tmp_path / "i.csv").write_text(text)
    with pytest.raises(InputError) as e:
        read_instances(tmp_path / "i.csv")
    assert f"i.csv:{where}:" in str(e.value)


def test_cli_bad_csv_exit_2(tmp_path):
    (tmp_path / "i.csv").write_text("only,two\n")
    r = subprocess.run([sys.executable, "-m", "lumpver", "batch", str(tmp_path / "i.csv"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "i.csv:1:" in r.stderr and "Traceback" not in r.stderr


def test_real_verify_on_test_nets(tmp_path):
    """`lumpver batch` with the real `lumpver verify` on the shared test networks (known answers)."""
    suite = tmp_path / "instances.csv"
    suite.write_text(f"{TEST_DATA / 'test_sat.onnx'},{TEST_DATA / 'test_prop.vnnlib'},60\n"
                     f"{TEST_DATA / 'test_unsat.onnx'},{TEST_DATA / 'test_prop.vnnlib'},60\n")
    r = subprocess.run([sys.executable, "-m", "lumpver", "batch", str(suite), "--out", str(tmp_path / "o"),
                        "--jobs", "2", "--reduce", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "o" / "summary.csv") as f:
        got = list(csv.DictReader(f))
    assert [g["result"] for g in got] == ["sat", "unsat"]
    assert all(int(g["neurons_before"]) == 300 for g in got)  # ACAS Xu: 6 x 50 hidden
    # verify --reduce looks for a counterexample on the original first (test_sat: decided before any
    # reduction, so no reduced size) and reduces per open sub-box; the size reported is the largest leaf's,
    # which a leaf of the box cannot push above the whole network's
    # (test_unsat may be closed by bounds on the whole box before any reduction: no size either)
    assert all(g["neurons_after"] == "" or 0 < int(g["neurons_after"]) < 300 for g in got)
    sat_file = next((tmp_path / "o" / "results").glob("0001_*.txt"))
    assert sat_file.read_text().startswith("sat\n((X_0 ")


def test_reduced_size_read_from_worker_side_file(tmp_path):
    """The size column takes the largest reduced size over cases and sub-boxes, whatever form a case uses."""
    import json

    from lumpver.api.batch import _neurons_after

    res = tmp_path / "r.txt"
    side = tmp_path / "r.txt.json"
    side.write_text(json.dumps({"cases": [{"reduced_to": [40, 71, 12]}, {"reduced_to": 55}, {"verdict": "proved"}]}))
    assert _neurons_after(res) == 71
    side.write_text(json.dumps({"cases": [{"reduced_to": []}]}))
    assert _neurons_after(res) is None
    side.write_text("not json")
    assert _neurons_after(res) is None


# Like FAKE, but records its PID first (so the test can see which instances were launched and
# whether they still run).
FAKE_PID = ("import os, sys, time, pathlib; v = pathlib.Path(sys.argv[1]); r = pathlib.Path(sys.argv[2]); "
            "pathlib.Path(str(r) + '.pid').write_text(str(os.getpid())); "
            "time.sleep(float(v.stem.split('_')[1])); r.write_text(v.read_text())")
DRIVER = """import sys
sys.path.insert(0, {tests!r})
from test_batch import pid_argv
from lumpver.api.batch import run_batch
from lumpver.progress import Progress
try:
    run_batch({suite!r}, {out!r}, jobs=2, argv_for=pid_argv, progress=Progress())
except KeyboardInterrupt:
    sys.exit(130)
"""


def pid_argv(inst, result_file, reduce, backend):
    return [sys.executable, "-c", FAKE_PID, str(inst.vnnlib), str(result_file)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split(") ", 1)[1][0] != "Z"


def test_ctrl_c_stops_launching_ends_running_and_summarises(tmp_path):
    """Issue 15: Ctrl-C used to say 'interrupted' but run every remaining instance, then leave no summary."""
    suite = _suite(tmp_path, [("unsat", 60, "120"), ("sat", 0.5, "120"), ("unsat", 60, "120"), ("unsat", 60, "120")])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(tests=str(ROOT / "tests"), suite=str(suite),
                                                                 out=str(out))],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=interruptible)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "[1/4]" in line:
            break
    assert "sat" in lines[-1], lines
    pids = {p.name: int(p.read_text()) for p in (out / "results").glob("*.pid") if p.read_text()}
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert time.perf_counter() - t0 < 10  # the 60 s instances were not waited for
    time.sleep(0.5)
    after = {p.name: int(p.read_text()) for p in (out / "results").glob("*.pid") if p.read_text()}
    # nothing was launched after the interrupt: the fourth instance needed a slot that only the interrupt freed;
    # the third may have started as the fast one ended (its pid file can appear just after the snapshot)
    assert set(pids) <= set(after) and not any(name.startswith("0004") for name in after)
    assert {k: v for k, v in after.items() if k in pids} == pids and len(after) in (2, 3)
    assert not any(_alive(pid) for pid in after.values())  # every running instance was ended
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["index"], r["result"]) for r in rows] == [("2", "sat")]
    assert "1 instances" in (out / "summary.md").read_text()
