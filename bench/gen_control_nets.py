"""Proxies of VNN-COMP 2022's reach_prob_density networks (vdp, robot; issue 13): density-reachability ReLU MLPs
``(x0, t) -> (log density, x_t)`` with the benchmark's conjunctive output properties, written to a folder outside
the repository (never committed).

    python bench/gen_control_nets.py --out /tmp/control [--seeds 0,1,2] [--props 12] [--only vdp]

Run it with a Python that has scikit-learn and scipy (bench only, never lumpver dependencies; e.g.
/work/venv-H). The public networks come from Meng et al., "Learning Density Distribution of Reachable States
for Autonomous Systems" (CoRL 2022); their exact layer sizes could not be read from the paper here, so the
proxies use 3 hidden ReLU layers of 64 (said in bench/RESULTS.md).

Data: trajectories of the closed-loop ODE from uniform initial states (``scipy.integrate.solve_ivp``), and the
log density along each by the Liouville equation, ``d/dt log rho = -div f`` (the trace of the Jacobian of ``f``,
by central differences), from ``log rho_0 = 0`` (the density relative to the uniform initial one):

* vdp: Van der Pol, ``mu = 1``, ``x0`` in [-2.5, 2.5]^2, ``t`` in [0, 5];
* robot: a unicycle ``(p_x, p_y, theta, v)`` steered to the origin (heading gain 2 on the bearing error, speed
  tracking ``v -> 0.8 |p| (1 + 0.3 |p|^2)``), ``x0`` in the benchmark's box, ``t`` in [0, 2.5]; outputs
  ``(log rho, p_x, p_y, theta, v)`` (the benchmark declares 5 outputs); robotslow: the same with speed gain
  0.45 (an attempt at harder instances: still all sat within a second, bench/RESULTS.md).

Networks: scikit-learn's ``MLPRegressor`` on standardised inputs and outputs, the standardisation folded into the
first and last Gemm. Properties exactly as the benchmark's ``generate_properties.py`` (rows ``|x_1| <= rad``,
``|x_2| <= rad``, ``log rho >= p``; vdp rad 0.2-0.8, p 0.15-0.3; robot rad 0-0.3, p 0.05-0.3; Python's ``random``
seeded per seed), 12 per network and seed by default; ``instances.csv`` lists ``onnx,vnnlib,timeout`` rows (appended to).
"""
from __future__ import annotations

import argparse
import random
from math import pi
from pathlib import Path
from typing import Callable

import numpy as np

VDP_BOX = np.array([[-2.5, 2.5], [-2.5, 2.5], [0.0, 5.0]])
ROBOT_BOX = np.array([(-1.8, -1.2), (-1.8, -1.2), (0, pi / 2), (1.0, 1.5), (0, 0.05 * 50)])
HIDDEN = (64, 64, 64)


def vdp(_t: float, s: np.ndarray) -> np.ndarray:
    x1, x2 = s
    return np.array([x2, (1.0 - x1 * x1) * x2 - x1])


def robot(_t: float, s: np.ndarray, speed: float = 0.8) -> np.ndarray:
    px, py, th, v = s
    r = np.hypot(px, py)
    bearing = np.arctan2(-py, -px)
    err = np.arctan2(np.sin(bearing - th), np.cos(bearing - th))
    return np.array([v * np.cos(th), v * np.sin(th), 2.0 * err, speed * r * (1.0 + 0.3 * r * r) - v])


def robot_slow(t: float, s: np.ndarray) -> np.ndarray:
    """The robot with speed gain 0.45: most trajectories end outside the specs' radius at t = 2.5, so the
    unsafe inputs (if any) form a small region (harder instances than ``robot``'s, all sat within 1 s)."""
    return robot(t, s, 0.45)


FAMILIES = [("vdp", vdp, VDP_BOX), ("robot", robot, ROBOT_BOX), ("robotslow", robot_slow, ROBOT_BOX)]


def divergence(f: Callable, s: np.ndarray, h: float = 1e-5) -> float:
    """``trace(df/ds)`` by central differences."""
    out = 0.0
    for i in range(len(s)):
        e = np.zeros_like(s)
        e[i] = h
        out += (f(0.0, s + e)[i] - f(0.0, s - e)[i]) / (2 * h)
    return out


def trajectories(f: Callable, box: np.ndarray, n: int, points: int, rng: np.random.Generator) -> tuple:
    """Inputs ``(x0, t)`` and targets ``(log rho, x_t)`` from ``n`` trajectories at ``points`` random times."""
    from scipy.integrate import solve_ivp

    def aug(t, z):
        return np.append(f(t, z[:-1]), -divergence(f, z[:-1]))

    t_max = box[-1, 1]
    xs, ys = [], []
    for _ in range(n):
        x0 = rng.uniform(box[:-1, 0], box[:-1, 1])
        ts = np.sort(np.append(rng.uniform(0.0, t_max, points - 1), 0.0))
        sol = solve_ivp(aug, (0.0, t_max), np.append(x0, 0.0), t_eval=ts, rtol=1e-6, atol=1e-8)
        for t, z in zip(sol.t, sol.y.T):
            xs.append(np.append(x0, t))
            ys.append(np.append(z[-1], z[:-1]))
    return np.array(xs), np.array(ys)


def train(x: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) per Gemm (``W``: (out, in)) of an MLP fitted on standardised data, the scaling folded in."""
    from sklearn.neural_network import MLPRegressor

    mx, sx, my, sy = x.mean(0), x.std(0), y.mean(0), y.std(0)
    reg = MLPRegressor(hidden_layer_sizes=HIDDEN, activation="relu", solver="adam", learning_rate_init=2e-3, max_iter=300,
                       early_stopping=True, n_iter_no_change=20, random_state=seed)
    reg.fit((x - mx) / sx, (y - my) / sy)
    layers = [(W.T.copy(), b.copy()) for W, b in zip(reg.coefs_, reg.intercepts_)]
    W0, b0 = layers[0]
    layers[0] = (W0 / sx, b0 - W0 @ (mx / sx))  # W0 ((x - m) / s) + b0
    Wn, bn = layers[-1]
    layers[-1] = (Wn * sy[:, None], bn * sy + my)  # s (Wn h + bn) + m
    return layers


def forward(layers: list, x: np.ndarray) -> np.ndarray:
    for i, (W, b) in enumerate(layers):
        x = x @ W.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def write_onnx(layers: list, path: Path) -> None:
    """Gemm (transB) / Relu chain on a (1, n_in) float32 input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, cur = [], [], "X"
    for i, (W, b) in enumerate(layers):
        inits += [numpy_helper.from_array(W.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = "Y" if i == len(layers) - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], transB=1))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"]))
            cur = f"h{i}"
    n_in, n_out = layers[0][0].shape[1], layers[-1][0].shape[0]
    graph = helper.make_graph(nodes, "density", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_spec(path: Path, note: str, box: np.ndarray, n_out: int, rad: float, log_prob: float) -> None:
    """The benchmark's spec: ``Y_1``, ``Y_2`` within ``rad`` of 0 and ``Y_0 >= log_prob`` (one conjunction)."""
    lines = [f"; {note}", ""] + [f"(declare-const X_{i} Real)" for i in range(len(box))] + [""]
    lines += [f"(declare-const Y_{i} Real)" for i in range(n_out)] + ["", "; Input constraints:"]
    for i, (lb, ub) in enumerate(box):
        lines += [f"(assert (<= X_{i} {ub}))", f"(assert (>= X_{i} {lb}))", ""]
    lines += ["", "; Output constraints (encoding the conditions for a property counter-example):",
              f"(assert (<= Y_1 {rad}))", f"(assert (>= Y_1 {-rad}))", f"(assert (<= Y_2 {rad}))",
              f"(assert (>= Y_2 {-rad}))", f"(assert (>= Y_0 {log_prob}))", ""]
    path.write_text("\n".join(lines) + "\n")


def specs(name: str, seed: int, count: int) -> list[tuple[float, float]]:
    """(rad, log_prob) pairs drawn as generate_properties.py draws them."""
    rnd = random.Random(seed)
    if name == "vdp":  # robot and robotslow: the robot's
        return [(0.2 + 0.6 * rnd.random(), 0.15 + 0.15 * rnd.random()) for _ in range(count)]
    return [(0.3 * rnd.random(), 0.05 + 0.25 * rnd.random()) for _ in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/control")
    ap.add_argument("--seeds", default="0,1,2", help="one network and property set per seed")
    ap.add_argument("--props", type=int, default=12)
    ap.add_argument("--trajectories", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--only", default="", help="one family (vdp, robot, robotslow)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, f, box in FAMILIES:
            if args.only and name != args.only:
                continue
            rng = np.random.default_rng(seed)
            x, y = trajectories(f, box, args.trajectories, 40, rng)
            layers = train(x, y, seed)
            err = np.abs(forward(layers, x) - y).mean(0)
            print(f"{name} seed {seed}: {len(x)} samples, mean abs error per output {np.round(err, 3)}", flush=True)
            net = f"{name}_s{seed}.onnx"
            write_onnx(layers, out / net)
            for i, (rad, lp) in enumerate(specs(name, seed, args.props)):
                spec = f"{name}_s{seed}_{i}.vnnlib"
                write_spec(out / spec, f"{name} spec with rad {rad} and log_prob {lp}", box, len(y[0]), rad, lp)
                rows.append(f"{net},{spec},{args.timeout:g}")
    with open(out / "instances.csv", "a") as f:  # appended: families and seeds generated in several runs
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
