"""Re-check of ``bab_diff`` evidence in ``bounded`` certificates (DESIGN.md §5, §9, §11).

The evidence of the differential branch and bound (:mod:`lumpver.verifiers.bab_diff`) records, per
region of the input set, the bisection tree of the region's box in preorder, plus the pairing
(``delta`` or ``product``) and the Adam settings of the bounds. Nothing of the search is trusted:

* the leaves are rebuilt here from the region's box by bisection
  (:func:`lumpver.bounds.diff_batched.leaves_of`); two halves share their face, so the leaves
  cover the box whatever the tree is;
* every leaf is re-bounded with the bound engine (:func:`lumpver.bounds.diff_batched.bound_boxes`,
  outward rounding, the recorded Adam settings), and where that bound exceeds the claimed
  ``upper_bound`` once more with the recorded optimisation of intermediate bounds
  (:mod:`lumpver.bounds.intermediate`, every iterate sound), as the search did; the norm of its
  per-output bounds is taken here (:func:`lumpver.bounds.rounding.norm_hi`, rounded up);
* leaves with a recorded ReLU-phase tree (:mod:`lumpver.verifiers.bab_phase`; aligned ReLU pairs in
  linf) are bounded by replaying it: the leaf's own recomputed layer bounds (LP-tightened first when
  the evidence says ``phase_tighten``: ``true``, or ``"live"`` for the neurons that feed on), the
  children of every split re-derived from them and checked to cover it, and every node's rows above the
  claim are re-bounded by LP through HiGHS's dual (outward rounded); the leaf's bound is the smaller of its
  batched bound and the replayed one (the trees replayed in ``lumpver check --workers N`` processes);
* an unsplit region with a ``phase_batched`` tree (:mod:`lumpver.verifiers.bab_phase_batched`) is
  bounded by :func:`lumpver.bounds.diff_phase.replay`: every node rebuilt from the box and the tree
  (the four phase children of each split, from the node's recomputed layer bounds) and re-bounded;
* the recorded chain (on-set steps, the twin of a pruned or lumped network) is replayed by
  :func:`lumpver.certificates.bounded_interval.recheck_chain`, which adds its terms.

The recomputed bound is the largest leaf bound; a claimed epsilon below it fails the check.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Optional

import numpy as np

from lumpver.bounds.blas import blas_single_thread, fork_pool
from lumpver.bounds.diff_batched import Refine, bound_boxes, leaves_of, prepare_diff
from lumpver.bounds.diff_phase import replay as replay_phases
from lumpver.bounds.region import region_box
from lumpver.bounds.rounding import norm_hi
from lumpver.certificates.bounded_interval import check_interval_evidence, recheck_chain, recheck_interval
from lumpver.certificates.format import REPLAY_WORKERS, CheckContext, CheckReport
from lumpver.ir.network import Network
from lumpver.progress import note_step
from lumpver.specs.inputset import InputSet
from lumpver.verifiers.bab_phase import TIGHTEN_MODES, PairNet, Tighten, leaf_root, replay

#: leaves re-bounded per batched pass
CHUNK = 256
#: leaves re-bounded at most per region (a larger tree is refused as malformed)
MAX_LEAVES = 2_000_000


def _norms(bb, norm: str) -> np.ndarray:
    return norm_hi(np.maximum(np.abs(bb.lower), np.abs(bb.upper)), norm) * (1 + 1e-12)


def _leaf_bounds(model, lo: np.ndarray, hi: np.ndarray, norm: str, iters: int, lr: float, refine: Refine,
                 claim: float, phase: Optional[list] = None, tighten: Tighten = False, workers: int = 1) -> float:
    """The largest leaf bound: plain, refined where the plain bound exceeds the claim, phase-replayed
    (``phase``: [leaf index, tree] pairs) where recorded, in ``workers`` processes (each replay is
    deterministic: the same values whatever the count)."""
    vals = np.zeros(lo.shape[0])
    for s in range(0, lo.shape[0], CHUNK):
        bb = bound_boxes(model, lo[s:s + CHUNK], hi[s:s + CHUNK], iters, lr, refine=refine,
                         done=lambda b: _norms(b, norm) <= claim)
        vals[s:s + CHUNK] = _norms(bb, norm)
    net = PairNet.of(model) if phase else None
    if phase and (net is None or norm != "linf"):
        raise ValueError("phase trees are recorded for aligned ReLU pairs in linf only")
    jobs = []
    for rec in phase or []:
        i, tree = int(rec[0]), [int(t) for t in rec[1]]
        if not 0 <= i < lo.shape[0]:
            raise ValueError(f"phase tree of leaf {i} of {lo.shape[0]}")
        if vals[i] > claim:
            jobs.append((i, lo[i], hi[i], tree))
    setup = (net, model, refine, claim, tighten)
    with ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(fork_pool(workers, _replay_init, setup))
            got = pool.imap(_replay_job, jobs, chunksize=1)  # in order, as they finish
        else:
            got = (_replay(setup, job) for job in jobs)
        worst = -np.inf
        for n, ((i, *_), v) in enumerate(zip(jobs, got)):
            vals[i] = min(vals[i], v)
            worst = max(worst, vals[i])
            note_step(f"replayed {n + 1} of {len(jobs)} phase trees, the largest of their bounds {worst:.6g} "
                      f"(claim {claim:.6g})")
    return float(np.max(vals, initial=0.0))


#: what a forked replay worker needs besides the leaf (``(net, model, refine, claim, tighten)``, :func:`_replay_init`)
_REPLAY: dict = {}


def _replay_init(*setup) -> None:
    _REPLAY["setup"] = setup


def _replay_job(job: tuple) -> float:
    return _replay(_REPLAY["setup"], job)


def _replay(setup: tuple, job: tuple) -> float:
    """The replayed bound of one leaf's phase tree (:func:`lumpver.verifiers.bab_phase.replay`)."""
    net, model, refine, claim, tighten = setup
    _, lo, hi, tree = job
    return replay(net, leaf_root(net, model, lo, hi, refine), lo, hi, tree, claim, tighten)


def _tighten(rec) -> Tighten:
    """The recorded root tightening of the phase trees (:data:`lumpver.verifiers.bab_phase.TIGHTEN_MODES`)."""
    if rec not in TIGHTEN_MODES or not isinstance(rec, (bool, str)):
        raise ValueError(f"phase_tighten {rec!r} is not one of {TIGHTEN_MODES}")
    return rec


def _refine(rec: Optional[dict]) -> Refine:
    """The recorded intermediate-bound refinement (none in certificates written before it existed)."""
    if rec is None:
        return Refine()
    out = Refine(int(rec["iters"]), float(rec["lr"]), int(rec["max_unstable"]))
    if not (0 <= out.iters <= 1000 and 0 <= out.max_unstable):
        raise ValueError(f"refinement {rec} out of range")
    return out


def recheck_bab(f: Network, g: Network, input_set: InputSet, norm: str, ev: dict,
                report: CheckReport) -> Optional[float]:
    """The recomputed bound of one ``bab_diff`` evidence entry, or None (reported) when it is
    malformed or does not re-check (registered in :mod:`lumpver.certificates.bounded`)."""
    regions = ev.get("regions")
    if norm == "top1" or not isinstance(regions, list) or len(regions) != len(input_set.regions):
        report.fail("bab_diff evidence: one bisection tree per region of the input set expected (vector norms only)")
        return None

    def differential(h: Network, twin: Network, top1: bool) -> float:
        model = prepare_diff(h, twin, str(ev["pairing"]))
        iters, lr, refine = int(ev["iters"]), float(ev["lr"]), _refine(ev.get("refine"))
        if not 0 <= iters <= 1000:
            raise ValueError(f"iters {iters} out of range")
        worst = 0.0
        for region, rec in zip(input_set.regions, regions):
            tree = [int(t) for t in rec["tree"]]
            if len(tree) > 2 * MAX_LEAVES:
                raise ValueError(f"bisection tree of {len(tree)} nodes exceeds the checker's cap")
            lo, hi = leaves_of(region_box(region), tree)
            if "phase_batched" in rec:  # an unsplit box with a batched phase tree (verifiers/bab_phase_batched.py)
                if lo.shape[0] != 1:
                    raise ValueError("a batched phase tree is recorded on an unsplit region only")
                worst = max(worst, replay_phases(model, lo[0], hi[0], [int(t) for t in rec["phase_batched"]], norm,
                                                 iters, lr, refine, _refine(ev.get("child_refine"))))
                continue
            claim = float(ev.get("upper_bound", np.inf))
            worst = max(worst, _leaf_bounds(model, lo, hi, norm, iters, lr, refine, claim, rec.get("phase"),
                                            _tighten(ev.get("phase_tighten", False)), REPLAY_WORKERS.get()))
            report.ok(f"bab_diff: {lo.shape[0]} leaf box(es) rebuilt from the tree and re-bounded: {worst:.6g}")
        return worst

    with blas_single_thread():
        return recheck_chain(f, g, input_set, norm, ev, report, differential, "bab_diff", twin_required=False)


#: the differential evidence kinds a reduction certificate may hold, with their re-checks
DIFFERENTIAL_BACKENDS = {"interval": recheck_interval, "bab_diff": recheck_bab}


def check_evidence_entry(cert: dict, ctx: CheckContext, ev: dict) -> CheckReport:
    """Verify one differential evidence entry (``interval`` or ``bab_diff``) of a ``bounded``
    certificate on its own: its recomputed bound must not exceed the guarantee's epsilon."""
    return check_interval_evidence(cert, ctx, ev, DIFFERENTIAL_BACKENDS[ev["backend"]])
