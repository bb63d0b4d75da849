"""Certify one ACAS Xu goal-size candidate with the phase stage in N processes, then re-check it (issue 14;
DESIGN.md §11; bench/RESULTS.md).

The candidate is the gradual pruning's (``approx_shrink.shrink`` against h, the exact on-set reduction, on the
prop_3 box; as ``reduce --gradual`` and bench/bench_phase_leaves.py build it; cached as a pickle in /tmp). It is
written as ONNX, loaded back (what is certified is the file) and certified through its pruned twin by
:func:`lumpver.reductions.certify.certify` at ``--epsilon`` with the long phase budget (a
:class:`certify.PhaseBudget`: ``--boxes`` boxes first, ``--tighten``, ``--phase-lps`` LPs, ``--workers`` processes;
defaults certify.GOAL_PHASE); the ``bounded``
certificate is written beside it and ``lumpver check --workers N`` re-checks it in a child process. Prints wall
and CPU seconds (this process plus its reaped workers) of each step and the bound.

Usage: python bench/cert_acasxu_candidate.py [--net 1_1] [--size 67] [--epsilon 0.01] [--workers 2]
       [--check-workers 2] [--boxes 24000] [--extra-boxes 40000] [--tighten live] [--phase-lps 2000000]
       [--timeout 3600] [--out DIR]   (a heartbeat of the search on stderr)
Quick case: --net 2_3 --size 90 (minutes).
"""
from __future__ import annotations

import argparse
import pickle
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumpver.commands.argtypes import positive_int  # noqa: E402
from lumpver.ir.network import Network  # noqa: E402
from lumpver.ir.onnx_export import save_onnx  # noqa: E402
from lumpver.ir.onnx_import import load_onnx  # noqa: E402
from lumpver.progress import Progress  # noqa: E402
from lumpver.reductions import certify  # noqa: E402
from lumpver.reductions.approx import _from_exchange, removal_order  # noqa: E402
from lumpver.reductions.approx_shrink import ShrinkOptions, shrink  # noqa: E402
from lumpver.reductions.certify import Chain, sample_points, sampled_error, write_bounded  # noqa: E402
from lumpver.reductions.onset import reduce_on_set  # noqa: E402
from lumpver.specs.inputset import InputSet  # noqa: E402
from lumpver.specs.load import load_input_set  # noqa: E402

ACAS = Path("/work/shared/data/acasxu")


@dataclass
class Candidate:
    """f's file, h (on-set reduction, its discrepancy and steps), the candidate g and its pruning chain."""

    model: Path
    X: InputSet
    h: Network
    onset_bound: float
    g: Network
    chain: Chain


def build(net: str, size: int) -> Candidate:
    """The gradual-pruning candidate of ``size`` hidden neurons (cached in /tmp: ~250 CPU s for 1_1 at 67)."""
    cache = Path(f"/tmp/cert_acasxu_{net}_{size}.pkl")
    if cache.exists():  # a dict of the fields: the class may be __main__'s or bench.cert_acasxu_candidate's
        return Candidate(**pickle.loads(cache.read_bytes()))
    model = ACAS / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx"
    f = load_onnx(model)
    X = load_input_set(str(ACAS / "vnnlib" / "prop_3.vnnlib"), f.n_inputs)
    on = reduce_on_set(f, X)
    h = on.reduced
    pts, held = sample_points(X, 3000, 0), sample_points(X, 3000, 1)
    kept, ex = shrink(h, pts, X.regions[0], size, removal_order, ShrinkOptions())
    g, dropped, kept, _ = _from_exchange(h, ex, kept, h.preprocess(held), f.forward(held), "linf")
    out = Candidate(model, X, h, on.discrepancy, g, Chain(on.steps, kept, dropped_rows=dropped))
    cache.write_bytes(pickle.dumps(asdict_shallow(out)))
    return out


def asdict_shallow(c: Candidate) -> dict:
    return {k: getattr(c, k) for k in c.__dataclass_fields__}


def cpu() -> float:
    """CPU seconds of this process and its reaped children (the phase stage's and the checker's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="1_1")
    ap.add_argument("--size", type=int, default=67)
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--workers", type=positive_int, default=2, help="processes of the phase stage")
    ap.add_argument("--check-workers", type=positive_int, default=2, help="lumpver check --workers")
    goal = certify.GOAL_PHASE
    ap.add_argument("--boxes", type=int, default=goal.boxes, help="PhaseBudget.boxes: bisection boxes first")
    ap.add_argument("--extra-boxes", type=int, default=goal.extra_boxes, help="PhaseBudget.extra_boxes")
    ap.add_argument("--tighten", default=str(goal.tighten), help="PhaseBudget.tighten: 1, 0 or live")
    ap.add_argument("--phase-lps", type=int, default=goal.lps, help="phase LPs per region")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the certification")
    ap.add_argument("--out", default="/tmp/cert_acasxu", help="directory of the reduced model and certificate")
    args = ap.parse_args()
    phase = certify.PhaseBudget(args.phase_lps, args.boxes, args.extra_boxes,
                                {"1": True, "0": False}.get(args.tighten, args.tighten), args.workers)
    w0, c0 = time.monotonic(), cpu()
    c = build(args.net, args.size)
    print(f"{args.net} at {args.size} ({c.g.hidden_widths}): candidate in {time.monotonic() - w0:.0f} s wall, "
          f"{cpu() - c0:.0f} CPU s; on-set discrepancy {c.onset_bound:.3g}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reduced, cert_path = out / f"{args.net}_{args.size}.onnx", out / f"{args.net}_{args.size}.cert.json"
    save_onnx(c.g, reduced)
    f, g = load_onnx(c.model), load_onnx(reduced)  # certify what was written
    w0, c0 = time.monotonic(), cpu()
    res = certify.certify(f, g, c.X, "linf", c.chain, c.h, c.onset_bound, timeout=args.timeout,
                          threshold=args.epsilon, phase=phase, progress=Progress())
    wall, used = time.monotonic() - w0, cpu() - c0
    ev = res.evidence
    print(f"certified {res.epsilon:.6g} (target {args.epsilon:g}; {res.backend}, terms "
          f"{ {k: round(v, 6) for k, v in res.terms.items()} }) in {wall:.0f} s wall, {used:.0f} CPU s, "
          f"{args.workers} worker(s); regions {[r.get('stopped', 'closed') for r in ev.get('regions', [])]}, "
          f"phase trees {sum(len(r.get('phase', [])) for r in ev.get('regions', []))}", flush=True)
    if not res.finite:
        print(f"nothing certified: {res.reason}")
        return
    method = {"method": "approximate-lumping", "search": "gradual-prune+joint-minimax", "requested_epsilon":
              args.epsilon, "bench": "bench/cert_acasxu_candidate.py"}
    write_bounded(c.model, reduced, cert_path, f, g, c.X, res, method, wall,
                  sampled_error(c.model, reduced, c.X, "linf"))
    w0, c0 = time.monotonic(), cpu()
    chk = subprocess.run([sys.executable, "-m", "lumpver", "check", str(cert_path), "--workers",
                          str(args.check_workers)], capture_output=True, text=True)
    verdict = chk.stdout.strip().splitlines()[-1] if chk.stdout.strip() else chk.stderr.strip()[-300:]
    print(f"lumpver check --workers {args.check_workers}: {verdict} (exit {chk.returncode}) in "
          f"{time.monotonic() - w0:.0f} s wall, {cpu() - c0:.0f} CPU s; {reduced}, {cert_path}", flush=True)
    if chk.returncode != 0:
        print(chk.stdout[-3000:], chk.stderr[-3000:])


if __name__ == "__main__":
    main()
