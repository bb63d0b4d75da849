"""Issue 15, reports: what a report states is checked against independent sources: hashlib and
os.stat for files, onnxruntime for differences, the onnx files' own initialisers for sparsity,
importlib.metadata for the version; numbers are never printed stronger than computed."""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lumpver.cli import main
from lumpver.ir.runtime import run_onnx
from lumpver.reports.facts import num_down, num_up
from lumpver.reports.render import to_html, to_markdown

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "specs" / "planted_demo.onnx"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("facts") / "demo"
    argv = ["run", str(ROOT / "specs" / "demo.toml"), "--out", str(out)]
    return out, argv, main(argv)


def _text(out: Path) -> tuple[str, str, dict]:
    return (out / "report.md").read_text(), (out / "report.html").read_text(), json.loads((out / "report.json").read_text())


def test_provenance_hashes_bytes_and_input_set(demo_run):
    out, argv, code = demo_run
    assert code == 0
    md, html, _ = _text(out)
    version = importlib.metadata.version("lumpver")
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    command = "lumpver " + " ".join(argv)
    for text in (md, html):
        assert f"lumpver {version}" in text and today in text and command in text
        for p in [DEMO, *sorted(out.glob("step*.onnx"))]:
            assert hashlib.sha256(p.read_bytes()).hexdigest() in text, p  # the full hash, not a prefix
            assert str(p.stat().st_size) in text, p
        assert "demo.toml" in text and "8 input dimension(s)" in text
        assert "x0 in [-0.1, 0.1]" in text and "x7 in [-0.1, 0.1]" in text


def test_every_bound_with_its_meaning(demo_run):
    out, _, _ = demo_run
    md, html, doc = _text(out)
    rows = {(m.group(1), m.group(2)): float(m.group(3))
            for m in re.finditer(r"^\| (\w+) \| (certified upper|attained lower) \| ([-+0-9.e]+) \|", md, flags=re.M)}
    cert, falsified = rows[("certificates", "certified upper")], rows[("falsify", "attained lower")]
    interval = rows[("interval", "certified upper")]
    final = sorted(out.glob("step*.onnx"))[-1]
    x = np.random.default_rng(0).uniform(-0.1, 0.1, (20000, 8)).astype(np.float32)
    seen = float(np.max(np.abs(run_onnx(DEMO, x) - run_onnx(final, x))))
    assert falsified <= cert and seen <= cert < interval  # the certificate's bound is the tightest upper bound
    assert "| falsify | lower bound only |" in md and "| falsify | unknown |" not in md
    caption = re.search(r"<figcaption>(Every bound on the worst-case[^<]*)</figcaption>", html).group(1)
    lo, hi = re.search(r"lies in \[([^,]+), ([^\]]+)\]", caption).groups()
    assert float(lo) <= seen * 10 and float(hi) == cert  # the band: best attained value .. tightest certified bound
    assert "not a measured error" in caption


def test_run_stdout_summary_and_final_file_names(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", str(ROOT / "specs" / "demo.toml"), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    names = sorted(p.name for p in out.iterdir())
    wrote = next(line for line in lines if line.startswith("wrote "))
    assert wrote == f"wrote {len(names)} file(s) into {out}: " + ", ".join(names)
    assert re.match(r"exact-on-set: hidden neurons 106 -> \d+ .*max_i \|f_i - g_i\| <= [0-9.e-]+ on the input set; "
                    r"every certificate re-checked: holds; back-ends: falsify unknown \(lower bound [0-9.e-]+\), "
                    r"interval proved$", lines[-1]), lines[-1]
    assert ".staging-" not in cap.err and str(out / "step1_exact.onnx") in cap.err


@pytest.mark.parametrize("seed", range(5))
def test_printed_bounds_are_never_stronger(seed):
    rng = np.random.default_rng(seed)
    for v in np.concatenate([rng.uniform(0, 1, 200), 10.0 ** rng.uniform(-12, 6, 200)]):
        up, down = float(num_up(v)), float(num_down(v))
        assert down <= v <= up and (up - down) <= 2.5e-8 * v, (v, up, down)
    assert num_up(0.09999790123) != "0.1" and num_up(0.09999790123).startswith("0.099997901")


def _initialiser_sparsity(path: Path) -> float:
    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    arrays = [a for a in arrays if a.dtype.kind == "f"]  # weights and biases, not shape constants
    total = sum(a.size for a in arrays)
    return sum(int(np.sum(a == 0)) for a in arrays) / total


def test_pruning_report_has_sparsity_and_bytes(tmp_path):
    from lumpver.ir.onnx_export import save_onnx
    from lumpver.ir.planted import random_mlp

    model = tmp_path / "m.onnx"
    save_onnx(random_mlp(np.random.default_rng(5), [4, 12, 10, 3], fan_in_scaled=True), model)
    spec = tmp_path / "s.toml"
    spec.write_text(f'model = "{model.as_posix()}"\n[input_set]\ntype = "box"\nlower = -1\nupper = 1\n'
                    '[[reductions]]\nmethod = "prune"\nprune_method = "magnitude"\nkeep = 0.5\n'
                    '[output]\nreports = ["md"]\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "-q"]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    pruned = tmp_path / "o" / "step1_prune.onnx"
    row = next(line for line in md.splitlines() if line.startswith("| sparsity"))
    printed = float(row.split("|")[3].strip().rstrip(" %")) / 100
    assert abs(printed - _initialiser_sparsity(pruned)) < 1e-4, (row, _initialiser_sparsity(pruned))
    sizes = next(line for line in md.splitlines() if line.startswith("| file bytes"))
    want = [model.stat().st_size, pruned.stat().st_size]
    assert [int(c) for c in sizes.strip("| \n").split("|")[1:]] == want


def test_backend_that_cannot_answer_the_norm_is_skipped_and_said(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(f'model = "{DEMO.as_posix()}"\n[input_set]\ntype = "box"\nlower = -0.1\nupper = 0.1\n'
                    '[tolerance]\nnorm = "top1"\n[[reductions]]\nmethod = "on-set"\n'
                    '[[backends]]\nname = "sdp"\ntimeout = 300\n[[backends]]\nname = "interval"\ntimeout = 20\n'
                    '[output]\nreports = ["md"]\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "o")]) == 0
    cap = capsys.readouterr()
    assert "back-end sdp: skipped, it answers linf, l1, l2 only, not the declared [tolerance].norm top1" in cap.err
    md = (tmp_path / "o" / "report.md").read_text()
    assert "Back-end sdp was not asked: it answers linf, l1, l2 only" in md and "| sdp | skipped |" in md
    assert "back-ends: sdp skipped, interval proved" in cap.out.strip().splitlines()[-1]


def test_reduce_report_of_an_exact_certificate(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    shutil.copy(DEMO, src)
    assert main(["reduce", str(src), "-o", str(tmp_path / "r.onnx"), "--report", str(tmp_path / "r.md"), "-q"]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "No input set: the exact guarantee holds for every input." in md
    assert str((tmp_path / "r.onnx").stat().st_size) in md
    assert hashlib.sha256((tmp_path / "r.onnx").read_bytes()).hexdigest() in md
    assert f"lumpver reduce {src} -o" in md


def test_renderers_keep_full_precision():
    cert = {"guarantee": {"kind": "bounded", "epsilon": 0.0999979, "norm": "linf", "input_set": {
        "type": "box", "lower": [0.0, -1.0], "upper": [1.0, 1.0]}}, "stats": {
        "neurons_before": 4, "neurons_after": 2, "params_before": 20, "params_after": 10, "layers_before": [4],
        "layers_after": [2], "seconds": 0.1}, "evidence": [], "original": {"path": "a.onnx", "sha256": "ab" * 32},
        "reduced": {"path": "b.onnx", "sha256": "cd" * 32}}
    for text in (to_markdown(cert), to_html(cert, with_figures=False)):
        assert "0.0999979" in text and "ab" * 32 in text and "x0 in [0, 1], x1 in [-1, 1]" in text
