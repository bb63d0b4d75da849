"""lumpver against NeuralSAT on the same machine, in the same run, on the same instances (issue 13).

    python bench/bench_neuralsat.py [--timeout 30] [--workers 1] [--classes acasxu,mnist_fc,test,verivital,oval21]
                                    [--limit N] [--neuralsat /work/venv-neuralsat] [--out bench_neuralsat.csv]

NeuralSAT (PyPI ``neuralsat``, VNN-COMP 2024/2025 runner-up) lives in its own virtual environment (it
pulls in torch; never a dependency of lumpver): ``python3 -m venv /work/venv-neuralsat &&
/work/venv-neuralsat/bin/pip install neuralsat``. It runs as ``python main.py --net ONNX --spec VNNLIB
--device cpu --timeout T --result_file R`` from the installed ``src/`` folder; lumpver as ``lumpver
verify -q --timeout T --workers W --result R``. The two alternate per instance (so machine load hits
both alike), each in a fresh process. Recorded per instance and tool: the answer, the wall seconds of
the process and the tool's own reported seconds (NeuralSAT's "Runtime" excludes its ~10 s of torch
start-up; lumpver's includes loading the model). Decided = sat or unsat within the time limit by the
tool's own clock (:func:`decided`); a sat/unsat disagreement is
printed as such (lumpver's sat answers are replayed with onnxruntime, so its counterexample decides).
Prints a Markdown table per benchmark class: decided counts, then summed own seconds and their ratio
over the instances both decided.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
LUMPVER = Path(sys.executable).with_name("lumpver")

#: ACAS Xu: the hard instances first (the three lumpver left open at 30 s, peers' slowest), then a spread
ACAS = ["1_1:6", "3_3:2", "4_2:2", "1_1:3", "1_1:5", "3_3:9", "1_5:2", "2_7:1", "2_2:1", "1_9:7", "2_9:8", "4_5:10",
        "1_1:1", "1_1:2", "1_1:4", "2_1:2", "5_3:2", "2_9:1", "5_8:1", "4_9:3"]


@dataclass
class Run:
    answer: str  # sat / unsat / timeout / unknown / error
    own: float  # the tool's own reported seconds (nan if it reported none)
    wall: float


def instances(cls: str) -> list[tuple[Path, Path]]:
    """(onnx, vnnlib) of a benchmark class, from the shared data."""
    if cls == "acasxu":
        d = DATA / "acasxu"
        return [(d / f"onnx/ACASXU_run2a_{n}_batch_2000.onnx", d / f"vnnlib/prop_{p}.vnnlib")
                for n, p in (s.split(":") for s in ACAS)]
    folder = {"verivital": "cnn/verivital", "oval21": "cnn/oval21"}.get(cls, cls)
    rows = [r for r in csv.reader(open(DATA / folder / "instances.csv")) if r]
    if cls == "verivital":
        rows = [r for r in rows if "avgpool" in r[0]]
    return [(DATA / folder / r[0], DATA / folder / r[1]) for r in rows]


def _run(cmd: list[str], cwd: Path | None, cap: float) -> tuple[str, float]:
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=cap)
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    return out, time.monotonic() - t0


def _answer(result_file: Path) -> str:
    try:
        first = result_file.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return "error"
    word = first.split(",")[0].strip().lower()
    return word if word in ("sat", "unsat", "timeout", "unknown") else "unknown"


def run_lumpver(onnx: Path, prop: Path, timeout: float, workers: int, tmp: Path) -> Run:
    res = tmp / "lumpver.txt"
    res.unlink(missing_ok=True)
    out, wall = _run([str(LUMPVER), "verify", "-q", str(onnx), str(prop), "--timeout", f"{timeout:g}",
                      "--workers", str(workers), "--result", str(res)], None, timeout + 120)
    m = re.findall(r"\(([0-9.]+) s\)", out)
    return Run(_answer(res), float(m[-1]) if m else float("nan"), wall)


def run_neuralsat(venv: Path, onnx: Path, prop: Path, timeout: float, tmp: Path) -> Run:
    res = tmp / "neuralsat.txt"
    res.unlink(missing_ok=True)
    src = next((venv / "lib").glob("python3*/site-packages/src"))
    out, wall = _run([str(venv / "bin" / "python"), "main.py", "--net", str(onnx.resolve()), "--spec",
                      str(prop.resolve()), "--device", "cpu", "--timeout", f"{timeout:g}", "--result_file", str(res)],
                     src, timeout + 120)
    m = re.findall(r"Runtime: ([0-9.]+)", out)
    return Run(_answer(res), float(m[-1]) if m else float("nan"), wall)


def decided(row: dict, tool: str, timeout: float) -> bool:
    """sat/unsat within the time limit by the tool's own clock (1 s slack): an answer after the limit
    (NeuralSAT answered oval21 img1598 after 42.7 s on a 30 s limit) is a timeout, as in VNN-COMP."""
    return row[f"{tool}_answer"] in ("sat", "unsat") and float(row[f"{tool}_own"]) <= timeout + 1.0


def table(rows: list[dict], timeout: float) -> str:
    """Markdown: per class, decided counts and summed own seconds (ratio over instances both decided)."""
    lines = ["| class | instances | lumpver decided | NeuralSAT decided | both decided: lumpver s | NeuralSAT s | "
             "ratio NeuralSAT/lumpver | wall s lumpver / NeuralSAT | disagreements |", "|---|---|---|---|---|---|---|---|---|"]
    by = defaultdict(list)
    for r in rows:
        by[r["class"]].append(r)
    for cls, rs in by.items():
        dec = lambda t: [r for r in rs if decided(r, t, timeout)]  # noqa: E731
        both = [r for r in rs if decided(r, "lumpver", timeout) and decided(r, "neuralsat", timeout)]
        sl = sum(float(r["lumpver_own"]) for r in both)
        sn = sum(float(r["neuralsat_own"]) for r in both)
        wl, wn = sum(float(r["lumpver_wall"]) for r in rs), sum(float(r["neuralsat_wall"]) for r in rs)
        dis = sum(r["lumpver_answer"] != r["neuralsat_answer"] for r in both)
        lines.append(f"| {cls} | {len(rs)} | {len(dec('lumpver'))} | {len(dec('neuralsat'))} | {sl:.1f} | {sn:.1f} | "
                     f"{sn / sl if sl else float('nan'):.2f} | {wl:.0f} / {wn:.0f} | {dis} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--classes", default="acasxu,mnist_fc,test,verivital,oval21")
    ap.add_argument("--limit", type=int, default=0, help="at most this many instances per class")
    ap.add_argument("--neuralsat", default=os.environ.get("NEURALSAT_VENV", "/work/venv-neuralsat"))
    ap.add_argument("--out", default="bench_neuralsat.csv", help="per-instance CSV, appended as results arrive")
    ap.add_argument("--table", action="store_true", help="only print the table of an existing --out CSV")
    args = ap.parse_args()
    out = Path(args.out)
    fields = ["class", "onnx", "vnnlib"] + [f"{t}_{k}" for t in ("lumpver", "neuralsat") for k in ("answer", "own", "wall")]
    if not args.table:
        new = not out.exists()
        with open(out, "a", newline="") as f, tempfile.TemporaryDirectory() as tmp:
            w = csv.DictWriter(f, fields)
            if new:
                w.writeheader()
            for cls in args.classes.split(","):
                for onnx, prop in instances(cls)[: args.limit or None]:
                    a = run_lumpver(onnx, prop, args.timeout, args.workers, Path(tmp))
                    b = run_neuralsat(Path(args.neuralsat), onnx, prop, args.timeout, Path(tmp))
                    w.writerow({"class": cls, "onnx": onnx.name, "vnnlib": prop.name,
                                **{f"lumpver_{k}": v for k, v in vars(a).items()},
                                **{f"neuralsat_{k}": v for k, v in vars(b).items()}})
                    f.flush()
                    flag = "  DISAGREE" if {a.answer, b.answer} == {"sat", "unsat"} else ""
                    print(f"{cls} {onnx.name} {prop.name}: lumpver {a.answer} {a.own:.1f} s ({a.wall:.1f} wall), "
                          f"NeuralSAT {b.answer} {b.own:.1f} s ({b.wall:.1f} wall){flag}", flush=True)
    print(table(list(csv.DictReader(open(out))), args.timeout))


if __name__ == "__main__":
    main()
