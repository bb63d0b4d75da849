"""Networks with planted redundancy, for the demo, tests and benchmarks (DESIGN.md §2).

Each hidden layer is built from ``core`` neurons. Every core neuron appears as one or more
*copies* whose incoming signature is the core's scaled by a factor the activation allows
(rho > 0 for ReLU/LeakyReLU, any nonzero for identity, +-1 for tanh, 1 for sigmoid). A
neuron's weight to the copies of a previous core is split *unevenly and differently for
every neuron*, so raw weight rows are never proportional: only class-aggregated signatures
reveal the copies. Each layer also gets constant neurons (incoming weights that cancel
across copies) and dead core neurons (outgoing weights that cancel across their copies).
The reduced width of every hidden layer is exactly its number of live core neurons.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumpver.ir.conv import AvgPoolOperator, ConvOperator
from lumpver.ir.graph import GNode, GraphBuilder, GraphNetwork
from lumpver.ir.network import InputOp, Layer, Network
from lumpver.ir.operators import ComposedOperator, DenseOperator
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.pooling import MaxPool


@dataclass
class Planted:
    network: Network
    core_widths: list[int]  # the width exact lumping must reach, per hidden layer


def _factor(activation: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if activation in ("relu", "leaky_relu"):
        return rng.uniform(0.25, 4.0, size)
    if activation == "identity":
        return rng.uniform(0.25, 4.0, size) * rng.choice([-1.0, 1.0], size)
    if activation == "tanh":
        return rng.choice([-1.0, 1.0], size)
    return np.ones(size)


def _split_weights(core_w: np.ndarray, prev_core: np.ndarray, prev_factor: np.ndarray, rng) -> np.ndarray:
    """Raw weights (rows, n_prev) whose class aggregation over ``prev_core`` equals ``core_w``."""
    rows, n_prev = core_w.shape[0], prev_core.size
    share = rng.uniform(0.2, 1.0, size=(rows, n_prev))
    totals = np.zeros((rows, core_w.shape[1]))
    np.add.at(totals.T, prev_core, share.T)
    share = share / totals[:, prev_core]
    return core_w[:, prev_core] * share / prev_factor[None, :]


def planted_network(
    n_inputs: int = 8,
    core_widths: tuple[int, ...] = (6, 5),
    n_outputs: int = 3,
    activation: str = "relu",
    mean_copies: float = 2.0,
    n_constant: int = 1,
    n_dead: int = 1,
    seed: int = 0,
    float32: bool = True,
) -> Planted:
    """A network whose exact quotient has hidden widths ``core_widths`` (see module docstring)."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    cores: list[np.ndarray] = []  # core index of every neuron, per hidden layer (-1 = constant)
    factors: list[np.ndarray] = []
    prev_core, prev_factor, n_prev_core = np.arange(n_inputs), np.ones(n_inputs), n_inputs
    for width in core_widths:
        n_core = width + n_dead
        key, n_keys = _keys(prev_core, n_prev_core)
        core_w = rng.standard_normal((n_core, n_keys)) / np.sqrt(n_keys)
        core_b = rng.standard_normal(n_core) * 0.3
        copies = 1 + rng.poisson(mean_copies - 1, n_core) if mean_copies > 1 else np.ones(n_core, int)
        copies[width:] = np.maximum(copies[width:], 2)  # dead cores need two copies to cancel
        core_of = np.repeat(np.arange(n_core), copies)
        factor = _factor(activation, rng, core_of.size)
        first = np.r_[0, np.cumsum(copies)[:-1]]
        factor[first] = 1.0
        w = _split_weights(core_w[core_of], key, prev_factor, rng) * factor[:, None]
        b = core_b[core_of] * factor
        w, b = _add_constants(w, b, prev_core, prev_factor, n_constant, rng)
        perm = rng.permutation(w.shape[0])
        layers.append(Layer(w[perm], b[perm], activation))
        prev_core = np.r_[core_of, np.full(n_constant, -1)][perm]
        prev_factor = np.r_[factor, np.ones(n_constant)][perm]
        n_prev_core = n_core
        cores.append(prev_core)
        factors.append(prev_factor)
    key, n_keys = _keys(prev_core, n_prev_core)
    core_w = rng.standard_normal((n_outputs, n_keys)) / np.sqrt(n_keys)
    w = _split_weights(core_w, key, prev_factor, rng)
    layers.append(Layer(w, rng.standard_normal(n_outputs) * 0.1, "identity"))
    for k, width in enumerate(core_widths):  # dead cores: outgoing weights cancel across copies
        layers[k + 1].weight = _cancel_pairs(layers[k + 1].weight, cores[k], factors[k], width, rng)
    if float32:
        for layer in layers:
            layer.weight = layer.weight.astype(np.float32).astype(np.float64)
            layer.bias = layer.bias.astype(np.float32).astype(np.float64)
    net = Network(layers, input_name="x", output_name="y", input_shape=["batch", n_inputs],
                  output_shape=["batch", n_outputs])
    return Planted(net, list(core_widths))


def _keys(prev_core: np.ndarray, n_prev_core: int) -> tuple[np.ndarray, int]:
    """Column keys: the core index, and a fresh key for every constant neuron (-1)."""
    key = prev_core.copy()
    const = np.flatnonzero(prev_core < 0)
    key[const] = n_prev_core + np.arange(const.size)
    return key, n_prev_core + const.size


def _add_constants(w, b, prev_core, prev_factor, n_constant, rng):
    """Append constant neurons: weights that cancel within every previous class."""
    rows = np.zeros((n_constant, prev_core.size))
    for r in range(n_constant):
        for core in np.unique(prev_core[prev_core >= 0]):
            members = np.flatnonzero(prev_core == core)
            if members.size >= 2:
                v = rng.standard_normal()
                rows[r, members[0]] = v / prev_factor[members[0]]
                rows[r, members[1]] = -v / prev_factor[members[1]]
    return np.vstack([w, rows]), np.r_[b, rng.standard_normal(n_constant) * 0.5]


def _cancel_pairs(w, core_of, factor, width, rng):
    """Replace the weights into every dead core (index >= width) by a cancelling pair."""
    w = w.copy()
    for core in np.unique(core_of[core_of >= width]):
        members = np.flatnonzero(core_of == core)
        w[:, members] = 0.0
        v = rng.standard_normal(w.shape[0])
        w[:, members[0]] = v / factor[members[0]]
        w[:, members[1]] = -v / factor[members[1]]
    return w


@dataclass
class PlantedCNN:
    network: Network
    channels: list[int]  # output channels of every hidden conv layer
    core: list[int]  # the channel counts exact channel lumping must reach (DESIGN.md §10)


def _shares(shape: tuple[int, ...], core_of: np.ndarray, rng) -> np.ndarray:
    """Positive shares over axis 1 summing to 1 within every core's members (per other index)."""
    share = rng.uniform(0.2, 1.0, size=shape)
    totals = np.zeros((shape[0], int(core_of.max()) + 1) + shape[2:])
    np.add.at(totals, (slice(None), core_of), share)
    return share / totals[:, core_of]


def _planted_filters(core_w: np.ndarray, out_core, out_factor, in_core, in_factor, rng) -> np.ndarray:
    """Raw filters ``(out, in, K)``: channel ``t`` aggregates to ``out_factor[t] core_w[core(t)]``
    over the previous cores, with uneven shares per input channel and kernel offset (raw filters
    are never proportional; only class-aggregated ones are)."""
    raw = core_w[out_core][:, in_core] * _shares((out_core.size, in_core.size) + core_w.shape[2:], in_core, rng)
    return raw * out_factor[:, None, None] / in_factor[None, :, None]


def planted_cnn(channels: tuple[int, ...] = (12, 10), core: tuple[int, ...] = (4, 3), pool: str = "avg",
                image: tuple[int, int, int] = (1, 12, 12), n_outputs: int = 5, n_dead: int = 1,
                seed: int = 0) -> PlantedCNN:
    """A CNN whose hidden conv layers (3x3, pad 1, ReLU) have ``channels[i]`` output channels, each a
    positive multiple (factor in [0.25, 4], bias scaled alike) of one of ``core[i]`` core channels,
    plus ``n_dead`` channels with all-zero outgoing weights; with ``pool="avg"`` every layer after
    the first reads through a 2x2 average pooling. A dense output layer reads the flattened last
    feature map. Float32 weights. Exact channel lumping must reach ``core`` channels per layer."""
    if pool not in ("avg", "none"):
        raise ValueError(f"pool must be 'avg' or 'none', got {pool!r}")
    rng = np.random.default_rng(seed)
    shape, layers = tuple(image), []
    in_core, in_factor = np.arange(image[0]), np.ones(image[0])
    dead: list[np.ndarray] = []
    for width, n_core in zip(channels, core):
        n_live = width - n_dead
        if n_live < n_core:
            raise ValueError(f"{width} channels cannot hold {n_core} cores and {n_dead} dead channels")
        out_core = np.r_[np.arange(n_core), rng.integers(0, n_core, n_live - n_core), n_core + np.arange(n_dead)]
        factor = rng.uniform(0.25, 4.0, width)
        core_w = rng.standard_normal((n_core + n_dead, int(in_core.max()) + 1, 9)) / np.sqrt(9 * in_core.size)
        w = _planted_filters(core_w, out_core, factor, in_core, in_factor, rng)
        b = (rng.standard_normal(n_core + n_dead) * 0.1)[out_core] * factor
        perm = rng.permutation(width)
        ops: list = []
        if pool == "avg" and layers:
            ops.append(AvgPoolOperator(shape, (2, 2), (2, 2)))
            shape = ops[-1].out_shape
        ops.append(ConvOperator(shape, w[perm].reshape(width, shape[0], 3, 3), pads=(1, 1, 1, 1)))
        shape = ops[-1].out_shape
        op = ops[0] if len(ops) == 1 else ComposedOperator(ops)
        layers.append(Layer(op, np.repeat(b[perm], shape[1] * shape[2]), "relu"))
        in_core, in_factor = out_core[perm], factor[perm]
        dead.append(np.flatnonzero(in_core >= n_core))
    core_w = rng.standard_normal((n_outputs, int(in_core.max()) + 1, shape[1] * shape[2])) / np.sqrt(in_core.size)
    w = _planted_filters(core_w, np.arange(n_outputs), np.ones(n_outputs), in_core, in_factor, rng)
    layers.append(Layer(DenseOperator(w.reshape(n_outputs, -1)), rng.standard_normal(n_outputs) * 0.1, "identity"))
    for k, idx in enumerate(dead):  # dead channels: nothing reads them
        nxt = layers[k + 1].op
        target = nxt.ops[-1] if isinstance(nxt, ComposedOperator) else nxt
        w3 = target.weight.reshape(target.weight.shape[0], layers[k].op.out_channels, -1)
        w3[:, idx, :] = 0.0
    for layer in layers:
        target = layer.op.ops[-1] if isinstance(layer.op, ComposedOperator) else layer.op
        target.weight = target.weight.astype(np.float32).astype(np.float64)
        layer.bias = layer.bias.astype(np.float32).astype(np.float64)
    net = Network(layers, input_name="x", output_name="y", input_shape=["batch", *image],
                  output_shape=["batch", n_outputs])
    return PlantedCNN(net, list(channels), list(core))


def main(argv: list[str] | None = None) -> int:
    """``python -m lumpver.ir.planted --out FILE.onnx``: write a planted network (the demo model)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--core", type=int, nargs="+", default=[12, 10, 8])
    p.add_argument("--outputs", type=int, default=4)
    p.add_argument("--activation", default="relu")
    p.add_argument("--copies", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    planted = planted_network(a.inputs, tuple(a.core), a.outputs, a.activation, a.copies, seed=a.seed)
    save_onnx(planted.network, a.out)
    print(f"{a.out}: hidden widths {planted.network.hidden_widths}, planted core {planted.core_widths}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


def random_mlp(
    rng: np.random.Generator,
    widths: "list[int] | tuple[int, ...]",
    activation: "str | list[str]" = "relu",
    fan_in_scaled: bool = False,
    bias_scale: float = 1.0,
    float32: bool = True,
    alpha: float = 0.01,
) -> Network:
    """A random MLP with Gaussian weights (divided by sqrt(fan-in) if ``fan_in_scaled``) and biases
    (times ``bias_scale``); hidden layers use ``activation`` (one name, or one per hidden layer),
    the output layer is affine. Draws weights then bias, layer by layer, from ``rng``."""
    layers = []
    n_hidden = len(widths) - 2
    for k in range(len(widths) - 1):
        w = rng.normal(size=(widths[k + 1], widths[k]))
        if fan_in_scaled:
            w = w / np.sqrt(widths[k])
        b = bias_scale * rng.normal(size=widths[k + 1])
        if float32:
            w, b = w.astype(np.float32), b.astype(np.float32)
        act = "identity" if k == n_hidden else (activation if isinstance(activation, str) else activation[k])
        layers.append(Layer(w, b, act, alpha=alpha))
    return Network(layers)


DAG_KINDS = ("residual", "concat", "maxpool")


def random_dag_cnn(kind: str = "residual", image: tuple[int, int, int] = (2, 6, 6), channels: int = 3,
                   n_outputs: int = 3, seed: int = 0) -> GraphNetwork:
    """A random CNN with branches (float32 weights, ReLU) for tests and benchmarks of the graph IR:

    * ``residual``: normalisation, conv -> relu -> [conv -> relu -> conv] + skip -> relu -> 2x2 max
      pool -> dense;
    * ``concat``: conv -> relu, two branches (1x1 conv -> relu; 3x3 conv -> relu) concatenated along
      channels -> 3x3 max pool (stride 2, pad 1) -> dense;
    * ``maxpool``: conv -> relu -> overlapping 2x2 max pool (stride 1) -> conv -> relu -> dense."""
    if kind not in DAG_KINDS:
        raise ValueError(f"kind must be one of {DAG_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    b = GraphBuilder(tuple(image))

    def conv(src: str, c_out: int, k: int = 3) -> str:
        shape = b.node(src).shape
        w = (rng.standard_normal((c_out, shape[0], k, k)) / np.sqrt(k * k * shape[0])).astype(np.float32)
        op = ConvOperator(shape, w.astype(np.float64), pads=(k // 2,) * 4)
        bias = np.repeat(rng.standard_normal(c_out).astype(np.float32) * 0.1, op.positions)
        return b.add(GNode("affine", (src,), op.out_shape, op=op, bias=bias.astype(np.float64)))

    def node(kind_: str, srcs: tuple[str, ...], shape, **kw) -> str:
        return b.add(GNode(kind_, srcs, shape, **kw))

    def relu(src: str) -> str:
        return node("act", (src,), b.node(src).shape, activation="relu")

    def pool(src: str, k: int, s: int, p: int) -> str:
        mp = MaxPool(b.node(src).shape, (k, k), (s, s), (p,) * 4)
        return node("maxpool", (src,), mp.out_shape, pool=mp)

    x = "input"
    if kind == "residual":
        c = (0.5 + rng.random(image[0]) * 0.1).astype(np.float32).astype(np.float64)
        x = node("scale", (x,), image, steps=[InputOp("Sub", np.repeat(c, image[1] * image[2]))])
    h = relu(conv(x, channels))
    if kind == "residual":
        h = relu(node("add", (conv(relu(conv(h, channels)), channels), h), b.node(h).shape))
        h = pool(h, 2, 2, 0)
    elif kind == "concat":
        left, right = relu(conv(h, channels, 1)), relu(conv(h, channels + 1))
        shape = (2 * channels + 1, *b.node(left).shape[1:])
        h = pool(node("concat", (left, right), shape), 3, 2, 1)
    else:
        h = relu(conv(pool(h, 2, 1, 0), channels))
    n = b.node(h).size
    w = (rng.standard_normal((n_outputs, n)) / np.sqrt(n)).astype(np.float32).astype(np.float64)
    out = b.add(GNode("affine", (h,), (n_outputs,), op=DenseOperator(w),
                      bias=rng.standard_normal(n_outputs).astype(np.float32).astype(np.float64), source_op="gemm"))
    return GraphNetwork(b.graph, out, "x", "y", ["batch", *image], ["batch", n_outputs])


def saturated_mlp(rng: np.random.Generator, widths: "list[int] | tuple[int, ...]", activation: str = "sigmoid",
                  saturated: float = 0.5, gain: float = 4.0) -> Network:
    """A smooth-activation MLP (ERAN ffnnSIGMOID-like stand-in): weights ``gain / sqrt(fan-in)``
    times Gaussians, so the signal survives sigmoid's slope 1/4; a fraction ``saturated`` of each
    hidden layer's neurons get biases of +-8 and weights shrunk 20x, so they are nearly constant
    on a small input box (planted: the smooth-activation reduction should find them). float32."""
    net = random_mlp(rng, widths, activation, fan_in_scaled=True, bias_scale=0.5)
    layers = []
    for k, layer in enumerate(net.layers):
        w, b = layer.weight * gain, layer.bias.copy()
        if k < len(net.layers) - 1:
            sat = rng.random(layer.width) < saturated
            w[sat] /= 20.0
            b[sat] = 8.0 * rng.choice([-1.0, 1.0], size=int(sat.sum()))
        layers.append(Layer(w.astype(np.float32), b.astype(np.float32), layer.activation))
    return Network(layers)


PLANTED_DAG_KINDS = ("maxpool", "residual", "residual-mismatch", "concat")


@dataclass
class PlantedDAG:
    network: GraphNetwork
    channels: list[int]  # output channels of every hidden conv node, in creation order
    core: list[int]  # the channel counts exact graph lumping must reach, same order


def planted_dag_cnn(kind: str = "maxpool", width: int = 8, n_core: int = 3, image: tuple[int, int, int] = (2, 8, 8),
                    n_outputs: int = 3, seed: int = 0) -> PlantedDAG:
    """A graph CNN (3x3 convs, pad 1, ReLU, float32) whose conv channels are positive multiples
    (factors in [0.25, 4], bias alike) of ``n_core`` core channels, with uneven raw filters (as
    :func:`planted_cnn`):

    * ``maxpool``: conv -> relu -> 2x2 max pool (stride 2) -> conv -> relu -> 2x2 max pool (stride 1) -> dense;
    * ``residual``: conv -> relu = h; h + conv(relu(conv(h))) with the last conv planted on h's
      classes and factors -> relu -> 2x2 max pool -> dense;
    * ``residual-mismatch``: the same, but the last conv's channels follow other cores, so a channel
      pair of h may merge only where both branches agree: ``core`` counts the distinct pairs;
    * ``concat``: two convs of the input (``n_core`` and ``n_core - 1`` cores) -> relu -> Concat ->
      3x3 max pool (stride 2, pad 1) -> conv -> relu -> dense."""
    if kind not in PLANTED_DAG_KINDS:
        raise ValueError(f"kind must be one of {PLANTED_DAG_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    b = GraphBuilder(tuple(image))
    planted: dict[str, tuple[np.ndarray, np.ndarray]] = {"input": (np.arange(image[0]), np.ones(image[0]))}
    chans, cores = [], []

    def conv(src: str, cores_n: int, out_core: np.ndarray | None = None, factor: np.ndarray | None = None) -> str:
        in_core, in_factor = planted[src]
        shape = b.node(src).shape
        if out_core is None:
            out_core = np.r_[np.arange(cores_n), rng.integers(0, cores_n, width - cores_n)][rng.permutation(width)]
            factor = rng.uniform(0.25, 4.0, width)
        core_w = rng.standard_normal((int(out_core.max()) + 1, int(in_core.max()) + 1, 9)) / np.sqrt(9 * in_core.size)
        w = _planted_filters(core_w, out_core, factor, in_core, in_factor, rng)
        op = ConvOperator(shape, _f32(w.reshape(out_core.size, shape[0], 3, 3)), pads=(1, 1, 1, 1))
        bias = _f32(np.repeat((rng.standard_normal(int(out_core.max()) + 1) * 0.1)[out_core] * factor, op.positions))
        nid = b.add(GNode("affine", (src,), op.out_shape, op=op, bias=bias))
        planted[nid] = (out_core, factor)
        chans.append(out_core.size)
        cores.append(np.unique(out_core).size)
        return nid

    def same(kind_: str, src: str, shape=None, **kw) -> str:
        nid = b.add(GNode(kind_, (src,), shape or b.node(src).shape, **kw))
        planted[nid] = planted[src]
        return nid

    def relu(src: str) -> str:
        return same("act", src, activation="relu")

    def pool(src: str, k: int, s: int, p: int) -> str:
        mp = MaxPool(b.node(src).shape, (k, k), (s, s), (p,) * 4)
        return same("maxpool", src, mp.out_shape, pool=mp)

    if kind == "maxpool":
        h = pool(relu(conv(pool(relu(conv("input", n_core)), 2, 2, 0), n_core - 1)), 2, 1, 0)
    elif kind.startswith("residual"):
        h = relu(conv("input", n_core))
        h_core, h_factor = planted[h]
        if kind == "residual":
            last = conv(relu(conv(h, n_core)), 0, h_core, h_factor)
        else:  # h's classes must split into (h core, other core) pairs, so the inner conv is planted on those
            other = rng.integers(0, 2, width)
            _, pair = np.unique(np.stack([h_core, other], axis=1), axis=0, return_inverse=True)
            planted[h] = (pair.reshape(-1), h_factor)
            last = conv(relu(conv(h, n_core)), 0, other, h_factor)
            cores[0] = cores[-1] = int(pair.max()) + 1
        s = b.add(GNode("add", (last, h), b.node(h).shape))
        planted[s] = planted[h]
        h = pool(relu(s), 2, 2, 0)
    else:
        left, right = relu(conv("input", n_core)), relu(conv("input", n_core - 1))
        (lc, lf), (rc, rf) = planted[left], planted[right]
        cat = b.add(GNode("concat", (left, right), (2 * width, *b.node(left).shape[1:])))
        planted[cat] = (np.r_[lc, rc + lc.max() + 1], np.r_[lf, rf])
        h = relu(conv(pool(cat, 3, 2, 1), n_core))
    in_core, in_factor = planted[h]
    core_w = rng.standard_normal((n_outputs, int(in_core.max()) + 1, b.node(h).size // in_core.size)) / np.sqrt(in_core.size)
    w = _planted_filters(core_w, np.arange(n_outputs), np.ones(n_outputs), in_core, in_factor, rng)
    out = b.add(GNode("affine", (h,), (n_outputs,), op=DenseOperator(_f32(w.reshape(n_outputs, -1))),
                      bias=_f32(rng.standard_normal(n_outputs) * 0.1), source_op="gemm"))
    net = GraphNetwork(b.graph, out, "x", "y", ["batch", *image], ["batch", n_outputs])
    return PlantedDAG(net, chans, cores)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)
