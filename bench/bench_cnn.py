"""Convolutional networks (issue 12, DESIGN.md §10): verification of the shared CNN instances
against the published VNN-COMP 2021 peers, and exact channel lumping time against read-once time.

``verify``: every instance of ``../shared/data/cnn/verivital`` (Convnet_avgpool, 20) and
``../shared/data/cnn/oval21`` (10) with ``lumpver verify``'s API and a short timeout; per class the
decided count and the time, next to each peer's published count; ratios of times are formed only
within one tool (ours at timeout T vs ours, peers' own published numbers are listed as they are).
Any answer contradicting a peer's decided answer is printed as CONTRADICTION.

``lump``: a planted CNN (:func:`lumpver.ir.planted.planted_cnn`) saved to ONNX; the time of
``load_onnx`` + exact lumping + export against the time of ``load_onnx`` alone (read-once), best
of ``--repeat``.

Usage: python bench/bench_cnn.py [verify|lump|all] [--timeout 30] [--backend interval] [--repeat 3]
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lumpver.api.verify import verify_property  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnn"
CLASSES = {"verivital": "Convnet_avgpool.onnx", "oval21": "cifar_base_kw.onnx"}
ANSWER = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}


def instances() -> list[tuple[str, Path, Path]]:
    out = []
    for folder, model in CLASSES.items():
        with open(DATA / folder / "instances.csv") as fh:
            for onnx_rel, prop_rel, _t in csv.reader(fh):
                if Path(onnx_rel).name == model:
                    out.append((folder, DATA / folder / onnx_rel, DATA / folder / prop_rel))
    return out


def published() -> dict[tuple[str, str], dict[str, tuple[str, float]]]:
    """(folder, vnnlib name) -> tool -> (answer, seconds) for the instances of :data:`CLASSES`."""
    out: dict = defaultdict(dict)
    with open(DATA / "published_results_vnncomp2021.csv") as fh:
        for r in csv.DictReader(fh):
            if CLASSES.get(r["folder"]) == r["onnx"]:
                out[(r["folder"], r["vnnlib"])][r["tool"]] = (ANSWER.get(r["result"].lower(), "-"), float(r["seconds"] or 0))
    return out


def run_verify(timeout: float, backend: str) -> None:
    pub = published()
    ours: dict[str, list] = defaultdict(list)
    for folder, model, prop in instances():
        t0 = time.monotonic()
        r = verify_property(model, prop, backend=backend, timeout=timeout)
        dt = time.monotonic() - t0
        peers = pub[(folder, prop.name)]
        clash = sorted(t for t, (a, _s) in peers.items() if a in ("sat", "unsat") and r.result in ("sat", "unsat") and a != r.result)
        print(f"{folder:10s} {prop.name:55s} {r.result:8s} {dt:6.1f}s" + (f"  CONTRADICTION with {clash}" if clash else ""),
              flush=True)
        ours[folder].append((r.result, dt))
    print(f"\n| class | tool | decided | sat | unsat | total s (decided) |\n|---|---|---|---|---|---|")
    for folder in CLASSES:
        res = ours[folder]
        c = Counter(a for a, _ in res)
        t = sum(s for a, s in res if a in ("sat", "unsat"))
        print(f"| {folder} | lumpver ({backend}, {timeout:g} s) | {c['sat'] + c['unsat']}/{len(res)} | {c['sat']} | {c['unsat']} | {t:.1f} |")
        tools: dict[str, list] = defaultdict(list)
        for (f, _p), peers in pub.items():
            if f == folder:
                for tool, v in peers.items():
                    tools[tool].append(v)
        for tool, vals in sorted(tools.items()):
            c = Counter(a for a, _ in vals)
            t = sum(s for a, s in vals if a in ("sat", "unsat"))
            print(f"| {folder} | {tool} (published) | {c['sat'] + c['unsat']}/{len(vals)} | {c['sat']} | {c['unsat']} | {t:.1f} |")


def run_lump(repeat: int) -> None:
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.ir.planted import planted_cnn
    from lumpver.reductions.exact import exact_lump

    for pool in ("avg", "none"):
        net, truth = planted_cnn(channels=(64, 64), core=(4, 3), pool=pool, image=(3, 32, 32), seed=0)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "planted.onnx"
            save_onnx(net, path)
            read = min(_timed(lambda: load_onnx(path)) for _ in range(repeat))
            lump = min(_timed(lambda: save_onnx(exact_lump(load_onnx(path)).network, Path(d) / "out.onnx"))
                       for _ in range(repeat))
            red = exact_lump(load_onnx(path)).network
        chans = [layer.op.out_channels for layer in red.layers[:-1]]
        print(f"planted CNN pool={pool} channels {list(truth.channels)} -> {chans} (planted {list(truth.core)}): "
              f"read {read * 1e3:.1f} ms, read+lump+write {lump * 1e3:.1f} ms, ratio {lump / read:.2f}x")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=("verify", "lump", "all"))
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--backend", default="interval")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if a.what in ("verify", "all"):
        run_verify(a.timeout, a.backend)
    if a.what in ("lump", "all"):
        run_lump(a.repeat)


if __name__ == "__main__":
    main()
