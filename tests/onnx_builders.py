"""Hand-built ONNX graphs in the styles public verification benchmarks use (for import tests)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def make_model(nodes, inits, in_name, in_shape, out_name, out_shape, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def gemm_chain(rng, act="Relu", batch="N", trans_a_style=False) -> onnx.ModelProto:
    """Sub/Div normalisation, Flatten, Gemm with transB/alpha/beta, BatchNorm, activations, Dropout."""
    n_in, h1, h2, n_out = 6, 7, 5, 3
    inits = {
        "mean": f32(rng.normal(size=(1, n_in))), "std": f32(rng.uniform(0.5, 2, size=(1, n_in))),
        "W1": f32(rng.normal(size=(h1, n_in))), "b1": f32(rng.normal(size=h1)),
        "W2": f32(rng.normal(size=(h1, h2))), "b2": f32(rng.normal(size=(1, h2))),
        "g": f32(rng.uniform(0.5, 1.5, size=h2)), "beta": f32(rng.normal(size=h2)),
        "mu": f32(rng.normal(size=h2)), "var": f32(rng.uniform(0.5, 2, size=h2)),
        "W3": f32(rng.normal(size=(n_out, h2))), "b3": f32(rng.normal(size=n_out)),
        "shape": np.array([-1, h2], dtype=np.int64),
    }
    acts = [helper.make_node(act, ["z1"], ["a1"], **({"alpha": 0.1} if act == "LeakyRelu" else {}))] if act else [
        helper.make_node("Identity", ["z1"], ["a1"])]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xs"], name="norm_sub"),
        helper.make_node("Div", ["xs", "std"], ["xn"], name="norm_div"),
        helper.make_node("Flatten", ["xn"], ["xf"], axis=1),
        helper.make_node("Gemm", ["xf", "W1", "b1"], ["z1"], transB=1, alpha=0.5, beta=2.0),
        *acts,
        helper.make_node("Dropout", ["a1"], ["d1"]),
        helper.make_node("Gemm", ["d1", "W2", "b2"], ["z2"]),
        helper.make_node("BatchNormalization", ["z2", "g", "beta", "mu", "var"], ["bn"], epsilon=1e-3),
        helper.make_node(act or "Relu", ["bn"], ["a2"], **({"alpha": 0.1} if act == "LeakyRelu" else {})),
        helper.make_node("Reshape", ["a2", "shape"], ["r2"]),
        helper.make_node("Identity", ["r2"], ["i2"]),
        helper.make_node("Gemm", ["i2", "W3", "b3"], ["y"], transB=1),
    ]
    return make_model(nodes, inits, "x", [batch, n_in], "y", [batch, n_out])


def image_model(rng) -> onnx.ModelProto:
    """A 4-D image input [N,2,3,3] normalised per channel, flattened row-major, MatMul+Add, Tanh, Sigmoid."""
    c, h, w = 2, 3, 3
    n_in = c * h * w
    inits = {
        "m": f32(rng.normal(size=(1, c, 1, 1))), "s": f32(rng.uniform(0.5, 2, size=(1, c, 1, 1))),
        "W1": f32(rng.normal(size=(n_in, 8))), "b1": f32(rng.normal(size=8)),
        "W2": f32(rng.normal(size=(8, 4))), "b2": f32(rng.normal(size=4)),
        "W3": f32(rng.normal(size=(4, 2))), "b3": f32(rng.normal(size=2)),
    }
    nodes = [
        helper.make_node("Sub", ["x", "m"], ["x1"]), helper.make_node("Mul", ["x1", "s"], ["x2"]),
        helper.make_node("Flatten", ["x2"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["z1"]),
        helper.make_node("Tanh", ["z1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "W2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["z2"]),
        helper.make_node("Sigmoid", ["z2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "W3"], ["m3"]), helper.make_node("Add", ["m3", "b3"], ["y"]),
    ]
    return make_model(nodes, inits, "x", ["batch", c, h, w], "y", ["batch", 2])


def column_model(rng) -> onnx.ModelProto:
    """Column-vector style (W @ x on a 1-D input), like the VNN-COMP test_small network."""
    inits = {"W0": f32(rng.normal(size=(4, 3))), "B0": f32(rng.normal(size=4)),
             "W1": f32(rng.normal(size=(2, 4))), "B1": f32(rng.normal(size=2))}
    nodes = [helper.make_node("MatMul", ["W0", "x"], ["m0"]), helper.make_node("Add", ["m0", "B0"], ["h0"]),
             helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["W1", "r0"], ["m1"]), helper.make_node("Add", ["m1", "B1"], ["y"])]
    return make_model(nodes, inits, "x", [3], "y", [2])


def softmax_model(rng) -> onnx.ModelProto:
    """A Softmax over the batch axis (refused: only a Softmax over each sample's outputs is accepted)."""
    inits = {"W": f32(rng.normal(size=(3, 2)))}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Softmax", ["m"], ["y"], name="probs", axis=0)]
    return make_model(nodes, inits, "x", [1, 3], "y", [1, 2])


def pytorch_flatten_model(rng) -> onnx.ModelProto:
    """torch-style `x.view(x.size(0), -1)` (Shape/Gather/Unsqueeze/Concat/Reshape) and a weight behind Transpose."""
    inits = {
        "W": f32(rng.normal(size=(5, 12))), "b": f32(rng.normal(size=5)),
        "idx0": np.array(0, dtype=np.int64), "minus1": np.array([-1], dtype=np.int64),
        "axes0": np.array([0], dtype=np.int64),
        "W2": f32(rng.normal(size=(3, 5))), "b2": f32(rng.normal(size=3)),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "idx0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["x", "newshape"], ["flat"]),
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["flat", "Wt"], ["m"]), helper.make_node("Add", ["m", "b"], ["z"]),
        helper.make_node("LeakyRelu", ["z"], ["a"], alpha=0.2),
        helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1),
    ]
    return make_model(nodes, inits, "x", ["N", 3, 2, 2], "y", ["N", 3])


# ----- convolutional models (issue 12) ---------------------------------------------------------
def conv_node_model(rng, in_shape, w_shape, **attrs) -> onnx.ModelProto:
    """One ``Conv`` node with bias on input ``[N, *in_shape]`` (output shape left to onnxruntime)."""
    inits = {"W": f32(rng.normal(size=w_shape)), "B": f32(rng.normal(size=w_shape[0]))}
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs)
    return make_model([node], inits, "x", ["N", *in_shape], "y", _free_dims(len(in_shape) + 1))


def pool_node_model(in_shape, op="AveragePool", **attrs) -> onnx.ModelProto:
    """One pooling (or ``GlobalAveragePool``) node on input ``[N, *in_shape]``."""
    return make_model([helper.make_node(op, ["x"], ["y"], name="pool", **attrs)], {}, "x", ["N", *in_shape], "y",
                      _free_dims(len(in_shape) + 1))


def _free_dims(rank: int) -> list[str]:
    return ["N"] + [f"d{i}" for i in range(1, rank)]


def conv_pool_model(rng, batch="N") -> onnx.ModelProto:
    """Normalised image -> grouped, strided, dilated, padded Conv -> Relu -> Pad -> AveragePool
    (own pads, count_include_pad 0) -> Flatten -> Gemm -> Relu -> Gemm."""
    inits = {"m": f32(rng.normal(size=(1, 4, 1, 1))), "s": f32(rng.uniform(0.5, 2, size=(1, 4, 1, 1))),
             "W1": f32(rng.normal(size=(6, 2, 3, 3))), "B1": f32(rng.normal(size=6)),
             "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=np.int64),
             "W2": f32(rng.normal(size=(5, 6 * 4 * 3))), "B2": f32(rng.normal(size=5)),
             "W3": f32(rng.normal(size=(3, 5))), "B3": f32(rng.normal(size=3))}
    nodes = [helper.make_node("Sub", ["x", "m"], ["x1"]), helper.make_node("Div", ["x1", "s"], ["x2"]),
             helper.make_node("Conv", ["x2", "W1", "B1"], ["c1"], strides=[1, 2], pads=[1, 2, 0, 1],
                              dilations=[2, 1], group=2),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Pad", ["r1", "pads"], ["p1"], mode="constant"),
             helper.make_node("AveragePool", ["p1"], ["a1"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1]),
             helper.make_node("Flatten", ["a1"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["g2"], transB=1), helper.make_node("Relu", ["g2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "W3", "B3"], ["y"], transB=1)]
    return make_model(nodes, inits, "x", [batch, 4, 9, 8], "y", [batch, 3])


def conv1d_model(rng) -> onnx.ModelProto:
    """1-D conv (stride, dilation, pads) -> Relu -> 1-D AveragePool -> Flatten -> MatMul + Add."""
    inits = {"W1": f32(rng.normal(size=(4, 3, 3))), "B1": f32(rng.normal(size=4)),
             "W2": f32(rng.normal(size=(4 * 2, 2))), "B2": f32(rng.normal(size=2))}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c"], strides=[2], dilations=[2], pads=[2, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["a"], kernel_shape=[2], strides=[2]),
             helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["m"]), helper.make_node("Add", ["m", "B2"], ["y"])]
    return make_model(nodes, inits, "x", ["N", 3, 11], "y", ["N", 2])


def nhwc_model(rng) -> onnx.ModelProto:
    """Keras style: NHWC input normalised, Transpose to NCHW, Conv -> Relu, Transpose back to NHWC,
    Reshape to a vector, MatMul + Add (as marabou-cifar10's models)."""
    inits = {"m": f32(rng.normal(size=(1, 1, 1, 3))), "W1": f32(rng.normal(size=(4, 3, 2, 2))),
             "B1": f32(rng.normal(size=4)), "shape": np.array([-1, 4 * 4 * 5], dtype=np.int64),
             "W2": f32(rng.normal(size=(80, 3))), "B2": f32(rng.normal(size=3))}
    nodes = [helper.make_node("Sub", ["x", "m"], ["xn"]),
             helper.make_node("Transpose", ["xn"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("Conv", ["xt", "W1", "B1"], ["c"], kernel_shape=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1], name="to_nhwc"),
             helper.make_node("Reshape", ["rt", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["m2"]), helper.make_node("Add", ["m2", "B2"], ["y"])]
    return make_model(nodes, inits, "x", [1, 5, 6, 3], "y", [1, 3])


def bn_gap_softmax_model(rng) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> Conv (same pads) -> Relu -> GlobalAveragePool ->
    Flatten -> Gemm -> Softmax (final)."""
    c = 5
    inits = {"W1": f32(rng.normal(size=(c, 2, 3, 3))), "B1": f32(rng.normal(size=c)),
             "g": f32(rng.uniform(0.5, 1.5, size=c)), "beta": f32(rng.normal(size=c)),
             "mu": f32(rng.normal(size=c)), "var": f32(rng.uniform(0.5, 2, size=c)),
             "W2": f32(rng.normal(size=(3, c, 3, 3))),
             "W3": f32(rng.normal(size=(4, 3))), "B3": f32(rng.normal(size=4))}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], auto_pad="SAME_UPPER", strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["gp"]), helper.make_node("Flatten", ["gp"], ["f"]),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["z"], transB=1),
             helper.make_node("Softmax", ["z"], ["y"], axis=1, name="probs")]
    return make_model(nodes, inits, "x", ["N", 2, 7, 6], "y", ["N", 4])


def residual_model(rng) -> onnx.ModelProto:
    """Conv -> Relu -> Conv, added to the block's input (a residual branch: refused for now)."""
    inits = {"W1": f32(rng.normal(size=(2, 2, 3, 3))), "W2": f32(rng.normal(size=(2, 2, 3, 3)))}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["y"], name="skip")]
    return make_model(nodes, inits, "x", ["N", 2, 4, 4], "y", ["N", 2, 4, 4])


def folding_model(rng) -> onnx.ModelProto:
    """Steps that fold into neighbours or stay as operators: Conv -> AveragePool (no activation in
    between) -> Relu -> Mul/Add by per-position constants -> Conv -> BatchNormalization -> Relu ->
    AveragePool -> BatchNormalization -> Flatten -> Gemm."""
    inits = {"W1": f32(rng.normal(size=(3, 2, 2, 2))), "B1": f32(rng.normal(size=3)),
             "s": f32(rng.uniform(0.5, 2, size=(1, 3, 3, 3))), "t": f32(rng.normal(size=(1, 3, 1, 1))),
             "W2": f32(rng.normal(size=(4, 3, 2, 2))), "B2": f32(rng.normal(size=4)),
             "g": f32(rng.uniform(0.5, 1.5, size=4)), "beta": f32(rng.normal(size=4)),
             "mu": f32(rng.normal(size=4)), "var": f32(rng.uniform(0.5, 2, size=4)),
             "W3": f32(rng.normal(size=(2, 4))), "B3": f32(rng.normal(size=2))}
    bn = ["g", "beta", "mu", "var"]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 0, 0]),
             helper.make_node("AveragePool", ["c1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0]),
             helper.make_node("Relu", ["p1"], ["r1"]), helper.make_node("Mul", ["r1", "s"], ["m1"]),
             helper.make_node("Add", ["m1", "t"], ["a1"]),
             helper.make_node("Conv", ["a1", "W2", "B2"], ["c2"]),
             helper.make_node("BatchNormalization", ["c2", *bn], ["n2"]), helper.make_node("Relu", ["n2"], ["r2"]),
             helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2]),
             helper.make_node("BatchNormalization", ["p2", *bn], ["n3"]),
             helper.make_node("Flatten", ["n3"], ["f"]), helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], transB=1)]
    return make_model(nodes, inits, "x", ["N", 2, 5, 5], "y", ["N", 2])


# ----- graphs with branches (residual Add, Concat, MaxPool) ------------------------------------
def resnet_block_model(rng, join: str = "Add") -> onnx.ModelProto:
    """Sub normalisation -> Conv -> BatchNormalization -> Relu, then a residual block (Conv -> Relu ->
    Conv -> BatchNormalization, joined to the block's input by ``join`` (Add or Sum)) -> Relu ->
    MaxPool (3x3, stride 2, pads 1) -> Flatten -> Gemm."""
    c = 3
    inits = {"m": f32(rng.normal(size=(1, 2, 1, 1))), "W1": f32(rng.normal(size=(c, 2, 3, 3)) / 3),
             "B1": f32(rng.normal(size=c)), "g": f32(rng.uniform(0.5, 1.5, size=c)), "beta": f32(rng.normal(size=c)),
             "mu": f32(rng.normal(size=c)), "var": f32(rng.uniform(0.5, 2, size=c)),
             "W2": f32(rng.normal(size=(c, c, 3, 3)) / 4), "W3": f32(rng.normal(size=(c, c, 3, 3)) / 4),
             "B3": f32(rng.normal(size=c)), "W4": f32(rng.normal(size=(4, c * 3 * 3)) / 5), "B4": f32(rng.normal(size=4))}
    bn = ["g", "beta", "mu", "var"]
    nodes = [helper.make_node("Sub", ["x", "m"], ["xn"]),
             helper.make_node("Conv", ["xn", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", *bn], ["n1"]), helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "W3", "B3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c3", *bn], ["n3"]),
             helper.make_node(join, ["n3", "r1"], ["s"], name="skip"), helper.make_node("Relu", ["s"], ["r3"]),
             helper.make_node("MaxPool", ["r3"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              name="pool"),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "W4", "B4"], ["y"], transB=1)]
    return make_model(nodes, inits, "x", ["N", 2, 6, 6], "y", ["N", 4])


def inception_model(rng) -> onnx.ModelProto:
    """Conv -> Relu, two branches (1x1 Conv; Pad -> 3x3 Conv -> Relu) -> Concat (axis 1) -> Relu ->
    MaxPool 2x2 -> Flatten -> Gemm -> Relu -> Gemm, whose output is added to a Gemm of the flattened
    features (a dense residual) -> MatMul + Add."""
    inits = {"W1": f32(rng.normal(size=(3, 1, 3, 3))), "B1": f32(rng.normal(size=3)),
             "Wa": f32(rng.normal(size=(2, 3, 1, 1))), "Wb": f32(rng.normal(size=(4, 3, 3, 3)) / 3),
             "Bb": f32(rng.normal(size=4)), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64),
             "W2": f32(rng.normal(size=(5, 6 * 3 * 3)) / 4), "B2": f32(rng.normal(size=5)),
             "W3": f32(rng.normal(size=(5, 5))), "W4": f32(rng.normal(size=(5, 6 * 3 * 3)) / 4),
             "W5": f32(rng.normal(size=(5, 2))), "B5": f32(rng.normal(size=2))}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "Wa"], ["a"]),
             helper.make_node("Pad", ["r1", "pads"], ["rp"], mode="constant"),
             helper.make_node("Conv", ["rp", "Wb", "Bb"], ["b1"]), helper.make_node("Relu", ["b1"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
             helper.make_node("Relu", ["cat"], ["rc"]),
             helper.make_node("MaxPool", ["rc"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["g2"], transB=1), helper.make_node("Relu", ["g2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "W3"], ["g3"], transB=1),
             helper.make_node("Gemm", ["f", "W4"], ["g4"], transB=1),
             helper.make_node("Add", ["g3", "g4"], ["s"], name="dense_skip"),
             helper.make_node("MatMul", ["s", "W5"], ["m5"]), helper.make_node("Add", ["m5", "B5"], ["y"])]
    return make_model(nodes, inits, "x", ["N", 1, 6, 6], "y", ["N", 2])


def bad_add_model(rng) -> onnx.ModelProto:
    """Two convolutions with 2 and 3 output channels added: mismatched shapes."""
    inits = {"Wa": f32(rng.normal(size=(2, 1, 3, 3))), "Wb": f32(rng.normal(size=(3, 1, 3, 3)))}
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["a"]), helper.make_node("Conv", ["x", "Wb"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"], name="bad_add")]
    return make_model(nodes, inits, "x", ["N", 1, 5, 5], "y", ["N", 3, 3, 3])


def lstm_model(rng) -> onnx.ModelProto:
    """A Gemm followed by an LSTM node (unsupported)."""
    inits = {"W": f32(rng.normal(size=(4, 3))), "Wl": f32(rng.normal(size=(1, 8, 4))),
             "Rl": f32(rng.normal(size=(1, 8, 2)))}
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
             helper.make_node("Reshape", ["g", "shape"], ["u"]),
             helper.make_node("LSTM", ["u", "Wl", "Rl"], ["y"], hidden_size=2, name="lstm")]
    inits["shape"] = np.array([1, -1, 4], dtype=np.int64)
    return make_model(nodes, inits, "x", [1, 3], "y", [1, 1, 1, 2])
