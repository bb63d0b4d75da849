"""Reports of CNN reductions (issue 12 item 6): channels per hidden layer before and after every step,
in the table and in the plain-words headline, as the written ONNX files hold them (initialiser shapes
read with onnx, not through lumpver); the command line says the same and refuses what it cannot do
with exit 2 and one line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx

from lumpver.cli import main
from tests.test_cnn_prune import _params, _model, _weighted_shapes


def _channels(path) -> list[int]:
    """Output channels of the hidden Conv/Gemm nodes of an ONNX file (rows of their weights)."""
    return [s[0] for s in _weighted_shapes(path)[:-1]]


def test_run_report_has_channel_table_and_headline(tmp_path, rng):
    model = tmp_path / "cnn.onnx"
    onnx.save(_model(_params(rng)), str(model))
    spec = tmp_path / "cnn.toml"
    spec.write_text('model = "cnn.onnx"\n\n[[reductions]]\nmethod = "prune"\nprune_method = "magnitude"\n'
                    'granularity = "channel"\nkeep = 0.5\n\n[[reductions]]\nmethod = "quantize"\nbits = 8\n'
                    'per_channel = true\n\n[output]\ndir = "out"\nreports = ["md", "json"]\n')
    assert main(["run", str(spec), "-q"]) == 0
    out = tmp_path / "out"
    before, after1, after2 = _channels(model), _channels(out / "step1_prune.onnx"), _channels(out / "step2_quantize.onnx")
    assert before == [6, 5, 7] and after1 == after2 and sum(after1) < sum(before)
    md = (out / "report.md").read_text()
    for i in range(3):
        assert f"| channels, hidden {i + 1} | {before[i]} | {after1[i]} | {after2[i]} |" in md
    assert f"| total channels | {sum(before)} | {sum(after1)} | {sum(after2)} |" in md
    assert f"{sum(after2)} channels instead of {sum(before)} (per hidden layer {after2} instead of {before}" in md
    doc = json.loads((out / "report.json").read_text())
    assert doc["steps"][0]["stats"]["channels_after"] == after1


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *args, "-q"], capture_output=True, text=True, timeout=300)


def test_cli_prints_channels_and_refuses_with_one_line(tmp_path, rng):
    model = tmp_path / "cnn.onnx"
    onnx.save(_model(_params(rng)), str(model))
    p = _cli("prune", str(model), "-o", str(tmp_path / "p.onnx"), "--method", "magnitude", "--granularity", "channel",
             "--keep", "0.5")
    assert p.returncode == 0, p.stderr
    got = _channels(tmp_path / "p.onnx")
    assert f"channels per hidden layer [6, 5, 7] -> {got}" in p.stdout
    p = _cli("prune", str(model), "-o", str(tmp_path / "n.onnx"), "--method", "magnitude", "--granularity", "neuron",
             "--keep", "0.5")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--granularity channel" in p.stderr
    np.savez(tmp_path / "cal.npz", x=rng.uniform(-1, 1, (20, 128)).astype(np.float32))
    p = _cli("prune", str(model), "-o", str(tmp_path / "c.onnx"), "--method", "confident", "--granularity", "weight",
             "--calibration", str(tmp_path / "cal.npz"), "--alpha", "0.2", "--delta", "0.1")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "channel" in p.stderr
    assert not (tmp_path / "n.onnx").exists() and not (tmp_path / "c.onnx").exists()


def test_spec_granularity_key_is_checked(tmp_path, rng):
    import pytest

    from lumpver.errors import InputError
    from lumpver.specs.runspec import load_spec

    onnx.save(_model(_params(rng)), str(tmp_path / "cnn.onnx"))
    for method, value, message in [("coreset", "channel", "not an option of prune_method = 'coreset'"),
                                   ("magnitude", "filter", "expected one of weight, channel, neuron, got .filter."),
                                   ("confident", "neuron", "expected weight or channel, got .neuron.")]:
        extra = 'calibration = "c.npz"\nalpha = 0.1\ndelta = 0.1\n' if method == "confident" else "keep = 0.5\n"
        spec = tmp_path / "s.toml"
        spec.write_text(f'model = "cnn.onnx"\n[[reductions]]\nmethod = "prune"\nprune_method = "{method}"\n'
                        f'granularity = "{value}"\n{extra}')
        (tmp_path / "c.npz").write_bytes(b"")
        with pytest.raises(InputError, match=r"\[\[reductions\]\]\[1\]\.granularity: " + message):
            load_spec(spec)


def test_graph_lumping_report_speaks_of_channels_of_the_operator_graph(tmp_path):
    """A residual graph CNN reduced exactly: the report's how-proved sentence and channel table count the
    channels the written files hold (ONNX initialiser shapes), not neurons of layers."""
    from lumpver.ir.onnx_graph_export import save_graph
    from lumpver.ir.planted import planted_dag_cnn
    planted = planted_dag_cnn("residual")
    model, out = tmp_path / "res.onnx", tmp_path / "res_r.onnx"
    save_graph(planted.network, model)
    assert main(["reduce", str(model), "-o", str(out), "--report", str(tmp_path / "r.md"), "-q"]) == 0
    convs = [s[0] for s in _weighted_shapes(out) if len(s) == 4]
    md = (tmp_path / "r.md").read_text()
    assert "the channels of each conv/dense node of the operator graph" in md
    assert f"{sum(convs)} class(es) kept" in md and sorted(convs) == sorted(planted.core)
