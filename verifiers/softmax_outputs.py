"""Equivalence queries on models ending in Softmax (DESIGN.md §5; issue 14 item 4).

:func:`on_probabilities` wraps any back-end so that a query about two Softmax models is answered
about their *probabilities*: the falsifier runs as is (it confirms violations with the models'
forward pass, which applies the Softmax); every other back-end is asked about the logits at the
logit threshold of :func:`lumpver.bounds.softmax.logit_threshold`, and its certified logit bound
is turned into a probability bound by :func:`lumpver.bounds.softmax.probability_bound`. A logit
``violated`` is no probability counterexample: it becomes ``unknown``. Queries about logits pass
through unchanged; so do ``top1`` verdicts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from lumpver.bounds.softmax import ends_in_softmax, logit_norm, logit_threshold, logits_of, probability_bound
from lumpver.verifiers.base import Query, Verdict


@dataclasses.dataclass
class OnProbabilities:
    """A back-end answering Softmax-model queries about probabilities (module docstring)."""

    inner: Any

    @property
    def name(self) -> str:
        return self.inner.name

    def check(self, query: Query) -> Verdict:
        if query.other is None or not ends_in_softmax(query.network, query.other) or self.inner.name == "falsify":
            return self.inner.check(query)
        m = query.network.n_outputs
        threshold = logit_threshold(query.epsilon, query.norm, m)
        if math.isinf(threshold):  # the trivial cap already proves it
            return Verdict("proved", self.name, "probability vectors differ by at most the norm's cap",
                           upper_bound=probability_bound(math.inf, query.norm, m))
        inner = self.inner.check(dataclasses.replace(query, network=logits_of(query.network),
                                                     other=logits_of(query.other), epsilon=threshold,
                                                     norm=logit_norm(query.norm)))
        return translate(inner, query.epsilon, query.norm, m)


def translate(v: Verdict, epsilon: float, norm: str, m: int) -> Verdict:
    """A logit verdict as a probability verdict (module docstring); top1 verdicts hold as they are
    (the argmax of the probabilities is the argmax of the logits)."""
    if norm == "top1":
        return v
    details = {**v.details, "softmax": {"logit_linf_bound": v.upper_bound, "rule": "lumpver.bounds.softmax"}}
    upper = None
    if v.verdict != "violated" and v.upper_bound is not None and math.isfinite(v.upper_bound):
        upper = probability_bound(v.upper_bound, norm, m)
    if upper is not None and upper <= epsilon:
        return Verdict("proved", v.backend, f"logit bound {v.upper_bound:.6g} -> probability bound {upper:.6g}",
                       upper_bound=upper, seconds=v.seconds, details=details)
    reason = v.reason if v.verdict != "violated" else "the logits differ beyond the threshold; no probability counterexample"
    return Verdict("unknown", v.backend, reason, upper_bound=upper, seconds=v.seconds, details=details)


def on_probabilities(backend: Any) -> OnProbabilities:
    """``backend`` answering Softmax-model queries about probabilities."""
    return OnProbabilities(backend)
