"""Convolutional networks (issue 12, DESIGN.md §10): verification of the shared CNN instances
against the published VNN-COMP 2021 peers, and exact channel lumping time against read-once time.

``verify``: every instance of ``../shared/data/cnn/verivital`` (Convnet_avgpool, 20; Convnet_maxpool, 10:
a graph network with MaxPool, verified through the graph bound engine) and ``../shared/data/cnn/oval21``
(10) with ``lumpver verify``'s API and a short timeout (``--only CLASS`` for one class); per class the
decided count and the time, next to each peer's published count; ratios of times are formed only
within one tool (ours at timeout T vs ours, peers' own published numbers are listed as they are).
Any answer contradicting a peer's decided answer is printed as CONTRADICTION.

``lump``: a planted CNN (:func:`lumpver.ir.planted.planted_cnn`, two conv layers of ``--channels``
channels on a 3x32x32 input) saved to ONNX; the time of the whole exact reduction (load, lump,
bound, save, certificate) against load + touch every weight + save (bench_lumping.py's baseline),
best of ``--repeat``.

``memory``: exact lumping of the shared CNNs and of a larger planted CNN (``--big-channels`` channels on
a 3x64x64 input): time against load + touch + save, and the peak Python heap during the whole reduction
(tracemalloc, a separate run) against the bytes of the dense float64 matrices an unrolled network
would hold.

``prune``: on the shared CNNs (the input set of their first instance) and a planted CNN, magnitude
channel pruning, weight pruning, coreset filter pruning (keep 0.5) and 8-bit per-channel quantisation,
each certified on the input set (``--timeout`` seconds): channels per hidden layer, the largest error
onnxruntime shows on sampled points of the set (a lower bound) and the certified bound.

``ablump``: the ``memory`` models' exact lumping at git revision ``--base`` and at the working tree, each in
fresh processes alternating per model (so machine load hits both alike): wall and CPU time against read-once.

``ab``: ``lumpver verify --backend B`` of one class (``--only``, default oval21) at the git revision ``--base`` and at
the working tree, alternating per instance (so machine load hits both alike), each a fresh process with
``--workers``: per instance the answer and wall seconds of both, and the decided count and summed seconds.

Usage: python bench/bench_cnn.py [verify|lump|memory|prune|all|ab|ablump] [--timeout 30] [--backend interval] [--only maxpool]
       [--repeat 3]
       [--channels 256] [--big-channels 128] [--base REV] [--workers 1]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lumpver.api.verify import verify_property  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnn"
#: instance class -> (folder, model)
CLASSES = {"avgpool": ("verivital", "Convnet_avgpool.onnx"), "maxpool": ("verivital", "Convnet_maxpool.onnx"),
           "oval21": ("oval21", "cifar_base_kw.onnx")}
ANSWER = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}


def instances(only: str = "") -> list[tuple[str, Path, Path]]:
    """(class, model, property) of every shared instance of :data:`CLASSES` (or of class ``only``)."""
    out = []
    for cls, (folder, model) in CLASSES.items():
        if only and cls != only:
            continue
        with open(DATA / folder / "instances.csv") as fh:
            for onnx_rel, prop_rel, _t in csv.reader(fh):
                if Path(onnx_rel).name == model:
                    out.append((cls, DATA / folder / onnx_rel, DATA / folder / prop_rel))
    return out


def published() -> dict[tuple[str, str], dict[str, tuple[str, float]]]:
    """(class, vnnlib name) -> tool -> (answer, seconds) for the instances of :data:`CLASSES`."""
    by_model = {v: k for k, v in CLASSES.items()}
    out: dict = defaultdict(dict)
    with open(DATA / "published_results_vnncomp2021.csv") as fh:
        for r in csv.DictReader(fh):
            if (r["folder"], r["onnx"]) in by_model:
                out[(by_model[(r["folder"], r["onnx"])], r["vnnlib"])][r["tool"]] = (ANSWER.get(r["result"].lower(), "-"), float(r["seconds"] or 0))
    return out


def _clash(ours: str, peers: dict[str, tuple[str, float]]) -> str:
    """CONTRADICTION when our decided answer differs from the reference (a-b-CROWN's decided answer,
    else the majority of decided peers); peers in the minority that differ are listed."""
    if ours not in ("sat", "unsat"):
        return ""
    decided = {t: a for t, (a, _s) in peers.items() if a in ("sat", "unsat")}
    votes = Counter(decided.values())
    ref = decided.get("a-b-CROWN") or (votes.most_common(1)[0][0] if votes else None)
    if ref is not None and ref != ours:
        return f"  CONTRADICTION with the reference answer {ref}"
    minority = sorted(t for t, a in decided.items() if a != ours)
    return f"  (differs from minority {minority})" if minority else ""


def run_verify(timeout: float, backend: str, only: str = "") -> None:
    pub = published()
    ours: dict[str, list] = defaultdict(list)
    for folder, model, prop in instances(only):
        t0 = time.monotonic()
        r = verify_property(model, prop, backend=backend, timeout=timeout)
        dt = time.monotonic() - t0
        peers = pub[(folder, prop.name)]
        print(f"{folder:10s} {prop.name:55s} {r.result:8s} {dt:6.1f}s{_clash(r.result, peers)}", flush=True)
        ours[folder].append((r.result, dt))
    print("\n| class | tool | decided | sat | unsat | total s (decided) |\n|---|---|---|---|---|---|")
    for folder in CLASSES:
        if folder not in ours:
            continue
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


def _tree_at(rev: str, into: Path) -> Path:
    """The repository at git revision ``rev`` unpacked into ``into``, importable as ``lumpver`` from there
    (``verifiers/`` is installed as ``lumpver.verifiers``: linked into the package folder)."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "lumpver" / "verifiers").symlink_to(into / "verifiers")
    return into


def _verify_process(tree: Path | None, model: Path, prop: Path, timeout: float, workers: int,
                    backend: str) -> tuple[str, float]:
    """``lumpver verify -q`` in a fresh process (from ``tree`` when given): last stdout word and wall seconds."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, "-c", "import sys; from lumpver.cli import main; sys.exit(main())", "verify", "-q", str(model),
           str(prop), "--timeout", f"{timeout:g}", "--workers", str(workers), "--backend", backend]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree or Path.cwd(), timeout=timeout + 120)
    words = p.stdout.split()
    return (words[-1] if words else "error"), time.monotonic() - t0


def run_ab(base: str, only: str, timeout: float, workers: int, backend: str) -> None:
    pub = published()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = _tree_at(base, Path(tmp))
        for folder, model, prop in instances(only or "oval21"):
            before = _verify_process(tree, model, prop, timeout, workers, backend)
            after = _verify_process(None, model, prop, timeout, workers, backend)
            rows.append((before, after))
            print(f"{prop.name:55s} {base}: {before[0]:8s} {before[1]:6.1f}s   now: {after[0]:8s} {after[1]:6.1f}s"
                  f"{_clash(after[0], pub[(folder, prop.name)])}", flush=True)
    for i, name in ((0, base), (1, "now")):
        dec = [r[i] for r in rows if r[i][0] in ("sat", "unsat")]
        print(f"{name}: decided {len(dec)}/{len(rows)}, {sum(s for _a, s in dec):.1f} s summed over the decided")


def run_lump(repeat: int, channels: int) -> None:
    """The full ``lumpver reduce --mode exact`` work (load, lump, bound, save, certificate) on a planted
    CNN against loading the model, touching every weight once and saving it (as bench_lumping.py)."""
    from bench.bench_lumping import baseline_load_touch_save
    from lumpver.api.reduce import reduce_exact_to_files
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.planted import planted_cnn

    for pool in ("avg", "none"):
        truth = planted_cnn(channels=(channels, channels), core=(channels // 16, channels // 20), pool=pool,
                            image=(3, 32, 32), n_outputs=10, seed=0)
        n_w = truth.network.n_params
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "planted.onnx"
            save_onnx(truth.network, src)
            base = min(baseline_load_touch_save(src, Path(d) / "copy.onnx") for _ in range(repeat))
            red = min(_timed(lambda: reduce_exact_to_files(src, Path(d) / "r.onnx", Path(d) / "r.json"))
                      for _ in range(repeat))
            cert = json.loads((Path(d) / "r.json").read_text())
        after = cert["stats"]["channels_after"]
        print(f"planted CNN pool={pool}: {n_w / 1e6:.2f}M parameters, channels {truth.channels} -> {after} "
              f"(planted {truth.core}, equal: {after == truth.core}); load+touch+save {base:.3f}s, "
              f"reduce --mode exact {red:.3f}s, ratio {red / base:.2f}x (goal <= 3x)")


_AB_LUMP = """
import sys, time
from pathlib import Path
from bench.bench_lumping import baseline_load_touch_save
from lumpver.api.reduce import reduce_exact_to_files
src, d, repeat = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c
runs = [(timed(lambda: baseline_load_touch_save(Path(src), d / "copy.onnx")),
         timed(lambda: reduce_exact_to_files(src, d / "r.onnx", d / "r.json"))) for _ in range(repeat)]
print(*(min(r[i][j] for r in runs) for i in (0, 1) for j in (0, 1)))
"""


def run_ab_lump(base: str, repeat: int, big_channels: int, rounds: int = 3) -> None:
    """Exact lumping at git revision ``base`` and at the working tree, each a fresh process, alternating per
    model and round (machine load hits both alike): best-of-``repeat`` wall and CPU time (all threads) of
    ``reduce --mode exact`` against read-once, in each process."""
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.planted import planted_cnn

    print("| model | revision | read-once ms (CPU) | exact lumping ms (CPU) | ratio wall | ratio CPU |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tree").mkdir()
        tree = _tree_at(base, Path(tmp) / "tree")
        big = planted_cnn(channels=(big_channels, big_channels), core=(big_channels // 8, big_channels // 16),
                          pool="avg", image=(3, 64, 64), n_outputs=10, seed=0)
        save_onnx(big.network, Path(tmp) / "planted_big.onnx")
        models = [(name, path) for name, path, _ in _shared_models()] + [("planted 3x64x64", Path(tmp) / "planted_big.onnx")]
        for _ in range(rounds):
            for name, src in models:
                for label, root in ((base, tree), ("now", Path(__file__).resolve().parents[1])):
                    env = dict(os.environ, PYTHONPATH=str(root))
                    out = subprocess.run([sys.executable, "-c", _AB_LUMP, str(src), tmp, str(repeat)], cwd=root, env=env,
                                         capture_output=True, text=True, check=True).stdout.split()
                    bw, bc, rw, rc = map(float, out)
                    print(f"| {name} | {label} | {bw * 1e3:.2f} ({bc * 1e3:.2f}) | {rw * 1e3:.1f} ({rc * 1e3:.1f}) | "
                          f"{rw / bw:.2f} | {rc / bc:.2f} |", flush=True)


def _shared_models() -> list[tuple[str, Path, Path]]:
    """(name, model, property of its first instance) of each shared CNN class."""
    first: dict[str, tuple[str, Path, Path]] = {}
    for folder, model, prop in instances():
        first.setdefault(folder, (model.stem, model, prop))
    return list(first.values())


def _unrolled_bytes(net) -> int:
    """Bytes of the dense float64 ``(out, in)`` matrices of every layer, were they unrolled."""
    ops = [layer.op for layer in net.layers] if hasattr(net, "layers") else \
        [net.node(n).op for n in net.order if net.node(n).kind == "affine"]  # a graph network
    return sum(8 * op.out_features * op.in_features for op in ops)


def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_memory(repeat: int, big_channels: int) -> None:
    """Exact lumping time against read-once time, and peak heap against the unrolled matrices."""
    from bench.bench_lumping import baseline_load_touch_save
    from lumpver.api.reduce import reduce_exact_to_files
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.onnx_import import load_model
    from lumpver.ir.planted import planted_cnn

    print("| model | parameters | read-once ms | exact lumping ms | ratio (goal <= 3) | peak heap MB | unrolled dense MB | "
          "channels before -> after |\n|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        big = planted_cnn(channels=(big_channels, big_channels), core=(big_channels // 8, big_channels // 16),
                          pool="avg", image=(3, 64, 64), n_outputs=10, seed=0)
        save_onnx(big.network, Path(d) / "planted_big.onnx")
        models = [(name, path) for name, path, _ in _shared_models()] + [("planted 3x64x64", Path(d) / "planted_big.onnx")]
        for name, src in models:
            net = load_model(src)
            out, cert = Path(d) / "r.onnx", Path(d) / "r.json"
            base = min(baseline_load_touch_save(src, Path(d) / "copy.onnx") for _ in range(repeat))
            red = min(_timed(lambda: reduce_exact_to_files(src, out, cert)) for _ in range(repeat))
            peak = _peak_bytes(lambda: reduce_exact_to_files(src, out, cert))
            st = json.loads(cert.read_text())["stats"]
            print(f"| {name} | {net.n_params} | {base * 1e3:.2f} | {red * 1e3:.1f} | {red / base:.2f} | {peak / 1e6:.1f} | "
                  f"{_unrolled_bytes(net) / 1e6:.0f} | {st['channels_before']} -> {st['channels_after']} |", flush=True)


def _prune_passes(timeout: float) -> list[tuple[str, object]]:
    from lumpver.reductions.passes import CoresetPass, MagnitudePrunePass, QuantizePass

    return [("magnitude channel 0.5", MagnitudePrunePass(0.5, "channel", timeout=timeout)),
            ("magnitude weight 0.5", MagnitudePrunePass(0.5, "weight", timeout=timeout)),
            ("coreset filter 0.5", CoresetPass(0.5, timeout=timeout)),
            ("quantize 8-bit per-channel", QuantizePass(8, True, timeout=timeout))]


def _planted_with_box(d: Path) -> tuple[str, Path, Path]:
    """A planted CNN (no redundancy) and a VNN-LIB box of radius 0.02 around a random point."""
    import numpy as np

    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.planted import planted_cnn

    net = planted_cnn(channels=(16, 16), core=(16, 16), pool="avg", image=(3, 16, 16), n_outputs=10, n_dead=0,
                      seed=1).network
    save_onnx(net, d / "planted.onnx")
    c = np.random.default_rng(0).uniform(0, 1, net.n_inputs).tolist()
    lines = [f"(declare-const X_{i} Real)" for i in range(net.n_inputs)] + ["(declare-const Y_0 Real)"]
    lines += [f"(assert (>= X_{i} {c[i] - 0.02!r}))\n(assert (<= X_{i} {c[i] + 0.02!r}))" for i in range(net.n_inputs)]
    (d / "planted.vnnlib").write_text("\n".join(lines + ["(assert (>= Y_0 0))", ""]))
    return "planted 3x16x16", d / "planted.onnx", d / "planted.vnnlib"


def run_prune(timeout: float) -> None:
    """Pruning and quantisation of CNNs, each certified on an input set (module docstring)."""
    from lumpver.api.reduce import apply_pass

    print("| model | method | channels before -> after | nonzero weights after | sampled max error (lower) | "
          "certified error (upper) | seconds |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name, model, prop in _shared_models() + [_planted_with_box(Path(d))]:
            for label, reduction in _prune_passes(timeout):
                t0 = time.perf_counter()
                res = apply_pass(reduction, model, Path(d) / "g.onnx", Path(d) / "g.json", prop)
                cert, dt = res.certificate, time.perf_counter() - t0
                st = cert["stats"]
                sampled = next(e["lower_bound"] for e in cert["evidence"] if e["backend"] == "sampling")
                nz = _nonzero_weights(Path(d) / "g.onnx")
                print(f"| {name} | {label} | {st['channels_before']} -> {st['channels_after']} | {nz} | {sampled:.4g} | "
                      f"{cert['guarantee']['epsilon']:.4g} | {dt:.1f} |", flush=True)


def _nonzero_weights(path: Path) -> int:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]
    return int(sum(np.count_nonzero(a) for a in arrays if a.ndim in (2, 4)))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=("verify", "lump", "memory", "prune", "all", "ab", "ablump"))
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--backend", default="interval")
    ap.add_argument("--only", default="", choices=("",) + tuple(CLASSES), help="verify one instance class")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--channels", type=int, default=256, help="channels of each planted conv layer")
    ap.add_argument("--big-channels", type=int, default=128, help="channels of the larger planted CNN (memory)")
    ap.add_argument("--base", default="HEAD", help="git revision compared with the working tree (ab)")
    ap.add_argument("--workers", type=int, default=1, help="lumpver verify --workers (ab)")
    a = ap.parse_args()
    if a.what == "ab":
        run_ab(a.base, a.only, a.timeout, a.workers, a.backend)
        return
    if a.what == "ablump":
        run_ab_lump(a.base, a.repeat, a.big_channels)
        return
    if a.what in ("verify", "all"):
        run_verify(a.timeout, a.backend, a.only)
    if a.what in ("lump", "all"):
        run_lump(a.repeat, a.channels)
    if a.what in ("memory", "all"):
        run_memory(a.repeat, a.big_channels)
    if a.what in ("prune", "all"):
        run_prune(a.timeout)


if __name__ == "__main__":
    main()
