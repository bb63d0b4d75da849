"""Benchmark of confident pruning of a graph CNN (Learn then Test, DESIGN.md §7, §10; issue 12 item 5).

Network: ``Convnet_maxpool`` (../shared/data/cnn/verivital; Conv 32 -> ReLU -> MaxPool -> Gemm, a graph
network because of the max pool), channel family (``prune_graph_channels`` per level). Two input
distributions, each a finite population sampled with replacement so that each level's true risk is
exact (population mean of its disagreement losses, outputs by onnxruntime on the exported candidates):

* ``boxes``: uniform in the L-inf boxes of the ten VNN-LIB properties (eps 0.004 around ten MNIST digits);
* ``digits``: MNIST-like images generated from the ten box centres: shifted by up to 2 pixels, contrast
  scaled in [0.7, 1], Gaussian pixel noise (sigma 0.1), clipped to [0, 1].

Over DRAWS calibration sets of size n it reports, per procedure, the violation rate (chosen level's true
risk > alpha; must be <= delta up to binomial noise), abstention, mean level and mean fraction of hidden
channels pruned, with the same helpers as bench/bench_confident.py. Times: one ``prune --method confident``
(ConfidentPass: every level built, exported and evaluated) and one ``check`` of its certificate, as ratios
to one dense onnxruntime pass over the n calibration inputs measured in the same run.

Usage: python bench/bench_confident_graph.py [--draws 200] [--n 500] [--alpha 0.05] [--delta 0.1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_confident import GRID, dense_pass_seconds, draws  # noqa: E402
from lumpver.api.reduce import apply_pass  # noqa: E402
from lumpver.certificates.format import check_certificate  # noqa: E402
from lumpver.ir.onnx_graph_export import save_graph  # noqa: E402
from lumpver.ir.onnx_import import load_model  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402
from lumpver.reductions import ltt  # noqa: E402
from lumpver.reductions.confident import ConfidentConfig, loss_values  # noqa: E402
from lumpver.reductions.confident_graph import graph_candidate  # noqa: E402
from lumpver.reductions.passes import ConfidentPass  # noqa: E402
from lumpver.specs.vnnlib import read_vnnlib  # noqa: E402

CNN = ROOT / ".." / "shared" / "data" / "cnn" / "verivital"
MODEL = CNN / "Convnet_maxpool.onnx"


def boxes() -> list:
    """The L-inf boxes of the ten max-pool properties."""
    return [b for p in sorted((CNN / "specs_maxpool").glob("*.vnnlib")) for b in read_vnnlib(p).input_set().boxes()]


def box_population(m: int, rng: np.random.Generator) -> np.ndarray:
    bs = boxes()
    return np.concatenate([rng.uniform(b.lower, b.upper, (m // len(bs), b.dim)) for b in bs]).astype(np.float32)


def digit_population(m: int, rng: np.random.Generator) -> np.ndarray:
    """MNIST-like images from the box centres (module docstring)."""
    centres = np.stack([(b.lower + b.upper) / 2 for b in boxes()]).reshape(-1, 28, 28)
    out = np.empty((m, 28, 28))
    for i in range(m):
        img = np.roll(centres[rng.integers(len(centres))], tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        out[i] = img * rng.uniform(0.7, 1.0) + rng.normal(0, 0.1, (28, 28))
    return np.clip(out, 0, 1).reshape(m, 784).astype(np.float32)


def population_losses(net, x: np.ndarray, work: Path) -> tuple[np.ndarray, list[float]]:
    """Disagreement losses (M, K) of every channel-family level by onnxruntime, and the pruned fractions."""
    dense = run_onnx(MODEL, x)
    cols, fracs = [], []
    for k, level in enumerate(GRID):
        cand = graph_candidate(net, level, "channel")
        save_graph(cand.model, work / f"level{k}.onnx")
        cols.append(loss_values("disagreement", dense, run_onnx(work / f"level{k}.onnx", x)))
        fracs.append(cand.pruned_fraction)
    return np.stack(cols, axis=1), fracs


def bench_task(name: str, net, x_pop: np.ndarray, args, work: Path) -> dict:
    losses, fracs = population_losses(net, x_pop, work)
    x_cal = x_pop[np.random.default_rng(7).integers(0, x_pop.shape[0], size=args.n)]
    cal = work / f"{name}.npz"
    np.savez(cal, x=x_cal.reshape(-1, 1, 28, 28))
    dense_s = dense_pass_seconds(MODEL, x_cal)
    t0 = time.perf_counter()
    cfg = ConfidentConfig(args.alpha, args.delta, GRID, "disagreement", granularity="channel")
    apply_pass(ConfidentPass(cal, cfg), MODEL, work / "out.onnx", work / "out.cert.json")
    prune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    holds = check_certificate(work / "out.cert.json").holds
    check_s = time.perf_counter() - t0
    out = {"name": name, "risks": losses.mean(0), "prune_ratio": prune_s / dense_s, "check_ratio": check_s / dense_s,
           "dense_ms": dense_s * 1e3, "holds": holds, "procedures": {}}
    for proc in ltt.PROCEDURES:
        out["procedures"][proc] = draws(losses, fracs, args, proc, seed=11)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--population", type=int, default=20000)
    args = ap.parse_args()
    from scipy.stats import binom

    net = load_model(MODEL)
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        results = [bench_task("boxes", net, box_population(args.population, rng), args, work),
                   bench_task("digits", net, digit_population(args.population, rng), args, work)]
    slack = binom.ppf(0.999, args.draws, args.delta) / args.draws
    print(f"Convnet_maxpool, channel family; alpha={args.alpha} delta={args.delta} n={args.n} draws={args.draws} "
          f"grid {GRID[0]}..{GRID[-1]} ({len(GRID)} levels); violation rate <= delta (<= {slack:.3f} at p=0.999)")
    print("| population | procedure | violation rate | abstain | mean level | mean channels pruned | "
          "prune / dense pass | check / dense pass |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        for proc, r in res["procedures"].items():
            print(f"| {res['name']} | {proc} | {r['violation']:.3f} | {r['abstain']:.3f} | {r['level']:.3f} | "
                  f"{r['sparsity']:.3f} | {res['prune_ratio']:.1f} | {res['check_ratio']:.1f} |")
    for res in results:
        crossing = next((GRID[k] for k, v in enumerate(res["risks"]) if v > args.alpha), None)
        print(f"{res['name']}: dense pass on n inputs {res['dense_ms']:.2f} ms, first level with true risk > alpha: "
              f"{crossing}, certificate re-check holds: {res['holds']}")


if __name__ == "__main__":
    main()
