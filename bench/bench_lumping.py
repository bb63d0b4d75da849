"""Benchmark of exact lumping (issue: foundation). Figures are ratios against baselines run in the same process.

1. A planted ReLU MLP with >= 16M weights (256 inputs, six hidden layers of ~1,800 neurons built from 512
   core neurons each): time of the full `lumpver reduce` work (load, lump, bound, save, certificate) divided by
   the time of merely loading the model, touching every weight once and saving it.
2. Grouping speed-up: sorted-projection grouping vs the pairwise O(n^2) scan on one layer's signatures.

Usage: python bench/bench_lumping.py [--small]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lumpver.reductions.grouping import group_rows, pairwise_group_rows  # noqa: E402
from lumpver.ir.planted import planted_network  # noqa: E402


def baseline_load_touch_save(src: Path, dst: Path) -> float:
    import onnx
    from onnx import numpy_helper

    t0 = time.perf_counter()
    m = onnx.load(str(src))
    total = 0.0
    for init in m.graph.initializer:
        total += float(numpy_helper.to_array(init).astype(np.float64).sum())
    onnx.save(m, str(dst))
    return time.perf_counter() - t0


def reduce_in_process(src: Path, out: Path, cert: Path) -> tuple[float, dict]:
    from lumpver.api.reduce import reduce_exact_to_files

    t0 = time.perf_counter()
    c = reduce_exact_to_files(src, out, cert)
    return time.perf_counter() - t0, c


def reduce_cli(src: Path, out: Path, cert: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lumpver", "reduce", str(src), "-o", str(out), "--certificate", str(cert),
                    "-q"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def baseline_cli(src: Path, dst: Path) -> float:
    """The baseline in a new process too, so both sides pay interpreter start-up."""
    code = ("import sys; sys.path.insert(0, %r); from bench.bench_lumping import baseline_load_touch_save as b; "
            "from pathlib import Path; b(Path(%r), Path(%r))" % (str(Path(__file__).resolve().parents[1]), str(src),
                                                                  str(dst)))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="a 1M-weight network instead (quick check)")
    args = ap.parse_args()
    width_core, copies = (512, 3.5) if not args.small else (128, 3.5)
    n_in = 256
    from lumpver.ir.onnx_export import save_onnx

    t0 = time.perf_counter()
    p = planted_network(n_in, (width_core,) * 6, 10, "relu", copies, n_constant=4, n_dead=8, seed=1)
    gen = time.perf_counter() - t0
    net = p.network
    n_w = sum(l.weight.size for l in net.layers)
    print(f"planted network: hidden widths {net.hidden_widths}, {n_w / 1e6:.1f}M weights (generated in {gen:.1f}s)")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "big.onnx"
        save_onnx(net, src)
        base = min(baseline_load_touch_save(src, d / "copy.onnx") for _ in range(2))
        red, cert = reduce_in_process(src, d / "r.onnx", d / "r.json")
        red2, _ = reduce_in_process(src, d / "r.onnx", d / "r.json")
        red = min(red, red2)
        cli = min(reduce_cli(src, d / "r2.onnx", d / "r2.json") for _ in range(2))
        base_cli = min(baseline_cli(src, d / "copy2.onnx") for _ in range(2))
        ok = cert["stats"]["layers_after"] == p.core_widths
        print(f"baseline load+touch+save: {base:.2f}s")
        print(f"reduce (API):             {red:.2f}s  ratio {red / base:.2f}x  (goal <= 3x)")
        print(f"baseline in a new process: {base_cli:.2f}s")
        print(f"reduce (CLI, new process): {cli:.2f}s  ratio {cli / base_cli:.2f}x  (goal <= 3x)")
        print(f"reduced widths {cert['stats']['layers_after']} == planted core: {ok}")

    # grouping: fast vs pairwise on signatures of one layer
    rng = np.random.default_rng(0)
    for n_rows, n_core in ((1000, 300), (3000, 900)):
        base_rows = rng.normal(size=(n_core, 200))
        rows = base_rows[rng.integers(0, n_core, n_rows)] * rng.uniform(0.2, 5, size=(n_rows, 1))
        rows = rows.astype(np.float32).astype(np.float64)
        t0 = time.perf_counter()
        fast = group_rows(rows, "positive", 1e-5)
        tf = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = pairwise_group_rows(rows, "positive", 1e-5)
        ts = time.perf_counter() - t0
        same = np.array_equal(fast.label, slow.label)
        print(f"grouping {n_rows} rows ({n_core} classes): sorted-projection {tf * 1e3:.1f} ms, pairwise "
              f"{ts * 1e3:.0f} ms, speed-up {ts / tf:.0f}x, same partition: {same}")


if __name__ == "__main__":
    main()
