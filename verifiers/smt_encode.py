"""Exact SMT-LIB encoding of piecewise-linear networks over the reals (DESIGN.md §5).

Weights, biases, input-op constants and LeakyReLU slopes become exact rationals of their
float values (``float.as_integer_ratio``), so the encoded function is the real-arithmetic
network the float32 file describes. All networks share the same input variables ``x_i``
(the raw, un-normalised input). The text is built as a string and parsed by z3 once
(much faster than building terms through the Python API).

Given neuron bounds (``lumpver.verifiers.smt_spec.NeuronBounds``), stably inactive neurons are the
constant 0, stably active ones are the identity, and only unstable ones get a Boolean phase
``p`` with ``p -> (z >= 0 and h = z)``, ``not p -> (z <= 0 and h = alpha z)`` plus the
triangle relaxation as redundant linear constraints. ``naive=True`` encodes every neuron as
``h = ite(z >= 0, z, 0)`` without bounds (the baseline of the benchmark).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

import numpy as np

from lumpver.specs.inputset import Box, Polytope
from lumpver.ir.activations import ACTIVATIONS
from lumpver.ir.network import Network, require_dense


def q(v) -> str:
    """An exact SMT-LIB rational literal of a float (or Fraction)."""
    fr = v if isinstance(v, Fraction) else Fraction(*float(v).as_integer_ratio())
    n, d = abs(fr.numerator), fr.denominator
    s = str(n) if d == 1 else f"(/ {n} {d})"
    return f"(- {s})" if fr < 0 else s


def _lin(terms: list[tuple[str, str]], const: str) -> str:
    parts = [f"(* {c} {v})" for c, v in terms]
    if const != "0":
        parts.append(const)
    if not parts:
        return "0"
    return parts[0] if len(parts) == 1 else "(+ " + " ".join(parts) + ")"


@dataclass
class Encoding:
    text: str  # declarations and assertions
    inputs: list[str]
    outputs: list[str]  # stacked outputs of all networks
    n_unstable: int
    n_fixed: int
    stats: dict = field(default_factory=dict)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def real(self, name: str) -> None:
        self.lines.append(f"(declare-fun {name} () Real)")

    def boolean(self, name: str) -> None:
        self.lines.append(f"(declare-fun {name} () Bool)")

    def add(self, expr: str) -> None:
        self.lines.append(f"(assert {expr})")


def _weights(net: Network, cache: dict) -> list[tuple[list[list[str]], list[str]]]:
    """Per layer the weight and bias literals, with the input ops folded into layer 0 exactly."""
    key = id(net)
    if key in cache:
        return cache[key]
    scale = [Fraction(1)] * net.n_inputs
    shift = [Fraction(0)] * net.n_inputs
    for op in net.input_ops:
        for i, c in enumerate(op.constant):
            c = Fraction(*float(c).as_integer_ratio())
            if op.op == "Sub":
                shift[i] -= c
            elif op.op == "Add":
                shift[i] += c
            elif op.op == "Mul":
                scale[i], shift[i] = scale[i] * c, shift[i] * c
            else:
                scale[i], shift[i] = scale[i] / c, shift[i] / c
    out = []
    for k, layer in enumerate(net.layers):
        W = [[Fraction(*float(w).as_integer_ratio()) for w in row] for row in layer.weight]
        b = [Fraction(*float(v).as_integer_ratio()) for v in layer.bias]
        if k == 0 and net.input_ops:
            b = [bj + sum(wj[i] * shift[i] for i in range(len(shift))) for bj, wj in zip(b, W)]
            W = [[wj[i] * scale[i] for i in range(len(scale))] for wj in W]
        out.append(([[("0" if w == 0 else q(w)) for w in row] for row in W], [q(v) for v in b]))
    cache[key] = out
    return out


def encode(
    nets: list[Network],
    region,
    bounds: Optional[list] = None,
    naive: bool = False,
    cache: Optional[dict] = None,
) -> Encoding:
    """Encode ``nets`` on shared inputs constrained to ``region`` (Box or Polytope).

    ``bounds``: one ``NeuronBounds`` per network (pre-activation bounds of every activated
    layer); required unless ``naive``.
    """
    cache = {} if cache is None else cache
    w = _Writer()
    n_in = nets[0].n_inputs
    xs = [f"x_{i}" for i in range(n_in)]
    for x in xs:
        w.real(x)
    box = region if isinstance(region, Box) else region.bounding_box
    if box is not None:
        for x, lo, hi in zip(xs, box.lower, box.upper):
            w.add(f"(>= {x} {q(lo)})")
            w.add(f"(<= {x} {q(hi)})")
    if isinstance(region, Polytope):
        for row, bb in zip(region.A, region.b):
            w.add(f"(<= {_lin([(q(a), x) for a, x in zip(row, xs) if a != 0], '0')} {q(bb)})")
    outputs: list[str] = []
    n_unstable = n_fixed = 0
    for t, net in enumerate(nets):
        nb = None if bounds is None else bounds[t]
        ys, u, f = _encode_net(w, net, t, xs, nb, naive, cache)
        outputs += ys
        n_unstable += u
        n_fixed += f
    return Encoding("\n".join(w.lines), xs, outputs, n_unstable, n_fixed)


def _encode_net(w: _Writer, net: Network, t: int, xs: list[str], nb, naive: bool, cache: dict):
    require_dense(net, "the smt back-end")
    h: list[Optional[str]] = list(xs)  # None = the constant 0
    n_unstable = n_fixed = 0
    lits = _weights(net, cache)
    for k, layer in enumerate(net.layers):
        Wl, bl = lits[k]
        slope = ACTIVATIONS[layer.activation].negative_slope
        if slope is None:
            raise ValueError(f"activation {layer.activation!r} is not piecewise linear")
        neg_slope = float(slope(layer.alpha))  # act(z) = max(z, neg_slope z) (DESIGN.md §5)
        alpha = q(neg_slope)
        nxt: list[Optional[str]] = []
        for j in range(layer.width):
            expr = _lin([(Wl[j][i], h[i]) for i in range(len(h)) if h[i] is not None and Wl[j][i] != "0"], bl[j])
            name = f"n{t}_{k}_{j}"
            if neg_slope == 1.0:  # identity
                w.real(name)
                w.add(f"(= {name} {expr})")
                nxt.append(name)
                continue
            if naive:
                z = f"z{name[1:]}"
                w.real(z)
                w.real(name)
                w.add(f"(= {z} {expr})")
                neg = "0" if neg_slope == 0.0 else f"(* {alpha} {z})"
                w.add(f"(= {name} (ite (>= {z} 0) {z} {neg}))")
                nxt.append(name)
                n_unstable += 1
                continue
            lo, hi = float(nb.lower[k][j]), float(nb.upper[k][j])
            if hi <= 0.0:
                n_fixed += 1
                if neg_slope == 0.0:
                    nxt.append(None)
                else:
                    w.real(name)
                    w.add(f"(= {name} (* {alpha} {expr}))")
                    nxt.append(name)
                continue
            w.real(name)
            if lo >= 0.0:
                n_fixed += 1
                w.add(f"(= {name} {expr})")
                nxt.append(name)
                continue
            n_unstable += 1
            _unstable(w, name, expr, lo, hi, alpha, neg_slope)
            nxt.append(name)
        h = nxt
    return [v if v is not None else "0" for v in h], n_unstable, n_fixed


def _unstable(w: _Writer, name: str, expr: str, lo: float, hi: float, alpha: str, a: float) -> None:
    """Phase variable and triangle bounds of one unstable (Leaky)ReLU neuron ``name = act(expr)``."""
    z, p = f"z{name[1:]}", f"p{name[1:]}"
    w.real(z)
    w.boolean(p)
    w.add(f"(= {z} {expr})")
    neg = "0" if alpha == "0" else f"(* {alpha} {z})"
    w.add(f"(=> {p} (and (>= {z} 0) (= {name} {z})))")
    w.add(f"(=> (not {p}) (and (<= {z} 0) (= {name} {neg})))")
    # redundant: h >= alpha z, h >= z, and the chord through (lo, a lo) and (hi, hi)
    w.add(f"(>= {name} {z})")
    w.add(f"(>= {name} {neg})")
    L, U, A = _coarse(lo, down=True), _coarse(hi, down=False), Fraction(*float(a).as_integer_ratio())
    slope = (U - A * L) / (U - L)
    w.add(f"(<= {name} (+ (* {q(slope)} {z}) {q(U - slope * U)}))")
    w.add(f"(>= {z} {q(L)})")
    w.add(f"(<= {z} {q(U)})")


def _coarse(v: float, down: bool, bits: int = 10) -> Fraction:
    """``v`` rounded outward (down or up) to ``bits`` significant bits: a sound, short rational
    (long rationals from float64 bounds slow the simplex down)."""
    if v == 0.0:
        return Fraction(0)
    m, e = np.frexp(v)  # v = m * 2**e, 0.5 <= |m| < 1
    scaled = m * (1 << bits)
    k = int(np.floor(scaled)) if down else int(np.ceil(scaled))
    return Fraction(k) * Fraction(2) ** (int(e) - bits)
