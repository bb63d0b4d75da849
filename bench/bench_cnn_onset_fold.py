"""On-set reduction of the shared CNN chains with linear folding of stably active channels (issue 12 item 3,
DESIGN.md §3, §10): VeriVital Convnet_avgpool (20 VNN-COMP boxes) and oval21 cifar_base_kw (10 boxes).

Per input set and hidden layer: channels, stably inactive (ReLU upper bound <= 0 at every position),
stably active (lower bound >= 0 at every position, the candidates for folding), folded; then the
channels after, the certified discrepancy on X, ``check``, the reduction time as a ratio to load + save of
the same model in the same run, and the largest |f - g| onnxruntime shows on ``--points`` points of X.

Usage: nice -n 5 python bench/bench_cnn_onset_fold.py [--points 500] [--only avgpool|oval21]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_cnn import instances  # noqa: E402
from lumpver.api.reduce import apply_pass  # noqa: E402
from lumpver.certificates.format import check_certificate  # noqa: E402
from lumpver.certificates.onset_conv import ChannelBounds, channel_slopes  # noqa: E402
from lumpver.ir.onnx_export import save_onnx  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.ir.runtime import run_onnx  # noqa: E402
from lumpver.reductions.passes import OnSetPass  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402


def _baseline(model: Path, tmp: Path) -> float:
    t0 = time.perf_counter()
    save_onnx(load_onnx(model), tmp / "copy.onnx")
    return time.perf_counter() - t0


def _stable_counts(net, input_set) -> tuple[list[int], list[int]]:
    """Per hidden layer: channels stably inactive, channels stably active (same bounds as the reducer)."""
    cb = ChannelBounds.on_set(net, input_set)
    slopes = [channel_slopes(layer, cb.pre_lower[k], cb.pre_upper[k]) for k, layer in enumerate(net.layers[:-1])]
    return [int(np.sum(s == 0)) for s in slopes], [int(np.sum(s == 1)) for s in slopes]


def _row(cls: str, model: Path, prop: Path, tmp: Path, points: int, base: float) -> str:
    net = load_onnx(model)
    input_set = load_input_set(prop, net.n_inputs)
    inactive, active = _stable_counts(net, input_set)
    out = tmp / "g.onnx"
    t0 = time.perf_counter()
    res = apply_pass(OnSetPass(), model, out, tmp / "g.cert.json", input_set)
    seconds = time.perf_counter() - t0
    holds = check_certificate(res.certificate_path).holds
    cert = json.loads(res.certificate_path.read_text())
    step = cert["evidence"][0]
    folded = [len(f["folded"]) for f in step.get("folds", [])] or [0] * len(active)
    rng = np.random.default_rng(0)
    box = input_set.boxes()[0]
    x = rng.uniform(box.lower, box.upper, size=(points, box.lower.size)).astype(np.float32)
    gap = float(np.max(np.abs(run_onnx(model, x) - run_onnx(out, x))))
    join = lambda v: "/".join(map(str, v))  # noqa: E731
    return (f"| {cls} {prop.stem} | {join(step['channels_before'])} | {join(inactive)} | {join(active)} | {join(folded)} "
            f"| {join(step['channels_after'])} | {cert['guarantee']['epsilon']:.1e} | {'holds' if holds else 'FAILS'} "
            f"| {seconds:.2f} ({seconds / base:.0f}x) | {gap:.1e} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=500)
    ap.add_argument("--only", default="", help="avgpool or oval21 (default both)")
    args = ap.parse_args(argv)
    print("| instance | channels per hidden layer | stably inactive | stably active | folded | after "
          "| certified discrepancy | check | reduce s (x load+save) | max onnxruntime gap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for cls, model, prop in instances(args.only):
            if cls == "maxpool":  # a graph network: folding is for chains (its ReLU is read by a max pool)
                continue
            base = min(_baseline(model, tmp) for _ in range(3))
            print(_row(cls, model, prop, tmp, args.points, base), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
