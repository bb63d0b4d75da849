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
