"""Issue 15, trust: certified bounds cover the whole set, bad input refused with exit 2 before any
work or write. Expected values come from onnxruntime on the written files or from an LP, never
from the code under test."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linprog

from lumpver.cli import COMMANDS, build_parser, main
from lumpver.ir.network import Layer, Network
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.runtime import run_onnx


def _pair(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    f = Network([Layer(np.float32(rng.standard_normal((8, 2))), np.float32(rng.standard_normal(8)), "relu"),
                 Layer(np.float32(rng.standard_normal((2, 8))), np.float32([0.1, -0.2]), "identity")])
    g = f.with_layers([Layer(np.float32(np.round(f.layers[0].weight * 4) / 4), f.layers[0].bias, "relu"),
                       f.layers[1]])
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_onnx(f, a)
    save_onnx(g, b)
    return a, b


def _box_terms(lo, hi, n=2):
    return " ".join(f"(>= X_{i} {lo}) (<= X_{i} {hi})" for i in range(n))


def _union_spec(path, boxes):
    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + \
        "".join(f"(declare-const Y_{i} Real)\n" for i in range(2))
    path.write_text(head + "(assert (or " + " ".join(f"(and {_box_terms(lo, hi)})" for lo, hi in boxes)
                    + "))\n(assert (>= Y_0 Y_1))\n")
    return path


def _last_values(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)}


def test_interval_bound_on_a_union_covers_every_region(tmp_path, capsys):
    """The issue: the interval back-end at epsilon 0 stopped at the first sampled difference, so its
    'certified' bound covered the first disjunct only (0.157 printed, 0.336 attained elsewhere)."""
    a, b = _pair(tmp_path)
    boxes = [(-0.1, 0.1), (2.0, 3.0)]  # the second region's difference is far larger
    spec = _union_spec(tmp_path / "u.vnnlib", boxes)
    assert main(["bound", str(a), str(b), "--input-set", str(spec), "--backend", "interval", "--timeout", "5",
                 "-q"]) == 0
    out = capsys.readouterr().out
    vals = _last_values(out)
    upper, lower = float(vals["upper bound (certified)"]), float(vals["lower bound (attained)"])
    rng = np.random.default_rng(1)
    x = np.vstack([rng.uniform(lo, hi, (3000, 2)) for lo, hi in boxes]).astype(np.float32)
    seen = float(np.max(np.abs(run_onnx(a, x) - run_onnx(b, x))))
    assert out.strip().splitlines()[-1] == "proved"
    assert upper >= max(seen, lower) and lower > 0.5 * seen, (upper, seen, lower)


def _poly_spec(path, A, b, lower=None, upper=None):
    lines = ['model = "a.onnx"', "[input_set]", 'type = "polytope"', f"A = {A}", f"b = {b}"]
    if lower is not None:
        lines += [f"lower = {lower}", f"upper = {upper}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_empty_polytope_is_refused_before_any_work(tmp_path, capsys):
    a, b = _pair(tmp_path)
    A, rhs = [[1.0, 0.0], [-1.0, 0.0]], [-1.0, -1.0]  # x0 <= -1 and x0 >= 1
    assert linprog(np.zeros(2), A_ub=A, b_ub=rhs, bounds=[(-2, 2)] * 2, method="highs").status == 2  # infeasible
    spec = _poly_spec(tmp_path / "empty.toml", A, rhs, [-2, -2], [2, 2])
    capsys.readouterr()
    for argv in (["bound", str(a), str(b), "--input-set", str(spec), "--json", str(tmp_path / "r.json")],
                 ["compare", str(a), str(b), "--input-set", str(spec), "--epsilon", "1"],
                 ["reduce", str(a), "-o", str(tmp_path / "r.onnx"), "--mode", "on-set", "--input-set", str(spec)]):
        assert main(argv + ["-q"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "empty.toml" in err[0] and "empty" in err[0].split("empty.toml", 1)[1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "empty.toml"]


def test_feasible_polytope_still_accepted(tmp_path, capsys):
    a, b = _pair(tmp_path)
    spec = _poly_spec(tmp_path / "ok.toml", [[1.0, 1.0]], [0.5], [-1, -1], [1, 1])
    assert main(["bound", str(a), str(b), "--input-set", str(spec), "--backend", "interval", "--timeout", "3",
                 "-q"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "proved"


@pytest.mark.parametrize("outs", [("-o", "r.onnx", "--certificate", "r.onnx"),
                                  ("-o", "r.onnx", "--report", "r.onnx"),
                                  ("-o", "r.onnx", "--certificate", "c.json", "--report", "c.json"),
                                  ("-o", "a.onnx"), ("-o", "r.onnx", "--report", "x.pdf")])
def test_reduce_output_collisions_and_bad_report_suffix_write_nothing(tmp_path, capsys, monkeypatch, outs):
    a, _ = _pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["reduce", "a.onnx", *outs, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lumpver reduce: error:"), err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bound_outputs_must_differ(tmp_path, capsys):
    a, b = _pair(tmp_path)
    spec = _union_spec(tmp_path / "u.vnnlib", [(-1, 1)])
    same = str(tmp_path / "r.json")
    assert main(["bound", str(a), str(b), "--input-set", str(spec), "--json", same, "--certificate", same, "-q"]) == 2
    assert not (tmp_path / "r.json").exists()


BAD_NUMBERS = [
    ("verify", ["m.onnx", "p.vnnlib", "--timeout", "-5"]),
    ("verify", ["m.onnx", "p.vnnlib", "--timeout", "0"]),
    ("verify", ["m.onnx", "p.vnnlib", "--timeout", "nan"]),
    ("compare", ["a", "b", "--input-set", "s", "--epsilon", "-1"]),
    ("compare", ["a", "b", "--input-set", "s", "--epsilon", "0.1", "--timeout", "inf"]),
    ("bound", ["a", "b", "--input-set", "s", "--timeout", "-1"]),
    ("reduce", ["m", "-o", "o", "--mode", "approx", "--epsilon", "-0.1"]),
    ("reduce", ["m", "-o", "o", "--timeout", "0"]),
    ("prune", ["m", "-o", "o", "--method", "magnitude", "--keep", "0"]),
    ("prune", ["m", "-o", "o", "--method", "magnitude", "--keep", "1.5"]),
    ("prune", ["m", "-o", "o", "--method", "confident", "--alpha", "1"]),
    ("prune", ["m", "-o", "o", "--method", "confident", "--delta", "0"]),
    ("quantize", ["m", "-o", "o", "--bits", "3"]),
    ("quantize", ["m", "-o", "o", "--timeout", "-2"]),
    ("batch", ["i.csv", "--jobs", "0"]),
    ("batch", ["i.csv", "--timeout-scale", "-1"]),
]


@pytest.mark.parametrize("cmd,argv", BAD_NUMBERS)
def test_nonsensical_numbers_are_exit_2_in_one_line(cmd, argv, capsys):
    assert main([cmd, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lumpver {cmd}: error: argument"), err


def test_global_quiet_before_the_command(tmp_path, capsys):
    a, _ = _pair(tmp_path)
    for argv in (["-q", "reduce", str(a), "-o", str(tmp_path / "r.onnx")],
                 ["--quiet", "reduce", str(a), "-o", str(tmp_path / "s.onnx")],
                 ["reduce", str(a), "-o", str(tmp_path / "t.onnx"), "-q"]):
        assert main(argv) == 0
        assert capsys.readouterr().err == "", argv
    assert main(["reduce", str(a), "-o", str(tmp_path / "u.onnx")]) == 0
    assert "[lumpver" in capsys.readouterr().err  # without -q there is progress


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_shows_every_default(name):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[name]
    text = sub.format_help()
    for action in sub._actions:
        d = action.default
        if action.option_strings and d not in (None, False, "==SUPPRESS==") and not isinstance(d, list) \
                and not (isinstance(d, float) and math.isnan(d)):
            opt = action.option_strings[-1]
            block = text.split("options:", 1)[1].split(f"  {opt}", 1)[1].split("\n  -", 1)[0]
            assert "default" in block, (name, opt, block)


def test_heartbeat_fills_silence_and_stops(capsys):
    """Issue 15: long work was silent for minutes (verify 60 s, mnist_linf up to 217 s)."""
    import io
    import time

    from lumpver.progress import Heartbeat, Progress

    log = io.StringIO()
    with Heartbeat("lumpver verify", limit=60, every=0.3, stream=log):
        Progress(stream=log).say("case 1/1: splitting")
        time.sleep(1.2)
    lines = [ln for ln in log.getvalue().splitlines() if "still working" in ln]
    assert 2 <= len(lines) <= 4, log.getvalue()
    assert all("lumpver verify" in ln and "last step: case 1/1: splitting" in ln and "s left" in ln for ln in lines)
    time.sleep(0.7)
    assert len([ln for ln in log.getvalue().splitlines() if "still working" in ln]) == len(lines)  # stopped
    quiet = io.StringIO()
    with Heartbeat("x", quiet=True, every=0.1, stream=quiet):
        time.sleep(0.4)
    assert quiet.getvalue() == ""


def test_every_command_runs_under_a_heartbeat(monkeypatch, capsys):
    import functools
    import time

    import lumpver.cli as cli
    from lumpver.commands import check
    from lumpver.progress import Heartbeat

    monkeypatch.setattr(cli, "Heartbeat", functools.partial(Heartbeat, every=0.2))
    monkeypatch.setattr(check, "run", lambda args: time.sleep(0.9) or 0)
    assert cli.main(["check", "c.json"]) == 0
    assert "lumpver check: still working" in capsys.readouterr().err
    assert cli.main(["-q", "check", "c.json"]) == 0
    assert capsys.readouterr().err == ""
