"""The activation registry: what each element-wise activation computes and which algebraic
properties the reductions may rely on (DESIGN.md §1, §2).

One entry per activation; code asks the registry (``ACTIVATIONS[name].odd``, ...) instead of
comparing names. Relaxations for bound propagation live in :mod:`lumpver.bounds`, keyed by the
same names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Activation:
    """An element-wise activation and its properties.

    ``lumping_scales``: the ratios ``rho`` of proportional signatures under which two neurons
    are lumpable (DESIGN.md §2): ``"nonzero"`` (identity), ``"positive"`` (ReLU, LeakyReLU),
    ``"sign"`` (odd: tanh, rho = +-1) or ``"one"`` (every other activation, rho = 1).
    """

    name: str
    onnx_op: str  # the ONNX operator that computes it ("" for identity)
    evaluate: Callable[[np.ndarray, float], np.ndarray]
    lipschitz: Callable[[float], float]
    piecewise_linear: bool
    monotone: bool
    odd: bool
    lumping_scales: str
    #: ``act'(z)`` from ``z``, ``h = act(z)`` and alpha (the active branch at a kink)
    derivative: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    #: act(0); constant neurons (all-zero incoming signature) equal act(bias).
    zero_value: float = 0.0
    #: for ``act(z) = max(z, s z)`` (identity s = 1, ReLU s = 0, LeakyReLU s = alpha): alpha -> s;
    #: None for every other activation (not of that two-piece linear form)
    negative_slope: Optional[Callable[[float], float]] = None

    def __call__(self, z: np.ndarray, alpha: float = 0.01) -> np.ndarray:
        return self.evaluate(z, alpha)

    @property
    def positively_homogeneous(self) -> bool:
        """``act(rho z) = rho act(z)`` for every ``rho > 0`` (identity, ReLU, LeakyReLU)."""
        return self.lumping_scales in ("nonzero", "positive")

    def admits_scale(self, rho: float) -> bool:
        """Whether ``act(rho z) == rho' act(z)`` lets two neurons with ratio ``rho`` merge."""
        if self.lumping_scales == "nonzero":
            return rho != 0
        if self.lumping_scales == "positive":
            return rho > 0
        if self.lumping_scales == "sign":
            return rho in (1.0, -1.0)
        return rho == 1.0


def _leaky(z: np.ndarray, alpha: float) -> np.ndarray:
    a = z.dtype.type(alpha) if hasattr(z, "dtype") else alpha
    return np.where(z >= 0, z, z * a)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("identity", "", lambda z, _a: z, lambda _a: 1.0, True, True, True, "nonzero",
                   lambda z, _h, _a: np.ones_like(z), negative_slope=lambda _a: 1.0),
        Activation("relu", "Relu", lambda z, _a: np.maximum(z, 0), lambda _a: 1.0, True, True, False, "positive",
                   lambda z, _h, _a: (z > 0).astype(z.dtype), negative_slope=lambda _a: 0.0),
        Activation("leaky_relu", "LeakyRelu", _leaky, lambda a: max(1.0, abs(a)), True, True, False, "positive",
                   lambda z, _h, a: np.where(z >= 0, 1.0, a), negative_slope=float),
        Activation("sigmoid", "Sigmoid", lambda z, _a: 1.0 / (1.0 + np.exp(-z)), lambda _a: 0.25, False, True, False,
                   "one", lambda _z, h, _a: h * (1.0 - h), 0.5),
        Activation("tanh", "Tanh", lambda z, _a: np.tanh(z), lambda _a: 1.0, False, True, True, "sign",
                   lambda _z, h, _a: 1.0 - h * h),
    )
}

#: ONNX operator name -> activation name (import).
BY_ONNX_OP = {a.onnx_op: a.name for a in ACTIVATIONS.values() if a.onnx_op}


def get_activation(name: str) -> Activation:
    """The registry entry for ``name``; ``ValueError`` for an unknown name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}") from None
