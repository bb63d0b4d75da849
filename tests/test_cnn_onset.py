"""On-set channel removal of a CNN (issue 12 item 3, DESIGN.md §3, §10): stably inactive channels
over a VNN-LIB box go, onnxruntime outputs on the box are unchanged, the certificate re-checks with
``lumpver check``, and a reduced file that also drops an active channel is caught.

Independent references: onnxruntime on both files over samples of the box, and float64
pre-activations of the original at those samples (every removed channel is <= 0 there)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np

from lumpver.bounds.region import region_box
from lumpver.certificates.onset_conv import remove_channels
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.onnx_import import load_onnx
from lumpver.ir.runtime import run_onnx
from lumpver.specs.vnnlib import read_vnnlib

MODEL = "cnn/verivital/Convnet_avgpool.onnx"
PROP = "cnn/verivital/specs_avgpool/prop_0_0.02.vnnlib"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumpver", *args], capture_output=True, text=True, timeout=600)


def test_onset_channel_removal(shared_data, tmp_path, rng):
    model, prop = shared_data / MODEL, shared_data / PROP
    out, cert_path = tmp_path / "r.onnx", tmp_path / "r.cert.json"
    p = _cli("reduce", str(model), "--mode", "on-set", "--input-set", str(prop), "-o", str(out), "-q")
    assert p.returncode == 0, p.stderr
    f, g = load_onnx(model), load_onnx(out)
    cert = json.loads(cert_path.read_text())
    removed = cert["evidence"][0]["removed"]
    assert sum(len(r) for r in removed) > 0
    assert g.layers[0].op.out_channels == f.layers[0].op.out_channels - len(removed[0])
    assert cert["stats"]["channels_after"] == [g.layers[0].op.out_channels]
    box = region_box(read_vnnlib(prop, n_inputs=f.n_inputs, n_outputs=f.n_outputs).cases[0].region)
    x = box.sample(64, rng, corners=True)
    y_f, y_g = run_onnx(model, x.astype(np.float32)), run_onnx(out, x.astype(np.float32))
    assert np.max(np.abs(y_f - y_g)) <= 1e-5 * (1 + np.max(np.abs(y_f)))
    z = f.layers[0].op.forward(f.preprocess(x)) + f.layers[0].bias
    assert np.all(z.reshape(len(x), f.layers[0].op.out_channels, -1)[:, removed[0], :] <= 0)
    assert _cli("check", str(cert_path)).returncode == 0

    # tamper: also drop an active channel, re-sign the files; only the recomputed bounds catch it
    active = next(t for t in range(f.layers[0].op.out_channels) if t not in removed[0])
    bad = [np.array(sorted(removed[0] + [active]))]
    save_onnx(remove_channels(f, bad), out)
    cert["evidence"][0]["removed"] = [bad[0].tolist()]
    cert["reduced"]["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    cert_path.write_text(json.dumps(cert))
    p = _cli("check", str(cert_path))
    assert p.returncode == 1 and "reaches pre-activation" in p.stdout, p.stdout
