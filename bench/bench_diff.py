"""Benchmark of the differential branch and bound ``bab_diff`` (issue 13 item 4, issue 14 item 1;
DESIGN.md §5, §11).

    python bench/bench_diff.py [--timeout 60] [--only bound|compare|unlike|paired]
    python bench/bench_diff.py --random 500        # soundness: random pairs vs an exact MILP
    python bench/bench_diff.py --only unaligned [--before CHECKOUT]   # retrained and distilled copies

Pairs on ACAS Xu prop_1 (made in a temporary folder with the commands a user runs): network 1_1 vs
its float16 copy and vs its 5 % magnitude-pruned copy (``lumpver prune --method magnitude --keep
0.95``), 1_2 vs its pruned copy, 1_1 vs its on-set reduction (``lumpver reduce --mode on-set``),
a retrained-like copy (weights perturbed by 1 %) and a 5-100-100-5 student fitted to 1_1 on
samples of the box (unlike depth: product pairing). Prints ``lumpver bound`` (certified upper,
attained lower replayed with onnxruntime, ratio, seconds) and ``lumpver compare`` verdicts; ``paired``:
the search with and without optimised intermediate bounds, alternating, in the same run, on a budget of
boxes (``--cap``). ``unaligned``: copies of 1_1 trained from a fresh initialisation (``distil``, ``UNALIGNED``:
the same 6x50 shape, a 5-100-100-5 and a 3x64 student), ``compare --epsilon 0.005`` and ``bound`` on each; with
``--before`` an earlier checkout (``git archive COMMIT | tar -x -C DIR``, ``DIR/lumpver/verifiers`` linked to
``DIR/verifiers``; run from outside the worktree) runs each command first, at the same load.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACAS = ROOT / ".." / "shared" / "data" / "acasxu"
PROP1 = ACAS / "vnnlib" / "prop_1.vnnlib"


def net_path(name: str) -> Path:
    return ACAS / "onnx" / f"ACASXU_run2a_{name}_batch_2000.onnx"


def lumpver(*args, before: str = "") -> str:
    """``lumpver ARGS``'s stdout; ``before``: a checkout of an earlier commit to run instead (its folder on
    PYTHONPATH, with ``lumpver/verifiers`` linked to its ``verifiers/``; run from outside the worktree)."""
    env = {**os.environ, "PYTHONPATH": before} if before else None
    r = subprocess.run([sys.executable, "-m", "lumpver", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode not in (0, 1):
        raise RuntimeError(r.stderr)
    return r.stdout


def make_pairs(d: Path) -> dict[str, tuple[Path, Path]]:
    """The pairs of the module docstring, written to ``d``."""
    from lumpver.bounds.region import region_box
    from lumpver.ir.network import Layer
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib

    pairs = {}
    for name in ("1_1", "1_2"):
        lumpver("prune", net_path(name), "-o", d / f"pruned_{name}.onnx", "--method", "magnitude", "--keep", "0.95", "-q")
        pairs[f"{name} vs pruned 5%"] = (net_path(name), d / f"pruned_{name}.onnx")
    lumpver("reduce", net_path("1_1"), "-o", d / "onset.onnx", "--mode", "on-set", "--input-set", PROP1, "-q")
    pairs["1_1 vs on-set"] = (net_path("1_1"), d / "onset.onnx")
    f = load_onnx(net_path("1_1"))
    rng = np.random.default_rng(0)

    def f32(a):
        return a.astype(np.float32).astype(np.float64)

    half = f.with_layers([Layer(l.weight.astype(np.float16).astype(np.float64), l.bias.astype(np.float16).astype(np.float64),
                                l.activation) for l in f.layers])
    save_onnx(half, d / "f16.onnx")
    pairs["1_1 vs float16"] = (net_path("1_1"), d / "f16.onnx")
    pert = f.with_layers([Layer(f32(l.weight * (1 + 0.01 * rng.normal(size=l.weight.shape))), f32(l.bias), l.activation)
                          for l in f.layers])
    save_onnx(pert, d / "retrained.onnx")
    pairs["1_1 vs retrained-like (1%)"] = (net_path("1_1"), d / "retrained.onnx")
    box = region_box(read_vnnlib(PROP1).cases[0].region)
    x = rng.uniform(box.lower, box.upper, (4000, 5))
    w1, w2 = rng.normal(size=(100, 5)) / np.sqrt(5), rng.normal(size=(100, 100)) / 10
    scale = 1.0 / np.maximum(box.upper - box.lower, 1e-9)
    w1 = w1 * scale
    b1 = -(w1 @ (0.5 * (box.lower + box.upper)))
    h1 = np.maximum(x @ w1.T + b1, 0)
    h2 = np.maximum(h1 @ w2.T, 0)
    feats = np.hstack([h2, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(feats, f.forward(x), rcond=None)
    student = f.with_layers([Layer(f32(w1), f32(b1), "relu"), Layer(f32(w2), np.zeros(100), "relu"),
                             Layer(f32(coef[:-1].T), f32(coef[-1]), "identity")])
    save_onnx(student, d / "student.onnx")
    pairs["1_1 vs student 5-100-100-5"] = (net_path("1_1"), d / "student.onnx")
    return pairs


#: ACAS Xu's whole (normalised) input domain
DOMAIN = (np.array([-0.328422877, -0.5, -0.5, -0.5, -0.5]), np.array([0.679857769, 0.5, 0.5, 0.5, 0.5]))
#: the unaligned pairs: name -> (hidden widths, sampled set, seed, L-BFGS-B iterations)
UNALIGNED = {"retrained 6x50 (box)": ([50] * 6, "box", 1, 1000),
             "retrained 6x50 (domain)": ([50] * 6, "domain", 3, 1000),
             "retrained 6x50 (domain, short fit)": ([50] * 6, "domain", 11, 250),
             "student 5-100-100-5 (box)": ([100, 100], "box", 4, 1000),
             "student 5-100-100-5 (domain)": ([100, 100], "domain", 5, 1000),
             "student 5-100-100-5 (domain, short fit)": ([100, 100], "domain", 11, 250),
             "student 3x64 (box)": ([64] * 3, "box", 6, 1000)}


def _mlp(theta: np.ndarray, dims: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    out, k = [], 0
    for i, o in zip(dims[:-1], dims[1:]):
        out.append((theta[k:k + o * i].reshape(o, i), theta[k + o * i:k + o * i + o]))
        k += o * i + o
    return out


def _mse(theta: np.ndarray, dims: list[int], x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error of the ReLU MLP ``theta`` on ``(x, y)`` and its gradient (backpropagation)."""
    ps, hs, zs = _mlp(theta, dims), [x], []
    for j, (w, b) in enumerate(ps):
        zs.append(hs[-1] @ w.T + b)
        hs.append(np.maximum(zs[-1], 0) if j < len(ps) - 1 else zs[-1])
    r = hs[-1] - y
    g, grads = 2 * r / r.size, []
    for j in range(len(ps) - 1, -1, -1):
        grads = [(g.T @ hs[j]).ravel(), g.sum(0)] + grads
        if j:
            g = (g @ ps[j][0]) * (zs[j - 1] > 0)
    return float(np.mean(r ** 2)), np.concatenate(grads)


def distil(f, widths: list[int], lo: np.ndarray, hi: np.ndarray, seed: int, iters: int, n: int = 3000):
    """A ReLU network of ``widths`` trained from a fresh random (He) initialisation to ``f``'s outputs on
    ``n`` uniform samples of ``[lo, hi]`` (scipy L-BFGS-B on the mean squared error, inputs and outputs
    normalised, the normalisation folded into the first and last layers; float32 weights)."""
    from scipy.optimize import minimize

    from lumpver.ir.network import Layer

    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, (n, lo.size))
    y = f.forward(x)
    c, s, ym, ys = 0.5 * (lo + hi), 0.5 * (hi - lo), y.mean(0), y.std(0).mean()
    dims = [lo.size] + widths + [y.shape[1]]
    theta = np.concatenate([p for i, o in zip(dims[:-1], dims[1:])
                            for p in (rng.normal(size=o * i) * np.sqrt(2 / i), np.zeros(o))])
    res = minimize(_mse, theta, (dims, (x - c) / s, (y - ym) / ys), jac=True, method="L-BFGS-B",
                   options={"maxiter": iters})
    ps = _mlp(res.x, dims)
    ps[0] = (ps[0][0] / s, ps[0][1] - (ps[0][0] / s) @ c)
    ps[-1] = (ps[-1][0] * ys, ps[-1][1] * ys + ym)
    acts = ["relu"] * (len(ps) - 1) + ["identity"]
    return f.with_layers([Layer(w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64), a)
                          for (w, b), a in zip(ps, acts)])


def make_unaligned(d: Path) -> dict[str, tuple[Path, Path]]:
    """The retrained and distilled copies of 1_1 (``UNALIGNED``), written to ``d`` once (kept there)."""
    from lumpver.bounds.region import region_box
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib

    f = load_onnx(net_path("1_1"))
    box = region_box(read_vnnlib(PROP1).cases[0].region)
    d.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for name, (widths, where, seed, iters) in UNALIGNED.items():
        path = d / (name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "") + ".onnx")
        if not path.exists():
            t0 = time.process_time()
            lo, hi = (box.lower, box.upper) if where == "box" else DOMAIN
            save_onnx(distil(f, widths, lo, hi, seed, iters), path)
            print(f"fitted {name}: {time.process_time() - t0:.0f} CPU s", file=sys.stderr, flush=True)
        pairs[f"1_1 vs {name}"] = (net_path("1_1"), path)
    return pairs


def sampled_max(pairs, n: int = 100_000) -> dict[str, float]:
    """Per pair the largest ``||f - g||_inf`` the float64 forward passes of the files show on ``n`` uniform
    points of prop_1's box."""
    from lumpver.bounds.region import region_box
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.vnnlib import read_vnnlib

    box = region_box(read_vnnlib(PROP1).cases[0].region)
    x = np.random.default_rng(7).uniform(box.lower, box.upper, (n, 5))
    return {name: float(np.max(np.abs(load_onnx(a).forward(x) - load_onnx(b).forward(x)))) for name, (a, b) in pairs.items()}


def parse(out: str) -> dict[str, str]:
    keys = {"upper bound (certified)": "upper", "lower bound (attained)": "lower", "time": "time"}
    res = {"verdict": out.strip().splitlines()[-1]}
    for line in out.splitlines():
        k, _, v = line.partition(": ")
        if k in keys:
            res[keys[k]] = v.split()[0]
    return res


def run_bound(pairs, names, timeout: float) -> None:
    print(f"| pair | certified upper | attained lower | ratio | seconds (timeout {timeout:g}) |\n|---|---|---|---|---|")
    for name in names:
        a, b = pairs[name]
        r = parse(lumpver("bound", a, b, "--input-set", PROP1, "--timeout", timeout, "-q"))
        up, lo = float(r.get("upper", "nan")), float(r.get("lower", "nan"))
        print(f"| {name} | {up:.4g} | {lo:.4g} | {up / lo if lo > 0 else float('inf'):.3g} | {r.get('time')} |", flush=True)


def run_compare(pairs, items, timeout: float) -> None:
    print(f"\n| pair | epsilon | verdict | upper | lower | seconds (timeout {timeout:g}) |\n|---|---|---|---|---|---|")
    for name, eps in items:
        a, b = pairs[name]
        r = parse(lumpver("compare", a, b, "--input-set", PROP1, "--epsilon", eps, "--timeout", timeout, "-q"))
        print(f"| {name} | {eps} | {r['verdict']} | {r.get('upper', '-')} | {r.get('lower', '-')} | {r.get('time')} |",
              flush=True)


def run_paired(pairs, cap: int) -> None:
    """Before/after in the same run, through the API (``difference_search``), on a work budget (the
    machine is shared: boxes bounded and CPU seconds, not wall time): the search without optimised
    intermediate bounds (``Refine()``, the previous default) and with them (``REFINE``), alternating
    per pair, each until decided (gap closed) or ``cap`` boxes (``deterministic``: the cap, not the
    clock, ends it)."""
    from lumpver.bounds.diff_batched import REFINE, Refine
    from lumpver.ir.onnx_import import load_onnx
    from lumpver.specs.inputset import InputSet
    from lumpver.specs.vnnlib import read_vnnlib
    from lumpver.verifiers.bab_diff import DiffOptions, difference_search

    X = InputSet([read_vnnlib(PROP1).cases[0].region])
    items = [("1_1 vs float16", None), ("1_1 vs pruned 5%", None), ("1_1 vs pruned 5%", 0.005), ("1_2 vs pruned 5%", 0.005)]
    print(f"\n| pair | epsilon | refine | upper | attained | ratio | boxes (cap {cap}) | decided | CPU s |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, eps in items:
        f, g = (load_onnx(p) for p in pairs[name])
        for label, refine in (("none", Refine()), (f"{REFINE.iters} steps, <= {REFINE.max_unstable} unstable", REFINE)):
            t0 = time.process_time()
            opt = DiffOptions(refine=refine, max_boxes=cap, deterministic=True)
            r = difference_search(f, g, X, "linf", 3600.0, eps, options=opt)[0][0]
            print(f"| {name} | {eps or '-'} | {label} | {r.upper:.4g} | {r.lower:.4g} | {r.upper / r.lower:.3g} | "
                  f"{r.boxes} | {r.proved} | {time.process_time() - t0:.1f} |", flush=True)


def run_unaligned(pairs, timeout: float, before: str = "") -> None:
    """``compare --epsilon 0.005`` and ``bound`` on the retrained and distilled copies (``UNALIGNED``), with the
    largest difference onnxruntime shows on 100,000 uniform points of prop_1's box; with ``before`` each
    command runs first on that checkout, then on this one (same load)."""
    seen = sampled_max(pairs)
    print(f"load average {os.getloadavg()[0]:.1f}\n\n| pair | sampled max | code | verdict (0.005) | upper | attained | "
          f"seconds | bound upper | bound attained | ratio | seconds |\n|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name, (a, b) in pairs.items():
        for label, code in ([("before", before)] if before else []) + [("after", "")]:
            c = parse(lumpver("compare", a, b, "--input-set", PROP1, "--epsilon", 0.005, "--timeout", timeout, "-q",
                              before=code))
            r = parse(lumpver("bound", a, b, "--input-set", PROP1, "--timeout", timeout, "-q", before=code))
            up, lo = float(r.get("upper", "nan")), float(r.get("lower", "nan"))
            print(f"| {name} | {seen[name]:.3g} | {label} | {c['verdict']} | {c.get('upper', '-')} | {c.get('lower', '-')} |"
                  f" {c.get('time')} | {up:.4g} | {lo:.4g} | {up / lo if lo > 0 else float('inf'):.3g} | {r.get('time')} |"
                  f" load {os.getloadavg()[0]:.1f}", flush=True)


def random_suite(n: int) -> None:
    """``n`` random pairs of every kind: bound never below the MILP maximum, verdicts never wrong."""
    from lumpver.specs.inputset import Box, InputSet
    from lumpver.verifiers.bab_diff import BabDiffBackend, DiffOptions, difference_search
    from lumpver.verifiers.base import Query
    from tests.test_bab_diff import _exact, random_pair

    lo, hi = -np.ones(3), np.ones(3)
    X = InputSet([Box(lo, hi)])
    t0, wrong, ratios, decided = time.monotonic(), 0, [], 0
    opt = DiffOptions(batch=8)
    for seed in range(n):
        f, g, kind = random_pair(seed)
        exact, _ = _exact(f, g, lo, hi)
        r = difference_search(f, g, X, "linf", 0.2, options=opt)[0][0]
        wrong += r.upper < exact - 1e-7 * (1 + exact) or r.lower > exact + 1e-7 * (1 + exact)
        ratios.append(r.upper / max(exact, 1e-12))
        for eps, bad in ((0.9 * exact, "proved"), (1.1 * exact + 1e-9, "violated")):
            v = BabDiffBackend(opt).check(Query(f, X, other=g, epsilon=eps, timeout=0.2))
            wrong += v.verdict == bad
            decided += v.verdict != "unknown"
    print(f"{n} random pairs ({3 * n} answers): {wrong} wrong; {decided} of {2 * n} compare queries decided at "
          f"0.2 s; bound / exact maximum at 0.2 s: median {np.median(ratios):.4f}, worst {np.max(ratios):.4f} "
          f"({time.monotonic() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--only", choices=["bound", "compare", "unlike", "paired", "unaligned"])
    ap.add_argument("--before", default="", help="--only unaligned: a checkout of the earlier code to run too")
    ap.add_argument("--pairs", default="/tmp/lumpver_bench_diff_pairs", help="folder of the fitted copies (kept)")
    ap.add_argument("--random", type=int, default=0, help="run the MILP soundness suite on this many pairs")
    ap.add_argument("--cap", type=int, default=3000, help="boxes per search of the paired runs")
    args = ap.parse_args()
    if args.random:
        random_suite(args.random)
        return
    if args.only == "unaligned":
        run_unaligned(make_unaligned(Path(args.pairs)), args.timeout, args.before)
        return
    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_pairs(Path(tmp))
        if args.only in (None, "paired"):
            run_paired(pairs, args.cap)
        if args.only in (None, "bound"):
            run_bound(pairs, ["1_1 vs float16", "1_1 vs pruned 5%"], args.timeout)
        if args.only in (None, "compare"):
            run_compare(pairs, [("1_1 vs pruned 5%", 0.005), ("1_2 vs pruned 5%", 0.005), ("1_1 vs on-set", 0.01)],
                        args.timeout)
        if args.only in (None, "unlike"):
            run_bound(pairs, ["1_1 vs retrained-like (1%)", "1_1 vs student 5-100-100-5"], args.timeout)
            run_compare(pairs, [("1_1 vs retrained-like (1%)", 0.05), ("1_1 vs student 5-100-100-5", 1.0)],
                        args.timeout)


if __name__ == "__main__":
    main()
