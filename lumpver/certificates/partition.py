"""The well-formedness of a claimed partition of neurons or channels (DESIGN.md §2, §10), checked by
the exact-lumping checkers before anything is replayed."""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from lumpver.ir.activations import get_activation


class Partition(Protocol):
    cls: np.ndarray  # class of each unit, -1 for constant units
    scale: np.ndarray  # ratio of each unit to its representative
    rep: np.ndarray  # representative unit of each class
    kept: np.ndarray  # whether each class is kept


def partition_problem(n: int, activation: str, p: Partition) -> Optional[str]:
    """What is wrong with partition ``p`` of ``n`` units with this activation (None when well formed):
    sizes, index ranges, representatives in their own class with scale 1, finite scales the
    activation admits (``act(c z) = c act(z)``)."""
    n_cls = p.rep.size
    if p.cls.size != n or p.scale.size != n or p.kept.size != n_cls:
        return "sizes do not match the layer"
    if np.any(p.cls < -1) or np.any(p.cls >= n_cls) or np.any(p.rep < 0) or np.any(p.rep >= n):
        return "class or representative index out of range"
    if np.any(p.cls[p.rep] != np.arange(n_cls)) or not np.all(np.isfinite(p.scale)):
        return "a representative is not in its class, or a scale is not finite"
    act = get_activation(activation)
    if np.any(p.scale[p.rep] != 1.0) or not all(act.admits_scale(float(c)) for c in p.scale[p.cls >= 0]):
        return f"a scale {activation} does not admit (act(c z) = c act(z) fails)"
    return None
