"""Time to a counterexample on every sat instance we have: the falsifier alone and ``verify`` (issue 13).

    python bench/bench_falsify.py [--classes acasxu,mnist_fc,oval21,verivital,test] [--falsify-timeout 10]
                                  [--verify-timeout 30] [--limit N] [--filter S] [--no-verify] [--no-falsify]
                                  [--csv OUT.csv] [--attack RESTARTS,STEPS,EVERY] [--unsat]

Sat instances: those where more VNN-COMP tools published ``sat`` than ``unsat`` (ties left out; the published CSVs
in ../shared/data), plus ``test_sat`` (known violated). Per instance, in one process, the two settings alternate
(which runs first alternates too, so machine load hits both alike):

- ``base``: the falsifier before the batched APGD rounds (``falsify.search(attack=None)``, ``BabOptions(attack=None,
  falsify_seconds=1.0)``, the settings of the code before this benchmark);
- ``new``: the current defaults (``falsify.DEFAULT_ATTACK``, ``BabOptions()``).

"falsifier" = :func:`lumpver.verifiers.falsify.search` with the settings ``bab`` uses for its first run (500
samples, 4 starts, 30 steps, restarts until the deadline) on each case of the property, ``--falsify-timeout``
seconds in all; a counterexample counts only once onnxruntime replays it (:func:`lumpver.api.verify.replay_case`).
"verify" = :func:`lumpver.api.verify.verify_property` (``auto``, one process, ``--verify-timeout``), which replays its
``sat`` with onnxruntime. ``--unsat``: the published unsat instances (``test_unsat``), ``verify`` only ("found" =
decided unsat): what the falsifier's budget costs where there is nothing to find. Prints one line per instance and a
Markdown table per class: instances found / decided,
seconds summed over the instances both settings found, and the ratio base/new (> 1: new is faster).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data"

#: class -> (folder, published results file)
CLASSES = {"acasxu": ("acasxu", "acasxu/published_results_vnncomp2022.csv"),
           "mnist_fc": ("mnist_fc", "mnist_fc/published_results_vnncomp2022.csv"),
           "oval21": ("cnn/oval21", "cnn/published_results_vnncomp2021.csv"),
           "verivital": ("cnn/verivital", "cnn/published_results_vnncomp2021.csv"),
           "test": ("test", None)}
SETTINGS = ("base", "new")


@dataclass
class Outcome:
    found: bool
    seconds: float
    note: str = ""


def published(results: Path, want: str) -> set[tuple[str, str]]:
    """(onnx name, vnnlib name) where more tools published ``want`` (sat/unsat) than the other answer."""
    votes: dict = defaultdict(Counter)
    with open(results) as f:
        for row in csv.DictReader(f):
            res = row["result"].strip().lower()
            word = {"violated": "sat", "holds": "unsat"}.get(res, res)
            votes[(Path(row["onnx"]).name, Path(row["vnnlib"]).name)][word] += 1
    other = "unsat" if want == "sat" else "sat"
    return {k for k, c in votes.items() if c[want] > c[other]}


def instances(cls: str, want: str = "sat") -> list[tuple[str, Path, Path]]:
    """(name, onnx, vnnlib) of the class's sat (or unsat) instances (module docstring)."""
    folder, results = CLASSES[cls]
    base = DATA / folder
    rows = [r for r in csv.reader(open(base / "instances.csv")) if r and r[0] != "onnx"]
    if results is None:  # ../shared/data/README.md: test_sat is violated, test_unsat holds
        sat = {(f"test_{want}.onnx", "test_prop.vnnlib")}
    else:
        sat = published(DATA / results, want)
    out = []
    for r in rows:
        onnx, prop = base / r[0], base / r[1]
        if (onnx.name, prop.name) in sat:
            out.append((f"{onnx.stem.replace('ACASXU_run2a_', '').replace('_batch_2000', '')}:{prop.stem}", onnx, prop))
    return out


def options(setting: str, attack: str = ""):
    """(falsify.search's attack, BabOptions) of a setting; ``attack`` = "restarts,steps,every" overrides the new
    setting's :class:`AttackOptions` (A/B runs)."""
    from dataclasses import replace

    from lumpver.verifiers.bab import BabOptions
    from lumpver.verifiers.falsify import DEFAULT_ATTACK

    if setting == "base":
        return None, BabOptions(attack=None, falsify_seconds=1.0)
    opt = DEFAULT_ATTACK
    if attack:
        r, s, e = (int(v) for v in attack.split(","))
        opt = replace(opt, restarts=r, steps=s, every=e)
    return opt, BabOptions(attack=opt)


def run_falsifier(onnx: Path, prop: Path, attack, timeout: float) -> Outcome:
    """The falsifier alone on each case until the first onnxruntime-replayed counterexample."""
    import numpy as np

    from lumpver.api.verify import replay_case
    from lumpver.bounds.blas import blas_single_thread
    from lumpver.ir.onnx_import import load_model
    from lumpver.specs.inputset import InputSet
    from lumpver.specs.vnnlib import read_vnnlib
    from lumpver.verifiers.base import Query
    from lumpver.verifiers.falsify import search

    net = load_model(onnx)
    spec = read_vnnlib(prop, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    t0 = time.monotonic()
    evals = 0
    for i, case in enumerate(spec.cases):
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            break
        q = Query(net, InputSet([case.region]), prop=case.unsafe, timeout=left)
        with blas_single_thread():  # as bab runs it
            res = search(q, samples=500, starts=4, steps=30, deadline=time.monotonic() + left / (len(spec.cases) - i),
                         rng=np.random.default_rng(0), restarts=10**6, attack=attack)
        evals += res.evaluations
        if res.counterexample is not None:
            ok, _ = replay_case(onnx, case, res.counterexample)
            return Outcome(ok, time.monotonic() - t0, f"{evals} evals" + ("" if ok else ", NOT REPLAYED"))
    return Outcome(False, time.monotonic() - t0, f"{evals} evals")


def run_verify(onnx: Path, prop: Path, bab_options, timeout: float, want: str) -> Outcome:
    """``verify``; found = it answered ``want``."""
    from lumpver.api.verify import verify_property

    t0 = time.monotonic()
    r = verify_property(onnx, prop, backend="auto", timeout=timeout, bab_options=bab_options)
    return Outcome(r.result == want, time.monotonic() - t0, r.result)


def table(rows: list[dict], kind: str) -> None:
    """Markdown table per class for ``kind`` (falsify / verify)."""
    print(f"\n{kind}: | class | instances | found base | found new | both: base s | new s | ratio base/new |"
          f" misses base | misses new |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    by = defaultdict(list)
    for r in rows:
        if r.get(f"{kind}_base") is not None:
            by[r["cls"]].append(r)
    for cls, rs in by.items():
        fb = [r for r in rs if r[f"{kind}_base"].found]
        fn = [r for r in rs if r[f"{kind}_new"].found]
        both = [r for r in rs if r[f"{kind}_base"].found and r[f"{kind}_new"].found]
        sb = sum(r[f"{kind}_base"].seconds for r in both)
        sn = sum(r[f"{kind}_new"].seconds for r in both)
        miss_b = ", ".join(r["name"] for r in rs if not r[f"{kind}_base"].found) or "-"
        miss_n = ", ".join(r["name"] for r in rs if not r[f"{kind}_new"].found) or "-"
        print(f"| {cls} | {len(rs)} | {len(fb)} | {len(fn)} | {sb:.2f} | {sn:.2f} | {sb / max(sn, 1e-9):.2f} | "
              f"{miss_b} | {miss_n} |")


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", default="acasxu,mnist_fc,oval21,verivital,test")
    ap.add_argument("--falsify-timeout", type=float, default=10.0)
    ap.add_argument("--verify-timeout", type=float, default=30.0)
    ap.add_argument("--limit", type=int, default=0, help="at most this many instances per class (0: all)")
    ap.add_argument("--filter", default="", help="only instances whose name contains this")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--no-falsify", action="store_true")
    ap.add_argument("--csv", default="", help="per-instance rows to this file")
    ap.add_argument("--unsat", action="store_true", help="the published unsat instances instead (verify only: what "
                    "the falsifier costs where there is nothing to find)")
    ap.add_argument("--attack", default="", help="RESTARTS,STEPS,EVERY: the new setting's APGD options (A/B runs)")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    t_start = time.monotonic()
    for cls in args.classes.split(","):
        want = "unsat" if args.unsat else "sat"
        insts = [i for i in instances(cls, want) if args.filter in i[0]]
        for k, (name, onnx, prop) in enumerate(insts[: args.limit or None]):
            row: dict = {"cls": cls, "name": name}
            order = SETTINGS if k % 2 == 0 else SETTINGS[::-1]
            for kind in ("falsify", "verify"):
                if (kind == "falsify" and (args.no_falsify or args.unsat)) or (kind == "verify" and args.no_verify):
                    continue
                for s in order:
                    attack, bab = options(s, args.attack)
                    row[f"{kind}_{s}"] = run_falsifier(onnx, prop, attack, args.falsify_timeout) \
                        if kind == "falsify" else run_verify(onnx, prop, bab, args.verify_timeout, want)
            rows.append(row)
            print(f"{cls:9s} {name:40s} " + "  ".join(
                f"{key}: {'found' if o.found else 'MISS '} {o.seconds:6.2f} s ({o.note})"
                for key, o in row.items() if isinstance(o, Outcome)), flush=True)
    for kind in ("falsify", "verify"):
        table(rows, kind)
    print(f"\n{len(rows)} {want} instances, {time.monotonic() - t_start:.0f} s wall")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "instance", "what", "setting", "found", "seconds", "note"])
            for r in rows:
                for key, o in r.items():
                    if isinstance(o, Outcome):
                        kind, s = key.split("_")
                        w.writerow([r["cls"], r["name"], kind, s, o.found, f"{o.seconds:.3f}", o.note])


if __name__ == "__main__":
    main()
