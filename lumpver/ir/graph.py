"""The graph IR: a network as a DAG of operator nodes (DESIGN.md §1, §10).

:class:`GraphNetwork` holds a ``networkx.DiGraph`` whose nodes carry a :class:`GNode`: the raw
``input``, ``scale`` (element-wise ``Sub/Add/Mul/Div`` by constants, kept as ONNX wrote them),
``affine`` (a linear operator of :mod:`lumpver.ir.operators` / :mod:`lumpver.ir.conv` plus bias),
``act`` (an activation of :mod:`lumpver.ir.activations`), ``add`` (residual sum of two branches),
``concat`` (along channels: the flat per-sample vectors one after the other) and ``maxpool``
(:class:`lumpver.ir.pooling.MaxPool`). Edges run from a node's inputs to it; ``GNode.inputs``
keeps their order (Concat). The chain :class:`~lumpver.ir.network.Network` is the single-path
view: :meth:`GraphNetwork.from_chain` and :meth:`GraphNetwork.require_chain` convert both ways;
code that needs a chain refuses a DAG with an :class:`InputError` naming the ONNX node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import networkx as nx
import numpy as np

from lumpver.errors import InputError
from lumpver.ir.activations import get_activation
from lumpver.ir.conv import DiagonalOperator
from lumpver.ir.network import InputOp, Layer, Network, softmax
from lumpver.ir.onnx_export import out_shape
from lumpver.ir.operators import LinearOperator
from lumpver.ir.pooling import MaxPool

KINDS = ("input", "scale", "affine", "act", "add", "concat", "maxpool")
_DAG_WORDS = {"add": "a residual Add of two branches", "concat": "a Concat of branches", "maxpool": "MaxPool"}


@dataclass
class GNode:
    """One node of the graph (see the module docstring); ``shape`` is its value's sample shape and
    ``source`` the ONNX node it came from (for messages)."""

    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    op: Optional[LinearOperator] = None  # affine
    bias: Optional[np.ndarray] = None  # affine, (out,) float64
    steps: list[InputOp] = field(default_factory=list)  # scale
    activation: str = "identity"  # act
    alpha: float = 0.01
    pool: Optional[MaxPool] = None  # maxpool
    source: str = ""
    source_op: str = "matmul"  # affine: how export writes a dense map

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown node kind {self.kind!r}")
        self.shape = tuple(int(d) for d in self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def affine_of_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """A ``scale`` node as ``(s, t)``: its value is ``s * h + t`` in real arithmetic."""
        s, t = np.ones(self.size), np.zeros(self.size)
        for op in self.steps:
            a, b = op.as_affine()
            s, t = a * s, a * t + b
        return s, t

    def apply(self, vals: list[np.ndarray], dtype) -> np.ndarray:
        """This node's value from its inputs' values (batch-first, flat)."""
        if self.kind == "scale":
            h = vals[0]
            for op in self.steps:
                h = op.apply(h)
            return h
        if self.kind == "affine":
            return self.op.forward(vals[0]) + self.bias.astype(dtype)
        if self.kind == "act":
            return get_activation(self.activation)(vals[0], self.alpha)
        if self.kind == "add":
            return vals[0] + vals[1]
        if self.kind == "concat":
            return np.concatenate(vals, axis=1)
        return self.pool.forward(vals[0])


@dataclass
class GraphNetwork:
    """A DAG network (module docstring): ``graph`` node ids map to attribute ``"node"`` (a
    :class:`GNode`); ``"input"`` is the raw input and ``output`` the node whose value is the output."""

    graph: nx.DiGraph
    output: str
    input_name: str = "input"
    output_name: str = "output"
    input_shape: list[int | str] = field(default_factory=list)
    output_shape: list[int | str] = field(default_factory=list)
    output_softmax: bool = False

    def __post_init__(self) -> None:
        if not nx.is_directed_acyclic_graph(self.graph):
            raise ValueError("the operator graph has a cycle")
        used = nx.ancestors(self.graph, self.output) | {self.output}
        self.order: list[str] = [n for n in nx.topological_sort(self.graph) if n in used]
        for nid in self.order:
            node = self.node(nid)
            sizes = [self.node(i).size for i in node.inputs]
            need = {"affine": node.op.in_features if node.op is not None else 0, "maxpool": node.pool.in_features
                    if node.pool is not None else 0, "act": node.size, "scale": node.size}.get(node.kind)
            if need is not None and sizes != [need]:
                raise ValueError(f"{node.kind} node {nid} reads {sizes} features, expects {need} ({node.source})")
            if node.kind == "add" and (len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] != node.size):
                raise ValueError(f"Add of {sizes} features into {node.size} ({node.source})")
            if node.kind == "concat" and sum(sizes) != node.size:
                raise ValueError(f"Concat of {sizes} features into {node.size} ({node.source})")
        if not self.input_shape:
            self.input_shape = [1, self.n_inputs]
        if not self.output_shape:
            self.output_shape = [1, self.n_outputs]

    def node(self, nid: str) -> GNode:
        return self.graph.nodes[nid]["node"]

    @property
    def n_inputs(self) -> int:
        return self.node("input").size

    @property
    def n_outputs(self) -> int:
        return self.node(self.output).size

    # ----- sizes (the same names as Network's, for stats and reports) ----------------------------
    @property
    def hidden_nodes(self) -> list[GNode]:
        """The conv/dense (affine) nodes but the output one, in topological order."""
        return [self.node(n) for n in self.order if self.node(n).kind == "affine" and n != self.output]

    @property
    def hidden_widths(self) -> list[int]:
        return [node.size for node in self.hidden_nodes]

    @property
    def n_hidden(self) -> int:
        return sum(self.hidden_widths)

    @property
    def hidden_channels(self) -> list[int]:
        """Channels of each hidden affine node: the first axis of a ``(C, ...)`` value, else its width."""
        return [int(node.shape[0]) if len(node.shape) >= 2 else node.size for node in self.hidden_nodes]

    @property
    def n_params(self) -> int:
        return sum(self.node(n).op.n_params + self.node(n).bias.size for n in self.order
                   if self.node(n).kind == "affine")

    @property
    def is_dense(self) -> bool:
        """Every affine node is a dense matrix and nothing is spatial (no conv, pooling, channels)."""
        return all(len(self.node(n).shape) < 2 for n in self.order)

    @property
    def n_features(self) -> int:
        """Values per sample over all nodes (working memory of one forward pass)."""
        return sum(self.node(n).size for n in self.order)

    # ----- arithmetic ----------------------------------------------------------------------
    def values(self, x: np.ndarray, dtype: type = np.float64) -> dict[str, np.ndarray]:
        """Every node's value for a batch of raw inputs (any shape with ``n_inputs`` per sample)."""
        x = np.asarray(x, dtype=dtype)
        out = {"input": x.reshape(-1, self.n_inputs)}
        for nid in self.order[1:]:
            node = self.node(nid)
            out[nid] = node.apply([out[i] for i in node.inputs], dtype)
        return out

    def forward(self, x: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Outputs ``(batch, n_outputs)`` (the final softmax applied when the model has one)."""
        y = self.values(x, dtype)[self.output]
        return softmax(y) if self.output_softmax else y

    def forward_vjp(self, x: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Logits ``(n, m)`` for raw inputs ``x (n, d)`` and the exact local vector-Jacobian product
        (output seeds ``(n, m)`` -> input gradients ``(n, d)``), by reverse topological order."""
        vals = self.values(x)

        def vjp(seed: np.ndarray) -> np.ndarray:
            grads: dict[str, np.ndarray] = {self.output: np.asarray(seed, dtype=np.float64)}
            for nid in reversed(self.order[1:]):
                g = grads.pop(nid, None)
                if g is not None:
                    node = self.node(nid)
                    for src, part in zip(node.inputs, _pullback(node, g, [vals[i] for i in node.inputs], vals[nid])):
                        grads[src] = grads[src] + part if src in grads else part
            return grads.get("input", np.zeros_like(vals["input"]))

        return vals[self.output], vjp

    # ----- chain view ----------------------------------------------------------------------
    def first_dag_node(self) -> Optional[GNode]:
        """The first node (topological order) that a chain cannot express, or None."""
        for nid in self.order:  # every fork leads to the output, so it meets a join (Add/Concat) there
            node = self.node(nid)
            if node.kind in _DAG_WORDS or (node.kind == "scale" and node.inputs != ("input",)):
                return node
        return None

    def require_chain(self, what: str = "this command", path: Optional[str] = None) -> Network:
        """The chain :class:`Network` of a graph without branches, MaxPool or Concat; otherwise an
        :class:`InputError` (exit 2) naming the ONNX node."""
        bad = self.first_dag_node()
        if bad is not None:
            kind = _DAG_WORDS.get(bad.kind, "an element-wise step inside the graph")
            raise InputError(f"{kind} makes the network a graph, not a chain; {what} supports chains only "
                             f"(graphs: reduce exact/on-set, verify, compare, bound, magnitude/coreset/confident prune, quantize, run)", path,
                             bad.source or None)
        layers: list[Layer] = []
        input_ops: list[InputOp] = []
        for nid in self.order[1:]:
            node = self.node(nid)
            if node.kind == "scale":
                input_ops = list(node.steps)
            elif node.kind == "affine":
                layers.append(Layer(node.op, node.bias, "identity", source_op=node.source_op))
            elif layers and layers[-1].activation == "identity" and self.node(node.inputs[0]).kind == "affine":
                layers[-1].activation, layers[-1].alpha = node.activation, node.alpha
            else:  # an activation on a value without its own affine map
                size = self.node(node.inputs[0]).size
                op = DiagonalOperator(self.node(node.inputs[0]).shape, np.ones(size))
                layers.append(Layer(op, np.zeros(size), node.activation, node.alpha))
        return Network(layers, input_ops, self.input_name, self.output_name, list(self.input_shape),
                       list(self.output_shape), self.output_softmax)

    @staticmethod
    def from_chain(net: Network) -> "GraphNetwork":
        """The graph of a chain network (input -> scale -> affine -> act -> ...)."""
        b = GraphBuilder(tuple(int(d) for d in net.input_shape[1:]) or (net.n_inputs,))
        if b.node("input").size != net.n_inputs:
            b.graph.nodes["input"]["node"].shape = (net.n_inputs,)
        last = b.add(GNode("scale", ("input",), b.node("input").shape, steps=list(net.input_ops))) \
            if net.input_ops else "input"
        for layer in net.layers:
            last = b.add(GNode("affine", (last,), out_shape(layer.op), op=layer.op, bias=layer.bias,
                               source_op=layer.source_op))
            if layer.activation != "identity":
                last = b.add(GNode("act", (last,), out_shape(layer.op), activation=layer.activation, alpha=layer.alpha))
        return GraphNetwork(b.graph, last, net.input_name, net.output_name, list(net.input_shape),
                            list(net.output_shape), net.output_softmax)


def _pullback(node: GNode, g: np.ndarray, ins: list[np.ndarray], out: np.ndarray) -> list[np.ndarray]:
    """The seed ``g`` on ``node``'s value pulled back to each of its inputs."""
    if node.kind == "scale":
        return [g * node.affine_of_scale()[0]]
    if node.kind == "affine":
        return [node.op.backward(g)]
    if node.kind == "act":
        return [g * get_activation(node.activation).derivative(ins[0], out, node.alpha)]
    if node.kind == "add":
        return [g, g]
    if node.kind == "concat":
        cuts = np.cumsum([a.shape[1] for a in ins])[:-1]
        return list(np.split(g, cuts, axis=1))
    grad = np.zeros_like(ins[0], dtype=np.float64)
    arg = node.pool.argmax(ins[0])
    np.add.at(grad, (np.arange(g.shape[0])[:, None], arg), g)
    return [grad]


@dataclass
class GraphBuilder:
    """Adds nodes with fresh ids ``n1, n2, ...`` and their edges; starts with the ``input`` node."""

    input_shape: tuple[int, ...]
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)

    def __post_init__(self) -> None:
        self.graph.add_node("input", node=GNode("input", (), self.input_shape))

    def node(self, nid: str) -> GNode:
        return self.graph.nodes[nid]["node"]

    def add(self, node: GNode) -> str:
        nid = f"n{self.graph.number_of_nodes()}"
        self.graph.add_node(nid, node=node)
        self.graph.add_edges_from((src, nid) for src in node.inputs)
        return nid
