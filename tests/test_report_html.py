"""HTML reports render in headless Chromium: no console errors, every figure decodes, the text is there.

Chromium is required (CI installs `chromium chromium-driver`); without it these tests FAIL.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lumpver.reports import plots
from lumpver.ir.onnx_import import load_onnx
from lumpver.reports.render import document_from_certificate, figures, to_html, write_report

ROOT = Path(__file__).resolve().parents[1]
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
_PROBE = ("<script>window.addEventListener('load',function(){var a=[];for(var i=0;i<document.images.length;i++)"
          "{var m=document.images[i];a.push(m.complete&&m.naturalWidth>0?m.naturalWidth:0)}"
          "console.log('LUMPVER-IMAGES '+a.join(','))})</script>")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("headless Chromium is required to test the HTML report: apt-get install -y chromium chromium-driver")
    return exe


def _browse(html_path: Path, *action: str) -> tuple[str, list[str]]:
    """Run Chromium on a file; returns (stdout, console lines)."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([_chromium(), *_FLAGS, f"--user-data-dir={profile}", *action, html_path.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return r.stdout, console


def _check_in_browser(html_file: Path, n_figures: int, tmp_path: Path) -> str:
    text = html_file.read_text()
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text  # self-contained
    # with a probe appended (it only logs the decoded image widths), any other console line is the page's
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", _PROBE + "</body>"))
    dom, console = _browse(probed, "--dump-dom")
    probe = [c for c in console if "LUMPVER-IMAGES" in c]
    assert len(probe) == 1 and len(console) == 1, console
    widths = re.search(r"LUMPVER-IMAGES ([\d,]*)", probe[0]).group(1)
    widths = [int(w) for w in widths.split(",") if w]
    assert len(widths) == n_figures and all(w > 100 for w in widths), widths
    return dom


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lumpver.api.run import run_spec

    return run_spec(ROOT / "specs" / "demo.toml", tmp_path_factory.mktemp("html") / "demo", quiet=True)


def test_demo_html_renders(demo, tmp_path):
    doc = demo.document
    html_file = demo.out_dir / "report.html"
    n_fig = len(figures(doc))
    assert n_fig >= 3  # widths, class sizes, bounds (the demo declares back-ends)
    dom = _check_in_browser(html_file, n_fig, tmp_path)
    final = load_onnx(demo.out_dir / doc["steps"][-1]["model_path"])
    assert f"has {final.n_hidden} hidden neurons instead of {load_onnx(ROOT / 'specs' / 'planted_demo.onnx').n_hidden}" in dom
    assert "In plain words" in dom and "How it was proved" in dom


def test_demo_screenshot_not_blank(demo, tmp_path):
    import matplotlib.image as mpimg

    shot = tmp_path / "shot.png"
    _browse(demo.out_dir / "report.html", f"--screenshot={shot}", "--window-size=1100,2400")
    img = mpimg.imread(shot)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000
    gray = img[..., :3].mean(axis=2)
    assert (gray < 0.5).mean() > 0.005  # text and figures, not an empty page
    assert len(np.unique((img[..., :3] * 255).astype(int).reshape(-1, 3), axis=0)) > 50  # colour plots


def test_class_size_counts_match_reduced_model(demo):
    """Class counts from the claim equal the reduced widths; sizes add up to the original widths."""
    step = demo.document["steps"][0]
    claim = next(ev["claim"] for ev in step["certificate"]["evidence"] if ev.get("backend") == "lumping")
    counts = plots.class_size_counts(claim)
    reduced = load_onnx(demo.out_dir / step["model_path"])
    original = load_onnx(ROOT / "specs" / "planted_demo.onnx")
    for k, (c, layer) in enumerate(zip(counts, claim["layers"])):
        assert sum(c.values()) == reduced.hidden_widths[k]
        in_kept = sum(size * n for size, n in c.items())
        constants = sum(1 for x in layer["class_of"] if x < 0)
        in_dead = sum(1 for x in layer["class_of"] if x >= 0 and not layer["kept"][x])
        assert in_kept + constants + in_dead == original.hidden_widths[k]


def _statistical_cert() -> dict:
    """A statistical certificate as confident pruning writes it (evidence fields of lumpver.reductions.confident)."""
    from lumpver.reductions.ltt import binomial_pvalue

    grid = [0.1, 0.3, 0.5, 0.7, 0.9]
    n, alpha, delta = 400, 0.1, 0.05
    losses = [2, 6, 15, 38, 120]
    pv = [float(binomial_pvalue(k, n, alpha)) for k in losses]
    chosen = max(i for i in range(len(pv)) if all(p < delta for p in pv[: i + 1]))
    ev = {"backend": "learn-then-test", "verdict": "statistical", "alpha": alpha, "delta": delta,
          "confidence": 1 - delta, "n": n, "loss": "disagreement", "pvalue": "binomial",
          "procedure": "fixed-sequence", "grid": grid, "risks": [k / n for k in losses], "pvalues": pv,
          "chosen_index": chosen, "chosen_level": grid[chosen]}
    g = {"kind": "statistical", "input_set": None, "norm": "top1", "epsilon": None, "confidence": 1 - delta,
         "statement": f"with probability >= 1 - {delta} over the draw of the calibration set, the risk is <= {alpha}"}
    st = {"neurons_before": 20, "neurons_after": 20, "params_before": 300, "params_after": 300,
          "layers_before": [10, 10], "layers_after": [10, 10], "seconds": 0.1,
          "nonzero_params_before": 300, "nonzero_params_after": 150}
    return {"format": "lumpver-certificate/1", "original": {"path": "a.onnx", "sha256": "0" * 64},
            "reduced": {"path": "b.onnx", "sha256": "1" * 64}, "guarantee": g, "stats": st, "evidence": [ev]}


def test_statistical_report_has_pvalue_plot(tmp_path):
    cert = _statistical_cert()
    ev = cert["evidence"][0]
    assert all(p < ev["delta"] for p in ev["pvalues"][: ev["chosen_index"] + 1])
    doc = document_from_certificate(cert)
    caps = [c for c, _ in figures(doc)]
    assert any("p-values" in c for c in caps) and len(caps) == 2  # widths + p-values
    f = tmp_path / "stat.html"
    write_report(cert, f)
    dom = _check_in_browser(f, 2, tmp_path)
    assert f"{ev['chosen_level']}" in dom and "Learn then Test" in dom
    assert "150 of them nonzero" in dom and "<td>nonzero parameters</td><td>300</td><td>150</td>" in dom
    data = json.loads(_json_of(cert, tmp_path))
    assert data["overall"]["kind"] == "statistical"


def _json_of(cert: dict, tmp_path: Path) -> str:
    p = tmp_path / "r.json"
    write_report(cert, p)
    return p.read_text()


def test_figures_are_png():
    png = plots.bounds_plot([{"label": "a", "kind": "certified upper", "value": 0.5},
                             {"label": "a", "kind": "attained lower", "value": 0.01},
                             {"label": "b", "kind": "attained lower", "value": 0.02}], 0.1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    uri = plots.data_uri(png)
    assert base64.b64decode(uri.split(",", 1)[1]) == png


def test_html_escapes_untrusted_text():
    cert = _statistical_cert()
    cert["evidence"][0]["procedure"] = "<script>alert(1)</script>"
    assert "<script>" not in to_html(cert, with_figures=False)
