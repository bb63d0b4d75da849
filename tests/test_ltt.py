"""p-values and multiple testing of Learn then Test (lumpver.reductions.ltt, DESIGN.md §7)."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from lumpver.reductions import ltt


def _binom_cdf_exact(k: int, n: int, a: float) -> float:
    """Independent binomial CDF by exact rational summation."""
    q = Fraction(a)
    return float(sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k + 1)))


@pytest.mark.parametrize("n,alpha", [(20, 0.1), (50, 0.05), (200, 0.2)])
def test_binomial_pvalue_matches_exact_sum(n, alpha):
    for k in range(0, n + 1, max(1, n // 10)):
        assert ltt.binomial_pvalue(k, n, alpha) == pytest.approx(_binom_cdf_exact(k, n, alpha), rel=1e-9, abs=1e-300)


def test_hoeffding_and_bentkus_formulas():
    n, alpha = 100, 0.1
    for rhat in (0.0, 0.02, 0.05, 0.099, 0.1, 0.3):
        kl = 0.0 if rhat >= alpha else float(
            (rhat * np.log(rhat / alpha) if rhat > 0 else 0.0) + (1 - rhat) * np.log((1 - rhat) / (1 - alpha)))
        assert ltt.hoeffding_pvalue(rhat, n, alpha) == pytest.approx(math.exp(-n * kl), rel=1e-12)
        k = math.ceil(n * rhat - 1e-12)
        assert ltt.bentkus_pvalue(n * rhat, n, alpha) == pytest.approx(min(1.0, math.e * binom.cdf(k, n, alpha)), rel=1e-9)
        assert ltt.hb_pvalue(n * rhat, n, alpha) == pytest.approx(
            min(ltt.hoeffding_pvalue(rhat, n, alpha), ltt.bentkus_pvalue(n * rhat, n, alpha)))


@pytest.mark.parametrize("method", ["binomial", "hb"])
@pytest.mark.parametrize("n,alpha", [(30, 0.1), (200, 0.05)])
def test_pvalue_valid_exactly_for_binary_losses(method, n, alpha):
    """Under the null (risk R >= alpha) and binary losses, P(p <= t) <= t, computed exactly over k."""
    pk = np.array([ltt.pvalue(np.r_[np.ones(k), np.zeros(n - k)], alpha, method) for k in range(n + 1)])
    for risk in (alpha, alpha + 0.01, alpha + 0.05):
        pmf = binom.pmf(np.arange(n + 1), n, risk)
        for t in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5):
            assert pmf[pk <= t].sum() <= t + 1e-12


def test_hb_pvalue_valid_monte_carlo_continuous_losses():
    """Losses Beta-distributed with mean exactly alpha (the null's boundary): P(p <= t) <= t + MC slack."""
    rng = np.random.default_rng(1)
    n, alpha, reps = 60, 0.2, 3000
    a, b = 0.5, 0.5 * (1 - alpha) / alpha  # mean alpha
    assert beta_dist.mean(a, b) == pytest.approx(alpha)
    sums = beta_dist.rvs(a, b, size=(reps, n), random_state=rng).sum(axis=1)
    pv = np.array([ltt.hb_pvalue(float(s), n, alpha) for s in sums])
    for t in (0.02, 0.05, 0.1, 0.2):
        slack = binom.ppf(1 - 1e-4, reps, t) / reps  # 1e-4 chance of a false alarm per t
        assert np.mean(pv <= t) <= slack


def test_monte_carlo_check_detects_an_invalid_pvalue():
    """The same Monte-Carlo harness flags the naive rule p = 1[Rhat > alpha] (so the check has teeth)."""
    rng = np.random.default_rng(2)
    n, alpha, reps = 60, 0.2, 3000
    rhat = rng.binomial(n, alpha, size=reps) / n
    pv = (rhat > alpha).astype(float)
    t = 0.1
    assert np.mean(pv <= t) > binom.ppf(1 - 1e-4, reps, t) / reps


def test_binomial_refuses_continuous_losses():
    with pytest.raises(ValueError):
        ltt.pvalue(np.array([0.5, 0.0, 1.0]), 0.1, "binomial")
    with pytest.raises(ValueError):
        ltt.pvalue(np.array([1.5, 0.0]), 0.1, "hb")


# ----- multiple testing ----------------------------------------------------------------------


def test_fixed_sequence_stops_at_first_large_pvalue():
    assert ltt.fixed_sequence([0.001, 0.02, 0.2, 0.001], 0.05) == [0, 1]
    assert ltt.fixed_sequence([0.06, 0.001], 0.05) == []
    assert ltt.fixed_sequence([0.05], 0.05) == []  # p >= delta is not rejected
    assert ltt.fixed_sequence([0.01, 0.01, 0.01], 0.05) == [0, 1, 2]


def test_select_on_hand_made_risk_sequences():
    """Risks rising with the level: fixed sequence keeps the prefix whose p-values are below delta."""
    n, alpha, delta = 400, 0.1, 0.1
    counts = [0, 8, 20, 30, 38, 60, 10]  # the last level is easy again but comes after a failure
    losses = np.zeros((n, len(counts)))
    for k, c in enumerate(counts):
        losses[:c, k] = 1
    sel = ltt.select(losses, alpha, delta, "binomial")
    pv = [binom.cdf(c, n, alpha) for c in counts]
    first_fail = next(i for i, p in enumerate(pv) if p >= delta)
    assert sel.rejected == list(range(first_fail))
    assert sel.chosen == first_fail - 1
    assert sel.pvalues == pytest.approx(pv, rel=1e-9)
    assert 6 not in sel.rejected  # fixed sequence never jumps over a failure
    assert 6 in ltt.bonferroni(sel.pvalues, delta)  # while Bonferroni/Holm may


def test_select_abstains_when_first_level_fails():
    losses = np.ones((50, 3))
    sel = ltt.select(losses, 0.1, 0.1, "hb")
    assert sel.chosen is None and sel.rejected == []


def _holm_by_closed_testing(p: list[float], delta: float) -> list[int]:
    """Independent Holm: closed testing with Bonferroni local tests (brute force over subsets)."""
    k = len(p)
    out = []
    for i in range(k):
        ok = True
        for r in range(1, k + 1):
            for s in itertools.combinations(range(k), r):
                if i in s and not min(p[j] for j in s) < delta / len(s):
                    ok = False
        if ok:
            out.append(i)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=6), st.floats(0.01, 0.5))
def test_holm_equals_closed_testing_and_contains_bonferroni(p, delta):
    h = ltt.holm(p, delta)
    assert h == _holm_by_closed_testing(p, delta)
    assert set(ltt.bonferroni(p, delta)) <= set(h)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.floats(0.01, 0.5))
def test_fixed_sequence_is_the_longest_prefix_below_delta(p, delta):
    r = ltt.fixed_sequence(p, delta)
    assert r == list(range(len(r)))
    assert all(x < delta for x in p[: len(r)])
    assert len(r) == len(p) or p[len(r)] >= delta
