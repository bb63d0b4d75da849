"""Benchmark of confident pruning (Learn then Test, DESIGN.md §7; issue 7).

For a synthetic task (a random ReLU teacher, Gaussian inputs) and for MNIST ``mnist-net_256x2``
(inputs drawn uniformly from the L-inf boxes of its ten VNN-LIB properties), the data
distribution is a finite population sampled with replacement, so the true risk of every grid
level is known exactly (the population mean of its losses; outputs from onnxruntime on the
exported ONNX files). Over DRAWS fresh calibration sets of size n it reports, for fixed-sequence
testing, Bonferroni and Holm:

* the rate of draws whose chosen model's true risk exceeds alpha (must be <= delta, up to the
  binomial noise of DRAWS draws), the abstention rate, the mean chosen level and hidden sparsity;
* times as ratios to one dense evaluation pass (onnxruntime on the n calibration inputs)
  measured in the same run: the full procedure once (evaluating every level + testing) and the
  testing step alone per draw.

It also plots p-values against the pruning level (bench/confident_pvalues.png).

Usage: python bench/bench_confident.py [--draws 200] [--n 500] [--alpha 0.05] [--delta 0.1]
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

from lumpver.reductions import ltt  # noqa: E402
from lumpver.specs.calibration import CalibrationData  # noqa: E402
from lumpver.reductions.confident import ConfidentConfig, confident_prune, loss_values  # noqa: E402
from lumpver.ir.network import Network  # noqa: E402
from lumpver.ir.onnx_export import save_onnx  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.reductions.pruning import prune_weights, sparsity  # noqa: E402
from lumpver.ir.planted import random_mlp  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402

MNIST = ROOT / ".." / "shared" / "data" / "mnist_fc"
GRID = tuple(round(0.05 + 0.025 * i, 3) for i in range(37))  # 0.05 .. 0.95


def teacher(seed: int = 0, widths=(20, 64, 64, 10)) -> Network:
    return random_mlp(np.random.default_rng(seed), widths, fan_in_scaled=True, bias_scale=0.1)


def mnist_population(per_box: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform samples from each property box of mnist_fc (the boxes' union, equally weighted)."""
    from lumpver.specs.vnnlib import read_vnnlib

    xs = []
    for p in sorted((MNIST / "vnnlib").glob("*.vnnlib")):
        for box in read_vnnlib(p).input_set().boxes():
            xs.append(rng.uniform(box.lower, box.upper, size=(per_box, box.dim)))
    return np.concatenate(xs).astype(np.float32)


def population_losses(model: Path, net: Network, x: np.ndarray, workdir: Path) -> np.ndarray:
    """Disagreement losses (M, K) of every grid level on the population, by onnxruntime."""
    dense = run_onnx(model, x)
    cols = []
    for k, level in enumerate(GRID):
        p = workdir / f"level{k}.onnx"
        save_onnx(prune_weights(net, level), p)
        cols.append(loss_values("disagreement", dense, run_onnx(p, x)))
    return np.stack(cols, axis=1)


def draws(losses: np.ndarray, spars: list[float], args, procedure: str, seed: int) -> dict:
    """Violation/abstention rates and mean level over fresh calibration draws for one procedure."""
    risks = losses.mean(0)
    rng = np.random.default_rng(seed)
    bad = abstain = 0
    levels, sp, secs = [], [], 0.0
    for _ in range(args.draws):
        sample = losses[rng.integers(0, losses.shape[0], size=args.n)]
        t0 = time.perf_counter()
        k = ltt.select(sample, args.alpha, args.delta, "binomial", procedure).chosen
        secs += time.perf_counter() - t0
        if k is None:
            abstain += 1
            continue
        bad += bool(risks[k] > args.alpha)
        levels.append(GRID[k])
        sp.append(spars[k])
    return {"violation": bad / args.draws, "abstain": abstain / args.draws,
            "level": float(np.mean(levels)) if levels else 0.0, "sparsity": float(np.mean(sp)) if sp else 0.0,
            "select_s": secs / args.draws}


def dense_pass_seconds(model: Path, x: np.ndarray, reps: int = 5) -> float:
    run_onnx(model, x)  # warm the session
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run_onnx(model, x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_task(name: str, model: Path, net: Network, x_pop: np.ndarray, args, workdir: Path) -> dict:
    t0 = time.perf_counter()
    losses = population_losses(model, net, x_pop, workdir)
    pop_s = time.perf_counter() - t0
    spars = [sparsity(prune_weights(net, v)) for v in GRID]
    rng = np.random.default_rng(7)
    x_cal = x_pop[rng.integers(0, x_pop.shape[0], size=args.n)]
    dense_s = dense_pass_seconds(model, x_cal)
    t0 = time.perf_counter()
    cfg = ConfidentConfig(args.alpha, args.delta, GRID, "disagreement")
    confident_prune(net, model, CalibrationData(x_cal, None, "mem", ""), cfg)
    full_s = time.perf_counter() - t0
    out = {"name": name, "M": x_pop.shape[0], "dense_s": dense_s, "full_ratio": full_s / dense_s,
           "population_s": pop_s, "risks": losses.mean(0), "losses": losses, "procedures": {}}
    for proc in ltt.PROCEDURES:
        r = draws(losses, spars, args, proc, seed=11)
        r["select_ratio"] = r["select_s"] / dense_s
        out["procedures"][proc] = r
    return out


def plot(results: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results):
        rng = np.random.default_rng(3)
        for i in range(20):
            sample = res["losses"][rng.integers(0, res["losses"].shape[0], size=args.n)]
            pv = np.maximum(ltt.pvalues(sample, args.alpha, "binomial"), 1e-30)
            ax.semilogy(GRID, pv, color="tab:blue", alpha=0.35, lw=0.8, label="p-values (20 draws)" if i == 0 else None)
        ax.axhline(args.delta, color="tab:red", ls="--", label=f"delta = {args.delta}")
        ax.axhline(args.delta / len(GRID), color="tab:orange", ls=":", label="Bonferroni delta/K")
        ax2 = ax.twinx()
        ax2.plot(GRID, res["risks"], color="k", lw=1.5, label="true risk")
        ax2.axhline(args.alpha, color="k", ls=":", lw=0.8)
        ax2.set_ylabel(f"true disagreement risk (alpha = {args.alpha} dotted)")
        ax.set_xlabel("global magnitude-pruning level (fraction of hidden weights zeroed)")
        ax.set_ylabel("p-value of H: R > alpha (binomial)")
        ax.set_title(f"{res['name']} (n = {args.n})")
        ax.set_ylim(1e-30, 2)
        ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--population", type=int, default=20000)
    args = ap.parse_args()
    from scipy.stats import binom

    results = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        net = teacher()
        syn_model = work / "teacher.onnx"
        save_onnx(net, syn_model)
        x_syn = np.random.default_rng(1).normal(size=(args.population, 20)).astype(np.float32)
        results.append(bench_task("synthetic 20-64-64-10", syn_model, net, x_syn, args, work))
        mnist_model = MNIST / "onnx" / "mnist-net_256x2.onnx"
        x_mn = mnist_population(args.population // 10, np.random.default_rng(2))
        results.append(bench_task("MNIST mnist-net_256x2", mnist_model, load_onnx(mnist_model), x_mn, args, work))
    slack = binom.ppf(0.999, args.draws, args.delta) / args.draws
    print(f"alpha={args.alpha} delta={args.delta} n={args.n} draws={args.draws} grid={GRID[0]}..{GRID[-1]} "
          f"({len(GRID)} levels); violation rate must be <= delta (<= {slack:.3f} allowing binomial noise, p=0.999)")
    print("| task | procedure | violation rate | abstain | mean level | mean hidden sparsity | "
          "full procedure / dense pass | testing per draw / dense pass |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        for proc, r in res["procedures"].items():
            print(f"| {res['name']} | {proc} | {r['violation']:.3f} | {r['abstain']:.3f} | {r['level']:.3f} | "
                  f"{r['sparsity']:.3f} | {res['full_ratio']:.1f} | {r['select_ratio']:.2f} |")
    for res in results:
        crossing = next((GRID[k] for k, v in enumerate(res["risks"]) if v > args.alpha), None)
        print(f"{res['name']}: population {res['M']}, dense pass on n inputs {res['dense_s'] * 1e3:.2f} ms, "
              f"first level with true risk > alpha: {crossing}")
    png = ROOT / "bench" / "confident_pvalues.png"
    plot(results, args, png)
    print(f"plot: {png.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
