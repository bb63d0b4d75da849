"""Certificates written by lumpver 0.1.0 before the architecture change (format
``lumpver-certificate/1``, commit a9faeaf, files in tests/data/certs_v1) still re-check, and
still fail when their model file changes (CONTRACT.md: ``check`` keeps reading every version)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from lumpver.cli import main

V1 = Path(__file__).parent / "data" / "certs_v1"
CERTS = sorted(p.name for p in V1.glob("*.cert.json"))


@pytest.fixture()
def v1_dir(tmp_path: Path) -> Path:
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1"


def test_corpus_covers_every_kind():
    kinds = {json.loads((V1 / c).read_text())["guarantee"]["kind"] for c in CERTS}
    assert kinds == {"exact", "exact-on-set", "bounded", "statistical"}
    assert all(json.loads((V1 / c).read_text())["format"] == "lumpver-certificate/1" for c in CERTS)


@pytest.mark.parametrize("name", CERTS)
def test_v1_certificate_rechecks(v1_dir: Path, name: str):
    assert main(["check", "-q", str(v1_dir / name)]) == 0


@pytest.mark.parametrize("name", CERTS)
def test_v1_certificate_fails_on_changed_model(v1_dir: Path, name: str):
    reduced = v1_dir / json.loads((v1_dir / name).read_text())["reduced"]["path"]
    model = onnx.load(reduced)
    model.doc_string = "edited"  # a valid model, different bytes
    onnx.save(model, reduced)
    assert main(["check", "-q", str(v1_dir / name)]) == 1
