"""Valid p-values and family-wise error control for Learn then Test (DESIGN.md §7).

Null hypothesis for each candidate ``lambda``: ``H_lambda: R(lambda) > alpha`` where ``R`` is
the expected loss (in [0, 1]) over the data distribution. A p-value ``p`` is *valid* when
``P(p <= t) <= t`` for every ``t`` under the null. Rejecting ``H_lambda`` means claiming
``R(lambda) <= alpha``. References: Angelopoulos, Bates, Candes, Jordan, Lei, "Learn then Test"
(arXiv 2110.01052), section on Hoeffding-Bentkus p-values and fixed-sequence testing.

* Binary losses: exact binomial tail ``P(Binom(n, alpha) <= k)`` with ``k`` the number of
  losses; under the null the count is stochastically larger than ``Binom(n, alpha)``.
* Losses in [0, 1]: Hoeffding-Bentkus, ``min(exp(-n h1(min(Rhat, alpha), alpha)),
  e * P(Binom(n, alpha) <= ceil(n Rhat)))`` with ``h1(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))``.

Sums of losses are taken with :func:`math.fsum` (correctly rounded), so ``ceil(n Rhat)`` is
not lowered by accumulated rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

PVALUES = ("binomial", "hb")
PROCEDURES = ("fixed-sequence", "bonferroni", "holm")


def _check_alpha_n(n: int, alpha: float) -> None:
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1)")


def binomial_pvalue(k: int, n: int, alpha: float) -> float:
    """Exact p-value for binary losses: ``P(Binom(n, alpha) <= k)`` with ``k`` losses among ``n``."""
    from scipy.stats import binom

    _check_alpha_n(n, alpha)
    if k < 0 or k > n or int(k) != k:
        raise ValueError("k must be an integer in [0, n]")
    return float(min(1.0, binom.cdf(int(k), n, alpha)))


def _h1(a: float, b: float) -> float:
    """Bernoulli KL divergence ``KL(a || b)`` with the convention ``0 log 0 = 0``."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_pvalue(rhat: float, n: int, alpha: float) -> float:
    """Hoeffding (Chernoff-KL) p-value ``exp(-n h1(min(rhat, alpha), alpha))``."""
    _check_alpha_n(n, alpha)
    return float(min(1.0, math.exp(-n * _h1(min(rhat, alpha), alpha))))


def bentkus_pvalue(loss_sum: float, n: int, alpha: float) -> float:
    """Bentkus p-value ``e * P(Binom(n, alpha) <= ceil(loss_sum))`` (``loss_sum = n Rhat``)."""
    from scipy.stats import binom

    _check_alpha_n(n, alpha)
    k = min(n, math.ceil(loss_sum))
    return float(min(1.0, math.e * binom.cdf(k, n, alpha)))


def hb_pvalue(loss_sum: float, n: int, alpha: float) -> float:
    """Hoeffding-Bentkus p-value for losses in [0, 1] with ``sum = loss_sum`` over ``n`` samples."""
    return min(hoeffding_pvalue(loss_sum / n, n, alpha), bentkus_pvalue(loss_sum, n, alpha))


def _column_sums(losses: np.ndarray, method: str) -> np.ndarray:
    """Validated, correctly rounded column sums of a loss matrix ``(n, K)``."""
    if losses.shape[0] == 0:
        raise ValueError("no losses")
    if not np.all(np.isfinite(losses)) or losses.min() < 0 or losses.max() > 1:
        raise ValueError("losses must lie in [0, 1]")
    if method == "binomial":
        if not np.all((losses == 0) | (losses == 1)):
            raise ValueError("the binomial p-value needs binary (0/1) losses")
        return losses.sum(axis=0)  # integer counts: exact in float64
    if method == "hb":
        return np.array([math.fsum(col) for col in losses.T.tolist()])
    raise ValueError(f"unknown p-value method {method!r}; known: {', '.join(PVALUES)}")


def pvalues(losses: np.ndarray, alpha: float, method: str) -> list[float]:
    """p-values of ``H_k: R_k > alpha`` for each column k of a loss matrix ``(n, K)`` in [0, 1].

    ``method`` ``binomial`` needs binary losses (ValueError otherwise); ``hb`` takes any.
    Same values as :func:`binomial_pvalue` / :func:`hb_pvalue` per column, computed in one call.
    """
    from scipy.stats import binom

    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim == 1:
        losses = losses.reshape(-1, 1)
    n = losses.shape[0]
    sums = _column_sums(losses, method)
    _check_alpha_n(n, alpha)
    if method == "binomial":
        return [float(v) for v in np.minimum(1.0, binom.cdf(np.round(sums).astype(np.int64), n, alpha))]
    bent = np.minimum(1.0, math.e * binom.cdf(np.minimum(n, np.ceil(sums)).astype(np.int64), n, alpha))
    return [min(hoeffding_pvalue(s / n, n, alpha), float(b)) for s, b in zip(sums, bent)]


def pvalue(losses: np.ndarray, alpha: float, method: str) -> float:
    """The p-value of ``H: R > alpha`` from a vector of losses in [0, 1] (see :func:`pvalues`)."""
    return pvalues(np.asarray(losses, dtype=np.float64).reshape(-1, 1), alpha, method)[0]


# ----- multiple testing: which nulls to reject -------------------------------------------------


def fixed_sequence(pvalues: Sequence[float], delta: float) -> list[int]:
    """Indices rejected by fixed-sequence testing in the given order: all before the first
    ``p >= delta``. Controls the family-wise error rate at ``delta`` for any dependence."""
    out = []
    for i, p in enumerate(pvalues):
        if not p < delta:
            break
        out.append(i)
    return out


def bonferroni(pvalues: Sequence[float], delta: float) -> list[int]:
    """Indices with ``p < delta / K`` (Bonferroni; FWER <= delta)."""
    k = len(pvalues)
    return [i for i, p in enumerate(pvalues) if p < delta / k]


def holm(pvalues: Sequence[float], delta: float) -> list[int]:
    """Holm's step-down procedure: sort ascending, reject while ``p_(j) < delta / (K - j)``."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: (pvalues[i], i))
    out = []
    for j, i in enumerate(order):
        if not pvalues[i] < delta / (k - j):
            break
        out.append(i)
    return sorted(out)


PROCEDURE_FUNCS: dict[str, Callable[[Sequence[float], float], list[int]]] = {
    "fixed-sequence": fixed_sequence,
    "bonferroni": bonferroni,
    "holm": holm,
}


@dataclass
class Selection:
    """Outcome of Learn then Test over a grid ordered from the least pruning upward."""

    risks: list[float]  # empirical risks per level
    pvalues: list[float]
    rejected: list[int]  # indices whose null R > alpha was rejected
    chosen: int | None  # largest rejected index, or None (abstain)

    def to_json(self) -> dict:
        return {"risks": self.risks, "pvalues": self.pvalues, "rejected": self.rejected, "chosen": self.chosen}


def select(losses: np.ndarray, alpha: float, delta: float, method: str = "hb",
           procedure: str = "fixed-sequence") -> Selection:
    """Learn then Test on a loss matrix ``(n, K)`` (column k = level k, least pruning first).

    Returns the rejected set and the largest rejected level; with probability at least
    ``1 - delta`` over the calibration draw, every rejected level has risk <= alpha.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must lie in (0, 1)")
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError("losses must be a matrix (n, K)")
    if procedure not in PROCEDURE_FUNCS:
        raise ValueError(f"unknown procedure {procedure!r}; known: {', '.join(PROCEDURES)}")
    pv = pvalues(losses, alpha, method)
    risks = [math.fsum(col) / losses.shape[0] for col in losses.T.tolist()]
    rejected = PROCEDURE_FUNCS[procedure](pv, delta)
    return Selection(risks, pv, rejected, max(rejected) if rejected else None)
