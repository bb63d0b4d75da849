"""Declared input sets: boxes, unions of boxes and polytopes (DESIGN.md §3).

All sets live in the space of the model's *raw* flattened input (``X_i`` of VNN-LIB, in
row-major order), before the model's own input normalisation ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass
class Box:
    """``lower <= x <= upper`` element-wise."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        self.lower = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        self.upper = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        if self.lower.shape != self.upper.shape:
            raise ValueError("box bounds differ in length")

    @property
    def dim(self) -> int:
        return int(self.lower.size)

    def is_empty(self) -> bool:
        return bool(np.any(self.lower > self.upper))

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))

    def sample(self, n: int, rng: np.random.Generator, corners: bool = True) -> np.ndarray:
        """``n`` points in the box (uniform), plus up to 256 corners when ``corners``."""
        pts = rng.uniform(self.lower, self.upper, size=(n, self.dim))
        if corners:
            k = min(256, 2 ** min(self.dim, 8))
            bits = rng.integers(0, 2, size=(k, self.dim)).astype(bool)
            pts = np.vstack([pts, np.where(bits, self.upper, self.lower)])
        return pts

    def to_json(self) -> dict:
        return {"type": "box", "lower": self.lower.tolist(), "upper": self.upper.tolist()}


@dataclass
class Polytope:
    """``A x <= b``, optionally intersected with a bounding box (needed for bound propagation)."""

    A: np.ndarray
    b: np.ndarray
    bounding_box: Box | None = None

    def __post_init__(self) -> None:
        self.A = np.atleast_2d(np.asarray(self.A, dtype=np.float64))
        self.b = np.asarray(self.b, dtype=np.float64).reshape(-1)

    @property
    def dim(self) -> int:
        return int(self.A.shape[1])

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        ok = bool(np.all(self.A @ x <= self.b + tol))
        return ok and (self.bounding_box is None or self.bounding_box.contains(x, tol))

    def to_json(self) -> dict:
        return {
            "type": "polytope",
            "A": self.A.tolist(),
            "b": self.b.tolist(),
            "bounding_box": None if self.bounding_box is None else self.bounding_box.to_json(),
        }


Region = Union[Box, Polytope]


@dataclass
class InputSet:
    """A union of regions (one region in the common case)."""

    regions: list[Region] = field(default_factory=list)
    source: str | None = None  # file the set came from, for certificates and messages

    @property
    def dim(self) -> int:
        return self.regions[0].dim

    def boxes(self) -> list[Box]:
        """Each region's declared box (a polytope's own bounding box), for sampling; ValueError if a
        polytope declares none (:func:`lumpver.bounds.region.region_box` computes one by LP)."""
        boxes = [r if isinstance(r, Box) else r.bounding_box for r in self.regions]
        if any(b is None for b in boxes):
            raise ValueError("polytope region without a bounding box")
        return boxes

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        return any(r.contains(x, tol) for r in self.regions)

    def to_json(self) -> dict:
        return {"type": "union", "source": self.source, "regions": [r.to_json() for r in self.regions]}

    @staticmethod
    def from_json(d: dict) -> "InputSet":
        def region(r: dict) -> Region:
            if r["type"] == "box":
                return Box(np.array(r["lower"]), np.array(r["upper"]))
            bb = r.get("bounding_box")
            return Polytope(np.array(r["A"]), np.array(r["b"]), region(bb) if bb else None)

        if d.get("type") == "union":
            return InputSet([region(r) for r in d["regions"]], d.get("source"))
        return InputSet([region(d)])


@dataclass
class OutputProperty:
    """An *unsafe* output set: a disjunction of polytopes ``{y : A_k y <= b_k}`` (VNN-LIB).

    A network satisfies the property on X when no x in X maps into any disjunct.
    """

    disjuncts: list[tuple[np.ndarray, np.ndarray]]

    def is_unsafe(self, y: np.ndarray, tol: float = 0.0) -> bool:
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return any(bool(np.all(A @ y <= b + tol)) for A, b in self.disjuncts)
