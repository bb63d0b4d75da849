"""The bench's exact reference (bench/milp_exact.py: product MILP through highspy, LP neuron bounds,
pair coupling cuts) against the independent big-M MILP of tests/milp_reference.py (scipy, interval
bounds, no cuts) and against sampled points, on small aligned pairs (quantised / perturbed copies)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.milp_reference import max_linf_difference
from tests.test_bab_phase_batched import _pair

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from milp_exact import dense_layers, exact_linf_max  # noqa: E402


def test_exact_max_matches_the_independent_milp_and_is_attained():
    lo, hi = -np.full(8, 0.3), np.full(8, 0.3)
    rng = np.random.default_rng(5)
    for seed in (3,):
        f, g, kind = _pair(seed)
        ref, _ = max_linf_difference(f, g, lo, hi)
        res = exact_linf_max(dense_layers(f), dense_layers(g), lo, hi, 20.0, say=lambda s: None)
        assert res.best <= res.dual + 1e-9
        assert abs(res.best - ref) <= 1e-6 * (1 + abs(ref)), (seed, kind, res.best, res.dual, ref)
        assert res.dual - res.best <= 1e-4 * (1 + abs(ref)), (seed, res.status)
        attained = float(np.max(np.abs(f.forward(res.x[None]) - g.forward(res.x[None]))))
        assert abs(attained - res.best) <= 1e-6 * (1 + abs(ref))
        assert np.all(res.x >= lo - 1e-9) and np.all(res.x <= hi + 1e-9)
        x = rng.uniform(lo, hi, (4000, 8))
        assert float(np.max(np.abs(f.forward(x) - g.forward(x)))) <= res.best + 1e-9
