"""The network IR: a feed-forward chain of layers, each a linear operator (DESIGN.md §1, §10).

A network with branches (residual Add, Concat) or MaxPool is a :class:`lumpver.ir.graph.GraphNetwork`;
this chain is its single-path view (``GraphNetwork.from_chain`` / ``require_chain``).

One source of truth: :class:`Network` holds float64 arrays (imported float32 values are
stored exactly); :meth:`Network.to_networkx` derives the neuron-graph view on demand for
structure, partitions and reports.

Conventions
-----------
* ``Layer.op`` is a linear operator (:mod:`lumpver.ir.operators`; ``Layer.weight`` is its
  ``(out, in)`` matrix when dense): ``z = op(h_prev) + bias``; ``h = act(z)``.
* Hidden layers are ``layers[:-1]``; ``layers[-1]`` produces the outputs (usually
  ``identity``, but an output activation is allowed).
* ``output_softmax``: the ONNX graph ends in a ``Softmax`` over the outputs. ``forward`` applies
  it (it is what the model computes); ``activations`` and every layer-walking algorithm (bounds,
  reductions) see the logits, so commands that state facts about outputs refuse such a network
  (:func:`require_logits`).
* ``input_ops`` are element-wise affine steps applied to the flattened raw input before the
  first layer (normalisation found inside the ONNX graph). They are kept as separate ops so
  that export reproduces the original arithmetic bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from lumpver.errors import InputError
from lumpver.ir.activations import get_activation
from lumpver.ir.operators import DenseOperator, LinearOperator

@dataclass
class Layer:
    """One linear operator plus bias, followed by an element-wise activation.

    ``Layer(weight_matrix, bias, ...)`` wraps an ``(out, in)`` array in a
    :class:`~lumpver.ir.operators.DenseOperator`; any other :class:`LinearOperator` is kept as is.
    """

    op: LinearOperator
    bias: np.ndarray  # (out,) float64
    activation: str = "relu"
    alpha: float = 0.01  # LeakyRelu slope for negative inputs
    source_op: str = "matmul"  # "matmul" or "gemm": how export writes it (bit-identical round trip)

    def __post_init__(self) -> None:
        if not isinstance(self.op, LinearOperator):
            self.op = DenseOperator(self.op)
        self.bias = np.asarray(self.bias, dtype=np.float64).reshape(-1)
        if self.op.out_features != self.bias.shape[0]:
            raise ValueError(f"layer shapes do not match: operator out {self.op.out_features}, bias {self.bias.shape}")
        get_activation(self.activation)

    @property
    def weight(self) -> np.ndarray:
        """The ``(out, in)`` matrix (the live array of a dense operator)."""
        return self.op.dense()

    @weight.setter
    def weight(self, value: np.ndarray) -> None:
        self.op = DenseOperator(value)

    @property
    def width(self) -> int:
        return int(self.op.out_features)

    @property
    def fan_in(self) -> int:
        return int(self.op.in_features)

    def activate(self, z: np.ndarray) -> np.ndarray:
        """Apply this layer's activation element-wise (float64 unless z is float32)."""
        return get_activation(self.activation)(z, self.alpha)

    def lipschitz(self) -> float:
        """Lipschitz constant of the activation."""
        return get_activation(self.activation).lipschitz(self.alpha)

    def copy(self) -> "Layer":
        return Layer(self.op.copy(), self.bias.copy(), self.activation, self.alpha, self.source_op)


@dataclass
class InputOp:
    """An element-wise step on the flattened input: ``x op constant`` with op in Sub/Add/Mul/Div."""

    op: str  # "Sub" | "Add" | "Mul" | "Div"
    constant: np.ndarray  # (n_inputs,) float64 (float32 values)

    def apply(self, x: np.ndarray) -> np.ndarray:
        c = self.constant.astype(x.dtype)
        return {"Sub": np.subtract, "Add": np.add, "Mul": np.multiply, "Div": np.divide}[self.op](x, c)

    def as_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) with ``apply(x) == scale * x + shift`` in real arithmetic."""
        c = self.constant
        one, zero = np.ones_like(c), np.zeros_like(c)
        if self.op == "Sub":
            return one, -c
        if self.op == "Add":
            return one, c.copy()
        if self.op == "Mul":
            return c.copy(), zero
        if self.op == "Div":
            return 1.0 / c, zero
        raise ValueError(f"unknown input op {self.op!r}")


@dataclass
class Network:
    """A feed-forward network: input ops, then layers. See the module docstring."""

    layers: list[Layer]
    input_ops: list[InputOp] = field(default_factory=list)
    input_name: str = "input"
    output_name: str = "output"
    #: ONNX shapes; a str entry is a symbolic dimension (e.g. "batch").
    input_shape: list[int | str] = field(default_factory=list)
    output_shape: list[int | str] = field(default_factory=list)
    output_softmax: bool = False

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a network needs at least one layer")
        for k in range(1, len(self.layers)):
            if self.layers[k].fan_in != self.layers[k - 1].width:
                raise ValueError(
                    f"layer {k} expects {self.layers[k].fan_in} inputs, layer {k - 1} has {self.layers[k - 1].width}"
                )
        if not self.input_shape:
            self.input_shape = [1, self.n_inputs]
        if not self.output_shape:
            self.output_shape = [1, self.n_outputs]

    # ----- sizes -------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return self.layers[0].fan_in

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].width

    @property
    def hidden_widths(self) -> list[int]:
        return [layer.width for layer in self.layers[:-1]]

    @property
    def widths(self) -> list[int]:
        """Input width, hidden widths, output width."""
        return [self.n_inputs] + [layer.width for layer in self.layers]

    @property
    def n_hidden(self) -> int:
        return sum(self.hidden_widths)

    @property
    def hidden_channels(self) -> list[int]:
        """Channels of each hidden layer (its width when the layer is dense)."""
        return [int(getattr(layer.op, "out_channels", layer.width)) for layer in self.layers[:-1]]

    @property
    def n_features(self) -> int:
        """Values per sample of one forward pass: inputs plus every layer's width."""
        return self.n_inputs + sum(layer.width for layer in self.layers)

    @property
    def n_params(self) -> int:
        return sum(layer.op.n_params + layer.bias.size for layer in self.layers)

    # ----- arithmetic ----------------------------------------------------------------------
    def input_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """The composed input ops as ``(scale, shift)``: ``x_norm = scale * x + shift``."""
        scale = np.ones(self.n_inputs)
        shift = np.zeros(self.n_inputs)
        for op in self.input_ops:
            s, t = op.as_affine()
            scale, shift = s * scale, s * shift + t
        return scale, shift

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        """Flatten ``x`` to ``(batch, n_inputs)`` and apply the input ops."""
        x = np.asarray(x)
        x = x.reshape(-1, self.n_inputs) if x.size != self.n_inputs else x.reshape(1, self.n_inputs)
        for op in self.input_ops:
            x = op.apply(x)
        return x

    def forward(self, x: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Outputs for a batch of raw inputs (any shape with n_inputs per sample): ``(batch, n_outputs)``."""
        h = self.preprocess(np.asarray(x, dtype=dtype))
        for layer in self.layers:
            h = layer.activate(layer.op.forward(h) + layer.bias.astype(dtype))
        return softmax(h) if self.output_softmax else h

    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Float64 post-activation values of every layer (index 0 is the normalised input)."""
        h = self.preprocess(np.asarray(x, dtype=np.float64))
        out = [h]
        for layer in self.layers:
            h = layer.activate(layer.op.forward(h) + layer.bias)
            out.append(h)
        return out

    def copy(self) -> "Network":
        return self.with_layers([layer.copy() for layer in self.layers])

    def with_layers(self, layers: Sequence[Layer]) -> "Network":
        """A network with the same interface (names, shapes, input ops, final softmax) and new layers."""
        return Network(
            list(layers),
            [InputOp(op.op, op.constant.copy()) for op in self.input_ops],
            self.input_name,
            self.output_name,
            list(self.input_shape),
            list(self.output_shape),
            self.output_softmax,
        )

    @property
    def is_dense(self) -> bool:
        """Every layer's operator is a dense matrix (no convolution, pooling, padding, permutation)."""
        return all(isinstance(layer.op, DenseOperator) for layer in self.layers)

    # ----- graph view --------------------------------------------------------------------
    def to_networkx(self, max_edges: int = 5_000_000):
        """The neuron graph: nodes ``(layer, index)`` (layer 0 = inputs) with ``layer``,
        ``activation`` and ``bias``; one edge per nonzero weight with attribute ``weight``."""
        import networkx as nx

        n_edges = sum(int(np.count_nonzero(layer.weight)) for layer in self.layers)
        if n_edges > max_edges:
            raise ValueError(f"graph view refused: {n_edges} edges exceed max_edges={max_edges}")
        g = nx.DiGraph()
        g.add_nodes_from(((0, i), {"layer": 0, "activation": "input", "bias": 0.0}) for i in range(self.n_inputs))
        for k, layer in enumerate(self.layers, start=1):
            g.add_nodes_from(
                ((k, j), {"layer": k, "activation": layer.activation, "bias": float(layer.bias[j])})
                for j in range(layer.width)
            )
            rows, cols = np.nonzero(layer.weight)
            g.add_weighted_edges_from(((k - 1, int(c)), (k, int(r)), float(layer.weight[r, c])) for r, c in zip(rows, cols))
        return g


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax (dtype of ``z`` kept), as ONNX ``Softmax`` over the output features."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def require_dense(net: Network, what: str) -> None:
    """Refuse (:class:`InputError`, exit 2) a network with non-dense operators in a command whose
    algorithm reads dense weight matrices (exact lumping, on-set, SMT/Marabou, pruning, quantize)."""
    if not net.is_dense:
        raise InputError(f"convolutional layers are not supported by {what} yet")


def require_logits(net: Network, what: str) -> None:
    """Refuse a network that ends in ``Softmax`` in a command that bounds or verifies its outputs:
    bounds are computed on the logits, not on the softmax the model outputs."""
    if net.output_softmax:
        raise InputError(f"a final Softmax is not supported by {what}: bounds and properties "
                         f"would refer to the logits, not to the model's softmax outputs")


def apply_activation(name: str, z: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    """Evaluate an activation element-wise (see :mod:`lumpver.ir.activations`)."""
    return get_activation(name)(z, alpha)


def activation_lipschitz(name: str, alpha: float = 0.01) -> float:
    """Global Lipschitz constant of an activation."""
    return get_activation(name).lipschitz(alpha)
