"""Benchmark of the branch-and-bound back-end (issue 13, DESIGN.md §11) against published peers.

    python bench/bench_bab.py [--suite acasxu|mnist] [--timeout 30] [--workers 2] [--limit N] [--filter S]
                              [--lp-depth D] [--lp-budget N] [--lp-after F] [--lp-retry R]  # LP finisher, A/B runs
                              [--refine ITERS,MAX_UNSTABLE,DEPTH]  # optimised intermediate bounds, A/B runs
                              [--cpu SECONDS]  # one process, stop at a CPU budget: load-independent A/B runs
    python bench/bench_bab.py --suite random --limit 600     # soundness: random nets vs an exact MILP
    python bench/bench_bab.py --suite sigmoid|tanh --limit 5 # planted 6x200 sigmoid/tanh net, 4 eps per image

Runs ``verify --backend bab`` on the shared instances (``../shared/data/<suite>/instances.csv``),
one after another, and prints per instance the answer, the seconds and the published answers of
VNN-COMP 2022 peers; then decided counts, wall time and our ``unsat`` answers where a peer
published ``sat`` (to be examined: a peer can be wrong, e.g. cgdtest's ACAS ``sat`` answers that
nnenum and alpha_beta_crown contradict; our ``sat`` answers carry a counterexample replayed with
onnxruntime, so a peer's ``unsat`` there is the peer's error).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data"


def published(suite: str) -> dict[tuple[str, str], dict[str, tuple[str, float]]]:
    out: dict = defaultdict(dict)
    with open(DATA / suite / "published_results_vnncomp2022.csv") as f:
        for row in csv.DictReader(f):
            out[(Path(row["onnx"]).name, Path(row["vnnlib"]).name)][row["tool"]] = (row["result"], float(row["seconds"]))
    return out


def random_suite(n_props: int) -> None:
    """Random nets, thresholds on ``c . y`` whose truth an independent computation decides
    (tests/test_bab.py's cases): ReLU nets against the exact MILP (both splitting modes: 3 and 12
    inputs, 2 inputs with 3 layers, and 20 inputs with 4 layers, where the ReLU search split-refines the
    root), sigmoid/tanh nets with 2 inputs against a brute-force grid with a Lipschitz margin. Every
    answer must match (``_check`` asserts)."""
    from tests.test_bab import _cases, _check, _smooth_cases

    t0, done, verdicts = time.monotonic(), 0, defaultdict(int)
    seed = 1000
    while done < n_props:
        kind = seed % 6
        if kind < 3:
            n_in = (3, 12, 2)[kind]
            cases = _cases(seed, n_in, (6, 6, 6) if n_in == 2 else (10, 8), 5)
        elif kind < 5:
            cases = _smooth_cases(seed, ("sigmoid", "tanh")[kind - 3], 5)
        else:
            cases = _cases(seed, 20, (12, 12, 12, 12), 5)
        for case in cases:
            verdicts[_check(*case)] += 1
            done += 1
        seed += 1
    print(f"{done} random properties (ReLU vs exact MILP, sigmoid/tanh vs brute force), all answers agree: "
          f"{dict(verdicts)} ({time.monotonic() - t0:.0f} s)")


#: weight gain and L-inf radii of the planted sigmoid/tanh benchmark: chosen (by a falsifier probe) so that
#: the radii straddle the robustness boundary
GAIN = {"sigmoid": 5.0, "tanh": 1.5}
EPS = {"sigmoid": (0.003, 0.006, 0.01, 0.02), "tanh": (0.02, 0.05, 0.1, 0.2)}


def smooth_cases(act: str, n_images: int, eps: tuple[float, ...], seed: int = 0, gain: float = 0.0):
    """A planted ERAN-ffnnSIGMOID-style network (784 inputs in [0, 1], 6 hidden layers of 200 ``act``,
    10 outputs; Gaussian weights times ``gain`` over sqrt(fan-in), float32: steep like a trained net's)
    and L-inf robustness properties around random sparse images: unsafe ``y_j >= y_label`` for some
    ``j`` (one disjunct per other class)."""
    import numpy as np

    from lumpver.ir.network import Layer, Network
    from lumpver.ir.planted import random_mlp
    from lumpver.specs.inputset import Box, OutputProperty

    rng = np.random.default_rng(seed)
    gain = gain or GAIN[act]
    base = random_mlp(rng, [784] + [200] * 6 + [10], act, fan_in_scaled=True)
    net = Network([Layer((gain * layer.op.dense()).astype(np.float32), layer.bias, layer.activation)
                   for layer in base.layers])
    for _ in range(n_images):
        x0 = np.where(rng.random(784) < 0.2, rng.random(784), 0.0)
        label = int(np.argmax(net.forward(x0)[0]))
        disjuncts = []
        for j in range(10):
            if j != label:
                row = np.zeros((1, 10))
                row[0, label], row[0, j] = 1.0, -1.0  # y_label - y_j <= 0
                disjuncts.append((row, np.zeros(1)))
        for e in eps:
            yield net, Box(np.clip(x0 - e, 0, 1), np.clip(x0 + e, 0, 1)), OutputProperty(disjuncts), e


def smooth_suite(act: str, n_images: int, timeout: float, workers: int) -> None:
    """Decided count on the planted sigmoid/tanh network; every ``violated`` answer carries a float32
    input of the box whose output is unsafe (checked here), every ``proved`` one is cross-checked by an
    independent attack (sampling + PGD, 5 s) that must find nothing."""
    import numpy as np

    from lumpver.specs.inputset import InputSet
    from lumpver.verifiers import falsify
    from lumpver.verifiers.bab import BabBackend, BabOptions
    from lumpver.verifiers.base import Query

    be = BabBackend(BabOptions(workers=workers))
    counts: dict = defaultdict(int)
    t0 = time.monotonic()
    for net, box, prop, e in smooth_cases(act, n_images, EPS[act]):
        q = Query(net, InputSet([box]), prop=prop, timeout=timeout)
        v = be.check(q)
        if v.verdict == "violated":
            x = v.counterexample
            assert box.contains(x) and prop.is_unsafe(net.forward(x.astype(np.float32))[0])
        if v.verdict == "proved":
            res = falsify.search(Query(net, InputSet([box]), prop=prop, timeout=5.0), rng=np.random.default_rng(1))
            assert res.counterexample is None, "an attack contradicts a proof"
        counts[v.verdict] += 1
        print(f"{act} eps {e}: {v.verdict} {v.seconds:.1f} s {v.reason[:80]}", flush=True)
    n = sum(counts.values())
    print(f"{act} 6x200: decided {counts['proved'] + counts['violated']}/{n} {dict(counts)} "
          f"({time.monotonic() - t0:.0f} s, timeout {timeout:g} s)")


def _set_options(**changes) -> None:
    """``verify --backend bab`` with these ``BabOptions`` fields changed (the API builds its options itself)."""
    import lumpver.api.verify as api
    from lumpver.verifiers.bab import BabBackend, BabOptions

    api._bab = lambda workers, progress: BabBackend(BabOptions(workers=max(1, int(workers)), progress=progress,
                                                               **changes))


def cpu_suite(suite: str, rows: list, budget: float, timeout: float, changes: dict) -> None:
    """Each instance in this process, one worker, until decided or ``budget`` CPU seconds (load-independent,
    unlike wall seconds; the knobs that scale with the timeout see ``timeout``, its wall deadline is lifted):
    CPU seconds to decide (and without the falsifier, whose budget is wall time), sub-problems bounded per
    CPU second, and where stopped the open volume (sum of 2^-depth over the open boxes of the current
    disjunct) and the disjunct reached."""
    import lumpver.verifiers.bab as bab
    from lumpver.api.verify import load_model, read_vnnlib
    from lumpver.specs.inputset import InputSet
    from lumpver.verifiers.base import Query

    class Stop(Exception):
        pass

    where: dict = {}

    def beat(search, frontier, what):  # replaces the heartbeat: called once per round
        search.deadline = time.monotonic() + 1e6
        where.update(stats=search.stats, what=what, n=len(frontier))
        if time.process_time() - c0 > budget:
            where["vol"] = sum(2.0 ** -d.depth for d in frontier)
            raise Stop

    falsify_cpu = [0.0]

    def timed_search(*a, **k):
        t = time.process_time()
        try:
            return search(*a, **k)
        finally:
            falsify_cpu[0] += time.process_time() - t

    search, bab.falsify.search, bab._Search._heartbeat = bab.falsify.search, timed_search, beat
    for onnx, vnnlib, *_ in rows:
        net = load_model(DATA / suite / onnx)
        spec = read_vnnlib(DATA / suite / vnnlib, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
        c0, falsify_cpu[0], bounded, verdicts = time.process_time(), 0.0, 0, []
        try:
            for case in spec.cases:
                v = bab.BabBackend(bab.BabOptions(**changes)).check(
                    Query(net, InputSet([case.region]), prop=case.unsafe, timeout=timeout))
                verdicts.append(v.verdict)
                bounded += (v.details or {}).get("stats", {}).get("bounded", 0)
                if v.verdict != "proved":
                    break
            how = ",".join(verdicts)
        except Stop:
            bounded += where["stats"].bounded
            how = f"stopped in {where['what']}: {where['n']} open, volume {where['vol']:.4g}"
        cpu = time.process_time() - c0
        print(f"{Path(onnx).name} {Path(vnnlib).name}: {how}; CPU {cpu:.2f} s ({cpu - falsify_cpu[0]:.2f} s without "
              f"the falsifier), {bounded} bounded, {bounded / max(cpu, 1e-9):.0f} per CPU s", flush=True)


def main() -> None:
    from lumpver.api.verify import verify_property

    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="mnist")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--filter", default="", help="substrings of onnx+vnnlib paths, comma-separated (any)")
    ap.add_argument("--lp-depth", type=int, default=None, help="BabOptions.lp_depth (0: LP finisher off)")
    ap.add_argument("--lp-budget", type=int, default=None, help="BabOptions.lp_budget (LPs per box)")
    ap.add_argument("--lp-after", type=float, default=None, help="BabOptions.lp_after (share of the timeout first)")
    ap.add_argument("--lp-after-max", type=float, default=None, help="BabOptions.lp_after_max (CPU s cap of the gate)")
    ap.add_argument("--lp-retry", type=int, default=None, help="BabOptions.lp_retry (splits before a box is retried)")
    ap.add_argument("--worker-batch", type=int, default=None, help="BabOptions.worker_batch (parents per chunk)")
    ap.add_argument("--falsify-defer", type=float, default=None,
                    help="BabOptions.falsify_defer (search seconds before the falsifier's rest, input splitting)")
    ap.add_argument("--refine", default="", help="ITERS,MAX_UNSTABLE,DEPTH: BabOptions.refine/refine_depth")
    ap.add_argument("--cpu", type=float, default=0.0, help="CPU-second budget per instance, one process (A/B runs)")
    args = ap.parse_args()
    changes: dict = {k: v for k, v in (("lp_depth", args.lp_depth), ("lp_budget", args.lp_budget),
                                         ("lp_after", args.lp_after), ("lp_retry", args.lp_retry),
                                         ("lp_after_max", args.lp_after_max),
                                         ("worker_batch", args.worker_batch),
                                         ("falsify_defer", args.falsify_defer)) if v is not None}
    if args.refine:
        from lumpver.bounds.diff_batched import Refine

        it, mu, depth = (int(v) for v in args.refine.split(","))
        changes.update(refine=Refine(it, 0.25, mu), refine_depth=depth)
    if changes:
        _set_options(**changes)
    if args.suite == "random":
        return random_suite(args.limit or 500)
    if args.suite in ("sigmoid", "tanh"):
        return smooth_suite(args.suite, args.limit or 5, args.timeout, args.workers)
    suite = {"mnist": "mnist_fc"}.get(args.suite, args.suite)
    pub = published(suite)
    rows = list(csv.reader(open(DATA / suite / "instances.csv")))
    rows = [r for r in rows if any(f in r[0] + r[1] for f in args.filter.split(","))][: args.limit or None]
    if args.cpu > 0:
        return cpu_suite(suite, rows, args.cpu, args.timeout, changes)
    decided, wrong, t0 = 0, [], time.monotonic()
    peers_decided: dict[str, int] = defaultdict(int)
    for onnx, vnnlib, *_ in rows:
        r = verify_property(DATA / suite / onnx, DATA / suite / vnnlib, backend="bab", timeout=args.timeout,
                            workers=args.workers)
        key = (Path(onnx).name, Path(vnnlib).name)
        answers = {t: a for t, (a, _) in pub.get(key, {}).items() if a in ("sat", "unsat")}
        for t in answers:
            peers_decided[t] += 1
        if r.result in ("sat", "unsat"):
            decided += 1
            if r.result == "unsat" and "sat" in answers.values():  # our sat answers replay on onnxruntime
                wrong.append(key)
        best = min((s for a, s in pub.get(key, {}).values() if a in ("sat", "unsat")), default=float("nan"))
        print(f"{key[0]} {key[1]}: {r.result} {r.seconds:.1f} s (peers: {sorted(set(answers.values()))}, "
              f"fastest {best:.1f} s)", flush=True)
    wall = time.monotonic() - t0
    print(f"decided {decided}/{len(rows)} in {wall:.0f} s wall (timeout {args.timeout:g} s, workers {args.workers}); "
          f"unsat where a peer says sat: {wrong or 'none'}")
    print("peers decided:", dict(sorted(peers_decided.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
