"""Benchmark: channel-removing magnitude pruning and coreset filter pruning of graph networks (issue 12
item 5; DESIGN.md §5, §6, §10).

Networks: ``Convnet_maxpool`` (VNN-COMP 2021 verivital: Conv 32 -> ReLU -> MaxPool -> Gemm) on the
L-inf boxes of its VNN-LIB properties (radius 0.004), and a planted ResNet
(:func:`lumpver.ir.planted_resnet.random_resnet`, 3x16x16, 8 channels, 1 block, a residual Add) on a
box of radius 0.01. Per method: ``prune`` through its pass with the input set (certificate written and
re-checked by :func:`lumpver.certificates.format.check_certificate`), parameters of the written file
before -> after, hidden channels pruned / removed / only zeroed, the certified L-inf bound, the largest
error onnxruntime shows on 2000 sampled points (the certificate's ``sampling`` evidence; the certified
bound is in real arithmetic, float32 evaluation adds at most the certificate's stated rounding bound),
their ratio, and seconds of the pass.

Usage: nice -n 5 python bench/bench_graph_prune.py [--props 0,1,2] [--timeout 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.api.reduce import apply_pass  # noqa: E402
from lumpver.certificates.format import check_certificate  # noqa: E402
from lumpver.ir.onnx_graph_export import save_graph  # noqa: E402
from lumpver.ir.onnx_import import load_model  # noqa: E402
from lumpver.ir.planted_resnet import random_resnet  # noqa: E402
from lumpver.reductions.passes import CoresetPass, MagnitudePrunePass  # noqa: E402
from lumpver.specs.inputset import Box, InputSet  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "cnn" / "verivital"
MODEL = DATA / "Convnet_maxpool.onnx"


def passes(timeout: float) -> dict:
    return {"channel keep 0.9": MagnitudePrunePass(0.9, "channel", None, timeout),
            "channel keep 0.5": MagnitudePrunePass(0.5, "channel", None, timeout),
            "coreset keep 0.5": CoresetPass(0.5, 0, timeout)}


def _evidence(cert: dict, backend: str) -> dict:
    return next(e for e in cert["evidence"] if e.get("backend") == backend)


def run(name: str, model: Path, sets: list[InputSet], timeout: float, tmp: Path) -> None:
    f = load_model(model)
    for label, p in passes(timeout).items():
        rows = []
        for k, X in enumerate(sets):
            out, cert_path = tmp / f"{name}-{label}-{k}.onnx", tmp / f"{name}-{label}-{k}.json"
            t = time.perf_counter()
            res = apply_pass(p, model, out, cert_path, X)
            secs = time.perf_counter() - t
            cert = json.loads(Path(cert_path).read_text())
            assert check_certificate(cert_path).holds
            eps, smp = cert["guarantee"]["epsilon"], _evidence(cert, "sampling")["lower_bound"]
            assert eps + cert["guarantee"]["float_tolerance"]["float32_rounding_bound"] >= smp  # real + float32 terms
            rows.append((eps, smp, secs, res))
        eps, smp, secs = (statistics.median(c) for c in list(zip(*rows))[:3])
        g, m = load_model(rows[0][3].model_path), _evidence(json.loads(Path(rows[0][3].certificate_path).read_text()),
                                                             "reduction")
        counts = f"{m['channels_pruned']} / {m['channels_removed']} / {m['channels_zeroed']}" \
            if "channels_pruned" in m else f"sampled nodes {len(m['layers'])}"
        ratio = f"{eps / smp:.2f}" if smp > 0 else "-"
        print(f"| {name} | {label} | {len(rows)} | {f.n_params} -> {g.n_params} | {f.hidden_channels} -> "
              f"{g.hidden_channels} | {counts} | {eps:.4g} | {smp:.4g} | {ratio} | {secs:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--props", default="0,1,2")
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    print("| network | method | boxes | parameters | channels per hidden node | pruned / removed / zeroed | "
          "certified (median) | sampled max (median) | certified / sampled | s per prune (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    f = load_model(MODEL)
    sets = [load_input_set(DATA / "specs_maxpool" / f"prop_{p}_0.004.vnnlib", f.n_inputs)
            for p in map(int, filter(None, args.props.split(",")))]
    if sets:  # --props '' : the planted ResNet only
        run("Convnet_maxpool", MODEL, sets, args.timeout, tmp)
    r = random_resnet(image=(3, 16, 16), channels=8, blocks=1, stem_stride=1, hidden=16, n_outputs=10, seed=3)
    save_graph(r, tmp / "resnet.onnx")
    c = np.random.default_rng(4).uniform(0.3, 0.7, r.n_inputs)
    run("planted ResNet", tmp / "resnet.onnx", [InputSet([Box(c - 0.01, c + 0.01)])], args.timeout, tmp)


if __name__ == "__main__":
    main()
