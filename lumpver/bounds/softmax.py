"""Sound bounds on softmax outputs from bounds on logits (DESIGN.md §5; issue 14 item 4).

Models ending in ``Softmax`` output probabilities ``p = softmax(z)``; every bound engine works on
the logits ``z`` (:attr:`lumpver.ir.network.Network.output_softmax`). This module turns logit
bounds into probability bounds.

Differences (two models A, B on the same x, ``d = z_A(x) - z_B(x)``, ``s = max_j d_j - min_j d_j``):
along ``z(t) = z_B + t d`` the softmax moves by ``dp_i/dt = p_i (d_i - p.d)`` and
``|d_i - p.d| = |sum_{j != i} p_j (d_i - d_j)| <= (1 - p_i) s``, so

* ``|p_A,i - p_B,i| <= max_t p_i (1 - p_i) s <= s / 4``           (linf),
* ``sum_i |dp_i/dt| = sum_i p_i |d_i - p.d| <= s / 2``             (l1: mean absolute deviation of a
  distribution on an interval of length s),
* ``||dp||_2 <= sqrt(||dp||_1 ||dp||_inf) <= s / (2 sqrt 2)``     (l2).

With ``||d||_inf <= U`` (any certified logit bound), ``s <= 2 U``: linf ``U/2``, l1 ``U``, l2
``U/sqrt 2``, each capped by the trivial bound of two probability vectors (1, 2, sqrt 2).
``top1`` is unchanged (softmax is strictly increasing in each logit, so the argmax is the
logits' argmax; in real arithmetic).

Margin: the bound holds in real arithmetic of the logits; the float32 softmax of a runtime adds a
relative error ``<= (m + 4) 2^-24`` per probability (max-shift, exp, sum of m terms, divide), so
:data:`FLOAT_MARGIN` ``(m) = 2 (m + 4) 2^-23`` (both models, doubled for the exp's error) is added
outward to every stated probability bound.
"""
from __future__ import annotations

import dataclasses
import math

from lumpver.errors import InputError
from lumpver.ir.network import Network

#: probability-norm bound per unit of a logit L-inf bound, and the trivial cap (module docstring)
PER_LOGIT = {"linf": 0.5, "l1": 1.0, "l2": 1.0 / math.sqrt(2.0)}
CAP = {"linf": 1.0, "l1": 2.0, "l2": math.sqrt(2.0)}


def float_margin(m: int) -> float:
    """Outward margin for the float32 softmax evaluation of two models with m outputs."""
    return 2.0 * (m + 4) * 2.0 ** -23


def ends_in_softmax(a: Network, b: Network | None = None) -> bool:
    """Whether the model(s) end in Softmax; InputError when exactly one of two does (their
    outputs would be probabilities against logits, not comparable)."""
    if b is not None and a.output_softmax != b.output_softmax:
        raise InputError("one model ends in Softmax and the other does not: compare outputs of the same kind")
    return bool(a.output_softmax)


def logits_of(net: Network) -> Network:
    """The same network without its final Softmax (the logits; what the bound engine walks)."""
    if not net.output_softmax:
        return net
    return dataclasses.replace(net, output_softmax=False)


def logit_norm(norm: str) -> str:
    """The norm to bound on the logits for a probability-norm query (linf, or top1 unchanged)."""
    return "top1" if norm == "top1" else "linf"


def probability_bound(logit_linf: float, norm: str, m: int) -> float:
    """A sound bound on ``sup ||p_A - p_B||`` (norm) from ``sup ||z_A - z_B||_inf <= logit_linf``,
    float margin included (module docstring); top1 passes through."""
    if norm == "top1":
        return float(logit_linf)
    return min(CAP[norm], PER_LOGIT[norm] * float(logit_linf)) + float_margin(m)


def logit_threshold(epsilon: float, norm: str, m: int) -> float:
    """The largest logit L-inf bound U with ``probability_bound(U) <= epsilon`` (0 if none)."""
    if norm == "top1":
        return float(epsilon)
    room = epsilon - float_margin(m)
    if room >= CAP[norm]:
        return math.inf
    return max(0.0, room / PER_LOGIT[norm])
