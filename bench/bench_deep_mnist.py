"""lumpver against NeuralSAT on the deep MNIST-like proxies of bench/gen_deep_mnist.py (issue 13).

    python bench/gen_deep_mnist.py --out /tmp/deep_mnist          # once (needs scikit-learn, bench only)
    python bench/bench_deep_mnist.py [--data /tmp/deep_mnist] [--nets 256x4,256x6,200x9,sigmoid_200x6,tanh_200x6]
                                     [--limit N]
                                     [--no-neuralsat] [--out bench_deep_mnist.csv] [--workers 1]

Each instance runs with the timeout of its ``instances.csv`` row (30 s for 256x4/256x6, 60 s for the others, as the
peers' figures the team compares with), lumpver (``lumpver verify -q``) and NeuralSAT alternating per instance,
each in a fresh process (:mod:`bench.bench_neuralsat`: how each runs and what counts as decided). Prints a
Markdown table per network: decided counts, summed own seconds over the instances both decided.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_neuralsat import Run, decided, run_lumpver, run_neuralsat  # noqa: E402

NETS = ("256x4", "256x6", "200x9", "sigmoid_200x6", "tanh_200x6")


def net_key(onnx: str) -> str:
    """``onnx/mnist-proxy_256x4.onnx`` -> ``256x4``, ``onnx/mnist-proxy-tanh_200x6.onnx`` -> ``tanh_200x6``
    (``mnist-real_*``: the nets trained on real MNIST digits, ``gen_deep_mnist.py --source mnist``)."""
    return Path(onnx).stem.removeprefix("mnist-proxy").removeprefix("mnist-real").lstrip("-_")


def instances(data: Path, nets: list[str]) -> list[tuple[str, Path, Path, float]]:
    """(net, onnx, vnnlib, timeout) rows of the generated ``instances.csv`` for the chosen nets."""
    out = []
    for onnx, prop, timeout in csv.reader(open(data / "instances.csv")):
        net = net_key(onnx)
        if net in nets:
            out.append((net, data / onnx, data / prop, float(timeout)))
    return out


def table(rows: list[dict]) -> str:
    lines = ["| net | timeout s | instances | lumpver decided (sat/unsat) | NeuralSAT decided (sat/unsat) | "
             "both decided: lumpver s / NeuralSAT s | disagreements |", "|---|---|---|---|---|---|---|"]
    for net in NETS:
        rs = [r for r in rows if r["net"] == net]
        if not rs:
            continue
        t = float(rs[0]["timeout"])
        ns = "neuralsat_answer" in rs[0] and rs[0]["neuralsat_answer"] != "skipped"

        def dec(tool: str) -> str:
            d = [r for r in rs if decided(r, tool, float(r["timeout"]))]
            return f"{len(d)} ({sum(r[f'{tool}_answer'] == 'sat' for r in d)}/{sum(r[f'{tool}_answer'] == 'unsat' for r in d)})"

        both = [r for r in rs if ns and decided(r, "lumpver", t) and decided(r, "neuralsat", t)]
        sl, sn = sum(float(r["lumpver_own"]) for r in both), sum(float(r["neuralsat_own"]) for r in both)
        dis = sum({r["lumpver_answer"], r["neuralsat_answer"]} == {"sat", "unsat"} for r in rs)
        lines.append(f"| {net} | {t:g} | {len(rs)} | {dec('lumpver')} | {dec('neuralsat') if ns else '-'} | "
                     f"{sl:.1f} / {sn:.1f} ({len(both)}) | {dis} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/deep_mnist")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--limit", type=int, default=0, help="at most this many properties per net")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-neuralsat", action="store_true")
    ap.add_argument("--neuralsat", default=os.environ.get("NEURALSAT_VENV", "/work/venv-neuralsat"))
    ap.add_argument("--out", default="bench_deep_mnist.csv")
    ap.add_argument("--table", action="store_true", help="only print the table of an existing --out CSV")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not args.table and not (data / "instances.csv").exists():
        raise SystemExit(f"no {data / 'instances.csv'}: run bench/gen_deep_mnist.py --out {data} first")
    fields = ["net", "onnx", "vnnlib", "timeout"] + [f"{t}_{k}" for t in ("lumpver", "neuralsat")
                                                     for k in ("answer", "own", "wall")]
    if not args.table:
        new = not out.exists()
        seen: dict[str, int] = {}
        with open(out, "a", newline="") as f, tempfile.TemporaryDirectory() as tmp:
            w = csv.DictWriter(f, fields)
            if new:
                w.writeheader()
            for net, onnx, prop, timeout in instances(data, args.nets.split(",")):
                seen[net] = seen.get(net, 0) + 1
                if args.limit and seen[net] > args.limit:
                    continue
                a = run_lumpver(onnx, prop, timeout, args.workers, Path(tmp))
                b = Run("skipped", float("nan"), 0.0) if args.no_neuralsat else \
                    run_neuralsat(Path(args.neuralsat), onnx, prop, timeout, Path(tmp))
                w.writerow({"net": net, "onnx": onnx.name, "vnnlib": prop.name, "timeout": timeout,
                            **{f"lumpver_{k}": v for k, v in vars(a).items()},
                            **{f"neuralsat_{k}": v for k, v in vars(b).items()}})
                f.flush()
                print(f"{net} {prop.name}: lumpver {a.answer} {a.own:.1f} s, NeuralSAT {b.answer} {b.own:.1f} s",
                      flush=True)
    print(table(list(csv.DictReader(open(out)))))


if __name__ == "__main__":
    main()
