"""The SDP problem of one (sub-)region (DESIGN.md §5, SDP): options, targets, the bounds, lift,
float32 error and cheap (solver-free) target values, shared by the solver side
(:mod:`lumpver.verifiers.sdp`, :mod:`lumpver.verifiers.sdp_split`) and the checker
(:func:`lumpver.verifiers.sdp.recheck_sdp`).

Cheap values: the difference of the two networks' own output bounds
(:func:`lumpver.bounds.engine.compute_bounds`) intersected with the difference bounds of
:mod:`lumpver.bounds.diff`; real arithmetic, like the SDP values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lumpver.specs.norm_names import VECTOR_NORMS
from lumpver.bounds.diff import difference_bounds, prepare_pair
from lumpver.bounds.engine import compute_bounds
from lumpver.bounds.float_error import float32_error
from lumpver.bounds.region import region_box
from lumpver.ir.network import Network
from lumpver.specs.inputset import Box
from lumpver.verifiers.sdp_certify import build_maps
from lumpver.verifiers.sdp_lift import _layer_stab, build_lift

U64 = 2.0**-53

NORMS = VECTOR_NORMS  # the vector norms of the difference (the S-procedure bounds ||f - g||, not top-1)


@dataclass
class SdpOptions:
    """Options of the SDP bound; all of them are recorded in the evidence."""

    solver: str = "auto"
    bounds_method: str = "crown"
    bounds_lp: bool = False
    pair_limit: int = 16
    cross: bool = True
    input_products: bool = True
    max_d: int = 32  # SDP only on leaves whose lifted matrix has at most this many rows
    solve_timeout: float = 15.0  # per LMI; a slow solve is better replaced by splitting
    max_leaves: int = 256
    gap: float = 0.02  # stop refining once bound <= (1 + gap) * sampled maximum
    split: bool = True

    def lift_options(self) -> dict:
        return {"pair_limit": self.pair_limit, "cross": self.cross, "input_products": self.input_products}

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @staticmethod
    def from_json(d: dict) -> "SdpOptions":
        return SdpOptions(**{k: v for k, v in d.items() if k in SdpOptions.__dataclass_fields__})


def targets_for(norm: str, n_out: int) -> list[dict]:
    """The LMI targets a norm needs (see the module docstring)."""
    if norm == "l2":
        return [{"kind": "l2"}]
    return [{"kind": "linear", "output": i, "sign": s} for i in range(n_out) for s in (1, -1)]


def combine(norm: str, n_out: int, values: dict[tuple, float], float_err: np.ndarray) -> float:
    """The norm bound from certified target values plus the float32 error vector."""
    if norm == "l2":
        return float(np.sqrt(max(values[("l2",)], 0.0)) + np.linalg.norm(float_err))
    per = np.array([max(values[("linear", i, 1)], values[("linear", i, -1)], 0.0) for i in range(n_out)]) + float_err
    return float(np.max(per) if norm == "linf" else np.sum(per))


def target_key(t: dict) -> tuple:
    return ("l2",) if t["kind"] == "l2" else ("linear", int(t["output"]), int(t["sign"]))


@dataclass
class LeafProblem:
    """Everything one (sub-)region needs, built deterministically (shared by solver and checker)."""

    lift: Any  # None when the matrix would exceed ``max_d`` (not needed then)
    d: int
    box: Any
    ferr: np.ndarray
    cheap: dict
    _maps: Any = None

    def maps(self):
        if self._maps is None:
            self._maps = build_maps(self.lift)
        return self._maps


def region_problem(f: Network, g: Network, region, options: SdpOptions, max_lift: float = np.inf) -> LeafProblem:
    """Bounds, lift (only if ``d <= max_lift``), float32 error and cheap target values of one region."""
    fb = compute_bounds(f, region, options.bounds_method, options.bounds_lp)
    gb = compute_bounds(g, region, options.bounds_method, options.bounds_lp)
    d = lifted_size(f, g, fb, gb)
    lift = build_lift(f, g, region, fb, gb, options.lift_options()) if d <= max_lift else None
    box = region_box(region)
    ferr = float32_error(f, box, fb) + float32_error(g, box, gb)
    all_targets = targets_for("l2", f.n_outputs) + targets_for("linf", f.n_outputs)
    return LeafProblem(lift, d, box, ferr, cheap_values(f, g, box, fb, gb, all_targets))


def lifted_size(f: Network, g: Network, fb, gb) -> int:
    """The lifted matrix size ``d`` (inputs + unstable neurons + 1) without building the lift."""
    unstable = sum(int(np.sum(_layer_stab(n, b, k) == 0)) for n, b in ((f, fb), (g, gb)) for k in range(len(n.layers)))
    return f.n_inputs + unstable + 1


def cheap_values(f: Network, g: Network, box: Box, fb, gb, targets: list[dict]) -> dict[tuple, float]:
    """Sound per-target values without a solver (see the module docstring); real arithmetic,
    like the SDP values (the float32 error is added by the caller)."""
    lo_f, hi_f, lo_g, hi_g = fb.output_lower, fb.output_upper, gb.output_lower, gb.output_upper
    mag = np.abs(lo_f) + np.abs(hi_f) + np.abs(lo_g) + np.abs(hi_g)
    upper = hi_f - lo_g + 4 * U64 * mag
    lower = lo_f - hi_g - 4 * U64 * mag
    db = difference_bounds(prepare_pair(f, g), box)
    upper, lower = np.minimum(upper, db.upper), np.maximum(lower, db.lower)
    out = {}
    for t in targets:
        if t["kind"] == "l2":
            m = np.maximum(np.abs(lower), np.abs(upper))
            out[target_key(t)] = float(np.sum(m * m) * (1 + 4 * (m.size + 1) * U64))
        else:
            i, s = int(t["output"]), int(t["sign"])
            out[target_key(t)] = float(upper[i] if s > 0 else -lower[i])
    return out


